//! The daemon end to end: the real `tessera serve` on a temporary socket with the sim backend,
//! real `tessera run` clients running real commands.

mod server_common;

use std::collections::BTreeMap;
use std::fs;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use server_common::{block, poll, temp_dir, wait_child, Daemon};
use tessera_model::{Catalog, Placed};
use tessera_server::client::{Client, ClientError};
use tessera_server::store::Store;
use tessera_server::wire::{RequestState, RequestView, Slice};

const FOUR_GPUS: &str = "sim_gpus: h100-80gb:4
gpus:
- {index: 0, mode: mig}
- {index: 1, mode: mig}
- {index: 2, mode: mps}
- {index: 3, mode: timeslice, replicas: 3}
scheduler: {tick_ms: 100}
lease: {heartbeat_interval_ms: 300, heartbeat_timeout_ms: 20000}
";

/// What each client asks for, and what its environment must look like.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Mig(&'static str),
    Mem(&'static str),
    /// `--mps --mem SIZE --sm 20`: an MPS client, never MIG.
    Mps(&'static str),
    Share,
}

fn args_of(w: Want) -> Vec<String> {
    match w {
        Want::Mig(p) => vec!["--mig".into(), p.into()],
        Want::Mem(m) => vec!["--mem".into(), m.into()],
        Want::Mps(m) => vec![
            "--mps".into(),
            "--mem".into(),
            m.into(),
            "--sm".into(),
            "20".into(),
        ],
        Want::Share => vec!["--share".into()],
    }
}

fn spawn_run(d: &Daemon, w: Want, out: &std::path::Path, code: i32, sleep: &str) -> Child {
    let script = format!(
        "printf '%s|%s|%s|%s' \"$CUDA_VISIBLE_DEVICES\" \"$TESSERA_LEASE_ID\" \"$CUDA_MPS_PINNED_DEVICE_MEM_LIMIT\" \"$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE\" > {}; sleep {sleep}; exit {code}",
        out.display()
    );
    let mut args: Vec<String> = vec!["run".into(), "-q".into()];
    args.extend(args_of(w));
    let mut c = d.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    c.args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Interval of a lease in ms: [leased, ended).
/// Poll (30 s at most) until one of the caller's requests is in `state`; that request.
fn first_in_state(client: &Client, state: RequestState, what: &str) -> RequestView {
    poll(30, what, || {
        block(client.list(false))
            .ok()?
            .into_iter()
            .find(|v| v.state == state)
    })
}

/// Poll (`secs` at most) until request `id` is in `state`; its view then.
fn reaches(client: &Client, id: u64, state: RequestState, secs: u64, what: &str) -> RequestView {
    poll(secs, what, || {
        let v = block(client.get(id)).ok()?;
        (v.state == state).then_some(v)
    })
}

fn interval(v: &RequestView) -> (u64, u64) {
    let leased = v.submitted_ms + v.waited_ms;
    (leased, leased + v.running_ms)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Every pair of leases that held the same slice at the same time, as text.
fn double_leases(rows: &[RequestView]) -> Vec<String> {
    let c = Catalog::builtin();
    let m = c.lookup("h100-80gb").unwrap();
    let mut bad = Vec::new();
    let leased: Vec<&RequestView> = rows.iter().filter(|v| v.slice.is_some()).collect();
    for (i, a) in leased.iter().enumerate() {
        for b in &leased[i + 1..] {
            if !overlaps(interval(a), interval(b)) {
                continue;
            }
            match (a.slice.as_ref().unwrap(), b.slice.as_ref().unwrap()) {
                (
                    Slice::Mig {
                        gpu: ga,
                        profile: pa,
                        start: sa,
                        uuid: ua,
                    },
                    Slice::Mig {
                        gpu: gb,
                        profile: pb,
                        start: sb,
                        uuid: ub,
                    },
                ) => {
                    let ma = m.mask(Placed::new(m.profile_named(pa).unwrap(), *sa));
                    let mb = m.mask(Placed::new(m.profile_named(pb).unwrap(), *sb));
                    if (ga == gb && ma & mb != 0) || ua == ub {
                        bad.push(format!(
                            "requests {} and {} share GPU {ga} slices",
                            a.id, b.id
                        ));
                    }
                }
                (
                    Slice::Timeslice {
                        gpu: ga,
                        replica: ra,
                    },
                    Slice::Timeslice {
                        gpu: gb,
                        replica: rb,
                    },
                ) if ga == gb && ra == rb => {
                    bad.push(format!("requests {} and {} share replica {ra}", a.id, b.id))
                }
                _ => {}
            }
        }
    }
    // MPS: at each lease start, the clients then running fit the GPU.
    for a in &leased {
        if let Some(Slice::Mps { gpu, .. }) = a.slice {
            let t = interval(a).0;
            let (mut mem, mut sm) = (0u64, 0u32);
            for b in &leased {
                if let Some(Slice::Mps {
                    gpu: g,
                    memory_mib,
                    sm_percent,
                }) = b.slice
                {
                    let (s, e) = interval(b);
                    if g == gpu && s <= t && t < e {
                        mem += memory_mib;
                        sm += u32::from(sm_percent);
                    }
                }
            }
            if mem > m.memory_mib().unwrap() || sm > 100 {
                bad.push(format!(
                    "MPS GPU {gpu} over capacity at {t}: {mem} MiB, {sm}% SM"
                ));
            }
        }
    }
    bad
}

#[test]
fn thirty_concurrent_runs_get_their_slices_environments_and_exit_codes() {
    let dir = temp_dir();
    let d = Daemon::start(dir.path(), FOUR_GPUS);
    let wants = [
        Want::Mig("1g.10gb"),
        Want::Mig("1g.10gb"),
        Want::Mig("1g.10gb"),
        Want::Mig("1g.10gb"),
        Want::Mig("1g.10gb"),
        Want::Mig("1g.10gb"),
        Want::Mig("1g.20gb"),
        Want::Mig("1g.20gb"),
        Want::Mig("2g.20gb"),
        Want::Mig("2g.20gb"),
        Want::Mig("3g.40gb"),
        Want::Mig("3g.40gb"),
        Want::Mig("4g.40gb"),
        Want::Mig("7g.80gb"),
        Want::Mig("7g.80gb"),
        Want::Mem("8GiB"),
        Want::Mem("12GiB"),
        Want::Mem("20GiB"),
        Want::Mem("30GiB"),
        Want::Mem("40GiB"),
        Want::Mps("16GiB"),
        Want::Mps("24GiB"),
        Want::Mps("10GiB"),
        Want::Share,
        Want::Share,
        Want::Share,
        Want::Share,
        Want::Share,
        Want::Share,
        Want::Share,
    ];
    assert_eq!(wants.len(), 30);

    // A watcher checks every layout it sees and forces re-partitions of GPU 1 while leases run.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new((
        0usize,
        Vec::<String>::new(),
        BTreeMap::<String, u32>::new(),
    )));
    let watcher = {
        let stop = stop.clone();
        let seen = seen.clone();
        let client = d.client();
        std::thread::spawn(move || {
            let c = Catalog::builtin();
            let m = c.lookup("h100-80gb").unwrap();
            let mut flip = false;
            while !stop.load(Ordering::SeqCst) {
                let Ok(st) = block(client.status()) else {
                    continue;
                };
                let mut s = seen.lock().unwrap();
                s.0 += 1;
                for g in st.gpus.iter().filter(|g| g.mode == "mig") {
                    let items: Vec<Placed> = g
                        .instances
                        .iter()
                        .map(|i| Placed::new(m.profile_named(&i.profile).unwrap(), i.start))
                        .collect();
                    for v in m.validate(&items) {
                        s.1.push(format!("GPU {}: {v}", g.index));
                    }
                }
                drop(s);
                // Forced re-partition of GPU 1: the whole GPU, or two halves.
                flip = !flip;
                let layout: Vec<String> = if flip {
                    vec!["7g.80gb@0".into()]
                } else {
                    vec!["3g.40gb@0".into(), "3g.40gb@4".into()]
                };
                let outcome = match block(client.set_layout(1, &layout)) {
                    Ok(_) => "ok".to_string(),
                    Err(ClientError::Api { status, .. }) => status.to_string(),
                    Err(e) => format!("error {e}"),
                };
                *seen.lock().unwrap().2.entry(outcome).or_default() += 1;
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };

    let mut children = Vec::new();
    for (i, w) in wants.iter().enumerate() {
        let out = dir.path().join(format!("out-{i}"));
        let code = (i % 5) as i32 + if i % 3 == 0 { 0 } else { 10 };
        children.push((
            i,
            *w,
            out.clone(),
            code,
            spawn_run(&d, *w, &out, code, "0.3"),
        ));
    }
    for (i, w, out, code, child) in &mut children {
        let st = wait_child(child, 120, &format!("run {i} ({w:?})"));
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        assert_eq!(
            st.code(),
            Some(*code),
            "run {i} ({w:?}) stderr: {err}\n{}",
            d.log_text()
        );
        let text = fs::read_to_string(&*out).unwrap();
        let parts: Vec<&str> = text.split('|').collect();
        let (cvd, lease, mem, sm) = (parts[0], parts[1], parts[2], parts[3]);
        assert!(
            lease.parse::<u64>().is_ok(),
            "run {i}: TESSERA_LEASE_ID `{lease}`"
        );
        match w {
            Want::Mig(_) => assert!(cvd.starts_with("MIG-") && mem.is_empty(), "run {i}: {text}"),
            Want::Share => assert!(cvd.starts_with("GPU-") && mem.is_empty(), "run {i}: {text}"),
            Want::Mem(_) => assert!(
                cvd.starts_with("MIG-") || (cvd.starts_with("GPU-") && mem.starts_with("0=")),
                "run {i}: {text}"
            ),
            Want::Mps(_) => assert!(
                cvd.starts_with("GPU-") && mem.starts_with("0=") && sm == "20",
                "run {i}: {text}"
            ),
        }
    }
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();

    // From the daemon's own records: every lease, none held twice.
    let rows = block(d.client().list(true)).unwrap();
    let ours: Vec<RequestView> = rows.into_iter().filter(|v| v.command.len() == 3).collect();
    assert_eq!(ours.len(), 30);
    assert!(
        ours.iter().all(|v| v.state == RequestState::Done),
        "{ours:#?}"
    );
    let bad = double_leases(&ours);
    assert!(bad.is_empty(), "{bad:#?}");
    let (polls, invalid, forced) = seen.lock().unwrap().clone();
    assert!(polls > 3, "the watcher saw too little ({polls} polls)");
    assert!(invalid.is_empty(), "invalid layouts: {invalid:#?}");
    assert!(
        forced.keys().all(|k| k == "ok" || k == "409"),
        "forced re-partitions must succeed or be refused with 409: {forced:?}"
    );

    // The journal: no instance was destroyed while a lease held it.
    let store = Store::open(&d.state.join("tessera.db")).unwrap();
    let all = block(d.client().list(true)).unwrap();
    for row in store.journal().unwrap() {
        let v: serde_json::Value = serde_json::from_str(&row.body).unwrap();
        if v["type"] != "intent" || v["op"]["op"] != "destroy_gi" {
            continue;
        }
        let Some(uuid) = v["op"]["uuid"].as_str() else {
            continue;
        };
        for l in &all {
            if let Some(Slice::Mig { uuid: u, .. }) = &l.slice {
                let (s, e) = interval(l);
                assert!(
                    !(u == uuid && s <= row.at_ms && row.at_ms < e),
                    "journal record {} destroyed {uuid} while request {} held it",
                    row.seq,
                    l.id
                );
            }
        }
    }
}

#[test]
fn a_forced_repartition_that_would_touch_a_lease_is_refused_and_changes_nothing() {
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\nscheduler: {tick_ms: 100}\n",
    );
    let mut child = d
        .cli(&["run", "-q", "--mig", "3g.40gb", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    let client = d.client();
    let leased = first_in_state(&client, RequestState::Leased, "the lease");
    let Some(Slice::Mig { uuid, start, .. }) = leased.slice.clone() else {
        panic!("{leased:?}")
    };
    let before = poll(10, "the lease in the status", || {
        let st = block(client.status()).ok()?;
        st.gpus[0]
            .instances
            .iter()
            .any(|i| i.lease == Some(leased.id))
            .then_some(st)
    });
    let err = block(client.set_layout(0, &["7g.80gb@0".into()])).unwrap_err();
    match &err {
        ClientError::Api {
            status: 409,
            message,
        } => {
            assert!(message.contains(&format!("3g.40gb@{start}")), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let after = block(client.status()).unwrap();
    assert_eq!(before.gpus[0].instances, after.gpus[0].instances);
    // A layout that keeps the leased instance is applied.
    let other = if start == 0 { "3g.40gb@4" } else { "3g.40gb@0" };
    let keep = vec![format!("3g.40gb@{start}"), other.to_string()];
    let g = block(client.set_layout(0, &keep)).unwrap();
    let inst = g.instances.iter().find(|i| i.start == start).unwrap();
    assert_eq!(
        inst.uuid.as_deref(),
        Some(uuid.as_str()),
        "the leased instance kept its UUID"
    );
    assert_eq!(g.instances.len(), 2);
    // Cancel: the command is stopped and the client exits 128+SIGTERM.
    block(client.cancel(leased.id)).unwrap();
    let st = wait_child(&mut child, 30, "the cancelled run");
    assert_eq!(st.code(), Some(143));
    let v = reaches(&client, leased.id, RequestState::Done, 10, "the release");
    assert_eq!(v.exit_code, Some(143));
}

#[test]
fn kill_9_of_the_daemon_loses_no_lease_and_no_queued_request() {
    let dir = temp_dir();
    let config = "sim_gpus: h100-80gb:1\nscheduler: {tick_ms: 100}\nlease: {heartbeat_interval_ms: 200, heartbeat_timeout_ms: 20000}\n";
    let mut d = Daemon::start(dir.path(), config);
    let mut children = Vec::new();
    for i in 0..6 {
        let out = dir.path().join(format!("k-{i}"));
        children.push((
            out.clone(),
            spawn_run(&d, Want::Mig("3g.40gb"), &out, 5, "1.5"),
        ));
    }
    let client = d.client();
    // Two fit on the GPU (3g.40gb at 0 and 4), four wait.
    let before = poll(60, "two leases and four queued", || {
        let rows = block(client.list(false)).ok()?;
        let leased = rows
            .iter()
            .filter(|v| v.state == RequestState::Leased)
            .count();
        let queued = rows
            .iter()
            .filter(|v| v.state == RequestState::Queued)
            .count();
        (leased == 2 && queued == 4).then_some(rows)
    });
    d.kill9();
    let mut d2 = Daemon::start(dir.path(), config);
    let client = d2.client();
    let after = block(client.list(true)).unwrap();
    for b in &before {
        let a = after.iter().find(|a| a.id == b.id).unwrap_or_else(|| {
            panic!(
                "request {} vanished after the restart:\n{}",
                b.id,
                d2.log_text()
            )
        });
        match b.state {
            RequestState::Leased => {
                assert!(
                    a.state == RequestState::Leased || a.state == RequestState::Done,
                    "lease {} is {:?} after the restart",
                    a.id,
                    a.state
                );
                assert_eq!(a.slice, b.slice, "lease {} moved", a.id);
            }
            _ => assert!(
                a.state != RequestState::Expired && a.state != RequestState::Cancelled,
                "queued request {} is {:?} after the restart",
                a.id,
                a.state
            ),
        }
    }
    for (out, child) in &mut children {
        let st = wait_child(child, 120, "a run across the restart");
        assert_eq!(st.code(), Some(5), "{}", d2.log_text());
        assert!(fs::read_to_string(&*out).unwrap().starts_with("MIG-"));
    }
    let rows = poll(20, "every request done", || {
        let rows = block(client.list(true)).ok()?;
        rows.iter()
            .all(|v| v.state == RequestState::Done)
            .then_some(rows)
    });
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|v| v.exit_code == Some(5)), "{rows:#?}");
    assert!(double_leases(&rows).is_empty());
    d2.kill9();
}

#[test]
fn kill_9_of_a_client_ends_its_lease_and_its_command() {
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\nscheduler: {tick_ms: 100}\nlease: {heartbeat_interval_ms: 500, heartbeat_timeout_ms: 60000}\n",
    );
    let marker = dir.path().join("still-running");
    let script = format!("sleep 2; touch {}", marker.display());
    let mut child = d
        .cli(&["run", "-q", "--mig", "7g.80gb", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let client = d.client();
    let lease = first_in_state(&client, RequestState::Leased, "the lease");
    child.kill().unwrap();
    child.wait().unwrap();
    // The daemon notices the client is gone well before the heartbeat timeout.
    let v = reaches(
        &client,
        lease.id,
        RequestState::Expired,
        20,
        "the lease to expire",
    );
    assert!(v.end_reason.unwrap().contains("gone"));
    // The slice is free again: another request gets the whole GPU.
    let st = d
        .cli(&["run", "-q", "--mig", "7g.80gb", "--", "true"])
        .status()
        .unwrap();
    assert!(st.success());
    // CMD died with its client (PR_SET_PDEATHSIG): it never got to touch the marker.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!marker.exists(), "CMD outlived its killed client");
}

#[test]
fn another_user_cannot_see_or_cancel_a_request() {
    if !server_common::is_root() {
        eprintln!("skipped: needs root to run clients as other uids (the API-level test in tessera-server covers the rule)");
        return;
    }
    use std::os::unix::process::CommandExt;
    let dir = temp_dir();
    // The socket's group is 1000, so both test users (gid 1000) may connect.
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
    let client = d.client();
    let lease = first_in_state(&client, RequestState::Leased, "alice's lease");
    assert_eq!(lease.uid, 1000);
    let as_bob = |args: &[&str]| {
        let out = d.cli(args).uid(1001).gid(1000).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = as_bob(&["ps", "-o", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let seen: Vec<RequestView> = serde_json::from_str(&stdout).unwrap();
    assert!(seen.is_empty(), "bob sees {seen:?}");
    let (code, _, stderr) = as_bob(&["cancel", &lease.id.to_string()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not found"), "{stderr}");
    let (code, stdout, _) = as_bob(&["status", "-o", "json"]);
    assert_eq!(code, Some(0));
    let st: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let inst = &st["gpus"][0]["instances"][0];
    assert_eq!(inst["busy"], true);
    assert!(
        inst.get("user").is_none() && inst.get("lease").is_none(),
        "{inst}"
    );
    // Alice sees her own; root sees it with her name.
    let out = d
        .cli(&["ps", "-o", "json"])
        .uid(1000)
        .gid(1000)
        .output()
        .unwrap();
    let mine: Vec<RequestView> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mine.len(), 1);
    let v = block(client.get(lease.id)).unwrap();
    assert_eq!(
        v.state,
        RequestState::Leased,
        "bob's cancel must not have touched it"
    );
    block(client.cancel(lease.id)).unwrap();
    let st = wait_child(&mut alice, 30, "alice's run");
    assert_eq!(st.code(), Some(143));
}

#[test]
fn signals_reach_the_command_and_a_waiting_request_is_withdrawn() {
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\nscheduler: {tick_ms: 100}\n",
    );
    let client = d.client();
    let mut a = d
        .cli(&[
            "run",
            "-q",
            "--mig",
            "7g.80gb",
            "--",
            "sh",
            "-c",
            "trap 'kill $!; exit 7' TERM; sleep 30 & wait",
        ])
        .spawn()
        .unwrap();
    let lease = first_in_state(&client, RequestState::Leased, "the lease");
    let mut b = d
        .cli(&["run", "-q", "--mig", "1g.10gb", "--", "true"])
        .spawn()
        .unwrap();
    let waiting = first_in_state(&client, RequestState::Queued, "the queued request");
    // SIGINT while waiting withdraws the request: exit 130.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(b.id() as i32, libc::SIGINT) };
    assert_eq!(wait_child(&mut b, 30, "the waiting run").code(), Some(130));
    let w = block(client.get(waiting.id)).unwrap();
    assert_eq!(w.state, RequestState::Cancelled, "{w:?}");
    // SIGTERM to `tessera run` reaches CMD, whose exit code comes back.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_child(&mut a, 30, "the running run").code(), Some(7));
    let v = reaches(&client, lease.id, RequestState::Done, 10, "the release");
    assert_eq!(v.exit_code, Some(7));
}
