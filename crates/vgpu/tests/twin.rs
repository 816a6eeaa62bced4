//! The host backend against the errno-faithful twin: each driver rule of the notes, the errno
//! it answers and the typed error the backend makes of it; the rendered tree read through the
//! real file code gives the same observations as the twin in memory.

use proptest::prelude::*;
use tessera_vgpu::host::{Framework, HostError, SysfsHost, Target, VgpuHost};
use tessera_vgpu::sysfs::{Errno, RealFs, Sysfs};
use tessera_vgpu::twin::{RenderedTwin, Twin, TwinGpuSpec};
use tessera_vgpu::VgpuCatalog;

fn twin(specs: &[&str]) -> Twin {
    let c = VgpuCatalog::builtin();
    let specs: Vec<TwinGpuSpec> = specs
        .iter()
        .map(|s| TwinGpuSpec::parse(s, c).unwrap())
        .collect();
    Twin::new(&specs, c, 7).unwrap()
}

fn host(specs: &[&str]) -> SysfsHost<Twin> {
    SysfsHost::new(twin(specs), VgpuCatalog::builtin().clone())
}

fn errno(e: &HostError) -> Option<Errno> {
    e.errno()
}

#[test]
fn vfs_are_enabled_through_sriov_numvfs_with_the_kernels_errno() {
    let mut h = host(&["a30-24gb/mdev", "l40s-48gb"]);
    let gpus = h.gpus().unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0].board.as_deref(), Some("a30-24gb"));
    assert_eq!(gpus[0].framework, None, "no VF yet");
    let a30 = gpus[0].bdf.clone();
    let e = h.set_vfs(&a30, 99).unwrap_err();
    assert_eq!(errno(&e), Some(Errno::ERANGE));
    assert!(e.to_string().contains("above sriov_totalvfs"), "{e}");
    h.set_vfs(&a30, 4).unwrap();
    let e = h.set_vfs(&a30, 2).unwrap_err();
    assert_eq!(errno(&e), Some(Errno::EBUSY));
    assert!(e.to_string().contains("set 0 first"), "{e}");
    let g = &h.gpus().unwrap()[0];
    assert_eq!((g.vfs.len(), g.framework), (4, Some(Framework::Mdev)));
    h.fs_mut().set_sriov_capable(1, false);
    let e = h.set_vfs(&gpus[1].bdf, 2).unwrap_err();
    assert_eq!(errno(&e), Some(Errno::ENOENT));
    assert!(e.to_string().contains("vGPU manager"), "{e}");
}

#[test]
fn mdev_available_instances_drop_and_duplicate_uuids_are_eexist() {
    let mut h = host(&["a30-24gb/mdev"]);
    let bdf = h.gpus().unwrap()[0].bdf.clone();
    h.set_vfs(&bdf, 4).unwrap();
    let g = h.gpus().unwrap()[0].clone();
    let before = h
        .offers(&g)
        .unwrap()
        .iter()
        .filter(|o| o.type_name == "A30-6C")
        .count();
    assert_eq!(before, 4, "every VF offers A30-6C");
    let v = h.create(&g, "A30-6C", &Target::default()).unwrap();
    assert_eq!(v.type_name.as_deref(), Some("A30-6C"));
    let offers = h.offers(&g).unwrap();
    assert!(
        offers.iter().all(|o| o.vf != g.vfs[0]),
        "the used VF shows 0 available"
    );
    assert!(
        offers.iter().all(|o| o.type_name == "A30-6C"),
        "only the same size stays: {offers:?}"
    );
    let uuid = match &v.handle {
        tessera_vgpu::host::Handle::Mdev { uuid, .. } => uuid.clone(),
        h => panic!("{h:?}"),
    };
    let e = h
        .create(
            &g,
            "A30-6C",
            &Target {
                vf: Some(g.vfs[1].clone()),
                uuid: Some(uuid.clone()),
            },
        )
        .unwrap_err();
    assert_eq!(errno(&e), Some(Errno::EEXIST), "{e}");
    // A direct write of a type the VF does not offer is EUSERS.
    let type_dir = h
        .fs()
        .list(&format!(
            "/sys/class/mdev_bus/{}/mdev_supported_types",
            g.vfs[0]
        ))
        .unwrap()[0]
        .clone();
    let e = h
        .fs_mut()
        .write(
            &format!(
                "/sys/class/mdev_bus/{}/mdev_supported_types/{type_dir}/create",
                g.vfs[0]
            ),
            "7e55e1a0-0000-4000-8000-0000000000aa",
        )
        .unwrap_err();
    assert_eq!(e.errno, Errno::EUSERS);
    assert_eq!(
        h.fs_mut()
            .write("/sys/bus/mdev/devices/nope/remove", "1")
            .unwrap_err()
            .errno,
        Errno::ENOENT
    );
}

#[test]
fn a_same_size_violation_is_refused_with_the_rule_in_words_unless_mixed_size_is_on() {
    let mut h = host(&["l40s-48gb"]);
    let bdf = h.gpus().unwrap()[0].bdf.clone();
    h.set_vfs(&bdf, 4).unwrap();
    let g = h.gpus().unwrap()[0].clone();
    assert_eq!(g.framework, Some(Framework::VendorVfio));
    h.create(&g, "L40S-8C", &Target::default()).unwrap();
    let e = h.create(&g, "L40S-24C", &Target::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("same frame buffer size") && msg.contains("L40S-8C"),
        "{msg}"
    );
    // Written anyway on a free VF, the driver says EINVAL and the backend names the rule.
    let e = h
        .create(
            &g,
            "L40S-24C",
            &Target {
                vf: Some(g.vfs[2].clone()),
                uuid: None,
            },
        )
        .unwrap_err();
    assert_eq!(errno(&e), Some(Errno::EINVAL), "{e}");
    assert!(e.to_string().contains("same-size rule"), "{e}");
    // Up to the type's maximum (6 of L40S-8C; 4 VFs here), and a typo gets a suggestion.
    let e = h.create(&g, "L40S-8", &Target::default()).unwrap_err();
    assert!(e.to_string().contains("did you mean `L40S-8C`"), "{e}");

    let mut h = host(&["l40s-48gb"]);
    h.set_vfs(&bdf, 4).unwrap();
    h.fs_mut().set_mixed_size(&bdf, true).unwrap();
    let g = h.gpus().unwrap()[0].clone();
    h.create(&g, "L40S-8C", &Target::default()).unwrap();
    h.create(&g, "L40S-24C", &Target::default()).unwrap();
    h.create(&g, "L40S-16C", &Target::default()).unwrap(); // 8 + 24 + 16 = 48 GiB: full
    let e = h.create(&g, "L40S-4C", &Target::default()).unwrap_err();
    assert!(
        matches!(e, HostError::NoRoom { .. }),
        "the frame buffer is used up: {e}"
    );
    let e = h.fs_mut().set_mixed_size(&bdf, false).unwrap_err();
    assert!(e.to_string().contains("rc=19"), "{e}");
}

#[test]
fn vendor_vfio_errno_eperm_eio_enxio() {
    let mut h = host(&["h100-80gb/mig"]);
    let bdf = h.gpus().unwrap()[0].bdf.clone();
    h.set_vfs(&bdf, 4).unwrap();
    let g = h.gpus().unwrap()[0].clone();
    let vf0 = g.vfs[0].clone();
    let gi_path = format!("/sys/bus/pci/devices/{vf0}/nvidia/gpu_instance_id");
    assert_eq!(h.fs().read(&gi_path).unwrap_err().errno, Errno::ENXIO);
    // MIG on, no GPU instance: nothing is creatable, and writing a MIG-backed type is EIO.
    assert_eq!(h.offers(&g).unwrap(), vec![]);
    let e = h.create(
        &g,
        "H100XM-1-10C",
        &Target {
            vf: Some(vf0.clone()),
            uuid: None,
        },
    );
    // The type is unknown to every VF's list (none lists anything), so no ID is known: NoRoom.
    assert!(matches!(e, Err(HostError::NoRoom { .. })), "{e:?}");
    let id_1g = 1000
        + 50 * VgpuCatalog::builtin()
            .boards
            .iter()
            .position(|b| b.key == "h100-80gb")
            .unwrap()
        + VgpuCatalog::builtin()
            .board("h100-80gb")
            .unwrap()
            .types
            .iter()
            .position(|t| t.name == "H100XM-1-10C")
            .unwrap();
    let path = format!("/sys/bus/pci/devices/{vf0}/nvidia/current_vgpu_type");
    assert_eq!(
        h.fs_mut()
            .write(&path, &id_1g.to_string())
            .unwrap_err()
            .errno,
        Errno::EIO
    );
    assert_eq!(
        h.fs_mut().write(&path, "0").unwrap_err().errno,
        Errno::EPERM,
        "removing from an empty VF"
    );
    // Create the GPU instance through the MIG backend, then the type is creatable once.
    let (mig, idx) = h.mig(&bdf).unwrap();
    mig.create_gi(idx, "1g.10gb", 0).unwrap();
    let v = h.create(&g, "H100XM-1-10C", &Target::default()).unwrap();
    assert!(v.gi_id.is_some(), "the vGPU shows its GPU instance");
    assert_eq!(
        h.fs_mut()
            .write(&path, &id_1g.to_string())
            .unwrap_err()
            .errno,
        Errno::EPERM,
        "occupied VF"
    );
    // Its GPU instance now looks busy to MIG tools.
    let (mig, idx) = h.mig(&bdf).unwrap();
    assert!(mig.instances(idx).unwrap().iter().all(|i| i.is_busy()));
    // Only one free GI existed: a second one is not offered any more.
    assert!(h.offers(&g).unwrap().is_empty());
    h.destroy(&v).unwrap();
    let (mig, idx) = h.mig(&bdf).unwrap();
    assert!(
        mig.instances(idx).unwrap().iter().all(|i| !i.is_busy()),
        "released with the vGPU"
    );
}

#[test]
fn an_attached_vgpu_is_never_written_to() {
    let mut h = host(&["a30-24gb/mdev"]);
    let bdf = h.gpus().unwrap()[0].bdf.clone();
    h.set_vfs(&bdf, 2).unwrap();
    let g = h.gpus().unwrap()[0].clone();
    let v = h.create(&g, "A30-12C", &Target::default()).unwrap();
    let uuid = match &v.handle {
        tessera_vgpu::host::Handle::Mdev { uuid, .. } => uuid.clone(),
        h => panic!("{h:?}"),
    };
    h.fs_mut().set_open(&uuid, true).unwrap();
    let v = h.vgpus(&g).unwrap().remove(0);
    assert!(v.open);
    let e = h.destroy(&v).unwrap_err();
    assert!(matches!(e, HostError::InUse { .. }), "{e}");
    assert_eq!(
        h.fs().stats().open_destroy_attempts,
        0,
        "the backend did not even try"
    );
    // The twin itself refuses with EBUSY, and counts the attempt.
    let e = h
        .fs_mut()
        .write(&format!("/sys/bus/mdev/devices/{uuid}/remove"), "1")
        .unwrap_err();
    assert_eq!(e.errno, Errno::EBUSY);
    let e = h.set_vfs(&bdf, 0).unwrap_err();
    assert_eq!(errno(&e), Some(Errno::EBUSY));
    assert_eq!(h.fs().stats().open_destroy_attempts, 2);
    h.fs_mut().set_open(&uuid, false).unwrap();
    h.destroy(&v).unwrap();
    assert!(h.vgpus(&g).unwrap().is_empty());
}

#[test]
fn a_reboot_loses_vfs_vgpus_instances_and_hopper_mig_mode() {
    let mut h = host(&["a30-24gb/mdev/mig", "h100-80gb/mig"]);
    let gpus = h.gpus().unwrap();
    for g in &gpus {
        h.set_vfs(&g.bdf, 2).unwrap();
        let (mig, idx) = h.mig(&g.bdf).unwrap();
        let p = if idx == 0 { "1g.6gb" } else { "1g.10gb" };
        mig.create_gi(idx, p, 0).unwrap();
    }
    let g0 = h.gpus().unwrap()[0].clone();
    h.create(&g0, "A30-1-6C", &Target::default()).unwrap();
    h.fs_mut().reboot().unwrap();
    for g in h.gpus().unwrap() {
        assert!(g.vfs.is_empty());
        let (mig, idx) = h.mig(&g.bdf).unwrap();
        let mode = mig.mig_mode(idx).unwrap();
        assert_eq!(
            mode.current,
            idx == 0,
            "Ampere keeps MIG mode, Hopper loses it"
        );
        if mode.current {
            assert!(mig.instances(idx).unwrap().is_empty());
        }
    }
}

#[test]
fn amd_partitions_change_only_while_idle() {
    let mut t = twin(&[]);
    t.add_amd(&["SPX", "DPX", "QPX", "CPX"], &["NPS1", "NPS4"]);
    let mut h = SysfsHost::new(t, VgpuCatalog::builtin().clone());
    let a = h.amd_gpus().unwrap();
    assert_eq!(
        (a[0].compute.as_str(), a[0].memory.as_str()),
        ("SPX", "NPS1")
    );
    let a = h
        .set_amd_partition("card0", Some("cpx"), Some("NPS4"))
        .unwrap();
    assert_eq!((a.compute.as_str(), a.memory.as_str()), ("CPX", "NPS4"));
    let e = h.set_amd_partition("card0", Some("XPX"), None).unwrap_err();
    assert!(e.to_string().contains("offers SPX, DPX, QPX, CPX"), "{e}");
    h.fs_mut().set_amd_busy("card0", true).unwrap();
    let e = h.set_amd_partition("card0", Some("SPX"), None).unwrap_err();
    assert!(e.to_string().contains("no work runs"), "{e}");
    assert_eq!(h.amd_gpus().unwrap()[0].compute, "CPX");
}

#[test]
fn a_plain_file_tree_cannot_stand_in_for_the_driver_and_read_back_says_so() {
    // Render a twin with VFs, then drive the rendered files with no twin behind them: the
    // write "succeeds" and nothing happens, which read-back catches.
    let dir = tempfile::tempdir().unwrap();
    let mut h = host(&["a30-24gb/mdev"]);
    let bdf = h.gpus().unwrap()[0].bdf.clone();
    h.set_vfs(&bdf, 2).unwrap();
    h.fs().render(dir.path()).unwrap();
    let mut plain = SysfsHost::new(RealFs::new(dir.path()), VgpuCatalog::builtin().clone());
    let g = plain.gpus().unwrap()[0].clone();
    assert_eq!(g.vfs.len(), 2);
    let e = plain.create(&g, "A30-12C", &Target::default()).unwrap_err();
    assert!(matches!(e, HostError::ReadBack { .. }), "{e}");
}

/// One random operation on a host.
fn step<F: Sysfs>(h: &mut SysfsHost<F>, op: u8, arg: u8) {
    let gpus = h.gpus().unwrap();
    let g = &gpus[arg as usize % gpus.len()];
    match op % 5 {
        0 => {
            let _ = h.set_vfs(
                &g.bdf,
                if g.vfs.is_empty() {
                    1 + u32::from(arg % 3)
                } else {
                    0
                },
            );
        }
        1 | 2 => {
            let offers = h.offers(g).unwrap();
            if !offers.is_empty() {
                let o = &offers[arg as usize % offers.len()];
                let _ = h.create(
                    g,
                    &o.type_name,
                    &Target {
                        vf: Some(o.vf.clone()),
                        uuid: None,
                    },
                );
            }
        }
        3 => {
            let v = h.vgpus(g).unwrap();
            if !v.is_empty() {
                let _ = h.destroy(&v[arg as usize % v.len()]);
            }
        }
        _ => {
            if let Some((mig, idx)) = h.mig(&g.bdf) {
                let _ = mig.create_gi(idx, if idx == 0 { "1g.6gb" } else { "1g.10gb" }, arg % 4);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The rendered tree, read through the real file code, shows exactly what the twin shows
    /// in memory, after any sequence of operations.
    #[test]
    fn the_rendered_tree_reads_the_same_as_the_twin(ops in prop::collection::vec((any::<u8>(), any::<u8>()), 1..14)) {
        let specs = ["a30-24gb/mdev/mig", "h100-80gb/vfio/mig", "l40s-48gb"];
        let dir = tempfile::tempdir().unwrap();
        let mut mem = host(&specs);
        let mut rendered = SysfsHost::new(RenderedTwin::new(twin(&specs), dir.path()).unwrap(), VgpuCatalog::builtin().clone());
        for (op, arg) in ops {
            step(&mut mem, op, arg);
            step(&mut rendered, op, arg);
            let a = mem.gpus().unwrap();
            prop_assert_eq!(&a, &rendered.gpus().unwrap());
            for g in &a {
                prop_assert_eq!(mem.vgpus(g).unwrap(), rendered.vgpus(g).unwrap());
                prop_assert_eq!(mem.offers(g).unwrap(), rendered.offers(g).unwrap());
            }
        }
    }
}
