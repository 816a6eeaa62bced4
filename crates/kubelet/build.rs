//! Build script: compiles the kubelet's gRPC contracts under `proto/` (filled in with the protocols).
fn main() {}
