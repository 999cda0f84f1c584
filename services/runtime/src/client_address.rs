//! The address a request comes from, as rate limits and password-guess throttling count
//! clients: the TCP peer, or, when the peer is a trusted proxy (the gateway, an Ingress
//! controller), the client address that proxy forwarded in `X-Forwarded-For`.
//!
//! Behind a gateway every call arrives from the gateway's address; counting that address would
//! make one guesser slow down every customer. Only proxies named in `LICENSING_TRUSTED_PROXIES`
//! are believed: anyone else could write any `X-Forwarded-For` to escape its limits.

use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http;
use tower::{Layer, Service};

/// Proxies whose `X-Forwarded-For` is believed (`LICENSING_TRUSTED_PROXIES`); empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma-separated IP addresses and CIDR ranges (`10.0.0.0/8, 172.18.0.5`); `off` or an empty
    /// text trusts no proxy. The error says which entry is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(Self::default());
        }
        let mut ranges = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let range = match entry.parse::<IpNet>() {
                Ok(range) => range,
                Err(_) => entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!("{} is not an IP address or CIDR range (10.0.0.0/8)", licensing_domain::text::quoted(entry))
                })?,
            };
            ranges.push(range);
        }
        Ok(Self(ranges))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|range| range.contains(&address))
    }

    /// The client of a request from `peer` carrying these `X-Forwarded-For` values: walking the
    /// forwarded addresses from the nearest hop outwards, the first one not itself a trusted
    /// proxy. A peer that is not trusted is the client, whatever it forwarded; a malformed
    /// entry ends the walk at the last hop that is known.
    pub fn client<'a>(&self, peer: IpAddr, forwarded_for: impl IntoIterator<Item = &'a str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for.into_iter().flat_map(|value| value.split(',')).map(str::trim).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(address) => {
                    client = canonical(address);
                    if !self.trusts(client) {
                        return client;
                    }
                }
                Err(_) => return client,
            }
        }
        client
    }
}

/// An IPv4 address seen through an IPv6 socket (`::ffff:10.0.0.1`) is that IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The client address of a request, put into its extensions by [`ClientAddressLayer`] (and by
/// the web portal's server); read it with [`client_address_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The client address in `extensions`, if the server put one there.
pub fn client_address_of(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions.get::<ClientAddress>().map(|c| c.0)
}

/// The `X-Forwarded-For` values of `headers`, as text (values that are not text are skipped).
pub fn forwarded_for(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok())
}

/// A tower layer that decides each request's [`ClientAddress`] once, from the TCP peer and, for
/// a trusted proxy, its `X-Forwarded-For`.
#[derive(Debug, Clone, Default)]
pub struct ClientAddressLayer {
    trusted: Arc<TrustedProxies>,
}

impl ClientAddressLayer {
    /// Believes the `X-Forwarded-For` of `trusted` proxies only.
    pub fn new(trusted: TrustedProxies) -> Self {
        Self { trusted: Arc::new(trusted) }
    }
}

impl<S> Layer<S> for ClientAddressLayer {
    type Service = ClientAddressService<S>;
    fn layer(&self, inner: S) -> ClientAddressService<S> {
        ClientAddressService { inner, trusted: self.trusted.clone() }
    }
}

/// The service of [`ClientAddressLayer`].
#[derive(Debug, Clone)]
pub struct ClientAddressService<S> {
    inner: S,
    trusted: Arc<TrustedProxies>,
}

/// The TCP peer of a request served by tonic, over TLS or not.
fn tcp_peer<B>(req: &http::Request<B>) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = req.extensions();
    let tcp = extensions
        .get::<TcpConnectInfo>()
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(|tls| tls.get_ref()));
    tcp.and_then(|info| info.remote_addr()).map(|a| a.ip())
}

impl<S, B> Service<http::Request<B>> for ClientAddressService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(peer) = tcp_peer(&req) {
            let client = self.trusted.client(peer, forwarded_for(req.headers()));
            req.extensions_mut().insert(ClientAddress(client));
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_is_believed() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7").unwrap();
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(trusted.client(ip("203.0.113.9"), ["1.2.3.4"]), ip("203.0.113.9"));
        // The gateway forwards its client.
        assert_eq!(trusted.client(ip("10.1.2.3"), ["198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(trusted.client(ip("192.168.1.7"), ["198.51.100.7"]), ip("198.51.100.7"));
        // A client's own forged entries sit left of what the gateway appended: ignored.
        assert_eq!(trusted.client(ip("10.1.2.3"), ["6.6.6.6, 198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(trusted.client(ip("10.1.2.3"), ["6.6.6.6", "198.51.100.7"]), ip("198.51.100.7"));
        // Proxies in a row are walked through.
        assert_eq!(trusted.client(ip("10.1.2.3"), ["198.51.100.7, 10.9.9.9"]), ip("198.51.100.7"));
        // Nothing forwarded, or garbage: the nearest known hop.
        assert_eq!(trusted.client(ip("10.1.2.3"), []), ip("10.1.2.3"));
        assert_eq!(trusted.client(ip("10.1.2.3"), ["not-an-ip"]), ip("10.1.2.3"));
        assert_eq!(trusted.client(ip("10.1.2.3"), ["garbage, 10.4.4.4"]), ip("10.4.4.4"));
        // IPv4 seen through an IPv6 socket.
        assert_eq!(trusted.client(ip("::ffff:10.1.2.3"), ["198.51.100.7"]), ip("198.51.100.7"));
    }

    #[test]
    fn no_proxy_is_trusted_by_default() {
        for text in ["", "off", " OFF "] {
            let trusted = TrustedProxies::parse(text).unwrap();
            assert!(trusted.is_empty());
            assert_eq!(trusted.client(ip("10.1.2.3"), ["198.51.100.7"]), ip("10.1.2.3"));
        }
    }

    #[test]
    fn a_wrong_entry_is_named() {
        let err = TrustedProxies::parse("10.0.0.0/8, gateway").unwrap_err();
        assert!(err.contains("'gateway'"), "{err}");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
    }
}
