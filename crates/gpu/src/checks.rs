//! Refusals that both backends make: the same check, the same [`GpuError`] variant and the same
//! words, written once so that [`crate::sim::SimBackend`] and [`crate::nvml::NvmlBackend`]
//! cannot drift apart (the contract suite in `tests/contract.rs` holds them to it).

use crate::backend::IdleInstance;
use crate::error::GpuError;

/// [`GpuError::NotSupported`] for listing GPU instances while MIG mode is off.
pub(crate) fn mig_off_for_list(op: String) -> GpuError {
    GpuError::NotSupported {
        op,
        reason: "MIG mode is disabled".into(),
    }
}

/// [`GpuError::NotSupported`] for creating a GPU instance while MIG mode is off, saying how to
/// turn it on.
pub(crate) fn mig_off_for_create(op: String) -> GpuError {
    GpuError::NotSupported {
        op,
        reason: "MIG mode is disabled; enable it with `tessera agent mig-mode --enable`".into(),
    }
}

/// [`GpuError::NotSupported`] for the whole GPU's compute mode while MIG mode is on: nvml.h
/// gives each MIG device its own compute mode, read and set through the MIG device handle.
pub(crate) fn compute_mode_is_per_mig_device(op: String) -> GpuError {
    GpuError::NotSupported {
        op,
        reason: "MIG mode is enabled, so the compute mode belongs to each MIG device; read or \
                 set it per GPU instance (`instance_compute_mode`)"
            .into(),
    }
}

/// [`GpuError::InvalidArgument`] unless `start` is one of `profile`'s `placements`.
pub(crate) fn check_placement(
    op: &str,
    profile: &str,
    placements: &[u8],
    start: u8,
) -> Result<(), GpuError> {
    if placements.contains(&start) {
        return Ok(());
    }
    Err(GpuError::InvalidArgument {
        op: op.into(),
        detail: format!("{start} is not a placement of {profile}; allowed starts: {placements:?}"),
    })
}

/// [`GpuError::NotFound`]: the GPU has no GPU instance with this ID.
pub(crate) fn no_such_gi(op: String, gpu: u32, gi_id: u32) -> GpuError {
    GpuError::NotFound {
        op,
        detail: format!("GPU {gpu} has no GPU instance {gi_id}"),
    }
}

/// How `destroy_gi` names itself in errors: `GPU 0: destroy GPU instance 3g.40gb@4 (GI 2)`.
pub(crate) fn destroy_op(instance: &IdleInstance) -> String {
    format!(
        "GPU {}: destroy GPU instance {} (GI {})",
        instance.gpu(),
        instance.spec(),
        instance.gi_id()
    )
}

/// Whether the instance `observed` names may be destroyed now. `now` is what the GPU shows
/// under its GI ID at this moment, as (profile, start, PIDs), or `None` when no GI has the ID.
/// - no such GI, or it has another profile or start now (the ID was reused) →
///   [`GpuError::NotFound`];
/// - a process runs on it → [`GpuError::InUse`] with the PIDs.
pub(crate) fn check_destroyable(
    op: &str,
    observed: &IdleInstance,
    now: Option<(&str, u8, &[u32])>,
) -> Result<(), GpuError> {
    let gi_id = observed.gi_id();
    let Some((profile, start, pids)) = now else {
        return Err(no_such_gi(op.into(), observed.gpu(), gi_id));
    };
    if profile != observed.profile() || start != observed.start() {
        return Err(GpuError::NotFound {
            op: op.into(),
            detail: format!("GI {gi_id} is now {profile}@{start}, not the instance observed"),
        });
    }
    if !pids.is_empty() {
        return Err(GpuError::InUse {
            op: op.into(),
            pids: pids.to_vec(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::GpuInstance;

    fn observed() -> IdleInstance {
        GpuInstance {
            gpu: 0,
            gi_id: 3,
            profile: "2g.20gb".into(),
            profile_id: 14,
            start: 4,
            size: 2,
            uuid: None,
            compute_instances: vec![],
            pids: vec![],
        }
        .idle()
        .unwrap()
    }

    #[test]
    fn destroy_checks_name_the_gi_and_what_changed() {
        let o = observed();
        assert_eq!(
            destroy_op(&o),
            "GPU 0: destroy GPU instance 2g.20gb@4 (GI 3)"
        );
        let e = check_destroyable("op", &o, None).unwrap_err();
        assert!(matches!(e, GpuError::NotFound { .. }));
        assert!(e.to_string().contains("GPU 0 has no GPU instance 3"), "{e}");
        let e = check_destroyable("op", &o, Some(("1g.10gb", 4, &[]))).unwrap_err();
        assert!(e.to_string().contains("GI 3 is now 1g.10gb@4"), "{e}");
        let e = check_destroyable("op", &o, Some(("2g.20gb", 4, &[7, 9]))).unwrap_err();
        assert!(matches!(e, GpuError::InUse { ref pids, .. } if pids == &[7, 9]));
        check_destroyable("op", &o, Some(("2g.20gb", 4, &[]))).unwrap();
    }

    #[test]
    fn placements_are_checked_and_listed() {
        check_placement("op", "3g.40gb", &[0, 4], 4).unwrap();
        let e = check_placement("op", "3g.40gb", &[0, 4], 1).unwrap_err();
        assert!(matches!(e, GpuError::InvalidArgument { .. }));
        assert!(
            e.to_string()
                .contains("1 is not a placement of 3g.40gb; allowed starts: [0, 4]"),
            "{e}"
        );
    }
}
