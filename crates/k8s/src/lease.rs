//! Leader election on a `coordination.k8s.io/v1` Lease, with an explicit clock.
//!
//! One replica holds the Lease and renews it; the others try now and then and take it over
//! only once `renewTime + leaseDurationSeconds` has passed. Every write is a replace with the
//! `resourceVersion` read just before, so two candidates racing for the same Lease cannot both
//! win: the apiserver answers the loser `409 Conflict`, which counts as "not leader".

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

/// A candidate for leadership.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// Whether this candidate leads after a try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This candidate holds the Lease until `renewTime + duration`.
    Leader {
        /// Whether it just took the Lease (from nobody or an expired holder).
        acquired: bool,
    },
    /// Another candidate holds it.
    Follower {
        /// The holder, if any.
        holder: Option<String>,
    },
}

impl LeaderElector {
    /// A candidate `identity` for the Lease `name` (in the `api`'s namespace).
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Take or renew the Lease at time `now`.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<Leadership, kube::Error> {
        let secs = i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_duration_seconds: Some(secs),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Leadership::Leader { acquired: true }),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Leadership::Follower { holder: None })
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let acquired = if holder.as_deref() == Some(self.identity.as_str()) {
            false
        } else {
            let held_for = spec
                .lease_duration_seconds
                .map(|s| SignedDuration::from_secs(i64::from(s)))
                .unwrap_or(SignedDuration::from_secs(i64::from(secs)));
            let expired = match (&holder, &spec.renew_time) {
                (None, _) | (_, None) => true,
                (Some(_), Some(r)) => r.0.saturating_add(held_for).map_or(true, |end| end <= now),
            };
            if !expired {
                return Ok(Leadership::Follower { holder });
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            true
        };
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(secs);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Leadership::Leader { acquired }),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leadership::Follower { holder }),
            Err(e) => Err(e),
        }
    }
}
