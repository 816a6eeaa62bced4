//! The compiled kubelet contracts carry the kubelet's exact wire names: full method paths
//! and the field numbers a peer relies on.
use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use tessera_kubelet::proto::DESCRIPTORS;

fn set() -> FileDescriptorSet {
    FileDescriptorSet::decode(DESCRIPTORS).expect("descriptor set decodes")
}

fn methods(fds: &FileDescriptorSet) -> Vec<String> {
    let mut out = Vec::new();
    for f in &fds.file {
        for s in &f.service {
            for m in &s.method {
                out.push(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
            }
        }
    }
    out.sort();
    out
}

fn file<'a>(fds: &'a FileDescriptorSet, package: &str) -> &'a FileDescriptorProto {
    fds.file
        .iter()
        .find(|f| f.package() == package)
        .unwrap_or_else(|| panic!("package {package} compiled"))
}

/// `message.field` → number.
fn field(fds: &FileDescriptorSet, package: &str, path: &str) -> i32 {
    let (msg, fld) = path.split_once('.').unwrap();
    let m = file(fds, package)
        .message_type
        .iter()
        .find(|m| m.name() == msg)
        .unwrap_or_else(|| panic!("{package}.{msg} exists"));
    m.field
        .iter()
        .find(|f| f.name() == fld)
        .unwrap_or_else(|| panic!("{package}.{path} exists"))
        .number()
}

#[test]
fn method_paths_are_the_kubelets() {
    let got = methods(&set());
    let want = [
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources",
        "/pluginregistration.Registration/GetInfo",
        "/pluginregistration.Registration/NotifyRegistrationStatus",
        "/v1.PodResourcesLister/Get",
        "/v1.PodResourcesLister/GetAllocatableResources",
        "/v1.PodResourcesLister/List",
        "/v1beta1.DevicePlugin/Allocate",
        "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        "/v1beta1.DevicePlugin/GetPreferredAllocation",
        "/v1beta1.DevicePlugin/ListAndWatch",
        "/v1beta1.DevicePlugin/PreStartContainer",
        "/v1beta1.Registration/Register",
    ];
    assert_eq!(got, want);
}

#[test]
fn list_and_watch_is_server_streaming() {
    let fds = set();
    let f = file(&fds, "v1beta1");
    let svc = f
        .service
        .iter()
        .find(|s| s.name() == "DevicePlugin")
        .unwrap();
    for m in &svc.method {
        assert!(!m.client_streaming());
        assert_eq!(
            m.server_streaming(),
            m.name() == "ListAndWatch",
            "{}",
            m.name()
        );
    }
}

#[test]
fn field_numbers_match_the_published_api() {
    let fds = set();
    let cases = [
        ("v1beta1", "RegisterRequest.version", 1),
        ("v1beta1", "RegisterRequest.endpoint", 2),
        ("v1beta1", "RegisterRequest.resource_name", 3),
        ("v1beta1", "RegisterRequest.options", 4),
        (
            "v1beta1",
            "DevicePluginOptions.get_preferred_allocation_available",
            2,
        ),
        ("v1beta1", "Device.ID", 1),
        ("v1beta1", "Device.health", 2),
        ("v1beta1", "Device.topology", 3),
        ("v1beta1", "ContainerAllocateRequest.devices_ids", 1),
        ("v1beta1", "ContainerAllocateResponse.envs", 1),
        ("v1beta1", "ContainerAllocateResponse.mounts", 2),
        ("v1beta1", "ContainerAllocateResponse.devices", 3),
        ("v1beta1", "ContainerAllocateResponse.annotations", 4),
        ("v1beta1", "ContainerAllocateResponse.cdi_devices", 5),
        (
            "v1beta1",
            "ContainerPreferredAllocationRequest.allocation_size",
            3,
        ),
        ("k8s.io.kubelet.pkg.apis.dra.v1", "Claim.namespace", 1),
        ("k8s.io.kubelet.pkg.apis.dra.v1", "Claim.uid", 2),
        ("k8s.io.kubelet.pkg.apis.dra.v1", "Claim.name", 3),
        (
            "k8s.io.kubelet.pkg.apis.dra.v1",
            "NodePrepareResourceResponse.error",
            2,
        ),
        ("k8s.io.kubelet.pkg.apis.dra.v1", "Device.request_names", 1),
        ("k8s.io.kubelet.pkg.apis.dra.v1", "Device.pool_name", 2),
        ("k8s.io.kubelet.pkg.apis.dra.v1", "Device.device_name", 3),
        ("k8s.io.kubelet.pkg.apis.dra.v1", "Device.cdi_device_ids", 4),
        ("pluginregistration", "PluginInfo.type", 1),
        ("pluginregistration", "PluginInfo.endpoint", 3),
        ("pluginregistration", "PluginInfo.supported_versions", 4),
        (
            "pluginregistration",
            "RegistrationStatus.plugin_registered",
            1,
        ),
        ("pluginregistration", "RegistrationStatus.error", 2),
        ("v1", "ContainerResources.devices", 2),
        ("v1", "ContainerResources.dynamic_resources", 5),
        ("v1", "ContainerDevices.resource_name", 1),
        ("v1", "ContainerDevices.device_ids", 2),
        ("v1", "DynamicResource.claim_name", 2),
        ("v1", "ClaimResource.device_name", 4),
        ("v1", "GetPodResourcesRequest.pod_namespace", 2),
    ];
    for (pkg, path, n) in cases {
        assert_eq!(field(&fds, pkg, path), n, "{pkg}.{path}");
    }
}

#[test]
fn a_register_request_encodes_to_the_bytes_a_go_peer_expects() {
    // Hand-encoded protobuf: field 1 "v1beta1", 2 "e.sock", 3 "a/b".
    let req = tessera_kubelet::proto::deviceplugin::RegisterRequest {
        version: "v1beta1".into(),
        endpoint: "e.sock".into(),
        resource_name: "a/b".into(),
        options: None,
    };
    let mut want = vec![0x0a, 7];
    want.extend_from_slice(b"v1beta1");
    want.extend_from_slice(&[0x12, 6]);
    want.extend_from_slice(b"e.sock");
    want.extend_from_slice(&[0x1a, 3]);
    want.extend_from_slice(b"a/b");
    assert_eq!(req.encode_to_vec(), want);
}
