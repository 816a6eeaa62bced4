//! The daemon's configuration: a YAML file (`--config`), flags that override it, and defaults.
//!
//! ```yaml
//! backend: auto                 # auto | nvml | sim
//! sim_gpus: h100-80gb:2         # the simulated fleet (sim, or auto without a GPU)
//! state_dir: /var/lib/tessera   # SQLite database (and the simulated GPUs' state)
//! socket: /run/tessera/tessera.sock
//! socket_group: gpu-users       # group that may connect (the socket is mode 0660)
//! listen: 127.0.0.1:9400        # optional HTTP API + /metrics (bearer token)
//! token_file: /etc/tessera/token   # or token: ..., or the TESSERA_TOKEN environment variable
//! http_uid: 0                   # who an HTTP caller with the token acts as (0: sees everything)
//! web_public: false             # true: the web view's data needs no token (holders shown, commands not)
//! admins: [1000]                # uids with root's powers over the daemon (see all, cancel, drain)
//! default_mode: auto            # auto: start MIG where the GPU can (on NVML: has MIG on), else timeslice;
//!                               # then idle GPUs follow what waits (docs/mode-auto.md)
//! gpus:                         # per-GPU overrides, by NVML index
//! - {index: 0, mode: mig}
//! - {index: 1, mode: mps, mps: {reserve_mib: 1024, max_clients: 48, sm_oversubscription: 1.0}}
//! - {index: 2, mode: timeslice, replicas: 4}
//! scheduler:
//!   tick_ms: 1000               # scheduling and liveness pass at least this often
//!   max_reserved_gpus: 1        # how many waiting requests may hold a GPU for themselves
//!   reserve_after_ms: 0         # a request holds a GPU only after waiting this long
//! lease:
//!   heartbeat_interval_ms: 5000
//!   heartbeat_timeout_ms: 30000
//!   cancel_grace_ms: 15000      # a cancelled lease still held this long is ended, its processes killed
//! isolation: devices            # devices | off; unset: devices where cgroups can be written
//! isolation_cgroup: tessera     # directory of the lease cgroups (default: tessera-<hash of state_dir>)
//! isolation_cgroup_version: 2   # 1 | 2; unset: v1 devices where writable, else cgroup2 + BPF
//! isolation_root: /             # where dev/ and proc/ are read for device numbers
//! connections:
//!   max_per_uid: 256            # open connections per uid (per address on TCP)
//!   idle_timeout_ms: 30000      # close a connection silent this long
//! ```
//!
//! Every number is checked at load against its allowed range (see `docs/server-hardening.md`);
//! the error names the key, the value and the range.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// Which GPU backend the daemon drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// NVML when a GPU is found, otherwise the simulated fleet.
    #[default]
    Auto,
    /// Real GPUs through NVML; fails without a driver.
    Nvml,
    /// Simulated GPUs whose state lives in the state directory.
    Sim,
}

/// How a GPU is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeChoice {
    /// At start MIG where possible, else time-slicing; then, while idle, the mode the waiting
    /// requests need, chosen by the planner's mode rule (docs/mode-auto.md).
    Auto,
    /// MIG instances.
    Mig,
    /// MPS clients with memory and SM limits.
    Mps,
    /// Time-slice replicas of the whole GPU.
    Timeslice,
}

/// MPS settings of one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MpsSettings {
    /// Device memory kept back for the driver and the MPS server, MiB.
    pub reserve_mib: u64,
    /// Most clients at once (48 on Volta and newer).
    pub max_clients: u32,
    /// How far SM percentages may add up past 100 (1.0: not at all).
    pub sm_oversubscription: f64,
}

impl Default for MpsSettings {
    fn default() -> Self {
        MpsSettings {
            reserve_mib: 1024,
            max_clients: 48,
            sm_oversubscription: 1.0,
        }
    }
}

/// Settings of one GPU, by index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSettings {
    /// NVML index.
    pub index: u32,
    /// Sharing mode.
    #[serde(default = "auto_mode")]
    pub mode: ModeChoice,
    /// MPS settings (mode `mps`).
    #[serde(default)]
    pub mps: MpsSettings,
    /// Time-slice replicas offered (mode `timeslice`).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

fn auto_mode() -> ModeChoice {
    ModeChoice::Auto
}

fn default_replicas() -> u32 {
    4
}

/// Scheduler settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// A scheduling and liveness pass runs at least this often (and on every change).
    pub tick_ms: u64,
    /// How many waiting requests may each reserve a GPU (see the crate docs' starvation rule).
    pub max_reserved_gpus: u32,
    /// A waiting request reserves a GPU only after waiting this long.
    pub reserve_after_ms: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            tick_ms: 1000,
            max_reserved_gpus: 1,
            reserve_after_ms: 0,
        }
    }
}

/// Per-lease device isolation (see `docs/isolation-devices.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationMode {
    /// Every lease's command runs in a cgroup that allows only its slice's device nodes; the
    /// daemon refuses to start where that cannot be done.
    Devices,
    /// No per-lease cgroups: leases are stopped through the client's process tree.
    Off,
}

/// Lease liveness settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseSettings {
    /// How often clients are told to send a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A request whose client sent nothing for this long ends (`expired`).
    pub heartbeat_timeout_ms: u64,
    /// A cancelled lease whose command still runs this long after the cancel is ended by the
    /// daemon: its processes get SIGKILL and the slice is freed once they are gone. The
    /// default (15 s) leaves `tessera run` its own SIGKILL of CMD at 10 s (checked once per
    /// heartbeat interval) first, so a cooperating client still reports CMD's exit.
    pub cancel_grace_ms: u64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            heartbeat_interval_ms: 5_000,
            heartbeat_timeout_ms: 30_000,
            cancel_grace_ms: 15_000,
        }
    }
}

/// Limits on client connections (the Unix socket and TCP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionSettings {
    /// Most open connections per uid on the Unix socket (per address on TCP); further ones
    /// are closed at once. Never more than a quarter of the open-file limit.
    pub max_per_uid: u32,
    /// A connection with no byte read or written for this long is closed (a long poll waits
    /// at most half of it), and a request's headers must arrive within it.
    pub idle_timeout_ms: u64,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            max_per_uid: 256,
            idle_timeout_ms: 30_000,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Backend.
    pub backend: BackendChoice,
    /// Simulated fleet: `MODEL:COUNT[,MODEL:COUNT...]`.
    pub sim_gpus: String,
    /// The simulated GPUs' state file (`--backend sim:STATE`); default
    /// `<state_dir>/sim-gpus.json`. Made from `sim_gpus` when it does not exist.
    pub sim_state: Option<PathBuf>,
    /// State directory (database, simulated GPUs).
    pub state_dir: Option<PathBuf>,
    /// Unix socket path.
    pub socket: Option<PathBuf>,
    /// Group (name or number) given to the socket so its members may connect.
    pub socket_group: Option<String>,
    /// Optional HTTP listen address (`127.0.0.1:9400`).
    pub listen: Option<String>,
    /// Bearer token for HTTP (prefer `token_file` or `TESSERA_TOKEN`).
    pub token: Option<String>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// uid an HTTP caller with the token acts as.
    pub http_uid: u32,
    /// Serve the web view's data (`/v1/overview`) on `--listen` without the bearer token:
    /// every slice and holder is shown, commands are not. The rest of the API keeps the token.
    pub web_public: bool,
    /// uids that may do what root may: see and cancel everyone's requests, drain GPUs, force
    /// layouts.
    pub admins: Vec<u32>,
    /// Mode of GPUs not listed in `gpus`.
    pub default_mode: ModeChoice,
    /// Per-GPU settings.
    pub gpus: Vec<GpuSettings>,
    /// Scheduler.
    pub scheduler: SchedulerSettings,
    /// Leases.
    pub lease: LeaseSettings,
    /// Per-lease device isolation; unset: `devices` where the cgroup controller can be
    /// written, else `off` with a warning.
    pub isolation: Option<IsolationMode>,
    /// Name of the directory (in the daemon's own devices cgroup) holding the lease cgroups;
    /// default `tessera-` and a hash of the state directory, so two daemons never share one.
    pub isolation_cgroup: Option<String>,
    /// Which cgroup version the lease cgroups use: `1` (the v1 devices controller) or `2`
    /// (cgroup2 with a BPF device program); unset: v1 where writable, else v2.
    pub isolation_cgroup_version: Option<u8>,
    /// Where `dev/` and `proc/` are read for device numbers and MIG capability minors
    /// (default `/`). With the simulated backend, unset means the slices have no device nodes.
    pub isolation_root: Option<PathBuf>,
    /// Client connection limits.
    pub connections: ConnectionSettings,
    /// Delete the journal at start (`tessera serve --discard-journal`, the recovery for a
    /// journal that fails its checksums). A flag only, never read from the file.
    #[serde(skip)]
    pub discard_journal: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendChoice::Auto,
            sim_gpus: "h100-80gb:2".into(),
            sim_state: None,
            state_dir: None,
            socket: None,
            socket_group: None,
            listen: None,
            token: None,
            token_file: None,
            http_uid: 0,
            web_public: false,
            admins: Vec::new(),
            default_mode: ModeChoice::Auto,
            gpus: Vec::new(),
            scheduler: SchedulerSettings::default(),
            lease: LeaseSettings::default(),
            isolation: None,
            isolation_cgroup: None,
            isolation_cgroup_version: None,
            isolation_root: None,
            connections: ConnectionSettings::default(),
            discard_journal: false,
        }
    }
}

impl Config {
    /// Parse a YAML (or JSON) configuration; errors name the file.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Config, ServerError> {
        let cfg: Config = serde_yaml_ng::from_str(text).map_err(|e| ServerError::Config {
            path: origin.to_path_buf(),
            problem: e.to_string(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Read and parse a configuration file.
    pub fn load(path: &Path) -> Result<Config, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::Config {
            path: path.to_path_buf(),
            problem: format!("cannot read it: {e}"),
        })?;
        Config::from_yaml(&text, path)
    }

    /// Check every key's range (called on load; call it again after overriding fields).
    /// The error names the key, the value and the allowed range.
    pub fn validate(&self, origin: &Path) -> Result<(), ServerError> {
        let bad = |problem: String| ServerError::Config {
            path: origin.to_path_buf(),
            problem,
        };
        let range = |e: OutOfRange| bad(e.to_string());
        let mut seen = std::collections::BTreeSet::new();
        for (i, g) in self.gpus.iter().enumerate() {
            let key = |k: &str| format!("gpus[{i}].{k}");
            check_int(&key("index"), g.index, 0, MAX_GPUS - 1).map_err(&range)?;
            if !seen.insert(g.index) {
                return Err(bad(format!("GPU {} is listed twice under `gpus`", g.index)));
            }
            check_int(&key("replicas"), g.replicas, 1, MAX_REPLICAS).map_err(&range)?;
            check_int(
                &key("mps.reserve_mib"),
                g.mps.reserve_mib,
                0,
                MAX_RESERVE_MIB,
            )
            .map_err(&range)?;
            check_int(
                &key("mps.max_clients"),
                g.mps.max_clients,
                1,
                MAX_MPS_CLIENTS,
            )
            .map_err(&range)?;
            let x = g.mps.sm_oversubscription;
            if !x.is_finite() || !(1.0..=MAX_SM_OVERSUBSCRIPTION).contains(&x) {
                return Err(bad(format!(
                    "`{}` is {x}; allowed: a number from 1.0 (no oversubscription) to {MAX_SM_OVERSUBSCRIPTION:.1}",
                    key("mps.sm_oversubscription")
                )));
            }
        }
        let s = &self.scheduler;
        check_int("scheduler.tick_ms", s.tick_ms, 1, 60_000).map_err(&range)?;
        check_int(
            "scheduler.max_reserved_gpus",
            s.max_reserved_gpus,
            0,
            MAX_GPUS,
        )
        .map_err(&range)?;
        check_int("scheduler.reserve_after_ms", s.reserve_after_ms, 0, DAY_MS).map_err(&range)?;
        let l = &self.lease;
        check_int(
            "lease.heartbeat_interval_ms",
            l.heartbeat_interval_ms,
            1,
            600_000,
        )
        .map_err(&range)?;
        check_int(
            "lease.heartbeat_timeout_ms",
            l.heartbeat_timeout_ms,
            l.heartbeat_interval_ms + 1,
            DAY_MS,
        )
        .map_err(|p| {
            bad(format!(
                "{p} (it must be larger than lease.heartbeat_interval_ms, {})",
                l.heartbeat_interval_ms
            ))
        })?;
        check_int("lease.cancel_grace_ms", l.cancel_grace_ms, 0, DAY_MS).map_err(&range)?;
        let c = &self.connections;
        check_int("connections.max_per_uid", c.max_per_uid, 1, 65_536).map_err(&range)?;
        check_int(
            "connections.idle_timeout_ms",
            c.idle_timeout_ms,
            1_000,
            DAY_MS,
        )
        .map_err(&range)?;
        // (uid_t)-1 means "no change" to chown and is nobody's uid.
        check_int("http_uid", self.http_uid, 0, u32::MAX - 1).map_err(&range)?;
        for (i, a) in self.admins.iter().enumerate() {
            check_int(&format!("admins[{i}]"), *a, 0, u32::MAX - 1).map_err(&range)?;
        }
        if let Some(name) = &self.isolation_cgroup {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(bad(format!(
                    "isolation_cgroup `{name}` must be one directory name (no `/`, not starting with `.`), e.g. tessera"
                )));
            }
        }
        if let Some(v) = self.isolation_cgroup_version {
            if v != 1 && v != 2 {
                return Err(bad(format!(
                    "isolation_cgroup_version {v} is not a cgroup version: use 1 (v1 devices controller) or 2 (cgroup2 with a BPF device program), or leave it unset to pick one"
                )));
            }
        }
        parse_sim_gpus(&self.sim_gpus).map_err(|e| bad(e.to_string()))?;
        Ok(())
    }

    /// The settings of GPU `index` (defaults when it is not listed).
    pub fn gpu(&self, index: u32) -> GpuSettings {
        self.gpus
            .iter()
            .find(|g| g.index == index)
            .cloned()
            .unwrap_or(GpuSettings {
                index,
                mode: self.default_mode,
                mps: MpsSettings::default(),
                replicas: default_replicas(),
            })
    }

    /// The state directory: the configured one or `<runtime dir>/state`.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| default_base_dir().join("state"))
    }

    /// The lease cgroups' directory name: the configured one, or `tessera-` and an FNV-1a hash
    /// of the state directory (stable across restarts, distinct per daemon).
    pub fn isolation_cgroup(&self) -> String {
        if let Some(n) = &self.isolation_cgroup {
            return n.clone();
        }
        let dir = self.state_dir();
        let dir = dir.canonicalize().unwrap_or(dir);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in dir.as_os_str().as_encoded_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("tessera-{:08x}", h as u32)
    }

    /// The socket path: the configured one or [`default_socket`].
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket)
    }

    /// The bearer token: `TESSERA_TOKEN`, else `token_file`'s first line, else `token`.
    pub fn resolve_token(&self) -> Result<Option<String>, ServerError> {
        if let Ok(t) = std::env::var("TESSERA_TOKEN") {
            if !t.trim().is_empty() {
                return Ok(Some(t.trim().to_string()));
            }
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| ServerError::Config {
                path: path.clone(),
                problem: format!("cannot read the token file: {e}"),
            })?;
            let t = text.lines().next().unwrap_or("").trim().to_string();
            if t.is_empty() {
                return Err(ServerError::Config {
                    path: path.clone(),
                    problem: "the token file is empty".into(),
                });
            }
            return Ok(Some(t));
        }
        Ok(self.token.clone().filter(|t| !t.trim().is_empty()))
    }
}

/// Most GPUs one daemon drives (NVML indices 0..63).
pub const MAX_GPUS: u32 = 64;
/// Most time-slice replicas of one GPU.
pub const MAX_REPLICAS: u32 = 64;
/// Most MPS clients per GPU (the MPS server's limit on Volta and newer).
pub const MAX_MPS_CLIENTS: u32 = tessera_gpu::mps::MAX_CLIENTS_PER_SERVER;
/// Largest MPS memory reserve, MiB (1 TiB: more than any GPU has).
pub const MAX_RESERVE_MIB: u64 = 1 << 20;
/// Largest `mps.sm_oversubscription`.
pub const MAX_SM_OVERSUBSCRIPTION: f64 = 10.0;
const DAY_MS: u64 = 86_400_000;

/// A number outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` is {value}; allowed: {lo} to {hi}")]
struct OutOfRange {
    key: String,
    value: String,
    lo: String,
    hi: String,
}

/// `Err` naming the key, the value and the allowed range when `v` is outside `lo..=hi`.
fn check_int<T>(key: &str, v: T, lo: T, hi: T) -> Result<(), OutOfRange>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if v < lo || v > hi {
        return Err(OutOfRange {
            key: key.into(),
            value: v.to_string(),
            lo: lo.to_string(),
            hi: hi.to_string(),
        });
    }
    Ok(())
}

/// Why a `sim_gpus` list does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimGpusError {
    /// The count after `:` is not a number.
    #[error("sim GPUs `{part}`: the count after `:` must be a number")]
    NotANumber {
        /// The entry.
        part: String,
    },
    /// No model, or a count outside 1..=64.
    #[error("sim GPUs `{part}`: write MODEL:COUNT with a count from 1 to 64, e.g. h100-80gb:2")]
    BadEntry {
        /// The entry.
        part: String,
    },
    /// Nothing given.
    #[error("sim GPUs: give at least one MODEL:COUNT, e.g. h100-80gb:2")]
    Empty,
}

/// Parse `h100-80gb:2,a100-40gb:1` into (model, count) pairs.
pub fn parse_sim_gpus(text: &str) -> Result<Vec<(String, u32)>, SimGpusError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (model, count) = match part.rsplit_once(':') {
            Some((m, c)) => (
                m.trim(),
                c.trim()
                    .parse::<u32>()
                    .map_err(|_| SimGpusError::NotANumber { part: part.into() })?,
            ),
            None => (part, 1),
        };
        if model.is_empty() || count == 0 || count > 64 {
            return Err(SimGpusError::BadEntry { part: part.into() });
        }
        out.push((model.to_string(), count));
    }
    if out.is_empty() {
        return Err(SimGpusError::Empty);
    }
    Ok(out)
}

/// Where clients and the daemon look by default (defined with the API, so clients agree).
pub use tessera_api::paths::{default_base_dir, default_socket};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_and_defaults_fill_the_rest() {
        let text = "backend: sim\nsim_gpus: h100-80gb:1,a100-40gb:2\ngpus:\n- {index: 1, mode: mps}\n- {index: 2, mode: timeslice, replicas: 8}\nscheduler: {max_reserved_gpus: 2}\n";
        let c = Config::from_yaml(text, Path::new("t.yaml")).unwrap();
        assert_eq!(c.backend, BackendChoice::Sim);
        assert_eq!(c.gpu(0).mode, ModeChoice::Auto);
        assert_eq!(c.gpu(1).mode, ModeChoice::Mps);
        assert_eq!(c.gpu(1).mps.max_clients, 48);
        assert_eq!(c.gpu(2).replicas, 8);
        assert_eq!(c.scheduler.max_reserved_gpus, 2);
        assert_eq!(c.scheduler.tick_ms, 1000);
    }

    #[test]
    fn the_cgroup_version_is_1_or_2() {
        for v in [1u8, 2] {
            let c = Config::from_yaml(
                &format!("isolation_cgroup_version: {v}\n"),
                Path::new("t.yaml"),
            )
            .unwrap();
            assert_eq!(c.isolation_cgroup_version, Some(v));
        }
        let e = Config::from_yaml("isolation_cgroup_version: 3\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("isolation_cgroup_version 3") && e.contains("use 1"),
            "{e}"
        );
    }

    #[test]
    fn mistakes_name_the_file_and_the_field() {
        let e = Config::from_yaml("bakend: sim\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.yaml") && e.contains("bakend"), "{e}");
        let e = Config::from_yaml("gpus: [{index: 0}, {index: 0}]", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
        let e = Config::from_yaml("sim_gpus: h100:zero", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("count"), "{e}");
    }

    fn problem(text: &str) -> String {
        Config::from_yaml(text, Path::new("c.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn out_of_range_numbers_are_refused_naming_key_value_and_range() {
        for (text, key, value, range) in [
            (
                "gpus: [{index: 0, mps: {sm_oversubscription: .nan}}]",
                "gpus[0].mps.sm_oversubscription",
                "NaN",
                "1.0",
            ),
            (
                "gpus: [{index: 0, mps: {sm_oversubscription: .inf}}]",
                "gpus[0].mps.sm_oversubscription",
                "inf",
                "10.0",
            ),
            (
                "gpus: [{index: 2, mode: timeslice, replicas: 4294967295}]",
                "gpus[0].replicas",
                "4294967295",
                "1 to 64",
            ),
            (
                "gpus: [{index: 0, mps: {max_clients: 1000}}]",
                "gpus[0].mps.max_clients",
                "1000",
                "1 to 48",
            ),
            ("gpus: [{index: 70}]", "gpus[0].index", "70", "0 to 63"),
            (
                "scheduler: {tick_ms: 0}",
                "scheduler.tick_ms",
                "0",
                "1 to 60000",
            ),
            (
                "scheduler: {reserve_after_ms: 18446744073709551615}",
                "scheduler.reserve_after_ms",
                "18446744073709551615",
                "0 to 86400000",
            ),
            (
                "lease: {heartbeat_interval_ms: 5000, heartbeat_timeout_ms: 5000}",
                "lease.heartbeat_timeout_ms",
                "5000",
                "5001 to 86400000",
            ),
            (
                "connections: {max_per_uid: 0}",
                "connections.max_per_uid",
                "0",
                "1 to 65536",
            ),
            (
                "connections: {idle_timeout_ms: 10}",
                "connections.idle_timeout_ms",
                "10",
                "1000 to",
            ),
            ("http_uid: 4294967295", "http_uid", "4294967295", "0 to"),
            ("admins: [0, 4294967295]", "admins[1]", "4294967295", "0 to"),
        ] {
            let e = problem(text);
            assert!(
                e.contains("c.yaml")
                    && e.contains(&format!("`{key}`"))
                    && e.contains(&format!("is {value}"))
                    && e.contains(range),
                "{text}: {e}"
            );
        }
        // The edges of each range are accepted.
        Config::from_yaml(
            "gpus: [{index: 63, replicas: 64, mps: {max_clients: 48, sm_oversubscription: 10.0}}]\nconnections: {max_per_uid: 1, idle_timeout_ms: 1000}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
    }

    proptest::proptest! {
        /// A GPU's numbers are accepted exactly when each is in its range, and a refusal
        /// names the first key out of range.
        #[test]
        fn gpu_numbers_are_accepted_exactly_in_range(
            replicas in proptest::prelude::any::<u32>(),
            max_clients in 0u32..200,
            reserve_mib in proptest::prelude::any::<u64>(),
            sm in proptest::prelude::prop_oneof![
                proptest::prelude::Just(f64::NAN),
                proptest::prelude::Just(f64::INFINITY),
                proptest::prelude::Just(f64::NEG_INFINITY),
                -5.0f64..20.0,
            ],
        ) {
            let cfg = Config {
                gpus: vec![GpuSettings {
                    index: 0,
                    mode: ModeChoice::Auto,
                    mps: MpsSettings { reserve_mib, max_clients, sm_oversubscription: sm },
                    replicas,
                }],
                ..Config::default()
            };
            let ok = (1..=MAX_REPLICAS).contains(&replicas)
                && reserve_mib <= MAX_RESERVE_MIB
                && (1..=MAX_MPS_CLIENTS).contains(&max_clients)
                && sm.is_finite()
                && (1.0..=MAX_SM_OVERSUBSCRIPTION).contains(&sm);
            match cfg.validate(Path::new("p.yaml")) {
                Ok(()) => proptest::prop_assert!(ok),
                Err(e) => {
                    proptest::prop_assert!(!ok);
                    let e = e.to_string();
                    let key = if !(1..=MAX_REPLICAS).contains(&replicas) {
                        "replicas"
                    } else if reserve_mib > MAX_RESERVE_MIB {
                        "mps.reserve_mib"
                    } else if !(1..=MAX_MPS_CLIENTS).contains(&max_clients) {
                        "mps.max_clients"
                    } else {
                        "mps.sm_oversubscription"
                    };
                    let named = format!("`gpus[0].{key}`");
                    proptest::prop_assert!(e.contains(&named), "{}", e);
                    proptest::prop_assert!(e.contains("allowed"), "{}", e);
                }
            }
        }
    }

    #[test]
    fn sim_gpu_lists_parse() {
        assert_eq!(
            parse_sim_gpus("h100-80gb:2, a30").unwrap(),
            vec![("h100-80gb".into(), 2), ("a30".into(), 1)]
        );
        assert!(parse_sim_gpus("").is_err());
        assert!(parse_sim_gpus("h100:0").is_err());
    }
}
