//! MPS by uid and slice visibility, in-process: the scheduler's leases checked against the MPS
//! twin (one server per uid per control daemon), and what a non-admin's `status` reveals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tessera_gpu::mps::{Admission, SimRunner};
use tessera_gpu::sim::{SimBackend, SimConfig, SimState};
use tessera_model::Catalog;
use tessera_server::config::{
    BackendChoice, Config, GpuSettings, LeaseSettings, ModeChoice, MpsSettings, SchedulerSettings,
};
use tessera_server::daemon::SchedulerHandle;
use tessera_server::fleet::Fleet;
use tessera_server::ident::Identity;
use tessera_server::wire::{ReleaseBody, RequestState, RequestView, Slice, SliceAsk, SubmitBody};
use tessera_server::Daemon;

fn gpu(index: u32, mode: ModeChoice) -> GpuSettings {
    GpuSettings {
        index,
        mode,
        mps: MpsSettings::default(),
        replicas: 4,
    }
}

fn start(dir: &Path, modes: &[ModeChoice], reserve_after_ms: u64) -> (Daemon, SchedulerHandle) {
    let cfg = Config {
        backend: BackendChoice::Sim,
        sim_gpus: format!("h100-80gb:{}", modes.len()),
        state_dir: Some(dir.join("state")),
        gpus: modes
            .iter()
            .enumerate()
            .map(|(i, m)| gpu(i as u32, *m))
            .collect(),
        scheduler: SchedulerSettings {
            tick_ms: 50,
            max_reserved_gpus: 1,
            reserve_after_ms,
        },
        lease: LeaseSettings {
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 600_000,
            ..LeaseSettings::default()
        },
        ..Config::default()
    };
    let catalog = Catalog::builtin().clone();
    let st = SimState::new(
        &catalog,
        &[("h100-80gb".into(), modes.len() as u32)],
        3,
        true,
    )
    .unwrap();
    let sim = SimBackend::new(st, catalog.clone(), SimConfig::default()).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let fleet = Fleet::with_backend(Box::new(sim), &cfg, &cfg.state_dir(), &catalog).unwrap();
    Daemon::start(cfg, catalog, fleet).unwrap()
}

fn mem(gib: u64) -> SubmitBody {
    SubmitBody {
        slice: SliceAsk::Mem {
            memory_mib: gib * 1024,
            sm_percent: Some(10),
        },
        gpu_model: None,
        priority: 0,
        command: vec!["train".into(), "--secret-flag".into()],
    }
}

fn mig(p: &str) -> SubmitBody {
    SubmitBody {
        slice: SliceAsk::Mig { profile: p.into() },
        gpu_model: None,
        priority: 0,
        command: vec!["train".into(), "--secret-flag".into()],
    }
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Acts as the CUDA processes of leased MPS requests: each leased request's command connects
/// to the twin control daemon named by its environment, with its owner's uid.
#[derive(Default)]
struct Clients {
    /// Request → pipe directory it connected through.
    connected: BTreeMap<u64, PathBuf>,
}

impl Clients {
    /// Connect every newly leased MPS request; every one must get its server at once (a
    /// blocked client is a command that would hang on real hardware).
    fn connect_new(&mut self, leased: &[RequestView]) {
        for v in leased {
            if self.connected.contains_key(&v.id) || !matches!(v.slice, Some(Slice::Mps { .. })) {
                continue;
            }
            let pipe = PathBuf::from(&v.env["CUDA_MPS_PIPE_DIRECTORY"]);
            let got = SimRunner::connect(&pipe, 100_000 + v.id as u32, v.uid).unwrap();
            assert!(
                matches!(got, Admission::Connected { .. }),
                "request {} of {} (uid {}) was leased an MPS slice but its client blocks behind \
                 another uid's server ({got:?}); leases now: {:?}",
                v.id,
                v.user,
                v.uid,
                leased
                    .iter()
                    .map(|x| (x.id, x.uid, x.slice.clone()))
                    .collect::<Vec<_>>()
            );
            self.connected.insert(v.id, pipe);
        }
    }

    fn exit(&mut self, id: u64) {
        let pipe = self.connected.remove(&id).expect("connected");
        SimRunner::disconnect(&pipe, 100_000 + id as u32).unwrap();
    }
}

fn leased(d: &Daemon, root: &Identity) -> Vec<RequestView> {
    d.list(root, false)
        .unwrap()
        .into_iter()
        .filter(|v| v.state == RequestState::Leased)
        .collect()
}

/// Issue 19: two (here three) users asking for MPS slices on a one-GPU MPS fleet never hold
/// clients on the same MPS server at once; every request is served in the end, and a waiting
/// request says why it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_take_turns_on_a_one_gpu_mps_fleet_and_never_block_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sched) = start(dir.path(), &[ModeChoice::Mps], 0);
    let root = Identity::in_process(0, "root");
    let users = [
        Identity::in_process(1001, "alice"),
        Identity::in_process(1002, "bob"),
        Identity::in_process(1003, "carol"),
    ];
    // Interleaved arrivals: alice, bob, carol, alice, bob, carol.
    let mut ids = Vec::new();
    for _ in 0..2 {
        for u in &users {
            ids.push(d.submit(u, mem(8)).unwrap().id);
        }
    }
    let mut clients = Clients::default();
    let mut served: Vec<(u64, u32)> = Vec::new();
    while served.len() < ids.len() {
        let now = until("a lease", || {
            let l = leased(&d, &root);
            (!l.is_empty()).then_some(l)
        })
        .await;
        clients.connect_new(&now);
        // While someone holds the GPU, the other users' requests say why they wait.
        let holder = now[0].uid;
        until("wait reasons naming the MPS holder", || {
            let q: Vec<RequestView> = d
                .list(&root, false)
                .unwrap()
                .into_iter()
                .filter(|v| v.state == RequestState::Queued && v.uid != holder)
                .collect();
            q.iter()
                .all(|v| {
                    v.wait_reason
                        .as_deref()
                        .is_some_and(|w| w.contains("another user's MPS clients"))
                })
                .then_some(())
        })
        .await;
        // Every lease now is one user's; they all end.
        for v in &now {
            assert_eq!(v.uid, holder, "two uids hold MPS clients on GPU 0: {now:?}");
            clients.exit(v.id);
            d.release(
                &users[(v.uid - 1001) as usize],
                v.id,
                ReleaseBody::default(),
            )
            .unwrap();
            served.push((v.id, v.uid));
        }
    }
    // Strict arrival order: the first user waiting behind the holder reserves the GPU, so
    // the holder's own later request queues behind it.
    let order: Vec<u32> = served.iter().map(|(_, u)| *u).collect();
    assert_eq!(order, vec![1001, 1002, 1003, 1001, 1002, 1003]);
    d.stop();
    sched.join();
}

/// A user whose MPS requests keep arriving cannot starve another user's: once the other
/// request reserves the GPU, no new client of the holder is admitted, so the GPU drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_user_reserves_the_mps_gpu_and_gets_it_when_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sched) = start(dir.path(), &[ModeChoice::Mps], 0);
    let root = Identity::in_process(0, "root");
    let alice = Identity::in_process(1001, "alice");
    let bob = Identity::in_process(1002, "bob");
    let a1 = d.submit(&alice, mem(8)).unwrap();
    until("alice's lease", || {
        (d.get(&alice, a1.id).ok()?.state == RequestState::Leased).then_some(())
    })
    .await;
    let b = d.submit(&bob, mem(8)).unwrap();
    let a2 = d.submit(&alice, mem(8)).unwrap();
    let st = until("bob's reservation", || {
        let st = d.status(&root).ok()?;
        (st.gpus[0].reserved_for == Some(b.id)).then_some(st)
    })
    .await;
    assert_eq!(st.gpus[0].shares.len(), 1);
    // alice's second request waits behind bob's hold although the GPU has room, and says so.
    let v = until("alice's wait reason", || {
        let v = d.get(&alice, a2.id).ok()?;
        v.wait_reason.is_some().then_some(v)
    })
    .await;
    assert_eq!(v.state, RequestState::Queued);
    let why = v.wait_reason.unwrap();
    assert!(
        why.contains(&format!("reserved for request {}", b.id)),
        "{why}"
    );
    d.release(&alice, a1.id, ReleaseBody::default()).unwrap();
    until("bob's lease", || {
        (d.get(&bob, b.id).ok()?.state == RequestState::Leased).then_some(())
    })
    .await;
    assert_eq!(d.get(&alice, a2.id).unwrap().state, RequestState::Queued);
    d.stop();
    sched.join();
}

/// Issue 19 item 3: a non-admin's status shows other users' slices as held, without their
/// UUIDs, environments or command lines; the owner and root see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_admin_status_has_no_other_users_slice_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sched) = start(dir.path(), &[ModeChoice::Mig, ModeChoice::Mps], 0);
    let root = Identity::in_process(0, "root");
    let alice = Identity::in_process(1001, "alice");
    let bob = Identity::http(1002);
    let a = d.submit(&alice, mig("1g.10gb")).unwrap();
    // A second request of alice's: bob cannot read it by ID.
    let am = d.submit(&alice, mig("1g.10gb")).unwrap();
    let b = d.submit(&bob, mig("2g.20gb")).unwrap();
    let (a, b) = until("both leases", || {
        let a = d.get(&root, a.id).ok()?;
        let b = d.get(&root, b.id).ok()?;
        (a.state == RequestState::Leased && b.state == RequestState::Leased).then_some((a, b))
    })
    .await;
    let uuid_of = |v: &RequestView| match &v.slice {
        Some(Slice::Mig { uuid, .. }) => uuid.clone(),
        other => panic!("{other:?}"),
    };
    let (alice_uuid, bob_uuid) = (uuid_of(&a), uuid_of(&b));
    // The status is the scheduler's last published view: wait until it has both leases.
    let bob_json = until("bob's slice in the status", || {
        let st = d.status(&root).ok()?;
        let held = |u: &str| {
            st.gpus[0]
                .instances
                .iter()
                .any(|i| i.uuid.as_deref() == Some(u) && i.lease.is_some())
        };
        (held(&alice_uuid) && held(&bob_uuid)).then_some(())?;
        Some(serde_json::to_string(&d.status(&bob).unwrap()).unwrap())
    })
    .await;
    assert!(
        !bob_json.contains(&alice_uuid),
        "bob's status shows alice's {alice_uuid}: {bob_json}"
    );
    assert!(bob_json.contains(&bob_uuid), "bob's own slice: {bob_json}");
    assert!(!bob_json.contains("secret-flag") && !bob_json.contains("CUDA_"));
    // alice's instance is shown held, without an identity.
    let st = d.status(&bob).unwrap();
    let held = st.gpus[0]
        .instances
        .iter()
        .find(|i| i.profile == "1g.10gb" && i.busy)
        .unwrap();
    assert!(
        held.busy && held.uuid.is_none() && held.lease.is_none(),
        "{held:?}"
    );
    // No other user's request, environment or command through the request API either.
    let bob_list = serde_json::to_string(&d.list(&bob, true).unwrap()).unwrap();
    assert!(!bob_list.contains(&alice_uuid) && !bob_list.contains("alice"));
    // The owner and root see it.
    let alice_json = serde_json::to_string(&d.status(&alice).unwrap()).unwrap();
    assert!(alice_json.contains(&alice_uuid) && !alice_json.contains(&bob_uuid));
    let root_json = serde_json::to_string(&d.status(&root).unwrap()).unwrap();
    assert!(root_json.contains(&alice_uuid) && root_json.contains(&bob_uuid));
    assert_eq!(d.get(&bob, am.id).unwrap_err().status, 404);
    d.stop();
    sched.join();
}

#[test]
fn a_config_asking_for_more_than_48_mps_clients_is_refused_with_the_limit() {
    let text = "gpus: [{index: 0, mode: mps, mps: {max_clients: 60}}]\n";
    let e = Config::from_yaml(text, Path::new("config.yaml")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("max_clients") && msg.contains("48"), "{msg}");
    let ok = "gpus: [{index: 0, mode: mps, mps: {max_clients: 48}}]\n";
    assert_eq!(
        Config::from_yaml(ok, Path::new("config.yaml"))
            .unwrap()
            .gpu(0)
            .mps
            .max_clients,
        48
    );
}
