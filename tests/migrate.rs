//! `LICENSING_MIGRATE`: `only` applies the migrations and exits (the Kubernetes Job), `off` never
//! migrates and refuses to start on a schema older than the build, saying what to run.

use crate::common::*;
use std::time::Duration;
use tokio::process::Command;

async fn account(database_url: &str, migrate: &str, data: &std::path::Path) -> std::process::Output {
    let port = crate::common::process::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_account"))
        .env_clear()
        .env("LICENSING_DATABASE_URL", database_url)
        .env("LICENSING_MIGRATE", migrate)
        .env("LICENSING_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("LICENSING_METRICS_ADDR", "off")
        .env("LICENSING_PORTAL_ADDR", "off")
        .env("LICENSING_DATA_DIR", data)
        .env("LICENSING_HASH_KEY", "ZGV2ZWxvcG1lbnQtaGFzaC1rZXktMzItYnl0ZXMtbG9uZyE=")
        .env("LICENSING_SIGNING_KEY", "ZGV2ZWxvcG1lbnQtc2lnbmluZy1zZWVkLTMyYnl0ZXM=")
        .env("LICENSING_ADMIN_TOKEN", ADMIN_TOKEN)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), child).await.expect("exits by itself").unwrap()
}

#[tokio::test]
async fn a_migration_job_migrates_and_pods_that_do_not_migrate_wait_for_it() {
    if !postgres_available().await {
        return;
    }
    let database_url = crate::compose::compose_database().await;
    let data = tempfile::tempdir().unwrap();
    // Before the Job: a pod that does not migrate refuses the empty schema and says why.
    let refused = account(&database_url, "off", data.path()).await;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("lacks") && said.contains("LICENSING_MIGRATE=only"), "{said}");
    // The Job: migrates and exits.
    let job = account(&database_url, "only", data.path()).await;
    assert!(job.status.success(), "{}", String::from_utf8_lossy(&job.stderr));
    // Then a pod starts without migrating and serves.
    let port = crate::common::process::free_port();
    let mut pod = Command::new(env!("CARGO_BIN_EXE_account"))
        .env_clear()
        .env("LICENSING_DATABASE_URL", &database_url)
        .env("LICENSING_MIGRATE", "off")
        .env("LICENSING_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("LICENSING_METRICS_ADDR", "off")
        .env("LICENSING_PORTAL_ADDR", "off")
        .env("LICENSING_DATA_DIR", data.path())
        .env("LICENSING_HASH_KEY", "ZGV2ZWxvcG1lbnQtaGFzaC1rZXktMzItYnl0ZXMtbG9uZyE=")
        .env("LICENSING_SIGNING_KEY", "ZGV2ZWxvcG1lbnQtc2lnbmluZy1zZWVkLTMyYnl0ZXM=")
        .env("LICENSING_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut serving = false;
    for _ in 0..150 {
        let probe =
            Command::new(env!("CARGO_BIN_EXE_healthcheck")).arg(format!("127.0.0.1:{port}")).output().await.unwrap();
        if probe.status.success() {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(serving, "the pod serves on the migrated schema");
    let _ = pod.start_kill();
    let _ = pod.wait().await;
}
