//! The generated protocol types, clients and servers, one module per kubelet API.
//!
//! Every module is generated at build time from `proto/*.proto` (package names are the wire
//! names: `v1beta1`, `k8s.io.kubelet.pkg.apis.dra.v1`, `pluginregistration`, `v1`).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Device plugin API `v1beta1` (`/v1beta1.Registration/*`, `/v1beta1.DevicePlugin/*`).
pub mod deviceplugin {
    tonic::include_proto!("v1beta1");
}

/// DRA kubelet plugin API `v1` (`/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/*`).
pub mod dra {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}

/// Plugin-watcher registration API (`/pluginregistration.Registration/*`).
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// PodResources API `v1` (`/v1.PodResourcesLister/*`).
pub mod podresources {
    tonic::include_proto!("v1");
}

/// The encoded `FileDescriptorSet` of all four APIs, as compiled (for contract tests and
/// reflection).
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kubelet_descriptors.bin"));
