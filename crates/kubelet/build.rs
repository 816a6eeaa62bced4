//! Build script: compiles the kubelet's gRPC contracts under `proto/` with protox (no `protoc`
//! binary) and generates tonic clients and servers with tonic-prost-build. The encoded
//! descriptor set is written too, so tests can check the wire names and field numbers.
use prost::Message;

const PROTOS: [&str; 4] = [
    "proto/deviceplugin_v1beta1.proto",
    "proto/dra_v1.proto",
    "proto/pluginregistration_v1.proto",
    "proto/podresources_v1.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("kubelet_descriptors.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
