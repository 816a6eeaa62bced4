//! What a newcomer trips over (issue 12): `--mem` units and how it chooses, `--mps`/`--sm`,
//! typos and aliases, `run` without `--`, output formats, control characters in tables
//! (defect 9), and `tessera run` when the daemon is gone as its command ends (defect 10).
//! Offline checks run the binary alone; the others start the real daemon (sim backend).

mod common;
mod server_common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{tessera_fails, tessera_ok};
use server_common::{block, poll, temp_dir, wait_child, Daemon};
use tessera_server::client::Client;
use tessera_server::wire::{RequestState, RequestView};

/// One MIG H100 and one MPS H100.
const MIG_AND_MPS: &str = "sim_gpus: h100-80gb:2
gpus:
- {index: 0, mode: mig}
- {index: 1, mode: mps}
scheduler: {tick_ms: 50}
lease: {heartbeat_interval_ms: 200, heartbeat_timeout_ms: 60000}
";

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Poll until one of the caller's requests is in `state`.
fn first_in(client: &Client, state: RequestState) -> RequestView {
    poll(30, &format!("a request in state {state}"), || {
        block(client.list(true))
            .unwrap()
            .into_iter()
            .find(|v| v.state == state)
    })
}

#[test]
fn mem_needs_a_unit_and_sm_needs_mps() {
    let e = tessera_fails(&["run", "--mem", "12", "--", "true"], 2);
    assert!(
        e.contains("`12` has no unit") && e.contains("12GiB") && e.contains("12GB"),
        "{e}"
    );
    let e = tessera_fails(&["run", "--mem", "12G", "--", "true"], 2);
    assert!(e.contains("ambiguous"), "{e}");
    let e = tessera_fails(&["run", "--mem", "12GiB", "--sm", "30", "--", "true"], 2);
    assert!(e.contains("add --mps"), "{e}");
    let e = tessera_fails(&["run", "--mig", "1g.10gb", "--sm", "30", "--", "true"], 2);
    assert!(e.contains("MIG profile has a fixed number of SMs"), "{e}");
    let e = tessera_fails(&["run", "--share", "--sm", "30", "--", "true"], 2);
    assert!(e.contains("time-slice") && e.contains("--mps"), "{e}");
    // --mps only goes with --mem.
    tessera_fails(&["run", "--mps", "--share", "--", "true"], 2);
}

#[test]
fn help_run_documents_how_mem_chooses() {
    let out = tessera_ok(&["help", "run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "How --mem chooses a slice",
        "MB, GB and TB are decimal",
        "smallest ordinary profile",
        "7g.80gb on an H100 has 79.25 GiB",
        "--mps skips step 2",
        "--release-retry",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

#[test]
fn run_without_double_dash_says_where_to_put_it() {
    let e = tessera_fails(
        &["run", "--mem", "12GiB", "python", "train.py", "--lr", "3"],
        2,
    );
    assert!(e.contains("put `--` before it"), "{e}");
    assert!(
        e.contains("tessera run --mem 12GiB -- python train.py --lr 3"),
        "{e}"
    );
}

#[test]
fn typos_get_a_suggestion_and_exit_2_and_family_names_resolve() {
    let e = tessera_fails(&["stauts"], 2);
    assert!(e.contains("'status'"), "{e}");
    let e = tessera_fails(&["profiles", "--gpu", "h100-80g"], 2);
    assert!(e.contains("did you mean `h100-80gb`?"), "{e}");
    let e = tessera_fails(&["check", "--gpu", "a100", "1g.10gb@0"], 2);
    assert!(e.contains("a100-40gb, a100-80gb"), "{e}");
    let out = tessera_ok(&["profiles", "--gpu", "h100", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["name"] == "7g.80gb")));
}

#[test]
fn default_tables_fit_80_columns_plain_has_no_borders_wide_has_more() {
    let models = [
        "a30",
        "a100-80gb",
        "h100",
        "gh200",
        "b200",
        "gb200",
        "rtx-pro-6000",
    ];
    let mut runs: Vec<Vec<&str>> = vec![vec!["gpus"]];
    for m in models {
        runs.push(vec!["profiles", "--gpu", m]);
    }
    for args in &runs {
        let out = tessera_ok(args);
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{args:?}: {} columns:\n{text}",
                line.chars().count()
            );
        }
        let mut plain = vec!["-o", "plain"];
        plain.extend(args);
        let out = tessera_ok(&plain);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(['│', '─', '┌', '╞']), "{args:?}:\n{text}");
        assert!(
            text.lines().all(|l| l == l.trim_end()),
            "{args:?}: trailing spaces"
        );
    }
    // A script can cut the plain table: the first column of the gpus table is the keys.
    let out = tessera_ok(&["-o", "plain", "gpus"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(keys[0], "KEY");
    assert!(
        keys.contains(&"h100-80gb") && keys.contains(&"a30-24gb"),
        "{keys:?}"
    );
    let wide = tessera_ok(&["-o", "wide", "profiles", "--gpu", "h100"]);
    let narrow = tessera_ok(&["profiles", "--gpu", "h100"]);
    assert!(String::from_utf8_lossy(&wide.stdout).contains("JPEG"));
    assert!(!String::from_utf8_lossy(&narrow.stdout).contains("JPEG"));
}

#[test]
fn mem_80gib_names_the_largest_slice_and_80gb_fits() {
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\nscheduler: {tick_ms: 50}\n",
    );
    let out = d
        .cli(&["run", "--mem", "80GiB", "--", "true"])
        .output()
        .unwrap();
    let e = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("--mem 80GiB = 80 GiB (binary"), "{e}");
    assert!(e.contains("7g.80gb on h100-80gb with 79.25 GiB"), "{e}");
    assert!(e.contains("--mem 79GiB or --mig 7g.80gb"), "{e}");
    // 80 GB (decimal) is 74.5 GiB: it fits 7g.80gb, and the client says how it read it.
    let out = d
        .cli(&[
            "run",
            "--mem",
            "80GB",
            "--",
            "sh",
            "-c",
            "echo $CUDA_VISIBLE_DEVICES",
        ])
        .output()
        .unwrap();
    let e = stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(
        e.contains("--mem 80GB = 80 GB (decimal: 80 × 10^9 bytes) = 76294 MiB"),
        "{e}"
    );
    assert!(e.contains("7g.80gb"), "{e}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("MIG-"));
}

#[test]
fn a_typod_profile_or_model_is_bad_input_with_a_suggestion() {
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\nscheduler: {tick_ms: 50}\n",
    );
    let out = d
        .cli(&["run", "--mig", "3g.40g", "--", "true"])
        .output()
        .unwrap();
    let e = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("unknown MIG profile `3g.40g`; did you mean `3g.40gb`?"),
        "{e}"
    );
    // A real profile this machine lacks is a request that cannot be met (exit 1), not a typo.
    let out = d
        .cli(&["run", "--mig", "2g.12gb", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let out = d
        .cli(&["run", "--gpu-model", "h100-80g", "--share", "--", "true"])
        .output()
        .unwrap();
    let e = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("did you mean `h100-80gb`?"), "{e}");
    // The family name resolves.
    let out = d
        .cli(&[
            "run",
            "-q",
            "--gpu-model",
            "h100",
            "--mig",
            "1g.10gb",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
}

#[test]
fn mps_flag_gets_an_mps_client_even_where_mig_would_fit() {
    let dir = temp_dir();
    let d = Daemon::start(dir.path(), MIG_AND_MPS);
    let script = "printf '%s|%s|%s' \"$CUDA_VISIBLE_DEVICES\" \"$CUDA_MPS_PINNED_DEVICE_MEM_LIMIT\" \"$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE\"";
    let out = d
        .cli(&[
            "run", "-q", "--mps", "--mem", "8GiB", "--sm", "25", "--", "sh", "-c", script,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = text.split('|').collect();
    assert!(
        parts[0].starts_with("GPU-") && parts[1].starts_with("0=") && parts[2] == "25",
        "{text}"
    );
    // Without --mps the same size takes a MIG instance first.
    let out = d
        .cli(&["run", "-q", "--mem", "8GiB", "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("MIG-"));
}

#[test]
fn ps_escapes_control_characters_and_says_withdrawn() {
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\nscheduler: {tick_ms: 50}\n",
    );
    let client = d.client();
    // A command line that would retitle the terminal and ring its bell if printed raw.
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let _holder = KillOnDrop(
        d.cli(&[
            "run", "-q", "--mig", "7g.80gb", "--", "sh", "-c", "sleep 30", evil,
        ])
        .spawn()
        .unwrap(),
    );
    first_in(&client, RequestState::Leased);
    // A second request waits, gives up after its --timeout and is withdrawn.
    let out = d
        .cli(&[
            "run",
            "-q",
            "--mig",
            "7g.80gb",
            "--timeout",
            "300ms",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    for fmt in ["table", "wide", "plain"] {
        let out = d.cli_ok(&["ps", "-a", "-o", fmt]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{fmt}: {text:?}"
        );
        if fmt == "table" {
            assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        } else {
            // Not wrapped: the whole escaped cell is on one line.
            assert!(text.contains("\\e]0;pwned\\x07\\e[2J"), "{fmt}: {text}");
        }
        assert!(text.contains("pwned"), "{fmt}: {text}");
        assert!(text.contains("withdrawn"), "{fmt}: {text}");
    }
}

/// A child killed when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `tessera run` whose command waits for `go` to exist, writes its PID, and exits 4.
fn run_until_go(d: &Daemon, go: &Path, pid: &Path, extra: &[&str]) -> Child {
    let script = format!(
        "echo $$ > {}; while [ ! -e {} ]; do sleep 0.02; done; exit 4",
        pid.display(),
        go.display()
    );
    let mut args = vec!["run", "--share"];
    args.extend(extra);
    args.extend(["--", "sh", "-c", &script]);
    d.cli(&args).stderr(Stdio::piped()).spawn().unwrap()
}

fn stderr_rest(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn run_exits_with_the_commands_status_when_the_daemon_stays_down() {
    let dir = temp_dir();
    let mut d = Daemon::start(dir.path(), "sim_gpus: h100-80gb:1\ngpus:\n- {index: 0, mode: timeslice, replicas: 2}\nscheduler: {tick_ms: 50}\n");
    let (go, pid) = (dir.path().join("go"), dir.path().join("pid"));
    let mut run = run_until_go(&d, &go, &pid, &["--release-retry", "1s"]);
    poll(30, "the command to start", || fs::metadata(&pid).ok());
    d.kill9();
    fs::write(&go, "").unwrap();
    let started = Instant::now();
    let st = wait_child(&mut run, 20, "tessera run with the daemon gone");
    let e = stderr_rest(&mut run);
    assert_eq!(st.code(), Some(4), "{e}");
    assert!(e.contains("exiting with the command's status 4"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn sigterm_ends_the_release_retry_on_a_stopped_daemon() {
    let dir = temp_dir();
    let d = Daemon::start(dir.path(), "sim_gpus: h100-80gb:1\ngpus:\n- {index: 0, mode: timeslice, replicas: 2}\nscheduler: {tick_ms: 50}\nlease: {heartbeat_interval_ms: 100, heartbeat_timeout_ms: 60000}\n");
    let (go, pid) = (dir.path().join("go"), dir.path().join("pid"));
    let mut run = run_until_go(&d, &go, &pid, &[]);
    let cmd_pid: i32 = poll(30, "the command to start", || {
        fs::read_to_string(&pid).ok()?.trim().parse().ok()
    });
    // A stopped daemon accepts connections and never answers.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGSTOP) };
    fs::write(&go, "").unwrap();
    // The command is gone (reaped by tessera run) ...
    poll(30, "the command to end", || {
        (!Path::new(&format!("/proc/{cmd_pid}")).exists()).then_some(())
    });
    // ... and the client hangs on the release: SIGTERM ends it with the command's status.
    let started = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let st = wait_child(&mut run, 20, "tessera run after SIGTERM");
    let e = stderr_rest(&mut run);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGCONT) };
    assert_eq!(st.code(), Some(4), "{e}");
    assert!(
        e.contains("signal 15 while retrying") && e.contains("status 4"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn agent_status_reads_a_state_file_the_daemon_holds_as_a_snapshot() {
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\nscheduler: {tick_ms: 50}\n",
    );
    let state = format!("sim:{}", d.state.join("sim-gpus.json").display());
    // The daemon holds the state file's lock for its whole life: status must not hang.
    let mut status = std::process::Command::new(server_common::BIN)
        .args(["agent", "status", "--backend", &state, "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_child(&mut status, 20, "agent status on a locked state file");
    let e = stderr_rest(&mut status);
    let mut out = String::new();
    status
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(st.code(), Some(0), "{e}");
    assert!(
        e.contains("showing a snapshot read without the lock"),
        "{e}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["backend"].as_str().unwrap().contains("snapshot"), "{v}");
    assert_eq!(v["gpus"].as_array().unwrap().len(), 1, "{v}");
    // A change waits for the lock with a message, then gives up naming the daemon.
    let out = std::process::Command::new(server_common::BIN)
        .args([
            "agent",
            "mig-mode",
            "--backend",
            &state,
            "--gpu",
            "0",
            "--disable",
        ])
        .args(["--lock-wait", "300ms"])
        .output()
        .unwrap();
    let e = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("waiting up to 0.3s") && e.contains("still locked after 0.3s"),
        "{e}"
    );
    assert!(e.contains("tessera serve"), "{e}");
}

#[test]
fn mig_mode_disable_names_the_instances_and_the_command_that_removes_them() {
    let dir = temp_dir();
    let path = dir.path().join("m.json");
    let backend = format!("sim:{}", path.display());
    let p = path.to_str().unwrap();
    tessera_ok(&["sim-gpu", "init", p, "--gpus", "h100-80gb:1"]);
    tessera_ok(&[
        "agent",
        "apply",
        "--backend",
        &backend,
        "--gpu",
        "0",
        "3g.40gb@0",
        "1g.10gb@6",
    ]);
    // The status table fits 80 columns with every UUID whole (copyable).
    let out = tessera_ok(&["agent", "status", "--backend", &backend]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    let v: serde_json::Value = serde_json::from_slice(
        &tessera_ok(&["agent", "status", "--backend", &backend, "-o", "json"]).stdout,
    )
    .unwrap();
    for i in v["gpus"][0]["instances"].as_array().unwrap() {
        let uuid = i["uuid"].as_str().unwrap();
        assert!(text.contains(uuid), "{uuid} not whole in:\n{text}");
    }
    let e = tessera_fails(
        &[
            "agent",
            "mig-mode",
            "--backend",
            &backend,
            "--gpu",
            "0",
            "--disable",
        ],
        1,
    );
    assert!(e.contains("3g.40gb@0 (idle), 1g.10gb@6 (idle)"), "{e}");
    let fix = format!("tessera agent apply --backend {backend} --gpu 0");
    assert!(e.contains(&fix), "{e}");
    // The named command works, and then so does --disable.
    tessera_ok(&["agent", "apply", "--backend", &backend, "--gpu", "0"]);
    tessera_ok(&[
        "agent",
        "mig-mode",
        "--backend",
        &backend,
        "--gpu",
        "0",
        "--disable",
    ]);
}

#[test]
fn serve_and_agent_take_one_backend_syntax() {
    let e = tessera_fails(&["agent", "status", "--backend", "nvlm"], 2);
    assert!(
        e.contains("did you mean `nvml`?") && e.contains("auto, nvml, sim or sim:STATE"),
        "{e}"
    );
    let e = tessera_fails(&["serve", "--backend", "simm"], 2);
    assert!(
        e.contains("did you mean `sim`?") && e.contains("auto, nvml, sim or sim:STATE"),
        "{e}"
    );
    // `serve --backend sim:STATE` runs on the GPUs of that file (an A30 here, not the default
    // H100s), the file `agent --backend sim:STATE` reads.
    let dir = temp_dir();
    let path = dir.path().join("a30.json");
    tessera_ok(&["sim-gpu", "init", path.to_str().unwrap(), "--gpus", "a30:1"]);
    let socket = dir.path().join("s.sock");
    // No lease cgroups: this daemon is killed at the end, and would leave their directory.
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "isolation: off\n").unwrap();
    let daemon = std::process::Command::new(server_common::BIN)
        .args(["serve", "--backend", &format!("sim:{}", path.display())])
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = KillOnDrop(daemon);
    let client = Client::new(&socket);
    let status = poll(30, "the daemon to answer", || block(client.status()).ok());
    let models: Vec<&str> = status.gpus.iter().map(|g| g.model.as_str()).collect();
    assert_eq!(models, ["a30-24gb"]);
}

#[test]
fn a_family_name_resolves_to_the_one_model_the_machine_has() {
    // `a100` is two catalog models, but this machine has only the 80 GB one.
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: a100-80gb:1\nscheduler: {tick_ms: 50}\n",
    );
    let out = d
        .cli(&[
            "run",
            "-q",
            "--gpu-model",
            "a100",
            "--mig",
            "1g.10gb",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let rows = block(d.client().list(true)).unwrap();
    assert_eq!(rows[0].gpu_model.as_deref(), Some("a100-80gb"), "{rows:?}");
}
