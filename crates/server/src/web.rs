//! The web view: a read-only page at `/` of `tessera serve --listen ADDR` that draws every
//! GPU's slices, the queue, recent re-partitions and per-user usage, refreshed every two
//! seconds from `GET /v1/overview`.
//!
//! The page, its script and its style sheet are embedded in the binary (`include_str!` in
//! `tessera-api`, where another server can take them too; no build step, no CDN) and hold no
//! data, so they are served to anyone. The data
//! (`/v1/overview`, an [`OverviewView`]) needs the API's bearer token like every other route —
//! the page asks for it once and keeps it in the browser's local storage, or takes it from the
//! address's fragment (`/#token=…`, never sent to the server) — unless the configuration says
//! `web_public: true`, when a caller without a token sees every slice and holder but no
//! commands. Environments (`env`) never appear in the overview.

use std::collections::BTreeMap;

use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use tessera_api::overview::{page_asset, OverviewGpu, OverviewView, UserUsageView};
use tessera_api::wire::{RequestState, Slice};

use crate::daemon::{now_ms, Daemon};
use crate::error::ApiError;
use crate::ident::Identity;
use crate::store::RequestRow;

/// Answer one of the embedded assets by path (`/`, `/app.js`, `/style.css`), from
/// [`tessera_api::overview::page_asset`].
pub fn asset(path: &str) -> Option<Response> {
    let (body, kind) = page_asset(path)?;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, kind.parse().ok()?);
    headers.insert(header::CACHE_CONTROL, "no-cache".parse().ok()?);
    // Only the embedded script and style may run; the page fetches only its own origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
            .parse()
            .ok()?,
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, "nosniff".parse().ok()?);
    Some((headers, body).into_response())
}

/// The host's name, for the page's title.
fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Per-user usage from every request row: leases held and waiting now, leases granted and
/// slice-seconds held over the state's life (a lease still held counts up to `now`).
pub fn usage(rows: &[RequestRow], now: u64) -> Vec<UserUsageView> {
    let mut by_user: BTreeMap<&str, UserUsageView> = BTreeMap::new();
    for r in rows {
        let u = by_user.entry(&r.user).or_insert_with(|| UserUsageView {
            user: r.user.clone(),
            leased: 0,
            queued: 0,
            leases_total: 0,
            slice_seconds: 0,
        });
        match r.state {
            RequestState::Queued => u.queued += 1,
            RequestState::Leased => u.leased += 1,
            _ => {}
        }
        if let Some(start) = r.leased_ms {
            u.leases_total += 1;
            let end = r.ended_ms.unwrap_or(now);
            u.slice_seconds += end.saturating_sub(start) / 1000;
        }
    }
    by_user.into_values().collect()
}

/// The overview as `who` may see it. `public`: a caller without a token on a page made public
/// (`web_public: true`) — every holder is shown, no command is.
pub fn overview(daemon: &Daemon, who: &Identity, public: bool) -> Result<OverviewView, ApiError> {
    let status = daemon.status(who)?;
    let mut requests = daemon.list(who, false)?;
    for r in &mut requests {
        r.env.clear();
        if public {
            r.command.clear();
            if let Some(Slice::Mig { uuid, .. }) = &mut r.slice {
                uuid.clear();
            }
        }
    }
    let (mut queue, leases): (Vec<_>, Vec<_>) = requests
        .into_iter()
        .filter(|r| r.state.is_active())
        .partition(|r| r.state == RequestState::Queued);
    queue.sort_by_key(|r| r.position.unwrap_or(u32::MAX));
    let rows = daemon.all_rows().map_err(ApiError::internal)?;
    let now = now_ms();
    let mut users = usage(&rows, now);
    if !who.is_admin() && !public {
        // A user sees the whole fleet's holders only where the daemon shows them; usage
        // likewise: their own line only.
        users.retain(|u| u.user == who.user);
    }
    let catalog = daemon.catalog();
    let gpus = status
        .gpus
        .into_iter()
        .map(|g| {
            let model = catalog.get(&g.model);
            let mut instance_memory_mib = Vec::new();
            let mut instance_slots = Vec::new();
            let mut instance_compute_slots = Vec::new();
            for i in &g.instances {
                let p = model.and_then(|m| m.profile_named(&i.profile).map(|p| m.profile(p)));
                instance_memory_mib.push(p.and_then(|p| p.memory_mib).unwrap_or(0));
                instance_slots.push(p.map(|p| p.memory_slices).unwrap_or(1));
                instance_compute_slots.push(p.map(|p| p.compute_slices).unwrap_or(0));
            }
            let total_memory_mib = daemon
                .gpus()
                .iter()
                .find(|f| f.index == g.index)
                .map(|f| f.memory_mib)
                .unwrap_or(0);
            let mut g = g;
            if public {
                for i in &mut g.instances {
                    i.uuid = None;
                }
            }
            OverviewGpu {
                node: None,
                compute_slots: model.map(|m| m.compute_slices).unwrap_or(0),
                memory_slots: model.map(|m| m.memory_slices).unwrap_or(0),
                total_memory_mib,
                instance_memory_mib,
                instance_slots,
                instance_compute_slots,
                gpu: g,
            }
        })
        .collect();
    Ok(OverviewView {
        source: format!("tessera serve on {}", host_name()),
        backend: status.backend,
        now_ms: now,
        gpus,
        leases,
        queue,
        repartitions: daemon.metrics().recent_repartitions(),
        repartitions_total: status.repartitions,
        users,
        commands_hidden: public,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::wire::SliceAsk;

    fn row(
        id: u64,
        user: &str,
        state: RequestState,
        leased: Option<u64>,
        ended: Option<u64>,
    ) -> RequestRow {
        RequestRow {
            id,
            uid: 1000,
            user: user.into(),
            pid: None,
            pid_start: None,
            ask: SliceAsk::Share,
            gpu_model: None,
            priority: 0,
            command: Vec::new(),
            state,
            submitted_ms: 0,
            leased_ms: leased,
            ended_ms: ended,
            slice: leased.map(|_| Slice::Timeslice { gpu: 0, replica: 0 }),
            env: BTreeMap::new(),
            exit_code: None,
            end_reason: None,
            cancel_requested: false,
        }
    }

    #[test]
    fn usage_counts_held_time_up_to_now_and_waiting_requests() {
        let rows = [
            row(1, "alice", RequestState::Done, Some(1_000), Some(11_000)),
            row(2, "alice", RequestState::Leased, Some(20_000), None),
            row(3, "bob", RequestState::Queued, None, None),
            row(4, "bob", RequestState::Cancelled, None, Some(5_000)),
        ];
        let u = usage(&rows, 25_000);
        assert_eq!(u.len(), 2);
        assert_eq!(
            (
                u[0].user.as_str(),
                u[0].leased,
                u[0].leases_total,
                u[0].slice_seconds
            ),
            ("alice", 1, 2, 15)
        );
        assert_eq!(
            (
                u[1].user.as_str(),
                u[1].queued,
                u[1].leases_total,
                u[1].slice_seconds
            ),
            ("bob", 1, 0, 0)
        );
    }

    #[test]
    fn assets_are_served_with_their_types_and_unknown_paths_are_not() {
        let r = asset("/app.js").unwrap();
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert!(asset("/").is_some());
        assert!(asset("/etc/passwd").is_none());
        let index = tessera_api::overview::INDEX_HTML;
        assert!(index.contains("app.js") && index.contains("style.css"));
    }
}
