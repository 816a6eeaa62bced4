//! The plan: every GPU's new layout with the instances to create and destroy, which request
//! gets which slice, what stays unassigned, and the totals. It is a value (serde), stable byte
//! for byte for the same input, and documented field by field as a wire format.
//!
//! ```json
//! {"policy": "tessera",
//!  "gpus": [{"node": "node-a", "gpu": 0, "model": "a100-40gb", "mode": "mig",
//!            "layout": [{"profile": "3g.20gb", "start": 4}],
//!            "create": [], "destroy": []}],
//!  "assignments": [{"request": "r1", "node": "node-a", "gpu": 0, "profile": "1g.5gb", "start": 0},
//!                  {"request": "r3", "node": "node-b", "gpu": 1, "memory_mib": 10000, "sm_percent": 20},
//!                  {"request": "r4", "node": "node-b", "gpu": 2, "timeslice": true}],
//!  "unassigned": ["r9"],
//!  "stats": {"served": 3, "served_priority": 7, "operations": 2}}
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::input::GpuMode;
use crate::Policy;

/// A shared, immutable name in a plan (node name, model key, profile name). A plan repeats the
/// same few names thousands of times; each copy of a `Name` shares one allocation, so building
/// a plan copies pointers instead of strings. It reads like a `&str` (`Deref`, `Display`,
/// comparisons with `str` and `String`) and is a plain string on the wire.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(Arc::from(s))
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name(Arc::from(s))
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Name(Arc::from(s.as_str()))
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.0.to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == &*other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Name::from)
    }
}

/// A planning result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The policy that made it.
    pub policy: Policy,
    /// Every GPU of the cluster, in input order (unchanged ones with empty `create`/`destroy`);
    /// with [`crate::PlanOptions::only_changed`], only those that change or get a request.
    pub gpus: Vec<GpuPlan>,
    /// Served requests, in input order.
    pub assignments: Vec<Assignment>,
    /// Ids of requests left waiting, in input order.
    pub unassigned: Vec<String>,
    /// Totals.
    pub stats: PlanStats,
}

/// One GPU's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuPlan {
    /// Node name.
    pub node: Name,
    /// GPU index on the node.
    pub gpu: usize,
    /// Catalog key of the model.
    pub model: Name,
    /// Sharing mode after the plan: the input's, unless `mode_change` is a planned change of
    /// a `mode: auto` GPU.
    pub mode: GpuMode,
    /// MIG: every instance after the plan, sorted by start (busy ones included).
    pub layout: Vec<InstanceRef>,
    /// MIG: instances to create, sorted by start. Create them after the destroys.
    pub create: Vec<InstanceRef>,
    /// MIG: idle instances to destroy, sorted by start.
    pub destroy: Vec<InstanceRef>,
    /// A `mode: auto` GPU whose mode the plan changes, or would change but cannot (see
    /// [`ModeChange::blocked`]); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_change: Option<ModeChange>,
}

/// A mode change of a `mode: auto` GPU (see `docs/mode-auto.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChange {
    /// The mode now.
    pub from: GpuMode,
    /// The mode the rule chose.
    pub to: GpuMode,
    /// Why, in words: which waiting requests it serves.
    pub reason: String,
    /// The served priority the change adds to the plan (what it was chosen for).
    pub gain: u64,
    /// Set when the change is not made: the plan keeps the GPU in `from` and says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<ModeBlock>,
}

/// Why a mode change the rule would make is not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeBlock {
    /// Work runs on the GPU; a mode changes only while it is idle.
    Busy,
    /// The backend cannot change this GPU's mode now (`can_switch: false`: it would need a GPU
    /// reset, or the GPU cannot switch at all).
    CannotSwitch,
}

impl ModeBlock {
    /// The stable code (`busy`, `cannot-switch`).
    pub fn as_str(self) -> &'static str {
        match self {
            ModeBlock::Busy => "busy",
            ModeBlock::CannotSwitch => "cannot-switch",
        }
    }
}

impl fmt::Display for ModeBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl GpuPlan {
    /// Whether the plan creates or destroys anything on this GPU (a mode change is
    /// [`GpuPlan::mode_change`]).
    pub fn changed(&self) -> bool {
        !self.create.is_empty() || !self.destroy.is_empty()
    }

    /// The planned (not blocked) mode change, if any.
    pub fn switches_mode(&self) -> Option<&ModeChange> {
        self.mode_change.as_ref().filter(|c| c.blocked.is_none())
    }
}

/// A MIG instance by profile name and placement start.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceRef {
    /// Profile name, e.g. `3g.40gb`.
    pub profile: Name,
    /// Placement start on the memory-slice grid.
    pub start: u8,
}

/// A served request and the slice it gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Request id.
    pub request: String,
    /// Node name.
    pub node: Name,
    /// GPU index on the node.
    pub gpu: usize,
    /// The slice: a MIG instance, or the limits of an MPS client or time-slice replica.
    #[serde(flatten)]
    pub slice: AssignedSlice,
}

/// The slice of an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AssignedSlice {
    /// A MIG instance that is free in the GPU's new layout.
    Mig {
        /// Profile name.
        profile: Name,
        /// Placement start.
        start: u8,
    },
    /// An MPS client with these limits.
    Mps {
        /// Pinned device-memory limit in MiB.
        memory_mib: u64,
        /// Active-thread (SM) percentage.
        sm_percent: u32,
    },
    /// One time-slice replica (time-slicing has no limits to carry).
    Timeslice {
        /// Always `true`.
        timeslice: bool,
    },
}

/// Totals of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PlanStats {
    /// Requests served.
    pub served: usize,
    /// Sum of the served requests' priorities (the first objective).
    pub served_priority: u64,
    /// MIG instances to create plus instances to destroy (the second objective).
    pub operations: usize,
}

impl Plan {
    /// The GPUs the plan changes.
    pub fn changed_gpus(&self) -> impl Iterator<Item = &GpuPlan> {
        self.gpus.iter().filter(|g| g.changed())
    }

    /// The plan as pretty JSON (stable byte for byte).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans always serialize")
    }
}
