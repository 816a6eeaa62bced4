//! The backend contract, written once against `&mut dyn GpuBackend` and run on every
//! implementation: always on `SimBackend`; on NVML only with `TESSERA_REAL_GPU=1` (read-only
//! checks, plus the MIG-off refusals, which change nothing), and the creating/destroying part
//! only with `TESSERA_REAL_GPU_MUTATE=1` on a MIG-enabled GPU without instances.

use tessera_gpu::nvml::NvmlBackend;
use tessera_gpu::sim::parse_gpu_list;
use tessera_gpu::{
    ComputeMode, GpuBackend, GpuError, GpuInstance, SimBackend, SimConfig, SimState,
};
use tessera_model::Catalog;

/// Read-only checks on every GPU.
fn contract_inventory(b: &mut dyn GpuBackend) {
    let gpus = b.gpus().expect("list GPUs");
    assert!(!gpus.is_empty(), "{}: no GPUs", b.describe());
    for (i, g) in gpus.iter().enumerate() {
        assert_eq!(g.index as usize, i, "GPUs come in index order");
        assert!(g.uuid.starts_with("GPU-"), "{}", g.uuid);
        assert!(!g.name.is_empty());
        // Memory may be unreadable (an unprivileged caller on a MIG GPU), but then it says so.
        let memory_hidden = g.unreadable.iter().any(|u| u.starts_with("memory"));
        assert!(
            g.memory_mib > 0 || memory_hidden,
            "GPU {i} reports no memory and no reason: {g:?}"
        );
        if let Some(mig) = g.mig {
            assert_eq!(b.mig_mode(g.index).unwrap(), mig);
        }
        match g.mig {
            // nvml.h: with MIG on the compute mode belongs to each MIG device.
            Some(m) if m.current => {
                assert_eq!(g.compute_mode, None, "GPU {i}");
                assert!(
                    matches!(b.compute_mode(g.index), Err(GpuError::NotSupported { .. })),
                    "GPU {i}: the parent's compute mode with MIG on must be NotSupported"
                );
            }
            _ => {
                let mode = b.compute_mode(g.index).expect("compute mode readable");
                assert_eq!(g.compute_mode, Some(mode));
            }
        }
        match g.mig {
            Some(m) if m.current && memory_hidden => {
                // Unprivileged: the instance list must be refused, never shown empty.
                assert!(
                    matches!(b.instances(g.index), Err(GpuError::NoPermission { .. })),
                    "GPU {i}: an unprivileged caller must get NoPermission"
                );
            }
            Some(m) if m.current => {
                let table = b.profiles(g.index).expect("profile table");
                assert!(!table.is_empty(), "GPU {i}: MIG on but no profiles");
                for p in &table {
                    assert!(!p.placements.is_empty(), "{} has no placements", p.name);
                    assert!(p.memory_slices > 0 && p.compute_slices > 0, "{p:?}");
                    assert!(p.placements.windows(2).all(|w| w[0] < w[1]));
                }
                let inst = b.instances(g.index).expect("instances");
                check_instances(&inst, &table);
                for gi in inst.iter().filter(|gi| !gi.compute_instances.is_empty()) {
                    b.instance_compute_mode(g.index, gi.gi_id)
                        .expect("the MIG device's compute mode is readable");
                }
            }
            _ => {
                assert!(
                    matches!(b.instances(g.index), Err(GpuError::NotSupported { .. })),
                    "GPU {i}: instances with MIG off must be NotSupported"
                );
            }
        }
    }
    let n = gpus.len() as u32;
    assert!(matches!(b.instances(n), Err(GpuError::NotFound { .. })));
    assert!(matches!(b.mig_mode(n), Err(GpuError::NotFound { .. })));
    b.poll_events(0).expect("poll events");
}

fn check_instances(inst: &[GpuInstance], table: &[tessera_gpu::ProfileInfo]) {
    assert!(
        inst.windows(2).all(|w| w[0].start <= w[1].start),
        "sorted by start"
    );
    let mut used = 0u64;
    for i in inst {
        assert_eq!(used & i.mask(), 0, "{} overlaps another instance", i.spec());
        used |= i.mask();
        let p = table
            .iter()
            .find(|p| p.name == i.profile)
            .unwrap_or_else(|| panic!("{} has a profile the table lacks", i.spec()));
        assert_eq!(p.id, i.profile_id, "{}", i.spec());
        assert_eq!(p.memory_slices, i.size, "{}", i.spec());
        assert!(p.placements.contains(&i.start), "{}", i.spec());
        assert!(i.pids.windows(2).all(|w| w[0] < w[1]), "pids sorted");
        assert_eq!(i.uuid.is_some(), !i.compute_instances.is_empty());
    }
}

/// On a GPU with MIG off nothing can be created, and nothing changes.
fn contract_mig_off(b: &mut dyn GpuBackend, gpu: u32, profile: &str) {
    let before = b.gpus().unwrap();
    let e = b.create_gi(gpu, profile, 0).unwrap_err();
    assert!(matches!(e, GpuError::NotSupported { .. }), "{e}");
    assert!(e.to_string().contains("MIG mode is disabled"), "{e}");
    assert_eq!(b.gpus().unwrap(), before);
}

/// Create and destroy on an idle MIG GPU with no instances; leaves it empty again.
fn contract_create_destroy(b: &mut dyn GpuBackend, gpu: u32) {
    assert!(b.instances(gpu).unwrap().is_empty(), "needs an empty GPU");
    let table = b.profiles(gpu).unwrap();
    let big = table
        .iter()
        .max_by_key(|p| (p.memory_slices, p.compute_slices))
        .unwrap()
        .clone();
    let small = table
        .iter()
        .filter(|p| p.placements.contains(&0))
        .min_by_key(|p| (p.memory_slices, p.compute_slices))
        .unwrap()
        .clone();
    let start = big.placements[0];
    let made = b.create_gi(gpu, &big.name, start).expect("create");
    assert_eq!(
        (made.profile.as_str(), made.start),
        (big.name.as_str(), start)
    );
    assert!(
        made.uuid.as_deref().unwrap_or("").starts_with("MIG-"),
        "{made:?}"
    );
    assert_eq!(made.compute_instances.len(), 1);
    assert!(made.pids.is_empty());
    assert_eq!(b.instances(gpu).unwrap(), vec![made.clone()]);

    // Taken placement, unknown profile, bad start.
    let e = b.create_gi(gpu, &small.name, start).unwrap_err();
    assert!(matches!(e, GpuError::InsufficientResources { .. }), "{e}");
    let e = b.create_gi(gpu, "0g.0gb", 0).unwrap_err();
    assert!(matches!(e, GpuError::NotSupported { .. }), "{e}");
    if let Some(bad) = (0..64u8).find(|s| !small.placements.contains(s)) {
        let e = b.create_gi(gpu, &small.name, bad).unwrap_err();
        assert!(matches!(e, GpuError::InvalidArgument { .. }), "{e}");
    }
    assert_eq!(
        b.instances(gpu).unwrap(),
        vec![made.clone()],
        "failed calls change nothing"
    );

    let idle = made.idle().unwrap();
    b.destroy_gi(&idle).expect("destroy idle");
    assert!(b.instances(gpu).unwrap().is_empty());
    let e = b.destroy_gi(&idle).unwrap_err();
    assert!(matches!(e, GpuError::NotFound { .. }), "{e}");
}

/// A busy instance is refused with `InUse` and survives with its UUID.
fn contract_busy(b: &mut dyn GpuBackend, gpu: u32, make_busy: &mut dyn FnMut(u8) -> u32) {
    let table = b.profiles(gpu).unwrap();
    let p = table
        .iter()
        .find(|p| p.placements.contains(&0))
        .unwrap()
        .clone();
    let made = b.create_gi(gpu, &p.name, 0).unwrap();
    let proof = made.idle().unwrap();
    let pid = make_busy(0);
    let now = b.instances(gpu).unwrap();
    assert_eq!(now[0].pids, vec![pid]);
    assert!(now[0].idle().is_none());
    let e = b.destroy_gi(&proof).unwrap_err();
    assert!(
        matches!(&e, GpuError::InUse { pids, .. } if pids == &vec![pid]),
        "{e}"
    );
    assert_eq!(b.instances(gpu).unwrap()[0].uuid, made.uuid);
}

/// With MIG on, compute mode is set per MIG device: one instance's change leaves the other's
/// alone, and the parent refuses. Creates two instances and destroys them again.
fn contract_instance_compute_mode(b: &mut dyn GpuBackend, gpu: u32, profile: &str) {
    let table = b.profiles(gpu).unwrap();
    let p = table.iter().find(|p| p.name == profile).unwrap().clone();
    let x = b.create_gi(gpu, profile, p.placements[0]).unwrap();
    let y = b.create_gi(gpu, profile, p.placements[1]).unwrap();
    let before = b.instance_compute_mode(gpu, y.gi_id).unwrap();
    let target = if before == ComputeMode::Prohibited {
        ComputeMode::ExclusiveProcess
    } else {
        ComputeMode::Prohibited
    };
    b.set_instance_compute_mode(gpu, x.gi_id, target).unwrap();
    assert_eq!(b.instance_compute_mode(gpu, x.gi_id).unwrap(), target);
    assert_eq!(b.instance_compute_mode(gpu, y.gi_id).unwrap(), before);
    assert!(matches!(
        b.set_compute_mode(gpu, ComputeMode::Default),
        Err(GpuError::NotSupported { .. })
    ));
    assert!(matches!(
        b.instance_compute_mode(gpu, 999),
        Err(GpuError::NotFound { .. })
    ));
    b.set_instance_compute_mode(gpu, x.gi_id, before).unwrap();
    b.destroy_gi(&x.idle().unwrap()).unwrap();
    b.destroy_gi(&y.idle().unwrap()).unwrap();
}

fn sim(mig: bool) -> SimBackend {
    let c = Catalog::builtin().clone();
    let st = SimState::new(
        &c,
        &parse_gpu_list("h100-80gb:1,a100-40gb:1,a30:1,rtx-pro-6000:1").unwrap(),
        3,
        mig,
    )
    .unwrap();
    SimBackend::new(st, c, SimConfig::default()).unwrap()
}

#[test]
fn sim_backend_meets_the_contract() {
    let mut b = sim(true);
    contract_inventory(&mut b);
    for gpu in 0..4 {
        contract_create_destroy(&mut b, gpu);
    }
}

#[test]
fn sim_compute_mode_is_per_mig_device() {
    let mut b = sim(true);
    contract_instance_compute_mode(&mut b, 0, "1g.10gb");
    // MIG off: there are no MIG devices.
    let mut off = sim(false);
    assert!(matches!(
        off.instance_compute_mode(0, 1),
        Err(GpuError::NotSupported { .. })
    ));
}

#[test]
fn sim_unprivileged_callers_get_what_can_be_read() {
    let mut b = sim(true);
    b.create_gi(0, "3g.40gb", 0).unwrap();
    b.set_unprivileged(true);
    // The inventory still works; memory is reported unreadable, with the reason.
    contract_inventory(&mut b);
    let g = &b.gpus().unwrap()[0];
    assert_eq!(g.memory_mib, 0);
    assert!(
        g.unreadable[0].contains("NO_PERMISSION"),
        "{:?}",
        g.unreadable
    );
    assert!(matches!(b.profiles(0), Err(GpuError::NoPermission { .. })));
    // With MIG off everything is readable, but changes still need root.
    let mut off = sim(false);
    off.set_unprivileged(true);
    contract_inventory(&mut off);
    assert!(off.gpus().unwrap().iter().all(|g| g.unreadable.is_empty()));
    assert!(matches!(
        off.set_compute_mode(0, ComputeMode::ExclusiveProcess),
        Err(GpuError::NoPermission { .. })
    ));
}

#[test]
fn sim_in_use_with_no_process_listed_names_the_likely_holders() {
    let mut b = sim(true);
    let p = b.create_gi(0, "1g.10gb", 0).unwrap();
    b.set_held_unlisted(0, 0, true).unwrap();
    // It looks idle (no compute process), as on NVML, yet cannot be destroyed.
    let seen = b.instances(0).unwrap();
    let idle = seen[0].idle().expect("no process listed");
    let e = b.destroy_gi(&idle).unwrap_err();
    assert!(
        matches!(&e, GpuError::InUse { pids, .. } if pids.is_empty()),
        "{e}"
    );
    assert!(e.to_string().contains("nvidia-persistenced"), "{e}");
    assert_eq!(b.instances(0).unwrap().len(), 1, "nothing destroyed");
    b.set_held_unlisted(0, 0, false).unwrap();
    b.destroy_gi(&p.idle().unwrap()).unwrap();
}

#[test]
fn sim_busy_instances_are_refused() {
    let mut b = sim(true);
    // The sim-specific hook: attach a process through the SimBackend itself.
    let p = b.create_gi(1, "3g.20gb", 0).unwrap();
    let pid = b.set_busy(1, 0, Some(31337)).unwrap();
    let e = b.destroy_gi(&p.idle().unwrap()).unwrap_err();
    assert!(
        matches!(&e, GpuError::InUse { pids, .. } if pids == &vec![pid]),
        "{e}"
    );
    b.set_idle(1, 0).unwrap();
    b.destroy_gi(&p.idle().unwrap()).unwrap();
}

#[test]
fn sim_backend_meets_the_mig_off_contract() {
    let mut b = sim(false);
    contract_inventory(&mut b);
    contract_mig_off(&mut b, 0, "7g.80gb");
}

#[test]
fn nvml_backend_meets_the_contract_when_a_gpu_is_lent() {
    if std::env::var("TESSERA_REAL_GPU").as_deref() != Ok("1") {
        println!("skipped: no GPU (set TESSERA_REAL_GPU=1 on a machine with one)");
        return;
    }
    let mut b = NvmlBackend::open(Catalog::builtin().clone()).expect("open NVML");
    contract_inventory(&mut b);
    let gpus = b.gpus().unwrap();
    for g in &gpus {
        if g.mig.is_some_and(|m| !m.current) {
            contract_mig_off(&mut b, g.index, "1g.10gb");
        }
    }
    if std::env::var("TESSERA_REAL_GPU_MUTATE").as_deref() == Ok("1") {
        let target = gpus.iter().find(|g| {
            g.mig.is_some_and(|m| m.current) && b.instances(g.index).is_ok_and(|i| i.is_empty())
        });
        match target {
            Some(g) => {
                contract_create_destroy(&mut b, g.index);
                let small = b.profiles(g.index).unwrap()[0].name.clone();
                contract_instance_compute_mode(&mut b, g.index, &small);
            }
            None => println!("skipped mutating part: no MIG-enabled GPU without instances"),
        }
    }
}

// The busy contract on the sim needs the sim's own hook; wire it through a wrapper so the
// generic function stays backend-agnostic.
#[test]
fn busy_contract_runs_generically_on_the_sim() {
    let c = Catalog::builtin().clone();
    let st = SimState::new(&c, &[("h100-80gb".into(), 1)], 5, true).unwrap();
    let shared = std::sync::Arc::new(std::sync::Mutex::new(
        SimBackend::new(st, c, SimConfig::default()).unwrap(),
    ));
    let mut proxy = Proxy(shared.clone());
    let hook = shared.clone();
    contract_busy(&mut proxy, 0, &mut |start| {
        hook.lock().unwrap().set_busy(0, start, Some(999)).unwrap()
    });
}

/// Forwards the trait to a shared `SimBackend` so a test hook can reach the sim too.
struct Proxy(std::sync::Arc<std::sync::Mutex<SimBackend>>);

impl GpuBackend for Proxy {
    fn describe(&self) -> String {
        self.0.lock().unwrap().describe()
    }
    fn gpus(&mut self) -> Result<Vec<tessera_gpu::GpuInfo>, GpuError> {
        self.0.lock().unwrap().gpus()
    }
    fn profiles(&mut self, gpu: u32) -> Result<Vec<tessera_gpu::ProfileInfo>, GpuError> {
        self.0.lock().unwrap().profiles(gpu)
    }
    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError> {
        self.0.lock().unwrap().instances(gpu)
    }
    fn create_gi(&mut self, gpu: u32, profile: &str, start: u8) -> Result<GpuInstance, GpuError> {
        self.0.lock().unwrap().create_gi(gpu, profile, start)
    }
    fn create_default_ci(&mut self, gpu: u32, gi_id: u32) -> Result<GpuInstance, GpuError> {
        self.0.lock().unwrap().create_default_ci(gpu, gi_id)
    }
    fn destroy_gi(&mut self, instance: &tessera_gpu::IdleInstance) -> Result<(), GpuError> {
        self.0.lock().unwrap().destroy_gi(instance)
    }
    fn mig_mode(&mut self, gpu: u32) -> Result<tessera_gpu::MigMode, GpuError> {
        self.0.lock().unwrap().mig_mode(gpu)
    }
    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<tessera_gpu::MigMode, GpuError> {
        self.0.lock().unwrap().set_mig_mode(gpu, enabled)
    }
    fn compute_mode(&mut self, gpu: u32) -> Result<tessera_gpu::ComputeMode, GpuError> {
        self.0.lock().unwrap().compute_mode(gpu)
    }
    fn set_compute_mode(
        &mut self,
        gpu: u32,
        mode: tessera_gpu::ComputeMode,
    ) -> Result<(), GpuError> {
        self.0.lock().unwrap().set_compute_mode(gpu, mode)
    }
    fn instance_compute_mode(&mut self, gpu: u32, gi_id: u32) -> Result<ComputeMode, GpuError> {
        self.0.lock().unwrap().instance_compute_mode(gpu, gi_id)
    }
    fn set_instance_compute_mode(
        &mut self,
        gpu: u32,
        gi_id: u32,
        mode: ComputeMode,
    ) -> Result<(), GpuError> {
        self.0
            .lock()
            .unwrap()
            .set_instance_compute_mode(gpu, gi_id, mode)
    }
    fn poll_events(&mut self, timeout_ms: u32) -> Result<Vec<tessera_gpu::GpuEvent>, GpuError> {
        self.0.lock().unwrap().poll_events(timeout_ms)
    }
}
