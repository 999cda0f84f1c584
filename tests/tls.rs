//! TLS and mutual TLS by configuration, with certificates made in the test (rcgen): a TLS
//! server refuses plaintext, serves clients that trust its CA, and with a client CA serves only
//! clients presenting a certificate that CA signed; the healthcheck binary speaks it too, and the
//! per-client rate limits still see the client's address through TLS.

use crate::common::*;
use licensing_proto::account::v1 as acc;
use licensing_proto::account::v1::admin_service_client::AdminServiceClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// PEM files of a CA, a server certificate for 127.0.0.1/localhost, and client certificates:
/// `ca.pem`, `server.pem`/`server-key.pem`, `client.pem`/`client-key.pem`, and of another CA
/// the server does not know, `rogue-ca.pem` and `rogue-client.pem`/`rogue-client-key.pem`.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let trusted = ca("Test CA");
        let rogue = ca("Rogue CA");
        write(dir.path(), "ca", &trusted.pem(), None);
        write(dir.path(), "rogue-ca", &rogue.pem(), None);
        leaf(dir.path(), "server", &["localhost", "127.0.0.1"], &trusted);
        leaf(dir.path(), "client", &["client.example"], &trusted);
        leaf(dir.path(), "rogue-client", &["client.example"], &rogue);
        Self { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    fn client(&self, identity: Option<&str>) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.pem("ca.pem")));
        match identity {
            Some(who) => config
                .identity(Identity::from_pem(self.pem(&format!("{who}.pem")), self.pem(&format!("{who}-key.pem")))),
            None => config,
        }
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(dir: &Path, name: &str, names: &[&str], issuer: &CertifiedIssuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    write(dir, name, &cert.pem(), Some(&key.serialize_pem()));
}

fn write(dir: &Path, name: &str, cert: &str, key: Option<&str>) {
    std::fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
    if let Some(key) = key {
        std::fs::write(dir.join(format!("{name}-key.pem")), key).unwrap();
    }
}

/// A server on `pki`'s certificate, requiring client certificates its CA signed when `mutual`.
/// The app's own test channels ([`TestApp::channel`], so `fixture` and the admin helpers) trust
/// the CA and, for mutual TLS, present `client.pem`.
pub(crate) async fn tls_app(pki: &Pki, mutual: bool, extra: &[(&str, &str)]) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, data_dir.path()).await;
    env.insert("LICENSING_TLS_CERT".into(), pki.path("server.pem").display().to_string());
    env.insert("LICENSING_TLS_KEY".into(), pki.path("server-key.pem").display().to_string());
    if mutual {
        env.insert("LICENSING_TLS_CLIENT_CA".into(), pki.path("ca.pem").display().to_string());
    }
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    let mut app = spawn_with_env(Backend::Sqlite, data_dir, env).await;
    app.client_tls = Some(pki.client(mutual.then_some("client")));
    app
}

/// An admin call over a channel built with `tls` (or plaintext); the error text when it fails.
async fn admin_call(app: &TestApp, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let port = app.addr.port();
    let endpoint = match tls {
        Some(tls) => Channel::from_shared(format!("https://localhost:{port}")).unwrap().tls_config(tls).unwrap(),
        None => Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap(),
    };
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    AdminServiceClient::new(channel)
        .list_products(admin_req(acc::ListProductsRequest::default()))
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

async fn healthcheck(app: &TestApp, env: &[(&str, PathBuf)]) -> bool {
    probe(app, env).await.0
}

/// Runs the healthcheck binary: whether it succeeded, and what it said on stderr.
async fn probe(app: &TestApp, env: &[(&str, PathBuf)]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_healthcheck"))
        .arg(format!("127.0.0.1:{}", app.addr.port()))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .env("LICENSING_TLS_SERVER_NAME", "localhost")
        .output()
        .await
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn a_tls_server_serves_clients_that_trust_its_ca_and_refuses_plaintext() {
    let pki = Pki::new();
    let app = tls_app(&pki, false, &[]).await;
    admin_call(&app, Some(pki.client(None))).await.unwrap();
    assert!(admin_call(&app, None).await.is_err(), "plaintext must not be served");
    // A client that trusts another CA refuses the server.
    let stranger = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca("Other CA").pem()));
    assert!(admin_call(&app, Some(stranger)).await.is_err());
    // The healthcheck binary (the compose and Kubernetes probe) speaks TLS when told the CA.
    assert!(healthcheck(&app, &[("LICENSING_TLS_CA", pki.path("ca.pem"))]).await);
    assert!(!healthcheck(&app, &[]).await, "a plaintext probe fails");
}

#[tokio::test]
async fn mutual_tls_serves_only_clients_with_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let app = tls_app(&pki, true, &[]).await;
    admin_call(&app, Some(pki.client(Some("client")))).await.unwrap();
    assert!(admin_call(&app, Some(pki.client(None))).await.is_err(), "no client certificate");
    assert!(admin_call(&app, Some(pki.client(Some("rogue-client")))).await.is_err(), "a certificate of another CA");
    let with_identity = [
        ("LICENSING_TLS_CA", pki.path("ca.pem")),
        ("LICENSING_TLS_CLIENT_CERT", pki.path("client.pem")),
        ("LICENSING_TLS_CLIENT_KEY", pki.path("client-key.pem")),
    ];
    assert!(healthcheck(&app, &with_identity).await);
    // licensectl reads the same variables.
    let listed = tokio::process::Command::new(env!("CARGO_BIN_EXE_licensectl"))
        .args(["--server", &format!("https://localhost:{}", app.addr.port()), "--token", ADMIN_TOKEN])
        .args(["licenses", "list"])
        .env_clear()
        .envs(with_identity.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .await
        .unwrap();
    assert!(listed.status.success(), "licensectl over mutual TLS: {}", String::from_utf8_lossy(&listed.stderr));
    // Without the client certificate the server requires, the tools say so.
    let (ok, said) = probe(&app, &with_identity[..1]).await;
    assert!(!ok, "a probe without a client certificate fails");
    assert!(
        said.contains("client certificate") && said.contains("LICENSING_TLS_CLIENT_CERT"),
        "healthcheck said: {said}"
    );
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_licensectl"))
        .args(["--server", &format!("https://localhost:{}", app.addr.port()), "--token", ADMIN_TOKEN])
        .args(["licenses", "list"])
        .env_clear()
        .envs(with_identity[..1].iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        said.contains("client certificate") && said.contains("LICENSING_TLS_CLIENT_CERT"),
        "licensectl said: {said}"
    );
}

#[tokio::test]
async fn rate_limits_see_the_client_address_through_tls() {
    let pki = Pki::new();
    let app = tls_app(&pki, false, &[("LICENSING_RATE_LOGIN_PER_CLIENT", "1/min")]).await;
    let channel = Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(pki.client(None))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut portal = licensing_proto::account::v1::account_service_client::AccountServiceClient::new(channel);
    let login = || acc::LoginRequest { login: "nobody@example.com".into(), password: "wrong".into() };
    assert_eq!(portal.login(login()).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let refused = portal.login(login()).await.unwrap_err();
    assert_eq!(reason(&refused), "RATE_LIMITED");
    assert!(refused.message().contains("127.0.0.1"), "{}", refused.message());
}

#[tokio::test]
async fn half_configured_tls_stops_the_server_naming_the_variable() {
    let pki = Pki::new();
    let cert = pki.path("server.pem").display().to_string();
    let err =
        licensing_runtime::config::Config::from_lookup(&[("LICENSING_TLS_CERT", cert.as_str())], "127.0.0.1:0", "t")
            .unwrap_err();
    assert_eq!(err.var, "LICENSING_TLS_KEY");
}

#[tokio::test]
async fn the_client_library_checks_a_seat_out_over_mutual_tls() {
    let pki = Pki::new();
    let app = tls_app(&pki, true, &[]).await;
    // Set-up over an admin channel with a client certificate.
    let channel = Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(pki.client(Some("client")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(channel.clone());
    admin
        .create_product(admin_req(acc::CreateProductRequest {
            code: "tls-app".into(),
            name: "T".into(),
            modules: vec![],
        }))
        .await
        .unwrap();
    let customer = admin
        .create_customer(admin_req(acc::CreateCustomerRequest {
            company_name: "TLS Co".into(),
            contact_email: "tls@example.com".into(),
            password: CUSTOMER_PASSWORD.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    let issued = admin
        .issue_license(admin_req(acc::IssueLicenseRequest {
            product_code: "tls-app".into(),
            customer_id: customer.customer_id,
            kind: licensing_proto::common::v1::LicenseKind::Concurrent as i32,
            seats: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let public_key = licensing_proto::activation::v1::activation_service_client::ActivationServiceClient::new(channel)
        .get_verifying_key(licensing_proto::activation::v1::GetVerifyingKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .public_key;

    let url = format!("https://localhost:{}", app.addr.port());
    let client = licensing_client::Client::with_tls(&url, &public_key, pki.client(Some("client"))).unwrap();
    let credentials = licensing_client::Credentials::LicenseKey(issued.license_key.clone());
    let seat = client.checkout(credentials.clone(), Default::default()).await.unwrap();
    assert!(seat.release().await);
    // Without its certificate the product cannot reach the server at all.
    let anonymous = licensing_client::Client::with_tls(&url, &public_key, pki.client(None)).unwrap();
    let error = anonymous.checkout(credentials, Default::default()).await.err().expect("refused");
    assert!(matches!(error, licensing_client::ClientError::Unreachable(_)), "{error:?}");
}
