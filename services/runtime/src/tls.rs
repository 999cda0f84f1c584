//! TLS by configuration (rustls): PEM files named by environment variables.
//!
//! Servers: `LICENSING_TLS_CERT` and `LICENSING_TLS_KEY` turn TLS on; `LICENSING_TLS_CLIENT_CA`
//! adds mutual TLS (every client must present a certificate that CA signed).
//! Our own clients (healthcheck, licensectl): `LICENSING_TLS_CA` is the CA that signed the
//! server's certificate, `LICENSING_TLS_CLIENT_CERT`/`_KEY` the client's certificate for mutual
//! TLS, and `LICENSING_TLS_SERVER_NAME` the name to verify when it differs from the host dialled
//! (a health check dialling 127.0.0.1 in a container whose certificate names the service).

use crate::config::{ConfigError, Lookup};
use std::path::PathBuf;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A server's TLS settings, files already read (a missing file stops the start, naming its variable).
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by one of these CAs.
    client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("mutual", &self.client_ca_pem.is_some()).finish_non_exhaustive()
    }
}

fn path(lookup: &dyn Lookup, var: &'static str) -> Option<(&'static str, PathBuf)> {
    lookup.get(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).map(|v| (var, PathBuf::from(v)))
}

/// Reads a PEM file, checking it holds at least one PEM block.
fn read_pem((var, path): (&'static str, PathBuf)) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(&path)
        .map_err(|e| ConfigError { var, message: format!("cannot read {}: {e}", path.display()) })?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(ConfigError { var, message: format!("{} is not a PEM file", path.display()) });
    }
    Ok(bytes)
}

impl ServerTls {
    /// `None` when TLS is off (neither certificate nor key set).
    pub fn from_lookup(lookup: &dyn Lookup) -> Result<Option<Self>, ConfigError> {
        let cert = path(lookup, "LICENSING_TLS_CERT");
        let key = path(lookup, "LICENSING_TLS_KEY");
        let client_ca = path(lookup, "LICENSING_TLS_CLIENT_CA");
        match (cert, key) {
            (None, None) => match client_ca {
                Some((var, _)) => Err(ConfigError {
                    var,
                    message: "mutual TLS needs TLS: set LICENSING_TLS_CERT and LICENSING_TLS_KEY too".into(),
                }),
                None => Ok(None),
            },
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert_pem: read_pem(cert)?,
                key_pem: read_pem(key)?,
                client_ca_pem: client_ca.map(read_pem).transpose()?,
            })),
            (Some(_), None) => Err(ConfigError {
                var: "LICENSING_TLS_KEY",
                message: "LICENSING_TLS_CERT is set: set the certificate's private key file too".into(),
            }),
            (None, Some(_)) => Err(ConfigError {
                var: "LICENSING_TLS_CERT",
                message: "LICENSING_TLS_KEY is set: set the certificate (chain) file too".into(),
            }),
        }
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn is_mutual(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// tonic's TLS settings of the listener.
    pub fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

impl ServerTls {
    /// The same certificate, key and client CA as a rustls configuration, for servers other than
    /// tonic's (the web portal), speaking `alpn` (e.g. `http/1.1`).
    pub fn rustls_config(&self, alpn: &[&[u8]]) -> Result<std::sync::Arc<tokio_rustls::rustls::ServerConfig>, String> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("LICENSING_TLS_CERT: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| format!("LICENSING_TLS_KEY: {e}"))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| format!("LICENSING_TLS_CLIENT_CA: {e}"))?;
                    roots.add(cert).map_err(|e| format!("LICENSING_TLS_CLIENT_CA: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| format!("LICENSING_TLS_CLIENT_CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("LICENSING_TLS_CERT and LICENSING_TLS_KEY: {e}"))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(std::sync::Arc::new(config))
    }
}

/// The TLS settings of our own clients; `None` (plaintext) when `LICENSING_TLS_CA` is not set.
pub fn client_config(lookup: &dyn Lookup) -> Result<Option<ClientTlsConfig>, ConfigError> {
    let Some(ca) = path(lookup, "LICENSING_TLS_CA") else {
        return Ok(None);
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca)?));
    match (path(lookup, "LICENSING_TLS_CLIENT_CERT"), path(lookup, "LICENSING_TLS_CLIENT_KEY")) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
        }
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(ConfigError {
                var: "LICENSING_TLS_CLIENT_CERT",
                message: "set both LICENSING_TLS_CLIENT_CERT and LICENSING_TLS_CLIENT_KEY, or neither".into(),
            })
        }
    }
    if let Some(name) = lookup.get("LICENSING_TLS_SERVER_NAME").filter(|n| !n.trim().is_empty()) {
        config = config.domain_name(name.trim());
    }
    Ok(Some(config))
}

/// What a client tells a person when a call failed before any answer from the server:
/// `failure` is the error (and its sources) the transport gave. A refused connection names the
/// address; a connection closed right after a TLS handshake, with no client certificate
/// configured, is most likely a server that requires mutual TLS (it closes the connection, and
/// the client learns nothing more), so the variables to set are named.
pub fn explain_transport_failure(
    addr: &str,
    failure: &(dyn std::error::Error + 'static),
    lookup: &dyn Lookup,
) -> String {
    let mut chain = Some(failure);
    let mut innermost = failure.to_string();
    while let Some(error) = chain {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return format!("connection refused by {addr}: is the server running there?");
            }
        }
        innermost = error.to_string();
        chain = error.source();
    }
    let over_tls = lookup.get("LICENSING_TLS_CA").is_some_and(|v| !v.trim().is_empty());
    let with_identity = lookup.get("LICENSING_TLS_CLIENT_CERT").is_some_and(|v| !v.trim().is_empty());
    if over_tls && !with_identity {
        return format!(
            "{addr} closed the TLS connection ({innermost}): a server that requires a client certificate \
             (mutual TLS) does that; set LICENSING_TLS_CLIENT_CERT and LICENSING_TLS_CLIENT_KEY to a \
             certificate and key its client CA signed"
        );
    }
    format!("{addr}: {innermost}")
}

/// A channel endpoint for `addr` (host:port or a URL), over TLS when `tls` is set.
pub fn endpoint(
    addr: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<tonic::transport::Endpoint, Box<dyn std::error::Error + Send + Sync>> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("{}://{addr}", if tls.is_some() { "https" } else { "http" })
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url)?;
    Ok(match tls {
        Some(tls) => endpoint.tls_config(tls)?,
        None => endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_off_by_default_and_half_settings_name_the_missing_variable() {
        assert!(ServerTls::from_lookup(&[("X", "y")]).unwrap().is_none());
        assert!(client_config(&[("X", "y")]).unwrap().is_none());
        let err = ServerTls::from_lookup(&[("LICENSING_TLS_CERT", "/c.pem")]).unwrap_err();
        assert_eq!(err.var, "LICENSING_TLS_KEY");
        let err = ServerTls::from_lookup(&[("LICENSING_TLS_CLIENT_CA", "/ca.pem")]).unwrap_err();
        assert_eq!(err.var, "LICENSING_TLS_CLIENT_CA");
        let err =
            ServerTls::from_lookup(&[("LICENSING_TLS_CERT", "/nonexistent.pem"), ("LICENSING_TLS_KEY", "/k.pem")])
                .unwrap_err();
        assert_eq!(err.var, "LICENSING_TLS_CERT");
        assert!(err.message.contains("/nonexistent.pem"), "{}", err.message);
    }

    #[test]
    fn transport_failures_say_what_went_wrong() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "os error 111");
        let said = explain_transport_failure("127.0.0.1:50052", &refused, &[("X", "y")]);
        assert_eq!(said, "connection refused by 127.0.0.1:50052: is the server running there?");
        let closed = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed");
        let said = explain_transport_failure("h:1", &closed, &[("LICENSING_TLS_CA", "/ca.pem")]);
        assert!(said.contains("client certificate") && said.contains("LICENSING_TLS_CLIENT_CERT"), "{said}");
        let said = explain_transport_failure(
            "h:1",
            &closed,
            &[("LICENSING_TLS_CA", "/ca.pem"), ("LICENSING_TLS_CLIENT_CERT", "/c.pem")],
        );
        assert_eq!(said, "h:1: stream closed");
    }

    #[test]
    fn a_file_without_pem_blocks_is_refused() {
        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not.pem");
        std::fs::write(&file, "hello").unwrap();
        let file = file.display().to_string();
        let err = client_config(&[("LICENSING_TLS_CA", file.as_str())]).unwrap_err();
        assert_eq!(err.var, "LICENSING_TLS_CA");
        assert!(err.message.contains("not a PEM file"));
    }
}
