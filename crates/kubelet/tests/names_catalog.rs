//! For every profile and placement of every catalog model, the names given to the kubelet are
//! legal where they go: device-plugin resource names (extended resource names), socket file
//! names, and DRA device names (DNS labels), and distinct where they must be.

use std::collections::BTreeMap;

use tessera_kubelet::names::{dra_gpu_name, dra_mig_name, dra_mps_name, mig_resource, socket_name};
use tessera_model::Catalog;

/// A DNS label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// An extended resource name `nvidia.com/<name>`: name 1–63 of `[A-Za-z0-9-_.]`, alphanumeric
/// at both ends.
fn extended_resource(s: &str) -> bool {
    let Some(name) = s.strip_prefix("nvidia.com/") else {
        return false;
    };
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

#[test]
fn every_catalog_profile_gets_legal_distinct_names() {
    let mut checked = 0;
    for model in &Catalog::builtin().models {
        let mut resources: BTreeMap<String, String> = BTreeMap::new();
        let mut dra: BTreeMap<String, (String, u8)> = BTreeMap::new();
        for p in &model.profiles {
            let r = mig_resource(&p.name);
            assert!(extended_resource(&r), "{}: {r}", model.key);
            let sock = socket_name(&r);
            assert!(!sock.contains('/') && sock.ends_with(".sock"), "{sock}");
            if let Some(other) = resources.insert(r.clone(), p.name.clone()) {
                panic!("{}: {} and {other} share {r}", model.key, p.name);
            }
            for &start in &p.placements {
                for gpu in [0, 7, 15] {
                    let n = dra_mig_name(gpu, &p.name, start);
                    assert!(dns_label(&n), "{}: {n}", model.key);
                    if gpu == 0 {
                        if let Some(other) = dra.insert(n.clone(), (p.name.clone(), start)) {
                            panic!("{}: {}@{start} and {other:?} share {n}", model.key, p.name);
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "the catalog was walked ({checked} names)");
    assert!(dns_label(&dra_gpu_name(3)));
    assert!(dns_label(&dra_mps_name(3, "12")));
}
