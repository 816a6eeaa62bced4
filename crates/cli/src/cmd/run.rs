//! `tessera run (--mig PROFILE | --mem SIZE [--mps [--sm PCT]] | --share) -- CMD ARGS...`: wait
//! for a slice, run CMD in it, and give the slice back when CMD ends.
//!
//! - While waiting, the place in the queue and why it waits (e.g. another user's MPS clients
//!   hold the GPU) are shown on stderr (`-q` hides them). SIGINT, SIGTERM
//!   or SIGHUP withdraw the request and exit with 128+signal; `--timeout` gives up (exit 1).
//! - CMD runs with the slice's environment (`CUDA_VISIBLE_DEVICES=MIG-<uuid>`, the MPS
//!   variables, or the GPU's UUID for time-slicing, plus `TESSERA_LEASE_ID`). It stays in
//!   this process's process group, so terminal signals reach it directly; SIGINT, SIGTERM and
//!   SIGHUP sent to `tessera run` itself (by `kill`) are forwarded to it. If `tessera run` dies,
//!   CMD gets SIGKILL (`PR_SET_PDEATHSIG`), since its lease ends too.
//! - A heartbeat goes to the daemon every few seconds. If the daemon is down (restarting),
//!   CMD keeps running and the client keeps retrying. When CMD ends, the client tells the
//!   daemon; if the daemon is down it retries for `--release-retry` (30 s), then exits with
//!   CMD's status anyway and says so (SIGINT/SIGTERM end the retry at once); the daemon ends
//!   the lease of a client that is gone by itself. If the request is cancelled
//!   (`tessera cancel`), CMD gets SIGTERM, then SIGKILL 10 s later.
//! - The exit code is CMD's, or 128+signal when a signal killed it. Before CMD starts: 1 when
//!   the request cannot be met (no such slice on this machine, cancelled, timed out), 2 on
//!   errors (daemon unreachable at submission, bad arguments).

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use tessera_api::client::{Client, ClientError};
use tessera_api::wire::{
    format_ms, parse_duration_ms, ReleaseBody, RequestState, RequestView, SliceAsk, SubmitBody,
};
use tokio::sync::mpsc;

use super::daemon_client::{block_on, client_error, SocketArg};
use crate::output::{CliError, Ctx};
use crate::size::parse_mem;

/// Arguments of `tessera run`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("slice").required(true).args(["mig", "mem", "share"])))]
#[command(after_long_help = MEM_HELP)]
pub struct Args {
    #[command(flatten)]
    pub socket: SocketArg,
    /// A MIG instance of exactly this profile, e.g. 3g.40gb.
    #[arg(long, value_name = "PROFILE")]
    pub mig: Option<String>,
    /// Device memory with a unit: MB/GB/TB (decimal) or MiB/GiB/TiB (binary), e.g. 12GiB.
    /// The smallest MIG profile with at least this much memory, else an MPS client with this
    /// memory limit (`tessera help run` says exactly how it chooses).
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// Ask for an MPS client (with --mem), never a MIG instance.
    #[arg(long, requires = "mem")]
    pub mps: bool,
    /// SM share of the MPS client, in percent (with --mps; default: the memory's share of
    /// the GPU). MIG profiles have a fixed number of SMs.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub sm: Option<u8>,
    /// One time-slice replica of a whole GPU.
    #[arg(long)]
    pub share: bool,
    /// Only GPUs of this catalog model.
    #[arg(long, value_name = "KEY")]
    pub gpu_model: Option<String>,
    /// Higher goes first (-1000 to 1000, default 0).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Give up waiting for a slice after this long (e.g. 30s, 5m); default: wait forever.
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,
    /// When CMD has ended but the daemon is down: how long to keep retrying to tell it
    /// before exiting anyway with CMD's status (the daemon ends the lease itself when it
    /// finds this process gone). SIGINT/SIGTERM end the retry at once.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    pub release_retry: String,
    /// Do not print queue progress on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// How `--mem` chooses, shown by `tessera help run` (and in docs/requests.md).
const MEM_HELP: &str = "\
How --mem chooses a slice:
  1. The size needs a unit. MB, GB and TB are decimal (10^6, 10^9, 10^12 bytes); MiB, GiB
     and TiB (or Mi, Gi, Ti) are binary (2^20, 2^30, 2^40 bytes). The size is rounded up to
     whole MiB, and the line `--mem ... = N MiB` on stderr says how it was read.
  2. On MIG GPUs: the smallest ordinary profile (no +me/-me) whose memory is at least the
     size; a profile's memory is what `tessera profiles --gpu MODEL` lists, slightly below its
     name (7g.80gb on an H100 has 79.25 GiB, so --mem 80GiB does not fit it but --mem 79GiB
     and --mem 80GB do). Among models, the one that wastes the least memory comes first.
  3. Else on MPS GPUs: a client with this memory limit and an SM share of --sm percent
     (default: the memory's share of the GPU).
  4. If no GPU can ever hold it, the request is refused at once (exit 1) with the largest
     MIG slice and MPS client this machine has, and the flags that ask for them.
--mps skips step 2; --sm needs --mps. --mig PROFILE asks for one profile by name; --share
for a time-slice replica of a whole GPU.";

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Terminal-generated signals (Ctrl-C, hangup) carry SI_KERNEL and reach CMD directly
    // through the process group; only those sent to us alone are forwarded.
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO.
    let from_tty = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    let buf = [sig as u8, u8::from(from_tty)];
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer lives on this stack.
        unsafe {
            libc::write(fd, buf.as_ptr().cast(), 2);
        }
    }
}

/// A signal that arrived: its number and whether the terminal sent it.
#[derive(Debug, Clone, Copy)]
struct Sig {
    num: i32,
    from_tty: bool,
}

/// Catch SIGINT, SIGTERM and SIGHUP into a channel.
fn catch_signals() -> Result<mpsc::UnboundedReceiver<Sig>, CliError> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(CliError::Other(format!(
            "cannot create a pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with our handler and SA_SIGINFO is valid.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let read_fd = fds[0];
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut buf = [0u8; 2];
            // SAFETY: reading into a stack buffer from our pipe.
            let n = unsafe { libc::read(read_fd, buf.as_mut_ptr().cast(), 2) };
            if n == 2 {
                if tx
                    .send(Sig {
                        num: i32::from(buf[0]),
                        from_tty: buf[1] != 0,
                    })
                    .is_err()
                {
                    return;
                }
            } else if n < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
                continue;
            } else {
                return;
            }
        })
        .map_err(|e| CliError::Other(format!("cannot start the signal thread: {e}")))?;
    Ok(rx)
}

fn say(quiet: bool, text: &str) {
    if !quiet {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "tessera: {text}");
    }
}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Build the request body from the flags; also how `--mem` was understood.
fn body(args: &Args) -> Result<(SubmitBody, Option<String>), CliError> {
    if args.mps && args.mem.is_none() {
        return Err(CliError::Usage(
            "--mps asks for an MPS client with a memory limit, so it goes with --mem only (tessera run --mps --mem SIZE -- CMD)"
                .into(),
        ));
    }
    if let Some(sm) = args.sm {
        if !args.mps {
            let what = if args.mig.is_some() {
                "a MIG profile has a fixed number of SMs (pick a larger profile for more)"
            } else if args.share {
                "a time-slice replica shares the whole GPU's SMs in turns"
            } else {
                "--mem alone may get a MIG instance, whose SMs are fixed by its profile"
            };
            return Err(CliError::Usage(format!(
                "--sm {sm} sets an MPS client's SM share, and {what}; add --mps to ask for an \
                 MPS client (tessera run --mps --mem SIZE --sm {sm} -- CMD)"
            )));
        }
    }
    let mut understood = None;
    let slice = if let Some(p) = &args.mig {
        SliceAsk::Mig { profile: p.clone() }
    } else if let Some(m) = &args.mem {
        let size = parse_mem(m).map_err(|e| CliError::Usage(format!("--mem: {e}")))?;
        understood = Some(format!("--mem {m} = {}", size.understood));
        if args.mps {
            SliceAsk::Mps {
                memory_mib: size.mib,
                sm_percent: args.sm,
            }
        } else {
            SliceAsk::Mem {
                memory_mib: size.mib,
                sm_percent: None,
            }
        }
    } else {
        SliceAsk::Share
    };
    if !(-1000..=1000).contains(&args.priority) {
        return Err(CliError::Usage(
            "--priority must be between -1000 and 1000".into(),
        ));
    }
    Ok((
        SubmitBody {
            slice,
            gpu_model: args.gpu_model.clone(),
            priority: args.priority,
            command: args.cmd.clone(),
        },
        understood,
    ))
}

/// Run the command.
pub fn run(args: &Args, _ctx: &Ctx) -> Result<ExitCode, CliError> {
    let (body, understood) = body(args)?;
    if let Some(u) = understood {
        say(args.quiet, &u);
    }
    let timeout = match &args.timeout {
        Some(t) => Some(Duration::from_millis(
            parse_duration_ms(t).map_err(|e| CliError::Usage(format!("--timeout: {e}")))?,
        )),
        None => None,
    };
    let release_retry = Duration::from_millis(
        parse_duration_ms(&args.release_retry)
            .map_err(|e| CliError::Usage(format!("--release-retry: {e}")))?,
    );
    let signals = catch_signals()?;
    let client = args.socket.client();
    block_on(session(args, client, body, timeout, release_retry, signals))?
}

/// What ended the wait.
enum WaitEnd {
    Leased(Box<RequestView>),
    Exit(ExitCode),
}

async fn session(
    args: &Args,
    client: Client,
    body: SubmitBody,
    timeout: Option<Duration>,
    release_retry: Duration,
    mut signals: mpsc::UnboundedReceiver<Sig>,
) -> Result<ExitCode, CliError> {
    let quiet = args.quiet;
    let submitted = match client.submit(&body).await {
        Ok(v) => v,
        Err(ClientError::Api {
            status: 422,
            message,
        }) => {
            eprintln!("tessera: {message}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(client_error(e)),
    };
    let id = submitted.id;
    let lease = match wait_for_lease(&client, submitted, timeout, &mut signals, quiet).await? {
        WaitEnd::Leased(v) => *v,
        WaitEnd::Exit(code) => return Ok(code),
    };
    let slice = lease
        .slice
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let shown = lease
        .env
        .get("CUDA_VISIBLE_DEVICES")
        .map(|v| format!(" (CUDA_VISIBLE_DEVICES={v})"))
        .unwrap_or_default();
    say(
        quiet,
        &format!(
            "request {id}: {slice} after {}{shown}",
            format_ms(lease.waited_ms)
        ),
    );
    let status = run_command(&client, &lease, &args.cmd, &mut signals, quiet).await;
    let (release, code) = match status {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(c), _) => (
                ReleaseBody {
                    exit_code: Some(c),
                    signal: None,
                },
                c,
            ),
            (None, Some(s)) => (
                ReleaseBody {
                    exit_code: None,
                    signal: Some(s),
                },
                128 + s,
            ),
            _ => (ReleaseBody::default(), 1),
        },
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!("tessera: cannot run `{}`: {e}", args.cmd[0]);
            (
                ReleaseBody {
                    exit_code: Some(code),
                    signal: None,
                },
                code,
            )
        }
    };
    if let Err(why) =
        release_with_retry(&client, id, &release, release_retry, &mut signals, quiet).await
    {
        // Always said, even with -q: the daemon has not heard that CMD ended.
        eprintln!(
            "tessera: could not tell the daemon that request {id} ended ({why}); exiting with \
             the command's status {code}. The daemon ends the lease itself once it sees this \
             process gone."
        );
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

async fn wait_for_lease(
    client: &Client,
    first: RequestView,
    timeout: Option<Duration>,
    signals: &mut mpsc::UnboundedReceiver<Sig>,
    quiet: bool,
) -> Result<WaitEnd, CliError> {
    let id = first.id;
    let started = Instant::now();
    let poll = Duration::from_millis(first.heartbeat_interval_ms.clamp(200, 10_000));
    let mut last_pos: Option<(u32, u32)> = None;
    let mut last_why: Option<String> = None;
    let mut view = first;
    let mut down_since: Option<Instant> = None;
    // The first answer comes right after submission: give the scheduler a moment before
    // reporting a queue place that may last only milliseconds.
    let mut settled = false;
    loop {
        match view.state {
            RequestState::Leased => return Ok(WaitEnd::Leased(Box::new(view))),
            RequestState::Queued if !settled => {}
            RequestState::Queued => {
                if let (Some(p), Some(n)) = (view.position, view.queue_length) {
                    if last_pos != Some((p, n)) {
                        say(
                            quiet,
                            &format!(
                                "request {id} ({}) waiting: {} of {n} in the queue",
                                view.ask,
                                ordinal(p)
                            ),
                        );
                        last_pos = Some((p, n));
                    }
                }
                if view.wait_reason.is_some() && view.wait_reason != last_why {
                    if let Some(why) = &view.wait_reason {
                        say(quiet, &format!("request {id} waits: {why}"));
                    }
                    last_why = view.wait_reason.clone();
                }
            }
            other => {
                let why = view.end_reason.clone().unwrap_or_else(|| other.to_string());
                eprintln!("tessera: request {id} ended before it got a slice: {why}");
                return Ok(WaitEnd::Exit(ExitCode::from(1)));
            }
        }
        let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
        if left == Some(Duration::ZERO) {
            let _ = client.release(id, &ReleaseBody::default()).await;
            eprintln!(
                "tessera: request {id}: no slice within {}; withdrawn",
                format_ms(timeout.unwrap_or_default().as_millis() as u64)
            );
            return Ok(WaitEnd::Exit(ExitCode::from(1)));
        }
        let this_poll = if settled {
            poll
        } else {
            Duration::from_millis(500)
        };
        let this_poll = left.map_or(this_poll, |l| l.min(this_poll));
        settled = true;
        tokio::select! {
            r = client.wait(id, this_poll) => match r {
                Ok(v) => {
                    if down_since.take().is_some() {
                        say(quiet, "the daemon is back");
                    }
                    view = v;
                }
                Err(e) if e.is_unavailable() => {
                    if down_since.is_none() {
                        say(quiet, &format!("{e}; still waiting, retrying"));
                        down_since = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(ClientError::Api { status: 404, message }) => {
                    eprintln!("tessera: request {id} is gone: {message}");
                    return Ok(WaitEnd::Exit(ExitCode::from(1)));
                }
                Err(e) => return Err(client_error(e)),
            },
            Some(sig) = signals.recv() => {
                let _ = client.release(id, &ReleaseBody::default()).await;
                say(quiet, &format!("request {id} withdrawn (signal {})", sig.num));
                return Ok(WaitEnd::Exit(ExitCode::from((128 + sig.num) as u8)));
            }
        }
    }
}

/// Spawn CMD with the lease's environment and supervise it until it exits.
async fn run_command(
    client: &Client,
    lease: &RequestView,
    cmd: &[String],
    signals: &mut mpsc::UnboundedReceiver<Sig>,
    quiet: bool,
) -> std::io::Result<std::process::ExitStatus> {
    let id = lease.id;
    let mut command = tokio::process::Command::new(&cmd[0]);
    command.args(&cmd[1..]).envs(&lease.env).kill_on_drop(false);
    // SAFETY: getpid is async-signal-safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id().map(|p| p as i32);
    let send = |sig: i32| {
        if let Some(p) = pid {
            // SAFETY: kill(2) on our own child's PID.
            unsafe {
                libc::kill(p, sig);
            }
        }
    };
    let interval = Duration::from_millis(lease.heartbeat_interval_ms.clamp(100, 60_000));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping: Option<Instant> = None;
    let mut down = false;
    // The heartbeat in flight: polled next to the child, so a daemon that accepts but does
    // not answer (stopped) never delays noticing that CMD ended.
    let mut beat: Option<std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>>> = None;
    loop {
        tokio::select! {
            st = child.wait() => return st,
            Some(sig) = signals.recv() => {
                if !sig.from_tty {
                    send(sig.num);
                }
            }
            _ = ticker.tick() => {
                if let Some(t) = stopping {
                    if t.elapsed() > Duration::from_secs(10) {
                        send(libc::SIGKILL);
                    }
                }
                if beat.is_none() {
                    beat = Some(Box::pin(client.heartbeat(id)));
                }
            }
            r = async { beat.as_mut().expect("guarded by is_some").await }, if beat.is_some() => {
                beat = None;
                let r: Result<RequestView, ClientError> = r;
                match r {
                    Ok(v) => {
                        if down {
                            say(quiet, "the daemon is back");
                            down = false;
                        }
                        let ended = !v.state.is_active();
                        if (v.cancel_requested || ended) && stopping.is_none() {
                            let why = if ended {
                                format!("the daemon ended the lease ({})", v.end_reason.unwrap_or_default())
                            } else {
                                "the request was cancelled".to_string()
                            };
                            say(false, &format!("request {id}: {why}; stopping the command"));
                            send(libc::SIGTERM);
                            stopping = Some(Instant::now());
                        }
                    }
                    Err(e) if e.is_unavailable() => {
                        if !down {
                            say(quiet, &format!("{e}; the command keeps running, retrying"));
                            down = true;
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

/// Why `tessera run` could not tell the daemon that CMD ended.
#[derive(Debug, thiserror::Error)]
enum ReleaseError {
    /// The daemon answered with an error that retrying does not mend.
    #[error(transparent)]
    Refused(ClientError),
    /// The daemon stayed unavailable for the whole retry window.
    #[error("gave up after {after}: {}", match last { Some(e) => e.to_string(), None => "no answer".into() })]
    GaveUp {
        /// The retry window.
        after: String,
        /// The last attempt's error (`None`: no attempt answered).
        #[source]
        last: Option<ClientError>,
    },
    /// A signal came while retrying.
    #[error("signal {num} while retrying")]
    Signal {
        /// The signal number.
        num: i32,
    },
}

/// Tell the daemon CMD ended; retry for `window` while the daemon is down or not answering.
/// Every attempt races the window and SIGINT/SIGTERM/SIGHUP, so a stopped daemon (whose socket
/// accepts but never answers) cannot hold the client. `Err` says why it gave up.
async fn release_with_retry(
    client: &Client,
    id: u64,
    body: &ReleaseBody,
    window: Duration,
    signals: &mut mpsc::UnboundedReceiver<Sig>,
    quiet: bool,
) -> Result<(), ReleaseError> {
    let deadline = tokio::time::Instant::now() + window;
    let mut told = false;
    let mut last: Option<ClientError> = None;
    let gave_up = |last| ReleaseError::GaveUp {
        after: format_ms(window.as_millis() as u64),
        last,
    };
    loop {
        let attempt = tokio::time::timeout_at(deadline, client.release(id, body));
        tokio::select! {
            r = attempt => match r {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.is_unavailable() => {
                    if !told {
                        say(quiet, &format!("{e}; retrying the release for up to {}", format_ms(window.as_millis() as u64)));
                        told = true;
                    }
                    last = Some(e);
                }
                Ok(Err(e)) => return Err(ReleaseError::Refused(e)),
                Err(_) => return Err(gave_up(last)),
            },
            Some(sig) = signals.recv() => return Err(ReleaseError::Signal { num: sig.num }),
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(250))) => {}
            Some(sig) = signals.recv() => return Err(ReleaseError::Signal { num: sig.num }),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(gave_up(last));
        }
    }
}
