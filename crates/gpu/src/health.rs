//! Health from XID events. An XID on a GPU marks the whole GPU, and so every MIG instance on
//! it, unhealthy: a device fault (ECC, fallen off the bus, engine hang) can hit any slice of the
//! GPU, even when NVML attributes the event to one GPU instance. (The NVIDIA device plugin
//! marks only the attributed device; we deliberately do more.) XIDs that report an
//! application's own error (the same list the device plugin skips by default) are ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::backend::GpuEvent;

/// XIDs caused by an application rather than the device: 13 (graphics engine exception),
/// 31 (MMU fault), 43 (channel reset by a fault), 45 (preemptive cleanup), 68 (video decoder
/// exception), 109 (context switch timeout).
pub const APPLICATION_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

/// Health of a GPU or of an instance on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// No device XID seen.
    Healthy,
    /// Device XIDs seen on the GPU, in the order they came.
    Unhealthy {
        /// The XID numbers.
        xids: Vec<u64>,
    },
}

impl Health {
    /// Whether healthy.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Folds XID events into per-GPU health. Pure: feed it events, ask it questions.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    ignored: BTreeSet<u64>,
    bad: BTreeMap<u32, Vec<u64>>,
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker::new(APPLICATION_XIDS)
    }
}

impl HealthTracker {
    /// A tracker that ignores these XIDs.
    pub fn new(ignored: impl IntoIterator<Item = u64>) -> Self {
        HealthTracker {
            ignored: ignored.into_iter().collect(),
            bad: BTreeMap::new(),
        }
    }

    /// Take an event into account; returns whether it made the GPU unhealthy.
    pub fn observe(&mut self, event: &GpuEvent) -> bool {
        if self.ignored.contains(&event.xid) {
            return false;
        }
        self.bad.entry(event.gpu).or_default().push(event.xid);
        true
    }

    /// Health of a GPU.
    pub fn gpu(&self, gpu: u32) -> Health {
        match self.bad.get(&gpu) {
            Some(xids) => Health::Unhealthy { xids: xids.clone() },
            None => Health::Healthy,
        }
    }

    /// Health of a GPU instance: that of its GPU, whichever instance the XID named.
    pub fn instance(&self, gpu: u32, _gi_id: u32) -> Health {
        self.gpu(gpu)
    }

    /// Forget a GPU's XIDs (after the operator reset it).
    pub fn clear(&mut self, gpu: u32) {
        self.bad.remove(&gpu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xid(gpu: u32, xid: u64, gi: Option<u32>) -> GpuEvent {
        GpuEvent {
            gpu,
            xid,
            gi_id: gi,
            ci_id: None,
        }
    }

    #[test]
    fn an_xid_on_one_instance_marks_every_instance_of_its_gpu() {
        let mut h = HealthTracker::default();
        assert!(h.observe(&xid(0, 79, Some(3))));
        for gi in [1, 2, 3, 9] {
            assert_eq!(h.instance(0, gi), Health::Unhealthy { xids: vec![79] });
        }
        assert!(h.instance(1, 3).is_healthy());
        h.clear(0);
        assert!(h.gpu(0).is_healthy());
    }

    #[test]
    fn application_xids_are_ignored() {
        let mut h = HealthTracker::default();
        assert!(!h.observe(&xid(0, 13, Some(1))));
        assert!(!h.observe(&xid(0, 43, None)));
        assert!(h.gpu(0).is_healthy());
        assert!(h.observe(&xid(0, 48, None)));
        assert!(h.observe(&xid(0, 94, None)));
        assert_eq!(h.gpu(0), Health::Unhealthy { xids: vec![48, 94] });
    }
}
