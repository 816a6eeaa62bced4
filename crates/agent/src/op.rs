//! The operations the agent performs on a GPU: a closed enum, each variant documenting when it
//! is legal, and its journal form ([`OpRecord`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_gpu::IdleInstance;

/// One change to one GPU. [`crate::plan_ops`] emits them in an order the hardware accepts:
/// every `DestroyGi`, then every `CreateCi`, then every `CreateGi`, larger profiles first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Destroy a GPU instance and its compute instances. Legal only for an instance that was
    /// observed without processes (the [`IdleInstance`] is the proof; the backend checks
    /// again and answers `InUse`) and that the desired layout does not keep.
    DestroyGi {
        /// The idle instance observed.
        instance: IdleInstance,
    },
    /// Create the default compute instance of a GPU instance that has none (left so by a
    /// crash between the two creations). Legal only for a GI that the desired layout keeps.
    CreateCi {
        /// The GPU.
        gpu: u32,
        /// The GPU instance.
        gi_id: u32,
        /// Its profile.
        profile: String,
        /// Its placement start.
        start: u8,
    },
    /// Create a GPU instance at an explicit placement, with its default compute instance.
    /// Legal only when MIG mode is on and the placement is free once the destroys before it
    /// are done.
    CreateGi {
        /// The GPU.
        gpu: u32,
        /// Profile name.
        profile: String,
        /// Placement start.
        start: u8,
    },
}

impl Op {
    /// The GPU the op changes.
    pub fn gpu(&self) -> u32 {
        match self {
            Op::DestroyGi { instance } => instance.gpu(),
            Op::CreateCi { gpu, .. } | Op::CreateGi { gpu, .. } => *gpu,
        }
    }

    /// The journal form.
    pub fn record(&self) -> OpRecord {
        match self {
            Op::DestroyGi { instance } => OpRecord::DestroyGi {
                gpu: instance.gpu(),
                gi_id: instance.gi_id(),
                profile: instance.profile().to_string(),
                start: instance.start(),
                uuid: instance.uuid().map(str::to_string),
            },
            Op::CreateCi {
                gpu,
                gi_id,
                profile,
                start,
            } => OpRecord::CreateCi {
                gpu: *gpu,
                gi_id: *gi_id,
                profile: profile.clone(),
                start: *start,
            },
            Op::CreateGi {
                gpu,
                profile,
                start,
            } => OpRecord::CreateGi {
                gpu: *gpu,
                profile: profile.clone(),
                start: *start,
            },
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.record().fmt(f)
    }
}

/// What the journal keeps of an [`Op`]: plain data, readable back. It is never executed
/// from the journal; replay only compares it with what the GPU shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpRecord {
    /// See [`Op::DestroyGi`].
    DestroyGi {
        /// The GPU.
        gpu: u32,
        /// The GPU instance.
        gi_id: u32,
        /// Its profile.
        profile: String,
        /// Its start.
        start: u8,
        /// Its MIG device UUID, if it had one.
        uuid: Option<String>,
    },
    /// See [`Op::CreateCi`].
    CreateCi {
        /// The GPU.
        gpu: u32,
        /// The GPU instance.
        gi_id: u32,
        /// Its profile.
        profile: String,
        /// Its start.
        start: u8,
    },
    /// See [`Op::CreateGi`].
    CreateGi {
        /// The GPU.
        gpu: u32,
        /// Profile name.
        profile: String,
        /// Placement start.
        start: u8,
    },
}

impl OpRecord {
    /// The GPU the op changes.
    pub fn gpu(&self) -> u32 {
        match self {
            OpRecord::DestroyGi { gpu, .. }
            | OpRecord::CreateCi { gpu, .. }
            | OpRecord::CreateGi { gpu, .. } => *gpu,
        }
    }

    /// Whether the op's effect shows in an observation of its GPU.
    pub fn visible_in(&self, instances: &[tessera_gpu::GpuInstance]) -> bool {
        match self {
            OpRecord::DestroyGi {
                gi_id,
                profile,
                start,
                ..
            } => !instances
                .iter()
                .any(|i| i.gi_id == *gi_id && &i.profile == profile && i.start == *start),
            OpRecord::CreateCi { gi_id, .. } => instances
                .iter()
                .any(|i| i.gi_id == *gi_id && !i.compute_instances.is_empty()),
            OpRecord::CreateGi { profile, start, .. } => instances
                .iter()
                .any(|i| &i.profile == profile && i.start == *start),
        }
    }
}

impl fmt::Display for OpRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpRecord::DestroyGi {
                gpu,
                gi_id,
                profile,
                start,
                ..
            } => write!(f, "GPU {gpu}: destroy {profile}@{start} (GI {gi_id})"),
            OpRecord::CreateCi {
                gpu,
                gi_id,
                profile,
                start,
            } => write!(
                f,
                "GPU {gpu}: create the compute instance of {profile}@{start} (GI {gi_id})"
            ),
            OpRecord::CreateGi {
                gpu,
                profile,
                start,
            } => write!(f, "GPU {gpu}: create {profile}@{start}"),
        }
    }
}
