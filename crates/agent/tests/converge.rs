//! Property tests of the agent on the simulated GPU: random current layouts (some instances
//! busy, some left without compute instance by an earlier crash), random desired layouts,
//! random faults and crashes at random steps. The agent, re-run like a level-triggered
//! controller after each crash, must converge or refuse; it must never try to destroy a busy
//! instance; a refused GPU must be unchanged; a converged one must keep the UUIDs of every
//! instance it kept; a second apply must do nothing.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use proptest::prelude::*;
use tessera_agent::{
    dangling, plan_ops, AgentError, ApplyResult, Journal, MemJournal, ObservedGpu, Op, Reconciler,
    RecordingSleeper, Refusal,
};
use tessera_gpu::{
    CrashPlan, FaultTiming, GpuBackend, GpuInstance, SimBackend, SimConfig, SimState,
};
use tessera_model::{Catalog, GpuModel, Layout, LayoutState, Placed};

const MODELS: [&str; 3] = ["a30-24gb", "a100-40gb", "h100-80gb"];

fn layouts(i: usize) -> &'static [Layout] {
    static CACHE: OnceLock<Vec<Vec<Layout>>> = OnceLock::new();
    &CACHE.get_or_init(|| {
        MODELS
            .iter()
            .map(|k| Catalog::builtin().lookup(k).unwrap().enumerate_layouts())
            .collect()
    })[i]
}

fn model(i: usize) -> &'static GpuModel {
    Catalog::builtin().lookup(MODELS[i]).unwrap()
}

/// A machine with one GPU of model `m` holding `initial`, with the marked instances busy and
/// the marked idle ones stripped of their compute instance.
fn machine(m: usize, initial: &Layout, busy: &[bool], no_ci: &[bool]) -> SimState {
    let c = Catalog::builtin().clone();
    let st = SimState::new(&c, &[(MODELS[m].to_string(), 1)], 77, true).unwrap();
    let mut b = SimBackend::new(st, c, SimConfig::default()).unwrap();
    let md = model(m);
    for p in initial.items() {
        b.create_gi(0, &md.profile(p.profile).name, p.start)
            .unwrap();
    }
    for (i, p) in initial.items().iter().enumerate() {
        if busy.get(i).copied().unwrap_or(false) {
            b.set_busy(0, p.start, None).unwrap();
        }
    }
    let mut st = b.state().clone();
    for (i, gi) in st.gpus[0].instances.iter_mut().enumerate() {
        if gi.pids.is_empty() && no_ci.get(i).copied().unwrap_or(false) {
            gi.cis.clear();
        }
    }
    st
}

fn specs(md: &GpuModel, l: &Layout) -> Vec<(String, u8)> {
    l.items()
        .iter()
        .map(|p| (md.profile(p.profile).name.clone(), p.start))
        .collect()
}

#[derive(Debug, Clone)]
struct Case {
    m: usize,
    initial: usize,
    desired: usize,
    busy: Vec<bool>,
    no_ci: Vec<bool>,
    faults: f64,
    fault_seed: u64,
    timing: u8,
    /// Per run: 0 = none, 1 = sim crash at the n-th crash point, 2 = crash after n ops.
    crashes: Vec<(u8, u32)>,
}

fn case() -> impl Strategy<Value = Case> {
    (0..MODELS.len())
        .prop_flat_map(|m| {
            let n = layouts(m).len();
            (
                Just(m),
                0..n,
                0..n,
                prop::collection::vec(prop::bool::weighted(0.3), 8),
                prop::collection::vec(prop::bool::weighted(0.2), 8),
                prop_oneof![Just(0.0), 0.0..0.35f64],
                any::<u64>(),
                0u8..3,
                prop::collection::vec((0u8..3, 1u32..8), 0..4),
            )
        })
        .prop_map(
            |(m, initial, desired, busy, no_ci, faults, fault_seed, timing, crashes)| Case {
                m,
                initial,
                desired,
                busy,
                no_ci,
                faults,
                fault_seed,
                timing,
                crashes,
            },
        )
}

fn key(i: &GpuInstance) -> (String, u8) {
    (i.profile.clone(), i.start)
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    let md = model(c.m);
    let initial = &layouts(c.m)[c.initial];
    let desired = &layouts(c.m)[c.desired];
    let start_state = machine(c.m, initial, &c.busy, &c.no_ci);
    let catalog = Catalog::builtin();
    let observe = |st: &SimState| {
        let mut b = SimBackend::new(st.clone(), catalog.clone(), SimConfig::default()).unwrap();
        b.instances(0).unwrap()
    };
    let before = observe(&start_state);
    let desired_keys: BTreeSet<(String, u8)> = specs(md, desired).into_iter().collect();
    let expect_refused = before
        .iter()
        .any(|i| i.is_busy() && !desired_keys.contains(&key(i)));

    let mut state = start_state.clone();
    let mut journal = MemJournal::new();
    let mut busy_destroys = 0;
    let mut outcome = None;
    for run in 0..60usize {
        let crash = c.crashes.get(run).copied().unwrap_or((0, 0));
        let cfg = SimConfig {
            faults: if run < 20 { c.faults } else { 0.0 },
            fault_seed: c.fault_seed.wrapping_add(run as u64),
            fault_timing: match c.timing {
                0 => FaultTiming::Before,
                1 => FaultTiming::After,
                _ => FaultTiming::Mixed,
            },
            crash: (crash.0 == 1).then_some(CrashPlan {
                point: None,
                nth: crash.1,
            }),
        };
        let mut b = SimBackend::new(state.clone(), catalog.clone(), cfg).unwrap();
        let mut sl = RecordingSleeper::default();
        let r = Reconciler::new(&mut b, &mut journal, catalog, &mut sl)
            .crash_after((crash.0 == 2).then_some(crash.1))
            .apply_gpu(0, desired.items());
        busy_destroys += b.stats().busy_destroy_attempts;
        state = b.state().clone();
        match r {
            Ok(report) => {
                outcome = Some(report);
                break;
            }
            Err(e) if e.is_crash() => continue,
            Err(AgentError::GaveUp { .. }) | Err(AgentError::NoConvergence { .. }) => continue,
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
        }
    }
    prop_assert_eq!(
        busy_destroys,
        0,
        "the agent tried to destroy a busy instance"
    );
    let report = outcome.ok_or_else(|| TestCaseError::fail("no convergence in 60 runs"))?;
    let after = observe(&state);
    if expect_refused {
        prop_assert!(
            matches!(
                &report.result,
                ApplyResult::Refused {
                    refusal: Refusal::Busy { .. }
                }
            ),
            "expected a refusal, got {:?}",
            report.result
        );
        prop_assert_eq!(
            &state.gpus,
            &start_state.gpus,
            "a refused GPU must be unchanged"
        );
        return Ok(());
    }
    prop_assert_eq!(&report.result, &ApplyResult::Converged);
    let got: BTreeSet<(String, u8)> = after.iter().map(key).collect();
    prop_assert_eq!(&got, &desired_keys);
    prop_assert!(
        after.iter().all(|i| i.uuid.is_some()),
        "every instance has its CI"
    );
    for old in before
        .iter()
        .filter(|i| desired_keys.contains(&key(i)) && i.uuid.is_some())
    {
        let new = after.iter().find(|i| key(i) == key(old)).unwrap();
        prop_assert_eq!(
            &new.uuid,
            &old.uuid,
            "kept instance {} lost its UUID",
            old.spec()
        );
        prop_assert_eq!(&new.pids, &old.pids);
    }
    prop_assert!(
        dangling(&journal).unwrap().is_empty(),
        "every intent closed"
    );

    // Idempotent: a second apply performs nothing and writes nothing.
    let n = journal.entries().unwrap().len();
    let mut b = SimBackend::new(state.clone(), catalog.clone(), SimConfig::default()).unwrap();
    let mut sl = RecordingSleeper::default();
    let again = Reconciler::new(&mut b, &mut journal, catalog, &mut sl)
        .apply_gpu(0, desired.items())
        .unwrap();
    prop_assert!(again.applied.is_empty());
    prop_assert_eq!(journal.entries().unwrap().len(), n);
    prop_assert_eq!(b.stats().mutations, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn the_agent_converges_or_refuses_safely(c in case()) {
        run_case(&c)?;
    }

    /// The pure plan: applied in order to an abstract GPU, every intermediate layout obeys
    /// the rules, no busy instance is destroyed, and the end result is the desired layout.
    #[test]
    fn plans_keep_every_intermediate_layout_valid(
        m in 0..MODELS.len(),
        pick in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
        busy in prop::collection::vec(prop::bool::weighted(0.25), 8),
    ) {
        let md = model(m);
        let all = layouts(m);
        let initial = pick.0.get(all);
        let desired = pick.1.get(all);
        let instances: Vec<GpuInstance> = initial.items().iter().enumerate().map(|(i, p)| {
            let prof = md.profile(p.profile);
            GpuInstance {
                gpu: 0, gi_id: i as u32 + 1, profile: prof.name.clone(), profile_id: 0,
                start: p.start, size: prof.memory_slices, uuid: Some(format!("MIG-{i}")),
                compute_instances: vec![tessera_gpu::ComputeInstance { ci_id: 0, profile_id: 0, uuid: None }],
                pids: if busy[i] { vec![100 + i as u32] } else { vec![] },
            }
        }).collect();
        let obs = ObservedGpu { gpu: 0, mig_enabled: true, instances: instances.clone() };
        match plan_ops(md, desired.items(), &obs) {
            Err(Refusal::Busy { busy: conflicts, .. }) => {
                prop_assert!(!conflicts.is_empty());
                for b in conflicts {
                    let inst = instances.iter().find(|i| i.spec() == b.instance).unwrap();
                    prop_assert!(inst.is_busy());
                    prop_assert!(!desired.items().iter().any(|d| md.spec(*d) == b.instance));
                }
            }
            Err(other) => prop_assert!(false, "unexpected refusal {other}"),
            Ok(ops) => {
                let mut cur: Vec<Placed> = initial.items().to_vec();
                let mut created = false;
                for op in &ops {
                    match op {
                        Op::DestroyGi { instance } => {
                            prop_assert!(!created, "destroys come before creates");
                            let inst = instances.iter().find(|i| i.gi_id == instance.gi_id()).unwrap();
                            prop_assert!(!inst.is_busy());
                            cur.retain(|p| !(p.start == instance.start() && md.profile(p.profile).name == instance.profile()));
                        }
                        Op::CreateGi { profile, start, .. } => {
                            created = true;
                            let p = Placed::new(md.profile_named(profile).unwrap(), *start);
                            prop_assert!(LayoutState::of(md, &cur).fits(md, p), "{} does not fit", md.spec(p));
                            cur.push(p);
                        }
                        Op::CreateCi { .. } => prop_assert!(false, "no GI lacks its CI here"),
                    }
                    prop_assert!(md.validate(&cur).is_empty());
                }
                prop_assert_eq!(Layout::new(cur), desired.clone());
            }
        }
    }
}
