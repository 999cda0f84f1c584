//! The client library against a real server: offline certificates, clock set back, floating
//! seats that survive a server restart, and a killed client's seat freed after the TTL.

use crate::common::*;
use licensing_client::floating::{CheckoutOptions, SeatState};
use licensing_client::node_locked::{NodeLocked, Validity};
use licensing_client::storage::TrustedStorage;
use licensing_client::{Client, ClientError, Credentials, ManualClock};
use licensing_domain::clock::{Clock, SystemClock, DAY};
use licensing_domain::fingerprint::Component;
use licensing_proto::common::v1::LicenseKind;
use licensing_proto::seat::v1 as seat;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use std::sync::Arc;
use std::time::Duration;

fn this_pc() -> Vec<Component> {
    ["machine-id", "disk-serial", "mac", "hostname"]
        .iter()
        .map(|n| Component { name: n.to_string(), value: format!("{n}-value") })
        .collect()
}

#[tokio::test]
async fn offline_validation_with_the_server_stopped_until_valid_until_and_a_clock_set_back() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (_, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
    let clock = ManualClock::new(SystemClock.now());
    let client =
        Client::with_clock(&format!("http://{}", app.addr), &app.public_key().await, Arc::new(clock.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let product = NodeLocked::new(
        client,
        TrustedStorage::new(dir.path().join("license.json")),
        Credentials::LicenseKey(key),
        this_pc(),
    );

    let activated = product.activate("pc", "linux", "1.0").await.unwrap();
    let latest = match product.validate(&["render"], "").await.unwrap() {
        Validity::Online(p) => p,
        other => panic!("expected online validity, got {other:?}"),
    };
    assert!(latest.issued_at_ms >= activated.issued_at_ms);
    let not_licensed = product.validate(&["export"], "").await.unwrap();
    assert!(
        matches!(not_licensed, Validity::Invalid { ref code, .. } if code == "VALIDATION_CODE_MODULE_NOT_LICENSED"),
        "{not_licensed:?}"
    );

    app.stop().await;
    clock.advance(3 * DAY);
    match product.validate(&["render"], "").await.unwrap() {
        Validity::Offline(p) => assert_eq!(p.license_id, activated.license_id),
        other => panic!("expected offline use, got {other:?}"),
    }
    assert!(matches!(product.validate(&["export"], "").await, Err(ClientError::ModuleNotLicensed(_))));

    // A clock turned back behind what the product has seen: refused.
    clock.advance(-2 * DAY);
    assert!(matches!(product.validate_offline(&["render"]), Err(ClientError::ClockSetBack { .. })));
    clock.advance(2 * DAY);
    product.validate_offline(&["render"]).expect("the clock is back where it was");

    // Past the certificate's valid_until: offline use ends.
    clock.set(latest.valid_until_ms + 1);
    let over = product.validate(&["render"], "").await;
    assert!(matches!(over, Err(ClientError::OfflinePeriodOver(_))), "{over:?}");

    // A certificate altered on disk does not verify.
    let path = dir.path().join("license.json");
    let text = std::fs::read_to_string(&path).unwrap().replacen("A", "B", 1);
    std::fs::write(&path, text).unwrap();
    clock.set(latest.issued_at_ms + 1000);
    assert!(matches!(
        product.validate_offline(&["render"]),
        Err(ClientError::BadCertificate(_) | ClientError::Storage(_))
    ));
}

#[tokio::test]
async fn a_seat_survives_a_server_restart_that_lost_its_lease_by_checking_out_again() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (license_id, key) = {
            let f = fixture(&app).await;
            let (id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
            (id, key)
        };
        let client = Client::new(&format!("http://{}", app.addr), &app.public_key().await).unwrap();
        let options = CheckoutOptions { ttl: Duration::from_millis(1500), ..CheckoutOptions::default() };
        let guard = client.checkout(Credentials::LicenseKey(key.clone()), options).await.unwrap();
        let first = match guard.state() {
            SeatState::Held { lease_id, .. } => lease_id,
            other => panic!("{other:?}"),
        };
        // The server goes away for longer than the TTL and its lease store loses the lease.
        let data = app.data_dir.path().to_owned();
        let app = {
            let backend = app.backend;
            let addr = app.addr;
            let (dir, mut env) = app.stop().await;
            tokio::time::sleep(Duration::from_millis(2_000)).await;
            if leases == Leases::Redis {
                let client = redis::Client::open(redis_url()).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                for suffix in ["z", "d", "c", "u"] {
                    let _: i64 = redis::cmd("DEL")
                        .arg(format!("lease:{{{license_id}}}:{suffix}"))
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                }
            }
            env.insert("LICENSING_LISTEN_ADDR".into(), addr.to_string());
            spawn_with_env(backend, dir, env).await
        };
        let _ = data;
        let mut states = guard.watch();
        let held_again = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if let SeatState::Held { lease_id, .. } = states.borrow_and_update().clone() {
                    if lease_id != first {
                        return lease_id;
                    }
                }
                if let SeatState::Lost { reason, message } = states.borrow().clone() {
                    panic!("{leases:?}: lost: {reason} {message}");
                }
                states.changed().await.unwrap();
            }
        })
        .await
        .expect("the library checked out again");
        let listed = SeatServiceClient::new(app.channel().await)
            .list_leases(admin_req(seat::ListLeasesRequest { license_id: license_id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .leases;
        assert_eq!(
            listed.iter().map(|l| l.lease_id.clone()).collect::<Vec<_>>(),
            vec![held_again],
            "{leases:?}: one seat, not two"
        );
        assert!(guard.release().await, "release checks the seat in");
    }
}

#[tokio::test]
async fn revocation_is_reported_as_lost_and_not_retaken() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let client = Client::new(&format!("http://{}", app.addr), &app.public_key().await).unwrap();
    let guard = client
        .checkout(
            Credentials::LicenseKey(key),
            CheckoutOptions { ttl: Duration::from_millis(1200), ..Default::default() },
        )
        .await
        .unwrap();
    let SeatState::Held { lease_id, .. } = guard.state() else { panic!() };
    SeatServiceClient::new(app.channel().await)
        .revoke_lease(admin_req(seat::RevokeLeaseRequest {
            license_id: license_id.clone(),
            lease_id,
            reason: String::new(),
        }))
        .await
        .unwrap();
    let mut states = guard.watch();
    let lost = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let SeatState::Lost { reason, .. } = states.borrow_and_update().clone() {
                return reason;
            }
            states.changed().await.unwrap();
        }
    })
    .await
    .expect("the product is told");
    assert_eq!(lost, "LEASE_REVOKED");
}

/// Built by `cargo build --examples`, which the README's test command (`scripts/test.sh`) runs
/// first: `cargo test` alone builds examples only as test harnesses.
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join("floating_seat");
    assert!(path.exists(), "{} is missing: run `cargo build --examples` first (scripts/test.sh does)", path.display());
    path
}

#[tokio::test]
async fn the_example_product_holds_a_seat_gives_it_back_on_ctrl_c_and_a_killed_one_frees_after_the_ttl() {
    use tokio::io::AsyncBufReadExt;
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let public_key = app.public_key().await;
    let start = || {
        tokio::process::Command::new(example_binary())
            .env("LICENSING_URL", format!("http://{}", app.addr))
            .env("LICENSING_PUBLIC_KEY", &public_key)
            .env("LICENSE_KEY", &key)
            .env("SEAT_TTL_MS", "1000")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the example product starts")
    };
    let first_line = |child: &mut tokio::process::Child| {
        let stdout = child.stdout.take().unwrap();
        async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .unwrap()
                .unwrap()
                .unwrap_or_default();
            (line, lines)
        }
    };

    // Ctrl-C: the seat is given back at once.
    let mut polite = start();
    let (line, mut lines) = first_line(&mut polite).await;
    assert!(line.starts_with("SEAT HELD lse_"), "{line}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(live_leases(&app, &license_id).await.len(), 1, "heartbeats kept the 1 s lease alive");
    tokio::process::Command::new("kill").args(["-INT", &polite.id().unwrap().to_string()]).status().await.unwrap();
    // Lines before it may report a re-checkout, if a heartbeat was late on a loaded machine.
    let released = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("SEAT RELEASED") {
                return line;
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert_eq!(released, "SEAT RELEASED true");
    assert!(polite.wait().await.unwrap().success());
    assert_eq!(live_leases(&app, &license_id).await.len(), 0);

    // kill -9: nothing checks in, and the seat frees when the TTL runs out.
    let mut killed = start();
    let (line, _lines) = first_line(&mut killed).await;
    assert!(line.starts_with("SEAT HELD"), "{line}");
    killed.kill().await.unwrap();
    assert_eq!(live_leases(&app, &license_id).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(live_leases(&app, &license_id).await.len(), 0, "freed after the TTL");
}

#[tokio::test]
async fn wait_for_seat_hands_over_when_the_holder_releases() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let (_, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let client = Client::new(&format!("http://{}", app.addr), &app.public_key().await).unwrap();
    let holder = client.checkout(Credentials::LicenseKey(key.clone()), CheckoutOptions::default()).await.unwrap();
    let err = client
        .checkout(Credentials::LicenseKey(key.clone()), CheckoutOptions::default())
        .await
        .err()
        .expect("no seat free");
    assert_eq!(err.reason(), Some("NO_SEAT_AVAILABLE"));
    let waiter = {
        let client = client.clone();
        let key = key.clone();
        tokio::spawn(async move {
            client
                .wait_for_seat(Credentials::LicenseKey(key), CheckoutOptions::default(), Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(holder.release().await);
    let guard =
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().expect("the waiter got the seat");
    assert!(matches!(guard.state(), SeatState::Held { .. }));
}

#[tokio::test]
async fn a_borrowed_seat_holds_offline_until_its_period_ends_and_an_early_return_frees_it() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    SeatServiceClient::new(app.channel().await)
        .update_seat_policy(admin_req(seat::UpdateSeatPolicyRequest {
            license_id: license_id.clone(),
            policy: Some(seat::SeatPolicy {
                max_borrow: Some(prost_types::Duration { seconds: 2 * 86_400, nanos: 0 }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let clock = ManualClock::new(SystemClock.now());
    let client =
        Client::with_clock(&format!("http://{}", app.addr), &app.public_key().await, Arc::new(clock.clone())).unwrap();
    let too_long = client
        .borrow(Credentials::LicenseKey(key.clone()), CheckoutOptions::default(), Duration::from_secs(3 * 86_400))
        .await
        .unwrap_err();
    assert!(matches!(too_long, ClientError::Server { code: tonic::Code::InvalidArgument, .. }), "{too_long:?}");
    let seat = client
        .borrow(Credentials::LicenseKey(key.clone()), CheckoutOptions::default(), Duration::from_secs(86_400))
        .await
        .unwrap();
    assert_eq!(seat.license_id, license_id);
    let taken = client.checkout(Credentials::LicenseKey(key.clone()), CheckoutOptions::default()).await.err();
    assert_eq!(taken.as_ref().and_then(|e| e.reason()), Some("NO_SEAT_AVAILABLE"), "the borrowed seat is held");
    let storage = tempfile::tempdir().unwrap();
    let file = storage.path().join("borrowed.json");
    seat.save(&file).unwrap();

    // Offline: the server is down; the saved token alone proves the borrow.
    let addr = app.addr;
    let (dir, mut env) = app.stop().await;
    let mut stored = licensing_client::borrow::BorrowedSeat::load(&file).unwrap().unwrap();
    clock.advance(6 * 3_600_000);
    let token = client.check_borrowed(&mut stored).unwrap();
    assert!(token.borrowed && token.expires_at_ms == seat.expires_at_ms);
    clock.advance(-3_600_000);
    assert!(matches!(client.check_borrowed(&mut stored), Err(ClientError::ClockSetBack { .. })));
    clock.advance(DAY);
    assert!(matches!(client.check_borrowed(&mut stored), Err(ClientError::BorrowEnded(_))));
    let mut forged = stored.clone();
    forged.lease_token = forged.lease_token.replacen('e', "f", 1);
    clock.set(SystemClock.now());
    forged.last_seen_ms = 0;
    assert!(matches!(client.check_borrowed(&mut forged), Err(ClientError::BadLeaseToken(_))));

    // Back online: an early return frees the seat at once.
    env.insert("LICENSING_LISTEN_ADDR".into(), addr.to_string());
    let app = spawn_with_env(Backend::Sqlite, dir, env).await;
    assert!(client.return_borrowed(&seat).await.unwrap());
    let guard = client.checkout(Credentials::LicenseKey(key), CheckoutOptions::default()).await.unwrap();
    assert!(matches!(guard.state(), SeatState::Held { .. }));
    assert!(guard.release().await);
    drop(app);
}

/// A product heartbeats through the library: told the interval while its license asks for
/// heartbeats, and told NOT_ACTIVATED once its machine no longer holds an activation.
#[tokio::test]
async fn a_node_locked_product_heartbeats_and_hears_when_its_machine_was_freed() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (_, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
        r.heartbeat_timeout = Some(prost_types::Duration { seconds: 90, nanos: 0 });
    })
    .await;
    let client = Client::new(&format!("http://{}", app.addr), &app.public_key().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let product = Arc::new(NodeLocked::new(
        client,
        TrustedStorage::new(dir.path().join("license.json")),
        Credentials::LicenseKey(key),
        this_pc(),
    ));
    let certificate = product.activate("pc", "linux", "1.0").await.unwrap();
    assert_eq!(certificate.heartbeat_timeout_secs, 90);
    let beat = product.heartbeat().await.unwrap();
    assert_eq!(beat.interval, Some(Duration::from_secs(30)));
    assert!(beat.deactivated_after.unwrap() > SystemClock.now());

    // Once the machine holds no activation, heartbeats say so, and the background heartbeat
    // ends with that error instead of beating on.
    product.deactivate().await.unwrap();
    let err = product.heartbeat().await.unwrap_err();
    assert_eq!(err.reason(), Some("NOT_ACTIVATED"), "{err}");
    let ended = tokio::time::timeout(Duration::from_secs(10), NodeLocked::keep_alive(product.clone()))
        .await
        .expect("keep_alive ends")
        .unwrap();
    assert_eq!(ended.unwrap_err().reason(), Some("NOT_ACTIVATED"));
}
