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
    /// Where the process's stdout goes (its logs); discarded when `None`.
    pub stdout: Option<std::path::PathBuf>,
}

impl Process {
    pub fn new(binary: &'static str, env: &[(String, String)]) -> Self {
        Self { binary, env: env.to_vec(), port: free_port(), child: None, stdout: None }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn start(&mut self) {
        let child = Command::new(self.binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("LICENSING_LISTEN_ADDR", format!("127.0.0.1:{}", self.port))
            .env("LICENSING_METRICS_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(match &self.stdout {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::null(),
            })
            .stderr(Stdio::inherit())
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
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("running").to_string();
        Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits after SIGTERM");
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
