//! Helpers shared by the kubelet crate's integration tests.

// Each test file uses only some of them.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::resource::v1 as rv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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

/// The DRA driver name the tests register.
pub const DRIVER: &str = "gpu.tessera.dev";

/// A ResourceClaim as kube-scheduler leaves it: allocated one `device` of pool `node-a` for
/// request `gpu`.
pub fn allocated_claim(ns: &str, name: &str, uid: &str, device: &str) -> rv1::ResourceClaim {
    rv1::ResourceClaim {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Default::default(),
        status: Some(rv1::ResourceClaimStatus {
            allocation: Some(rv1::AllocationResult {
                devices: Some(rv1::DeviceAllocationResult {
                    results: Some(vec![rv1::DeviceRequestAllocationResult {
                        driver: DRIVER.into(),
                        pool: "node-a".into(),
                        device: device.into(),
                        request: "gpu".into(),
                        ..Default::default()
                    }]),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
