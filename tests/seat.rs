//! The Seat service end to end over gRPC, on the embedded lease store and on Redis.

use crate::common::*;
use licensing_proto::account::v1 as admin_pb;
use licensing_proto::common::v1::LicenseKind;
use licensing_proto::seat::v1 as pb;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use std::time::Duration;
use tonic::Code;

fn by_key(key: &str) -> Option<pb::SeatCredentials> {
    Some(pb::SeatCredentials { credential: Some(pb::seat_credentials::Credential::LicenseKey(key.into())) })
}

fn checkout_req(key: &str, client: &str, ttl_ms: i64) -> pb::CheckoutRequest {
    pb::CheckoutRequest {
        credentials: by_key(key),
        feature: String::new(),
        user: format!("user-{client}"),
        host: "host-1".into(),
        client_instance_id: client.into(),
        ttl: Some(prost_types::Duration { seconds: ttl_ms / 1000, nanos: ((ttl_ms % 1000) * 1_000_000) as i32 }),
        borrow_for: None,
        groups: vec![],
    }
}

fn heartbeat_req(license_id: impl Into<String>, lease_id: impl Into<String>) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest { license_id: license_id.into(), lease_id: lease_id.into(), lease_token: String::new() }
}

use crate::common::live_leases as live;
use crate::common::seat_client as seats;

async fn floating(app: &TestApp, n: i32) -> (String, String) {
    let f = fixture(app).await;
    let (id, key, _) = issue_license(app, &f, LicenseKind::Concurrent, n, |_| {}).await;
    (id, key)
}

#[tokio::test]
async fn checkout_heartbeat_checkin_and_a_signed_token() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (license_id, key) = floating(&app, 2).await;
        let mut s = seats(&app).await;
        let g = s.checkout(checkout_req(&key, "c1", 30_000)).await.unwrap().into_inner().grant.unwrap();
        assert!(g.lease_id.starts_with("lse_"));
        assert_eq!((g.seats_total, g.seats_in_use, g.renewed), (2, 1, false));
        assert!(g.fence >= 1);
        assert_eq!(g.ttl.unwrap().seconds, 30);
        assert!(g.heartbeat_interval.unwrap().seconds <= 10, "at most a third of the TTL");
        // The token verifies offline with the server's public key and names this lease.
        let public = licensing_domain::certificate::verifying_key_from_base64(&app.public_key().await).unwrap();
        let token = licensing_domain::certificate::verify_lease_token(&public, &g.lease_token).unwrap();
        assert_eq!((token.lease_id.as_str(), token.fence, token.borrowed), (g.lease_id.as_str(), g.fence, false));

        let listed = live(&app, &license_id).await;
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].user.as_str(), listed[0].host.as_str()), ("user-c1", "host-1"));

        let hb = s.heartbeat(heartbeat_req(license_id.clone(), g.lease_id.clone())).await.unwrap().into_inner();
        assert!(hb.expires_at.unwrap().seconds >= g.expires_at.unwrap().seconds);
        let c = s
            .checkin(pb::CheckinRequest { license_id: license_id.clone(), lease_id: g.lease_id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(c.released);
        let again = s
            .checkin(pb::CheckinRequest { license_id: license_id.clone(), lease_id: g.lease_id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(!again.released, "a retried checkin is not an error");
        assert!(live(&app, &license_id).await.is_empty(), "{leases:?}");
        let err = s.heartbeat(heartbeat_req(license_id.clone(), g.lease_id.clone())).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}

#[tokio::test]
async fn a_reconnecting_client_renews_instead_of_taking_a_second_seat() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (license_id, key) = floating(&app, 2).await;
        let mut s = seats(&app).await;
        let first = s.checkout(checkout_req(&key, "same-client", 30_000)).await.unwrap().into_inner().grant.unwrap();
        let again = s.checkout(checkout_req(&key, "same-client", 30_000)).await.unwrap().into_inner().grant.unwrap();
        assert!(again.renewed, "{leases:?}");
        assert_eq!(again.lease_id, first.lease_id);
        assert_eq!(live(&app, &license_id).await.len(), 1);
    }
}

#[tokio::test]
async fn a_full_pool_says_how_many_seats_and_when_the_earliest_expires() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (_, key) = floating(&app, 2).await;
        let mut s = seats(&app).await;
        s.checkout(checkout_req(&key, "a", 30_000)).await.unwrap();
        s.checkout(checkout_req(&key, "b", 30_000)).await.unwrap();
        let err = s.checkout(checkout_req(&key, "c", 30_000)).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::ResourceExhausted, "NO_SEAT_AVAILABLE".into()), "{leases:?}");
        assert!(
            err.message().contains("all 2 seats") && err.message().contains("earliest lease expires"),
            "{}",
            err.message()
        );
        assert!(err.metadata().get("retry-after").is_some());
    }
}

#[tokio::test]
async fn a_silent_client_loses_its_seat_after_the_ttl() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (license_id, key) = floating(&app, 1).await;
        let mut s = seats(&app).await;
        let crashed = s.checkout(checkout_req(&key, "crashes", 1_000)).await.unwrap().into_inner().grant.unwrap();
        assert_eq!(s.checkout(checkout_req(&key, "other", 1_000)).await.unwrap_err().code(), Code::ResourceExhausted);
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        s.checkout(checkout_req(&key, "other", 1_000)).await.expect("the seat is free after the TTL");
        let err = s
            .heartbeat(pb::HeartbeatRequest { license_id, lease_id: crashed.lease_id, lease_token: String::new() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{leases:?}: {}", err.message());
    }
}

#[tokio::test]
async fn revocation_fails_the_next_heartbeat_and_raises_the_fence() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (license_id, key) = floating(&app, 1).await;
        let mut s = seats(&app).await;
        let g = s.checkout(checkout_req(&key, "victim", 30_000)).await.unwrap().into_inner().grant.unwrap();
        let err = s
            .revoke_lease(pb::RevokeLeaseRequest {
                license_id: license_id.clone(),
                lease_id: g.lease_id.clone(),
                reason: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "revoking needs the admin token");
        let r = s
            .revoke_lease(admin_req(pb::RevokeLeaseRequest {
                license_id: license_id.clone(),
                lease_id: g.lease_id.clone(),
                reason: "left".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(r.revoked && r.fence > g.fence);
        let err = s.heartbeat(heartbeat_req(license_id.clone(), g.lease_id.clone())).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "LEASE_REVOKED".into()), "{leases:?}");
        let next = s.checkout(checkout_req(&key, "next", 30_000)).await.unwrap().into_inner().grant.unwrap();
        assert!(next.fence > r.fence, "fences only grow");
    }
}

#[tokio::test]
async fn seat_changes_and_suspension() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (license_id, key) = floating(&app, 2).await;
        let mut s = seats(&app).await;
        let a = s.checkout(checkout_req(&key, "a", 30_000)).await.unwrap().into_inner().grant.unwrap();
        s.checkout(checkout_req(&key, "b", 30_000)).await.unwrap();
        let mut admin = app.admin().await;
        admin
            .set_license_seats(admin_req(admin_pb::SetLicenseSeatsRequest { license_id: license_id.clone(), seats: 1 }))
            .await
            .unwrap();
        assert_eq!(live(&app, &license_id).await.len(), 2, "lowering never evicts");
        s.checkin(pb::CheckinRequest { license_id: license_id.clone(), lease_id: a.lease_id.clone() }).await.unwrap();
        assert_eq!(
            s.checkout(checkout_req(&key, "c", 30_000)).await.unwrap_err().code(),
            Code::ResourceExhausted,
            "still at the new count"
        );
        admin
            .set_license_seats(admin_req(admin_pb::SetLicenseSeatsRequest { license_id: license_id.clone(), seats: 3 }))
            .await
            .unwrap();
        let c = s.checkout(checkout_req(&key, "c", 30_000)).await.unwrap().into_inner().grant.unwrap();
        admin
            .suspend_license(admin_req(admin_pb::SuspendLicenseRequest {
                license_id: license_id.clone(),
                reason: String::new(),
            }))
            .await
            .unwrap();
        let err = s.heartbeat(heartbeat_req(license_id.clone(), c.lease_id)).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "SUSPENDED".into()), "{leases:?}");
        let err = s.checkout(checkout_req(&key, "d", 30_000)).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
    }
}

#[tokio::test]
async fn waiting_clients_are_served_first_come_first_served() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (license_id, key) = floating(&app, 1).await;
        let mut s = seats(&app).await;
        let holder = s.checkout(checkout_req(&key, "holder", 30_000)).await.unwrap().into_inner().grant.unwrap();
        let wait = |client: &str, max_ms: i64| pb::WaitForSeatRequest {
            checkout: Some(checkout_req(&key, client, 30_000)),
            max_wait: Some(prost_types::Duration {
                seconds: max_ms / 1000,
                nanos: ((max_ms % 1000) * 1_000_000) as i32,
            }),
        };
        let mut first = s.wait_for_seat(wait("first", 10_000)).await.unwrap().into_inner();
        let position = first.message().await.unwrap().unwrap().event.unwrap();
        assert_eq!(position, pb::wait_for_seat_response::Event::QueuePosition(1));
        let mut second = seats(&app).await.wait_for_seat(wait("second", 10_000)).await.unwrap().into_inner();
        assert_eq!(
            second.message().await.unwrap().unwrap().event.unwrap(),
            pb::wait_for_seat_response::Event::QueuePosition(2)
        );
        // A third waiter gives up (disconnects): it leaves the queue and is never granted.
        let quitter = seats(&app).await.wait_for_seat(wait("quitter", 10_000)).await.unwrap().into_inner();
        drop(quitter);

        s.checkin(pb::CheckinRequest { license_id: license_id.clone(), lease_id: holder.lease_id }).await.unwrap();
        let granted = tokio::time::timeout(Duration::from_secs(3), first.message())
            .await
            .expect("granted promptly")
            .unwrap()
            .unwrap();
        let grant = match granted.event.unwrap() {
            pb::wait_for_seat_response::Event::Grant(g) => g,
            other => panic!("{leases:?}: expected a grant, got {other:?}"),
        };
        let moved =
            tokio::time::timeout(Duration::from_secs(3), second.message()).await.expect("moves up").unwrap().unwrap();
        assert_eq!(moved.event.unwrap(), pb::wait_for_seat_response::Event::QueuePosition(1));
        s.checkin(pb::CheckinRequest { license_id: license_id.clone(), lease_id: grant.lease_id }).await.unwrap();
        let granted =
            tokio::time::timeout(Duration::from_secs(3), second.message()).await.expect("granted").unwrap().unwrap();
        assert!(matches!(granted.event.unwrap(), pb::wait_for_seat_response::Event::Grant(_)));
        let holders: Vec<String> = live(&app, &license_id).await.into_iter().map(|l| l.client_instance_id).collect();
        assert_eq!(holders, vec!["second".to_string()], "the quitter got nothing");

        // A deadline ends the wait with DEADLINE_EXCEEDED.
        let mut late = seats(&app).await.wait_for_seat(wait("late", 300)).await.unwrap().into_inner();
        let _position = late.message().await.unwrap().unwrap();
        let err = tokio::time::timeout(Duration::from_secs(3), late.message()).await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
    }
}

#[tokio::test]
async fn storm_of_clients_never_exceeds_the_seats_and_every_seat_frees_after_the_ttl() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        const SEATS: usize = 3;
        let (license_id, key) = floating(&app, SEATS as i32).await;
        let channel = app.channel().await;
        let observer = {
            let channel = channel.clone();
            let license_id = license_id.clone();
            tokio::spawn(async move {
                let mut s = SeatServiceClient::new(channel);
                let mut max_seen = 0;
                for _ in 0..60 {
                    let n = s
                        .list_leases(admin_req(pb::ListLeasesRequest { license_id: license_id.clone() }))
                        .await
                        .unwrap()
                        .into_inner()
                        .leases
                        .len();
                    max_seen = max_seen.max(n);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                max_seen
            })
        };
        let clients: Vec<_> = (0..200)
            .map(|i| {
                let mut s = SeatServiceClient::new(channel.clone());
                let key = key.clone();
                let license_id = license_id.clone();
                tokio::spawn(async move {
                    match s.checkout(checkout_req(&key, &format!("storm-{i}"), 1_000)).await {
                        Ok(r) => {
                            // Every third winner crashes (never checks in); the others return the seat.
                            if i % 3 != 0 {
                                let g = r.into_inner().grant.unwrap();
                                s.checkin(pb::CheckinRequest { license_id, lease_id: g.lease_id }).await.unwrap();
                            }
                            true
                        }
                        Err(e) => {
                            assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
                            false
                        }
                    }
                })
            })
            .collect();
        let mut granted = 0;
        for c in clients {
            if c.await.unwrap() {
                granted += 1;
            }
        }
        let max_seen = observer.await.unwrap();
        assert!(max_seen <= SEATS, "{leases:?}: saw {max_seen} live leases for {SEATS} seats");
        assert!(granted >= SEATS, "{leases:?}: {granted} checkouts succeeded");
        assert!(live(&app, &license_id).await.len() <= SEATS);
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert!(live(&app, &license_id).await.is_empty(), "{leases:?}: every seat is free after the TTL");
        let mut s = seats(&app).await;
        for i in 0..SEATS {
            s.checkout(checkout_req(&key, &format!("after-{i}"), 5_000)).await.expect("all seats available again");
        }
    }
}

#[tokio::test]
async fn leases_survive_a_restart_of_the_embedded_server() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let (license_id, key) = floating(&app, 1).await;
    let g = seats(&app).await.checkout(checkout_req(&key, "c", 30_000)).await.unwrap().into_inner().grant.unwrap();
    let app = app.restart().await;
    let mut s = seats(&app).await;
    s.heartbeat(heartbeat_req(license_id.clone(), g.lease_id)).await.expect("the lease is still there");
    assert_eq!(s.checkout(checkout_req(&key, "other", 30_000)).await.unwrap_err().code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn bad_input_gets_its_own_status_and_changes_nothing() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, |_| {}).await;
        let (other_id, other_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, |_| {}).await;
        let (_, node_locked_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;
        let mut s = seats(&app).await;
        let cases: Vec<(pb::CheckoutRequest, Code, &str)> = vec![
            (checkout_req(&node_locked_key, "c", 10_000), Code::FailedPrecondition, "WRONG_KIND"),
            (checkout_req("XXXXX-XXXXX", "c", 10_000), Code::InvalidArgument, "LICENSE_KEY_MALFORMED"),
            (
                checkout_req(&licensing_domain::license_key::LicenseKey::generate().to_string(), "c", 10_000),
                Code::NotFound,
                "LICENSE_NOT_FOUND",
            ),
            (
                pb::CheckoutRequest {
                    ttl: Some(prost_types::Duration { seconds: -5, nanos: 0 }),
                    ..checkout_req(&key, "c", 0)
                },
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (checkout_req(&key, "", 10_000), Code::InvalidArgument, "INVALID_ARGUMENT"),
            (
                pb::CheckoutRequest { user: "u".repeat(5_000), ..checkout_req(&key, "c", 10_000) },
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                pb::CheckoutRequest { feature: "teleport".into(), ..checkout_req(&key, "c", 10_000) },
                Code::FailedPrecondition,
                "FEATURE_NOT_LICENSED",
            ),
            (
                pb::CheckoutRequest { credentials: None, ..checkout_req(&key, "c", 10_000) },
                Code::InvalidArgument,
                "CREDENTIALS_MISSING",
            ),
            (
                pb::CheckoutRequest {
                    credentials: Some(pb::SeatCredentials {
                        credential: Some(pb::seat_credentials::Credential::LicenseIdAndPassword(
                            pb::LicenseIdAndPassword { license_id: license_id.clone(), password: "wrong".into() },
                        )),
                    }),
                    ..checkout_req(&key, "c", 10_000)
                },
                Code::PermissionDenied,
                "WRONG_ACTIVATION_PASSWORD",
            ),
        ];
        for (request, code, why) in cases {
            let err = s.checkout(request).await.unwrap_err();
            assert_eq!((err.code(), reason(&err)), (code, why.to_owned()), "{leases:?}: {}", err.message());
        }
        // A heartbeat naming another license's lease.
        let g = s.checkout(checkout_req(&other_key, "x", 10_000)).await.unwrap().into_inner().grant.unwrap();
        let err = s.heartbeat(heartbeat_req(license_id.clone(), g.lease_id.clone())).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = s.heartbeat(heartbeat_req("nope", g.lease_id.clone())).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = s
            .checkin(pb::CheckinRequest { license_id: license_id.clone(), lease_id: "lse_x".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(live(&app, &license_id).await.is_empty(), "{leases:?}: nothing was taken");
        assert_eq!(live(&app, &other_id).await.len(), 1);
    }
}

/// The separate Seat service serves heartbeats from a license cache; a suspension made through
/// the Account service (another process) still stops them within moments (PostgreSQL NOTIFY; a
/// missed one would be served for 10 s), and so it does when the Seat's LISTEN connection has
/// just been killed and that notification is lost (the cache answers nothing while its listener
/// is down, and starts empty when it is back).
#[tokio::test]
async fn a_suspension_made_by_the_account_service_stops_heartbeats_on_the_seat_service() {
    use crate::common::process::{separate_services_env, AdminOn, Process};
    if !postgres_available().await || !redis_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = separate_services_env(dir.path()).await;
    let database_url = env.iter().find(|(k, _)| k == "LICENSING_DATABASE_URL").unwrap().1.clone();
    let mut account = Process::new(env!("CARGO_BIN_EXE_account"), &env);
    let mut seat = Process::new(env!("CARGO_BIN_EXE_seat"), &env);
    // Account first: it applies the migrations.
    account.start().await;
    seat.start().await;
    let (_, key) = AdminOn(account.channel().await).licenses().await;
    let mut admin = admin_pb::admin_service_client::AdminServiceClient::new(account.channel().await);
    let mut s = SeatServiceClient::new(seat.channel().await);
    let grant = s.checkout(checkout_by_key(&key, "cached", 60)).await.unwrap().into_inner().grant.unwrap();
    let heartbeat = || heartbeat_req(grant.license_id.clone(), grant.lease_id.clone());
    // Heartbeats until one is refused as SUSPENDED, for at most 2 s (a missed change would be
    // served from the cache for 10 s).
    let refused_within_2_s = |mut s: SeatServiceClient<tonic::transport::Channel>| async move {
        for _ in 0..100 {
            match s.heartbeat(heartbeat()).await {
                Err(e) if reason(&e) == "SUSPENDED" => return true,
                Err(e) => panic!("unexpected {e:?}"),
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        false
    };
    let suspend = admin_pb::SuspendLicenseRequest { license_id: grant.license_id.clone(), reason: String::new() };
    let reinstate = admin_pb::ReinstateLicenseRequest { license_id: grant.license_id.clone() };

    for _ in 0..3 {
        s.heartbeat(heartbeat()).await.expect("cached from here on");
    }
    admin.suspend_license(admin_req(suspend.clone())).await.unwrap();
    assert!(refused_within_2_s(s.clone()).await, "the suspension reached the Seat service's cache");

    admin.reinstate_license(admin_req(reinstate)).await.unwrap();
    let mut resumed = false;
    for _ in 0..100 {
        if s.heartbeat(heartbeat()).await.is_ok() {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(resumed, "the reinstatement reached it too");
    // Kill the Seat's LISTEN connection, then suspend: that notification goes nowhere.
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url).await.unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(killed.len(), 1, "the Seat service listens on one connection");
    admin.suspend_license(admin_req(suspend)).await.unwrap();
    assert!(refused_within_2_s(s.clone()).await, "a lost listener means no cached answers");
    seat.stop().await;
    account.stop().await;
}

/// A checkout right after a license change is decided on the changed license, even by a Seat
/// service that has not heard of the change yet (its NOTIFY still on the way). The changing
/// process raises the license's revision in Redis before its call returns; the checkout script
/// refuses one decided on a cached license of an older revision, and the service decides again
/// on a fresh read. Here the Seat service's store never hears of the other handle's changes (no
/// LISTEN), so only that fence stands between a stale cache and a seat too many.
#[tokio::test]
async fn a_checkout_right_after_a_license_change_sees_it_before_the_seat_service_hears_of_it() {
    use licensing_domain::certificate::Signer;
    use licensing_domain::change::LicenseChange;
    use licensing_domain::license_key::LicenseKey;
    use licensing_domain::model::*;
    use licensing_domain::secrets::{purpose, KeyedHasher, PasswordHasher};
    use licensing_domain::store::{CatalogStore, LeaseStore, UpdateError};
    use licensing_runtime::credentials::{CredentialResolver, Credentials};
    use licensing_runtime::license_cache::Lookup;
    use licensing_seat::service::CheckoutRequest;
    use licensing_seat::{LicenseCache, SeatError, SeatSettings, Seats, UsageLog};
    use licensing_store::{RedisLeaseStore, SqlStore};
    use std::sync::Arc;
    if !postgres_available().await || !redis_available().await {
        return;
    }
    let url = fresh_postgres_database().await;
    // Two handles on one database: the Seat service's, whose change feed its cache follows, and
    // the Account service's, which raises revisions in the lease store.
    let seat_sql = SqlStore::connect_postgres(&url, &Default::default()).await.unwrap();
    let account_sql = SqlStore::connect_postgres(&url, &Default::default()).await.unwrap();
    let redis = RedisLeaseStore::connect(&redis_url()).await.unwrap();
    redis.open_epoch(false).await.unwrap();
    account_sql.raise_license_revisions_in(Arc::new(redis.clone()));

    let audit = |action: &str| AuditRecord::new("test", action, "fence");
    account_sql.create_product(&suite_product(), audit("product.created")).await.unwrap();
    let customer = Customer {
        customer_id: licensing_domain::ids::new_id(licensing_domain::ids::CUSTOMER),
        company_name: "Acme".into(),
        contact_email: "ops@acme.example".into(),
        contact_name: String::new(),
        phone: String::new(),
        created_at: 1,
    };
    account_sql.create_customer(&customer, None, audit("customer.created")).await.unwrap();
    let hasher = KeyedHasher::new(vec![7u8; 32]);
    let key = LicenseKey::generate();
    let license = new_license(&customer.customer_id, LicenseKind::Concurrent, 3);
    let new = NewLicense {
        license: license.clone(),
        key_digest: hasher.digest(purpose::LICENSE_KEY, key.as_str()),
        activation_password_salt: "salt".into(),
    };
    account_sql.insert_license(&new, audit("license.issued"), None).await.unwrap();
    let change = |change: LicenseChange| {
        let account_sql = account_sql.clone();
        let license_id = license.license_id.clone();
        async move {
            let now = licensing_domain::clock::Clock::now(&licensing_domain::clock::SystemClock);
            let changed: Result<License, UpdateError> =
                account_sql.update_license(&license_id, &change, now, audit("license.changed"), None).await;
            changed.unwrap();
        }
    };

    // Live with no listener: this Seat hears only of its own process's changes.
    let feed = licensing_domain::store::LicenseFeed { changes: seat_sql.license_feed().changes, listening: None };
    let cache = Arc::new(LicenseCache::following(feed));
    let catalog: Arc<dyn CatalogStore> = Arc::new(seat_sql.clone());
    let credentials = CredentialResolver::new(
        catalog.clone(),
        hasher,
        PasswordHasher::with_params(8, 1, 1),
        licensing_runtime::limiter::GuessThrottle::default(),
    );
    let seat_service = Seats::new(
        catalog,
        Arc::new(redis.clone()),
        Arc::new(seat_sql.clone()),
        UsageLog::start(Arc::new(seat_sql.clone()), 64),
        credentials,
        Signer::from_seed(&[9; 32]),
        SeatSettings::default(),
    )
    .with_license_cache(cache.clone())
    .with_license_revisions(Arc::new(redis.clone()));
    let by_key = Credentials::LicenseKey(key.as_str().to_owned());
    let checkout = |client: &str| {
        let request = CheckoutRequest { client_instance_id: client.into(), ..Default::default() };
        let (seat_service, by_key) = (seat_service.clone(), by_key.clone());
        async move { seat_service.checkout(&by_key, &request, None).await }
    };

    // The first checkout learns whose key it is; the second caches the license at revision 0.
    checkout("a").await.unwrap();
    checkout("b").await.unwrap();
    assert!(
        matches!(cache.lookup(&license.license_id), Lookup::Hit((ref l, Some(0))) if l.seats == 3),
        "checkouts are served from the cache"
    );
    // 3 seats -> 2, with 2 held: the cache still says 3, the next checkout must still be refused.
    change(LicenseChange::SetSeats(2)).await;
    match checkout("c").await {
        Err(SeatError::NoSeat { seats: 2, in_use: 2, .. }) => {}
        other => panic!("expected no seat on the 2-seat license, got {other:?}"),
    }
    assert_eq!(redis.list(&license.license_id).await.unwrap().len(), 2, "no seat too many");
    checkout("a").await.expect("the holder's renewal, on the new license");
    assert!(matches!(cache.lookup(&license.license_id), Lookup::Hit((ref l, Some(1))) if l.seats == 2), "cached again");

    // Suspended: not even the holder renews. Reinstated: at once, though the cache said suspended.
    change(LicenseChange::Suspend).await;
    match checkout("a").await {
        Err(SeatError::LicenseState(refusal)) => assert_eq!(refusal.reason, "SUSPENDED"),
        other => panic!("expected SUSPENDED, got {other:?}"),
    }
    checkout("a").await.expect_err("still suspended, now from the cache");
    change(LicenseChange::Reinstate).await;
    checkout("a").await.expect("reinstated: the suspended license in the cache is not trusted to refuse");
}

/// A license is valid from the moment its issue call returns on every service, whatever their
/// clocks: here the issuing service's clock runs a minute ahead of Redis's, by which the Seat
/// service judges.
#[tokio::test]
async fn a_license_is_valid_from_its_issue_on_a_seat_service_whose_clock_lags() {
    if !redis_available().await {
        return;
    }
    let data_dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, data_dir.path()).await;
    env.insert("LICENSING_REDIS_URL".into(), redis_url());
    let ahead = licensing_domain::clock::ManualClock::new(now_s() * 1000 + 60_000);
    let overrides = licensing::Overrides { clock: std::sync::Arc::new(ahead), ..test_overrides() };
    let app = spawn_with(Backend::Sqlite, data_dir, env, overrides).await;
    let (license_id, key) = floating(&app, 1).await;
    let g = seats(&app).await.checkout(checkout_req(&key, "first", 30_000)).await.expect("valid at once").into_inner();
    assert_eq!(g.grant.unwrap().license_id, license_id);
}

/// A checkout naming another holder's client instance ID is another client: it neither renews
/// nor learns that lease, and the holder keeps it.
#[tokio::test]
async fn a_client_instance_id_named_by_another_user_or_host_is_another_client() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (license_id, key) = floating(&app, 1).await;
        let mut s = seats(&app).await;
        let alice =
            pb::CheckoutRequest { user: "alice".into(), host: "ws-1".into(), ..checkout_req(&key, "pid-7", 30_000) };
        let held = s.checkout(alice.clone()).await.unwrap().into_inner().grant.unwrap();
        for (user, host) in [("mallory", "ws-1"), ("alice", "ws-9"), ("mallory", "ws-9")] {
            let other = pb::CheckoutRequest { user: user.into(), host: host.into(), ..alice.clone() };
            let err = s.checkout(other).await.unwrap_err();
            assert_eq!(
                (err.code(), reason(&err)),
                (Code::ResourceExhausted, "NO_SEAT_AVAILABLE".into()),
                "{leases:?}: {user}@{host} is another client and the one seat is taken"
            );
        }
        let listed = live(&app, &license_id).await;
        assert_eq!(listed.len(), 1, "{leases:?}");
        assert_eq!((listed[0].lease_id.as_str(), listed[0].user.as_str()), (held.lease_id.as_str(), "alice"));
        // The holder itself still renews.
        let again = s.checkout(alice).await.unwrap().into_inner().grant.unwrap();
        assert_eq!((again.lease_id, again.renewed), (held.lease_id, true), "{leases:?}");
    }
}

/// A heartbeat that carries a lease token must carry this lease's, as this server signed it: an
/// altered token or another lease's is refused and extends nothing.
#[tokio::test]
async fn a_heartbeat_with_an_altered_or_foreign_lease_token_changes_nothing() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (license_id, key) = floating(&app, 2).await;
        let mut s = seats(&app).await;
        let a = s.checkout(checkout_req(&key, "a", 30_000)).await.unwrap().into_inner().grant.unwrap();
        let b = s.checkout(checkout_req(&key, "b", 30_000)).await.unwrap().into_inner().grant.unwrap();
        let expiry_of_a = |leases: Vec<licensing_proto::common::v1::Lease>| {
            leases.into_iter().find(|l| l.lease_id == a.lease_id).unwrap().expires_at.unwrap()
        };
        let before = expiry_of_a(live(&app, &license_id).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut altered = a.lease_token.clone().into_bytes();
        let at = altered.len() / 3;
        altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
        for (token, what) in [(String::from_utf8(altered).unwrap(), "altered"), (b.lease_token.clone(), "foreign")] {
            let err = s
                .heartbeat(pb::HeartbeatRequest {
                    license_id: license_id.clone(),
                    lease_id: a.lease_id.clone(),
                    lease_token: token,
                })
                .await
                .unwrap_err();
            assert_eq!(
                (err.code(), reason(&err)),
                (Code::InvalidArgument, "LEASE_TOKEN_INVALID".into()),
                "{leases:?}: an {what} token: {}",
                err.message()
            );
            if what == "foreign" {
                assert!(
                    err.message().contains(&b.lease_id) && err.message().contains(&a.lease_id),
                    "{}",
                    err.message()
                );
            }
        }
        assert_eq!(expiry_of_a(live(&app, &license_id).await), before, "{leases:?}: nothing was extended");
        let ok = s
            .heartbeat(pb::HeartbeatRequest {
                license_id: license_id.clone(),
                lease_id: a.lease_id.clone(),
                lease_token: a.lease_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let after = ok.expires_at.unwrap();
        assert!((after.seconds, after.nanos) >= (before.seconds, before.nanos), "{leases:?}: its own token extends it");
    }
}

/// A heartbeat on a lease that expired answers LEASE_EXPIRED on every lease store, whether or not
/// the sweep has recorded the expiry yet, when it carries the lease's token.
#[tokio::test]
async fn an_expired_lease_is_lease_expired_on_every_lease_store() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let (license_id, key) = floating(&app, 1).await;
        let mut s = seats(&app).await;
        let g = s.checkout(checkout_req(&key, "sleeper", 1_000)).await.unwrap().into_inner().grant.unwrap();
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        // Another client takes the seat (reaping the expired lease), and the sweep (every
        // 100 ms here) records it.
        s.checkout(checkout_req(&key, "next", 30_000)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let err = s
            .heartbeat(pb::HeartbeatRequest {
                license_id: license_id.clone(),
                lease_id: g.lease_id.clone(),
                lease_token: g.lease_token.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err)),
            (Code::NotFound, "LEASE_EXPIRED".into()),
            "{leases:?}: {}",
            err.message()
        );
    }
}

/// A borrow clamped to the license's expiry ends at it, never after (the store caps the expiry
/// by its own clock).
#[tokio::test]
async fn a_borrow_never_outlives_the_license() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let f = fixture(&app).await;
        // The license has 7 to 8 s left; a borrow may last 5 s.
        let expires = now_s() + 8;
        let (license_id, key, _) =
            issue_license(&app, &f, LicenseKind::Concurrent, 5, |r| r.expires_at = ts(expires)).await;
        let policy =
            pb::SeatPolicy { max_borrow: Some(prost_types::Duration { seconds: 5, nanos: 0 }), ..Default::default() };
        seats(&app)
            .await
            .update_seat_policy(admin_req(pb::UpdateSeatPolicyRequest { license_id, policy: Some(policy) }))
            .await
            .unwrap();
        // Wait until less than the 5 s borrow is left of the license.
        let now_ms = now_ms();
        tokio::time::sleep(Duration::from_millis((expires * 1000 - now_ms - 4_500).max(0) as u64)).await;
        for i in 0..5 {
            let borrow = pb::CheckoutRequest {
                borrow_for: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
                ..checkout_req(&key, &format!("laptop-{i}"), 30_000)
            };
            let g = seats(&app).await.checkout(borrow).await.unwrap().into_inner().grant.unwrap();
            let end = g.expires_at.unwrap();
            assert!(
                (end.seconds, end.nanos) <= (expires, 0),
                "{leases:?}: the borrow ends at {end:?}, after the license's expiry at {expires} s"
            );
        }
    }
}
