//! Floating seats: a [`SeatGuard`] holds a lease while it lives.
//!
//! Its background task heartbeats on the interval the server gives; through network faults it
//! retries with exponential backoff and jitter; when the server says the lease is gone (expired
//! while unreachable, or lost by the lease store) it checks out again with the same client
//! instance ID, so the product keeps one seat; when the seat is really gone (revoked, license
//! suspended, no seat free) it says so on the watch channel and stops. Dropping the guard checks
//! the seat in.

use crate::error::licensing_reason;
use crate::{Client, ClientError, Credentials};
use licensing_domain::clock::Millis;
use licensing_proto::seat::v1 as pb;
use rand::Rng;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// What a checkout asks for; the default names this process's user and host.
#[derive(Debug, Clone)]
pub struct CheckoutOptions {
    /// The module to check out; empty means the product itself.
    pub feature: String,
    /// The user the seat is for; by default the operating system's name of the user running
    /// the process (seat policies share, reserve, cap, allow and deny by it).
    pub user: String,
    /// The machine the seat is for; by default the operating system's host name.
    pub host: String,
    /// Stable for this process: reconnecting with it renews instead of taking a second seat.
    pub client_instance_id: String,
    /// Requested lease time to live; the server bounds it.
    pub ttl: Duration,
    /// Groups the product vouches the user belongs to (e.g. from a directory), for the
    /// license's reservations, caps, allow and deny lists.
    pub groups: Vec<String>,
}

impl Default for CheckoutOptions {
    fn default() -> Self {
        Self {
            feature: String::new(),
            user: os_user(),
            host: os_host(),
            client_instance_id: format!("{}-{}", std::process::id(), licensing_domain::ids::new_id("ci")),
            ttl: Duration::from_secs(60),
            groups: vec![],
        }
    }
}

/// The user running this process, as the operating system names it (not `$USER`, which a
/// service or a `sudo` may leave unset or wrong); empty when it cannot be told.
fn os_user() -> String {
    whoami::fallible::username().unwrap_or_default()
}

/// This machine's host name from the operating system (`$HOSTNAME` is a shell variable, usually
/// not exported to products); empty when it cannot be told.
fn os_host() -> String {
    whoami::fallible::hostname().unwrap_or_default()
}

/// Where a [`SeatGuard`]'s seat stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeatState {
    /// The lease is live.
    Held {
        /// License ID.
        license_id: String,
        /// Lease ID (`lse_…`); a new one after a re-checkout.
        lease_id: String,
        /// The lease expires at this instant unless heartbeated (Unix ms).
        expires_at_ms: Millis,
        /// The lease's fencing number; only grows per license.
        fence: i64,
    },
    /// The server is unreachable; the task keeps trying. The last lease expires at `expires_at_ms`.
    Reconnecting {
        /// The last lease's expiry (Unix ms).
        expires_at_ms: Millis,
    },
    /// The seat is gone for good; the reason says why (e.g. "LEASE_REVOKED").
    Lost {
        /// The server's stable reason.
        reason: String,
        /// The server's explanation, for a person.
        message: String,
    },
}

/// Holds a floating seat while it lives: heartbeats in the background, checks in on drop.
pub struct SeatGuard {
    state: watch::Receiver<SeatState>,
    stop: Option<oneshot::Sender<oneshot::Sender<bool>>>,
}

impl SeatGuard {
    /// Follow the seat's state (`changed().await`).
    pub fn watch(&self) -> watch::Receiver<SeatState> {
        self.state.clone()
    }

    /// The seat's state now.
    pub fn state(&self) -> SeatState {
        self.state.borrow().clone()
    }

    /// Checks the seat in and waits for the answer; `true` when a live lease was released.
    pub async fn release(mut self) -> bool {
        let Some(stop) = self.stop.take() else { return false };
        let (done_tx, done_rx) = oneshot::channel();
        if stop.send(done_tx).is_err() {
            return false;
        }
        done_rx.await.unwrap_or(false)
    }
}

impl Drop for SeatGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The task checks in by itself; nobody waits for the answer.
            let (done_tx, _) = oneshot::channel();
            let _ = stop.send(done_tx);
        }
    }
}

fn seat_credentials(c: &Credentials) -> Option<pb::SeatCredentials> {
    use pb::seat_credentials::Credential;
    Some(pb::SeatCredentials {
        credential: Some(match c {
            Credentials::LicenseKey(k) => Credential::LicenseKey(k.clone()),
            Credentials::IdAndPassword { license_id, password } => {
                Credential::LicenseIdAndPassword(pb::LicenseIdAndPassword {
                    license_id: license_id.clone(),
                    password: password.clone(),
                })
            }
        }),
    })
}

pub(crate) fn request(credentials: &Credentials, o: &CheckoutOptions) -> pb::CheckoutRequest {
    pb::CheckoutRequest {
        credentials: seat_credentials(credentials),
        feature: o.feature.clone(),
        user: o.user.clone(),
        host: o.host.clone(),
        client_instance_id: o.client_instance_id.clone(),
        ttl: Some(prost_types::Duration { seconds: o.ttl.as_secs() as i64, nanos: o.ttl.subsec_nanos() as i32 }),
        borrow_for: None,
        groups: o.groups.clone(),
    }
}

fn millis_of(d: Option<&prost_types::Duration>) -> u64 {
    d.map_or(1_000, |d| (d.seconds.max(0) as u64) * 1000 + (d.nanos.max(0) as u64) / 1_000_000).max(50)
}

pub(crate) fn ts_millis(t: Option<&prost_types::Timestamp>) -> Millis {
    t.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

/// The current lease, as the background task knows it.
struct Held {
    license_id: String,
    lease_id: String,
    expires_at_ms: Millis,
    fence: i64,
    interval: Duration,
    /// The last signed lease token: sent with each heartbeat, so a lease store that lost the
    /// lease (Redis restarted empty) can put it back.
    token: String,
}

impl Held {
    fn from_grant(g: &pb::LeaseGrant) -> Self {
        Self {
            license_id: g.license_id.clone(),
            lease_id: g.lease_id.clone(),
            expires_at_ms: ts_millis(g.expires_at.as_ref()),
            fence: g.fence,
            interval: Duration::from_millis(millis_of(g.heartbeat_interval.as_ref())),
            token: g.lease_token.clone(),
        }
    }

    fn state(&self) -> SeatState {
        SeatState::Held {
            license_id: self.license_id.clone(),
            lease_id: self.lease_id.clone(),
            expires_at_ms: self.expires_at_ms,
            fence: self.fence,
        }
    }
}

/// Exponential backoff with full jitter, capped.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap = 250u64.saturating_mul(1 << attempt.min(5)).min(5_000);
    Duration::from_millis(rand::rng().random_range(cap / 2..=cap))
}

impl Client {
    /// Checks a seat out now; fails when none is free (`RESOURCE_EXHAUSTED`).
    pub async fn checkout(&self, credentials: Credentials, options: CheckoutOptions) -> Result<SeatGuard, ClientError> {
        let grant = self
            .seat
            .clone()
            .checkout(request(&credentials, &options))
            .await
            .map_err(ClientError::from_status)?
            .into_inner()
            .grant;
        let grant = grant.ok_or(ClientError::Config("the server sent no lease"))?;
        Ok(self.hold(credentials, options, Held::from_grant(&grant)))
    }

    /// Waits (first come, first served) until a seat is free, at most `max_wait`.
    pub async fn wait_for_seat(
        &self,
        credentials: Credentials,
        options: CheckoutOptions,
        max_wait: Duration,
    ) -> Result<SeatGuard, ClientError> {
        let wait = pb::WaitForSeatRequest {
            checkout: Some(request(&credentials, &options)),
            max_wait: Some(prost_types::Duration {
                seconds: max_wait.as_secs() as i64,
                nanos: max_wait.subsec_nanos() as i32,
            }),
        };
        let mut stream = self.seat.clone().wait_for_seat(wait).await.map_err(ClientError::from_status)?.into_inner();
        loop {
            match stream.message().await.map_err(ClientError::from_status)? {
                Some(pb::WaitForSeatResponse { event: Some(pb::wait_for_seat_response::Event::Grant(g)) }) => {
                    return Ok(self.hold(credentials, options, Held::from_grant(&g)))
                }
                Some(_) => continue,
                None => return Err(ClientError::Unreachable("the wait ended without a seat".into())),
            }
        }
    }

    fn hold(&self, credentials: Credentials, options: CheckoutOptions, held: Held) -> SeatGuard {
        let (state_tx, state_rx) = watch::channel(held.state());
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(keep_alive(self.clone(), credentials, options, held, state_tx, stop_rx));
        SeatGuard { state: state_rx, stop: Some(stop_tx) }
    }
}

async fn keep_alive(
    client: Client,
    credentials: Credentials,
    options: CheckoutOptions,
    mut held: Held,
    state: watch::Sender<SeatState>,
    mut stop: oneshot::Receiver<oneshot::Sender<bool>>,
) {
    let mut seat = client.seat.clone();
    let mut wait = held.interval;
    let mut attempt = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            done = &mut stop => {
                let checkin = pb::CheckinRequest { license_id: held.license_id.clone(), lease_id: held.lease_id.clone() };
                let released = seat.checkin(checkin).await.map(|r| r.into_inner().released).unwrap_or(false);
                if let Ok(done) = done {
                    let _ = done.send(released);
                }
                return;
            }
        }
        let heartbeat = pb::HeartbeatRequest {
            license_id: held.license_id.clone(),
            lease_id: held.lease_id.clone(),
            lease_token: held.token.clone(),
        };
        let outcome = match seat.heartbeat(heartbeat).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                held.expires_at_ms = ts_millis(reply.expires_at.as_ref());
                held.interval = Duration::from_millis(millis_of(reply.heartbeat_interval.as_ref()));
                held.token = reply.lease_token;
                Ok(())
            }
            Err(status) => Err(status),
        };
        let status = match outcome {
            Ok(()) => {
                attempt = 0;
                wait = held.interval;
                state.send_replace(held.state());
                continue;
            }
            Err(status) => status,
        };
        if ClientError::is_unreachable(&status) {
            attempt += 1;
            wait = backoff(attempt);
            state.send_replace(SeatState::Reconnecting { expires_at_ms: held.expires_at_ms });
            continue;
        }
        let reason = licensing_reason(&status).unwrap_or_default();
        if matches!(reason.as_str(), "LEASE_EXPIRED" | "LEASE_NOT_FOUND") {
            // The lease is gone but the license is fine: take the seat again, as the same client.
            match seat.checkout(request(&credentials, &options)).await {
                Ok(reply) => {
                    if let Some(g) = reply.into_inner().grant {
                        held = Held::from_grant(&g);
                        attempt = 0;
                        wait = held.interval;
                        tracing::info!(lease_id = %held.lease_id, "seat re-checked out");
                        state.send_replace(held.state());
                        continue;
                    }
                }
                Err(s) if ClientError::is_unreachable(&s) => {
                    attempt += 1;
                    wait = backoff(attempt);
                    state.send_replace(SeatState::Reconnecting { expires_at_ms: held.expires_at_ms });
                    continue;
                }
                Err(s) => {
                    state.send_replace(SeatState::Lost {
                        reason: licensing_reason(&s).unwrap_or_default(),
                        message: s.message().to_owned(),
                    });
                    return;
                }
            }
        }
        state.send_replace(SeatState::Lost { reason, message: status.message().to_owned() });
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(program: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(program)
            .args(args)
            .env_remove("HOSTNAME")
            .output()
            .unwrap_or_else(|e| panic!("{program} must be installed for this test: {e}"));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn default_options_name_the_real_user_and_host() {
        // The variables a shell may or may not export must not matter.
        let options = CheckoutOptions::default();
        assert_eq!(options.host, command("hostname", &[]), "the operating system's host name");
        assert_eq!(options.user, command("id", &["-un"]), "the operating system's user name");
        assert!(!options.host.is_empty() && !options.user.is_empty());
    }
}
