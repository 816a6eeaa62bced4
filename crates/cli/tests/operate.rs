//! Operating tessera: shell completions and man pages made from the CLI definition, JSON logs,
//! the sample configuration, and the systemd unit checked by `systemd-analyze verify`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{tessera, tessera_ok};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skip (with a message) outside CI when `tool` is missing; fail in CI.
fn require(tool: &str, test: &str) -> bool {
    if have(tool) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: `{tool}` is missing; CI installs it (.ci/run)"
    );
    eprintln!("SKIPPED: {test}: `{tool}` is not installed");
    false
}

#[test]
fn completion_scripts_are_valid_and_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = tessera_ok(&["completion", shell]);
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in ["serve", "run", "status", "completion", "man"] {
            assert!(script.contains(sub), "{shell}: `{sub}` missing");
        }
        assert!(script.contains("log-format"), "{shell}: serve's flags");
        // The shell itself parses the script when it is installed.
        if have(shell) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tessera-completion");
            std::fs::write(&path, &script).unwrap();
            let check = match shell {
                "fish" => Command::new("fish").arg("--no-execute").arg(&path).output(),
                sh => Command::new(sh).arg("-n").arg(&path).output(),
            }
            .unwrap();
            assert!(
                check.status.success(),
                "{shell} rejects the script: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let bad = tessera(&["completion", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}

#[test]
fn the_man_pages_come_from_the_cli_definition() {
    let out = tessera_ok(&["man"]);
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH tessera 1"), "{page}");
    assert!(page.contains("serve") && page.contains("completion"));
    let dir = tempfile::tempdir().unwrap();
    tessera_ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    let serve = std::fs::read_to_string(dir.path().join("tessera-serve.1")).unwrap();
    assert!(serve.contains(".TH tessera-serve 1"), "{serve}");
    assert!(
        serve.contains("log\\-format"),
        "serve's flags are on its page"
    );
    // One page per subcommand, nested ones too.
    for page in ["tessera-run.1", "tessera-agent.1", "tessera-agent-status.1"] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
    assert!(
        !dir.path().join("tessera-help.1").exists(),
        "no page for clap's `help`"
    );
    if have("groff") {
        let text = Command::new("groff")
            .args(["-man", "-Tutf8"])
            .arg(dir.path().join("tessera-serve.1"))
            .output()
            .unwrap();
        assert!(text.status.success());
        let warn = String::from_utf8_lossy(&text.stderr);
        assert!(warn.trim().is_empty(), "groff warns: {warn}");
    }
}

#[test]
fn the_daemon_logs_one_json_object_per_line_with_log_format_json() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "isolation: off\nsim_gpus: h100-80gb:1\n").unwrap();
    let socket = dir.path().join("tessera.sock");
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "serve",
            "--backend",
            "sim",
            "--log-format",
            "json",
            "--config",
        ])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening") {
            break text;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the daemon exited with {st}:\n{text}");
        }
        assert!(Instant::now() < deadline, "no `listening` line:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut saw_listening = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(
            ["INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        let msg = v["fields"]["message"].as_str().unwrap();
        saw_listening |= msg.contains("listening on");
    }
    assert!(saw_listening, "{text}");
}

#[test]
fn the_sample_config_is_valid() {
    let cfg = tessera_server::Config::load(&repo().join("deploy/tessera.yaml")).unwrap();
    assert_eq!(
        cfg.state_dir.as_deref(),
        Some(Path::new("/var/lib/tessera"))
    );
    assert_eq!(
        cfg.socket.as_deref(),
        Some(Path::new("/run/tessera/tessera.sock"))
    );
    assert_eq!(cfg.socket_group.as_deref(), Some("tessera"));
    // The unit's directories match the configuration's.
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/tessera.service")).unwrap();
    for line in [
        "StateDirectory=tessera",
        "RuntimeDirectory=tessera",
        "ExecStart=/usr/bin/tessera serve --config /etc/tessera/config.yaml",
        "KillMode=process",
    ] {
        assert!(unit.lines().any(|l| l == line), "`{line}` missing");
    }
}

/// `systemd-analyze verify` on the unit as shipped, with only `ExecStart`'s binary pointed at
/// the one under test and its man page (`Documentation=man:tessera-serve(1)`) on MANPATH.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if !require(
        "systemd-analyze",
        "the_systemd_unit_passes_systemd_analyze_verify",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("man/man1");
    tessera_ok(&["man", "--dir", man1.to_str().unwrap()]);
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/tessera.service")).unwrap();
    let unit = unit.replace("/usr/bin/tessera", env!("CARGO_BIN_EXE_tessera"));
    let path = dir.path().join("tessera.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
}
