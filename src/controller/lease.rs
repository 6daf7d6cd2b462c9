//! Leader election for the status writer: one `coordination.k8s.io/v1` Lease.
//!
//! kubert's `LeaseManager` would do, but no kubert release builds against this crate's kube
//! (5) and k8s-openapi (0.29): kubert 0.25 needs kube 1.1 and k8s-openapi 0.25. So this is
//! a small one with the same rules:
//!
//! - the holder renews every [`RENEW_EVERY`]; the Lease lasts [`LEASE_DURATION`];
//! - another replica takes it only once `renewTime + leaseDurationSeconds` has passed;
//! - every write is a `replace` carrying the `resourceVersion` it read, so two replicas can
//!   never both win (the loser gets 409 Conflict and reads again);
//! - the holder keeps the Lease it last wrote and renews from it without reading first: a
//!   renewal is one PUT, a follower's check one GET;
//! - [`LeaseHandle::release`] (on shutdown) clears `holderIdentity` so another replica takes
//!   over at its next check instead of after expiry, and the handle never takes the Lease
//!   again.
//!
//! Ownership: one [`LeaseHandle`] per process, made by whoever wires the controller (the
//! server's runtime); clones share its state. The status writer calls
//! [`LeaseHandle::hold`]; shutdown calls [`LeaseHandle::release`]. Both serialize on the
//! handle's mutex, so a renewal never races the release.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::Mutex;

/// The Lease's name.
pub(crate) const LEASE_NAME: &str = "meshrev-status-writer";
/// `leaseDurationSeconds`.
pub(crate) const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews and a follower checks.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Who this replica is, and where the Lease lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) holder: String,
    pub(crate) namespace: String,
}

impl Identity {
    /// `POD_NAME`/`POD_NAMESPACE` (downward API), else the host name and `meshrev-system`;
    /// the process id is appended, so two processes on one host differ.
    pub(crate) fn from_env() -> Self {
        let holder = std::env::var("POD_NAME")
            .ok()
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_else(|| "meshrev".into());
        Identity {
            holder: format!("{holder}-{}", std::process::id()),
            namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "meshrev-system".into()),
        }
    }
}

/// What to do with a Lease as read (`None`: there is none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// No Lease: create one held by us.
    Create,
    /// Ours: renew it.
    Renew,
    /// Free (released, or expired): take it over.
    Take,
    /// Someone else holds it and it has not expired.
    Follow { holder: String },
}

/// The election rule, without I/O.
pub(crate) fn step(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    match holder {
        Some(h) if h == me => Step::Renew,
        None => Step::Take,
        Some(h) => {
            let secs = spec
                .lease_duration_seconds
                .map_or(LEASE_DURATION.as_secs() as i64, i64::from);
            let expired = spec.renew_time.as_ref().is_none_or(|t| {
                now.duration_since(t.0) > k8s_openapi::jiff::SignedDuration::from_secs(secs)
            });
            if expired {
                Step::Take
            } else {
                Step::Follow {
                    holder: h.to_string(),
                }
            }
        }
    }
}

/// `lease` as held by `me` now; a take-over counts a transition.
fn held(mut lease: Lease, me: &str, take: bool, now: Timestamp) -> Lease {
    let spec = lease.spec.get_or_insert_with(Default::default);
    let now = MicroTime(now);
    if take || spec.acquire_time.is_none() {
        spec.acquire_time = Some(now.clone());
    }
    if take {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
    spec.renew_time = Some(now);
    lease.metadata.managed_fields = None;
    lease
}

#[derive(Debug, Default)]
struct State {
    /// The Lease as this replica last wrote it, while it holds it.
    mine: Option<Lease>,
    released: bool,
}

/// A replica's handle on the status writer's Lease. Cheap to clone; see the module docs.
#[derive(Clone)]
pub(crate) struct LeaseHandle {
    api: Api<Lease>,
    me: Arc<str>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHandle").field("me", &self.me).finish()
    }
}

impl LeaseHandle {
    pub(crate) fn new(client: Client, me: &Identity) -> Self {
        LeaseHandle {
            api: Api::namespaced(client, &me.namespace),
            me: me.holder.as_str().into(),
            state: Arc::default(),
        }
    }

    /// This replica's holder identity.
    pub(crate) fn holder(&self) -> &str {
        &self.me
    }

    /// Takes or renews the Lease: true while this replica holds it. After
    /// [`LeaseHandle::release`], false without any call.
    pub(crate) async fn hold(&self) -> kube::Result<bool> {
        let mut state = self.state.lock().await;
        if state.released {
            return Ok(false);
        }
        // Renew from what we last wrote: one PUT. A conflict means someone else wrote it
        // (we must have expired): read it and decide again.
        if let Some(mine) = state.mine.take() {
            let lease = held(mine, &self.me, false, Timestamp::now());
            match self
                .api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
            {
                Ok(l) => {
                    state.mine = Some(l);
                    return Ok(true);
                }
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let current = self.api.get_opt(LEASE_NAME).await?;
        let now = Timestamp::now();
        let written = match (
            step(
                current.as_ref().and_then(|l| l.spec.as_ref()),
                &self.me,
                now,
            ),
            current,
        ) {
            (Step::Follow { .. }, _) => return Ok(false),
            (Step::Create, _) | (_, None) => {
                let lease = held(
                    Lease {
                        metadata: kube::api::ObjectMeta {
                            name: Some(LEASE_NAME.into()),
                            ..Default::default()
                        },
                        spec: Some(LeaseSpec {
                            lease_transitions: Some(0),
                            ..Default::default()
                        }),
                    },
                    &self.me,
                    false,
                    now,
                );
                self.api.create(&PostParams::default(), &lease).await
            }
            (s, Some(current)) => {
                let lease = held(current, &self.me, s == Step::Take, now);
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(l) => {
                state.mine = Some(l);
                Ok(true)
            }
            // Another replica got there first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if this replica holds it, and never takes it again.
    pub(crate) async fn release(&self) {
        let mut state = self.state.lock().await;
        state.released = true;
        let Some(mut lease) = state.mine.take() else {
            return;
        };
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("status writer: lease released"),
            Err(e) => {
                // Our copy may be stale (409): then someone else holds it, nothing to do.
                tracing::warn!(error = %e, "status writer: releasing the lease failed; it will expire")
            }
        }
    }

    /// True once [`LeaseHandle::release`] ran.
    pub(crate) async fn is_released(&self) -> bool {
        self.state.lock().await.released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fake_api::{fake, status};

    fn spec(holder: Option<&str>, renewed_secs_ago: i64) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(
                    renewed_secs_ago,
                ))
                .expect("a timestamp seconds ago must exist"),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn the_election_rule() {
        let now = Timestamp::now();
        assert_eq!(step(None, "me", now), Step::Create);
        assert_eq!(step(Some(&spec(Some("me"), 100)), "me", now), Step::Renew);
        assert_eq!(
            step(Some(&spec(Some("other"), 2)), "me", now),
            Step::Follow {
                holder: "other".into()
            }
        );
        assert_eq!(step(Some(&spec(Some("other"), 16)), "me", now), Step::Take);
        assert_eq!(step(Some(&spec(None, 0)), "me", now), Step::Take);
        assert_eq!(step(Some(&spec(Some(""), 0)), "me", now), Step::Take);
        let mut no_renew = spec(Some("other"), 0);
        no_renew.renew_time = None;
        assert_eq!(step(Some(&no_renew), "me", now), Step::Take);
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let now = Timestamp::now();
        let lease = Lease {
            spec: Some(LeaseSpec {
                lease_transitions: Some(3),
                ..spec(Some("other"), 60)
            }),
            ..Default::default()
        };
        let s = held(lease.clone(), "me", true, now).spec.unwrap();
        assert_eq!(s.holder_identity.as_deref(), Some("me"));
        assert_eq!(s.lease_transitions, Some(4));
        assert_eq!(s.acquire_time.map(|t| t.0), Some(now));
        let s = held(lease, "me", false, now).spec.unwrap();
        assert_eq!(s.lease_transitions, Some(3));
    }

    fn lease_json(holder: Option<&str>, rv: &str, renewed_secs_ago: i64) -> serde_json::Value {
        let mut l = serde_json::to_value(Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(LEASE_NAME.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(spec(holder, renewed_secs_ago)),
        })
        .expect("a lease must serialize");
        l["apiVersion"] = "coordination.k8s.io/v1".into();
        l["kind"] = "Lease".into();
        l
    }

    fn not_found() -> (u16, serde_json::Value) {
        status(404, "NotFound")
    }

    fn conflict() -> (u16, serde_json::Value) {
        status(409, "Conflict")
    }

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";

    fn me() -> Identity {
        Identity {
            holder: "me".into(),
            namespace: "ns".into(),
        }
    }

    #[tokio::test]
    async fn creates_then_renews_with_one_put_then_releases() {
        let (client, api) = fake(vec![
            not_found(),
            (201, lease_json(Some("me"), "1", 0)),
            (200, lease_json(Some("me"), "2", 0)),
            (200, lease_json(None, "3", 0)),
        ]);
        let lease = LeaseHandle::new(client, &me());
        assert!(lease.hold().await.unwrap());
        assert!(lease.hold().await.unwrap());
        lease.release().await;
        assert!(!lease.hold().await.unwrap(), "never again after release");
        assert_eq!(
            api.calls(),
            vec![
                format!("GET {PATH}/{LEASE_NAME}"),
                format!("POST {PATH}"),
                format!("PUT {PATH}/{LEASE_NAME}"),
                format!("PUT {PATH}/{LEASE_NAME}"),
            ]
        );
    }

    #[tokio::test]
    async fn follows_a_live_holder_and_takes_an_expired_one() {
        let (client, api) = fake(vec![
            (200, lease_json(Some("other"), "1", 1)),
            (200, lease_json(Some("other"), "1", 60)),
            (200, lease_json(Some("me"), "2", 0)),
        ]);
        let lease = LeaseHandle::new(client, &me());
        assert!(!lease.hold().await.unwrap());
        assert!(lease.hold().await.unwrap());
        assert_eq!(
            api.calls(),
            vec![
                format!("GET {PATH}/{LEASE_NAME}"),
                format!("GET {PATH}/{LEASE_NAME}"),
                format!("PUT {PATH}/{LEASE_NAME}"),
            ]
        );
    }

    #[tokio::test]
    async fn a_lost_race_or_a_stale_copy_means_not_leading() {
        let (client, api) = fake(vec![
            // Both see it expired; the other replica's replace lands first.
            (200, lease_json(Some("other"), "1", 60)),
            conflict(),
            // Later: the other holds it.
            (200, lease_json(Some("other"), "2", 1)),
        ]);
        let lease = LeaseHandle::new(client, &me());
        assert!(!lease.hold().await.unwrap());
        assert!(!lease.hold().await.unwrap());
        assert_eq!(api.calls().len(), 3);

        // Holding, then someone else took it while we were away: the renewal conflicts,
        // a read shows the other holder.
        let (client, api) = fake(vec![
            not_found(),
            (201, lease_json(Some("me"), "1", 0)),
            conflict(),
            (200, lease_json(Some("other"), "5", 1)),
        ]);
        let lease = LeaseHandle::new(client, &me());
        assert!(lease.hold().await.unwrap());
        assert!(!lease.hold().await.unwrap());
        assert_eq!(
            api.calls()[2..],
            [
                format!("PUT {PATH}/{LEASE_NAME}"),
                format!("GET {PATH}/{LEASE_NAME}"),
            ]
        );
        // Not holding: release makes no call.
        lease.release().await;
        assert_eq!(api.calls().len(), 4);
    }
}
