//! `tessera vgpu` end to end on the twin: types, apply (converge, then a refusal with exit 1
//! when a VM's vGPU is in the way), owners guarding release, and Proxmox/libvirt output.

use std::process::{Command, Output};

fn tessera(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env("TESSERA_VGPU_STATE", state)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn types_lists_a_boards_vgpu_types_with_their_backing() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&tessera(
        dir.path(),
        &["-o", "json", "vgpu", "types", "--gpu", "a30"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["key"], "a30-24gb");
    let t = v["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "A30-1-6C")
        .unwrap();
    assert_eq!(
        (t["mig"].as_str(), t["fb_mib"].as_u64(), t["max"].as_u64()),
        (Some("1g.6gb"), Some(6144), Some(4))
    );
    let e = tessera(dir.path(), &["vgpu", "types", "--gpu", "h20"]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("did you mean `h200`"));
}

#[test]
fn apply_converges_then_refuses_with_exit_1_when_a_vms_vgpu_is_in_the_way() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("state");
    let s = st.as_path();
    ok(&tessera(
        s,
        &[
            "vgpu",
            "twin",
            "init",
            "--gpus",
            "a30-24gb/mdev/mig,l40s-48gb",
        ],
    ));
    let d = dir.path().join("d.yaml");
    std::fs::write(&d, "version: 1\ngpus:\n- gpu: \"0000:41:00.0\"\n  vgpus:\n  - {type: A30-1-6C, count: 2}\n  - {type: A30-2-12C, vf: \"0000:41:00.7\"}\n- gpu: \"0000:61:00.0\"\n  vgpus:\n  - {type: L40S-12C, count: 2}\n").unwrap();
    let out = ok(&tessera(
        s,
        &["vgpu", "apply", "--desired", d.to_str().unwrap()],
    ));
    let gi = out.find("create GPU instance").unwrap();
    let vg = out.find("create A30").unwrap();
    assert!(gi < vg, "GPU instances first:\n{out}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&tessera(s, &["-o", "json", "vgpu", "status"]))).unwrap();
    let n: usize = status["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["vgpus"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, 5);
    // Again: nothing to do.
    let again = ok(&tessera(
        s,
        &["vgpu", "apply", "--desired", d.to_str().unwrap()],
    ));
    assert!(!again.contains("create"), "{again}");
    // A VM opens an L40S vGPU; a desired set without it is refused, exit 1, nothing changed.
    ok(&tessera(s, &["vgpu", "twin", "attach", "0000:61:00.4"]));
    let d2 = dir.path().join("d2.yaml");
    std::fs::write(
        &d2,
        "version: 1\ngpus:\n- gpu: \"0000:61:00.0\"\n  vgpus:\n  - {type: L40S-24C, count: 2}\n",
    )
    .unwrap();
    let r = tessera(s, &["vgpu", "apply", "--desired", d2.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stdout).contains("never destroyed"));
    let plan = tessera(s, &["vgpu", "plan", "--desired", d2.to_str().unwrap()]);
    assert_eq!(plan.status.code(), Some(1));
    let after: serde_json::Value =
        serde_json::from_str(&ok(&tessera(s, &["-o", "json", "vgpu", "status"]))).unwrap();
    assert_eq!(
        after["gpus"],
        status["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let mut g = g.clone();
                for v in g["vgpus"].as_array_mut().unwrap() {
                    if v["handle"]["bdf"] == "0000:61:00.4" {
                        v["open"] = serde_json::Value::Bool(true);
                    }
                }
                g
            })
            .collect::<serde_json::Value>()
    );
    // The journal holds every op of the first apply.
    let journal = std::fs::read_to_string(st.join("vgpu-journal.jsonl")).unwrap();
    assert!(journal.lines().count() > 10);
}

#[test]
fn a_vgpu_is_released_only_by_its_owner_and_proxmox_output_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    ok(&tessera(
        s,
        &["vgpu", "twin", "init", "--gpus", "a30-24gb/mdev"],
    ));
    let out = ok(&tessera(
        s,
        &[
            "-o",
            "json",
            "vgpu",
            "create",
            "--gpu",
            "0000:41:00.0",
            "--type",
            "A30-6C",
            "--uuid",
            "00000000-0000-0000-0000-000000000101",
            "--owner",
            "pve:101",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["handle"]["uuid"], "00000000-0000-0000-0000-000000000101");
    // A typo is bad input (2); a size the same-size rule forbids is a request the host
    // cannot meet now (1), said in words.
    let e = tessera(
        s,
        &["vgpu", "create", "--gpu", "0000:41:00.0", "--type", "A30-6"],
    );
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("did you mean `A30-6C`"));
    let e = tessera(
        s,
        &[
            "vgpu",
            "create",
            "--gpu",
            "0000:41:00.0",
            "--type",
            "A30-12C",
        ],
    );
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("same frame buffer size"));
    let r = tessera(
        s,
        &[
            "vgpu",
            "release",
            "--handle",
            "00000000-0000-0000-0000-000000000101",
        ],
    );
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("belongs to pve:101"));
    let r = ok(&tessera(s, &["vgpu", "release", "--owner", "pve:102"]));
    assert!(r.contains("nothing to release"));
    let xml = ok(&tessera(
        s,
        &[
            "vgpu",
            "libvirt",
            "--handle",
            "00000000-0000-0000-0000-000000000101",
        ],
    ));
    assert!(
        xml.contains("type='mdev'") && xml.contains("uuid='00000000-0000-0000-0000-000000000101'")
    );
    let map = ok(&tessera(
        s,
        &[
            "vgpu",
            "proxmox",
            "mapping",
            "--gpu",
            "0000:41:00.0",
            "--node",
            "pve1",
        ],
    ));
    assert_eq!(
        map.lines().filter(|l| l.starts_with("\tmap ")).count(),
        6,
        "{map}"
    );
    let line = ok(&tessera(
        s,
        &[
            "vgpu",
            "proxmox",
            "hostpci",
            "--gpu",
            "0000:41:00.0",
            "--type",
            "A30-6C",
            "--vf",
            "0000:41:00.4",
        ],
    ));
    assert!(
        line.starts_with("hostpci0: 0000:41:00.4,mdev=nvidia-"),
        "{line}"
    );
    let r = ok(&tessera(s, &["vgpu", "release", "--owner", "pve:101"]));
    assert!(
        r.contains("released 00000000-0000-0000-0000-000000000101"),
        "{r}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ok(&tessera(s, &["-o", "json", "vgpu", "status"]))).unwrap();
    assert!(status["gpus"][0]["vgpus"].as_array().unwrap().is_empty());
}
