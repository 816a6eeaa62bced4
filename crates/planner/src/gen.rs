//! Seeded generators of clusters and requests, for `tessera bench plan|quality`, the simulator
//! and tests. Pure: the same seed gives the same documents on every machine (ChaCha8).

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_model::catalog::MediaKind;
use tessera_model::{Catalog, GpuModel, LayoutState, Placed};

use crate::input::{
    ClusterSpec, GpuMode, GpuSpec, InstanceSpec, MpsClientSpec, NodeSpec, RequestSpec,
};

/// Models of the benchmark cluster.
pub const BENCH_MODELS: [&str; 3] = ["a100-40gb", "a100-80gb", "h100-80gb"];

/// Models of the small quality instances.
pub const QUALITY_MODELS: [&str; 4] = ["a30-24gb", "a100-40gb", "a100-80gb", "h100-80gb"];

/// Size of a generated benchmark input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchSpec {
    /// Nodes.
    pub nodes: usize,
    /// GPUs per node.
    pub gpus_per_node: usize,
    /// Pending requests.
    pub pending: usize,
    /// Seed of everything random.
    pub seed: u64,
}

/// A seeded random source.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A random valid MIG layout of `model` built by adding random fitting instances of ordinary
/// (non-media) profiles until none fits or, after each, with probability `1 - fill`.
pub fn random_layout(model: &GpuModel, rng: &mut impl Rng, fill: f64) -> Vec<Placed> {
    let cands: Vec<Placed> = model
        .candidates()
        .into_iter()
        .filter(|c| model.profile(c.profile).media_kind() == MediaKind::Standard)
        .collect();
    let mut state = LayoutState::new();
    let mut out = Vec::new();
    loop {
        let fit: Vec<Placed> = cands
            .iter()
            .copied()
            .filter(|&c| state.fits(model, c))
            .collect();
        let Some(&c) = fit.choose(rng) else { break };
        state.add(model, c);
        out.push(c);
        if !rng.random_bool(fill.clamp(0.0, 1.0)) {
            break;
        }
    }
    out.sort_unstable();
    out
}

/// A random MIG profile name of `model`: 1, 2, 3, 4 or all compute slices with weights
/// 40/25/15/10/10, ordinary (non-media) profiles only.
pub fn random_profile(model: &GpuModel, rng: &mut impl Rng) -> String {
    let sizes: [(u8, u32); 5] = [
        (1, 40),
        (2, 25),
        (3, 15),
        (4, 10),
        (model.compute_slices, 10),
    ];
    loop {
        let roll = rng.random_range(0..100u32);
        let mut acc = 0;
        let mut g = 1;
        for (s, w) in sizes {
            acc += w;
            if roll < acc {
                g = s;
                break;
            }
        }
        let fit: Vec<&str> = model
            .profiles
            .iter()
            .filter(|p| p.compute_slices == g && p.media_kind() == MediaKind::Standard)
            .map(|p| p.name.as_str())
            .collect();
        if let Some(name) = fit.choose(rng) {
            return (*name).to_string();
        }
    }
}

/// A GPU of `model` in a random state: 80 % MIG (empty with probability `empty`, else a
/// random layout whose instances are busy with probability `busy`), 10 % MPS, 10 % time-slice.
pub fn random_gpu(model: &GpuModel, rng: &mut impl Rng, busy: f64, empty: f64) -> GpuSpec {
    let roll = rng.random_range(0..100u32);
    if roll < 80 {
        let instances = if rng.random_bool(empty) {
            Vec::new()
        } else {
            let fill = rng.random_range(0.6..1.0);
            random_layout(model, rng, fill)
                .into_iter()
                .map(|p| InstanceSpec {
                    profile: model.profile(p.profile).name.clone(),
                    start: p.start,
                    used: rng.random_bool(busy),
                })
                .collect()
        };
        GpuSpec::mig(&model.key, instances)
    } else if roll < 90 {
        let total = model.memory_mib().unwrap_or(40_960).saturating_sub(512);
        let mut clients = Vec::new();
        let (mut mem, mut sm) = (0u64, 0u32);
        for _ in 0..rng.random_range(0..5) {
            let c = MpsClientSpec {
                memory_mib: 1024 * rng.random_range(2..17u64),
                sm_percent: *[10u32, 20, 25, 30, 40].choose(rng).expect("non-empty"),
            };
            if mem + c.memory_mib <= total && sm + c.sm_percent <= 100 {
                mem += c.memory_mib;
                sm += c.sm_percent;
                clients.push(c);
            }
        }
        GpuSpec {
            model: model.key.clone(),
            mode: GpuMode::Mps,
            auto: None,
            instances: Vec::new(),
            clients,
            replicas: None,
            replicas_used: 0,
        }
    } else {
        let replicas = *[2u32, 4, 8].choose(rng).expect("non-empty");
        GpuSpec {
            model: model.key.clone(),
            mode: GpuMode::Timeslice,
            auto: None,
            instances: Vec::new(),
            clients: Vec::new(),
            replicas: Some(replicas),
            replicas_used: rng.random_range(0..=replicas),
        }
    }
}

/// A random request `id`: 80 % MIG (profile of a random model of `models`), 10 % MPS, 10 %
/// time-slice; priority drawn from `priorities`.
pub fn random_request(
    id: String,
    models: &[&GpuModel],
    priorities: &[u32],
    rng: &mut impl Rng,
) -> RequestSpec {
    let roll = rng.random_range(0..100u32);
    let base = if roll < 80 {
        let m = models.choose(rng).expect("at least one model");
        RequestSpec::mig(&id, &random_profile(m, rng))
    } else if roll < 90 {
        RequestSpec::mps(
            &id,
            1024 * rng.random_range(1..21u64),
            *[10u32, 20, 25, 30, 50].choose(rng).expect("non-empty"),
        )
    } else {
        RequestSpec::timeslice(&id)
    };
    base.with_priority(*priorities.choose(rng).expect("non-empty"))
}

fn models<'c>(catalog: &'c Catalog, keys: &[&str]) -> Vec<&'c GpuModel> {
    keys.iter()
        .map(|k| {
            catalog
                .lookup(k)
                .expect("generator models are in the built-in catalog")
        })
        .collect()
}

/// The benchmark input: `nodes × gpus_per_node` GPUs of [`BENCH_MODELS`] (one model per node)
/// in random states (a busy cluster: 3 % of MIG GPUs empty, the others 60–100 % partitioned with
/// 85 % of instances busy), and `pending` requests with priorities 1 (70 %),
/// 2 (20 %) or 5 (10 %).
pub fn bench_input(catalog: &Catalog, spec: &BenchSpec) -> (ClusterSpec, Vec<RequestSpec>) {
    let ms = models(catalog, &BENCH_MODELS);
    let mut rng = rng(spec.seed);
    let width = spec.nodes.max(1).to_string().len().max(3);
    let nodes = (0..spec.nodes)
        .map(|n| {
            let m = ms.choose(&mut rng).expect("non-empty");
            NodeSpec {
                name: format!("node-{n:0width$}"),
                gpus: (0..spec.gpus_per_node)
                    .map(|_| random_gpu(m, &mut rng, 0.9, 0.03))
                    .collect(),
            }
        })
        .collect();
    let prios = [1, 1, 1, 1, 1, 1, 1, 2, 2, 5];
    let w = spec.pending.max(1).to_string().len().max(4);
    let requests = (0..spec.pending)
        .map(|i| random_request(format!("r{i:0w$}"), &ms, &prios, &mut rng))
        .collect();
    (ClusterSpec { nodes }, requests)
}

/// A small random instance for quality checks against `exact`: 1–3 nodes of 1–2 GPUs of
/// [`QUALITY_MODELS`], 1–8 requests of priority 1–3 for the cluster's models (occasionally for
/// another one).
pub fn small_instance(catalog: &Catalog, seed: u64) -> (ClusterSpec, Vec<RequestSpec>) {
    let all = models(catalog, &QUALITY_MODELS);
    let mut rng = rng(seed);
    let mut used: Vec<&GpuModel> = Vec::new();
    let nodes = (0..rng.random_range(1..=3usize))
        .map(|n| NodeSpec {
            name: format!("n{n}"),
            gpus: (0..rng.random_range(1..=2usize))
                .map(|_| {
                    let m = all.choose(&mut rng).expect("non-empty");
                    if !used.iter().any(|u| u.key == m.key) {
                        used.push(m);
                    }
                    let busy = rng.random_range(0.2..0.8);
                    random_gpu(m, &mut rng, busy, 0.1)
                })
                .collect(),
        })
        .collect();
    let requests = (0..rng.random_range(1..=8usize))
        .map(|i| {
            let pool: &[&GpuModel] = if rng.random_bool(0.9) { &used } else { &all };
            random_request(format!("r{i}"), pool, &[1, 2, 3], &mut rng)
        })
        .collect();
    (ClusterSpec { nodes }, requests)
}

/// Models of the contended instances: A30, A100 40GB and 80GB, H100, H100 NVL.
pub const CONTENDED_MODELS: [&str; 5] = [
    "a30-24gb",
    "a100-40gb",
    "a100-80gb",
    "h100-80gb",
    "h100-nvl-94gb",
];

/// The shape of a contended instance ([`contended_instance`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContendedSpec {
    /// GPUs, drawn uniformly from this inclusive range.
    pub gpus: (usize, usize),
    /// Pending requests, drawn from this inclusive range; `None`: 2–4 per GPU.
    pub requests: Option<(usize, usize)>,
    /// Share of existing instances that are busy (default 1/3).
    pub busy: f64,
    /// Demand skew `s`: a profile of `g` compute slices is asked for with weight `g^-s`
    /// (0: every profile alike; default 1, small profiles more often).
    pub skew: f64,
}

impl ContendedSpec {
    /// The shape with `gpus` GPUs: 2–4 requests per GPU, a third busy, skew 1.
    pub fn new(gpus: (usize, usize)) -> Self {
        ContendedSpec {
            gpus,
            requests: None,
            busy: 1.0 / 3.0,
            skew: 1.0,
        }
    }
}

/// A contended MIG-only instance: GPUs of [`CONTENDED_MODELS`] on nodes of 4 or 8 (one model
/// per node), 15 % of them empty, the others 50–100 % partitioned with `spec.busy` of their
/// instances busy; requests for the ordinary profiles of the cluster's models (weighted by
/// `spec.skew`), priority 1 (50 %), 2 (30 %) or 3 (20 %), more than fits.
pub fn contended_instance(
    catalog: &Catalog,
    spec: &ContendedSpec,
    seed: u64,
) -> (ClusterSpec, Vec<RequestSpec>) {
    let all = models(catalog, &CONTENDED_MODELS);
    let mut rng = rng(seed);
    let (lo, hi) = (spec.gpus.0.max(1), spec.gpus.1.max(spec.gpus.0.max(1)));
    let n = rng.random_range(lo..=hi);
    let mut nodes = Vec::new();
    let mut used: Vec<&GpuModel> = Vec::new();
    let mut left = n;
    while left > 0 {
        let size = (*[4usize, 8].choose(&mut rng).expect("non-empty")).min(left);
        left -= size;
        let m = *all.choose(&mut rng).expect("non-empty");
        if !used.iter().any(|u| u.key == m.key) {
            used.push(m);
        }
        let gpus = (0..size)
            .map(|_| {
                let instances = if rng.random_bool(0.15) {
                    Vec::new()
                } else {
                    let fill = rng.random_range(0.5..1.0);
                    random_layout(m, &mut rng, fill)
                        .into_iter()
                        .map(|p| InstanceSpec {
                            profile: m.profile(p.profile).name.clone(),
                            start: p.start,
                            used: rng.random_bool(spec.busy.clamp(0.0, 1.0)),
                        })
                        .collect()
                };
                GpuSpec::mig(&m.key, instances)
            })
            .collect();
        nodes.push(NodeSpec {
            name: format!("node-{:03}", nodes.len()),
            gpus,
        });
    }
    // Every ordinary profile name of the cluster's models, once, with its compute slices.
    let mut pool: Vec<(String, u8)> = Vec::new();
    for m in &used {
        for p in &m.profiles {
            if p.media_kind() == MediaKind::Standard
                && !pool.iter().any(|(n, _)| n.eq_ignore_ascii_case(&p.name))
            {
                pool.push((p.name.clone(), p.compute_slices));
            }
        }
    }
    pool.sort();
    let weights: Vec<f64> = pool
        .iter()
        .map(|&(_, g)| f64::from(g.max(1)).powf(-spec.skew))
        .collect();
    let total: f64 = weights.iter().sum();
    let count = match spec.requests {
        Some((a, b)) => rng.random_range(a.min(b)..=b.max(a)),
        None => rng.random_range(2 * n..=4 * n),
    };
    let w = count.max(1).to_string().len().max(3);
    let requests = (0..count)
        .map(|i| {
            let mut roll = rng.random_range(0.0..total);
            let mut pick = pool.len() - 1;
            for (k, wk) in weights.iter().enumerate() {
                if roll < *wk {
                    pick = k;
                    break;
                }
                roll -= wk;
            }
            let prio = match rng.random_range(0..10u32) {
                0..=4 => 1,
                5..=7 => 2,
                _ => 3,
            };
            RequestSpec::mig(&format!("r{i:0w$}"), &pool[pick].0).with_priority(prio)
        })
        .collect();
    (ClusterSpec { nodes }, requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_deterministic_and_valid() {
        let c = Catalog::builtin();
        let spec = BenchSpec {
            nodes: 20,
            gpus_per_node: 4,
            pending: 50,
            seed: 7,
        };
        let a = bench_input(c, &spec);
        let b = bench_input(c, &spec);
        assert_eq!(a, b);
        assert_eq!(a.0.nodes.len(), 20);
        assert_eq!(a.1.len(), 50);
        assert_ne!(a, bench_input(c, &BenchSpec { seed: 8, ..spec }));
        // Every generated input resolves (valid layouts, known profiles).
        crate::plan(c, &a.0, &a.1, &crate::PlanOptions::default()).unwrap();
        for seed in 0..50 {
            let (cl, rq) = small_instance(c, seed);
            crate::plan(c, &cl, &rq, &crate::PlanOptions::default()).unwrap();
        }
        let spec = ContendedSpec::new((16, 48));
        for seed in 0..5 {
            let (cl, rq) = contended_instance(c, &spec, seed);
            assert_eq!((cl.clone(), rq.clone()), contended_instance(c, &spec, seed));
            let n: usize = cl.nodes.iter().map(|n| n.gpus.len()).sum();
            assert!((16..=48).contains(&n), "{n} GPUs");
            assert!(rq.len() >= 2 * n && rq.len() <= 4 * n);
            crate::plan(c, &cl, &rq, &crate::PlanOptions::default()).unwrap();
        }
    }
}
