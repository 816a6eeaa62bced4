//! The daemon's side of `mode: auto` (docs/mode-auto.md): at each pass the usable GPUs and
//! every waiting request become one planner problem, the GPUs configured `auto` its auto GPUs,
//! and the planner's mode rule ([`tessera_planner::auto`]) says which idle ones change mode and
//! which would but cannot. Pure: the scheduler carries the decisions out (MIG instances
//! destroyed through the journal, MIG mode and the MPS daemon through the fleet).
//!
//! How waiting requests count: `--mig PROFILE` asks for that profile; `--mem SIZE` for the
//! smallest MIG profile with that much memory on the first GPU model that has one (the daemon
//! serves `--mem` with MIG first), else for an MPS client; `--mps` for an MPS client; `--share`
//! for a time-slice replica. Every request counts priority 1 (the queue's own order decides who
//! is served first), and a request restricted to a GPU model no auto GPU has is left out.

use tessera_model::{Catalog, GpuModel};
use tessera_planner::typed::{self, Ask, RequestId};
use tessera_planner::{plan_auto, AutoGpu, ModeChange, MpsRequest};

use crate::fleet::GpuFacts;
use crate::sched::{
    default_sm_percent, options_for, planner_gpu, smallest_profile_for, GpuState, Waiting,
};
use crate::wire::SliceAsk;

/// A mode change of one `auto` GPU, planned (`change.blocked` is `None`) or blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeDecision {
    /// GPU index.
    pub gpu: u32,
    /// From, to, why, and what stops it if anything.
    pub change: ModeChange,
}

/// What the mode rule decides for the `auto` GPUs among `gpus` with `queue` waiting;
/// `can_switch` says whether the backend can change a GPU's mode (the caller's
/// [`crate::fleet::Fleet::can_switch`]). Empty when no usable GPU is `auto` or nothing waits.
pub fn choose_modes(
    catalog: &Catalog,
    gpus: &[GpuState],
    queue: &[Waiting],
    can_switch: impl Fn(&GpuFacts) -> bool,
) -> Vec<ModeDecision> {
    if queue.is_empty() || !gpus.iter().any(|g| g.facts.auto && g.usable()) {
        return Vec::new();
    }
    let mut node = typed::Node::default();
    let mut index: Vec<u32> = Vec::new();
    let mut auto = Vec::new();
    let mut models: Vec<&GpuModel> = Vec::new();
    let mut first_auto: Option<&GpuState> = None;
    for g in gpus.iter().filter(|g| g.usable()) {
        let Some(model) = catalog.get(&g.facts.model) else {
            continue;
        };
        let Some(gpu) = planner_gpu(model, g, Vec::new()) else {
            continue;
        };
        if g.facts.auto {
            auto.push(AutoGpu {
                node: 0,
                gpu: node.gpus.len(),
                can_switch: can_switch(&g.facts),
                replicas: Some(g.facts.replicas),
            });
            first_auto.get_or_insert(g);
        }
        if !models.iter().any(|m| m.key == model.key) {
            models.push(model);
        }
        index.push(g.facts.index);
        node.gpus.push(gpu);
    }
    let Some(first_auto) = first_auto else {
        return Vec::new();
    };
    let auto_models: Vec<&str> = gpus
        .iter()
        .filter(|g| g.facts.auto && g.usable())
        .map(|g| g.facts.model.as_str())
        .collect();
    let mps = |memory_mib: u64, sm: Option<u8>| {
        Ask::Mps(MpsRequest {
            memory_mib,
            sm_percent: u32::from(
                sm.unwrap_or_else(|| default_sm_percent(&first_auto.facts, memory_mib)),
            ),
        })
    };
    let mut requests = Vec::with_capacity(queue.len());
    for w in queue {
        if w.gpu_model
            .as_ref()
            .is_some_and(|m| !auto_models.contains(&m.as_str()))
        {
            continue;
        }
        let ask = match &w.ask {
            SliceAsk::Mig { profile } => {
                let Some((model, profile)) = models
                    .iter()
                    .find_map(|m| Some((*m, m.profile_named(profile)?)))
                else {
                    continue;
                };
                Ask::Mig { model, profile }
            }
            SliceAsk::Mem {
                memory_mib,
                sm_percent,
            } => match models
                .iter()
                .find_map(|m| Some((*m, smallest_profile_for(m, *memory_mib)?)))
            {
                Some((model, profile)) => Ask::Mig { model, profile },
                None => mps(*memory_mib, *sm_percent),
            },
            SliceAsk::Mps {
                memory_mib,
                sm_percent,
            } => mps(*memory_mib, *sm_percent),
            SliceAsk::Share => Ask::Timeslice,
        };
        requests.push(typed::Request {
            id: RequestId(w.id),
            ask,
            priority: 1,
        });
    }
    let problem = typed::Problem {
        nodes: vec![node],
        requests,
    };
    let opts = tessera_planner::PlanOptions {
        only_changed: true,
        ..options_for(first_auto)
    };
    match plan_auto(&problem, &auto, &opts) {
        Ok(out) => out
            .changes
            .into_iter()
            .map(|c| ModeDecision {
                gpu: index[c.gpu],
                change: c.change,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(
                "mode auto: the planner refused the input: {e}; no mode changes in this pass"
            );
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MpsSettings;
    use crate::sched::{InstanceAt, InstanceState, MpsClient};
    use tessera_planner::{GpuMode, ModeBlock};

    fn gpu(index: u32, mode: GpuMode, auto: bool) -> GpuState {
        let m = Catalog::builtin().lookup("h100-80gb").unwrap();
        GpuState::empty(GpuFacts {
            index,
            uuid: format!("GPU-{index}"),
            model: m.key.clone(),
            mode,
            auto,
            mig_capable: true,
            memory_mib: m.memory_mib().unwrap(),
            mps: MpsSettings::default(),
            replicas: 2,
        })
    }

    fn waiting(id: u64, ask: SliceAsk) -> Waiting {
        Waiting {
            id,
            uid: 1000,
            ask,
            gpu_model: None,
            waited_ms: 0,
        }
    }

    fn mps_ask(mib: u64) -> SliceAsk {
        SliceAsk::Mps {
            memory_mib: mib,
            sm_percent: Some(20),
        }
    }

    fn choose(gpus: &[GpuState], queue: &[Waiting], switch: bool) -> Vec<ModeDecision> {
        choose_modes(Catalog::builtin(), gpus, queue, |_| switch)
    }

    #[test]
    fn an_idle_auto_gpu_goes_to_the_mode_that_waits() {
        let gpus = [gpu(0, GpuMode::Mig, true)];
        let d = choose(&gpus, &[waiting(1, mps_ask(8192))], true);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].gpu, d[0].change.to), (0, GpuMode::Mps));
        assert_eq!(d[0].change.blocked, None);
        let d = choose(&gpus, &[waiting(1, SliceAsk::Share)], true);
        assert_eq!(d[0].change.to, GpuMode::Timeslice);
        // MIG asks on a MIG GPU: nothing to change.
        let mig = SliceAsk::Mig {
            profile: "1g.10gb".into(),
        };
        assert!(choose(&gpus, &[waiting(1, mig)], true).is_empty());
    }

    #[test]
    fn fixed_mode_gpus_are_never_changed_and_serve_first() {
        // A fixed MPS GPU takes the MPS ask: the auto GPU stays MIG.
        let gpus = [gpu(0, GpuMode::Mig, true), gpu(1, GpuMode::Mps, false)];
        assert!(choose(&gpus, &[waiting(1, mps_ask(8192))], true).is_empty());
        // No auto GPU at all: nothing.
        let gpus = [gpu(0, GpuMode::Mig, false)];
        assert!(choose(&gpus, &[waiting(1, mps_ask(8192))], true).is_empty());
    }

    #[test]
    fn a_busy_or_unswitchable_auto_gpu_is_reported_blocked() {
        let mut busy = gpu(0, GpuMode::Mig, true);
        let h100 = Catalog::builtin().lookup("h100-80gb").unwrap();
        busy.instances.push(InstanceState {
            at: InstanceAt::resolve(h100, "1g.10gb", 0),
            uuid: None,
            lease: Some(9),
            pids: Vec::new(),
        });
        let d = choose(&[busy], &[waiting(1, SliceAsk::Share)], true);
        assert_eq!(d[0].change.blocked, Some(ModeBlock::Busy));
        let d = choose(
            &[gpu(0, GpuMode::Mig, true)],
            &[waiting(1, SliceAsk::Share)],
            false,
        );
        assert_eq!(d[0].change.blocked, Some(ModeBlock::CannotSwitch));
        // An MPS GPU with a client is busy too.
        let mut mps = gpu(0, GpuMode::Mps, true);
        mps.mps_clients.push(MpsClient {
            lease: 3,
            uid: 1000,
            memory_mib: 1000,
            sm_percent: 10,
        });
        let d = choose(&[mps], &[waiting(1, SliceAsk::Share)], true);
        assert_eq!(d[0].change.blocked, Some(ModeBlock::Busy));
    }

    #[test]
    fn drained_gpus_and_other_models_stay_out() {
        let mut g = gpu(0, GpuMode::Mig, true);
        g.drained = true;
        assert!(choose(&[g], &[waiting(1, SliceAsk::Share)], true).is_empty());
        let mut w = waiting(1, SliceAsk::Share);
        w.gpu_model = Some("a30-24gb".into());
        assert!(choose(&[gpu(0, GpuMode::Mig, true)], &[w], true).is_empty());
    }
}
