//! tessera on Kubernetes: the node agent (a DRA kubelet plugin and a device-plugin mode, speaking the
//! kubelet's gRPC contracts) and the cluster controller (plans slices for pending pods and writes
//! each node's desired layout).
