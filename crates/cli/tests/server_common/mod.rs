//! Helpers for the daemon tests: start the real `tessera serve` on a temporary socket and
//! state directory with the sim backend, talk to it, kill it.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tessera_server::client::Client;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A daemon process.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    /// The directory of its lease cgroups (`isolation_cgroup`), removed when it is dropped.
    pub cgroup: String,
}

/// A temporary directory others may traverse (the socket's directory must be reachable by
/// the other uids of the permission test).
pub fn temp_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("tessera-srv-")
        .tempdir()
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

impl Daemon {
    /// Start `tessera serve --backend sim` in `dir` with this YAML config and wait until its
    /// socket answers.
    pub fn start(dir: &Path, config: &str) -> Daemon {
        let socket = dir.join("tessera.sock");
        let state = dir.join("state");
        let cfg = dir.join("config.yaml");
        // The test's own uid administers the daemon (drain, forced layouts) even when not root.
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        // Its own lease-cgroup directory (unless the config names one: a restart on the same
        // state), so that a `kill -9` leaves nothing behind after Drop.
        let (cgroup, extra) = match config
            .lines()
            .find_map(|l| l.strip_prefix("isolation_cgroup: "))
        {
            Some(name) => (name.trim().to_string(), String::new()),
            None => {
                let name = format!("tessera-test-{}", now_ns());
                (name.clone(), format!("isolation_cgroup: {name}\n"))
            }
        };
        fs::write(&cfg, format!("{config}\nadmins: [{me}]\n{extra}")).unwrap();
        let log = dir.join(format!("daemon-{}.log", now_ns()));
        let child = Command::new(BIN)
            .args(["serve", "--backend", "sim", "--config"])
            .arg(&cfg)
            .arg("--state-dir")
            .arg(&state)
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            dir: dir.to_path_buf(),
            socket,
            state,
            log,
            cgroup,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("the daemon exited with {st}:\n{}", self.log_text());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A client of this daemon.
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// `tessera SUBCOMMAND --socket S REST...` as a command ready to spawn.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg(args[0])
            .arg("--socket")
            .arg(&self.socket)
            .args(&args[1..]);
        c
    }

    /// Run `tessera SUBCOMMAND --socket S REST...` to its end and assert that it exited 0.
    #[track_caller]
    pub fn cli_ok(&self, args: &[&str]) -> Output {
        succeeded(self.cli(args).output().unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        remove_lease_cgroups(&self.cgroup);
    }
}

/// Kill what a killed daemon's leases left and remove their cgroups, in the v1 and the v2
/// hierarchy (a test may ask for either; test hygiene only).
fn remove_lease_cgroups(name: &str) {
    use tessera_isolation::{probe_v1, probe_v2, Availability, DevicesV1, DevicesV2, LeaseCgroups};
    let mut trees: Vec<Box<dyn LeaseCgroups>> = Vec::new();
    if let Availability::V1 { root } = probe_v1(name) {
        trees.push(Box::new(DevicesV1::new(root)));
    }
    if let Availability::V2 { root } = probe_v2(name) {
        trees.push(Box::new(DevicesV2::new(root)));
    }
    for mut cg in trees {
        for lease in cg.leases().unwrap_or_default() {
            let _ = cg.kill_all(lease, None);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cg.remove(lease).unwrap_or(true) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        cg.close();
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Assert that a finished command exited 0 (showing its stderr if not); its output.
#[track_caller]
pub fn succeeded(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a future to completion.
pub fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Poll `f` every 20 ms until it returns `Some`, or panic after `secs` with `what`.
pub fn poll<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for a child with a deadline; kills it and panics on timeout.
pub fn wait_child(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this test process runs as root.
pub fn is_root() -> bool {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() == 0 }
}
