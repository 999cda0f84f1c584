//! The network between a service and its stores breaks, through an in-test TCP proxy
//! ([`crate::common::proxy::FaultProxy`]): PostgreSQL cut away under load (what a restart looks like
//! from here: every connection gone, new ones refused), PostgreSQL slow and partitioned, and the
//! link to Redis flapping while clients fight over a few seats.
//! Requests answer UNAVAILABLE or DEADLINE_EXCEEDED while the store cannot be reached, none hangs
//! past its deadline, service resumes without a restart of ours, no acknowledged write is lost,
//! and no license ever has more seats in use than it owns.

use crate::common::proxy::{FaultProxy, Link};
use crate::common::*;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::LicenseKind;
use licensing_proto::seat::v1 as seat;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

/// The deadline the servers here run with.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1_500);
/// What a request may take beyond its deadline (scheduling on 2 busy cores).
const SLACK: Duration = Duration::from_millis(1_000);

/// The host:port of a URL such as postgres://user@host:port/db.
fn target_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap();
    let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
    host_port.replace("localhost", "127.0.0.1").parse().unwrap()
}

fn through(url: &str, proxy: &FaultProxy) -> String {
    url.replacen(&target_of(url).to_string(), &proxy.addr.to_string(), 1)
}

async fn app_with_env(backend: Backend, extra: &[(&str, String)]) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let mut env = test_env(backend, data_dir.path()).await;
    env.insert("LICENSING_REQUEST_TIMEOUT_MS".into(), REQUEST_TIMEOUT.as_millis().to_string());
    // Clients retry in tight loops through the faults: abuse limits are not this test's subject.
    for var in [
        "LICENSING_RATE_ACTIVATE_PER_LICENSE",
        "LICENSING_RATE_CHECKOUT_PER_LICENSE",
        "LICENSING_RATE_ACTIVATE_PER_CLIENT",
        "LICENSING_RATE_CHECKOUT_PER_CLIENT",
    ] {
        env.insert(var.into(), "off".into());
    }
    for (k, v) in extra {
        env.insert((*k).to_owned(), v.clone());
    }
    spawn_with_env(backend, data_dir, env).await
}

/// A PostgreSQL-backed server whose database link goes through a proxy, and a license.
async fn postgres_behind_proxy() -> Option<(TestApp, FaultProxy, String, String)> {
    if !postgres_available().await {
        return None;
    }
    let url = fresh_postgres_database().await;
    let proxy = FaultProxy::start(target_of(&url)).await;
    let app = app_with_env(Backend::Sqlite, &[("LICENSING_DATABASE_URL", through(&url, &proxy))]).await;
    let f = fixture(&app).await;
    let (id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 100_000, |_| {}).await;
    Some((app, proxy, id, key))
}

/// Calls until one succeeds; panics when none does within 20 s.
async fn until_served(mut call: impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool>>>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if call().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("service did not resume within 20 s of the store coming back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_away_under_load_answers_unavailable_then_serves_again_and_loses_nothing() {
    let Some((app, proxy, license_id, key)) = postgres_behind_proxy().await else { return };
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = vec![];
    for w in 0..3 {
        let mut client = ActivationServiceClient::new(app.channel().await);
        let (key, stop) = (key.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut acknowledged = HashMap::new();
            let mut failures: Vec<(Code, Duration)> = vec![];
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let machine = format!("m-{w}-{i}");
                i += 1;
                let started = Instant::now();
                match client.activate(activate_by_key(&key, &machine)).await {
                    Ok(r) => {
                        acknowledged.insert(machine, r.into_inner().activation.unwrap().installation_id);
                    }
                    Err(status) => failures.push((status.code(), started.elapsed())),
                }
            }
            (acknowledged, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.set(Link::Cut);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    proxy.set(Link::Up);
    // Back without a restart of ours.
    let mut probe = ActivationServiceClient::new(app.channel().await);
    until_served(|| {
        let (mut probe, key) = (probe.clone(), key.clone());
        Box::pin(async move { probe.activate(activate_by_key(&key, "probe")).await.is_ok() })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = HashMap::new();
    let mut failures = vec![];
    for w in workers {
        let (a, f) = w.await.unwrap();
        acknowledged.extend(a);
        failures.extend(f);
    }
    eprintln!("{} activations acknowledged, {} failed during the cut", acknowledged.len(), failures.len());
    assert!(!failures.is_empty(), "the cut was noticed");
    for (code, took) in &failures {
        assert!(matches!(code, Code::Unavailable | Code::DeadlineExceeded), "a store outage answered {code:?}");
        assert!(*took <= REQUEST_TIMEOUT + SLACK, "a request hung for {took:?}");
    }
    // Every acknowledged activation is in the database, and the counter agrees with the rows.
    let history = app
        .admin()
        .await
        .get_activation_history(admin_req(licensing_proto::account::v1::GetActivationHistoryRequest {
            license_id: license_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let active: std::collections::HashSet<_> =
        history.installations.iter().filter(|i| i.active).map(|i| i.installation_id.clone()).collect();
    for (machine, installation) in &acknowledged {
        assert!(active.contains(installation), "acknowledged activation of {machine} was lost");
    }
    assert_eq!(get_license(&app, &license_id).await.activations_used as usize, active.len());
    probe.activate(activate_by_key(&key, "after")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_partitioned_postgres_never_holds_a_request_past_its_deadline() {
    let Some((app, proxy, _, key)) = postgres_behind_proxy().await else { return };
    let mut client = ActivationServiceClient::new(app.channel().await);
    client.activate(activate_by_key(&key, "warm")).await.unwrap();

    // Slow: every chunk waits 100 ms each way; requests still finish, or give up in time.
    proxy.set_latency(Duration::from_millis(100));
    for i in 0..3 {
        let started = Instant::now();
        let outcome = client.activate(activate_by_key(&key, &format!("slow-{i}"))).await;
        assert!(started.elapsed() <= REQUEST_TIMEOUT + SLACK, "took {:?}", started.elapsed());
        if let Err(status) = outcome {
            assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        }
    }
    proxy.set_latency(Duration::ZERO);

    // Partitioned: nothing answers, connections stay open; requests end at their deadline.
    proxy.set(Link::Partitioned);
    for i in 0..3 {
        let started = Instant::now();
        let status = client.activate(activate_by_key(&key, &format!("cut-{i}"))).await.unwrap_err();
        assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable), "{status:?}");
        assert!(started.elapsed() <= REQUEST_TIMEOUT + SLACK, "took {:?}", started.elapsed());
    }
    proxy.set(Link::Up);
    until_served(|| {
        let (mut client, key) = (client.clone(), key.clone());
        Box::pin(async move { client.activate(activate_by_key(&key, "healed")).await.is_ok() })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_redis_link_never_over_allocates_and_never_hangs_a_request() {
    if !redis_available().await {
        return;
    }
    const SEATS: usize = 3;
    let proxy = FaultProxy::start(target_of(&redis_url())).await;
    let app = app_with_env(
        Backend::Sqlite,
        &[("LICENSING_REDIS_URL", through(&redis_url(), &proxy)), ("LICENSING_SWEEP_INTERVAL_MS", "100".into())],
    )
    .await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, SEATS as i32, |_| {}).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = vec![];
    for c in 0..8 {
        let mut s = seat_client(&app).await;
        let (key, stop) = (key.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut codes = vec![];
            let mut granted = 0;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let outcome = s.checkout(checkout_by_key(&key, &format!("c{c}"), 2)).await;
                slowest = slowest.max(started.elapsed());
                match outcome {
                    Ok(r) => {
                        granted += 1;
                        let grant = r.into_inner().grant.unwrap();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let started = Instant::now();
                        let released = s
                            .checkin(seat::CheckinRequest { license_id: grant.license_id, lease_id: grant.lease_id })
                            .await;
                        slowest = slowest.max(started.elapsed());
                        if let Err(status) = released {
                            codes.push(status.code());
                        }
                    }
                    Err(status) => codes.push(status.code()),
                }
            }
            (slowest, codes, granted)
        }));
    }
    // Watch the pool through the same (flapping) link: whenever it answers, it is within seats.
    let watcher = {
        let (mut s, license_id, stop) = (seat_client(&app).await, license_id.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                let request = admin_req(seat::GetPoolStatusRequest { license_id: license_id.clone() });
                if let Ok(pool) = s.get_pool_status(request).await {
                    let pool = pool.into_inner();
                    assert!(pool.seats_in_use as usize <= SEATS, "{} seats in use of {SEATS}", pool.seats_in_use);
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };
    for (link, latency, hold) in [
        (Link::Up, 0, 400),
        (Link::Partitioned, 0, 600),
        (Link::Up, 30, 400),
        (Link::Cut, 0, 500),
        (Link::Up, 0, 400),
        (Link::Partitioned, 0, 2_500),
        (Link::Up, 0, 600),
    ] {
        proxy.set_latency(Duration::from_millis(latency));
        proxy.set(link);
        tokio::time::sleep(Duration::from_millis(hold)).await;
    }
    proxy.set_latency(Duration::ZERO);
    proxy.set(Link::Up);
    let probe = seat_client(&app).await;
    until_served(|| {
        let (mut probe, key) = (probe.clone(), key.clone());
        Box::pin(async move { probe.checkout(checkout_by_key(&key, "c0", 2)).await.is_ok() })
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut total_granted = 0;
    let mut total_failed = 0;
    for c in clients {
        let (slowest, codes, granted) = c.await.unwrap();
        eprintln!("client: {granted} granted, {} failed, slowest call {slowest:?}", codes.len());
        total_granted += granted;
        total_failed += codes.iter().filter(|c| **c != Code::ResourceExhausted).count();
        assert!(slowest <= REQUEST_TIMEOUT + SLACK, "a seat request hung for {slowest:?}");
        for code in codes {
            assert!(
                matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted),
                "a Redis fault answered {code:?}"
            );
        }
    }
    assert!(total_granted > 0, "seats were granted between the faults");
    assert!(total_failed > 0, "the faults were noticed");
    assert!(watcher.await.unwrap() > 0, "the pool was sampled");
    // Once healed, and the leases of clients whose checkin was lost have expired, the pool is
    // whole: exactly its seats can be held again, no phantom seat, no extra one.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut s = seat_client(&app).await;
    for c in 0..SEATS {
        s.checkout(checkout_by_key(&key, &format!("after-{c}"), 2)).await.unwrap();
    }
    let refused = s.checkout(checkout_by_key(&key, "one-too-many", 2)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(live_leases(&app, &license_id).await.len(), SEATS);
}
