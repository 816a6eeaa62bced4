//! Partitionable devices (KEP-4815): the counters encode the catalog's MIG layout rules exactly
//! (a set of placements fits the counters if and only if `GpuModel::validate` accepts it, for
//! every MIG model of the catalog), the full-GPU placement consumes every counter, device
//! order follows tessera's placement preference, and the published slices keep the API's
//! limits and pass strict schema validation (`kubernetes-validate`, Kubernetes 1.34–1.37).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use proptest::prelude::*;
use tessera_agent::journal::MemJournal;
use tessera_gpu::sim::parse_gpu_list;
use tessera_gpu::{SimBackend, SimConfig, SimState};
use tessera_kubelet::dra::{resource_slices, MAX_COUNTER_SETS};
use tessera_kubelet::node::{parse_desired_file, NodeConfig, NodeRunner};
use tessera_kubelet::partition::{consumption, counters, partitions};
use tessera_kubelet::NodeInventory;
use tessera_model::{Catalog, GpuModel, Placed};

fn models() -> Vec<&'static GpuModel> {
    Catalog::builtin().models.iter().collect()
}

/// Whether these placements' consumption fits the GPU's counters.
fn fits(model: &GpuModel, items: &[Placed]) -> bool {
    let have = counters(model);
    let mut used: BTreeMap<String, u64> = BTreeMap::new();
    for &p in items {
        for (k, v) in consumption(model, p) {
            *used.entry(k).or_default() += v;
        }
    }
    used.iter()
        .all(|(k, v)| have.get(k).is_some_and(|h| v <= h))
}

#[test]
fn counters_keep_the_api_limits_and_the_full_gpu_consumes_everything() {
    for m in models() {
        let c = counters(m);
        assert!(c.len() <= 32, "{}: {} counters (max 32)", m.key, c.len());
        for k in c.keys() {
            assert!(
                k.len() <= 63
                    && k.chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'),
                "{}: counter {k} is not a DNS label",
                m.key
            );
        }
        let full = m
            .profile_indices()
            .filter(|(_, p)| p.memory_slices == m.memory_slices)
            .max_by_key(|(_, p)| p.compute_slices)
            .expect("a full-GPU profile");
        let used = consumption(m, Placed::new(full.0, 0));
        for i in 0..m.memory_slices {
            assert_eq!(used[&format!("memory-slice-{i}")], 1, "{}", m.key);
        }
        assert_eq!(used["compute-slices"], c["compute-slices"], "{}", m.key);
        for (k, v) in &used {
            assert!(c[k] >= *v, "{}: {k}", m.key);
        }
        // Every placement consumes only counters of the set, within their totals.
        for p in m.candidates() {
            for (k, v) in consumption(m, p) {
                assert!(c.get(&k).is_some_and(|h| v <= *h), "{} {k}", m.spec(p));
            }
        }
    }
}

#[test]
fn overlapping_pairs_never_fit_and_every_valid_pair_does() {
    for m in models() {
        let cands = m.candidates();
        for (i, &a) in cands.iter().enumerate() {
            for &b in &cands[i + 1..] {
                let valid = m.validate(&[a, b]).is_empty();
                assert_eq!(
                    valid,
                    fits(m, &[a, b]),
                    "{}: {} + {}: valid={valid}",
                    m.key,
                    m.spec(a),
                    m.spec(b)
                );
                if m.mask(a) & m.mask(b) != 0 {
                    assert!(!fits(m, &[a, b]), "{} {} {}", m.key, m.spec(a), m.spec(b));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Any set of placements of any MIG model fits the counters exactly when it is a valid
    /// layout: the scheduler can allocate no combination the GPU cannot hold, and every one
    /// it can.
    #[test]
    fn counters_admit_exactly_the_valid_layouts(model in 0usize..13, picks in proptest::collection::vec(any::<u16>(), 0..9)) {
        let ms = models();
        let m = ms[model % ms.len()];
        let cands = m.candidates();
        let mut items: Vec<Placed> = picks.iter().map(|&x| cands[usize::from(x) % cands.len()]).collect();
        items.sort_unstable();
        items.dedup();
        prop_assert_eq!(m.validate(&items).is_empty(), fits(m, &items), "{} {:?}", m.key, items.iter().map(|&p| m.spec(p)).collect::<Vec<_>>());
    }
}

#[test]
fn every_maximal_layout_of_the_h100_fits() {
    let m = Catalog::builtin().get("h100-80gb").unwrap();
    for l in m.maximal_layouts() {
        assert!(fits(m, l.items()));
    }
}

#[test]
fn placements_follow_the_preference_and_skip_what_an_instance_blocks() {
    let m = Catalog::builtin().get("h100-80gb").unwrap();
    let parts = partitions(0, m, &[]);
    let ones: Vec<u8> = parts
        .placements
        .iter()
        .filter(|p| p.profile == "1g.10gb")
        .map(|p| p.start)
        .collect();
    // A 1g.10gb at 4..6 keeps 4g.40gb@0 placeable; at 0..3 it does not.
    assert_eq!(ones.len(), 7);
    assert_eq!(&ones[..3], &[6, 5, 4], "{ones:?}");
    let all: BTreeSet<(String, u8)> = parts
        .placements
        .iter()
        .map(|p| (p.profile.clone(), p.start))
        .collect();
    let every: BTreeSet<(String, u8)> = m
        .candidates()
        .into_iter()
        .map(|p| (m.profile(p.profile).name.clone(), p.start))
        .collect();
    assert_eq!(all, every, "an empty GPU offers every placement");

    let busy = partitions(0, m, &[("3g.40gb".into(), 4)]);
    assert!(busy
        .placements
        .iter()
        .any(|p| p.profile == "3g.40gb" && p.start == 4));
    for p in &busy.placements {
        let idx = m.profile_named(&p.profile).unwrap();
        let placed = Placed::new(idx, p.start);
        if !(p.profile == "3g.40gb" && p.start == 4) {
            let three = Placed::new(m.profile_named("3g.40gb").unwrap(), 4);
            assert!(
                m.validate(&[three, placed]).is_empty(),
                "{} blocked by 3g.40gb@4 but published",
                m.spec(placed)
            );
        }
    }
    assert!(!busy.placements.iter().any(|p| p.profile == "7g.80gb"));
}

/// A node of 9 H100s (one more than a counter slice holds) with MIG on, one A100 whole and
/// one with MPS shares, observed from the simulator with partitionable devices on.
fn node() -> NodeInventory {
    let c = Catalog::builtin().clone();
    let st = SimState::new(&c, &parse_gpu_list("h100-80gb:9").unwrap(), 3, true).unwrap();
    let b = SimBackend::new(st, c.clone(), SimConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut r, rx) = NodeRunner::new(
        Box::new(b),
        Box::new(MemJournal::new()),
        c,
        NodeConfig {
            kubelet_dir: dir.path().to_path_buf(),
            resync: std::time::Duration::from_secs(3600),
        },
    )
    .unwrap();
    r.set_partitionable(true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // GPU 8 is managed by the desired layout: its instances are published as they are.
    let s = rt
        .block_on(r.apply(&parse_desired_file("gpus: {8: [3g.40gb@4, 1g.10gb@0]}").unwrap()))
        .unwrap();
    assert!(s.inventory.gpus[8].partitions.is_none());
    assert!(s.inventory.gpus[..8].iter().all(|g| g.partitions.is_some()));
    let inv = rx.borrow().clone();
    inv
}

#[test]
fn slices_keep_the_pool_rules() {
    let inv = node();
    let slices = resource_slices("gpu.tessera.dev", "node-a", &inv, 3);
    let n = slices.len() as i64;
    let mut sets = BTreeSet::new();
    let mut devices = BTreeSet::new();
    let mut consumed = Vec::new();
    for s in &slices {
        assert_eq!(s.spec.pool.name, "node-a");
        assert_eq!(s.spec.pool.resource_slice_count, n);
        assert_eq!(s.spec.pool.generation, 3);
        let d = s.spec.devices.as_ref().map_or(0, Vec::len);
        let c = s.spec.shared_counters.as_ref().map_or(0, Vec::len);
        assert!(
            d == 0 || c == 0,
            "a slice holds devices or counters, not both"
        );
        assert!(d <= 128 && c <= MAX_COUNTER_SETS);
        let mut entries = 0;
        for cs in s.spec.shared_counters.iter().flatten() {
            assert!(cs.counters.len() <= 32);
            assert!(
                sets.insert(cs.name.clone()),
                "counter set names are unique in the pool"
            );
        }
        for dev in s.spec.devices.iter().flatten() {
            assert!(
                devices.insert(dev.name.clone()),
                "device names are unique in the pool"
            );
            for cc in dev.consumes_counters.iter().flatten() {
                entries += cc.counters.len();
                consumed.push(cc.counter_set.clone());
            }
            let attrs = dev.attributes.as_ref().map_or(0, BTreeMap::len)
                + dev.capacity.as_ref().map_or(0, BTreeMap::len);
            assert!(attrs <= 32);
        }
        assert!(entries <= 1024, "{entries} counter entries in one slice");
    }
    assert_eq!(sets.len(), 8);
    assert!(consumed.iter().all(|c| sets.contains(c)));
    // Two counter slices for 8 sets would be one; the plain slice carries GPU 8's instances.
    assert!(devices.contains("gpu-8-mig-3g-40gb-4"));
    assert!(devices.contains("gpu-0-mig-7g-80gb-0"));
    assert!(devices.contains("gpu-7-mig-1g-10gb-6"));
    assert_eq!(
        serde_json::to_string(&slices).unwrap(),
        serde_json::to_string(&resource_slices("gpu.tessera.dev", "node-a", &inv, 3)).unwrap(),
        "deterministic"
    );
}

fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn slices_pass_strict_schema_validation_for_1_34_to_1_37() {
    if !runs("kubernetes-validate", &["--version"]) {
        let msg =
            "kubernetes-validate is missing (`pip install kubernetes-validate`, as .ci/run does)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
        return;
    }
    let inv = node();
    let dir = tempfile::tempdir().unwrap();
    let mut docs = String::new();
    for s in resource_slices("gpu.tessera.dev", "node-a", &inv, 1) {
        docs.push_str("---\n");
        docs.push_str(&serde_yaml_ng::to_string(&s).unwrap());
    }
    assert!(docs.contains("sharedCounters") && docs.contains("consumesCounters"));
    let path = dir.path().join("slices.yaml");
    std::fs::write(&path, &docs).unwrap();
    for v in ["1.34.0", "1.35.0", "1.36.0", "1.37.0"] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", v, path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{v}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The validator does reject a wrong field.
    std::fs::write(&path, docs.replace("consumesCounters", "consumesCounterz")).unwrap();
    assert!(!runs(
        "kubernetes-validate",
        &["--strict", "-k", "1.36.0", path.to_str().unwrap()]
    ));
}
