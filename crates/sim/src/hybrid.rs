//! Hybrid sharing: each GPU is either MIG (instances of one MIG model, for pods that need
//! isolation) or MPS (`gpu_milli` fractions, for the rest), and a GPU's mode is chosen when it
//! is idle (a mode change needs an idle GPU; in saturate mode nothing leaves, so a GPU keeps the
//! mode of its first pod).
//!
//! A shared pod (`num_gpu = 1, gpu_milli < 1000`) needs isolation with probability
//! `isolation_share`, drawn per arrival from the seed. Whole-GPU pods take whole idle GPUs of one
//! node under every policy. Three mode policies on the same placement rule:
//!
//! * `tessera`: isolated pods get the smallest MIG profile covering their share on a MIG GPU,
//!   the others an MPS fraction; an idle GPU takes the mode of the pod that needs it.
//! * `mig-only`: every shared pod gets a MIG instance (every used GPU is MIG).
//! * `mps-only`: no MIG; a non-isolated pod gets an MPS fraction, an isolated pod a whole GPU
//!   (the only isolation MPS cannot give is a GPU of one's own).
//!
//! Placement (the same for all three): on the nodes where CPU, memory and `gpu_spec` fit, a GPU
//! already in the needed mode where the pod fits with the least room left wins (first node,
//! then first GPU on ties); only when none has room is an idle GPU given the mode, on the node
//! with the fewest idle GPUs. The metric is the fractional one: allocated `gpu_milli` (what the
//! pods asked for, not the MIG instance they got) against the arrived `gpu_milli`.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tessera_model::{LayoutState, Placed};

use crate::fractional::{sequence, FracContext, Kind, NodeState, MAX_PCT, MILLI};
use crate::mapping::Mapping;
use crate::parallel;

/// A mode policy of hybrid mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HybridPolicy {
    /// MIG for isolated pods, MPS for the rest, per GPU when idle.
    Tessera,
    /// MIG for every shared pod.
    MigOnly,
    /// MPS for every shared pod; isolated pods take a whole GPU.
    MpsOnly,
}

impl HybridPolicy {
    /// Every policy, in report order.
    pub const ALL: [HybridPolicy; 3] = [
        HybridPolicy::Tessera,
        HybridPolicy::MigOnly,
        HybridPolicy::MpsOnly,
    ];

    /// The report name.
    pub fn name(self) -> &'static str {
        match self {
            HybridPolicy::Tessera => "tessera",
            HybridPolicy::MigOnly => "mig-only",
            HybridPolicy::MpsOnly => "mps-only",
        }
    }
}

impl std::fmt::Display for HybridPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A GPU's mode.
#[derive(Debug, Clone)]
enum Mode {
    /// Nothing runs; the mode is chosen by the next pod.
    Idle,
    /// MPS fractions.
    Mps,
    /// MIG instances.
    Mig(LayoutState),
    /// One pod has the whole GPU.
    Whole,
}

/// What a shared pod needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Mps,
    Mig,
    Whole,
}

/// One hybrid run's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HybridRun {
    /// The policy.
    pub policy: HybridPolicy,
    /// The seed.
    pub seed: u64,
    /// Allocated share of the GPU capacity per arrived percentage (0–130).
    pub curve: Vec<f64>,
    /// GPU pods failed by 100 % arrived.
    pub failed_at_100: u64,
    /// GPUs in MIG mode at the end.
    pub mig_gpus: u64,
    /// GPUs in MPS mode at the end.
    pub mps_gpus: u64,
}

/// Per-node state of a hybrid run.
#[derive(Debug, Clone)]
struct HNode {
    base: NodeState,
    modes: Vec<Mode>,
}

/// Run one hybrid policy with one seed; `mapping` gives the MIG profiles.
pub fn run(
    ctx: &FracContext,
    mapping: &Mapping,
    policy: HybridPolicy,
    isolation_share: f64,
    seed: u64,
) -> HybridRun {
    let model = mapping.model();
    let seq = sequence(ctx, seed);
    // The isolation draw is per arrival and the same for every policy.
    let mut iso_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1501_a7ed_0000_0001);
    let isolated: Vec<bool> = seq
        .iter()
        .map(|_| ((iso_rng.next_u64() >> 11) as f64 / ((1u64 << 53) as f64)) < isolation_share)
        .collect();
    let mut nodes: Vec<HNode> = ctx
        .nodes
        .iter()
        .map(|n| {
            let base = NodeState::new_for(n);
            let modes = vec![Mode::Idle; base.gpu.len()];
            HNode { base, modes }
        })
        .collect();
    let capacity = ctx.capacity();
    let (mut arrived, mut allocated, mut failed_at_100) = (0u64, 0u64, 0u64);
    let mut curve = Vec::with_capacity(MAX_PCT as usize + 1);
    for (pos, &i) in seq.iter().enumerate() {
        let k = &ctx.kinds[ctx.pods[i] as usize];
        let milli = k.total_milli();
        while (curve.len() as u32) <= MAX_PCT
            && (curve.len() as u64) * capacity < (arrived + milli) * 100
        {
            curve.push(allocated as f64 * 100.0 / capacity as f64);
        }
        arrived += milli;
        let need = if !k.is_share() {
            Need::Whole
        } else {
            match (policy, isolated[pos]) {
                (HybridPolicy::MigOnly, _) | (HybridPolicy::Tessera, true) => Need::Mig,
                (HybridPolicy::MpsOnly, true) => Need::Whole,
                (_, false) => Need::Mps,
            }
        };
        let placed = place(&mut nodes, mapping, model, k, need);
        if placed {
            allocated += milli;
        } else if k.num_gpu > 0 && arrived <= capacity {
            failed_at_100 += 1;
        }
    }
    while (curve.len() as u32) <= MAX_PCT {
        curve.push(allocated as f64 * 100.0 / capacity as f64);
    }
    let count = |f: &dyn Fn(&Mode) -> bool| -> u64 {
        nodes
            .iter()
            .flat_map(|n| n.modes.iter())
            .filter(|m| f(m))
            .count() as u64
    };
    HybridRun {
        policy,
        seed,
        curve,
        failed_at_100,
        mig_gpus: count(&|m| matches!(m, Mode::Mig(_))),
        mps_gpus: count(&|m| matches!(m, Mode::Mps)),
    }
}

/// Place one pod; false when it fits nowhere.
fn place(
    nodes: &mut [HNode],
    mapping: &Mapping,
    model: &tessera_model::GpuModel,
    k: &Kind,
    need: Need,
) -> bool {
    let fits_node = |n: &HNode| {
        n.base.cpu >= k.cpu
            && n.base.mem >= k.mem
            && (k.num_gpu == 0 || k.spec.is_empty() || k.spec.contains(&n.base.model))
    };
    if k.num_gpu == 0 {
        // A CPU-only pod: the first node where it fits.
        return match nodes.iter_mut().find(|n| fits_node(n)) {
            Some(n) => {
                n.base.cpu -= k.cpu;
                n.base.mem -= k.mem;
                true
            }
            None => false,
        };
    }
    let idle = |n: &HNode| n.modes.iter().filter(|m| matches!(m, Mode::Idle)).count();
    let count = if need == Need::Whole {
        k.num_gpu.max(1)
    } else {
        1
    } as usize;
    if need == Need::Whole {
        // The node with the fewest idle GPUs that has enough.
        let best = (0..nodes.len())
            .filter(|&n| fits_node(&nodes[n]) && idle(&nodes[n]) >= count)
            .min_by_key(|&n| (idle(&nodes[n]), n));
        let Some(n) = best else { return false };
        let node = &mut nodes[n];
        let mut left = count;
        for g in 0..node.modes.len() {
            if left > 0 && matches!(node.modes[g], Mode::Idle) {
                node.modes[g] = Mode::Whole;
                node.base.gpu[g] = 0;
                left -= 1;
            }
        }
        node.base.cpu -= k.cpu;
        node.base.mem -= k.mem;
        return true;
    }
    let profile = mapping.profile_for_milli(k.milli);
    let prof_slices = u32::from(model.profile(profile).compute_slices);
    // Room left after placing on a GPU already in the mode (lower is better).
    let mut best: Option<(u32, usize, usize, Option<Placed>)> = None;
    for (n, node) in nodes.iter().enumerate() {
        if !fits_node(node) {
            continue;
        }
        for (g, m) in node.modes.iter().enumerate() {
            let option = match (need, m) {
                (Need::Mps, Mode::Mps) if node.base.gpu[g] >= k.milli => {
                    Some((node.base.gpu[g] - k.milli, None))
                }
                (Need::Mig, Mode::Mig(state)) => mig_start(model, profile, state).map(|p| {
                    let used = u32::from(state_compute(model, state));
                    (
                        (u32::from(model.compute_slices) - used - prof_slices) * MILLI
                            / u32::from(model.compute_slices),
                        Some(p),
                    )
                }),
                _ => None,
            };
            if let Some((room, start)) = option {
                if best.as_ref().is_none_or(|b| room < b.0) {
                    best = Some((room, n, g, start));
                }
            }
        }
    }
    if best.is_none() {
        // An idle GPU takes the mode, on the node with the fewest idle GPUs.
        let n = (0..nodes.len())
            .filter(|&n| fits_node(&nodes[n]) && idle(&nodes[n]) > 0)
            .min_by_key(|&n| (idle(&nodes[n]), n));
        if let Some(n) = n {
            let g = nodes[n]
                .modes
                .iter()
                .position(|m| matches!(m, Mode::Idle))
                .unwrap_or(0);
            let start = match need {
                Need::Mig => mig_start(model, profile, &LayoutState::new()),
                _ => None,
            };
            if need == Need::Mig && start.is_none() {
                return false;
            }
            nodes[n].modes[g] = match need {
                Need::Mig => Mode::Mig(LayoutState::new()),
                _ => Mode::Mps,
            };
            best = Some((0, n, g, start));
        }
    }
    let Some((_, n, g, start)) = best else {
        return false;
    };
    let node = &mut nodes[n];
    node.base.cpu -= k.cpu;
    node.base.mem -= k.mem;
    match (&mut node.modes[g], start) {
        (Mode::Mig(state), Some(p)) => {
            state.add(model, p);
            let used = u32::from(state_compute(model, state));
            node.base.gpu[g] =
                (u32::from(model.compute_slices) - used) * MILLI / u32::from(model.compute_slices);
        }
        _ => node.base.gpu[g] -= k.milli,
    }
    true
}

/// Compute slices in use on a MIG GPU.
fn state_compute(model: &tessera_model::GpuModel, state: &LayoutState) -> u8 {
    model
        .profile_indices()
        .map(|(i, p)| state.count_of(i) * p.compute_slices)
        .sum()
}

/// The first allowed start of `profile` that fits the GPU's layout.
fn mig_start(
    model: &tessera_model::GpuModel,
    profile: tessera_model::ProfileIdx,
    state: &LayoutState,
) -> Option<Placed> {
    model
        .profile(profile)
        .placements
        .iter()
        .map(|&s| Placed::new(profile, s))
        .find(|&p| state.fits(model, p))
}

/// One policy's hybrid results (means over seeds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HybridSummary {
    /// The policy.
    pub policy: HybridPolicy,
    /// Allocated share at 100 % arrived, %.
    pub allocated_pct_at_100: f64,
    /// `100 − allocated_pct_at_100`.
    pub unallocated_pct_at_100: f64,
    /// Standard deviation over seeds at 100 %.
    pub allocated_pct_at_100_sd: f64,
    /// Allocated share at 130 % arrived, %.
    pub allocated_pct_at_130: f64,
    /// GPU pods failed by 100 % arrived.
    pub failed_pods: f64,
    /// GPUs in MIG mode at the end.
    pub mig_gpus: f64,
    /// GPUs in MPS mode at the end.
    pub mps_gpus: f64,
}

/// The hybrid report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HybridReport {
    /// `hybrid`.
    pub sharing: &'static str,
    /// The MIG model.
    pub gpu_model: String,
    /// Share of shared pods that need isolation.
    pub isolation_share: f64,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Per policy.
    pub policies: Vec<HybridSummary>,
}

/// Run the three policies with every seed and aggregate.
pub fn run_hybrid(
    ctx: &FracContext,
    mapping: &Mapping,
    isolation_share: f64,
    seeds: &[u64],
    threads: usize,
) -> HybridReport {
    let jobs: Vec<(HybridPolicy, u64)> = HybridPolicy::ALL
        .iter()
        .flat_map(|&p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    let runs = parallel(&jobs, threads, |&(p, s)| {
        run(ctx, mapping, p, isolation_share, s)
    });
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let policies = HybridPolicy::ALL
        .iter()
        .map(|&p| {
            let rs: Vec<&HybridRun> = runs.iter().filter(|r| r.policy == p).collect();
            let a100: Vec<f64> = rs.iter().map(|r| r.curve[100]).collect();
            let m = mean(&a100);
            let sd = if a100.len() < 2 {
                0.0
            } else {
                (a100.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (a100.len() - 1) as f64).sqrt()
            };
            let f =
                |g: &dyn Fn(&HybridRun) -> f64| mean(&rs.iter().map(|r| g(r)).collect::<Vec<_>>());
            HybridSummary {
                policy: p,
                allocated_pct_at_100: r3(m),
                unallocated_pct_at_100: r3(100.0 - m),
                allocated_pct_at_100_sd: r3(sd),
                allocated_pct_at_130: r3(f(&|r| r.curve[MAX_PCT as usize])),
                failed_pods: r3(f(&|r| r.failed_at_100 as f64)),
                mig_gpus: r3(f(&|r| r.mig_gpus as f64)),
                mps_gpus: r3(f(&|r| r.mps_gpus as f64)),
            }
        })
        .collect();
    HybridReport {
        sharing: "hybrid",
        gpu_model: mapping.model().key.clone(),
        isolation_share,
        seeds: seeds.to_vec(),
        policies,
    }
}
