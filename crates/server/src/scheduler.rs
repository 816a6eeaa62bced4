//! The scheduler thread: the executor of [`crate::core`]. It observes (store, GPUs, client
//! processes, the clock), asks the core what to do, and does it (agent calls, MPS, cgroups,
//! store writes, metrics, notifications). Recovery before the API opens lives here too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_gpu::{GpuError, GpuInstance, HeldInstance};
use tessera_model::Placed;
use tessera_planner::GpuMode;

use crate::automode;
use crate::core::{self, PassCore, Verdict};
use crate::daemon::{api_err, lock, Cmd, Daemon, Inner, Snapshot};
use crate::error::{ApiError, SchedulerDeath, ServerError};
use crate::fleet::{ApplyError, Fleet};
use crate::isolate::Enforcer;
use crate::journal::DbJournal;
use crate::liveness::ClientLiveness;
use crate::metrics::Metrics;
use crate::sched::{self, GpuState, InstanceAt, InstanceState, MpsClient, Pick, Reservation};
use crate::store::RequestRow;
use crate::wire::{RequestState, Slice};

/// The scheduler thread's state.
pub(crate) struct Scheduler {
    pub(crate) d: Daemon,
    pub(crate) fleet: Fleet,
    pub(crate) iso: Enforcer,
    /// Whether client processes still run.
    pub(crate) liveness: Arc<dyn ClientLiveness>,
    /// When the last liveness check ran (on the daemon's clock).
    pub(crate) last_check: Option<Instant>,
    /// Requests whose client's `/proc` entry could not be read, already logged.
    pub(crate) unknown_logged: BTreeSet<u64>,
}

impl Scheduler {
    fn inner(&self) -> &Inner {
        &self.d.inner
    }

    /// Now in Unix ms, on the daemon's clock.
    fn now_ms(&self) -> u64 {
        self.inner().clock.unix_ms()
    }

    /// The thread's body: [`Scheduler::run_loop`], and when it panics, the reason recorded
    /// for [`Daemon::scheduler_died`] and the daemon marked stopped.
    pub(crate) fn run(self, rx: mpsc::Receiver<Cmd>) {
        let d = self.d.clone();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let mut this = self;
            this.run_loop(rx)
        }));
        if let Err(payload) = result {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tracing::error!(
                "the scheduler thread died: {why}; no lease can be granted or ended, so the daemon stops (leases and the queue are kept in the database)"
            );
            d.inner.stopped.store(true, Ordering::SeqCst);
            d.inner
                .failure
                .send_replace(Some(SchedulerDeath::Panic { message: why }));
        }
    }

    fn run_loop(&mut self, rx: mpsc::Receiver<Cmd>) {
        let tick = Duration::from_millis(self.inner().cfg.scheduler.tick_ms);
        let mut next = Instant::now() + tick;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            let msg = rx.recv_timeout(wait);
            let handle = |m: Cmd, this: &mut Scheduler| -> bool {
                match m {
                    Cmd::Kick => {}
                    Cmd::Stop => return false,
                    Cmd::Layout { gpu, layout, reply } => {
                        let _ = reply.send(this.force(gpu, &layout));
                    }
                    #[cfg(test)]
                    Cmd::Panic => panic!("injected by a test"),
                }
                true
            };
            match msg {
                Ok(m) => {
                    if !handle(m, self) {
                        return;
                    }
                    // Coalesce a burst of messages into one pass.
                    while let Ok(m) = rx.try_recv() {
                        if !handle(m, self) {
                            return;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.inner().stopped.load(Ordering::SeqCst) {
                return;
            }
            self.pass();
            next = Instant::now() + tick;
        }
    }

    /// Recovery before the API opens (see the module docs).
    pub(crate) fn recover(&mut self) -> Result<(), ServerError> {
        if self.inner().cfg.discard_journal {
            let n = lock(&self.inner().store).discard_journal()?;
            self.notice(format!(
                "--discard-journal: deleted {n} journal record(s); the GPUs' layouts are taken from the GPUs as they are"
            ));
        }
        let (desired, active, counts) = {
            let s = lock(&self.inner().store);
            // A damaged journal stops the start here, naming the row and the fix.
            s.journal()?;
            (s.desired()?, s.active()?, s.counts()?)
        };
        if let (0, 0, journal_rows) = counts {
            self.check_emptied(journal_rows);
        }
        let d = self.d.clone();
        // Intents without an outcome; `None` when the journal cannot be read (then it is
        // kept as it is, and the reconciler below reports the damage by name).
        let open: Option<usize> = match tessera_agent::dangling(&DbJournal {
            store: &d.inner.store,
            clock: d.inner.clock.as_ref(),
            metrics: &d.inner.metrics,
            started: BTreeMap::new(),
        }) {
            Ok(open) => Some(open.len()),
            Err(e) => {
                tracing::warn!("cannot read the journal's open operations: {e}");
                None
            }
        };
        if let Some(n) = open.filter(|n| *n > 0) {
            tracing::warn!(
                "the journal has {n} operation(s) without an outcome (a re-partition was cut short); finishing it"
            );
        }
        // Leased requests first: tell the backend their instances hold work, so that finishing a
        // re-partition cannot touch them.
        for r in active.iter().filter(|r| r.state == RequestState::Leased) {
            if let Some(Slice::Mig { gpu, start, .. }) = &r.slice {
                self.fleet.attach(*gpu, *start, r.pid);
            }
        }
        self.recover_modes(&active)?;
        for (gpu, specs) in desired {
            let Some(f) = self.fleet.gpus.get(gpu as usize) else {
                continue;
            };
            if f.mode != GpuMode::Mig {
                continue;
            }
            let model = self.fleet.model(gpu).clone();
            let layout: Vec<Placed> = specs
                .iter()
                .filter_map(|s| model.parse_spec(s).ok())
                .collect();
            let leased = self.leased_placements(&active, gpu);
            if leased.iter().any(|p| !layout.contains(p)) {
                tracing::warn!("GPU {gpu}: the stored desired layout does not keep every leased instance; leaving the GPU as it is");
                continue;
            }
            let d = self.d.clone();
            let mut j = DbJournal {
                store: &d.inner.store,
                clock: d.inner.clock.as_ref(),
                metrics: &d.inner.metrics,
                started: BTreeMap::new(),
            };
            match self.fleet.apply(gpu, &layout, &mut j) {
                Ok(rep) if rep.changed() => tracing::info!(
                    "GPU {gpu}: finished the re-partition cut short (destroyed {:?}, created {:?})",
                    rep.destroyed,
                    rep.created
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("GPU {gpu}: cannot finish the stored layout: {e}"),
            }
        }
        if open == Some(0) {
            lock(&self.inner().store).prune_journal(10_000)?;
        }
        let now = self.inner().clock.now();
        let mut hb = lock(&self.inner().heartbeats);
        for r in &active {
            hb.insert(r.id, now);
        }
        drop(hb);
        let d = self.d.clone();
        self.iso
            .adopt(&active, |id| lock(&d.inner.store).get(id).ok().flatten());
        let queued = active
            .iter()
            .filter(|r| r.state == RequestState::Queued)
            .count();
        let leased = active.len() - queued;
        if !active.is_empty() {
            tracing::info!("re-adopted {leased} lease(s) and {queued} queued request(s) from the state database");
        }
        Ok(())
    }

    /// Finish the mode switches of `auto` GPUs that a stop or crash cut short: a GPU whose
    /// recorded mode ([`crate::store::Store::set_mode`]) is not the mode it started in is
    /// switched now, unless leases of the mode it is in hold it.
    fn recover_modes(&mut self, active: &[RequestRow]) -> Result<(), ServerError> {
        let modes = lock(&self.inner().store).modes()?;
        for (gpu, want) in modes {
            let Some(f) = self.fleet.gpus.get(gpu as usize).cloned() else {
                continue;
            };
            if !f.auto || f.mode == want {
                continue;
            }
            let held = active
                .iter()
                .filter(|r| r.state == RequestState::Leased)
                .filter_map(|r| r.slice.as_ref())
                .filter(|s| s.gpu() == gpu)
                .any(|s| slice_mode(s) == f.mode);
            if held || !self.fleet.can_switch(gpu) {
                tracing::warn!(
                    "GPU {gpu}: recorded mode {want} (mode: auto), but it is in {} and {}; leaving it so",
                    f.mode,
                    if held { "leases hold it" } else { "the backend cannot switch it" }
                );
                continue;
            }
            match self.switch_mode(gpu, want) {
                Ok(()) => tracing::info!("GPU {gpu}: finished the switch to {want} cut short"),
                Err(e) => tracing::warn!("GPU {gpu}: cannot finish the switch to {want}: {e}"),
            }
        }
        Ok(())
    }

    /// Switch an idle `auto` GPU to `to`: the mode is recorded first, then MIG instances are
    /// destroyed through the journal (leaving MIG), then the fleet switches MIG mode and the
    /// MPS daemon.
    fn switch_mode(&mut self, gpu: u32, to: GpuMode) -> Result<(), ServerError> {
        let from = self.fleet.gpus[gpu as usize].mode;
        lock(&self.inner().store).set_mode(gpu, to)?;
        if from == GpuMode::Mig {
            // Also after a crash: the instances may be gone, MIG mode still on.
            if self.fleet.mig_on(gpu) {
                self.apply(gpu, &[]).map_err(|e| {
                    ServerError::fleet(format!(
                        "GPU {gpu}: cannot remove its idle MIG instances before leaving MIG mode: {e}"
                    ))
                })?;
            }
        }
        self.fleet.switch_mode(gpu, to)?;
        let _ = lock(&self.inner().store).bump("mode_switches", 1);
        tracing::info!("GPU {gpu}: mode {from} -> {to} (mode: auto)");
        Ok(())
    }

    /// The mode rule for `auto` GPUs ([`crate::automode`]): planned changes are made now, on
    /// idle GPUs, before the core decides; blocked ones are shown on the GPU's status.
    fn auto_modes(
        &mut self,
        active: &[RequestRow],
        gpus: &mut [GpuState],
        errors: &mut BTreeMap<u32, String>,
    ) {
        if !gpus.iter().any(|g| g.facts.auto) {
            return;
        }
        let now = self.now_ms();
        let queue: Vec<sched::Waiting> = core::queued_in_order(active)
            .into_iter()
            .map(|r| sched::Waiting {
                id: r.id,
                uid: r.uid,
                ask: r.ask.clone(),
                gpu_model: r.gpu_model.clone(),
                waited_ms: now.saturating_sub(r.submitted_ms),
            })
            .collect();
        let catalog = self.inner().catalog.clone();
        let decisions = {
            let fleet = &self.fleet;
            automode::choose_modes(&catalog, gpus, &queue, |f| fleet.can_switch(f.index))
        };
        for d in decisions {
            let Some(g) = gpus.iter_mut().find(|g| g.facts.index == d.gpu) else {
                continue;
            };
            let c = &d.change;
            if let Some(b) = c.blocked {
                errors.entry(d.gpu).or_insert_with(|| {
                    format!(
                        "mode auto: stays {}, not switched to {} ({b}): {}",
                        c.from, c.to, c.reason
                    )
                });
                continue;
            }
            match self.switch_mode(d.gpu, c.to) {
                Ok(()) => {
                    g.facts = self.fleet.gpus[d.gpu as usize].clone();
                    g.instances.clear();
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    errors.insert(d.gpu, e.to_string());
                    g.failed = true;
                }
            }
        }
    }

    /// Log a start warning and keep it for [`Daemon::notices`].
    fn notice(&self, text: String) {
        tracing::warn!("{text}");
        lock(&self.inner().notices).push(text);
    }

    /// The database holds no request and no layout: warn when its journal or the GPUs say
    /// tessera has been here (journal records of re-partitions, MIG instances), since then
    /// the database was emptied or replaced and the leases it recorded are lost.
    fn check_emptied(&mut self, journal_rows: u64) {
        let mut seen = Vec::new();
        if journal_rows > 0 {
            seen.push(format!(
                "its journal holds {journal_rows} record(s) of re-partitions"
            ));
        }
        for f in self.fleet.gpus.clone() {
            if f.mode != GpuMode::Mig {
                continue;
            }
            if let Ok(list) = self.fleet.instances(f.index) {
                if !list.is_empty() {
                    let busy = list.iter().filter(|i| !i.pids.is_empty()).count();
                    seen.push(format!(
                        "GPU {} has {} MIG instance(s), {busy} with processes",
                        f.index,
                        list.len()
                    ));
                }
            }
        }
        if seen.is_empty() {
            return;
        }
        self.notice(format!(
            "the state database {} has no request and no layout, but {}: it was emptied or replaced (or the GPUs were partitioned by someone else). Leases it held are lost and their commands, if any still run, are not accounted for. If that is not intended, stop the daemon and restore tessera.db from a backup; otherwise idle instances are reused and re-partitioned as usual",
            self.inner().state_dir.join("tessera.db").display(),
            seen.join("; ")
        ));
    }

    fn leased_placements(&self, active: &[RequestRow], gpu: u32) -> Vec<Placed> {
        let model = self.fleet.model(gpu);
        active
            .iter()
            .filter(|r| r.state == RequestState::Leased)
            .filter_map(|r| match &r.slice {
                Some(Slice::Mig {
                    gpu: g,
                    profile,
                    start,
                    ..
                }) if *g == gpu => Some(Placed::new(model.profile_named(profile)?, *start)),
                _ => None,
            })
            .collect()
    }

    /// End leases cancelled longer than `lease.cancel_grace_ms` ago whose command still runs
    /// (the sweep that follows kills their processes). Returns whether any ended.
    fn enforce_cancels(&mut self, active: &[RequestRow]) -> bool {
        let mut ended = false;
        for (id, reason) in self.iso.due_cancels(active) {
            let done = lock(&self.inner().store)
                .end(id, RequestState::Cancelled, None, &reason, self.now_ms())
                .unwrap_or(false);
            if done {
                tracing::info!(request = id, "{reason}");
                lock(&self.inner().heartbeats).remove(&id);
                ended = true;
            }
        }
        ended
    }

    /// The device side of a slice (its GPU's minor, and for MIG the instance's GPU- and
    /// compute-instance IDs), when the enforcer wants device numbers.
    fn slice_devices(&mut self, slice: &Slice) -> Option<tessera_isolation::SliceDevices> {
        use tessera_isolation::SliceDevices;
        if !self.iso.wants_devices() {
            return None;
        }
        match slice {
            Slice::Mig { gpu, start, .. } => {
                let inst = self
                    .fleet
                    .instances(*gpu)
                    .ok()?
                    .into_iter()
                    .find(|i| i.start == *start)?;
                Some(SliceDevices::Mig {
                    minor: *gpu,
                    gi: inst.gi_id,
                    ci: inst.compute_instances.first()?.ci_id,
                })
            }
            Slice::Mps { gpu, .. } | Slice::Timeslice { gpu, .. } => {
                Some(SliceDevices::Gpu { minor: *gpu })
            }
        }
    }

    /// Mark quarantined slices held so that no pass leases or destroys them, and publish
    /// them for `status`.
    fn hold_quarantined(&mut self, gpus: &mut [GpuState]) {
        let q = self.iso.quarantined().to_vec();
        for item in &q {
            let Some(g) = gpus.iter_mut().find(|g| g.facts.index == item.slice.gpu()) else {
                continue;
            };
            match &item.slice {
                Slice::Mig { start, .. } => {
                    if let Some(i) = g.instances.iter_mut().find(|i| i.at.start() == *start) {
                        if i.pids.is_empty() {
                            i.pids = item.pids.clone();
                        }
                    }
                }
                Slice::Mps {
                    memory_mib,
                    sm_percent,
                    ..
                } => g.mps_clients.push(MpsClient {
                    lease: item.lease,
                    uid: item.uid,
                    memory_mib: *memory_mib,
                    sm_percent: *sm_percent,
                }),
                Slice::Timeslice { replica, .. } => {
                    g.replicas.entry(*replica).or_insert(item.lease);
                }
            }
        }
        *self
            .inner()
            .quarantine
            .write()
            .unwrap_or_else(|e| e.into_inner()) = q;
    }

    /// End requests whose client is gone or silent (decided by [`core::expiries`]).
    /// Returns whether any ended.
    fn check_liveness(&mut self, active: &[RequestRow]) -> bool {
        let timeout = Duration::from_millis(self.inner().cfg.lease.heartbeat_timeout_ms);
        let tick = Duration::from_millis(self.inner().cfg.scheduler.tick_ms);
        let now = self.inner().clock.now();
        let d = self.d.clone();
        let verdicts = {
            let mut hb = lock(&d.inner.heartbeats);
            if let Some(stall) = core::credit_stall(&mut hb, &mut self.last_check, now, tick) {
                self.inner().metrics.scheduler_stalls.inc();
                tracing::warn!(
                    "the scheduler did not run for {} ms (the daemon was stopped or starved); heartbeat deadlines are extended by that time",
                    stall.as_millis()
                );
            }
            core::expiries(active, &mut hb, now, timeout, self.liveness.as_ref())
        };
        let ids: BTreeSet<u64> = active.iter().map(|r| r.id).collect();
        self.unknown_logged.retain(|id| ids.contains(id));
        let mut ended = false;
        for v in verdicts {
            match v {
                Verdict::Unknown { id, why } => {
                    // No verdict (e.g. out of file descriptors): the heartbeat decides.
                    self.inner().metrics.liveness_unknown.inc();
                    if self.unknown_logged.insert(id) {
                        tracing::warn!(request = id, "cannot tell whether the client runs ({why}); keeping the lease while it sends heartbeats");
                    }
                }
                Verdict::Expire { id, reason } => {
                    let done = lock(&self.inner().store)
                        .end(id, RequestState::Expired, None, &reason, self.now_ms())
                        .unwrap_or(false);
                    if done {
                        let user = active.iter().find(|r| r.id == id).map(|r| r.user.as_str());
                        tracing::info!(
                            request = id,
                            user = user.unwrap_or(""),
                            "expired: {reason}"
                        );
                        lock(&self.inner().heartbeats).remove(&id);
                        self.unknown_logged.remove(&id);
                        ended = true;
                    }
                }
            }
        }
        ended
    }

    /// Observe every GPU and build the scheduler's view, syncing simulated busy marks with
    /// the leases.
    fn observe(
        &mut self,
        active: &[RequestRow],
        errors: &mut BTreeMap<u32, String>,
    ) -> Vec<GpuState> {
        let drained = lock(&self.inner().store).drained().unwrap_or_default();
        let health = self.fleet.poll_health();
        let mut out = Vec::new();
        // The fleet's facts: an `auto` GPU's mode is the one it is in now.
        for f in self.fleet.gpus.clone() {
            let mut g = GpuState::empty(f.clone());
            g.drained = drained.contains(&f.index);
            if let Some(tessera_gpu::Health::Unhealthy { xids }) = health.get(&f.index) {
                self.inner().metrics.xids(f.index, xids.iter().copied());
                g.healthy = false;
                errors.insert(
                    f.index,
                    format!(
                        "unhealthy after XID {xids:?}: no new leases until the daemon restarts"
                    ),
                );
            }
            let leases: Vec<&RequestRow> = active
                .iter()
                .filter(|r| r.state == RequestState::Leased)
                .filter(|r| r.slice.as_ref().is_some_and(|s| s.gpu() == f.index))
                .collect();
            match f.mode {
                GpuMode::Mig => match self.observe_mig(f.index, &leases) {
                    Ok(list) => g.instances = list,
                    Err(e) => {
                        errors.insert(f.index, e.to_string());
                        g.failed = true;
                    }
                },
                GpuMode::Mps => {
                    for r in leases {
                        if let Some(Slice::Mps {
                            memory_mib,
                            sm_percent,
                            ..
                        }) = &r.slice
                        {
                            g.mps_clients.push(MpsClient {
                                lease: r.id,
                                uid: r.uid,
                                memory_mib: *memory_mib,
                                sm_percent: *sm_percent,
                            });
                        }
                    }
                }
                GpuMode::Timeslice => {
                    for r in leases {
                        if let Some(Slice::Timeslice { replica, .. }) = &r.slice {
                            g.replicas.insert(*replica, r.id);
                        }
                    }
                }
            }
            out.push(g);
        }
        out
    }

    fn observe_mig(
        &mut self,
        gpu: u32,
        leases: &[&RequestRow],
    ) -> Result<Vec<InstanceState>, GpuError> {
        // A lease matches an instance by GPU, profile and start: the same placement on
        // another GPU is another instance.
        let lease_of = |i: &GpuInstance| {
            leases.iter().find(|r| {
                matches!(&r.slice, Some(Slice::Mig { gpu: g, profile, start, .. }) if *g == gpu && *profile == i.profile && *start == i.start)
            })
        };
        let mut observed = self.fleet.instances(gpu)?;
        // Tell the backend which instances hold work: one that observes processes (NVML)
        // ignores it, one that learns work only from us (the simulator) keeps its marks
        // equal to the leases, and is read again when they changed.
        let held: Vec<HeldInstance> = observed
            .iter()
            .filter_map(|i| {
                lease_of(i).map(|r| HeldInstance {
                    start: i.start,
                    pid: r.pid,
                })
            })
            .collect();
        if self.fleet.sync_work(gpu, &held) {
            observed = self.fleet.instances(gpu)?;
        }
        // The one place a backend's profile name becomes the model's profile.
        let model = self.fleet.model(gpu);
        Ok(observed
            .into_iter()
            .map(|i| InstanceState {
                lease: lease_of(&i).map(|r| r.id),
                at: InstanceAt::resolve(model, &i.profile, i.start),
                uuid: i.uuid,
                pids: i.pids,
            })
            .collect())
    }

    /// Apply a layout to a MIG GPU, with the desired layout written first.
    fn apply(&mut self, gpu: u32, layout: &[Placed]) -> Result<bool, ApplyError> {
        let model = self.fleet.model(gpu).clone();
        let specs: Vec<String> = layout.iter().map(|p| model.spec(*p)).collect();
        lock(&self.inner().store)
            .set_desired(gpu, &specs, self.now_ms())
            .map_err(|e| ApplyError::Desired {
                gpu,
                source: Box::new(e),
            })?;
        let d = self.d.clone();
        let mut j = DbJournal {
            store: &d.inner.store,
            clock: d.inner.clock.as_ref(),
            metrics: &d.inner.metrics,
            started: BTreeMap::new(),
        };
        let began = Instant::now();
        let res = self.fleet.apply(gpu, layout, &mut j);
        match &res {
            Ok(rep) => {
                let _ = lock(&self.inner().store).prune_journal(2_000);
                if rep.changed() {
                    self.inner()
                        .metrics
                        .repartitioned(tessera_api::overview::RepartitionView {
                            node: None,
                            gpu,
                            at_ms: self.now_ms(),
                            took_ms: began.elapsed().as_millis() as u64,
                            layout: specs.clone(),
                            destroyed: rep.destroyed.clone(),
                            created: rep.created.clone(),
                        });
                    let _ = lock(&self.inner().store).bump("repartitions", 1);
                    tracing::info!(
                        "GPU {gpu}: re-partitioned to [{}] (destroyed {:?}, created {:?})",
                        specs.join(" "),
                        rep.destroyed,
                        rep.created
                    );
                }
            }
            Err(e) => {
                self.inner().metrics.operations_failed.inc();
                let _ = lock(&self.inner().store).bump("operations_failed", 1);
                tracing::warn!("{e}");
            }
        }
        res.map(|r| r.changed())
    }

    /// Root's forced re-partition.
    fn force(&mut self, gpu: u32, layout: &[Placed]) -> Result<(), ApiError> {
        let active = lock(&self.inner().store).active().map_err(api_err)?;
        let model = self.fleet.model(gpu).clone();
        for p in self.leased_placements(&active, gpu) {
            if !layout.contains(&p) {
                let holder = active
                    .iter()
                    .find(|r| {
                        matches!(&r.slice, Some(Slice::Mig { gpu: g, start, .. }) if *g == gpu && *start == p.start)
                    })
                    .map(|r| format!("request {} of {}", r.id, r.user))
                    .unwrap_or_default();
                return Err(ApiError::conflict(format!(
                    "GPU {gpu}: refused, nothing changed: the layout would remove leased instance {} ({holder}); keep it in the layout or wait until it is released",
                    model.spec(p)
                )));
            }
        }
        let res = self.apply(gpu, layout);
        self.pass();
        match res {
            Ok(_) => Ok(()),
            Err(e @ ApplyError::Refused { busy: true, .. }) => {
                Err(ApiError::conflict(e.to_string()))
            }
            Err(e @ ApplyError::Refused { .. }) => Err(ApiError::bad_request(e.to_string())),
            Err(e) => Err(ApiError::conflict(e.to_string())),
        }
    }

    /// One scheduling pass (see the module docs and [`crate::core`]): observe, let the core
    /// decide, carry each decision out and report back, publish the [`core::Ready`].
    pub(crate) fn pass(&mut self) {
        self.inner().passes.fetch_add(1, Ordering::SeqCst);
        let active = match lock(&self.inner().store).active() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot read the queue: {e}");
                return;
            }
        };
        let mut changed = self.check_liveness(&active);
        changed |= self.enforce_cancels(&active);
        let active = if changed {
            lock(&self.inner().store).active().unwrap_or_default()
        } else {
            active
        };
        let d = self.d.clone();
        self.iso
            .sweep(&active, |id| lock(&d.inner.store).get(id).ok().flatten());
        let mut errors = BTreeMap::new();
        let mut gpus = self.observe(&active, &mut errors);
        self.hold_quarantined(&mut gpus);
        self.auto_modes(&active, &mut gpus, &mut errors);

        let catalog = self.inner().catalog.clone();
        let settings = self.inner().cfg.scheduler.clone();
        let mut core = PassCore::new(&catalog, &settings, self.now_ms(), &active, gpus, errors);
        // Drained GPUs with nothing running are emptied.
        for gpu in core.to_empty() {
            match self.apply(gpu, &[]) {
                Ok(_) => core.emptied(gpu),
                Err(e) => core.error(gpu, e.to_string()),
            }
        }
        while let Some(grant) = core.next_grant() {
            let Some(row) = active.iter().find(|r| r.id == grant.request) else {
                continue;
            };
            if self.serve(row, grant.serve, &mut core) {
                changed = true;
            }
        }
        let ready = core.finish();
        self.publish(&ready.gpus, &ready.reservations, ready.errors, ready.queued);
        let reasons_changed = {
            let mut snap = self
                .inner()
                .snapshot
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let differ = snap.waits != ready.waits;
            snap.waits = ready.waits;
            differ
        };
        if changed || reasons_changed {
            self.d.changed();
        }
    }

    /// Carry out one decision: re-partition if needed, then grant. Returns whether granted.
    fn serve(&mut self, r: &RequestRow, serve: sched::Serve, core: &mut PassCore<'_>) -> bool {
        let gpu = serve.gpu;
        if let Some(layout) = &serve.layout {
            if let Err(e) = self.apply(gpu, layout) {
                core.fail(gpu, e.to_string());
                return false;
            }
            let leases: Vec<RequestRow> = lock(&self.inner().store)
                .active()
                .unwrap_or_default()
                .into_iter()
                .filter(|x| x.state == RequestState::Leased)
                .filter(|x| x.slice.as_ref().is_some_and(|s| s.gpu() == gpu))
                .collect();
            let refs: Vec<&RequestRow> = leases.iter().collect();
            match self.observe_mig(gpu, &refs) {
                Ok(list) => core.observed(gpu, list),
                Err(e) => {
                    core.fail(gpu, e.to_string());
                    return false;
                }
            }
        }
        let Some(state) = core.gpu(gpu) else {
            return false;
        };
        let facts = state.facts.clone();
        let mut env = BTreeMap::new();
        let slice = match &serve.pick {
            Pick::Mig(placed) => {
                // Named for messages and the lease's slice (the wire keeps profile names).
                let profile = self.fleet.model(gpu).profile(placed.profile).name.clone();
                let start = placed.start;
                let Some(inst) = state
                    .instances
                    .iter()
                    .find(|i| i.at == InstanceAt::Placed(*placed) && !i.used())
                else {
                    core.fail(
                        gpu,
                        format!("instance {profile}@{start} missing after the re-partition"),
                    );
                    return false;
                };
                let Some(uuid) = inst.uuid.clone() else {
                    core.fail(
                        gpu,
                        format!("instance {profile}@{start} has no MIG device UUID"),
                    );
                    return false;
                };
                env.insert("CUDA_VISIBLE_DEVICES".to_string(), uuid.clone());
                env.insert("NVIDIA_VISIBLE_DEVICES".to_string(), uuid.clone());
                Slice::Mig {
                    gpu,
                    profile,
                    start,
                    uuid,
                }
            }
            Pick::Mps {
                memory_mib,
                sm_percent,
            } => {
                match self.fleet.mps_env(gpu, r.uid, *memory_mib, *sm_percent) {
                    Ok(e) => env.extend(e),
                    Err(e) => {
                        core.fail(gpu, e.to_string());
                        return false;
                    }
                }
                Slice::Mps {
                    gpu,
                    memory_mib: *memory_mib,
                    sm_percent: *sm_percent,
                }
            }
            Pick::Timeslice { replica } => {
                env.insert("CUDA_VISIBLE_DEVICES".to_string(), facts.uuid.clone());
                env.insert("NVIDIA_VISIBLE_DEVICES".to_string(), facts.uuid.clone());
                Slice::Timeslice {
                    gpu,
                    replica: *replica,
                }
            }
        };
        env.insert("TESSERA_LEASE_ID".to_string(), r.id.to_string());
        env.insert("TESSERA_SLICE".to_string(), slice.to_string());
        // The client enters the lease's cgroup before the lease exists, so CMD starts in it.
        let devices = self.slice_devices(&slice);
        match self.iso.confine(r, &slice, devices) {
            Ok(v) => {
                env.insert("TESSERA_ISOLATION".to_string(), v);
            }
            Err(e) => {
                tracing::warn!("{e}");
                core.error(gpu, e.to_string());
                return false;
            }
        }
        let now = self.now_ms();
        let granted = {
            // Status shows a lease as soon as the database does: the view is published
            // before the store is let go, so a reader that sees the lease in the store (the
            // API reads the store, then the snapshot) also sees it in the snapshot.
            let d = self.d.clone();
            let mut store = lock(&d.inner.store);
            match store.grant(r.id, &slice, &env, now) {
                Ok(true) => {
                    core.granted(r.id, &slice);
                    let (gpus, reservations, errors, queued) = core.view();
                    self.publish(gpus, reservations, errors.clone(), queued);
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::error!("request {}: cannot record the lease: {e}", r.id);
                    false
                }
            }
        };
        if !granted {
            self.iso.unconfine(r.id);
            return false;
        }
        if let Slice::Mig { start, .. } = &slice {
            self.fleet.attach(gpu, *start, r.pid);
        }
        let m = &self.inner().metrics;
        m.leases_total
            .get_or_create(&Metrics::slice_type(slice.type_name()))
            .inc();
        m.wait_seconds
            .observe(now.saturating_sub(r.submitted_ms) as f64 / 1000.0);
        tracing::info!(request = r.id, user = %r.user, "leased {slice} after {} ms", now.saturating_sub(r.submitted_ms));
        true
    }

    /// Publish a pass's view: metrics, and the snapshot the API's views read.
    fn publish(
        &self,
        gpus: &[GpuState],
        reservations: &[Reservation],
        errors: BTreeMap<u32, String>,
        queued: usize,
    ) {
        let m = &self.inner().metrics;
        m.queue_length.set(queued as i64);
        let mut by_type: BTreeMap<&str, i64> = [("mig", 0), ("mps", 0), ("timeslice", 0)]
            .into_iter()
            .collect();
        for g in gpus {
            let t = match g.facts.mode {
                GpuMode::Mig => "mig",
                GpuMode::Mps => "mps",
                GpuMode::Timeslice => "timeslice",
            };
            *by_type.entry(t).or_default() += i64::from(g.busy());
            m.slices_busy
                .get_or_create(&Metrics::gpu(g.facts.index))
                .set(i64::from(g.busy()));
            let total = match g.facts.mode {
                GpuMode::Mig => g.instances.len() as i64,
                GpuMode::Mps => g.mps_clients.len() as i64,
                GpuMode::Timeslice => i64::from(g.facts.replicas),
            };
            m.slices
                .get_or_create(&Metrics::gpu(g.facts.index))
                .set(total);
        }
        for (t, n) in by_type {
            m.leases_active
                .get_or_create(&Metrics::slice_type(t))
                .set(n);
        }
        let mut snap = self
            .inner()
            .snapshot
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let waits = std::mem::take(&mut snap.waits);
        *snap = Snapshot {
            gpus: gpus.to_vec(),
            reservations: reservations.to_vec(),
            errors,
            waits,
        };
    }
}

/// The mode a leased slice belongs to.
fn slice_mode(s: &Slice) -> GpuMode {
    match s {
        Slice::Mig { .. } => GpuMode::Mig,
        Slice::Mps { .. } => GpuMode::Mps,
        Slice::Timeslice { .. } => GpuMode::Timeslice,
    }
}
