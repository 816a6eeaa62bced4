//! The API operations: what each HTTP handler (and the demo, in-process) calls. They read and
//! write the store, never touch the GPUs, and wake the scheduler (see [`crate::daemon`]).

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_model::Catalog;
use tessera_planner::GpuMode;

use crate::core::queued_in_order;
use crate::daemon::{api_err, lock, Cmd, Daemon};
use crate::error::ApiError;
use crate::fleet::GpuFacts;
use crate::ident::Identity;
use crate::sched;
use crate::store::{NewRequest, RequestRow};
use crate::wire::{GpuView, ReleaseBody, RequestState, RequestView, SliceAsk, SubmitBody};

impl Daemon {
    pub(crate) fn visible(&self, who: &Identity, id: u64) -> Result<RequestRow, ApiError> {
        let row = lock(&self.inner.store).get(id).map_err(api_err)?;
        match row {
            Some(r) if who.may_see(r.uid) => Ok(r),
            _ => Err(ApiError::not_found(format!(
                "request {id} not found (or it is not yours); `tessera ps` lists yours"
            ))),
        }
    }

    /// `POST /v1/requests`: queue a request for the caller.
    pub fn submit(&self, who: &Identity, body: SubmitBody) -> Result<RequestView, ApiError> {
        if let Some(why) = self.scheduler_failure() {
            return Err(ApiError::unavailable(format!(
                "the daemon's scheduler stopped ({why}); the daemon is shutting down, try again after it restarts"
            )));
        }
        if !(-1000..=1000).contains(&body.priority) {
            return Err(ApiError::bad_request(format!(
                "priority {} is out of range; give -1000 to 1000",
                body.priority
            )));
        }
        match &body.slice {
            SliceAsk::Mig { profile } if profile.trim().is_empty() => {
                return Err(ApiError::bad_request(
                    "the MIG profile is empty; give one such as 1g.10gb",
                ))
            }
            SliceAsk::Mem {
                memory_mib,
                sm_percent,
            }
            | SliceAsk::Mps {
                memory_mib,
                sm_percent,
            } => {
                if *memory_mib == 0 {
                    return Err(ApiError::bad_request("memory_mib must be at least 1"));
                }
                if let Some(sm) = sm_percent {
                    if !(1..=100).contains(sm) {
                        return Err(ApiError::bad_request(format!(
                            "sm_percent {sm} is out of range; give 1 to 100"
                        )));
                    }
                }
            }
            _ => {}
        }
        if body.command.len() > 4096 || body.command.iter().map(String::len).sum::<usize>() > 65536
        {
            return Err(ApiError::bad_request(
                "the command line is too long to record",
            ));
        }
        let gpu_model = match &body.gpu_model {
            Some(q) => Some(
                resolve_model(&self.inner.catalog, &self.inner.gpus, q).ok_or_else(|| {
                    let here: Vec<&str> =
                        self.inner.gpus.iter().map(|g| g.model.as_str()).collect();
                    ApiError::bad_request(format!(
                        "unknown GPU model `{q}`{}; this machine has {}",
                        tessera_model::suggest::hint(q, here),
                        self.model_list()
                    ))
                })?,
            ),
            None => None,
        };
        if let SliceAsk::Mig { profile } = &body.slice {
            // A name no model has is a typo (bad input), not a slice this machine lacks.
            if !self.inner.catalog.has_profile(profile) {
                let guess = self
                    .inner
                    .catalog
                    .suggest_profile(profile)
                    .map(|p| format!("; did you mean `{p}`?"))
                    .unwrap_or_default();
                return Err(ApiError::bad_request(format!(
                    "unknown MIG profile `{profile}`{guess} (`tessera profiles --gpu MODEL` lists a model's profiles)"
                )));
            }
        }
        let ask = match body.slice {
            SliceAsk::Mig { profile } => SliceAsk::Mig {
                profile: canonical_profile(&self.inner.catalog, &self.inner.gpus, &profile),
            },
            other => other,
        };
        sched::check_feasible(
            &self.inner.catalog,
            &self.inner.gpus,
            &ask,
            gpu_model.as_deref(),
        )
        .map_err(|e| ApiError::unsatisfiable(e.to_string()))?;
        let (pid, pid_start) = match who.process {
            Some(p) => (Some(p.pid), Some(p.start_ticks)),
            None => (None, None),
        };
        let new = NewRequest {
            uid: who.uid,
            user: who.user.clone(),
            pid,
            pid_start,
            ask,
            gpu_model,
            priority: body.priority,
            command: body.command,
            submitted_ms: self.now_ms(),
        };
        let id = lock(&self.inner.store).insert(&new).map_err(api_err)?;
        self.beat(id);
        tracing::info!(request = id, user = %who.user, "queued {}", new.ask);
        self.changed();
        self.kick();
        let row = lock(&self.inner.store)
            .get(id)
            .map_err(api_err)?
            .ok_or_else(|| ApiError::internal(format!("request {id} vanished after insert")))?;
        Ok(self.view(&row, who))
    }

    fn model_list(&self) -> String {
        let mut models: Vec<&str> = self.inner.gpus.iter().map(|g| g.model.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        models.join(", ")
    }

    /// `GET /v1/requests`: the caller's active requests (root: everyone's), plus with `all`
    /// the 100 most recently ended ones.
    pub fn list(&self, who: &Identity, all: bool) -> Result<Vec<RequestView>, ApiError> {
        let (active, ended) = {
            let s = lock(&self.inner.store);
            let active = s.active().map_err(api_err)?;
            let ended = if all {
                s.recent_ended(100).map_err(api_err)?
            } else {
                Vec::new()
            };
            (active, ended)
        };
        let now = self.now_ms();
        let queue = queued_in_order(&active);
        let qlen = queue.len() as u32;
        let pos: BTreeMap<u64, u32> = queue
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i as u32 + 1))
            .collect();
        let mut out: Vec<RequestView> = active
            .iter()
            .chain(ended.iter().rev())
            .filter(|r| who.may_see(r.uid))
            .map(|r| {
                let p = pos.get(&r.id).copied();
                self.view_with(r, who, now, p, p.map(|_| qlen))
            })
            .collect();
        out.sort_by_key(|v| v.id);
        Ok(out)
    }

    /// `GET /v1/requests/{id}`.
    pub fn get(&self, who: &Identity, id: u64) -> Result<RequestView, ApiError> {
        let row = self.visible(who, id)?;
        Ok(self.view(&row, who))
    }

    /// `POST /v1/requests/{id}/heartbeat`: the client is alive.
    pub fn heartbeat(&self, who: &Identity, id: u64) -> Result<RequestView, ApiError> {
        let row = self.visible(who, id)?;
        if row.state.is_active() && row.uid == who.uid {
            self.beat(id);
        }
        Ok(self.view(&row, who))
    }

    /// `GET /v1/requests/{id}/wait`: return once the request is no longer queued (or a
    /// leased one is cancelled), or after `timeout`. Counts as a heartbeat.
    pub async fn wait(
        &self,
        who: &Identity,
        id: u64,
        timeout: Duration,
    ) -> Result<RequestView, ApiError> {
        let mut rx = self.inner.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = self.visible(who, id)?;
            if row.state.is_active() && row.uid == who.uid {
                self.beat(id);
            }
            if row.state != RequestState::Queued || tokio::time::Instant::now() >= deadline {
                return Ok(self.view(&row, who));
            }
            tokio::select! {
                r = rx.changed() => { if r.is_err() { return Ok(self.view(&row, who)); } }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// `POST /v1/requests/{id}/release`: CMD ended (or the client gave up waiting).
    /// Releasing an ended request again is not an error (clients retry after restarts).
    pub fn release(
        &self,
        who: &Identity,
        id: u64,
        body: ReleaseBody,
    ) -> Result<RequestView, ApiError> {
        let row = self.visible(who, id)?;
        if row.state.is_active() {
            let (state, reason) = match (row.state, body.exit_code, body.signal) {
                (RequestState::Queued, _, _) => (
                    RequestState::Cancelled,
                    "withdrawn by the client".to_string(),
                ),
                (_, _, Some(sig)) => (RequestState::Done, format!("signal {sig}")),
                (_, Some(code), None) => (RequestState::Done, format!("exit {code}")),
                (_, None, None) => (RequestState::Done, "released".to_string()),
            };
            let code = body.exit_code.or(body.signal.map(|s| 128 + s));
            let ended = lock(&self.inner.store)
                .end(id, state, code, &reason, self.now_ms())
                .map_err(api_err)?;
            if ended {
                tracing::info!(request = id, user = %row.user, "ended: {reason}");
                lock(&self.inner.heartbeats).remove(&id);
                self.changed();
                self.kick();
            }
        }
        self.get(who, id)
    }

    /// `POST /v1/requests/{id}/cancel`: a queued request ends now; a leased one is marked so
    /// that its client stops CMD (the slice is freed when CMD has stopped).
    pub fn cancel(&self, who: &Identity, id: u64) -> Result<RequestView, ApiError> {
        let row = self.visible(who, id)?;
        match row.state {
            RequestState::Queued => {
                let reason = format!("cancelled by {}", who.user);
                let done = lock(&self.inner.store)
                    .end(id, RequestState::Cancelled, None, &reason, self.now_ms())
                    .map_err(api_err)?;
                if !done {
                    // It was leased in between: cancel the lease instead.
                    return self.cancel(who, id);
                }
                tracing::info!(request = id, "{reason}");
            }
            RequestState::Leased => {
                lock(&self.inner.store)
                    .request_cancel(id)
                    .map_err(api_err)?;
                tracing::info!(
                    request = id,
                    "lease cancelled by {}; waiting for CMD to stop",
                    who.user
                );
            }
            other => {
                return Err(ApiError::conflict(format!(
                    "request {id} already ended ({other}); nothing to cancel"
                )))
            }
        }
        self.changed();
        self.kick();
        self.get(who, id)
    }

    fn check_gpu(&self, gpu: u32) -> Result<&GpuFacts, ApiError> {
        self.inner.gpus.get(gpu as usize).ok_or_else(|| {
            ApiError::not_found(format!(
                "GPU {gpu} not found; this machine has GPUs 0..{}",
                self.inner.gpus.len().saturating_sub(1)
            ))
        })
    }

    /// `POST /v1/gpus/{n}/drain` (root): stop or resume new leases on a GPU. A drained GPU
    /// whose last lease ended is emptied (its idle MIG instances destroyed).
    pub async fn drain(&self, who: &Identity, gpu: u32, drain: bool) -> Result<GpuView, ApiError> {
        if !who.is_admin() {
            return Err(ApiError::forbidden(
                "only root may drain a GPU; ask the machine's administrator",
            ));
        }
        self.check_gpu(gpu)?;
        lock(&self.inner.store)
            .set_drained(gpu, drain)
            .map_err(api_err)?;
        tracing::info!(
            "GPU {gpu}: {} by {}",
            if drain { "drained" } else { "back in service" },
            who.user
        );
        self.kick();
        // Let the scheduler publish the new state before answering.
        let mut rx = self.inner.changes.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
        self.gpu_view_of(who, gpu)
    }

    /// `POST /v1/gpus/{n}/layout` (root): re-partition a MIG GPU to exactly these instances.
    /// Refused (409, nothing changed) when it would remove or overlap a leased or busy
    /// instance.
    pub async fn force_layout(
        &self,
        who: &Identity,
        gpu: u32,
        specs: &[String],
    ) -> Result<GpuView, ApiError> {
        if !who.is_admin() {
            return Err(ApiError::forbidden("only root may set a GPU's layout"));
        }
        let facts = self.check_gpu(gpu)?;
        if facts.mode != GpuMode::Mig {
            return Err(ApiError::conflict(format!(
                "GPU {gpu} is in {} mode; only MIG GPUs have a layout",
                facts.mode
            )));
        }
        let model = self
            .inner
            .catalog
            .get(&facts.model)
            .ok_or_else(|| ApiError::internal(format!("model {} vanished", facts.model)))?;
        let mut layout = Vec::new();
        for s in specs {
            layout.push(
                model
                    .parse_spec(s)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            );
        }
        let v = model.validate(&layout);
        if !v.is_empty() {
            let text: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            return Err(ApiError::bad_request(format!(
                "invalid layout for GPU {gpu} ({}): {}",
                model.key,
                text.join("; ")
            )));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        lock(&self.inner.tx)
            .send(Cmd::Layout { gpu, layout, reply })
            .map_err(|_| ApiError::internal("the scheduler is not running"))?;
        rx.await
            .map_err(|_| ApiError::internal("the scheduler stopped before answering"))??;
        self.gpu_view_of(who, gpu)
    }
}

/// A `--gpu-model` query: a catalog key, alias or name, or a family name that fits one model
/// of this machine (`a100` names two models, but a machine with only one of them means it).
fn resolve_model(catalog: &Catalog, gpus: &[GpuFacts], q: &str) -> Option<String> {
    sched::model_key(catalog, q).or_else(|| {
        let mut fam: Vec<&str> = catalog
            .family(q)
            .iter()
            .map(|m| m.key.as_str())
            .filter(|k| gpus.iter().any(|g| g.model == *k))
            .collect();
        fam.dedup();
        (fam.len() == 1).then(|| fam[0].to_string())
    })
}

/// The canonical spelling of a profile name (as the fleet's models spell it).
fn canonical_profile(catalog: &Catalog, gpus: &[GpuFacts], name: &str) -> String {
    for g in gpus {
        if let Some(m) = catalog.get(&g.model) {
            if let Some(p) = m.profile_named(name) {
                return m.profile(p).name.clone();
            }
        }
    }
    name.trim().to_string()
}
