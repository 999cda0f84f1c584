//! Seat policies end to end over gRPC, on the embedded lease store and on Redis: sharing,
//! linger, borrowing, overdraft, reservations, caps, allow and deny, tokens, and usage reports.

use crate::common::*;
use licensing_domain::clock::{ManualClock, DAY, HOUR, MINUTE};
use licensing_proto::common::v1::LicenseKind;
use licensing_proto::seat::v1 as pb;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::live_leases as leases;
use crate::common::seat_client as seats;

fn duration(ms: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

fn user(name: &str) -> pb::Principal {
    pb::Principal { kind: pb::PrincipalKind::User as i32, name: name.into() }
}

fn host(name: &str) -> pb::Principal {
    pb::Principal { kind: pb::PrincipalKind::Host as i32, name: name.into() }
}

fn group(name: &str) -> pb::Principal {
    pb::Principal { kind: pb::PrincipalKind::Group as i32, name: name.into() }
}

/// A checkout by `user` on `host`, as a new client process.
fn checkout(key: &str, user: &str, host: &str) -> pb::CheckoutRequest {
    pb::CheckoutRequest {
        credentials: Some(pb::SeatCredentials {
            credential: Some(pb::seat_credentials::Credential::LicenseKey(key.into())),
        }),
        user: user.into(),
        host: host.into(),
        client_instance_id: licensing_domain::ids::new_id("cli"),
        ttl: duration(60_000),
        ..Default::default()
    }
}

/// A concurrent license with `seats` and this policy; returns (License ID, key).
async fn license_with_policy(app: &TestApp, seats_total: i32, policy: pb::SeatPolicy) -> (String, String) {
    let f = fixture(app).await;
    let (license_id, key, _) = issue_license(app, &f, LicenseKind::Concurrent, seats_total, |r| {
        r.modules = vec!["render".into(), "export".into()]
    })
    .await;
    set_policy(app, &license_id, policy).await.expect("a valid policy");
    (license_id, key)
}

async fn set_policy(app: &TestApp, license_id: &str, policy: pb::SeatPolicy) -> Result<pb::SeatPolicy, tonic::Status> {
    seats(app)
        .await
        .update_seat_policy(admin_req(pb::UpdateSeatPolicyRequest {
            license_id: license_id.into(),
            policy: Some(policy),
        }))
        .await
        .map(|r| r.into_inner().policy.unwrap())
}

async fn grant(app: &TestApp, request: pb::CheckoutRequest) -> Result<pb::LeaseGrant, tonic::Status> {
    seats(app).await.checkout(request).await.map(|r| r.into_inner().grant.unwrap())
}

async fn pool(app: &TestApp, license_id: &str) -> pb::GetPoolStatusResponse {
    seats(app)
        .await
        .get_pool_status(admin_req(pb::GetPoolStatusRequest { license_id: license_id.into() }))
        .await
        .unwrap()
        .into_inner()
}

async fn checkin(app: &TestApp, license_id: &str, lease_id: &str) -> bool {
    seats(app)
        .await
        .checkin(pb::CheckinRequest { license_id: license_id.into(), lease_id: lease_id.into() })
        .await
        .unwrap()
        .into_inner()
        .released
}

async fn report(app: &TestApp, license_id: &str, from: i64, to: i64) -> pb::GetUsageReportResponse {
    let ts = |ms: i64| Some(prost_types::Timestamp { seconds: ms / 1000, nanos: 0 });
    seats(app)
        .await
        .get_usage_report(admin_req(pb::GetUsageReportRequest {
            license_id: license_id.into(),
            from: ts(from),
            to: ts(to),
            as_csv: true,
        }))
        .await
        .unwrap()
        .into_inner()
}

fn ms_now() -> i64 {
    now_s() * 1000
}

#[tokio::test]
async fn contradictory_policies_are_refused_with_the_field_named_and_the_old_policy_kept() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let good = pb::SeatPolicy { overdraft_seats: 1, ..Default::default() };
    let (license_id, _) = license_with_policy(&app, 3, good.clone()).await;
    let reserve = |seats_reserved| pb::Reservation { principal: Some(user("ann")), seats: seats_reserved };
    let bad: Vec<(&str, pb::SeatPolicy)> = vec![
        ("reservations", pb::SeatPolicy { reservations: vec![reserve(4)], ..Default::default() }),
        (
            "caps",
            pb::SeatPolicy {
                caps: vec![pb::SeatCap { principal: Some(user("ann")), max_seats: -1 }],
                ..Default::default()
            },
        ),
        // The license expires in a year.
        ("max_borrow", pb::SeatPolicy { max_borrow: duration(400 * DAY), ..Default::default() }),
        ("max_borrow", pb::SeatPolicy { max_borrow: duration(366 * DAY), ..Default::default() }),
        ("feature_costs", pb::SeatPolicy { feature_costs: [("render".to_string(), 9)].into(), ..Default::default() }),
        (
            "reservations",
            pb::SeatPolicy { reservations: vec![pb::Reservation { principal: None, seats: 1 }], ..Default::default() },
        ),
        ("allow", pb::SeatPolicy { allow: vec![pb::Principal { kind: 0, name: "x".into() }], ..Default::default() }),
        ("deny", pb::SeatPolicy { deny: vec![user("a"), user("a")], ..Default::default() }),
        ("linger", pb::SeatPolicy { linger: duration(30 * DAY), ..Default::default() }),
        (
            "groups",
            pb::SeatPolicy {
                groups: vec![pb::SeatGroup { name: "g".into(), members: vec![group("h")] }],
                ..Default::default()
            },
        ),
        ("max_processes_per_seat", pb::SeatPolicy { max_processes_per_seat: -2, ..Default::default() }),
    ];
    for (field, policy) in bad {
        let status = set_policy(&app, &license_id, policy.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
        assert_eq!(pool(&app, &license_id).await.policy.unwrap().overdraft_seats, 1, "{field}: the old policy stays");
    }
    // Lowering the seats below the reservations is refused too.
    set_policy(&app, &license_id, pb::SeatPolicy { reservations: vec![reserve(2)], ..Default::default() })
        .await
        .unwrap();
    let status = app
        .admin()
        .await
        .set_license_seats(admin_req(licensing_proto::account::v1::SetLicenseSeatsRequest {
            license_id: license_id.clone(),
            seats: 1,
        }))
        .await
        .unwrap_err();
    assert_eq!((status.code(), status.message().starts_with("seats")), (Code::InvalidArgument, true), "{status:?}");
    // Only the admin sets policies, and only on concurrent licenses.
    let status = seats(&app)
        .await
        .update_seat_policy(pb::UpdateSeatPolicyRequest { license_id: license_id.clone(), policy: Some(good.clone()) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let f = fixture(&app).await;
    let (node_locked, _, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
    assert_eq!(set_policy(&app, &node_locked, good).await.unwrap_err().code(), Code::FailedPrecondition);
    // The change is audited.
    let audit = app
        .admin()
        .await
        .list_audit_events(admin_req(licensing_proto::account::v1::ListAuditEventsRequest {
            subject: license_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(audit.iter().any(|e| e.action == "license.seat_policy_changed"));
}

#[tokio::test]
async fn sharing_and_tokens() {
    for backend in lease_backends().await {
        let app = spawn_seat_app(backend).await;
        let policy = pb::SeatPolicy {
            share_scope: pb::ShareScope::UserHost as i32,
            max_processes_per_seat: 2,
            feature_costs: [("render".to_string(), 2)].into(),
            ..Default::default()
        };
        let (license_id, key) = license_with_policy(&app, 3, policy).await;
        let first = grant(&app, checkout(&key, "ann", "ws-1")).await.unwrap();
        let second = grant(&app, checkout(&key, "ann", "ws-1")).await.unwrap();
        assert_ne!(first.lease_id, second.lease_id, "{backend:?}");
        assert_eq!(second.seats_in_use, 1, "{backend:?}: two processes of ann on ws-1 share one seat");
        let listed = leases(&app, &license_id).await;
        assert!(listed.iter().all(|l| l.shared_processes == 2), "{backend:?}: {listed:?}");
        assert_eq!(
            grant(&app, checkout(&key, "ann", "ws-1")).await.unwrap().seats_in_use,
            2,
            "{backend:?}: a third needs its own"
        );
        // Tokens: render costs 2 of the 3 seats; only 1 is left.
        let render = pb::CheckoutRequest { feature: "render".into(), ..checkout(&key, "bob", "ws-2") };
        let status = grant(&app, render.clone()).await.unwrap_err();
        assert_eq!(
            (status.code(), reason(&status)),
            (Code::ResourceExhausted, "NO_SEAT_AVAILABLE".into()),
            "{backend:?}"
        );
        assert!(checkin(&app, &license_id, &first.lease_id).await);
        assert_eq!(pool(&app, &license_id).await.seats_in_use, 2, "{backend:?}: the shared seat is still held");
        assert!(checkin(&app, &license_id, &second.lease_id).await);
        let g = grant(&app, render).await.unwrap();
        assert_eq!(g.seats_in_use, 3, "{backend:?}");
        assert_eq!(leases(&app, &license_id).await.iter().find(|l| l.lease_id == g.lease_id).unwrap().seats_held, 2);
    }
}

#[tokio::test]
async fn a_lingering_seat_comes_back_to_the_same_user_and_host() {
    for backend in lease_backends().await {
        let app = spawn_seat_app(backend).await;
        let (license_id, key) =
            license_with_policy(&app, 1, pb::SeatPolicy { linger: duration(60_000), ..Default::default() }).await;
        let g = grant(&app, checkout(&key, "ann", "ws-1")).await.unwrap();
        assert!(checkin(&app, &license_id, &g.lease_id).await);
        let listed = leases(&app, &license_id).await;
        assert!(listed[0].lingering, "{backend:?}: shown as lingering");
        let status = grant(&app, checkout(&key, "bob", "ws-2")).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{backend:?}: the lingering seat is held");
        // A quick close and reopen (a new process) gets the same seat back.
        let again = grant(&app, checkout(&key, "ann", "ws-1")).await.unwrap();
        assert_eq!((again.lease_id.as_str(), again.renewed), (g.lease_id.as_str(), true), "{backend:?}");
        assert!(!leases(&app, &license_id).await[0].lingering);
    }
}

#[tokio::test]
async fn a_borrowed_seat_lives_offline_with_a_signed_token_and_an_early_return_frees_it() {
    for backend in lease_backends().await {
        let app = spawn_seat_app(backend).await;
        let (license_id, key) =
            license_with_policy(&app, 1, pb::SeatPolicy { max_borrow: duration(2 * HOUR), ..Default::default() }).await;
        let too_long = pb::CheckoutRequest { borrow_for: duration(3 * HOUR), ..checkout(&key, "ann", "laptop") };
        let status = grant(&app, too_long).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{backend:?}: {status:?}");
        assert!(status.message().starts_with("borrow_for"));
        let borrow = pb::CheckoutRequest { borrow_for: duration(HOUR), ..checkout(&key, "ann", "laptop") };
        let g = grant(&app, borrow).await.unwrap();
        assert!(g.borrowed, "{backend:?}");
        let expires_ms = g.expires_at.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap();
        assert!((expires_ms - (ms_now() + HOUR)).abs() < 10_000, "{backend:?}: borrowed for an hour");
        // The token proves the borrow offline: it verifies with the public key alone.
        let public = licensing_domain::certificate::verifying_key_from_base64(&app.public_key().await).unwrap();
        let token = licensing_domain::certificate::verify_lease_token(&public, &g.lease_token).unwrap();
        assert_eq!(
            (token.borrowed, token.lease_id.as_str(), token.expires_at_ms),
            (true, g.lease_id.as_str(), expires_ms)
        );
        assert!(leases(&app, &license_id).await[0].borrowed, "{backend:?}: listed as borrowed");
        // Heartbeats do not lengthen a borrow.
        let hb = seats(&app)
            .await
            .heartbeat(pb::HeartbeatRequest {
                license_id: license_id.clone(),
                lease_id: g.lease_id.clone(),
                lease_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hb.expires_at, g.expires_at, "{backend:?}");
        assert_eq!(grant(&app, checkout(&key, "bob", "ws")).await.unwrap_err().code(), Code::ResourceExhausted);
        assert!(checkin(&app, &license_id, &g.lease_id).await, "{backend:?}: returned early");
        grant(&app, checkout(&key, "bob", "ws")).await.expect("the returned seat is free at once");
        // Without max_borrow, borrowing is refused.
        let (_, plain) = license_with_policy(&app, 1, pb::SeatPolicy::default()).await;
        let status = grant(&app, pb::CheckoutRequest { borrow_for: duration(HOUR), ..checkout(&plain, "ann", "l") })
            .await
            .unwrap_err();
        assert_eq!((status.code(), reason(&status)), (Code::FailedPrecondition, "BORROW_NOT_ALLOWED".into()));
    }
}

#[tokio::test]
async fn overdraft_succeeds_says_so_is_flagged_in_the_usage_log_and_is_never_exceeded_in_a_race() {
    for backend in lease_backends().await {
        let app = spawn_seat_app(backend).await;
        let started = ms_now() - 1000;
        let (license_id, key) =
            license_with_policy(&app, 3, pb::SeatPolicy { overdraft_seats: 2, ..Default::default() }).await;
        let racers: Vec<_> = (0..40)
            .map(|i| {
                let request = checkout(&key, &format!("user{i}"), "h");
                let addr = app.addr;
                tokio::spawn(async move {
                    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
                    SeatServiceClient::new(channel).checkout(request).await.map(|r| r.into_inner().grant.unwrap())
                })
            })
            .collect();
        let mut granted = vec![];
        for racer in racers {
            match racer.await.unwrap() {
                Ok(g) => granted.push(g),
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{backend:?}"),
            }
        }
        assert_eq!(granted.len(), 5, "{backend:?}: 3 seats and 2 overdraft, never more");
        assert_eq!(granted.iter().filter(|g| g.overdraft).count(), 2, "{backend:?}");
        let status = pool(&app, &license_id).await;
        assert_eq!((status.seats_in_use, status.overdraft_in_use), (5, 2), "{backend:?}");
        let r = report(&app, &license_id, started, ms_now() + 1000).await;
        assert_eq!((r.checkouts, r.overdraft_checkouts), (5, 2), "{backend:?}");
        assert_eq!(r.denials, vec![pb::DenialCount { reason: "NO_SEAT_AVAILABLE".into(), count: 35 }], "{backend:?}");
        assert_eq!(r.daily_peaks.iter().map(|d| d.peak_seats).max(), Some(5), "{backend:?}");
        assert_eq!(r.events_dropped, 0);
    }
}

#[tokio::test]
async fn reservations_caps_allow_and_deny() {
    for backend in lease_backends().await {
        let app = spawn_seat_app(backend).await;
        let policy = pb::SeatPolicy {
            reservations: vec![pb::Reservation { principal: Some(group("design")), seats: 2 }],
            caps: vec![pb::SeatCap { principal: Some(host("kiosk")), max_seats: 1 }],
            deny: vec![user("mallory")],
            groups: vec![pb::SeatGroup { name: "design".into(), members: vec![user("ann"), host("studio")] }],
            ..Default::default()
        };
        let (license_id, key) = license_with_policy(&app, 4, policy.clone()).await;
        let status = grant(&app, checkout(&key, "mallory", "studio")).await.unwrap_err();
        assert_eq!(
            (status.code(), reason(&status)),
            (Code::PermissionDenied, "DENIED".into()),
            "{backend:?}: deny wins"
        );
        grant(&app, checkout(&key, "bob", "kiosk")).await.unwrap();
        let status = grant(&app, checkout(&key, "cy", "kiosk")).await.unwrap_err();
        assert_eq!((status.code(), reason(&status)), (Code::ResourceExhausted, "CAP_REACHED".into()), "{backend:?}");
        grant(&app, checkout(&key, "cy", "desk")).await.unwrap();
        // Two seats left, both reserved for design: idle, yet not for dora.
        let status = grant(&app, checkout(&key, "dora", "desk")).await.unwrap_err();
        assert_eq!((status.code(), reason(&status)), (Code::ResourceExhausted, "SEATS_RESERVED".into()), "{backend:?}");
        assert!(status.message().contains("reserved"), "{}", status.message());
        grant(&app, checkout(&key, "ann", "desk")).await.unwrap();
        grant(&app, checkout(&key, "eve", "studio")).await.expect("a design host");
        // A group the product vouches for counts as well; an allow list keeps everyone else out.
        let allow = pb::SeatPolicy { allow: vec![group("ops")], ..Default::default() };
        let (_, key) = license_with_policy(&app, 4, allow).await;
        let status = grant(&app, checkout(&key, "bob", "h")).await.unwrap_err();
        assert_eq!((status.code(), reason(&status)), (Code::PermissionDenied, "NOT_ALLOWED".into()));
        grant(&app, pb::CheckoutRequest { groups: vec!["ops".into()], ..checkout(&key, "bob", "h") }).await.unwrap();
        // The policy is shown as set.
        assert_eq!(pool(&app, &license_id).await.policy.unwrap().reservations, policy.reservations);
    }
}

#[tokio::test]
async fn reserved_seats_hold_under_a_storm_of_other_users() {
    for backend in lease_backends().await {
        let app = spawn_seat_app(backend).await;
        let policy = pb::SeatPolicy {
            reservations: vec![pb::Reservation { principal: Some(user("ann")), seats: 2 }],
            ..Default::default()
        };
        let (license_id, key) = license_with_policy(&app, 6, policy).await;
        let storm: Vec<_> = (0..50)
            .map(|i| {
                let request = checkout(&key, &format!("user{i}"), "h");
                let addr = app.addr;
                tokio::spawn(async move {
                    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
                    SeatServiceClient::new(channel).checkout(request).await.is_ok()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let ann = [grant(&app, checkout(&key, "ann", "a1")).await, grant(&app, checkout(&key, "ann", "a2")).await];
        let others = futures::future::join_all(storm).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
        assert_eq!(others, 4, "{backend:?}: the others share the 4 unreserved seats");
        assert!(ann.iter().all(Result::is_ok), "{backend:?}: ann's seats were kept: {ann:?}");
        assert_eq!(pool(&app, &license_id).await.seats_in_use, 6);
    }
}

/// A scripted day on the embedded store with a hand-moved clock; the report must match the
/// figures computed here from the script itself.
#[tokio::test]
async fn a_scripted_day_reports_what_happened() {
    // Some midnight (UTC) a few days ahead, so the license issued "now" on the test clock is valid.
    let day = (ms_now() / DAY + 3) * DAY;
    let clock = ManualClock::new(day + 9 * HOUR);
    let data_dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, data_dir.path()).await;
    env.insert("LICENSING_SWEEP_INTERVAL_MS".into(), "50".into());
    let overrides = licensing::Overrides { clock: std::sync::Arc::new(clock.clone()), ..test_overrides() };
    let app = spawn_with(Backend::Sqlite, data_dir, env, overrides).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, |r| {
        r.associate = true;
        r.expires_at = ts(now_s() + 30 * 86_400);
    })
    .await;
    let mut s = seats(&app).await;
    let hour_req = |user: &str| pb::CheckoutRequest { ttl: duration(HOUR), ..checkout(&key, user, "ws") };
    // Leases kept alive by heartbeats, and who holds what when (the independent record).
    let mut alive: BTreeMap<String, String> = BTreeMap::new();
    let mut held: Vec<(&str, i64, i64)> = vec![];
    let mut at = day + 9 * HOUR;
    // Moves the clock to `to` in steps of 30 minutes, heartbeating the live leases.
    async fn advance(
        s: &mut SeatServiceClient<Channel>,
        clock: &ManualClock,
        license_id: &str,
        alive: &BTreeMap<String, String>,
        at: &mut i64,
        to: i64,
    ) {
        while *at < to {
            let step = (to - *at).min(30 * MINUTE);
            clock.advance(step);
            *at += step;
            for lease_id in alive.values() {
                s.heartbeat(pb::HeartbeatRequest {
                    license_id: license_id.into(),
                    lease_id: lease_id.clone(),
                    lease_token: String::new(),
                })
                .await
                .unwrap();
            }
        }
    }

    let ann = s.checkout(hour_req("ann")).await.unwrap().into_inner().grant.unwrap();
    alive.insert("ann".into(), ann.lease_id.clone());
    advance(&mut s, &clock, &license_id, &alive, &mut at, day + 9 * HOUR + 30 * MINUTE).await;
    let bob = s.checkout(hour_req("bob")).await.unwrap().into_inner().grant.unwrap();
    alive.insert("bob".into(), bob.lease_id.clone());
    advance(&mut s, &clock, &license_id, &alive, &mut at, day + 10 * HOUR).await;
    assert_eq!(s.checkout(hour_req("cy")).await.unwrap_err().code(), Code::ResourceExhausted);
    advance(&mut s, &clock, &license_id, &alive, &mut at, day + 11 * HOUR).await;
    assert!(checkin(&app, &license_id, &alive.remove("ann").unwrap()).await);
    held.push(("ann", day + 9 * HOUR, day + 11 * HOUR));
    let cy = s.checkout(hour_req("cy")).await.unwrap().into_inner().grant.unwrap();
    alive.insert("cy".into(), cy.lease_id.clone());
    advance(&mut s, &clock, &license_id, &alive, &mut at, day + 12 * HOUR + 30 * MINUTE).await;
    s.revoke_lease(admin_req(pb::RevokeLeaseRequest {
        license_id: license_id.clone(),
        lease_id: alive.remove("bob").unwrap(),
        reason: "left the company".into(),
    }))
    .await
    .unwrap();
    held.push(("bob", day + 9 * HOUR + 30 * MINUTE, day + 12 * HOUR + 30 * MINUTE));
    advance(&mut s, &clock, &license_id, &alive, &mut at, day + 13 * HOUR).await;
    // cy's process dies at 13:00: its last heartbeat was then, so the lease expires at 14:00.
    alive.remove("cy");
    held.push(("cy", day + 11 * HOUR, day + 14 * HOUR));
    advance(&mut s, &clock, &license_id, &alive, &mut at, day + 15 * HOUR).await;
    let dan = s.checkout(hour_req("dan")).await.unwrap().into_inner().grant.unwrap();
    alive.insert("dan".into(), dan.lease_id.clone());
    advance(&mut s, &clock, &license_id, &alive, &mut at, day + 16 * HOUR).await;
    assert!(checkin(&app, &license_id, &alive.remove("dan").unwrap()).await);
    held.push(("dan", day + 15 * HOUR, day + 16 * HOUR));
    // Let the sweep record cy's expiry.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The expected figures, from the script.
    let seat_hours: f64 = held.iter().map(|(_, from, to)| (to - from) as f64 / HOUR as f64).sum();
    let mut edges: Vec<(i64, i32)> = held.iter().flat_map(|(_, from, to)| [(*from, 1), (*to, -1)]).collect();
    edges.sort_by_key(|(t, delta)| (*t, *delta));
    let peak = edges.iter().scan(0, |level, (_, delta)| {
        *level += delta;
        Some(*level)
    });
    let peak = peak.max().unwrap();
    let mut by_user: Vec<(&str, f64)> =
        held.iter().map(|(user, from, to)| (*user, (to - from) as f64 / HOUR as f64)).collect();
    by_user.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));

    let r = report(&app, &license_id, day, day + 2 * DAY).await;
    assert_eq!(r.daily_peaks.len(), 2);
    assert_eq!((r.daily_peaks[0].peak_seats, r.daily_peaks[1].peak_seats), (peak, 0));
    assert!((r.total_seat_hours - seat_hours).abs() < 1e-6, "{} vs {seat_hours}", r.total_seat_hours);
    assert!((r.daily_peaks[0].seat_hours - seat_hours).abs() < 1e-6);
    assert_eq!(r.denials, vec![pb::DenialCount { reason: "NO_SEAT_AVAILABLE".into(), count: 1 }]);
    assert_eq!(r.checkouts, held.len() as i64);
    let top: Vec<(&str, f64)> = r.top_users.iter().map(|u| (u.user.as_str(), u.seat_hours)).collect();
    assert_eq!(top.len(), by_user.len());
    for ((user, hours), (expected_user, expected_hours)) in top.iter().zip(&by_user) {
        assert_eq!(user, expected_user);
        assert!((hours - expected_hours).abs() < 1e-6, "{user}: {hours} vs {expected_hours}");
    }
    let csv = r.csv.clone();
    let day_text = licensing_domain::usage::civil_date(day / DAY);
    assert!(csv.starts_with("metric,day,subject,value\n"), "{csv}");
    assert!(csv.contains(&format!("peak_seats,{day_text},,{peak}\n")), "{csv}");
    assert!(csv.contains(&format!("total_seat_hours,,,{seat_hours:.4}\n")), "{csv}");
    assert!(csv.contains("denials_by_reason,,NO_SEAT_AVAILABLE,1\n"), "{csv}");
    assert!(csv.contains("user_seat_hours,,bob,3.0000\n"), "{csv}");

    // The customer sees the same report and the policy in the portal.
    let session = login(&app, &f.customer_id, &f.customer_password).await.unwrap();
    let mine = portal(&app)
        .await
        .get_my_usage_report(with_token(
            &session,
            licensing_proto::account::v1::GetMyUsageReportRequest {
                license_id: license_id.clone(),
                from: r.from,
                to: r.to,
                as_csv: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // The portal's own message is the administrator's on the wire.
    let mine = <pb::GetUsageReportResponse as prost::Message>::decode(prost::Message::encode_to_vec(&mine).as_slice())
        .unwrap();
    assert_eq!(mine, r);
    let policy = portal(&app)
        .await
        .get_my_seat_policy(with_token(
            &session,
            licensing_proto::account::v1::GetMySeatPolicyRequest { license_id: license_id.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policy.policy.unwrap().overdraft_seats, 0);
    // Bad periods are refused with the field named.
    let status = seats(&app)
        .await
        .get_usage_report(admin_req(pb::GetUsageReportRequest {
            license_id: license_id.clone(),
            from: r.to,
            to: r.from,
            as_csv: false,
        }))
        .await
        .unwrap_err();
    assert_eq!((status.code(), status.message().starts_with("from")), (Code::InvalidArgument, true));
}

/// A seat reserved for a user goes to that user whatever the wait queue holds: the queue orders
/// only those who may take the seat they wait for.
#[tokio::test]
async fn a_reserved_seat_goes_to_its_owner_while_others_wait_in_line() {
    for backend in lease_backends().await {
        let app = spawn_seat_app(backend).await;
        let policy = pb::SeatPolicy {
            reservations: vec![pb::Reservation { principal: Some(user("vip")), seats: 1 }],
            ..Default::default()
        };
        let (license_id, key) = license_with_policy(&app, 2, policy).await;
        grant(&app, checkout(&key, "other", "desk")).await.expect("the one general seat");
        let mut waiter = seats(&app)
            .await
            .wait_for_seat(pb::WaitForSeatRequest {
                checkout: Some(checkout(&key, "waiter", "desk")),
                max_wait: duration(10_000),
            })
            .await
            .unwrap()
            .into_inner();
        let first = waiter.message().await.unwrap().unwrap().event.unwrap();
        assert_eq!(first, pb::wait_for_seat_response::Event::QueuePosition(1), "{backend:?}");
        let vip = grant(&app, checkout(&key, "vip", "laptop")).await;
        assert!(vip.is_ok(), "{backend:?}: the reserved seat is vip's: {:?}", vip.err());
        // A non-member who comes now waits behind the queue, and is told why.
        let late = grant(&app, checkout(&key, "late", "desk")).await.unwrap_err();
        assert_eq!((late.code(), reason(&late)), (Code::ResourceExhausted, "NO_SEAT_AVAILABLE".into()), "{backend:?}");
        assert_eq!(leases(&app, &license_id).await.len(), 2, "{backend:?}");
    }
}
