//! One allocation ledger for `--mode both`, so a slice is never handed to a pod through
//! both kubelet paths: a device the device-plugin path allocated (`Allocate`) cannot be
//! prepared for a DRA claim, and a device prepared for a claim cannot be allocated.
//!
//! Entries are keyed by the device-plugin device ID (`MIG-…`, `GPU-…`, `GPU-…::mps-<id>`).
//! The ledger stamps the published [`NodeInventory`] with what each path took
//! ([`NodeInventory::allocated`]): the device plugins list a DRA-held device `Unhealthy` (so
//! the kubelet does not pick it) and the ResourceSlices leave out a device the device-plugin
//! path holds (so kube-scheduler does not pick it). The device-plugin API has no release
//! call: an `Allocate`d device is released when the kubelet's PodResources stops listing it
//! (checked at each apply of the node runner), after a grace period that covers the time
//! between `Allocate` and the pod's listing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::KubeletError;
use crate::inventory::NodeInventory;

/// Which kubelet path holds a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocPath {
    /// A device plugin's `Allocate`.
    DevicePlugin,
    /// A prepared DRA claim.
    Dra,
}

#[derive(Debug, Clone)]
struct Entry {
    path: AllocPath,
    by: String,
    since: Instant,
}

/// The shared ledger (see the module documentation).
#[derive(Debug)]
pub struct Ledger {
    entries: Mutex<BTreeMap<String, Entry>>,
    inventory: Mutex<Option<watch::Sender<NodeInventory>>>,
    grace: Duration,
}

/// How long an `Allocate`d device stays taken before PodResources must list it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(120);

impl Ledger {
    /// An empty ledger; `grace`: see [`DEFAULT_GRACE`].
    pub fn new(grace: Duration) -> Ledger {
        Ledger {
            entries: Mutex::new(BTreeMap::new()),
            inventory: Mutex::new(None),
            grace,
        }
    }

    /// Stamp every inventory `tx` publishes from now on (the node runner calls this).
    pub fn attach(&self, tx: watch::Sender<NodeInventory>) {
        *self.inventory.lock().expect("ledger lock") = Some(tx);
        self.republish();
    }

    /// Take device `id` for `path` (`by` names the holder, e.g. `claim default/c1`). Taking
    /// it again for the same path is fine; a device the other path holds is refused.
    pub fn take(&self, id: &str, path: AllocPath, by: &str) -> Result<(), KubeletError> {
        {
            let mut e = self.entries.lock().expect("ledger lock");
            if let Some(old) = e.get(id) {
                if old.path != path {
                    return Err(KubeletError::Invalid(format!(
                        "device {id} is held through the {} path by {}; in --mode both one slice serves one path: pick another device, or wait until it is released",
                        match old.path {
                            AllocPath::DevicePlugin => "device-plugin",
                            AllocPath::Dra => "DRA",
                        },
                        old.by
                    )));
                }
            }
            e.insert(
                id.to_string(),
                Entry {
                    path,
                    by: by.to_string(),
                    since: Instant::now(),
                },
            );
        }
        self.republish();
        Ok(())
    }

    /// Release device `id` if `path` holds it.
    pub fn release(&self, id: &str, path: AllocPath) {
        let removed = {
            let mut e = self.entries.lock().expect("ledger lock");
            match e.get(id) {
                Some(old) if old.path == path => e.remove(id).is_some(),
                _ => false,
            }
        };
        if removed {
            self.republish();
        }
    }

    /// Release the device-plugin entries PodResources no longer lists (`listed`: every
    /// device ID it lists), once older than the grace period.
    pub fn release_unlisted(&self, listed: &BTreeSet<String>) {
        let removed = {
            let mut e = self.entries.lock().expect("ledger lock");
            let before = e.len();
            e.retain(|id, x| {
                x.path != AllocPath::DevicePlugin
                    || listed.contains(id)
                    || x.since.elapsed() < self.grace
            });
            before != e.len()
        };
        if removed {
            self.republish();
        }
    }

    /// Device ID → the path that holds it.
    pub fn snapshot(&self) -> BTreeMap<String, AllocPath> {
        self.entries
            .lock()
            .expect("ledger lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.path))
            .collect()
    }

    /// Write the ledger into an inventory.
    pub fn stamp(&self, inv: &mut NodeInventory) {
        inv.allocated = self.snapshot();
    }

    fn republish(&self) {
        let tx = self.inventory.lock().expect("ledger lock").clone();
        if let Some(tx) = tx {
            let now = self.snapshot();
            tx.send_if_modified(|inv| {
                let changed = inv.allocated != now;
                if changed {
                    inv.allocated.clone_from(&now);
                }
                changed
            });
        }
    }
}
