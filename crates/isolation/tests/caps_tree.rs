//! The MIG-capability mapping against a tree laid out like `/proc` and `/dev` on a MIG host:
//! `proc/driver/nvidia-caps/mig-minors` and `proc/devices` are fixtures in the driver's
//! format; the device nodes are made with mknod (root only; otherwise the node tests say
//! they were skipped).

use std::path::{Path, PathBuf};

use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
use tessera_isolation::{DevRoots, DeviceRule, IsolationError, SliceDevices};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvidia-caps")
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// A host tree with GPU nodes 195:*, nvidia-uvm 238:0 and only some capability nodes.
/// `None` when this process may not make device nodes.
fn host_tree(caps: &[u32]) -> Option<tempfile::TempDir> {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture(), tmp.path());
    let dev = tmp.path().join("dev");
    std::fs::create_dir_all(dev.join("nvidia-caps")).unwrap();
    let mut nodes = vec![
        ("nvidiactl".to_string(), 195, 255),
        ("nvidia0".to_string(), 195, 0),
        ("nvidia1".to_string(), 195, 1),
        ("nvidia-uvm".to_string(), 238, 0),
    ];
    for m in caps {
        nodes.push((format!("nvidia-caps/nvidia-cap{m}"), 237, *m));
    }
    for (name, maj, min) in nodes {
        let r = mknodat(
            CWD,
            dev.join(name),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            makedev(maj, min),
        );
        if let Err(e) = r {
            eprintln!("skipped: cannot mknod ({e}); run as root to test device nodes");
            return None;
        }
    }
    Some(tmp)
}

fn pairs(rules: &[DeviceRule]) -> Vec<(u32, u32)> {
    rules.iter().map(|r| (r.major, r.minor.unwrap())).collect()
}

#[test]
fn a_mig_instance_gets_its_gpu_and_its_two_capability_nodes_only() {
    let Some(tmp) = host_tree(&[12]) else { return };
    let roots = DevRoots::under(tmp.path());
    // GPU 0, GI 1, CI 0: minors 12 and 13; node 12 exists, 13 not yet (major from /proc/devices).
    let rules = roots
        .rules_for(SliceDevices::Mig {
            minor: 0,
            gi: 1,
            ci: 0,
        })
        .unwrap();
    assert_eq!(
        pairs(&rules),
        vec![(195, 0), (195, 255), (237, 12), (237, 13), (238, 0)]
    );
    // Another GPU's instance: its own GPU node and its own minors (GPU 1 starts at 138).
    let rules = roots
        .rules_for(SliceDevices::Mig {
            minor: 1,
            gi: 0,
            ci: 0,
        })
        .unwrap();
    assert_eq!(
        pairs(&rules),
        vec![(195, 1), (195, 255), (237, 138), (237, 139), (238, 0)]
    );
    // A whole GPU (MPS, time-slicing): no capability node at all.
    let rules = roots.rules_for(SliceDevices::Gpu { minor: 1 }).unwrap();
    assert_eq!(pairs(&rules), vec![(195, 1), (195, 255), (238, 0)]);
}

#[test]
fn missing_or_wrong_nodes_are_named_errors() {
    let Some(tmp) = host_tree(&[]) else { return };
    let roots = DevRoots::under(tmp.path());
    let e = roots.rules_for(SliceDevices::Gpu { minor: 5 }).unwrap_err();
    assert!(matches!(e, IsolationError::Device { .. }), "{e}");
    assert!(e.to_string().contains("nvidia5"), "{e}");
    let e = roots
        .rules_for(SliceDevices::Mig {
            minor: 0,
            gi: 15,
            ci: 0,
        })
        .unwrap_err();
    assert!(e.to_string().contains("gpu0/gi15/access"), "{e}");
    // A node whose minor disagrees with the driver's list is refused, not trusted.
    mknodat(
        CWD,
        tmp.path().join("dev/nvidia-caps/nvidia-cap21"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o444),
        makedev(237, 99),
    )
    .unwrap();
    let e = roots
        .rules_for(SliceDevices::Mig {
            minor: 0,
            gi: 2,
            ci: 0,
        })
        .unwrap_err();
    assert!(e.to_string().contains("minor is 99"), "{e}");
    // A regular file where a node belongs.
    std::fs::remove_file(tmp.path().join("dev/nvidia1")).unwrap();
    std::fs::write(tmp.path().join("dev/nvidia1"), "").unwrap();
    let e = roots.rules_for(SliceDevices::Gpu { minor: 1 }).unwrap_err();
    assert!(e.to_string().contains("not a character device"), "{e}");
}

#[test]
fn the_fixture_lists_every_instance_of_two_gpus() {
    let roots = DevRoots::under(&fixture());
    let m = tessera_isolation::caps::MigMinors::read(&roots.mig_minors_path()).unwrap();
    assert_eq!(m.minors.get("config"), Some(&1));
    assert_eq!(m.minors.get("monitor"), Some(&2));
    // 2 GPUs x 15 GPU instances x (1 + 8 compute instances), plus config and monitor.
    assert_eq!(m.minors.len(), 2 + 2 * 15 * 9);
    let mut minors: Vec<u32> = m.minors.values().copied().collect();
    minors.sort_unstable();
    minors.dedup();
    assert_eq!(
        minors.len(),
        m.minors.len(),
        "every capability has its own minor"
    );
}
