//! The standard gRPC health service (`grpc.health.v1.Health`), served from one watch channel of
//! every name's status rather than by tonic-health's own service, so that the server controls its
//! `Watch` streams: when the drain starts, each one hears NOT_SERVING (unless it already has) and
//! then ends, and no health watcher holds the process through the drain.
//!
//! `Check` answers as tonic-health does: the name's status, or NOT_FOUND for a name never
//! registered. `Watch` of an unregistered name is NOT_FOUND too (as in tonic-health); a
//! registered name's stream sends its status at once and then each change of it.

use std::collections::BTreeMap;
use std::pin::Pin;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The status of each registered name ("" is the whole server), as the health service reports
/// it. Cloned handles share the statuses.
#[derive(Debug, Clone)]
pub struct HealthStatuses {
    statuses: watch::Sender<BTreeMap<String, ServingStatus>>,
}

impl Default for HealthStatuses {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthStatuses {
    /// "" (the whole server) registered as SERVING, as tonic-health starts.
    pub fn new() -> Self {
        let (statuses, _) = watch::channel(BTreeMap::from([(String::new(), ServingStatus::Serving)]));
        Self { statuses }
    }

    /// Sets (and registers) `name`'s status; its watchers hear it when it changes.
    pub fn set(&self, name: &str, status: ServingStatus) {
        self.statuses.send_if_modified(|all| all.insert(name.to_owned(), status) != Some(status));
    }

    /// Sets every registered name at once, so watchers of each hear it together.
    pub fn set_all(&self, status: ServingStatus) {
        self.statuses.send_if_modified(|all| {
            let mut changed = false;
            for current in all.values_mut() {
                changed |= std::mem::replace(current, status) != status;
            }
            changed
        });
    }

    /// `name`'s status; `None` when it was never registered.
    pub fn get(&self, name: &str) -> Option<ServingStatus> {
        self.statuses.borrow().get(name).copied()
    }

    /// The gRPC service answering from these statuses. Its `Watch` streams end once `drain` is
    /// cancelled, after sending NOT_SERVING if they had not yet.
    pub fn service(&self, drain: CancellationToken) -> HealthServer<HealthService> {
        HealthServer::new(HealthService { statuses: self.statuses.subscribe(), drain })
    }
}

/// `grpc.health.v1.Health` over [`HealthStatuses`].
pub struct HealthService {
    statuses: watch::Receiver<BTreeMap<String, ServingStatus>>,
    drain: CancellationToken,
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

fn not_registered() -> Status {
    Status::not_found("service not registered")
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status as i32 }
}

/// Where one `Watch` stream stands.
struct Watcher {
    statuses: watch::Receiver<BTreeMap<String, ServingStatus>>,
    name: String,
    drain: CancellationToken,
    /// The status last sent on the stream.
    sent: Option<ServingStatus>,
    ended: bool,
}

impl Watcher {
    /// The next status to send; `None` ends the stream.
    async fn next(&mut self) -> Option<ServingStatus> {
        if self.ended {
            return None;
        }
        loop {
            if self.drain.is_cancelled() {
                // The drain ends every watch, with NOT_SERVING as its last word.
                self.ended = true;
                return (self.sent != Some(ServingStatus::NotServing)).then_some(ServingStatus::NotServing);
            }
            let current =
                self.statuses.borrow_and_update().get(&self.name).copied().unwrap_or(ServingStatus::ServiceUnknown);
            if self.sent != Some(current) {
                self.sent = Some(current);
                return Some(current);
            }
            tokio::select! {
                changed = self.statuses.changed() => {
                    if changed.is_err() {
                        // The server is gone.
                        return None;
                    }
                }
                () = self.drain.cancelled() => {}
            }
        }
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let status = self.statuses.borrow().get(&request.get_ref().service).copied().ok_or_else(not_registered)?;
        Ok(Response::new(response(status)))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let name = request.into_inner().service;
        if !self.statuses.borrow().contains_key(&name) {
            return Err(not_registered());
        }
        let watcher =
            Watcher { statuses: self.statuses.clone(), name, drain: self.drain.clone(), sent: None, ended: false };
        let stream = futures::stream::unfold(watcher, |mut watcher| async move {
            let status = watcher.next().await?;
            Some((Ok(response(status)), watcher))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn next(stream: &mut WatchStream) -> Option<i32> {
        stream.next().await.map(|r| r.unwrap().status)
    }

    #[tokio::test]
    async fn check_answers_as_tonic_health_does() {
        let statuses = HealthStatuses::new();
        let service = HealthService { statuses: statuses.statuses.subscribe(), drain: CancellationToken::new() };
        let check = |name: &str| service.check(Request::new(HealthCheckRequest { service: name.into() }));
        assert_eq!(check("").await.unwrap().into_inner().status, ServingStatus::Serving as i32);
        let unknown = check("a.B").await.unwrap_err();
        assert_eq!((unknown.code(), unknown.message()), (tonic::Code::NotFound, "service not registered"));
        statuses.set("a.B", ServingStatus::Serving);
        assert_eq!(check("a.B").await.unwrap().into_inner().status, ServingStatus::Serving as i32);
        statuses.set_all(ServingStatus::NotServing);
        assert_eq!(check("").await.unwrap().into_inner().status, ServingStatus::NotServing as i32);
        assert_eq!(check("a.B").await.unwrap().into_inner().status, ServingStatus::NotServing as i32);
    }

    #[tokio::test]
    async fn a_watch_hears_each_change_and_ends_with_not_serving_when_the_drain_starts() {
        let statuses = HealthStatuses::new();
        statuses.set("a.B", ServingStatus::Serving);
        let drain = CancellationToken::new();
        let service = HealthService { statuses: statuses.statuses.subscribe(), drain: drain.clone() };
        let watch = |name: &str| service.watch(Request::new(HealthCheckRequest { service: name.into() }));
        assert_eq!(watch("no.Such").await.err().map(|s| s.code()), Some(tonic::Code::NotFound));
        // Drained while SERVING: NOT_SERVING, then the end.
        let mut serving = watch("a.B").await.unwrap().into_inner();
        assert_eq!(next(&mut serving).await, Some(ServingStatus::Serving as i32));
        // Drained after hearing NOT_SERVING: just the end.
        let mut whole = watch("").await.unwrap().into_inner();
        assert_eq!(next(&mut whole).await, Some(ServingStatus::Serving as i32));
        statuses.set("", ServingStatus::Serving); // no change, nothing sent
        statuses.set("", ServingStatus::NotServing);
        assert_eq!(next(&mut whole).await, Some(ServingStatus::NotServing as i32));

        drain.cancel();
        assert_eq!(next(&mut serving).await, Some(ServingStatus::NotServing as i32));
        assert_eq!(next(&mut serving).await, None);
        assert_eq!(next(&mut whole).await, None);
        // A watch begun after the drain started hears NOT_SERVING and ends.
        let mut late = watch("a.B").await.unwrap().into_inner();
        assert_eq!(next(&mut late).await, Some(ServingStatus::NotServing as i32));
        assert_eq!(next(&mut late).await, None);
    }
}
