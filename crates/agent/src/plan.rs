//! The pure diff between a desired layout and an observed GPU: which instances to keep,
//! destroy and create, or why the GPU must be left alone ([`Refusal`]). No I/O, no clock.

use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_gpu::GpuInstance;
use tessera_model::{GpuModel, Placed};

use crate::op::Op;

/// What the agent saw on one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedGpu {
    /// The GPU's index.
    pub gpu: u32,
    /// Whether MIG mode is on now.
    pub mig_enabled: bool,
    /// Its GPU instances (empty when MIG mode is off).
    pub instances: Vec<GpuInstance>,
}

/// A busy instance the desired layout would remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyConflict {
    /// `PROFILE@START` of the busy instance.
    pub instance: String,
    /// Its GI ID.
    pub gi_id: u32,
    /// Its MIG device UUID.
    pub uuid: Option<String>,
    /// The processes on it.
    pub pids: Vec<u32>,
    /// Desired instances that overlap it (empty: it is simply not in the desired layout).
    pub overlapped_by: Vec<String>,
}

impl fmt::Display for BusyConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pids: Vec<String> = self.pids.iter().map(|p| p.to_string()).collect();
        write!(
            f,
            "busy instance {} (GI {}{}) runs process(es) {}",
            self.instance,
            self.gi_id,
            self.uuid
                .as_deref()
                .map(|u| format!(", {u}"))
                .unwrap_or_default(),
            pids.join(", ")
        )?;
        if self.overlapped_by.is_empty() {
            write!(f, " and the desired layout does not keep it")
        } else {
            write!(
                f,
                " and the desired layout puts {} over it",
                self.overlapped_by.join(", ")
            )
        }
    }
}

/// Why a GPU was left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    /// The desired layout would remove or overlap busy instances.
    #[error("GPU {gpu}: refused, nothing changed: {}; stop those processes or keep their instances in the layout", list(.busy))]
    Busy {
        /// The GPU.
        gpu: u32,
        /// Every busy instance in the way.
        busy: Vec<BusyConflict>,
    },
    /// The desired layout breaks the model's rules.
    #[error("GPU {gpu} ({model}): the desired layout is invalid: {}", .violations.join("; "))]
    InvalidLayout {
        /// The GPU.
        gpu: u32,
        /// The model key.
        model: String,
        /// Every broken rule.
        violations: Vec<String>,
    },
    /// MIG mode is off, and the desired layout has instances.
    #[error("GPU {gpu}: MIG mode is disabled; enable it first with `tessera agent mig-mode --gpu {gpu} --enable`")]
    MigDisabled {
        /// The GPU.
        gpu: u32,
    },
}

fn list(busy: &[BusyConflict]) -> String {
    busy.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl Refusal {
    /// Whether the refusal is about busy instances (a valid request that cannot be met now),
    /// as opposed to bad input.
    pub fn is_busy(&self) -> bool {
        matches!(self, Refusal::Busy { .. })
    }
}

/// The operations that take `observed` to `desired`, or why not.
///
/// - An observed instance with the same profile and start as a desired one is kept (its UUID
///   survives); if it lacks its compute instance, a [`Op::CreateCi`] completes it.
/// - Every other observed instance is destroyed ([`Op::DestroyGi`]), which is legal only when
///   idle: if any of them is busy, the whole GPU is refused ([`Refusal::Busy`]) naming each
///   busy instance, its processes and the desired instances that overlap it. No op is
///   returned in that case, so nothing on the GPU changes.
/// - Each missing desired instance is created ([`Op::CreateGi`]).
///
/// Order: destroys (by start), then compute-instance completions, then creates with larger
/// profiles first (compute slices, then memory slices, descending; then start). Creating
/// large profiles first is what the hardware accepts (on A100, a 3-2-1-1 geometry needs
/// 3g.20gb created before the smaller ones, or NVML answers insufficient resources). Every
/// intermediate layout is a subset of either the observed or the desired layout, so none
/// breaks a rule.
pub fn plan_ops(
    model: &GpuModel,
    desired: &[Placed],
    observed: &ObservedGpu,
) -> Result<Vec<Op>, Refusal> {
    let gpu = observed.gpu;
    let violations = model.validate(desired);
    if !violations.is_empty() {
        return Err(Refusal::InvalidLayout {
            gpu,
            model: model.key.clone(),
            violations: violations.iter().map(|v| v.to_string()).collect(),
        });
    }
    if !observed.mig_enabled {
        if desired.is_empty() {
            return Ok(vec![]);
        }
        return Err(Refusal::MigDisabled { gpu });
    }
    let name = |p: &Placed| model.profile(p.profile).name.clone();
    let keeps = |i: &GpuInstance| {
        desired
            .iter()
            .any(|d| d.start == i.start && name(d).eq_ignore_ascii_case(&i.profile))
    };
    let mut busy = Vec::new();
    let mut destroys = Vec::new();
    let mut completes = Vec::new();
    let mut instances: Vec<&GpuInstance> = observed.instances.iter().collect();
    instances.sort_by_key(|i| (i.start, i.gi_id));
    for inst in instances {
        if keeps(inst) {
            if inst.compute_instances.is_empty() {
                completes.push(Op::CreateCi {
                    gpu,
                    gi_id: inst.gi_id,
                    profile: inst.profile.clone(),
                    start: inst.start,
                });
            }
            continue;
        }
        match inst.idle() {
            Some(idle) => destroys.push(Op::DestroyGi { instance: idle }),
            None => busy.push(BusyConflict {
                instance: inst.spec(),
                gi_id: inst.gi_id,
                uuid: inst.uuid.clone(),
                pids: inst.pids.clone(),
                overlapped_by: desired
                    .iter()
                    .filter(|d| u64::from(model.mask(**d)) & inst.mask() != 0)
                    .map(|d| model.spec(*d))
                    .collect(),
            }),
        }
    }
    if !busy.is_empty() {
        return Err(Refusal::Busy { gpu, busy });
    }
    let mut creates: Vec<Placed> = desired
        .iter()
        .filter(|d| {
            !observed
                .instances
                .iter()
                .any(|i| i.start == d.start && name(d).eq_ignore_ascii_case(&i.profile))
        })
        .copied()
        .collect();
    creates.sort_by_key(|d| {
        let p = model.profile(d.profile);
        (
            std::cmp::Reverse(p.compute_slices),
            std::cmp::Reverse(p.memory_slices),
            d.start,
            d.profile,
        )
    });
    let mut ops = destroys;
    ops.extend(completes);
    ops.extend(creates.into_iter().map(|d| Op::CreateGi {
        gpu,
        profile: name(&d),
        start: d.start,
    }));
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_gpu::ComputeInstance;
    use tessera_model::Catalog;

    fn model(key: &str) -> &'static GpuModel {
        Catalog::builtin().lookup(key).unwrap()
    }

    fn layout(m: &GpuModel, s: &str) -> Vec<Placed> {
        s.split_whitespace()
            .map(|x| m.parse_spec(x).unwrap())
            .collect()
    }

    fn observed(m: &GpuModel, s: &str, busy: &[(u8, u32)]) -> ObservedGpu {
        let instances = layout(m, s)
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let prof = m.profile(p.profile);
                GpuInstance {
                    gpu: 0,
                    gi_id: i as u32 + 1,
                    profile: prof.name.clone(),
                    profile_id: prof.id.unwrap_or(0),
                    start: p.start,
                    size: prof.memory_slices,
                    uuid: Some(format!("MIG-{i}")),
                    compute_instances: vec![ComputeInstance {
                        ci_id: 0,
                        profile_id: 0,
                        uuid: Some(format!("MIG-{i}")),
                    }],
                    pids: busy
                        .iter()
                        .filter(|(s, _)| *s == p.start)
                        .map(|(_, pid)| *pid)
                        .collect(),
                }
            })
            .collect();
        ObservedGpu {
            gpu: 0,
            mig_enabled: true,
            instances,
        }
    }

    fn texts(ops: &[Op]) -> Vec<String> {
        ops.iter().map(|o| o.to_string()).collect()
    }

    #[test]
    fn matching_instances_are_kept_and_the_rest_diffed() {
        let m = model("h100-80gb");
        let obs = observed(m, "3g.40gb@0 2g.20gb@4 1g.10gb@6", &[]);
        let ops = plan_ops(
            m,
            &layout(m, "3g.40gb@0 1g.10gb@4 1g.10gb@5 1g.10gb@6"),
            &obs,
        )
        .unwrap();
        assert_eq!(
            texts(&ops),
            vec![
                "GPU 0: destroy 2g.20gb@4 (GI 2)",
                "GPU 0: create 1g.10gb@4",
                "GPU 0: create 1g.10gb@5",
            ]
        );
        let same = plan_ops(m, &layout(m, "1g.10gb@6 3g.40gb@0 2g.20gb@4"), &obs).unwrap();
        assert!(same.is_empty());
    }

    #[test]
    fn creates_go_large_first_as_the_a100_needs() {
        let m = model("a100-40gb");
        let obs = observed(m, "", &[]);
        let ops = plan_ops(m, &layout(m, "1g.5gb@3 1g.5gb@2 2g.10gb@0 3g.20gb@4"), &obs).unwrap();
        assert_eq!(
            texts(&ops),
            vec![
                "GPU 0: create 3g.20gb@4",
                "GPU 0: create 2g.10gb@0",
                "GPU 0: create 1g.5gb@2",
                "GPU 0: create 1g.5gb@3",
            ]
        );
    }

    #[test]
    fn a_busy_instance_in_the_way_refuses_the_whole_gpu() {
        let m = model("h100-80gb");
        let obs = observed(m, "3g.40gb@0 2g.20gb@4 1g.10gb@6", &[(4, 4242)]);
        let r = plan_ops(m, &layout(m, "3g.40gb@0 3g.40gb@4"), &obs).unwrap_err();
        assert!(r.is_busy());
        assert_eq!(
            r.to_string(),
            "GPU 0: refused, nothing changed: busy instance 2g.20gb@4 (GI 2, MIG-1) runs process(es) 4242 \
             and the desired layout puts 3g.40gb@4 over it; stop those processes or keep their instances in the layout"
        );
        // Keeping it is fine, and the idle neighbours may change.
        let ops = plan_ops(m, &layout(m, "1g.10gb@0 2g.20gb@4"), &obs).unwrap();
        assert_eq!(
            texts(&ops),
            vec![
                "GPU 0: destroy 3g.40gb@0 (GI 1)",
                "GPU 0: destroy 1g.10gb@6 (GI 3)",
                "GPU 0: create 1g.10gb@0",
            ]
        );
        let r = plan_ops(m, &[], &obs).unwrap_err();
        assert!(r.to_string().contains("does not keep it"), "{r}");
    }

    #[test]
    fn invalid_layouts_and_mig_off_are_refused_with_reasons() {
        let m = model("h100-80gb");
        let obs = observed(m, "", &[]);
        let r = plan_ops(m, &layout(m, "3g.40gb@0 2g.20gb@2"), &obs).unwrap_err();
        assert!(matches!(r, Refusal::InvalidLayout { .. }) && r.to_string().contains("overlap"));
        let off = ObservedGpu {
            mig_enabled: false,
            ..obs
        };
        assert!(plan_ops(m, &[], &off).unwrap().is_empty());
        assert!(matches!(
            plan_ops(m, &layout(m, "7g.80gb@0"), &off),
            Err(Refusal::MigDisabled { .. })
        ));
    }

    #[test]
    fn a_gi_left_without_compute_instance_is_completed_or_removed() {
        let m = model("a30");
        let mut obs = observed(m, "2g.12gb@0 2g.12gb@2", &[]);
        obs.instances[1].compute_instances.clear();
        obs.instances[1].uuid = None;
        let ops = plan_ops(m, &layout(m, "2g.12gb@0 2g.12gb@2"), &obs).unwrap();
        assert_eq!(
            texts(&ops),
            vec!["GPU 0: create the compute instance of 2g.12gb@2 (GI 2)"]
        );
        let ops = plan_ops(m, &layout(m, "2g.12gb@0"), &obs).unwrap();
        assert_eq!(texts(&ops), vec!["GPU 0: destroy 2g.12gb@2 (GI 2)"]);
    }
}
