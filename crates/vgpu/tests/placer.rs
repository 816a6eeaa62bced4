//! The placer on the twin: its answers honour the same-size rule and the MIG grid, place
//! MIG-backed vGPUs beside instances containers use, are deterministic, and are desired states
//! the agent reaches without a refusal.

use proptest::prelude::*;
use tessera_agent::RecordingSleeper;
use tessera_vgpu::agent::{observe, Agent, ApplyResult, Observed};
use tessera_vgpu::host::{SysfsHost, VgpuHost};
use tessera_vgpu::journal::MemJournal;
use tessera_vgpu::placer::{place, Ask, Isolation, VgpuRequest};
use tessera_vgpu::twin::{Twin, TwinGpuSpec};
use tessera_vgpu::VgpuCatalog;

fn cat() -> &'static VgpuCatalog {
    VgpuCatalog::builtin()
}

fn host(specs: &[&str]) -> SysfsHost<Twin> {
    let specs: Vec<TwinGpuSpec> = specs
        .iter()
        .map(|s| TwinGpuSpec::parse(s, cat()).unwrap())
        .collect();
    SysfsHost::new(Twin::new(&specs, cat(), 3).unwrap(), cat().clone())
}

fn observed(h: &mut SysfsHost<Twin>) -> Vec<Observed> {
    let gpus = h.gpus().unwrap();
    gpus.iter().map(|g| observe(h, &g.bdf).unwrap()).collect()
}

fn ty(name: &str, count: u32) -> VgpuRequest {
    VgpuRequest {
        ask: Ask::Type { name: name.into() },
        count,
    }
}

fn apply_all(h: &mut SysfsHost<Twin>, p: &tessera_vgpu::placer::Placement) {
    let mut j = MemJournal::new();
    for d in &p.gpus {
        let mut sl = RecordingSleeper::default();
        let r = Agent::new(h, &mut j, cat(), &mut sl).apply_gpu(d).unwrap();
        assert_eq!(r.result, ApplyResult::Converged, "{d:?}");
    }
}

#[test]
fn sizes_are_kept_apart_and_the_answer_is_deterministic() {
    let mut h = host(&["l40s-48gb", "l40s-48gb"]);
    let obs = observed(&mut h);
    let reqs = [ty("L40S-8C", 2), ty("L40S-24C", 2)];
    let p = place(cat(), &obs, &reqs);
    assert!(p.unplaced.is_empty(), "{:?}", p.unplaced);
    assert_eq!(p.gpus.len(), 2);
    for g in &p.gpus {
        assert_eq!(g.vgpus.len(), 1, "one size per GPU: {g:?}");
    }
    assert_eq!(
        serde_json::to_string(&p).unwrap(),
        serde_json::to_string(&place(cat(), &obs, &reqs)).unwrap()
    );
    apply_all(&mut h, &p);
    // A third size has no GPU left: said in words.
    let p = place(cat(), &observed(&mut h), &[ty("L40S-12C", 1)]);
    assert_eq!(p.unplaced.len(), 1);
    assert!(
        p.unplaced[0].why.contains("one frame buffer size"),
        "{}",
        p.unplaced[0].why
    );
}

#[test]
fn sized_requests_take_the_smallest_type_of_their_isolation_class() {
    let mut h = host(&["h100-80gb/vfio/mig", "l40s-48gb"]);
    let obs = observed(&mut h);
    let p = place(
        cat(),
        &obs,
        &[
            VgpuRequest {
                ask: Ask::Size {
                    fb_mib: 10 * 1024,
                    isolation: Isolation::Guaranteed,
                },
                count: 1,
            },
            VgpuRequest {
                ask: Ask::Size {
                    fb_mib: 10 * 1024,
                    isolation: Isolation::Burstable,
                },
                count: 1,
            },
        ],
    );
    let names: Vec<&str> = p.placed.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(names, ["H100XM-1-10C", "L40S-12C"]);
    apply_all(&mut h, &p);
}

#[test]
fn mig_backed_vgpus_go_beside_the_instances_containers_use() {
    let mut h = host(&["h100-80gb/vfio/mig"]);
    let bdf = h.gpus().unwrap()[0].bdf.clone();
    h.set_vfs(&bdf, 8).unwrap();
    {
        let (mig, idx) = h.mig(&bdf).unwrap();
        mig.create_gi(idx, "4g.40gb", 0).unwrap();
    }
    h.fs_mut().mig_sim_mut().set_busy(0, 0, Some(4242)).unwrap();
    let p = place(cat(), &observed(&mut h), &[ty("H100XM-1-10C", 4)]);
    assert_eq!(p.placed.len(), 3, "slices 4..6 take three 1g instances");
    assert_eq!(p.unplaced.len(), 1);
    assert!(
        p.unplaced[0].why.contains("does not fit"),
        "{}",
        p.unplaced[0].why
    );
    apply_all(&mut h, &p);
    let (mig, idx) = h.mig(&bdf).unwrap();
    let inst = mig.instances(idx).unwrap();
    assert!(
        inst.iter()
            .any(|i| i.profile == "4g.40gb" && i.pids == vec![4242]),
        "the container's instance is untouched"
    );
    assert_eq!(inst.iter().filter(|i| i.profile == "1g.10gb").count(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever is asked, what the placer places the agent reaches, with no refusal, and
    /// every placed vGPU is there afterwards.
    #[test]
    fn placements_are_reachable(spec in 0usize..3, reqs in prop::collection::vec((0usize..6, 1u32..4), 1..5)) {
        let specs: &[&[&str]] = &[&["a30-24gb/mdev/mig", "a30-24gb/mdev"], &["l40s-48gb", "a10-24gb"], &["h100-80gb/vfio/mig", "a100-40gb/mdev/mig"]];
        let mut h = host(specs[spec]);
        let asks = [
            Ask::Size { fb_mib: 4096, isolation: Isolation::Burstable },
            Ask::Size { fb_mib: 6000, isolation: Isolation::Guaranteed },
            Ask::Size { fb_mib: 12000, isolation: Isolation::Burstable },
            Ask::Size { fb_mib: 20000, isolation: Isolation::Guaranteed },
            Ask::Size { fb_mib: 24576, isolation: Isolation::Burstable },
            Ask::Size { fb_mib: 5000, isolation: Isolation::Guaranteed },
        ];
        let reqs: Vec<VgpuRequest> = reqs.iter().map(|&(a, n)| VgpuRequest { ask: asks[a].clone(), count: n }).collect();
        let obs = observed(&mut h);
        let p = place(cat(), &obs, &reqs);
        // On an empty host the first vGPU placed (largest frame buffer first) is placed
        // whenever some GPU has a type for it.
        let fb = |r: &VgpuRequest| match &r.ask { Ask::Size { fb_mib, .. } => *fb_mib, Ask::Type { .. } => 0 };
        let first = (0..reqs.len()).min_by_key(|&i| (std::cmp::Reverse(fb(&reqs[i])), i)).unwrap();
        let offered = obs.iter().any(|o| {
            let b = cat().board(o.gpu.board.as_deref().unwrap()).unwrap();
            tessera_vgpu::placer::resolve_ask(b, &reqs[first].ask, o.mig_on).is_some()
        });
        prop_assert_eq!(offered, p.placed.first().is_some_and(|x| x.0 == first), "request {} ({:?})", first, reqs[first]);
        let wanted: u32 = reqs.iter().map(|r| r.count).sum();
        let unplaced: u32 = p.unplaced.iter().map(|u| u.count).sum();
        prop_assert_eq!(p.placed.len() as u32 + unplaced, wanted);
        apply_all(&mut h, &p);
        let total: usize = h.gpus().unwrap().iter().map(|g| h.vgpus(g).unwrap().len()).sum();
        prop_assert_eq!(total, p.placed.len());
    }
}
