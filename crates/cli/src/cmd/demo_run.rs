//! `tessera demo`: the daemon in-process on a simulated fleet, fed a scripted, deterministic
//! mix of requests from several users, with frames for a live view and a summary at the end.
//!
//! The fleet is three simulated H100 80GB: GPU 0 in MIG mode (re-partitioned as demand moves
//! from small to large profiles and back), GPU 1 in MPS mode (memory and SM limits; one
//! user's MPS server at a time, so users take turns on it), GPU 2 time-sliced with four
//! replicas. The script (from a fixed seed) has five users submitting
//! MIG requests of every H100 size (1g.10gb to 7g.80gb), `--mem` requests that land on MIG or
//! MPS, and `--share` requests, arriving over the first three quarters of the scenario; each "command" is
//! a sleep; on an MPS slice it first connects to the simulated MPS control daemon as its
//! user, and the demo fails if any such client would block behind another user's server. The
//! same code paths as `tessera serve` run: SQLite state, the scheduler, the
//! planner, the simulated backend; only the socket is skipped (clients call the daemon's
//! operations directly, as named users).
//!
//! The demo uses the server as a library (it is not part of it): [`Daemon`] on a
//! [`Fleet`] over an in-memory simulator, driven through the daemon's public operations.
//!
//! Time: `duration` is the scenario's length in scenario seconds (default 30); `speed` runs it
//! that many times faster than real time. Waits in the summary are in scenario seconds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use tessera_gpu::mps::{Admission, SimRunner};
use tessera_gpu::sim::{SimBackend, SimConfig, SimState, SplitMix64};
use tessera_model::Catalog;

use tessera_server::config::{
    BackendChoice, Config, GpuSettings, LeaseSettings, ModeChoice, MpsSettings, SchedulerSettings,
};
use tessera_server::daemon::Daemon;
use tessera_server::fleet::Fleet;
use tessera_server::ident::Identity;
use tessera_server::wire::{
    ReleaseBody, RequestState, RequestView, SliceAsk, StatusView, SubmitBody,
};
use tessera_server::{ApiError, ServerError};

/// Why a demo run failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// The daemon (or its simulated fleet) failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The simulated fleet could not be made.
    #[error("the demo's simulated fleet: {0}")]
    Sim(#[from] tessera_gpu::GpuError),
    /// A daemon operation the demo called failed.
    #[error("the daemon refused the demo's call: {0}")]
    Api(#[from] ApiError),
    /// An MPS client of the demo would block behind another user's MPS server.
    #[error("the demo's MPS clients would block behind another user's MPS server: {0}")]
    Blocked(String),
}

/// Options of a demo run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoOptions {
    /// Scenario length in scenario seconds.
    pub duration_s: f64,
    /// How many times faster than real time.
    pub speed: f64,
    /// Seed of the script.
    pub seed: u64,
    /// Real milliseconds between frames.
    pub frame_ms: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration_s: 30.0,
            speed: 1.0,
            seed: 7,
            frame_ms: 250,
        }
    }
}

/// One scripted request.
#[derive(Debug, Clone, PartialEq)]
pub struct Scripted {
    /// Arrival, scenario seconds from the start.
    pub at_s: f64,
    /// User name.
    pub user: String,
    /// What it asks.
    pub ask: SliceAsk,
    /// How long its command runs once leased, scenario seconds.
    pub run_s: f64,
    /// Priority.
    pub priority: i32,
}

const USERS: [(&str, u32); 5] = [
    ("alice", 1001),
    ("bob", 1002),
    ("carol", 1003),
    ("dave", 1004),
    ("erin", 1005),
];

/// The scripted requests for a scenario of `duration_s`, from `seed`; sorted by arrival.
///
/// Three phases: small MIG profiles and MPS/time-slice work first, then a wave of large MIG
/// profiles (the MIG GPU must be re-partitioned), then a mix of every size.
pub fn script(duration_s: f64, seed: u64) -> Vec<Scripted> {
    let mut rng = SplitMix64::new(seed);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let small = ["1g.10gb", "2g.20gb", "1g.20gb", "1g.10gb"];
    let large = ["3g.40gb", "4g.40gb", "7g.80gb", "3g.40gb"];
    // MIG sizes go round each phase's list, so every size appears.
    let mut turn = [0usize; 3];
    let all = [
        "1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb",
    ];
    let mut out = Vec::new();
    let n = 40usize;
    for i in 0..n {
        let frac = i as f64 / n as f64;
        let phase = if frac < 0.35 {
            0
        } else if frac < 0.6 {
            1
        } else {
            2
        };
        let kind = pick(20);
        let ask = match (phase, kind) {
            (_, 0..=7) => SliceAsk::Mem {
                memory_mib: [8, 12, 16, 24][pick(4)] * 1024,
                sm_percent: Some([10, 20, 25, 40][pick(4)]),
            },
            (_, 8..=12) => SliceAsk::Share,
            (p, _) => {
                let list: &[&str] = match p {
                    0 => &small,
                    1 => &large,
                    _ => &all,
                };
                turn[p] += 1;
                SliceAsk::Mig {
                    profile: list[(turn[p] - 1) % list.len()].into(),
                }
            }
        };
        // A --mem request without --sm on MIG sizes: the smallest profile that fits.
        let ask = match ask {
            SliceAsk::Mem { memory_mib, .. } if i % 7 == 3 => SliceAsk::Mem {
                memory_mib,
                sm_percent: None,
            },
            other => other,
        };
        let jitter = (pick(1000) as f64 / 1000.0) * 0.6 / n as f64;
        let at = (frac + jitter) * 0.75 * duration_s;
        let run = duration_s * (0.07 + 0.14 * pick(1000) as f64 / 1000.0);
        let (user, _) = USERS[pick(USERS.len())];
        out.push(Scripted {
            at_s: (at * 10.0).round() / 10.0,
            user: user.into(),
            ask,
            run_s: (run * 10.0).round() / 10.0,
            priority: if pick(12) == 0 { 5 } else { 0 },
        });
    }
    out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    out
}

/// What the live view shows at one moment.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Scenario seconds since the start.
    pub t_s: f64,
    /// Scenario length.
    pub duration_s: f64,
    /// The fleet as root sees it.
    pub status: StatusView,
    /// Every active request, in ID order.
    pub active: Vec<RequestView>,
    /// Requests finished so far.
    pub finished: usize,
    /// Requests in the script.
    pub total: usize,
}

/// Utilisation of one GPU over the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuUse {
    /// GPU index.
    pub gpu: u32,
    /// `mig`, `mps` or `timeslice`.
    pub mode: String,
    /// Mean share of the GPU leased: compute slices (MIG), SM percent (MPS) or replicas
    /// (time-slicing), from 0 to 1.
    pub utilisation: f64,
}

/// The demo's summary (`-o json|yaml` of `tessera demo` prints it as is).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Requests in the script.
    pub requests: usize,
    /// Requests that got a slice and finished.
    pub served: usize,
    /// Mean wait, scenario seconds.
    pub mean_wait_s: f64,
    /// 95th percentile wait, scenario seconds.
    pub p95_wait_s: f64,
    /// Longest wait, scenario seconds.
    pub max_wait_s: f64,
    /// Re-partitions of MIG GPUs.
    pub repartitions: u64,
    /// Leases by slice type.
    pub leases_by_type: BTreeMap<String, usize>,
    /// Per GPU utilisation (`utilisation` in JSON).
    #[serde(rename = "utilisation")]
    pub gpus: Vec<GpuUse>,
    /// Scenario seconds until the last request finished.
    pub makespan_s: f64,
}

/// The demo's configuration (three simulated H100 80GB: MIG, MPS, time-slice).
pub fn demo_config(state_dir: PathBuf, speed: f64) -> Config {
    let tick = ((1000.0 / speed.max(0.01)) as u64).clamp(20, 1000);
    Config {
        backend: BackendChoice::Sim,
        sim_gpus: "h100-80gb:3".into(),
        state_dir: Some(state_dir),
        gpus: vec![
            GpuSettings {
                index: 0,
                mode: ModeChoice::Mig,
                mps: MpsSettings::default(),
                replicas: 4,
            },
            GpuSettings {
                index: 1,
                mode: ModeChoice::Mps,
                mps: MpsSettings::default(),
                replicas: 4,
            },
            GpuSettings {
                index: 2,
                mode: ModeChoice::Timeslice,
                mps: MpsSettings::default(),
                replicas: 4,
            },
        ],
        scheduler: SchedulerSettings {
            tick_ms: tick,
            max_reserved_gpus: 1,
            reserve_after_ms: 0,
        },
        lease: LeaseSettings {
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 60_000,
            ..LeaseSettings::default()
        },
        // In-process users: no client processes to confine.
        isolation: Some(tessera_server::config::IsolationMode::Off),
        ..Config::default()
    }
}

fn p95(sorted: &[f64]) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((0.95 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Run the demo; `on_frame` is called every `frame_ms` of real time and once at the end.
pub async fn run_demo(
    opts: DemoOptions,
    catalog: &Catalog,
    mut on_frame: impl FnMut(&Frame),
) -> Result<Summary, DemoError> {
    if !(opts.speed > 0.0 && opts.duration_s > 0.0) {
        return Err(DemoError::Usage(
            "the demo needs a positive --speed and --duration".into(),
        ));
    }
    let dir = std::env::temp_dir().join(format!("tessera-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| ServerError::io(&dir, e))?;
    let cfg = demo_config(dir.join("state"), opts.speed);
    let state = SimState::new(catalog, &[("h100-80gb".to_string(), 3)], opts.seed, true)?;
    let sim = SimBackend::new(state, catalog.clone(), SimConfig::default())?;
    std::fs::create_dir_all(cfg.state_dir()).map_err(|e| ServerError::io(cfg.state_dir(), e))?;
    let fleet = Fleet::with_backend(Box::new(sim), &cfg, &cfg.state_dir(), catalog)?;
    let (daemon, sched) = Daemon::start(cfg, catalog.clone(), fleet)?;
    let result = drive(&daemon, opts, &mut on_frame).await;
    daemon.stop();
    let _ = tokio::task::spawn_blocking(move || sched.join()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn drive(
    daemon: &Daemon,
    opts: DemoOptions,
    on_frame: &mut impl FnMut(&Frame),
) -> Result<Summary, DemoError> {
    let items = script(opts.duration_s, opts.seed);
    let total = items.len();
    let start = Instant::now();
    let real = |scenario_s: f64| Duration::from_secs_f64((scenario_s / opts.speed).max(0.0));
    let mut tasks = Vec::new();
    let blocked: Arc<Mutex<Vec<String>>> = Arc::default();
    for (n, it) in items.iter().cloned().enumerate() {
        let d = daemon.clone();
        let uid = USERS
            .iter()
            .find(|(u, _)| *u == it.user)
            .map_or(1000, |(_, id)| *id);
        let at = start + real(it.at_s);
        let run_for = real(it.run_s);
        let hb = Duration::from_millis(d.config().lease.heartbeat_interval_ms);
        let blocked = Arc::clone(&blocked);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let who = Identity::in_process(uid, &it.user);
            let body = SubmitBody {
                slice: it.ask.clone(),
                gpu_model: None,
                priority: it.priority,
                command: vec![format!("job-{n}"), format!("--for={}s", it.run_s)],
            };
            let Ok(mut v) = d.submit(&who, body) else {
                return;
            };
            while v.state == RequestState::Queued {
                match d.wait(&who, v.id, hb).await {
                    Ok(x) => v = x,
                    Err(_) => return,
                }
            }
            if v.state != RequestState::Leased {
                return;
            }
            // The job's CUDA process on an MPS slice: a client of the twin control daemon,
            // which must get its server at once (on real hardware a blocked one hangs).
            let mps_pipe = v.env.get("CUDA_MPS_PIPE_DIRECTORY").map(PathBuf::from);
            let pid = 200_000 + n as u32;
            if let Some(pipe) = &mps_pipe {
                match SimRunner::connect(pipe, pid, uid) {
                    Ok(Admission::Connected { .. }) => {}
                    Ok(Admission::Blocked { server_uid }) => blocked.lock().unwrap().push(format!(
                        "request {} of {} (uid {uid}) leased an MPS slice whose server runs as uid {server_uid}",
                        v.id, it.user
                    )),
                    Err(e) => blocked.lock().unwrap().push(format!("request {}: {e}", v.id)),
                }
            }
            let until = tokio::time::Instant::now() + run_for;
            while tokio::time::Instant::now() < until {
                let step = hb.min(until - tokio::time::Instant::now());
                tokio::time::sleep(step).await;
                let _ = d.heartbeat(&who, v.id);
            }
            if let Some(pipe) = &mps_pipe {
                let _ = SimRunner::disconnect(pipe, pid);
            }
            let _ = d.release(
                &who,
                v.id,
                ReleaseBody {
                    exit_code: Some(0),
                    signal: None,
                },
            );
        }));
    }
    let root = Identity::in_process(0, "root");
    let mut samples: BTreeMap<u32, (String, f64, u64)> = BTreeMap::new();
    let frame_every = Duration::from_millis(opts.frame_ms.max(20));
    let start_ms = tessera_server::daemon::now_ms();
    loop {
        let all_done = tasks.iter().all(|t| t.is_finished());
        let status = daemon.status(&root)?;
        let rows = daemon.all_rows()?;
        let finished = rows.iter().filter(|r| !r.state.is_active()).count();
        let t_s = start.elapsed().as_secs_f64() * opts.speed;
        for g in &status.gpus {
            let used = gpu_use(daemon, g);
            let e = samples.entry(g.index).or_insert((g.mode.clone(), 0.0, 0));
            e.1 += used;
            e.2 += 1;
        }
        let active = daemon.list(&root, false)?;
        on_frame(&Frame {
            t_s,
            duration_s: opts.duration_s,
            status,
            active,
            finished,
            total,
        });
        if all_done {
            break;
        }
        tokio::time::sleep(frame_every).await;
    }
    let blocked = std::mem::take(&mut *blocked.lock().unwrap());
    if !blocked.is_empty() {
        return Err(DemoError::Blocked(blocked.join("; ")));
    }
    let rows = daemon.all_rows()?;
    let mut waits: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.leased_ms.map(|l| l.saturating_sub(r.submitted_ms)))
        .map(|ms| ms as f64 / 1000.0 * opts.speed)
        .collect();
    waits.sort_by(f64::total_cmp);
    let mut leases_by_type = BTreeMap::new();
    for r in &rows {
        if let Some(s) = &r.slice {
            *leases_by_type.entry(s.type_name().to_string()).or_insert(0) += 1;
        }
    }
    let served = rows
        .iter()
        .filter(|r| r.state == RequestState::Done && r.slice.is_some())
        .count();
    let status = daemon.status(&root)?;
    Ok(Summary {
        requests: total,
        served,
        mean_wait_s: if waits.is_empty() {
            0.0
        } else {
            waits.iter().sum::<f64>() / waits.len() as f64
        },
        p95_wait_s: p95(&waits),
        max_wait_s: waits.last().copied().unwrap_or(0.0),
        repartitions: status.repartitions,
        leases_by_type,
        gpus: samples
            .into_iter()
            .map(|(gpu, (mode, sum, n))| GpuUse {
                gpu,
                mode,
                utilisation: if n == 0 { 0.0 } else { sum / n as f64 },
            })
            .collect(),
        makespan_s: rows
            .iter()
            .filter_map(|r| r.ended_ms)
            .max()
            .map_or(0.0, |e| {
                e.saturating_sub(start_ms) as f64 / 1000.0 * opts.speed
            }),
    })
}

/// The share of a GPU leased now, 0 to 1.
fn gpu_use(daemon: &Daemon, g: &tessera_server::wire::GpuView) -> f64 {
    match g.mode.as_str() {
        "mig" => {
            let Some(model) = daemon.catalog().get(&g.model) else {
                return 0.0;
            };
            let used: u32 = g
                .instances
                .iter()
                .filter(|i| i.busy)
                .filter_map(|i| model.profile_named(&i.profile))
                .map(|p| u32::from(model.profile(p).compute_slices))
                .sum();
            f64::from(used) / f64::from(model.compute_slices)
        }
        "mps" => {
            let sm: u32 = g.shares.iter().map(|s| u32::from(s.sm_percent)).sum();
            (f64::from(sm) / 100.0).min(1.0)
        }
        _ => {
            if g.capacity == 0 {
                0.0
            } else {
                f64::from(g.busy) / f64::from(g.capacity)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_deterministic_and_covers_every_kind_and_size() {
        let a = script(30.0, 7);
        assert_eq!(a, script(30.0, 7));
        assert!(a.windows(2).all(|w| w[0].at_s <= w[1].at_s));
        assert!(a.iter().all(|s| s.at_s <= 30.0 && s.run_s > 0.0));
        for p in [
            "1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb",
        ] {
            assert!(
                a.iter()
                    .any(|s| s.ask == SliceAsk::Mig { profile: p.into() }),
                "no {p} in the script"
            );
        }
        assert!(a.iter().any(|s| s.ask == SliceAsk::Share));
        assert!(a.iter().any(|s| matches!(s.ask, SliceAsk::Mem { .. })));
        let users: std::collections::BTreeSet<&str> = a.iter().map(|s| s.user.as_str()).collect();
        assert!(users.len() >= 4, "{users:?}");
    }

    #[test]
    fn the_summary_serialises_with_the_cli_field_names() {
        let s = Summary {
            requests: 3,
            served: 2,
            mean_wait_s: 0.5,
            p95_wait_s: 1.25,
            max_wait_s: 1.5,
            repartitions: 4,
            leases_by_type: BTreeMap::from([("mig".to_string(), 2)]),
            gpus: vec![GpuUse {
                gpu: 0,
                mode: "mig".into(),
                utilisation: 0.75,
            }],
            makespan_s: 9.0,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"requests":3,"served":2,"mean_wait_s":0.5,"p95_wait_s":1.25,"max_wait_s":1.5,"repartitions":4,"leases_by_type":{"mig":2},"utilisation":[{"gpu":0,"mode":"mig","utilisation":0.75}],"makespan_s":9.0}"#
        );
    }

    #[test]
    fn p95_takes_the_rank_above() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(p95(&v), 19.0);
        assert_eq!(p95(&[3.0]), 3.0);
        assert_eq!(p95(&[]), 0.0);
    }
}
