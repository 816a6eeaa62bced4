//! Helpers shared by the kubelet crate's integration tests.

use std::time::Duration;

use tessera_kubelet::proto::deviceplugin as dp;
use tessera_kubelet::proto::deviceplugin::device_plugin_client::DevicePluginClient;
use tessera_kubelet::testkit::FakeKubelet;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// How long a test waits for the plugin before it fails.
const T: Duration = Duration::from_secs(5);

/// Dial the plugin a registration names, open ListAndWatch as the kubelet does, and take the
/// first list: the client, the open stream and that list.
pub async fn watch(
    kubelet: &FakeKubelet,
    registration: &dp::RegisterRequest,
) -> (
    DevicePluginClient<Channel>,
    tonic::Streaming<dp::ListAndWatchResponse>,
    dp::ListAndWatchResponse,
) {
    let mut client = kubelet.dial(registration).await.unwrap();
    let mut stream = client
        .list_and_watch(dp::Empty {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(T, stream.next())
        .await
        .expect("the plugin sends its first list within 5 s")
        .expect("the stream stays open")
        .expect("the first list is not an error");
    (client, stream, first)
}
