//! MPS by uid and slice visibility through the real binary, with clients run as other uids
//! (needs root; the in-process tests in tessera-server cover the same rules without it).

mod server_common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use server_common::{block, poll, temp_dir, wait_child, Daemon};
use tessera_server::wire::{RequestState, RequestView, Slice};

fn leased_of(d: &Daemon, uid: u32) -> Option<RequestView> {
    block(d.client().list(false))
        .ok()?
        .into_iter()
        .find(|v| v.uid == uid && v.state == RequestState::Leased)
}

#[test]
fn a_second_user_waits_for_the_mps_gpu_and_run_and_ps_say_why() {
    if !server_common::is_root() {
        eprintln!("skipped: needs root to run clients as other uids");
        return;
    }
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\ngpus: [{index: 0, mode: mps}]\nsocket_group: \"1000\"\nscheduler: {tick_ms: 100}\n",
    );
    let mut alice = d
        .cli(&["run", "-q", "--mem", "8GiB", "--", "sleep", "30"])
        .uid(1000)
        .gid(1000)
        .spawn()
        .unwrap();
    let a = poll(30, "alice's MPS lease", || leased_of(&d, 1000));
    assert!(matches!(a.slice, Some(Slice::Mps { .. })), "{a:?}");
    let mut bob = d
        .cli(&["run", "--mem", "8GiB", "--", "true"])
        .uid(1001)
        .gid(1000)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // bob's request waits (the GPU has room: only the uid rule holds it back) ...
    poll(30, "bob's wait reason", || {
        let out = d.cli(&["ps"]).uid(1001).gid(1000).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("waits: GPU 0: held by another user's MPS clients")
            .then_some(())
    });
    assert!(leased_of(&d, 1001).is_none());
    // ... until alice's lease ends; then it is served.
    block(d.client().cancel(a.id)).unwrap();
    wait_child(&mut alice, 30, "alice's run");
    let st = wait_child(&mut bob, 30, "bob's run");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut bob.stderr.take().unwrap(), &mut err).unwrap();
    assert!(st.success(), "{err}");
    assert!(
        err.contains("waits: GPU 0: held by another user's MPS clients"),
        "{err}"
    );
}

#[test]
fn a_non_admin_status_json_has_no_other_users_slice_uuid() {
    if !server_common::is_root() {
        eprintln!("skipped: needs root to run clients as other uids");
        return;
    }
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\nsocket_group: \"1000\"\nscheduler: {tick_ms: 100}\n",
    );
    let mut alice = d
        .cli(&["run", "-q", "--mig", "1g.10gb", "--", "sleep", "30"])
        .uid(1000)
        .gid(1000)
        .spawn()
        .unwrap();
    let a = poll(30, "alice's lease", || leased_of(&d, 1000));
    let Some(Slice::Mig { uuid, .. }) = &a.slice else {
        panic!("{a:?}")
    };
    // root's status has it once the scheduler published the lease.
    poll(30, "the lease in root's status", || {
        let out = d.cli_ok(&["status", "-o", "json"]);
        String::from_utf8_lossy(&out.stdout)
            .contains(uuid.as_str())
            .then_some(())
    });
    let out = d
        .cli(&["status", "-o", "json"])
        .uid(1001)
        .gid(1000)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(uuid.as_str()), "bob sees {uuid}: {text}");
    assert!(!text.contains("sleep"), "{text}");
    let st: serde_json::Value = serde_json::from_str(&text).unwrap();
    let held = st["gpus"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["busy"] == true)
        .expect("alice's instance shown held");
    assert!(held.get("uuid").is_none(), "{held}");
    // alice sees her own slice's UUID.
    let out = d
        .cli(&["status", "-o", "json"])
        .uid(1000)
        .gid(1000)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(uuid.as_str()));
    block(d.client().cancel(a.id)).unwrap();
    wait_child(&mut alice, 30, "alice's run");
}

/// The GPU's MPS pipe directory belongs to the user whose clients it serves: that user may use
/// it, another may not even list it, and the next holder takes it over.
#[test]
fn the_mps_pipe_directory_lets_the_lease_owner_in_and_nobody_else() {
    if !server_common::is_root() {
        eprintln!("skipped: needs root to run clients as other uids");
        return;
    }
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\ngpus: [{index: 0, mode: mps}]\nsocket_group: \"1000\"\nscheduler: {tick_ms: 100}\n",
    );
    let can_use = |uid: u32, pipe: &str| {
        std::process::Command::new("sh")
            .args([
                "-c",
                "test -w \"$1\" && test -x \"$1\" && ls \"$1\" >/dev/null",
                "sh",
                pipe,
            ])
            .uid(uid)
            .gid(1000)
            .status()
            .unwrap()
            .success()
    };
    for (owner, other) in [(1000, 1001), (1001, 1000)] {
        let mut run = d
            .cli(&["run", "-q", "--mps", "--mem", "8GiB", "--", "sleep", "30"])
            .uid(owner)
            .gid(1000)
            .spawn()
            .unwrap();
        let lease = poll(30, "the MPS lease", || leased_of(&d, owner));
        let pipe = lease.env["CUDA_MPS_PIPE_DIRECTORY"].clone();
        assert!(
            !std::path::Path::new(&pipe).starts_with(dir.path().join("state")),
            "the pipe directory {pipe} lies inside the 0700 state directory"
        );
        assert!(can_use(owner, &pipe), "uid {owner} cannot use {pipe}");
        assert!(!can_use(other, &pipe), "uid {other} can use {pipe}");
        block(d.client().cancel(lease.id)).unwrap();
        wait_child(&mut run, 30, "the MPS run");
    }
}
