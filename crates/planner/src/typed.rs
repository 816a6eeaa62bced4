//! The typed planner API: a problem made of the model's own types and a plan made of them too.
//!
//! Callers that already hold resolved values — the daemon's scheduler, the simulator — build a
//! [`Problem`] from [`GpuModel`] references, [`Placed`] instances and [`ProfileIdx`] profiles,
//! name their requests with their own [`RequestId`]s, and get back an [`Outcome`] indexed the
//! same way: per GPU (node index, GPU index) the new layout as [`Placed`] with the creates and
//! destroys, and per served request the GPU and the slice. No name is parsed or printed on this
//! path. The YAML/JSON documents of `tessera plan` ([`crate::ClusterSpec`],
//! [`crate::RequestsFile`]) are converted to a [`Problem`] in one place (`input::resolve`) and the
//! [`Outcome`] back to the named [`crate::Plan`] in one place (`input::Labels::plan`).
//!
//! # Held regions
//! A MIG GPU may carry [`Hold`]s: a placement reserved for a waiting request (its holder). A
//! plan keeps every hold whole:
//! - no instance overlapping a held region (or in a media-engine conflict with it) is created
//!   or given to a request, except the region itself for its holder;
//! - the region still fits next to the GPU's busy and newly assigned instances that do not
//!   overlap it (compute slices and instance counts included), so the instances in its way now
//!   only ever end;
//! - when the holder is among the requests and its region fits now (next to the busy
//!   instances; idle instances in the way are destroyed), the holder gets exactly that region.
//!
//! Idle instances that overlap a held region are left as they are (neither reused nor
//! destroyed) unless the holder takes the region.

use tessera_model::{GpuModel, Placed, ProfileIdx};

use crate::input::{GpuMode, MpsClientSpec, MpsRequest};
use crate::plan::PlanStats;

/// A request's id, chosen by the caller; unique within one [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Everything a planning run sees: the nodes with their GPUs and the waiting requests.
#[derive(Debug, Clone, Default)]
pub struct Problem<'c> {
    /// The nodes; a node's index is its position here. The `nos` policy walks nodes in this
    /// order.
    pub nodes: Vec<Node<'c>>,
    /// The waiting requests, in arrival order (ties between equal requests go to the earlier).
    pub requests: Vec<Request<'c>>,
}

/// One node: its GPUs, a GPU's index being its position in the list.
#[derive(Debug, Clone, Default)]
pub struct Node<'c> {
    /// The GPUs.
    pub gpus: Vec<Gpu<'c>>,
}

/// One GPU: its model and how it is shared now.
#[derive(Debug, Clone)]
pub struct Gpu<'c> {
    /// The GPU's model (from a catalog).
    pub model: &'c GpuModel,
    /// Its mode and current slices.
    pub sharing: Sharing,
}

/// A GPU's mode with what runs on it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sharing {
    /// MIG: the GPU instances that exist now and the regions held for waiting requests.
    Mig {
        /// Current instances.
        instances: Vec<Instance>,
        /// Regions held for waiting requests (see the module docs).
        holds: Vec<Hold>,
    },
    /// MPS: the clients that run now.
    Mps {
        /// Current clients with their limits.
        clients: Vec<MpsClientSpec>,
    },
    /// Time-slicing.
    Timeslice {
        /// Replicas offered (default [`crate::PlanOptions::timeslice_replicas`]).
        replicas: Option<u32>,
        /// Replicas in use now.
        used: u32,
    },
}

impl Sharing {
    /// A MIG GPU with these instances and no holds.
    pub fn mig(instances: Vec<Instance>) -> Sharing {
        Sharing::Mig {
            instances,
            holds: Vec::new(),
        }
    }

    /// The mode.
    pub fn mode(&self) -> GpuMode {
        match self {
            Sharing::Mig { .. } => GpuMode::Mig,
            Sharing::Mps { .. } => GpuMode::Mps,
            Sharing::Timeslice { .. } => GpuMode::Timeslice,
        }
    }
}

/// A MIG GPU instance that exists now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// Profile and placement.
    pub placed: Placed,
    /// Whether a workload uses it (never destroyed or moved).
    pub busy: bool,
}

/// A MIG placement reserved for a waiting request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The reserved placement (the holder's profile at a start).
    pub region: Placed,
    /// The request it is reserved for (it need not be among the problem's requests).
    pub holder: RequestId,
}

/// One waiting request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'c> {
    /// The caller's id.
    pub id: RequestId,
    /// What it asks for.
    pub ask: Ask<'c>,
    /// Weight in the objective (at least 1).
    pub priority: u32,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'c> {
    /// A MIG instance of this profile of `model`; GPUs of other models serve it with their
    /// profile of the same name, if they have one.
    Mig {
        /// The model the profile index refers to.
        model: &'c GpuModel,
        /// The profile.
        profile: ProfileIdx,
    },
    /// An MPS client with these limits.
    Mps(MpsRequest),
    /// One time-slice replica.
    Timeslice,
}

/// The typed plan: what changes on each GPU and which request gets which slice.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<'c> {
    /// Every GPU in input order (node, then GPU index); with
    /// [`crate::PlanOptions::only_changed`], only those that change or get a request.
    pub gpus: Vec<GpuOutcome<'c>>,
    /// Served requests, in input order.
    pub grants: Vec<Grant<'c>>,
    /// Requests left waiting, in input order.
    pub unassigned: Vec<RequestId>,
    /// Totals.
    pub stats: PlanStats,
}

/// One GPU's part of an [`Outcome`].
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOutcome<'c> {
    /// Node index.
    pub node: usize,
    /// GPU index on the node.
    pub gpu: usize,
    /// The GPU's model.
    pub model: &'c GpuModel,
    /// Its mode (unchanged).
    pub mode: GpuMode,
    /// MIG: every instance after the plan, in (start, profile) order, busy ones included.
    pub layout: Vec<Placed>,
    /// MIG: instances to create, in (start, profile) order; create them after the destroys.
    pub create: Vec<Placed>,
    /// MIG: idle instances to destroy, in (start, profile) order.
    pub destroy: Vec<Placed>,
}

impl GpuOutcome<'_> {
    /// Whether the plan creates or destroys anything on this GPU.
    pub fn changed(&self) -> bool {
        !self.create.is_empty() || !self.destroy.is_empty()
    }
}

/// A served request and its slice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant<'c> {
    /// The request.
    pub request: RequestId,
    /// Node index.
    pub node: usize,
    /// GPU index on the node.
    pub gpu: usize,
    /// The GPU's model (what a MIG slice's profile index refers to).
    pub model: &'c GpuModel,
    /// The slice.
    pub slice: Slice,
}

/// The slice of a [`Grant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// A MIG instance, free in the GPU's new layout.
    Mig(Placed),
    /// An MPS client with the request's limits.
    Mps(MpsRequest),
    /// One time-slice replica.
    Timeslice,
}
