//! Soak: the all-in-one server binary on PostgreSQL and Redis under a steady mixed load for a few
//! minutes: floating clients that check out, heartbeat and check in, some that vanish without a
//! checkin (their leases must expire), waiters, activations and deactivations, validations and
//! portal logins. The server's resident memory must stay flat, and once every client has left,
//! Redis and the server hold no lease, seat count, expiry entry or waiter for any license.
//!
//! Not part of the test run (it takes minutes); run it with
//!
//!   cargo test --release --test integration soak:: -- --ignored --nocapture
//!
//! `SOAK_SECONDS` (default 180) sets the length of the steady load.

use crate::common::*;
use licensing_proto::account::v1 as acc;
use licensing_proto::account::v1::account_service_client::AccountServiceClient;
use licensing_proto::account::v1::admin_service_client::AdminServiceClient;
use licensing_proto::activation::v1 as act;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{FingerprintComponent, LicenseKind};
use licensing_proto::seat::v1 as seat;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const LICENSES: usize = 4;
const SEATS: i32 = 6;
const CLIENTS_PER_LICENSE: usize = 8;
/// Short leases, so vanished clients' seats come back within the run.
const TTL_S: i64 = 3;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn seat_credentials(key: &str) -> Option<seat::SeatCredentials> {
    Some(seat::SeatCredentials { credential: Some(seat::seat_credentials::Credential::LicenseKey(key.into())) })
}

fn checkout(key: &str, client: &str) -> seat::CheckoutRequest {
    seat::CheckoutRequest {
        credentials: seat_credentials(key),
        client_instance_id: client.into(),
        user: format!("user-{client}"),
        host: "soak-host".into(),
        ttl: Some(prost_types::Duration { seconds: TTL_S, nanos: 0 }),
        ..Default::default()
    }
}

fn machine(key: &str, name: &str) -> (Option<act::LicenseCredentials>, Vec<FingerprintComponent>) {
    let credentials = Some(act::LicenseCredentials {
        credential: Some(act::license_credentials::Credential::LicenseKey(key.into())),
    });
    let fingerprint = [("machine-id", name), ("disk-serial", name), ("mac", name)]
        .iter()
        .map(|(n, v)| FingerprintComponent { name: n.to_string(), value: v.to_string() })
        .collect();
    (credentials, fingerprint)
}

/// One floating client's life, over and over: check out (or wait), heartbeat, check in; every
/// fifth life it vanishes without checking in.
async fn floating_client(channel: Channel, key: String, name: String, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
    let mut s = SeatServiceClient::new(channel);
    let mut life = 0u64;
    while !stop.load(Ordering::Relaxed) {
        life += 1;
        let client = format!("{name}-{life}");
        let grant = if life.is_multiple_of(3) {
            let wait = seat::WaitForSeatRequest {
                checkout: Some(checkout(&key, &client)),
                max_wait: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
            };
            match s.wait_for_seat(wait).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    let mut grant = None;
                    while let Ok(Some(event)) = stream.message().await {
                        if let Some(seat::wait_for_seat_response::Event::Grant(g)) = event.event {
                            grant = Some(g);
                            break;
                        }
                    }
                    grant
                }
                Err(_) => None,
            }
        } else {
            s.checkout(checkout(&key, &client)).await.ok().and_then(|r| r.into_inner().grant)
        };
        ops.fetch_add(1, Ordering::Relaxed);
        let Some(grant) = grant else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let beat = seat::HeartbeatRequest {
                license_id: grant.license_id.clone(),
                lease_id: grant.lease_id.clone(),
                lease_token: grant.lease_token.clone(),
            };
            if s.heartbeat(beat).await.is_err() {
                break;
            }
            ops.fetch_add(1, Ordering::Relaxed);
        }
        if !life.is_multiple_of(5) {
            let _ = s.checkin(seat::CheckinRequest { license_id: grant.license_id, lease_id: grant.lease_id }).await;
            ops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Activates a machine, validates it, deactivates it; and logs in to the portal now and then.
async fn node_locked_client(channel: Channel, key: String, login: String, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
    let mut a = ActivationServiceClient::new(channel.clone());
    let mut portal = AccountServiceClient::new(channel);
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let (credentials, fingerprint) = machine(&key, &format!("soak-machine-{}", round % 4));
        let activated = a
            .activate(act::ActivateRequest {
                credentials: credentials.clone(),
                machine: Some(act::MachineInfo { fingerprint: fingerprint.clone(), ..Default::default() }),
            })
            .await;
        if activated.is_ok() {
            let _ = a
                .validate(act::ValidateRequest {
                    credentials: credentials.clone(),
                    fingerprint: fingerprint.clone(),
                    ..Default::default()
                })
                .await;
            let _ = a
                .deactivate(act::DeactivateRequest {
                    target: Some(act::deactivate_request::Target::LicenseAndMachine(act::LicenseAndMachine {
                        credentials,
                        fingerprint,
                    })),
                })
                .await;
        }
        if round.is_multiple_of(10) {
            let _ = portal.login(acc::LoginRequest { login: login.clone(), password: CUSTOMER_PASSWORD.into() }).await;
        }
        ops.fetch_add(3, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: cargo test --release --test integration soak:: -- --ignored --nocapture"]
async fn steady_load_keeps_memory_flat_and_leaves_nothing_behind() {
    assert!(postgres_available().await && redis_available().await, "the soak needs PostgreSQL and Redis");
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(180);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_licensing-server"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LICENSING_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("LICENSING_METRICS_ADDR", "127.0.0.1:0")
        .env("LICENSING_PORTAL_ADDR", "127.0.0.1:0")
        .env("LICENSING_DATA_DIR", dir.path())
        .env("LICENSING_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("LICENSING_DATABASE_URL", fresh_postgres_database().await)
        .env("LICENSING_REDIS_URL", redis_url())
        .env("LICENSING_SWEEP_INTERVAL_MS", "500")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = server.id().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let channel = loop {
        if let Ok(c) = Channel::from_shared(url.clone()).unwrap().connect().await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut admin = AdminServiceClient::new(channel.clone());
    admin
        .create_product(admin_req(acc::CreateProductRequest {
            code: "soak".into(),
            name: "Soak".into(),
            modules: vec![],
        }))
        .await
        .unwrap();
    let customer = admin
        .create_customer(admin_req(acc::CreateCustomerRequest {
            company_name: "Soak Co".into(),
            contact_email: "soak@example.com".into(),
            password: CUSTOMER_PASSWORD.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap()
        .customer_id;
    let issue = |kind: LicenseKind, seats: i32| {
        let (mut admin, customer) = (admin.clone(), customer.clone());
        async move {
            let issued = admin
                .issue_license(admin_req(acc::IssueLicenseRequest {
                    product_code: "soak".into(),
                    customer_id: customer,
                    kind: kind as i32,
                    seats,
                    allowed_deactivations: 1_000_000,
                    associate: true,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            (issued.license.unwrap().license_id, issued.license_key)
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    let mut floating = vec![];
    for l in 0..LICENSES {
        let (id, key) = issue(LicenseKind::Concurrent, SEATS).await;
        for c in 0..CLIENTS_PER_LICENSE {
            let channel = Channel::from_shared(url.clone()).unwrap().connect_lazy();
            tasks.push(tokio::spawn(floating_client(
                channel,
                key.clone(),
                format!("l{l}c{c}"),
                stop.clone(),
                ops.clone(),
            )));
        }
        floating.push(id);
    }
    let (_, node_locked_key) = issue(LicenseKind::NodeLocked, 10).await;
    for _ in 0..2 {
        let channel = Channel::from_shared(url.clone()).unwrap().connect_lazy();
        tasks.push(tokio::spawn(node_locked_client(
            channel,
            node_locked_key.clone(),
            customer.clone(),
            stop.clone(),
            ops.clone(),
        )));
    }

    // Steady load; RSS sampled every second.
    let started = Instant::now();
    let mut samples = vec![];
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(rss_kib(pid));
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let total_ops = ops.load(Ordering::SeqCst);
    // The first fifth warms up (pools fill, caches settle); compare the next fifth with the last.
    let fifth = samples.len() / 5;
    let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len().max(1) as f64;
    let early = mean(&samples[fifth..2 * fifth]);
    let late = mean(&samples[samples.len() - fifth..]);
    eprintln!(
        "soak: {seconds} s, {total_ops} operations ({:.0}/s); RSS early {:.1} MiB, late {:.1} MiB, peak {:.1} MiB",
        total_ops as f64 / seconds as f64,
        early / 1024.0,
        late / 1024.0,
        *samples.iter().max().unwrap() as f64 / 1024.0
    );
    assert!(total_ops > seconds * 20, "the load ran: {total_ops} operations");
    assert!(late <= early * 1.10 + 2_048.0, "memory grew: {early:.0} KiB early, {late:.0} KiB late");

    // Everyone has left: once the vanished clients' leases expire and the sweep has run,
    // nothing is held anywhere.
    tokio::time::sleep(Duration::from_secs(TTL_S as u64 + 2)).await;
    let mut s = SeatServiceClient::new(channel.clone());
    let redis = redis::Client::open(redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    for id in &floating {
        let pool = s
            .get_pool_status(admin_req(seat::GetPoolStatusRequest { license_id: id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((pool.seats_in_use, pool.waiting), (0, 0), "license {id}: {pool:?}");
        assert!(s
            .list_leases(admin_req(seat::ListLeasesRequest { license_id: id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .leases
            .is_empty());
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("lease:{{{id}}}:*")).query_async(&mut conn).await.unwrap();
        let mut left: Vec<String> = vec![];
        for key in keys {
            // The fencing counter only grows (it must outlive leases); a seat count of 0 is empty.
            if key.ends_with(":f") {
                continue;
            }
            if key.ends_with(":u") {
                let used: i64 = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
                if used == 0 {
                    continue;
                }
            }
            left.push(key);
        }
        assert!(left.is_empty(), "license {id} left {left:?} in Redis");
        let swept: Option<f64> = redis::cmd("ZSCORE").arg("leases:sweep").arg(id).query_async(&mut conn).await.unwrap();
        assert!(swept.is_none(), "license {id} is still in the sweep index");
    }
    server.kill().await.unwrap();
}
