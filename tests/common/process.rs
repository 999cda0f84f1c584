//! Server binaries as child processes, started and stopped as an operator would.

use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One server process and how to start it again.
pub struct Process {
    binary: &'static str,
    env: Vec<(String, String)>,
    pub port: u16,
    child: Option<Child>,
    /// The file its stdout and stderr go to (its logs); when `None`, stdout is discarded and
    /// stderr shows in the test's output.
    pub logs: Option<std::path::PathBuf>,
}

impl Process {
    pub fn new(binary: &'static str, env: &[(String, String)]) -> Self {
        Self { binary, env: env.to_vec(), port: free_port(), child: None, logs: None }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn start(&mut self) {
        let logs = self.logs.as_ref().map(|path| std::fs::File::create(path).unwrap());
        let child = Command::new(self.binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("LICENSING_LISTEN_ADDR", format!("127.0.0.1:{}", self.port))
            .env("LICENSING_METRICS_ADDR", "127.0.0.1:0")
            .env("LICENSING_PORTAL_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(match &logs {
                Some(file) => Stdio::from(file.try_clone().unwrap()),
                None => Stdio::null(),
            })
            .stderr(logs.map_or(Stdio::inherit(), Stdio::from))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let check = env!("CARGO_BIN_EXE_healthcheck");
        for _ in 0..300 {
            let ok = Command::new(check)
                .arg(format!("127.0.0.1:{}", self.port))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .unwrap()
                .success();
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} did not become SERVING", self.binary);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERM, and wait for the exit (a drain, then spans and usage flushed).
    pub async fn stop(&mut self) {
        self.sigterm().await;
        self.exits_cleanly_within(Duration::from_secs(15)).await;
    }

    /// SIGTERM, without waiting: the process shuts down while the test watches.
    pub async fn sigterm(&mut self) {
        let pid = self.child.as_ref().and_then(Child::id).expect("running").to_string();
        Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    }

    /// Waits for the exit (after [`Self::sigterm`]), which must be clean and within `limit`.
    pub async fn exits_cleanly_within(&mut self, limit: Duration) {
        let mut child = self.child.take().expect("running");
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} still runs {limit:?} after SIGTERM", self.binary));
        assert!(status.unwrap().success(), "{} exits cleanly", self.binary);
    }

    /// SIGKILL: no drain, no flush, no goodbye.
    pub async fn kill_9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.unwrap();
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).unwrap().connect().await.unwrap()
    }
}

/// The environment of the separate services (account, activation, seat) on a fresh PostgreSQL
/// database and the test Redis, with their files under `dir`.
pub async fn separate_services_env(dir: &std::path::Path) -> Vec<(String, String)> {
    let key = |byte: u8| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [byte; 32]);
    vec![
        ("LICENSING_DATA_DIR".to_owned(), dir.display().to_string()),
        ("LICENSING_ADMIN_TOKEN".to_owned(), super::ADMIN_TOKEN.to_owned()),
        ("LICENSING_DATABASE_URL".to_owned(), super::fresh_postgres_database().await),
        ("LICENSING_REDIS_URL".to_owned(), super::redis_url()),
        ("LICENSING_HASH_KEY".to_owned(), key(7)),
        ("LICENSING_SIGNING_KEY".to_owned(), key(9)),
    ]
}

/// The admin API of the Account service.
pub struct AdminOn(pub tonic::transport::Channel);

impl AdminOn {
    /// A node-locked and a floating license of a new product; their keys.
    pub async fn licenses(&self) -> (String, String) {
        use licensing_proto::account::v1 as acc;
        let mut admin = licensing_proto::account::v1::admin_service_client::AdminServiceClient::new(self.0.clone());
        let product = format!("traced-{}", &licensing_domain::ids::new_id("p")[2..10].to_lowercase());
        admin
            .create_product(super::admin_req(acc::CreateProductRequest {
                code: product.clone(),
                name: "Traced".into(),
                modules: vec![],
            }))
            .await
            .unwrap();
        let customer = admin
            .create_customer(super::admin_req(acc::CreateCustomerRequest {
                company_name: "Traced Inc".into(),
                contact_email: format!("{}@example.com", licensing_domain::ids::new_id("m").to_lowercase()),
                password: super::CUSTOMER_PASSWORD.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .customer
            .unwrap()
            .customer_id;
        let issue = |kind: licensing_proto::common::v1::LicenseKind| {
            let request = acc::IssueLicenseRequest {
                product_code: product.clone(),
                customer_id: customer.clone(),
                kind: kind as i32,
                seats: 2,
                allowed_deactivations: 1,
                ..Default::default()
            };
            let mut admin = admin.clone();
            async move { admin.issue_license(super::admin_req(request)).await.unwrap().into_inner().license_key }
        };
        (
            issue(licensing_proto::common::v1::LicenseKind::NodeLocked).await,
            issue(licensing_proto::common::v1::LicenseKind::Concurrent).await,
        )
    }
}
