//! The portal's HTTP server loop: plain HTTP/1.1, or HTTPS with the server's TLS settings, and a
//! graceful stop on the drain signal (no new connections; requests in flight finish within the
//! grace period; idle keep-alive connections close at once).

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use licensing_runtime::client_address::{client_address_of, forwarded_for, ClientAddress, TrustedProxies};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

/// How long a client may take to finish a TLS handshake or send a request's headers, so slow
/// or idle connections cannot pile up.
const HANDSHAKE_AND_HEADERS: Duration = Duration::from_secs(20);

/// The portal's server, bound and ready to run.
pub struct WebServer {
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ServerConfig>>,
    trusted_proxies: Arc<TrustedProxies>,
}

impl WebServer {
    /// Serves `router` on `listener`, over TLS when `tls` is set.
    pub fn new(listener: TcpListener, router: Router, tls: Option<Arc<ServerConfig>>) -> Self {
        Self { listener, router, tls, trusted_proxies: Arc::default() }
    }

    /// Believes the `X-Forwarded-For` of these proxies (an Ingress in front of the portal) for
    /// the per-client limits.
    pub fn with_trusted_proxies(self, trusted_proxies: TrustedProxies) -> Self {
        Self { trusted_proxies: Arc::new(trusted_proxies), ..self }
    }

    /// The address the portal listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `drain` is cancelled, then lets requests in flight finish for at most `grace`.
    pub async fn run(self, drain: CancellationToken, grace: Duration) {
        serve(self.listener, self.router, self.tls, self.trusted_proxies, drain, grace).await
    }
}

async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ServerConfig>>,
    trusted_proxies: Arc<TrustedProxies>,
    drain: CancellationToken,
    grace: Duration,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = drain.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "portal: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let trusted = trusted_proxies.clone();
        let service = tower::ServiceBuilder::new()
            .map_request(move |mut request: axum::http::Request<hyper::body::Incoming>| {
                let client = trusted.client(peer.ip(), forwarded_for(request.headers()));
                request.extensions_mut().insert(ClientAddress(client));
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            })
            .service(router.clone());
        let service = TowerToHyperService::new(service);
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_AND_HEADERS);
            let outcome = match acceptor {
                None => watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_AND_HEADERS, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => watcher.watch(http.serve_connection(TokioIo::new(tls), service)).await,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "portal: TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "portal: TLS handshake timed out"),
                },
            };
            if let Err(e) = outcome {
                tracing::debug!(%peer, error = %e, "portal: connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("portal: drain deadline passed; closing the remaining connections");
    }
    connections.shutdown().await;
}

/// The client a request came from, for per-client limits: the peer, or the client a trusted
/// proxy forwarded (`unknown` when served without either).
pub fn client_ip(extensions: &axum::http::Extensions) -> String {
    client_address_of(extensions)
        .or_else(|| extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip()))
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}
