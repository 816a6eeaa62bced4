//! The chart's CRD is the one generated from the Rust types. To refresh it after changing
//! `crates/k8s/src/crd.rs`: `tessera k8s crd > deploy/helm/tessera/crds/tesseranodes.tessera.dev.yaml`
//! (or run this test with `TESSERA_BLESS=1`).

use std::path::PathBuf;

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/helm/tessera/crds/tesseranodes.tessera.dev.yaml");
    let generated = tessera_k8s::crd_yaml();
    if std::env::var_os("TESSERA_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the CRD generated from crates/k8s/src/crd.rs; regenerate it with \
         `tessera k8s crd > deploy/helm/tessera/crds/tesseranodes.tessera.dev.yaml`",
        path.display()
    );
}
