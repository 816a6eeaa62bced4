//! The kubelet's gRPC contracts, compiled from the project's own `.proto` files, and tessera's
//! node-side plugins that speak them: the device-plugin mode and the DRA kubelet plugin.

pub mod proto;
