//! `tessera serve`: open the state and the GPUs, bind the Unix socket (and optionally TCP), and
//! serve until SIGINT or SIGTERM. Stopping the daemon keeps every lease and queued request in
//! the database; the commands keep running under their `tessera run` clients, which wait for
//! the daemon to come back.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tessera_model::Catalog;
use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;
use crate::daemon::Daemon;
use crate::error::ServerError;
use crate::fleet::Fleet;
use crate::http::{router, AppState, GuardCounters, Guarded, Peer};

/// Raise the soft limit on open files to the hard limit, so that client connections cannot
/// starve the daemon of descriptors for `/proc`, SQLite and the GPUs. Returns (before,
/// after); `None` for "unlimited".
pub fn raise_nofile_limit() -> (Option<u64>, Option<u64>) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let before = getrlimit(Resource::Nofile);
    if before.current == before.maximum {
        return (before.current, before.current);
    }
    let want = rustix::process::Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, want) {
        Ok(()) => (before.current, before.maximum),
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit to the hard limit: {e}");
            (before.current, before.current)
        }
    }
}

/// The per-uid connection cap in force: the configured one, but never more than a quarter
/// of the open-file limit (at least 4), so that one uid cannot use up the daemon's
/// descriptors.
pub fn connection_cap(configured: u32, nofile: Option<u64>) -> u32 {
    match nofile {
        Some(n) => configured.min(u32::try_from(n / 4).unwrap_or(u32::MAX).max(4)),
        None => configured,
    }
}

/// Make sure the state directory is private to the daemon: create it with mode 0700; an
/// existing one must belong to the daemon's uid (refused otherwise, since it holds every
/// user's command lines and environments), and group or other bits are removed. Returns what
/// was fixed, which is also logged.
pub fn secure_state_dir(dir: &Path) -> Result<Option<String>, ServerError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ServerError::io(dir, e))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| ServerError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(ServerError::Config {
            path: dir.to_path_buf(),
            problem: "the state directory is not a directory; pass another --state-dir".into(),
        });
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(ServerError::Config {
            path: dir.to_path_buf(),
            problem: format!(
                "the state directory belongs to uid {}, not to the daemon's uid {me}; it holds every user's commands and environments, so the daemon only uses its own: `chown {me} {}` (and chmod 700), or pass another --state-dir",
                meta.uid(),
                dir.display()
            ),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ServerError::io(dir, e))?;
    let note = format!(
        "state directory {} had mode {mode:04o} (open to other users); changed it to 0700",
        dir.display()
    );
    tracing::warn!("{note}");
    Ok(Some(note))
}

/// Hold an exclusive lock on `<state dir>/daemon.lock` so that two daemons never share a state
/// directory. The lock lives as long as the returned file.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, ServerError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServerError::io(&path, e))?;
    // SAFETY: flock on an fd we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(ServerError::Config {
            path,
            problem: "another tessera daemon uses this state directory; stop it first or pass another --state-dir".into(),
        });
    }
    Ok(file)
}

/// Bind the Unix socket: refuse when a daemon answers there, remove a stale file, then set
/// mode 0660 and the configured group.
pub fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixListener, ServerError> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            std::fs::create_dir_all(parent).map_err(|e| ServerError::io(parent, e))?;
            let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755));
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::Config {
                path: path.to_path_buf(),
                problem:
                    "a daemon already listens on this socket; stop it or pass another --socket"
                        .into(),
            });
        }
        std::fs::remove_file(path).map_err(|e| ServerError::io(path, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| ServerError::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| ServerError::io(path, e))?;
    if let Some(g) = group {
        let gid = resolve_group(g).ok_or_else(|| ServerError::Config {
            path: PathBuf::from("socket_group"),
            problem: format!("unknown group `{g}`"),
        })?;
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| ServerError::io(path, std::io::Error::other("NUL in path")))?;
        // SAFETY: a valid C string; uid -1 (u32::MAX) leaves the owner unchanged.
        let rc = unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) };
        if rc != 0 {
            return Err(ServerError::io(path, std::io::Error::last_os_error()));
        }
    }
    Ok(listener)
}

fn resolve_group(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Some(n);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a C struct of integers and pointers, for which all-zero bytes are a valid value.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers valid for the call.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// Serve until the servers fail, `stop` resolves (a signal), or the scheduler thread dies,
/// whichever comes first; the scheduler's death is an error, so `tessera serve` exits
/// non-zero and a supervisor restarts it.
pub async fn until_stopped(
    daemon: &Daemon,
    servers: impl std::future::Future<Output = Result<(), ServerError>>,
    stop: impl std::future::Future<Output = Result<(), ServerError>>,
) -> Result<(), ServerError> {
    tokio::select! {
        r = servers => r,
        r = stop => r,
        cause = daemon.scheduler_died() => Err(ServerError::SchedulerDied { cause }),
    }
}

/// Run the daemon until SIGINT/SIGTERM.
pub async fn serve(cfg: Config, catalog: Catalog) -> Result<(), ServerError> {
    cfg.validate(Path::new("<flags>"))?;
    let (before, after) = raise_nofile_limit();
    if before != after {
        let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |n| n.to_string());
        tracing::info!(
            "open-file limit raised from {} to {}",
            show(before),
            show(after)
        );
    }
    let state_dir = cfg.state_dir();
    secure_state_dir(&state_dir)?;
    let _lock = lock_state_dir(&state_dir)?;
    let (fleet, why) = Fleet::open(&cfg, &state_dir, &catalog)?;
    tracing::info!("backend: {why}");
    for g in &fleet.gpus {
        tracing::info!("GPU {}: {} {} mode {}", g.index, g.model, g.uuid, g.mode);
    }
    let token = match &cfg.listen {
        Some(_) => Some(cfg.resolve_token()?.ok_or_else(|| ServerError::Config {
            path: PathBuf::from("--listen"),
            problem: "HTTP needs a bearer token: set TESSERA_TOKEN, or token_file (or token) in the config".into(),
        })?),
        None => None,
    };
    let socket = cfg.socket();
    let unix = bind_socket(&socket, cfg.socket_group.as_deref())?;
    let tcp = match &cfg.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| ServerError::io(PathBuf::from(format!("--listen {addr}")), e))?,
        ),
        None => None,
    };
    let (daemon, sched) = Daemon::start(cfg.clone(), catalog, fleet)?;
    let app = router(AppState {
        daemon: daemon.clone(),
        token,
    });
    tracing::info!(
        "listening on {} (state in {}){}",
        socket.display(),
        state_dir.display(),
        tcp.as_ref()
            .and_then(|t| t.local_addr().ok())
            .map(|a| format!(" and http://{a}"))
            .unwrap_or_default()
    );
    let limits = &cfg.connections;
    let idle = std::time::Duration::from_millis(limits.idle_timeout_ms);
    let cap = connection_cap(limits.max_per_uid, after);
    if cap < limits.max_per_uid {
        tracing::warn!(
            "at most {cap} connections per uid (connections.max_per_uid is {}, but the open-file limit is {}; raise it with LimitNOFILE= or ulimit -Hn)",
            limits.max_per_uid,
            after.unwrap_or(0)
        );
    }
    let counters = GuardCounters {
        refused: daemon.metrics().connections_refused.clone(),
        timed_out: daemon.metrics().connections_timed_out.clone(),
    };
    let unix_srv = axum::serve(
        Guarded::new(unix, cap, idle).with_counters(counters.clone()),
        app.clone().into_make_service_with_connect_info::<Peer>(),
    );
    let tcp_srv = async {
        match tcp {
            Some(l) => {
                axum::serve(
                    Guarded::new(l, cap, idle).with_counters(counters),
                    app.into_make_service_with_connect_info::<Peer>(),
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| ServerError::io("SIGTERM handler", e))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<(), ServerError>(())
    };
    let servers = async {
        tokio::select! {
            r = unix_srv => r.map_err(|e| ServerError::io(&socket, e)),
            r = tcp_srv => r.map_err(|e| ServerError::io("--listen", e)),
        }
    };
    let result = until_stopped(&daemon, servers, stop).await;
    tracing::info!("shutting down; leases and the queue are kept in the state database");
    daemon.stop();
    let _ = std::fs::remove_file(&socket);
    tokio::task::spawn_blocking(move || sched.join()).await.ok();
    result
}
