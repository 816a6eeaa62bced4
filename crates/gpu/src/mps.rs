//! MPS (Multi-Process Service) control: one `nvidia-cuda-mps-control` daemon per GPU (or per
//! MIG instance), its default limits, and the environment its clients need.
//!
//! Layout under the state directory, per target (`gpu0`, or `gpu0-gi3` inside a MIG
//! instance): `mps/<name>/pipe` (`CUDA_MPS_PIPE_DIRECTORY`), `mps/<name>/log`
//! (`CUDA_MPS_LOG_DIRECTORY`) and `mps/<name>/mps.json`, the record of what [`MpsControl::start`]
//! did, so that [`MpsControl::stop`] in another process can undo it.
//!
//! Compute mode: unless [`MpsOptions::leave_compute_mode`] is set, `start` reads the GPU's
//! compute mode, writes it to the record, *then* sets `EXCLUSIVE_PROCESS`, and `stop` restores
//! the recorded mode after the daemon quit. With `leave_compute_mode` the compute mode is never
//! read or written (no backend needed), e.g. for benchmarks that compare sharing modes.
//!
//! The daemon is reached through an [`MpsRunner`]: [`ProcessRunner`] runs the real binary,
//! [`SimRunner`] keeps a small JSON file in the pipe directory instead, for tests and the
//! simulator.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::{ComputeMode, GpuBackend};
use crate::error::GpuError;
use crate::sim::write_atomic;

pub mod twin;
pub use twin::{Admission, ServerTable, TwinError, MAX_CLIENTS_PER_SERVER};

/// The control binary's name.
pub const MPS_CONTROL_BINARY: &str = "nvidia-cuda-mps-control";
/// Longest pipe directory: the daemon's Unix socket `PIPE/control` must fit `sun_path` (108).
pub const MAX_PIPE_DIR_LEN: usize = 96;

/// Errors of MPS control.
#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    /// The control binary is not installed.
    #[error("{binary} not found ({detail}); install the NVIDIA driver utilities, or use the sim backend")]
    BinaryNotFound {
        /// The binary looked for.
        binary: String,
        /// What the OS said.
        detail: String,
    },
    /// A daemon command failed.
    #[error("MPS `{command}` for {target}: {detail}")]
    Command {
        /// The target (`gpu0`).
        target: String,
        /// The command sent.
        command: String,
        /// What went wrong.
        detail: String,
    },
    /// The control daemon could not be started or did not answer a command.
    #[error("MPS `{command}` for {target}: {source}")]
    Runner {
        /// The target (`gpu0`).
        target: String,
        /// The command sent (`-d` for the start).
        command: String,
        /// Why.
        #[source]
        source: RunnerError,
    },
    /// A file or directory under the state directory.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The pipe directory path is too long for a Unix socket.
    #[error("MPS pipe directory {} is {len} bytes; keep it under {MAX_PIPE_DIR_LEN} (choose a shorter state directory)", .path.display())]
    PathTooLong {
        /// The pipe directory.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// A limit out of range.
    #[error("{0}")]
    InvalidLimit(String),
    /// Compute mode must be managed but no backend was given.
    #[error("MPS for {target}: setting the compute mode needs a GPU backend; pass one, or set leave_compute_mode")]
    NeedsBackend {
        /// The target.
        target: String,
    },
    /// A GPU backend call failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// What an MPS daemon serves: a whole GPU or one MIG instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpsTarget {
    /// The physical GPU's index (whose compute mode is managed).
    pub gpu: u32,
    /// The GPU-instance ID when the daemon serves one MIG instance.
    pub gi_id: Option<u32>,
    /// What the daemon and its clients get as `CUDA_VISIBLE_DEVICES`: a GPU index or UUID,
    /// or a `MIG-…` UUID.
    pub visible_device: String,
}

impl MpsTarget {
    /// A whole GPU; `visible_device` is its index or `GPU-…` UUID.
    pub fn gpu(gpu: u32, visible_device: impl Into<String>) -> Self {
        MpsTarget {
            gpu,
            gi_id: None,
            visible_device: visible_device.into(),
        }
    }

    /// One MIG instance, by its `MIG-…` UUID.
    pub fn mig(gpu: u32, gi_id: u32, mig_uuid: impl Into<String>) -> Self {
        MpsTarget {
            gpu,
            gi_id: Some(gi_id),
            visible_device: mig_uuid.into(),
        }
    }

    /// Directory name: `gpu0` or `gpu0-gi3`.
    pub fn name(&self) -> String {
        match self.gi_id {
            Some(gi) => format!("gpu{}-gi{gi}", self.gpu),
            None => format!("gpu{}", self.gpu),
        }
    }
}

/// How [`MpsControl`] starts daemons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpsOptions {
    /// Root of the pipe, log and record directories.
    pub state_dir: PathBuf,
    /// Never read or change the compute mode (no backend needed).
    pub leave_compute_mode: bool,
    /// `set_default_active_thread_percentage` at start (1-100), if any.
    pub default_active_thread_percentage: Option<u8>,
    /// `set_default_device_pinned_mem_limit 0 …` at start, in MiB, if any.
    pub default_pinned_mem_limit_mib: Option<u64>,
}

impl MpsOptions {
    /// Options with no default limits that manage the compute mode.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        MpsOptions {
            state_dir: state_dir.into(),
            leave_compute_mode: false,
            default_active_thread_percentage: None,
            default_pinned_mem_limit_mib: None,
        }
    }
}

/// Limits for one client, as environment variables. A client can only lower the daemon's
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientLimits {
    /// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` (1-100): a ceiling on the SM share.
    pub active_thread_percentage: Option<u8>,
    /// `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` for device 0, in MiB.
    pub pinned_mem_limit_mib: Option<u64>,
}

/// What a running daemon looks like; also the `mps.json` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpsStatus {
    /// The target.
    pub target: MpsTarget,
    /// `CUDA_MPS_PIPE_DIRECTORY`.
    pub pipe_dir: PathBuf,
    /// `CUDA_MPS_LOG_DIRECTORY`.
    pub log_dir: PathBuf,
    /// Whether `start` manages the compute mode (false with `leave_compute_mode`).
    pub manages_compute_mode: bool,
    /// The compute mode before `start`, to restore on `stop`.
    pub previous_compute_mode: Option<ComputeMode>,
    /// Whether the daemon was started (false while `start` is between recording and starting).
    pub running: bool,
    /// Default active thread percentage set on the daemon.
    pub default_active_thread_percentage: Option<u8>,
    /// Default pinned device memory limit set on the daemon, in MiB.
    pub default_pinned_mem_limit_mib: Option<u64>,
}

/// What `stop` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopReport {
    /// Whether a daemon record was found.
    pub was_running: bool,
    /// The compute mode restored, if any.
    pub restored_compute_mode: Option<ComputeMode>,
    /// Why `quit` failed, if it did (the daemon may have died already); cleanup went on.
    pub quit_error: Option<String>,
}

/// How the control daemon is reached.
pub trait MpsRunner: Send {
    /// Start the daemon (`nvidia-cuda-mps-control -d`) with these extra environment variables,
    /// and return once it accepts commands (its control socket exists).
    fn start_daemon(&mut self, env: &BTreeMap<String, String>) -> Result<(), RunnerError>;
    /// Send one command line to the daemon of `env`'s pipe directory; returns its reply.
    fn send(
        &mut self,
        env: &BTreeMap<String, String>,
        command: &str,
    ) -> Result<String, RunnerError>;
}

/// Why an [`MpsRunner`] could not start the daemon or get a command answered.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The control binary is not installed (not on `PATH`, or the path given does not exist).
    #[error("{source}")]
    NotFound {
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The control binary exists but could not be started.
    #[error("cannot run {}: {source}", .binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The command could not be sent (its input pipe closed).
    #[error("cannot write the command: {source}")]
    Write {
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file of the simulated daemon could not be written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The daemon or its client refused, failed or did not answer in time; the detail names
    /// what happened (exit status and its error output, the timeout, the control log's tail).
    #[error("{0}")]
    Failed(String),
}

/// Runs the real `nvidia-cuda-mps-control`.
///
/// `-d` forks the daemon and returns before it listens, so [`MpsRunner::start_daemon`] starts
/// it with null stdio (a daemon that kept our pipes would make us wait for it forever), waits
/// for the `-d` process, then for the control socket `PIPE/control`. Every control command is
/// one run of the client with the command on its stdin and the reply read from its stdout,
/// killed when it takes longer than `timeout`.
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    /// The binary (default: found on `PATH`).
    pub binary: PathBuf,
    /// The longest a control command, the `-d` call, or the wait for the socket may take.
    pub timeout: Duration,
}

/// Default for [`ProcessRunner::timeout`].
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(15);

impl Default for ProcessRunner {
    fn default() -> Self {
        ProcessRunner {
            binary: PathBuf::from(MPS_CONTROL_BINARY),
            timeout: DEFAULT_CONTROL_TIMEOUT,
        }
    }
}

/// Why waiting for a child process ended without its exit status.
#[derive(Debug, thiserror::Error)]
enum WaitError {
    /// The deadline passed; the child was killed.
    #[error("no answer in time; killed it")]
    Timeout,
    /// The OS refused the wait.
    #[error("cannot wait for it: {0}")]
    Wait(#[source] std::io::Error),
}

/// Wait for `child` until `deadline`; kill it (and reap it) when the deadline passes.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<ExitStatus, WaitError> {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(WaitError::Timeout);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(WaitError::Wait(e)),
        }
    }
}

/// The last lines of the daemon's `control.log`, for an error message.
fn log_tail(env: &BTreeMap<String, String>) -> String {
    let Some(dir) = env.get("CUDA_MPS_LOG_DIRECTORY") else {
        return String::new();
    };
    let path = Path::new(dir).join("control.log");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
            format!("; {}: {tail}", path.display())
        }
        Err(_) => format!("; no {} was written", path.display()),
    }
}

impl ProcessRunner {
    fn spawn_err(&self, source: std::io::Error) -> RunnerError {
        if source.kind() == std::io::ErrorKind::NotFound {
            RunnerError::NotFound { source }
        } else {
            RunnerError::Spawn {
                binary: self.binary.clone(),
                source,
            }
        }
    }
}

impl MpsRunner for ProcessRunner {
    fn start_daemon(&mut self, env: &BTreeMap<String, String>) -> Result<(), RunnerError> {
        let deadline = Instant::now() + self.timeout;
        // Null stdio: the forked daemon inherits these, so pipes would never close.
        let mut child = Command::new(&self.binary)
            .arg("-d")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| self.spawn_err(e))?;
        let status = wait_until(&mut child, deadline)
            .map_err(|e| RunnerError::Failed(format!("`-d`: {e}{}", log_tail(env))))?;
        if !status.success() {
            return Err(RunnerError::Failed(format!(
                "`-d` exited with {status}{}",
                log_tail(env)
            )));
        }
        let Some(pipe) = env.get("CUDA_MPS_PIPE_DIRECTORY") else {
            return Ok(());
        };
        let socket = Path::new(pipe).join("control");
        while !socket.exists() {
            if Instant::now() >= deadline {
                return Err(RunnerError::Failed(format!(
                    "the daemon's control socket {} did not appear within {:?}{}",
                    socket.display(),
                    self.timeout,
                    log_tail(env)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn send(
        &mut self,
        env: &BTreeMap<String, String>,
        command: &str,
    ) -> Result<String, RunnerError> {
        let deadline = Instant::now() + self.timeout;
        let mut child = Command::new(&self.binary)
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_err(e))?;
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "{command}").map_err(|source| RunnerError::Write { source })?;
        }
        let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut text);
                }
                text
            })
        };
        let out = read(child.stdout.take().map(|p| Box::new(p) as _));
        let err = read(child.stderr.take().map(|p| Box::new(p) as _));
        let status = wait_until(&mut child, deadline).map_err(|e| {
            RunnerError::Failed(format!(
                "the control client: {e} (after {:?})",
                self.timeout
            ))
        })?;
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        if status.success() {
            Ok(out.trim().to_string())
        } else {
            Err(RunnerError::Failed(format!(
                "exit {status}: {}",
                err.trim()
            )))
        }
    }
}

/// A simulated daemon: a JSON file `sim-control.json` in the pipe directory.
#[derive(Debug, Clone, Default)]
pub struct SimRunner;

/// The simulated daemon's file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimDaemon {
    /// Whether the daemon runs.
    pub running: bool,
    /// Environment it was started with.
    pub env: BTreeMap<String, String>,
    /// Every command received, in order.
    pub commands: Vec<String>,
    /// Current default active thread percentage.
    pub default_active_thread_percentage: Option<u8>,
    /// Current default pinned memory limits, per device ordinal (`12G`).
    pub default_pinned_mem_limit: BTreeMap<u32, String>,
    /// Its MPS server and clients under the per-uid rule ([`twin`]).
    #[serde(default)]
    pub servers: ServerTable,
}

impl SimRunner {
    /// The simulated daemon's file for a pipe directory.
    pub fn file(pipe_dir: &Path) -> PathBuf {
        pipe_dir.join("sim-control.json")
    }

    /// Read the simulated daemon of a pipe directory (default when none ran).
    pub fn read(pipe_dir: &Path) -> SimDaemon {
        fs::read_to_string(Self::file(pipe_dir))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn write(pipe_dir: &Path, d: &SimDaemon) -> Result<(), RunnerError> {
        let text = serde_json::to_string_pretty(d).expect("serializes");
        let path = Self::file(pipe_dir);
        write_atomic(&path, text.as_bytes()).map_err(|source| RunnerError::Io { path, source })
    }

    fn pipe(env: &BTreeMap<String, String>) -> Result<PathBuf, RunnerError> {
        env.get("CUDA_MPS_PIPE_DIRECTORY")
            .map(PathBuf::from)
            .ok_or_else(|| RunnerError::Failed("CUDA_MPS_PIPE_DIRECTORY is not set".into()))
    }
}

impl MpsRunner for SimRunner {
    fn start_daemon(&mut self, env: &BTreeMap<String, String>) -> Result<(), RunnerError> {
        let pipe = Self::pipe(env)?;
        let mut d = Self::read(&pipe);
        if d.running {
            return Err(RunnerError::Failed(
                "an MPS control daemon is already running on this pipe directory".into(),
            ));
        }
        d.running = true;
        d.env = env.clone();
        Self::write(&pipe, &d)
    }

    fn send(
        &mut self,
        env: &BTreeMap<String, String>,
        command: &str,
    ) -> Result<String, RunnerError> {
        let pipe = Self::pipe(env)?;
        let mut d = Self::read(&pipe);
        if !d.running {
            return Err(RunnerError::Failed(
                "cannot connect to the MPS control daemon (not running)".into(),
            ));
        }
        d.commands.push(command.to_string());
        let words: Vec<&str> = command.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["quit"] => {
                d.running = false;
                d.servers = ServerTable::default();
                String::new()
            }
            ["set_default_active_thread_percentage", p] => {
                let v: u8 = p
                    .parse()
                    .map_err(|_| RunnerError::Failed(format!("bad percentage `{p}`")))?;
                d.default_active_thread_percentage = Some(v);
                v.to_string()
            }
            ["get_default_active_thread_percentage"] => d
                .default_active_thread_percentage
                .map(|v| format!("{v}.0"))
                .unwrap_or_else(|| "100.0".into()),
            ["set_default_device_pinned_mem_limit", dev, limit] => {
                let dev: u32 = dev
                    .parse()
                    .map_err(|_| RunnerError::Failed(format!("bad device `{dev}`")))?;
                d.default_pinned_mem_limit.insert(dev, limit.to_string());
                String::new()
            }
            ["get_server_list"] => d
                .servers
                .server
                .as_ref()
                .map(|s| s.pid.to_string())
                .unwrap_or_default(),
            ["get_client_list", pid] => match &d.servers.server {
                Some(s) if s.pid.to_string() == *pid => s
                    .clients
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => return Err(RunnerError::Failed(format!("no MPS server with PID {pid}"))),
            },
            _ => return Err(RunnerError::Failed(format!("unknown command `{command}`"))),
        };
        Self::write(&pipe, &d)?;
        Ok(reply)
    }
}

/// Format a memory limit in MiB as MPS takes it: `12G` when whole GiB, else `1536M`.
pub fn format_mem_limit(mib: u64) -> String {
    if mib > 0 && (mib / 1024) * 1024 == mib {
        format!("{}G", mib / 1024)
    } else {
        format!("{mib}M")
    }
}

/// Starts and stops MPS daemons and answers client environments.
pub struct MpsControl {
    runner: Box<dyn MpsRunner>,
    opts: MpsOptions,
}

impl std::fmt::Debug for MpsControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpsControl")
            .field("opts", &self.opts)
            .finish()
    }
}

impl MpsControl {
    /// Control through any runner.
    pub fn new(runner: Box<dyn MpsRunner>, opts: MpsOptions) -> Self {
        MpsControl { runner, opts }
    }

    /// Control of the real daemon (`nvidia-cuda-mps-control` on `PATH`).
    pub fn real(opts: MpsOptions) -> Self {
        Self::new(Box::new(ProcessRunner::default()), opts)
    }

    /// Control of simulated daemons.
    pub fn sim(opts: MpsOptions) -> Self {
        Self::new(Box::new(SimRunner), opts)
    }

    /// The options.
    pub fn options(&self) -> &MpsOptions {
        &self.opts
    }

    fn dir(&self, target: &MpsTarget) -> PathBuf {
        self.opts.state_dir.join("mps").join(target.name())
    }

    /// The pipe directory of a target.
    pub fn pipe_dir(&self, target: &MpsTarget) -> PathBuf {
        self.dir(target).join("pipe")
    }

    /// The log directory of a target.
    pub fn log_dir(&self, target: &MpsTarget) -> PathBuf {
        self.dir(target).join("log")
    }

    fn record_path(&self, target: &MpsTarget) -> PathBuf {
        self.dir(target).join("mps.json")
    }

    fn daemon_env(&self, target: &MpsTarget) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "CUDA_MPS_PIPE_DIRECTORY".into(),
            self.pipe_dir(target).display().to_string(),
        );
        env.insert(
            "CUDA_MPS_LOG_DIRECTORY".into(),
            self.log_dir(target).display().to_string(),
        );
        env.insert("CUDA_VISIBLE_DEVICES".into(), target.visible_device.clone());
        // An index means what nvidia-smi and NVML mean by it only in PCI bus order.
        env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
        env
    }

    /// The record of a started daemon, if any.
    pub fn status(&self, target: &MpsTarget) -> Result<Option<MpsStatus>, MpsError> {
        let path = self.record_path(target);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| MpsError::Io {
                    path,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(MpsError::Io { path, source }),
        }
    }

    fn save(&self, st: &MpsStatus) -> Result<(), MpsError> {
        let path = self.record_path(&st.target);
        let text = serde_json::to_string_pretty(st).expect("serializes");
        write_atomic(&path, text.as_bytes()).map_err(|source| MpsError::Io { path, source })
    }

    fn send(&mut self, target: &MpsTarget, command: &str) -> Result<String, MpsError> {
        let env = self.daemon_env(target);
        self.runner
            .send(&env, command)
            .map_err(|source| self.command_err(target, command, source))
    }

    fn command_err(&self, target: &MpsTarget, command: &str, source: RunnerError) -> MpsError {
        match source {
            RunnerError::NotFound { source } => MpsError::BinaryNotFound {
                binary: MPS_CONTROL_BINARY.into(),
                detail: source.to_string(),
            },
            source => MpsError::Runner {
                target: target.name(),
                command: command.into(),
                source,
            },
        }
    }

    /// Start the daemon for `target` (idempotent: a recorded running daemon is left as is and
    /// its status returned). Order: create the directories; unless `leave_compute_mode`, read
    /// the compute mode (of the MIG device for a MIG target, as nvml.h requires with MIG on),
    /// record it, then set `EXCLUSIVE_PROCESS`; start the daemon and wait until it listens; set
    /// the default limits, checking each reply; record `running`. The previous mode is recorded
    /// once: a start retried after an interruption keeps the recorded one. If the daemon does
    /// not start, the compute mode is restored and the record removed. `backend` is needed only
    /// to manage the compute mode.
    pub fn start(
        &mut self,
        target: &MpsTarget,
        backend: Option<&mut dyn GpuBackend>,
    ) -> Result<MpsStatus, MpsError> {
        let earlier = self.status(target)?;
        if let Some(st) = &earlier {
            if st.running {
                return Ok(st.clone());
            }
        }
        if let Some(p) = self.opts.default_active_thread_percentage {
            check_percentage(p)?;
        }
        let pipe = self.pipe_dir(target);
        let len = pipe.as_os_str().len();
        if len > MAX_PIPE_DIR_LEN {
            return Err(MpsError::PathTooLong { path: pipe, len });
        }
        for d in [self.pipe_dir(target), self.log_dir(target)] {
            fs::create_dir_all(&d).map_err(|source| MpsError::Io { path: d, source })?;
        }
        let mut st = MpsStatus {
            target: target.clone(),
            pipe_dir: self.pipe_dir(target),
            log_dir: self.log_dir(target),
            manages_compute_mode: !self.opts.leave_compute_mode,
            previous_compute_mode: None,
            running: false,
            default_active_thread_percentage: None,
            default_pinned_mem_limit_mib: None,
        };
        let mut backend = backend;
        if st.manages_compute_mode {
            let b = backend
                .as_deref_mut()
                .ok_or_else(|| MpsError::NeedsBackend {
                    target: target.name(),
                })?;
            // A start interrupted after recording (and perhaps after changing the mode)
            // left the true previous mode in its record: keep it, or `stop` would restore
            // the EXCLUSIVE_PROCESS this very start set.
            let prev = match earlier.as_ref().and_then(|e| e.previous_compute_mode) {
                Some(recorded) => recorded,
                None => read_mode(b, target)?,
            };
            st.previous_compute_mode = Some(prev);
            self.save(&st)?;
            if read_mode(b, target)? != ComputeMode::ExclusiveProcess {
                write_mode(b, target, ComputeMode::ExclusiveProcess)?;
            }
        } else {
            self.save(&st)?;
        }
        let env = self.daemon_env(target);
        if let Err(source) = self.runner.start_daemon(&env) {
            let err = self.command_err(target, "-d", source);
            if let (Some(prev), Some(b)) = (st.previous_compute_mode, backend) {
                let _ = write_mode(b, target, prev);
            }
            let _ = fs::remove_file(self.record_path(target));
            return Err(err);
        }
        st.running = true;
        self.save(&st)?;
        if let Some(p) = self.opts.default_active_thread_percentage {
            self.set_default_active_thread_percentage(target, p)?;
        }
        if let Some(m) = self.opts.default_pinned_mem_limit_mib {
            self.set_default_device_pinned_mem_limit(target, 0, m)?;
        }
        Ok(self.status(target)?.expect("just saved"))
    }

    /// Set the daemon's default SM share for new clients (1-100).
    pub fn set_default_active_thread_percentage(
        &mut self,
        target: &MpsTarget,
        percentage: u8,
    ) -> Result<(), MpsError> {
        check_percentage(percentage)?;
        let command = format!("set_default_active_thread_percentage {percentage}");
        let reply = self.send(target, &command)?;
        // The daemon answers with the value it set; anything else is its error message.
        let echoed = reply.trim().parse::<f64>().ok();
        if !reply.trim().is_empty() && echoed != Some(f64::from(percentage)) {
            return Err(MpsError::Command {
                target: target.name(),
                command,
                detail: format!("the daemon answered `{}`", reply.trim()),
            });
        }
        self.update(target, |st| {
            st.default_active_thread_percentage = Some(percentage)
        })
    }

    /// Set the daemon's default pinned device memory limit for new clients on device ordinal
    /// `device` (as the daemon numbers its visible devices).
    pub fn set_default_device_pinned_mem_limit(
        &mut self,
        target: &MpsTarget,
        device: u32,
        mib: u64,
    ) -> Result<(), MpsError> {
        if mib == 0 {
            return Err(MpsError::InvalidLimit(
                "a pinned memory limit of 0 MiB leaves clients nothing; give at least 1".into(),
            ));
        }
        self.send(
            target,
            &format!(
                "set_default_device_pinned_mem_limit {device} {}",
                format_mem_limit(mib)
            ),
        )?;
        self.update(target, |st| st.default_pinned_mem_limit_mib = Some(mib))
    }

    fn update(&self, target: &MpsTarget, f: impl FnOnce(&mut MpsStatus)) -> Result<(), MpsError> {
        if let Some(mut st) = self.status(target)? {
            f(&mut st);
            self.save(&st)?;
        }
        Ok(())
    }

    /// Stop the daemon: send `quit`, restore the recorded compute mode (if `start` changed
    /// it), remove the record. Idempotent: without a record it does nothing. A failing `quit`
    /// (daemon already gone) does not stop the cleanup; it is reported in the result.
    pub fn stop(
        &mut self,
        target: &MpsTarget,
        backend: Option<&mut dyn GpuBackend>,
    ) -> Result<StopReport, MpsError> {
        let Some(st) = self.status(target)? else {
            return Ok(StopReport {
                was_running: false,
                restored_compute_mode: None,
                quit_error: None,
            });
        };
        let quit_error = if st.running {
            match self.send(target, "quit") {
                Ok(_) => None,
                Err(MpsError::BinaryNotFound { .. })
                | Err(MpsError::Command { .. })
                | Err(MpsError::Runner { .. }) => {
                    Some("quit failed; the daemon may have exited already".to_string())
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let mut restored = None;
        if st.manages_compute_mode {
            if let Some(prev) = st.previous_compute_mode {
                let b = backend.ok_or_else(|| MpsError::NeedsBackend {
                    target: target.name(),
                })?;
                write_mode(b, target, prev)?;
                restored = Some(prev);
            }
        }
        let path = self.record_path(target);
        fs::remove_file(&path).map_err(|source| MpsError::Io { path, source })?;
        Ok(StopReport {
            was_running: st.running,
            restored_compute_mode: restored,
            quit_error,
        })
    }

    /// The environment a client process needs to use the daemon of `target` with `limits`:
    /// `CUDA_MPS_PIPE_DIRECTORY`, `CUDA_MPS_LOG_DIRECTORY`, `CUDA_VISIBLE_DEVICES` only when the
    /// target is named by a `GPU-…`/`MIG-…` UUID (never an index), and, when set, `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` and `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`
    /// (`0=12G`: device 0 of what the client sees).
    pub fn client_env(
        &self,
        target: &MpsTarget,
        limits: &ClientLimits,
    ) -> Result<BTreeMap<String, String>, MpsError> {
        let mut env = self.daemon_env(target);
        // The MPS guide: the server remaps the devices its clients see, so an index in a
        // client's CUDA_VISIBLE_DEVICES would name the wrong device or none. A UUID names the
        // same device everywhere; without one, the variable stays unset and the client sees
        // what the server sees.
        env.remove("CUDA_DEVICE_ORDER");
        if !is_device_uuid(&target.visible_device) {
            env.remove("CUDA_VISIBLE_DEVICES");
        }
        if let Some(p) = limits.active_thread_percentage {
            check_percentage(p)?;
            env.insert("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(), p.to_string());
        }
        if let Some(m) = limits.pinned_mem_limit_mib {
            env.insert(
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(),
                format!("0={}", format_mem_limit(m)),
            );
        }
        Ok(env)
    }
}

impl MpsControl {
    /// Let `uid` (and nobody else but root) into `target`'s pipe and log directories, for the
    /// clients of the one user an MPS server serves at a time: the MPS root and the target's
    /// directory become `0711` (others may pass through to known names, never list), and `pipe`
    /// and `log` are created if missing, owned by `uid` and `0700`. Called before each MPS grant,
    /// so the next user to hold the target takes the directories over from the previous one.
    /// Giving a directory to another uid needs root: without it the directories stay this
    /// process's own (a daemon of one user serves only itself).
    pub fn open_to(&self, target: &MpsTarget, uid: u32) -> Result<(), MpsError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| MpsError::Io { path, source }
        };
        let set_mode = |path: &Path, mode: u32| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))
        };
        let root = &self.opts.state_dir;
        let dir = self.dir(target);
        for d in [root.join("mps"), dir.clone()] {
            fs::create_dir_all(&d).map_err(io(&d))?;
            set_mode(&d, 0o711)?;
        }
        for d in [self.pipe_dir(target), self.log_dir(target)] {
            fs::create_dir_all(&d).map_err(io(&d))?;
            match std::os::unix::fs::chown(&d, Some(uid), None) {
                Ok(()) => {}
                // Not root: the directories stay this process's own, and only its own
                // clients (the in-process demo, a daemon serving one user) can use them.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(source) => return Err(io(&d)(source)),
            }
            set_mode(&d, 0o700)?;
        }
        Ok(())
    }
}

/// Whether `visible` names a device by UUID (`GPU-…`, `MIG-…`, or the older `MIG-GPU-…/g/c`).
pub fn is_device_uuid(visible: &str) -> bool {
    visible.starts_with("GPU-") || visible.starts_with("MIG-")
}

/// Read the compute mode a daemon for `target` depends on: the MIG device's for a MIG target,
/// else the GPU's.
fn read_mode(b: &mut dyn GpuBackend, target: &MpsTarget) -> Result<ComputeMode, GpuError> {
    match target.gi_id {
        Some(gi) => b.instance_compute_mode(target.gpu, gi),
        None => b.compute_mode(target.gpu),
    }
}

/// Set the compute mode of `target` (see [`read_mode`]).
fn write_mode(
    b: &mut dyn GpuBackend,
    target: &MpsTarget,
    mode: ComputeMode,
) -> Result<(), GpuError> {
    match target.gi_id {
        Some(gi) => b.set_instance_compute_mode(target.gpu, gi, mode),
        None => b.set_compute_mode(target.gpu, mode),
    }
}

fn check_percentage(p: u8) -> Result<(), MpsError> {
    if (1..=100).contains(&p) {
        Ok(())
    } else {
        Err(MpsError::InvalidLimit(format!(
            "active thread percentage {p} is out of range; give 1 to 100"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimBackend, SimConfig, SimState};
    use tessera_model::Catalog;

    fn sim_gpu() -> SimBackend {
        let c = Catalog::builtin().clone();
        let st = SimState::new(&c, &[("h100-80gb".into(), 2)], 1, false).unwrap();
        SimBackend::new(st, c, SimConfig::default()).unwrap()
    }

    #[test]
    fn start_sets_exclusive_process_and_stop_restores_the_previous_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = sim_gpu();
        b.set_compute_mode(1, ComputeMode::Prohibited).unwrap();
        let mut opts = MpsOptions::new(dir.path());
        opts.default_active_thread_percentage = Some(50);
        opts.default_pinned_mem_limit_mib = Some(12 * 1024);
        let mut mps = MpsControl::sim(opts);
        let t = MpsTarget::gpu(1, "1");
        let st = mps.start(&t, Some(&mut b)).unwrap();
        assert!(st.running);
        assert_eq!(st.previous_compute_mode, Some(ComputeMode::Prohibited));
        assert_eq!(b.compute_mode(1).unwrap(), ComputeMode::ExclusiveProcess);
        assert_eq!(b.compute_mode(0).unwrap(), ComputeMode::Default);
        let d = SimRunner::read(&st.pipe_dir);
        assert_eq!(d.default_active_thread_percentage, Some(50));
        assert_eq!(
            d.default_pinned_mem_limit.get(&0).map(String::as_str),
            Some("12G")
        );
        assert_eq!(d.env["CUDA_VISIBLE_DEVICES"], "1");
        // Idempotent start.
        assert_eq!(
            mps.start(&t, Some(&mut b)).unwrap(),
            mps.status(&t).unwrap().unwrap()
        );
        let r = mps.stop(&t, Some(&mut b)).unwrap();
        assert_eq!(r.restored_compute_mode, Some(ComputeMode::Prohibited));
        assert_eq!(b.compute_mode(1).unwrap(), ComputeMode::Prohibited);
        assert!(!SimRunner::read(&st.pipe_dir).running);
        assert!(!mps.stop(&t, Some(&mut b)).unwrap().was_running);
    }

    #[test]
    fn leave_compute_mode_touches_nothing_and_needs_no_backend() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = MpsOptions::new(dir.path());
        opts.leave_compute_mode = true;
        let mut mps = MpsControl::sim(opts);
        let t = MpsTarget::gpu(0, "GPU-abc");
        let st = mps.start(&t, None).unwrap();
        assert!(!st.manages_compute_mode && st.previous_compute_mode.is_none());
        mps.stop(&t, None).unwrap();
        // Without the option, a backend is required.
        let mut mps = MpsControl::sim(MpsOptions::new(dir.path()));
        assert!(matches!(
            mps.start(&t, None),
            Err(MpsError::NeedsBackend { .. })
        ));
    }

    #[test]
    fn client_env_has_the_four_variables() {
        let mps = MpsControl::sim(MpsOptions::new("/run/tessera"));
        let t = MpsTarget::mig(0, 3, "MIG-1234");
        let env = mps
            .client_env(
                &t,
                &ClientLimits {
                    active_thread_percentage: Some(25),
                    pinned_mem_limit_mib: Some(1536),
                },
            )
            .unwrap();
        assert_eq!(
            env["CUDA_MPS_PIPE_DIRECTORY"],
            "/run/tessera/mps/gpu0-gi3/pipe"
        );
        assert_eq!(env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=1536M");
        assert_eq!(env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "MIG-1234");
        assert!(mps
            .client_env(
                &t,
                &ClientLimits {
                    active_thread_percentage: Some(0),
                    pinned_mem_limit_mib: None
                }
            )
            .is_err());
    }

    #[test]
    fn a_missing_binary_is_named_and_the_compute_mode_restored() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = sim_gpu();
        let runner = ProcessRunner {
            binary: dir.path().join("no-such-mps-control"),
            ..ProcessRunner::default()
        };
        let mut mps = MpsControl::new(Box::new(runner), MpsOptions::new(dir.path()));
        let t = MpsTarget::gpu(0, "0");
        let e = mps.start(&t, Some(&mut b)).unwrap_err();
        assert!(matches!(e, MpsError::BinaryNotFound { .. }), "{e}");
        assert_eq!(b.compute_mode(0).unwrap(), ComputeMode::Default);
        assert!(mps.status(&t).unwrap().is_none());
    }

    /// A stand-in for `nvidia-cuda-mps-control` that behaves like the real one where it
    /// matters here: `-d` leaves a background process holding its stdout and creates the
    /// control socket a little later; commands are read from stdin and answered on stdout.
    #[cfg(unix)]
    fn fake_control(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-mps-control");
        let script = r#"#!/bin/sh
if [ "$1" = "-d" ]; then
  out=$(readlink /proc/$$/fd/1)
  echo "$out" > "$CUDA_MPS_LOG_DIRECTORY/daemon-stdout"
  sleep 300 &
  echo $! > "$CUDA_MPS_LOG_DIRECTORY/daemon.pid"
  (sleep 0.2; touch "$CUDA_MPS_PIPE_DIRECTORY/control") &
  exit 0
fi
read cmd
case "$cmd" in
  set_default_active_thread_percentage*) echo "${cmd##* }.0" ;;
  set_default_device_pinned_mem_limit*) ;;
  quit) rm -f "$CUDA_MPS_PIPE_DIRECTORY/control" ;;
  hang) exec sleep 300 ;;
  *) echo "unknown command $cmd" ;;
esac
"#;
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[cfg(unix)]
    fn kill_fake_daemon(log_dir: &Path) {
        if let Ok(pid) = fs::read_to_string(log_dir.join("daemon.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_daemon_is_started_with_null_stdio_and_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let runner = ProcessRunner {
            binary: fake_control(dir.path()),
            timeout: Duration::from_secs(10),
        };
        let mut opts = MpsOptions::new(dir.path());
        opts.leave_compute_mode = true;
        opts.default_active_thread_percentage = Some(50);
        let t = MpsTarget::gpu(0, "GPU-abc");
        let log_dir = MpsControl::sim(opts.clone()).log_dir(&t);
        // Run start on a thread: with piped stdio it would wait for the daemon's `sleep 300`.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut mps = MpsControl::new(Box::new(runner), opts);
            let r = mps.start(&t, None).map(|st| st.running);
            let _ = tx.send((r, mps));
        });
        let got = rx.recv_timeout(Duration::from_secs(20));
        kill_fake_daemon(&log_dir);
        let (started, mut mps) = got.expect("start returned while the daemon holds its stdio");
        assert!(started.unwrap(), "started");
        let seen = fs::read_to_string(log_dir.join("daemon-stdout")).unwrap();
        assert_eq!(seen.trim(), "/dev/null");
        // The socket existed before the limit was sent, and the reply was checked.
        let t = MpsTarget::gpu(0, "GPU-abc");
        assert!(mps.pipe_dir(&t).join("control").exists());
        assert_eq!(
            mps.status(&t)
                .unwrap()
                .unwrap()
                .default_active_thread_percentage,
            Some(50)
        );
        let e = mps.send(&t, "bogus").unwrap();
        assert_eq!(e, "unknown command bogus");
        let r = mps.stop(&t, None).unwrap();
        assert_eq!(r.quit_error, None);
    }

    #[cfg(unix)]
    #[test]
    fn a_control_command_that_hangs_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut runner = ProcessRunner {
            binary: fake_control(dir.path()),
            timeout: Duration::from_millis(300),
        };
        let mut env = BTreeMap::new();
        env.insert(
            "CUDA_MPS_PIPE_DIRECTORY".to_string(),
            dir.path().display().to_string(),
        );
        let e = runner.send(&env, "hang").unwrap_err().to_string();
        assert!(e.contains("killed"), "{e}");
        // A daemon whose socket never appears is reported, naming the socket.
        let mut env = env.clone();
        let pipe = dir.path().join("never");
        fs::create_dir_all(&pipe).unwrap();
        env.insert("CUDA_MPS_PIPE_DIRECTORY".into(), pipe.display().to_string());
        env.insert(
            "CUDA_MPS_LOG_DIRECTORY".into(),
            dir.path().display().to_string(),
        );
        fs::write(dir.path().join("hide"), "").unwrap();
        let quiet = dir.path().join("quiet-control");
        fs::write(&quiet, "#!/bin/sh\nexit 0\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&quiet, fs::Permissions::from_mode(0o755)).unwrap();
        }
        runner.binary = quiet;
        let e = runner.start_daemon(&env).unwrap_err().to_string();
        assert!(
            e.contains("never/control") && e.contains("did not appear"),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_reply_to_a_limit_is_an_error() {
        struct Grumpy;
        impl MpsRunner for Grumpy {
            fn start_daemon(&mut self, _: &BTreeMap<String, String>) -> Result<(), RunnerError> {
                Ok(())
            }
            fn send(
                &mut self,
                _: &BTreeMap<String, String>,
                _: &str,
            ) -> Result<String, RunnerError> {
                Ok("Invalid value".into())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut opts = MpsOptions::new(dir.path());
        opts.leave_compute_mode = true;
        opts.default_active_thread_percentage = Some(30);
        let mut mps = MpsControl::new(Box::new(Grumpy), opts);
        let e = mps.start(&MpsTarget::gpu(0, "GPU-x"), None).unwrap_err();
        assert!(e.to_string().contains("Invalid value"), "{e}");
    }

    #[test]
    fn clients_never_get_a_device_index() {
        let mps = MpsControl::sim(MpsOptions::new("/run/tessera"));
        let by_index = mps
            .client_env(&MpsTarget::gpu(1, "1"), &ClientLimits::default())
            .unwrap();
        assert!(
            !by_index.contains_key("CUDA_VISIBLE_DEVICES"),
            "{by_index:?}"
        );
        let by_uuid = mps
            .client_env(&MpsTarget::gpu(1, "GPU-5f0e"), &ClientLimits::default())
            .unwrap();
        assert_eq!(by_uuid["CUDA_VISIBLE_DEVICES"], "GPU-5f0e");
        // The daemon itself may be given an index, in nvidia-smi's (PCI) order.
        let dir = tempfile::tempdir().unwrap();
        let mut opts = MpsOptions::new(dir.path());
        opts.leave_compute_mode = true;
        let mut mps = MpsControl::sim(opts);
        let st = mps.start(&MpsTarget::gpu(1, "1"), None).unwrap();
        let d = SimRunner::read(&st.pipe_dir);
        assert_eq!(d.env["CUDA_VISIBLE_DEVICES"], "1");
        assert_eq!(d.env["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
    }

    #[test]
    fn a_retried_start_keeps_the_first_recorded_mode() {
        // A start that dies after setting EXCLUSIVE_PROCESS but before the daemon runs.
        struct Dies;
        impl MpsRunner for Dies {
            fn start_daemon(&mut self, _: &BTreeMap<String, String>) -> Result<(), RunnerError> {
                panic!("the process died here")
            }
            fn send(
                &mut self,
                _: &BTreeMap<String, String>,
                _: &str,
            ) -> Result<String, RunnerError> {
                unreachable!()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut b = sim_gpu();
        b.set_compute_mode(0, ComputeMode::Prohibited).unwrap();
        let t = MpsTarget::gpu(0, "GPU-0");
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut mps = MpsControl::new(Box::new(Dies), MpsOptions::new(dir.path()));
            let _ = mps.start(&t, Some(&mut b));
        }));
        assert!(crashed.is_err());
        assert_eq!(b.compute_mode(0).unwrap(), ComputeMode::ExclusiveProcess);
        let mut mps = MpsControl::sim(MpsOptions::new(dir.path()));
        let st = mps.start(&t, Some(&mut b)).unwrap();
        assert_eq!(st.previous_compute_mode, Some(ComputeMode::Prohibited));
        let r = mps.stop(&t, Some(&mut b)).unwrap();
        assert_eq!(r.restored_compute_mode, Some(ComputeMode::Prohibited));
        assert_eq!(b.compute_mode(0).unwrap(), ComputeMode::Prohibited);
    }

    #[test]
    fn per_instance_daemons_manage_their_own_mig_device_mode() {
        let c = Catalog::builtin().clone();
        let st = SimState::new(&c, &[("h100-80gb".into(), 1)], 1, true).unwrap();
        let mut b = SimBackend::new(st, c, SimConfig::default()).unwrap();
        let a = b.create_gi(0, "3g.40gb", 0).unwrap();
        let z = b.create_gi(0, "3g.40gb", 4).unwrap();
        b.set_instance_compute_mode(0, z.gi_id, ComputeMode::Prohibited)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut mps = MpsControl::sim(MpsOptions::new(dir.path()));
        let ta = MpsTarget::mig(0, a.gi_id, a.uuid.clone().unwrap());
        let tz = MpsTarget::mig(0, z.gi_id, z.uuid.clone().unwrap());
        let sa = mps.start(&ta, Some(&mut b)).unwrap();
        let sz = mps.start(&tz, Some(&mut b)).unwrap();
        assert_eq!(sa.previous_compute_mode, Some(ComputeMode::Default));
        assert_eq!(sz.previous_compute_mode, Some(ComputeMode::Prohibited));
        for gi in [a.gi_id, z.gi_id] {
            assert_eq!(
                b.instance_compute_mode(0, gi).unwrap(),
                ComputeMode::ExclusiveProcess
            );
        }
        // The parent has no compute mode of its own with MIG on.
        assert!(matches!(
            b.compute_mode(0),
            Err(GpuError::NotSupported { .. })
        ));
        mps.stop(&ta, Some(&mut b)).unwrap();
        assert_eq!(
            b.instance_compute_mode(0, a.gi_id).unwrap(),
            ComputeMode::Default
        );
        assert_eq!(
            b.instance_compute_mode(0, z.gi_id).unwrap(),
            ComputeMode::ExclusiveProcess
        );
        mps.stop(&tz, Some(&mut b)).unwrap();
        assert_eq!(
            b.instance_compute_mode(0, z.gi_id).unwrap(),
            ComputeMode::Prohibited
        );
    }

    #[test]
    fn memory_limits_format_like_mps_expects() {
        assert_eq!(format_mem_limit(12 * 1024), "12G");
        assert_eq!(format_mem_limit(1536), "1536M");
    }
}
