//! The gRPC server stack every licensing process runs.
//!
//! [`GrpcServer::bind`] takes the service routes and binds the listener (port 0 works, for tests);
//! [`GrpcServer::run_until_stopped`] serves until the shutdown future completes, then marks every
//! service NOT_SERVING in the health service, stops accepting, and lets in-flight requests drain
//! until the grace deadline.

use crate::config::Config;
use licensing_proto::FILE_DESCRIPTOR_SET;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{Layer, Service, ServiceBuilder};

/// Limits and switches of the server stack.
#[derive(Debug, Clone)]
pub struct StackSettings {
    pub request_timeout: Duration,
    pub concurrency_limit: usize,
    pub shutdown_grace: Duration,
    pub reflection: bool,
}

impl From<&Config> for StackSettings {
    fn from(c: &Config) -> Self {
        Self {
            request_timeout: c.request_timeout,
            concurrency_limit: c.concurrency_limit,
            shutdown_grace: c.shutdown_grace,
            reflection: c.reflection,
        }
    }
}

pub struct GrpcServer {
    listener: TcpListener,
    routes: Routes,
    health: HealthReporter,
    /// Names reported SERVING while up (each licensing service, and "" for the whole server).
    service_names: Vec<String>,
    settings: StackSettings,
}

impl GrpcServer {
    /// Binds `addr` and assembles health, reflection and `routes`. `service_names` are the fully
    /// qualified names of the services in `routes`, reported in the health service.
    pub async fn bind(
        addr: SocketAddr,
        routes: Routes,
        service_names: &[&str],
        settings: StackSettings,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = routes.add_service(health_service);
        if settings.reflection {
            // Advertise exactly what is served: the descriptor set also holds services not served here.
            let advertised: Vec<String> = service_names
                .iter()
                .map(|s| s.to_string())
                .chain(
                    [
                        "grpc.health.v1.Health",
                        "grpc.reflection.v1.ServerReflection",
                        "grpc.reflection.v1alpha.ServerReflection",
                    ]
                    .map(String::from),
                )
                .collect();
            let builder = || {
                let mut b = tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
                for name in &advertised {
                    b = b.with_service_name(name.clone());
                }
                b
            };
            let v1 = builder().build_v1().expect("descriptor sets compiled into the binary are valid");
            let v1alpha = builder().build_v1alpha().expect("descriptor sets compiled into the binary are valid");
            routes = routes.add_service(v1).add_service(v1alpha);
        }
        for name in service_names {
            health.set_service_status(name, ServingStatus::Serving).await;
        }
        Ok(Self {
            listener,
            routes,
            health,
            service_names: service_names.iter().map(|s| s.to_string()).collect(),
            settings,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The health reporter, e.g. to report NOT_SERVING while a dependency is down.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves until `shutdown` completes, then drains within the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let Self { listener, routes, health, service_names, settings } = self;
        let layers = ServiceBuilder::new()
            .layer(GlobalConcurrencyLimitLayer::new(settings.concurrency_limit))
            .layer(DeadlineLayer { after: settings.request_timeout })
            .into_inner();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .trace_fn(|req| tracing::info_span!("grpc", method = %req.uri().path()))
            .layer(layers)
            .add_routes(routes)
            // TCP_NODELAY: an answer written in pieces must not wait for the client's delayed ACK.
            .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
                let _ = stop_rx.await;
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result,
            () = shutdown => {}
        }
        tracing::info!(grace_ms = settings.shutdown_grace.as_millis() as u64, "shutting down: NOT_SERVING, draining");
        health.set_service_status("", ServingStatus::NotServing).await;
        for name in &service_names {
            health.set_service_status(name, ServingStatus::NotServing).await;
        }
        let _ = stop_tx.send(());
        match tokio::time::timeout(settings.shutdown_grace, server).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("drain deadline passed; closing the remaining connections");
                Ok(())
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// A tower layer that answers DEADLINE_EXCEEDED when a request's handler takes longer than
/// `after` to produce its response (a stream's body is not cut: only the time to first answer).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    pub after: Duration,
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, after: self.after }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    after: Duration,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let after = self.after;
        let future = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(after, future).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the request took longer than the server's deadline of {} ms; try again",
                    after.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn slow_handlers_get_deadline_exceeded_and_fast_ones_pass() {
        let slow = tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("late")))
        });
        let response = DeadlineLayer { after: Duration::from_millis(50) }
            .layer(slow)
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("a grpc-status header");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);

        let fast = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        });
        let response = DeadlineLayer { after: Duration::from_millis(50) }
            .layer(fast)
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(response.into_body(), "ok");
    }
}
