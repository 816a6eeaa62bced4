//! The views the API answers with, built from the store and the scheduler's last snapshot:
//! a request as its owner (or another user) may see it, and the machine's status.

use std::collections::BTreeMap;

use tessera_planner::GpuMode;

use crate::core::queued_in_order;
use crate::daemon::{api_err, lock, Daemon, Snapshot};
use crate::error::ApiError;
use crate::ident::Identity;
use crate::sched::{GpuState, InstanceAt};
use crate::store::RequestRow;
use crate::wire::{GpuView, InstanceView, RequestState, RequestView, ShareView, StatusView};

impl Daemon {
    /// The API view of a row (positions computed from the active queue).
    pub(crate) fn view(&self, r: &RequestRow, who: &Identity) -> RequestView {
        let now = self.now_ms();
        let (position, queue_length) = if r.state == RequestState::Queued {
            let queue = self.queue_order();
            let pos = queue
                .iter()
                .position(|id| *id == r.id)
                .map(|p| p as u32 + 1);
            (pos, Some(queue.len() as u32))
        } else {
            (None, None)
        };
        self.view_with(r, who, now, position, queue_length)
    }

    pub(crate) fn view_with(
        &self,
        r: &RequestRow,
        who: &Identity,
        now: u64,
        position: Option<u32>,
        queue_length: Option<u32>,
    ) -> RequestView {
        let waited_until = r.leased_ms.or(r.ended_ms).unwrap_or(now);
        let running_ms = match r.leased_ms {
            Some(l) => r.ended_ms.unwrap_or(now).saturating_sub(l),
            None => 0,
        };
        let mine = who.may_see(r.uid);
        let wait_reason = if r.state == RequestState::Queued {
            self.inner
                .snapshot
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .waits
                .get(&r.id)
                .cloned()
        } else {
            None
        };
        RequestView {
            id: r.id,
            user: r.user.clone(),
            uid: r.uid,
            ask: r.ask.clone(),
            gpu_model: r.gpu_model.clone(),
            priority: r.priority,
            state: r.state,
            position,
            queue_length,
            submitted_ms: r.submitted_ms,
            waited_ms: waited_until.saturating_sub(r.submitted_ms),
            running_ms,
            // Another user's slice identity, environment and command stay hidden.
            slice: r.slice.clone().filter(|_| mine),
            env: if mine { r.env.clone() } else { BTreeMap::new() },
            command: if mine { r.command.clone() } else { Vec::new() },
            wait_reason,
            exit_code: r.exit_code,
            end_reason: r.end_reason.clone(),
            cancel_requested: r.cancel_requested,
            heartbeat_interval_ms: self.inner.cfg.lease.heartbeat_interval_ms,
        }
    }

    /// IDs of queued requests in queue order (priority, then arrival).
    fn queue_order(&self) -> Vec<u64> {
        let active = lock(&self.inner.store).active().unwrap_or_default();
        queued_in_order(&active).into_iter().map(|r| r.id).collect()
    }

    /// `GET /v1/status`: every GPU with its slices (holders shown to their owners and root).
    pub fn status(&self, who: &Identity) -> Result<StatusView, ApiError> {
        let (active, repartitions) = {
            let s = lock(&self.inner.store);
            (
                s.active().map_err(api_err)?,
                s.counter("repartitions").map_err(api_err)?,
            )
        };
        let owners: BTreeMap<u64, &RequestRow> = active.iter().map(|r| (r.id, r)).collect();
        let snap = self
            .inner
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let holder = |lease: Option<u64>| -> (Option<u64>, Option<String>) {
            match lease.and_then(|l| owners.get(&l)) {
                Some(r) if who.may_see(r.uid) => (Some(r.id), Some(r.user.clone())),
                _ => (None, None),
            }
        };
        let mut gpus = Vec::new();
        for g in &snap.gpus {
            let mut view = self.gpu_view(g, &snap, &holder);
            if !who.is_admin() {
                // A non-admin sees the identity (`MIG-…` UUID) of its own instances only:
                // others' are shown held, free ones by profile and place.
                for (v, i) in view.instances.iter_mut().zip(&g.instances) {
                    let own = i
                        .lease
                        .and_then(|l| owners.get(&l))
                        .is_some_and(|r| r.uid == who.uid);
                    if !own {
                        v.uuid = None;
                    }
                }
            }
            view.quarantined = self
                .inner
                .quarantine
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|q| q.slice.gpu() == g.facts.index)
                .map(|q| q.describe(who.may_see(q.uid)))
                .collect();
            gpus.push(view);
        }
        Ok(StatusView {
            backend: self.inner.backend.clone(),
            gpus,
            queued: active
                .iter()
                .filter(|r| r.state == RequestState::Queued)
                .count() as u32,
            leased: active
                .iter()
                .filter(|r| r.state == RequestState::Leased)
                .count() as u32,
            repartitions,
        })
    }

    fn gpu_view(
        &self,
        g: &GpuState,
        snap: &Snapshot,
        holder: &dyn Fn(Option<u64>) -> (Option<u64>, Option<String>),
    ) -> GpuView {
        let f = &g.facts;
        // A MIG GPU's model: resolved from the catalog when the fleet started.
        let model = self.inner.catalog.get(&f.model);
        let instances = g
            .instances
            .iter()
            .map(|i| {
                let (lease, user) = holder(i.lease);
                InstanceView {
                    profile: match (model, &i.at) {
                        (Some(m), at) => at.profile(m).to_string(),
                        (None, InstanceAt::Unknown { profile, .. }) => profile.clone(),
                        (None, InstanceAt::Placed(p)) => format!("profile #{}", p.profile.0),
                    },
                    start: i.at.start(),
                    uuid: i.uuid.clone(),
                    lease,
                    user,
                    busy: i.used(),
                }
            })
            .collect();
        let mut shares: Vec<ShareView> = g
            .mps_clients
            .iter()
            .map(|c| {
                let (lease, user) = holder(Some(c.lease));
                ShareView {
                    lease,
                    user,
                    memory_mib: c.memory_mib,
                    sm_percent: c.sm_percent,
                }
            })
            .collect();
        for l in g.replicas.values() {
            let (lease, user) = holder(Some(*l));
            shares.push(ShareView {
                lease,
                user,
                memory_mib: 0,
                sm_percent: 0,
            });
        }
        GpuView {
            index: f.index,
            uuid: f.uuid.clone(),
            model: f.model.clone(),
            mode: f.mode.to_string(),
            drained: g.drained,
            instances,
            shares,
            memory_mib: if f.mode == GpuMode::Mps {
                f.mps_usable_mib()
            } else {
                0
            },
            capacity: match f.mode {
                GpuMode::Mps => f.mps.max_clients,
                GpuMode::Timeslice => f.replicas,
                GpuMode::Mig => 0,
            },
            busy: g.busy(),
            reserved_for: snap
                .reservations
                .iter()
                .find(|r| r.gpu == f.index)
                .map(|r| r.request),
            last_error: snap.errors.get(&f.index).cloned(),
            quarantined: Vec::new(),
        }
    }

    pub(crate) fn gpu_view_of(&self, who: &Identity, gpu: u32) -> Result<GpuView, ApiError> {
        let status = self.status(who)?;
        status
            .gpus
            .into_iter()
            .find(|g| g.index == gpu)
            .ok_or_else(|| ApiError::not_found(format!("GPU {gpu} not found")))
    }
}
