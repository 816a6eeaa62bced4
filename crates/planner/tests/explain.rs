//! Why waiting requests wait (`plan_explained`): one reason per unassigned request, in input
//! order, naming the obstacle with its numbers; the plan is the one `plan()` makes; the exact
//! optimum never leaves a request waiting that some GPU could still take.

use proptest::prelude::*;
use tessera_model::Catalog;
use tessera_planner::gen::small_instance;
use tessera_planner::{
    plan, plan_explained, ClusterSpec, GpuMode, GpuSpec, InstanceSpec, MpsClientSpec, NodeSpec,
    PlanOptions, Policy, RequestSpec, WaitReason, Waiting,
};

fn inst(profile: &str, start: u8, used: bool) -> InstanceSpec {
    InstanceSpec {
        profile: profile.into(),
        start,
        used,
    }
}

fn node(name: &str, gpus: Vec<GpuSpec>) -> ClusterSpec {
    ClusterSpec {
        nodes: vec![NodeSpec {
            name: name.into(),
            gpus,
        }],
    }
}

fn explained(c: &ClusterSpec, r: &[RequestSpec], policy: Policy) -> Vec<Waiting> {
    let opts = PlanOptions::with_policy(policy);
    let (p, w) = plan_explained(Catalog::builtin(), c, r, &opts).unwrap();
    assert_eq!(p, plan(Catalog::builtin(), c, r, &opts).unwrap());
    let ids: Vec<&str> = w.iter().map(|w| w.request.as_str()).collect();
    assert_eq!(
        ids, p.unassigned,
        "one reason per waiting request, in order"
    );
    w
}

fn only(w: &[Waiting], id: &str) -> Waiting {
    w.iter().find(|w| w.request == id).unwrap().clone()
}

#[test]
fn a_profile_no_mig_gpu_has_names_the_models_here() {
    let c = node("n", vec![GpuSpec::mig("a100-40gb", vec![])]);
    let w = explained(&c, &[RequestSpec::mig("r", "1g.10gb+me")], Policy::Tessera);
    // a100-40gb has no 1g.10gb+me; the catalog knows it (h100), so it is not bad input.
    assert_eq!(w[0].reason, WaitReason::NoGpuWithProfile, "{w:?}");
    assert!(
        w[0].detail.contains("the MIG GPUs here are a100-40gb"),
        "{w:?}"
    );

    let mut mps = GpuSpec::mig("h100-80gb", vec![]);
    mps.mode = GpuMode::Mps;
    let c = node("n", vec![GpuSpec::mig("a100-40gb", vec![]), mps]);
    let w = explained(&c, &[RequestSpec::mig("r", "1g.10gb+me")], Policy::Tessera);
    assert_eq!(w[0].reason, WaitReason::NoGpuWithProfile);
    assert!(
        w[0].detail.contains("node `n` GPU 1 (mps mode)"),
        "names the GPU that has it in another mode: {w:?}"
    );
}

#[test]
fn no_valid_start_reports_the_largest_free_region() {
    // Busy 1g.10gb at 0 and 4 on an H100: 4g.40gb (starts 0 only) cannot go anywhere; 3 slices
    // (1-3) and 3 (5-7) are free, the first is reported.
    let c = node(
        "n",
        vec![GpuSpec::mig(
            "h100-80gb",
            vec![inst("1g.10gb", 0, true), inst("1g.10gb", 4, true)],
        )],
    );
    let w = explained(&c, &[RequestSpec::mig("big", "4g.40gb")], Policy::Tessera);
    assert_eq!(w[0].reason, WaitReason::NoRoom, "{w:?}");
    let d = &w[0].detail;
    assert!(
        d.contains("4g.40gb needs 4 free memory slices at a valid start (0)"),
        "{d}"
    );
    assert!(
        d.contains("the largest free region is 3 slices (slices 1-3)"),
        "{d}"
    );
    assert!(d.contains("node `n` GPU 0 (h100-80gb)"), "{d}");
}

#[test]
fn compute_slices_and_busy_instances_are_named() {
    // A100 40GB: 4g.20gb@0 busy, 3g.20gb@4 busy: 7 of 7 compute slices used.
    let c = node(
        "n",
        vec![GpuSpec::mig(
            "a100-40gb",
            vec![inst("4g.20gb", 0, true), inst("3g.20gb", 4, true)],
        )],
    );
    let r = [
        RequestSpec::mig("a", "3g.20gb"),
        RequestSpec::mig("b", "1g.5gb"),
    ];
    let w = explained(&c, &r, Policy::Tessera);
    assert_eq!(only(&w, "a").reason, WaitReason::InstancesBusy, "{w:?}");
    assert!(
        only(&w, "a")
            .detail
            .contains("1 × 3g.20gb busy or assigned")
            && only(&w, "a")
                .detail
                .contains("needs 3 compute slices, 0 of 7 are free"),
        "{w:?}"
    );
    assert_eq!(only(&w, "b").reason, WaitReason::NoRoom, "{w:?}");
}

#[test]
fn an_instance_served_to_an_earlier_request_counts_as_busy() {
    // One 7g.80gb possible; two requests: the second waits on the first's instance.
    let c = node("n", vec![GpuSpec::mig("h100-80gb", vec![])]);
    let r = [
        RequestSpec::mig("first", "7g.80gb"),
        RequestSpec::mig("second", "7g.80gb"),
    ];
    let w = explained(&c, &r, Policy::Tessera);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].request, "second");
    assert_eq!(w[0].reason, WaitReason::InstancesBusy);
}

#[test]
fn mps_room_and_replicas() {
    let mut mps = GpuSpec::mig("h100-80gb", vec![]);
    mps.mode = GpuMode::Mps;
    mps.clients = vec![MpsClientSpec {
        memory_mib: 8192,
        sm_percent: 90,
    }];
    let mut ts = GpuSpec::mig("a30-24gb", vec![]);
    ts.mode = GpuMode::Timeslice;
    ts.replicas = Some(2);
    ts.replicas_used = 2;
    let c = node("n", vec![mps, ts]);
    let r = [
        RequestSpec::mps("m", 1000, 20),
        RequestSpec::timeslice("t"),
        RequestSpec::mig("g", "1g.10gb"),
    ];
    let w = explained(&c, &r, Policy::Tessera);
    assert_eq!(only(&w, "m").reason, WaitReason::MpsRoomExhausted);
    assert!(
        only(&w, "m")
            .detail
            .contains("10 % SM free of the 20 % asked"),
        "{w:?}"
    );
    assert_eq!(only(&w, "t").reason, WaitReason::ReplicasTaken);
    assert_eq!(only(&w, "g").reason, WaitReason::NoGpuWithProfile);

    let c = node("n", vec![GpuSpec::mig("h100-80gb", vec![])]);
    let w = explained(
        &c,
        &[RequestSpec::mps("m", 1000, 20), RequestSpec::timeslice("t")],
        Policy::Tessera,
    );
    assert_eq!(only(&w, "m").reason, WaitReason::NoMpsGpu);
    assert_eq!(only(&w, "t").reason, WaitReason::NoTimesliceGpu);
}

#[test]
fn first_fit_leaving_room_unused_is_not_chosen() {
    // An idle 1g.10gb@0..6 fill; a 2g.20gb needs two of them destroyed: first-fit never does.
    let idle: Vec<InstanceSpec> = (0..7).map(|s| inst("1g.10gb", s, false)).collect();
    let c = node("n", vec![GpuSpec::mig("h100-80gb", idle)]);
    let w = explained(&c, &[RequestSpec::mig("r", "2g.20gb")], Policy::FirstFit);
    assert_eq!(w[0].reason, WaitReason::NotChosen, "{w:?}");
    assert!(
        w[0].detail
            .contains("after destroying idle 1g.10gb@0, 1g.10gb@1")
            && w[0].detail.contains("first-fit never destroys"),
        "{w:?}"
    );
    // tessera destroys them and serves it.
    assert!(explained(&c, &[RequestSpec::mig("r", "2g.20gb")], Policy::Tessera).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The optimum never leaves a request waiting that a GPU could still take, every policy
    /// explains every waiting request, and explanations are deterministic.
    #[test]
    fn exact_never_leaves_servable_requests_and_reasons_are_deterministic(seed in any::<u64>()) {
        let (c, r) = small_instance(Catalog::builtin(), seed);
        for policy in Policy::ALL {
            let w = explained(&c, &r, policy);
            prop_assert_eq!(&w, &explained(&c, &r, policy));
            for x in &w {
                prop_assert!(!x.detail.is_empty());
                if policy == Policy::Exact {
                    prop_assert!(x.reason != WaitReason::NotChosen, "{:?}", x);
                }
            }
        }
    }
}
