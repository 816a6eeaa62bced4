//! Property tests of the vGPU agent on the twin, like the MIG agent's: random hosts (VFs on
//! or off, GPU instances, vGPUs, some held by running VMs), random reachable desired sets,
//! random injected faults and crashes at random steps. Re-run like a level-triggered
//! controller after each crash, the agent must converge (or refuse, exactly when a VM's vGPU
//! is not wanted, leaving the host unchanged); it never tries to destroy a vGPU a VM holds;
//! a second apply does nothing. A deterministic test crashes at every step of one apply.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tessera_agent::RecordingSleeper;
use tessera_gpu::FaultTiming;
use tessera_vgpu::agent::{
    Agent, AgentError, ApplyResult, CrashWhen, DesiredGpu, DesiredVgpu, Refusal, VOp,
};
use tessera_vgpu::host::{SysfsHost, Target, VgpuHost};
use tessera_vgpu::journal::{dangling, Journal, MemJournal};
use tessera_vgpu::twin::{Twin, TwinFaults, TwinGpuSpec};
use tessera_vgpu::VgpuCatalog;

const SPECS: [&str; 5] = [
    "a30-24gb/mdev/mig",
    "a30-24gb/mdev",
    "l40s-48gb",
    "h100-80gb/vfio/mig",
    "a100-40gb/mdev/mig",
];

fn cat() -> &'static VgpuCatalog {
    VgpuCatalog::builtin()
}

fn new_twin(spec: &str) -> Twin {
    Twin::new(&[TwinGpuSpec::parse(spec, cat()).unwrap()], cat(), 11).unwrap()
}

fn host(t: Twin) -> SysfsHost<Twin> {
    SysfsHost::new(t, cat().clone())
}

/// A random operation that keeps the twin's rules (the twin refuses the rest).
fn random_op(h: &mut SysfsHost<Twin>, op: u8, arg: u8) {
    let g = h.gpus().unwrap().remove(0);
    match op % 4 {
        0 => {
            if g.vfs.is_empty() {
                let _ = h.set_vfs(&g.bdf, g.total_vfs);
            }
        }
        1 => {
            if let Some((mig, idx)) = h.mig(&g.bdf) {
                if mig.mig_mode(idx).map(|m| m.current).unwrap_or(false) {
                    let profiles = mig.profiles(idx).unwrap();
                    let p = &profiles[arg as usize % profiles.len()];
                    if let Some(&start) = p
                        .placements
                        .get((arg / 16) as usize % p.placements.len().max(1))
                    {
                        let _ = mig.create_gi(idx, &p.name, start);
                    }
                }
            }
        }
        _ => {
            let offers = h.offers(&g).unwrap();
            if !offers.is_empty() {
                let o = &offers[arg as usize % offers.len()];
                let _ = h.create(
                    &g,
                    &o.type_name,
                    &Target {
                        vf: Some(o.vf.clone()),
                        uuid: None,
                    },
                );
            }
        }
    }
}

fn types_of(h: &mut SysfsHost<Twin>) -> BTreeMap<String, u32> {
    let g = h.gpus().unwrap().remove(0);
    let mut m = BTreeMap::new();
    for v in h.vgpus(&g).unwrap() {
        *m.entry(v.type_name.unwrap()).or_default() += 1;
    }
    m
}

#[derive(Debug, Clone)]
struct Case {
    spec: usize,
    init: Vec<(u8, u8)>,
    open: Vec<bool>,
    grow: Vec<(u8, u8)>,
    drop_open: bool,
    explicit: Vec<bool>,
    faults: f64,
    fault_seed: u64,
    timing: u8,
    crashes: Vec<(u32, bool)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..SPECS.len(),
        prop::collection::vec((0u8..4, any::<u8>()), 0..12),
        prop::collection::vec(prop::bool::weighted(0.3), 8),
        prop::collection::vec((0u8..4, any::<u8>()), 0..10),
        prop::bool::weighted(0.2),
        prop::collection::vec(prop::bool::weighted(0.3), 8),
        prop_oneof![Just(0.0), 0.0..0.3f64],
        any::<u64>(),
        0u8..3,
        prop::collection::vec((1u32..8, any::<bool>()), 0..4),
    )
        .prop_map(
            |(spec, init, open, grow, drop_open, explicit, faults, fault_seed, timing, crashes)| {
                Case {
                    spec,
                    init,
                    open,
                    grow,
                    drop_open,
                    explicit,
                    faults,
                    fault_seed,
                    timing,
                    crashes,
                }
            },
        )
}

type Names = BTreeMap<String, BTreeMap<u32, String>>;

/// The start host and a desired set reachable from it without touching the VMs' vGPUs.
fn setup(c: &Case) -> (Twin, Names, DesiredGpu, bool) {
    let mut h = host(new_twin(SPECS[c.spec]));
    for &(op, arg) in &c.init {
        random_op(&mut h, op, arg);
    }
    let g = h.gpus().unwrap().remove(0);
    let vgpus = h.vgpus(&g).unwrap();
    for (v, open) in vgpus.iter().zip(&c.open) {
        if *open {
            let key = match &v.handle {
                tessera_vgpu::host::Handle::Mdev { uuid, .. } => uuid.clone(),
                tessera_vgpu::host::Handle::Vf { bdf } => bdf.clone(),
            };
            h.fs_mut().set_open(&key, true).unwrap();
        }
    }
    let names = h.names();
    let start = h.into_inner();

    // Reachable target: on a copy, drop what no VM holds, then grow at random.
    let mut f = host(start.fork()).with_names(names.clone());
    let g = f.gpus().unwrap().remove(0);
    for v in f.vgpus(&g).unwrap() {
        if !v.open {
            f.destroy(&v).unwrap();
        }
    }
    if g.vfs.is_empty() {
        f.set_vfs(&g.bdf, g.total_vfs).unwrap();
    }
    if let Some((mig, idx)) = f.mig(&g.bdf) {
        if let Ok(inst) = mig.instances(idx) {
            for i in inst {
                if let Some(idle) = i.idle() {
                    mig.destroy_gi(&idle).unwrap();
                }
            }
        }
    }
    for &(op, arg) in &c.grow {
        random_op(&mut f, op.max(1), arg);
    }
    let g = f.gpus().unwrap().remove(0);
    let mut vgpus = Vec::new();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for (i, v) in f.vgpus(&g).unwrap().into_iter().enumerate() {
        let t = v.type_name.clone().unwrap();
        if c.explicit.get(i).copied().unwrap_or(false) && !v.open {
            vgpus.push(DesiredVgpu {
                type_name: t,
                count: None,
                vf: Some(v.handle.vf().to_string()),
                uuid: None,
            });
        } else {
            *counts.entry(t).or_default() += 1;
        }
    }
    let open_types: Vec<String> = f
        .vgpus(&g)
        .unwrap()
        .into_iter()
        .filter(|v| v.open)
        .filter_map(|v| v.type_name)
        .collect();
    if c.drop_open {
        if let Some(t) = open_types.first() {
            *counts.get_mut(t).unwrap() -= 1;
        }
    }
    // Refused exactly when some type has more VM-held vGPUs than the desired count.
    let refused = open_types.iter().any(|t| {
        open_types.iter().filter(|x| *x == t).count() as u32 > counts.get(t).copied().unwrap_or(0)
    });
    for (t, n) in counts {
        if n > 0 {
            vgpus.push(DesiredVgpu {
                type_name: t,
                count: Some(n),
                vf: None,
                uuid: None,
            });
        }
    }
    (
        start,
        names,
        DesiredGpu {
            gpu: g.bdf,
            vfs: None,
            mixed_size: false,
            vgpus,
        },
        refused,
    )
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    // The type names a host learns are kept across runs (the CLI keeps them beside the
    // journal): a vendor-VFIO VF does not name its own type once the lists have shrunk.
    let (start, mut names, desired, expect_refused) = setup(c);
    let start_state = (start.state().clone(), start.mig_state().clone());
    let mut twin = start;
    let mut journal = MemJournal::new();
    let mut open_destroys = 0;
    let mut outcome = None;
    for run in 0..60usize {
        twin.set_faults(TwinFaults {
            rate: if run < 20 { c.faults } else { 0.0 },
            seed: c.fault_seed.wrapping_add(run as u64),
            timing: match c.timing {
                0 => FaultTiming::Before,
                1 => FaultTiming::After,
                _ => FaultTiming::Mixed,
            },
        });
        let crash = c.crashes.get(run).map(|&(n, after)| {
            (
                n,
                if after {
                    CrashWhen::AfterCall
                } else {
                    CrashWhen::AfterIntent
                },
            )
        });
        let mut h = host(twin).with_names(names.clone());
        let mut sl = RecordingSleeper::default();
        let r = Agent::new(&mut h, &mut journal, cat(), &mut sl)
            .crash_at(crash)
            .apply_gpu(&desired);
        names = h.names();
        twin = h.into_inner();
        open_destroys += twin.stats().open_destroy_attempts;
        match r {
            Ok(rep) => {
                outcome = Some(rep);
                break;
            }
            Err(AgentError::Crash { .. }) | Err(AgentError::GaveUp { .. }) => continue,
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
        }
    }
    prop_assert_eq!(
        open_destroys,
        0,
        "the agent tried to destroy a vGPU a VM holds"
    );
    let rep = outcome.ok_or_else(|| TestCaseError::fail("no convergence in 60 runs"))?;
    if expect_refused {
        prop_assert!(
            matches!(
                &rep.result,
                ApplyResult::Refused {
                    refusal: Refusal::Busy { .. }
                }
            ),
            "expected a refusal, got {:?}",
            rep.result
        );
        prop_assert_eq!(
            &(twin.state().clone(), twin.mig_state().clone()),
            &start_state,
            "a refused GPU is unchanged"
        );
        return Ok(());
    }
    prop_assert_eq!(&rep.result, &ApplyResult::Converged);
    twin.set_faults(TwinFaults::default());
    let mut h = host(twin).with_names(names);
    let mut want: BTreeMap<String, u32> = BTreeMap::new();
    for v in &desired.vgpus {
        *want.entry(v.type_name.clone()).or_default() += v.count.unwrap_or(1);
    }
    prop_assert_eq!(types_of(&mut h), want);
    let g = h.gpus().unwrap().remove(0);
    let now = h.vgpus(&g).unwrap();
    for v in desired.vgpus.iter().filter(|v| v.vf.is_some()) {
        prop_assert!(
            now.iter().any(|x| Some(x.handle.vf()) == v.vf.as_deref()
                && x.type_name.as_deref() == Some(v.type_name.as_str())),
            "explicit {:?} honoured",
            v
        );
    }
    // Every vGPU a VM held is still there, still open.
    for (gpu, vfs) in start_state.0.gpus.iter().zip(&h.fs().state().gpus) {
        for (a, b) in gpu.vfs.iter().zip(&vfs.vfs) {
            if a.vgpu.as_ref().is_some_and(|v| v.open) {
                prop_assert_eq!(&a.vgpu, &b.vgpu);
            }
        }
    }
    prop_assert!(dangling(&journal).is_empty(), "every intent closed");
    // Idempotent: a second apply writes nothing.
    let n = journal.records().len();
    let mutations = h.fs().stats().mutations;
    let mut sl = RecordingSleeper::default();
    let again = Agent::new(&mut h, &mut journal, cat(), &mut sl)
        .apply_gpu(&desired)
        .unwrap();
    prop_assert!(again.applied.is_empty());
    prop_assert_eq!(journal.records().len(), n);
    prop_assert_eq!(h.fs().stats().mutations, mutations);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn the_vgpu_agent_converges_or_refuses_safely(c in case()) {
        run_case(&c)?;
    }
}

fn mig_desired(bdf: &str) -> DesiredGpu {
    DesiredGpu {
        gpu: bdf.into(),
        vfs: None,
        mixed_size: false,
        vgpus: vec![
            DesiredVgpu {
                type_name: "A30-1-6C".into(),
                count: Some(2),
                vf: None,
                uuid: None,
            },
            DesiredVgpu {
                type_name: "A30-2-12C".into(),
                count: None,
                vf: Some("0000:41:00.7".into()),
                uuid: None,
            },
        ],
    }
}

#[test]
fn mig_backed_vgpus_get_their_gpu_instances_first() {
    let mut h = host(new_twin("a30-24gb/mdev/mig"));
    let bdf = h.gpus().unwrap()[0].bdf.clone();
    let mut j = MemJournal::new();
    let mut sl = RecordingSleeper::default();
    let rep = Agent::new(&mut h, &mut j, cat(), &mut sl)
        .apply_gpu(&mig_desired(&bdf))
        .unwrap();
    assert_eq!(rep.result, ApplyResult::Converged);
    let kinds: Vec<&str> = rep
        .applied
        .iter()
        .map(|o| match o {
            VOp::SetVfs { .. } => "vfs",
            VOp::CreateGi { .. } => "gi",
            VOp::CreateVgpu { .. } => "vgpu",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["vfs", "gi", "gi", "gi", "vgpu", "vgpu", "vgpu"],
        "{:?}",
        rep.applied
    );
    let (mig, idx) = h.mig(&bdf).unwrap();
    let gis: Vec<String> = mig
        .instances(idx)
        .unwrap()
        .iter()
        .map(|i| i.spec())
        .collect();
    assert_eq!(gis.len(), 3, "{gis:?}");
    assert!(
        mig.instances(idx).unwrap().iter().all(|i| i.is_busy()),
        "each held by its vGPU"
    );
    assert_eq!(
        types_of(&mut h),
        BTreeMap::from([("A30-1-6C".into(), 2), ("A30-2-12C".into(), 1)])
    );
}

#[test]
fn a_crash_at_every_step_rolls_forward_to_the_desired_vgpus() {
    let bdf = host(new_twin("a30-24gb/mdev/mig")).gpus().unwrap()[0]
        .bdf
        .clone();
    let clean = {
        let mut h = host(new_twin("a30-24gb/mdev/mig"));
        let mut j = MemJournal::new();
        let mut sl = RecordingSleeper::default();
        let rep = Agent::new(&mut h, &mut j, cat(), &mut sl)
            .apply_gpu(&mig_desired(&bdf))
            .unwrap();
        (rep.applied.len() as u32, types_of(&mut h))
    };
    for k in 1..=clean.0 {
        for when in [CrashWhen::AfterIntent, CrashWhen::AfterCall] {
            let mut h = host(new_twin("a30-24gb/mdev/mig"));
            let mut j = MemJournal::new();
            let mut sl = RecordingSleeper::default();
            let r = Agent::new(&mut h, &mut j, cat(), &mut sl)
                .crash_at(Some((k, when)))
                .apply_gpu(&mig_desired(&bdf));
            assert!(
                matches!(r, Err(AgentError::Crash { .. })),
                "step {k} {when:?}: {r:?}"
            );
            assert_eq!(dangling(&j).len(), 1);
            let mut sl = RecordingSleeper::default();
            let rep = Agent::new(&mut h, &mut j, cat(), &mut sl)
                .apply_gpu(&mig_desired(&bdf))
                .unwrap();
            assert_eq!(rep.result, ApplyResult::Converged, "step {k} {when:?}");
            assert_eq!(rep.recovered.len(), 1);
            assert_eq!(
                rep.recovered[0].1,
                when == CrashWhen::AfterCall,
                "step {k} {when:?}: the cut-short op took effect iff the call ran"
            );
            assert!(dangling(&j).is_empty());
            assert_eq!(types_of(&mut h), clean.1, "step {k} {when:?}");
        }
    }
}

#[test]
fn a_vm_held_vgpu_blocks_the_whole_gpu_and_nothing_is_written() {
    let mut h = host(new_twin("l40s-48gb"));
    let g = h.gpus().unwrap().remove(0);
    h.set_vfs(&g.bdf, 4).unwrap();
    let g = h.gpus().unwrap().remove(0);
    let v = h.create(&g, "L40S-12C", &Target::default()).unwrap();
    h.create(&g, "L40S-12C", &Target::default()).unwrap();
    h.fs_mut().set_open(v.handle.vf(), true).unwrap();
    let before = h.fs().state().clone();
    let desired = DesiredGpu {
        gpu: g.bdf.clone(),
        vfs: None,
        mixed_size: false,
        vgpus: vec![DesiredVgpu {
            type_name: "L40S-24C".into(),
            count: Some(2),
            vf: None,
            uuid: None,
        }],
    };
    let mut j = MemJournal::new();
    let mut sl = RecordingSleeper::default();
    let rep = Agent::new(&mut h, &mut j, cat(), &mut sl)
        .apply_gpu(&desired)
        .unwrap();
    let ApplyResult::Refused { refusal } = &rep.result else {
        panic!("{rep:?}")
    };
    assert!(matches!(refusal, Refusal::Busy { .. }), "{refusal}");
    assert!(refusal.to_string().contains("never destroyed"), "{refusal}");
    assert_eq!(h.fs().state(), &before);
    assert!(j.records().is_empty(), "nothing journaled, nothing written");
    // Same size rule on the desired set itself, in words.
    let desired = DesiredGpu {
        vgpus: vec![
            DesiredVgpu {
                type_name: "L40S-12C".into(),
                count: Some(2),
                vf: None,
                uuid: None,
            },
            DesiredVgpu {
                type_name: "L40S-24C".into(),
                count: Some(1),
                vf: None,
                uuid: None,
            },
        ],
        ..desired
    };
    let rep = Agent::new(&mut h, &mut j, cat(), &mut sl)
        .apply_gpu(&desired)
        .unwrap();
    let ApplyResult::Refused { refusal } = &rep.result else {
        panic!("{rep:?}")
    };
    assert!(
        refusal
            .to_string()
            .contains("must have the same frame buffer size"),
        "{refusal}"
    );
}

#[test]
fn an_explicit_mdev_uuid_is_kept_and_a_wrong_type_at_it_is_replaced() {
    let mut h = host(new_twin("a30-24gb/mdev"));
    let bdf = h.gpus().unwrap()[0].bdf.clone();
    let uuid = "00000000-0000-0000-0000-000000000101";
    let want = |t: &str| DesiredGpu {
        gpu: bdf.clone(),
        vfs: None,
        mixed_size: false,
        vgpus: vec![DesiredVgpu {
            type_name: t.into(),
            count: None,
            vf: None,
            uuid: Some(uuid.into()),
        }],
    };
    let mut j = MemJournal::new();
    let mut sl = RecordingSleeper::default();
    let rep = Agent::new(&mut h, &mut j, cat(), &mut sl)
        .apply_gpu(&want("A30-6C"))
        .unwrap();
    assert_eq!(rep.result, ApplyResult::Converged);
    let g = h.gpus().unwrap().remove(0);
    let v = h.vgpus(&g).unwrap();
    assert_eq!(v.len(), 1);
    assert!(matches!(&v[0].handle, tessera_vgpu::host::Handle::Mdev { uuid: u, .. } if u == uuid));
    // The same UUID with another type: the old one goes, the new one takes the UUID.
    let rep = Agent::new(&mut h, &mut j, cat(), &mut sl)
        .apply_gpu(&want("A30-12C"))
        .unwrap();
    assert_eq!(rep.result, ApplyResult::Converged);
    assert!(
        matches!(rep.applied[0], VOp::DestroyVgpu { .. }),
        "{:?}",
        rep.applied
    );
    let v = h.vgpus(&g).unwrap();
    assert_eq!((v.len(), v[0].type_name.as_deref()), (1, Some("A30-12C")));
    assert!(matches!(&v[0].handle, tessera_vgpu::host::Handle::Mdev { uuid: u, .. } if u == uuid));
}

#[test]
fn the_plan_is_the_same_for_the_same_input_byte_for_byte() {
    let mut h = host(new_twin("a30-24gb/mdev/mig"));
    let bdf = h.gpus().unwrap()[0].bdf.clone();
    let obs = tessera_vgpu::agent::observe(&mut h, &bdf).unwrap();
    let board = cat().board("a30-24gb").unwrap();
    let model = tessera_model::Catalog::builtin().get("a30-24gb");
    let a = tessera_vgpu::agent::plan(board, model, &mig_desired(&bdf), &obs).unwrap();
    let b = tessera_vgpu::agent::plan(board, model, &mig_desired(&bdf), &obs.clone()).unwrap();
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    assert!(!a.is_empty());
}

#[test]
fn an_mdev_uuid_on_a_vendor_vfio_gpu_is_refused_in_words() {
    let mut h = host(new_twin("l40s-48gb"));
    let bdf = h.gpus().unwrap()[0].bdf.clone();
    h.set_vfs(&bdf, 2).unwrap();
    let d = DesiredGpu {
        gpu: bdf,
        vfs: None,
        mixed_size: false,
        vgpus: vec![DesiredVgpu {
            type_name: "L40S-24C".into(),
            count: None,
            vf: None,
            uuid: Some("00000000-0000-0000-0000-000000000101".into()),
        }],
    };
    let mut j = MemJournal::new();
    let mut sl = RecordingSleeper::default();
    let rep = Agent::new(&mut h, &mut j, cat(), &mut sl)
        .apply_gpu(&d)
        .unwrap();
    let ApplyResult::Refused { refusal } = rep.result else {
        panic!()
    };
    assert!(
        refusal.to_string().contains("name its VF instead"),
        "{refusal}"
    );
}
