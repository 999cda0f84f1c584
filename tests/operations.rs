//! What operators see: the Prometheus scrape endpoint after a scripted scenario, request IDs in
//! responses, trace context joining a caller's trace, and what SIGTERM does to callers.

use crate::common::*;
use licensing_proto::common::v1::LicenseKind;
use licensing_proto::seat::v1 as pb;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn metrics_show_seats_held_as_the_leases_held_and_count_denials_waiters_activations_and_rpcs() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let metrics = app.metrics_addr.expect("the metrics endpoint is on in tests");
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 3, |_| {}).await;
        let mut seats = seat_client(&app).await;
        let mut held = vec![];
        for client in ["a", "b", "c"] {
            held.push(seats.checkout(checkout_by_key(&key, client, 60)).await.unwrap().into_inner().grant.unwrap());
        }
        let refused = seats.checkout(checkout_by_key(&key, "d", 60)).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{leases:?}");
        let mut waiter = seats
            .wait_for_seat(pb::WaitForSeatRequest {
                checkout: Some(checkout_by_key(&key, "waiter", 60)),
                max_wait: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
            })
            .await
            .unwrap()
            .into_inner();
        waiter.message().await.unwrap().expect("a queue position");

        let (_, node_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;
        let mut activation = licensing_proto::activation::v1::activation_service_client::ActivationServiceClient::new(
            app.channel().await,
        );
        activation.activate(activate_by_key(&node_key, "m1")).await.unwrap();
        // A retried activation of the same machine is not a new one.
        activation.activate(activate_by_key(&node_key, "m1")).await.unwrap();

        let text = scrape(metrics).await;
        let license = [("license_id", license_id.as_str())];
        let live = live_leases(&app, &license_id).await.len() as f64;
        assert_eq!(live, 3.0);
        assert_eq!(series(&text, "licensing_seats_in_use", &license), Some(live), "{leases:?}\n{text}");
        assert_eq!(series(&text, "licensing_leases_live", &license), Some(live), "{leases:?}");
        assert_eq!(series(&text, "licensing_seats_allowed", &license), Some(3.0), "{leases:?}");
        assert_eq!(series(&text, "licensing_seat_waiters", &license), Some(1.0), "{leases:?}");
        assert_eq!(
            series(
                &text,
                "licensing_seat_denials_total",
                &[("license_id", &license_id), ("reason", "NO_SEAT_AVAILABLE")]
            ),
            Some(1.0),
            "{leases:?}\n{text}"
        );
        assert_eq!(series(&text, "licensing_activations_total", &[("product", &f.product)]), Some(1.0));
        let checkouts = |code| {
            series(&text, "licensing_rpc_duration_seconds_count", &[("rpc_method", "Checkout"), ("grpc_code", code)])
        };
        assert_eq!(checkouts("OK"), Some(3.0), "{leases:?}");
        assert_eq!(checkouts("RESOURCE_EXHAUSTED"), Some(1.0), "{leases:?}");
        assert_eq!(series(&text, "licensing_store_up", &[("store", "sqlite")]), Some(1.0));
        assert_eq!(series(&text, "licensing_usage_log_dropped_total", &[]), Some(0.0));
        if leases == Leases::Redis {
            assert_eq!(series(&text, "licensing_store_up", &[("store", "redis")]), Some(1.0));
        }

        // Every series the Grafana dashboard and the alert rules query is here.
        for name in dashboard_series().into_iter().chain(crate::monitoring::alert_series()) {
            let exported = |l: &str| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "));
            assert!(text.lines().any(exported), "the dashboard or an alert queries {name}, which is not exported");
        }

        // The waiter leaves; a seat is given back: the next scrape follows the store.
        drop(waiter);
        let first = held.remove(0);
        seats.checkin(pb::CheckinRequest { license_id: license_id.clone(), lease_id: first.lease_id }).await.unwrap();
        let mut text = scrape(metrics).await;
        // The queue notices a gone waiter when its stream is dropped server-side: give it a moment.
        for _ in 0..50 {
            if series(&text, "licensing_seat_waiters", &license).is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            text = scrape(metrics).await;
        }
        let live = live_leases(&app, &license_id).await.len() as f64;
        assert_eq!(live, 2.0);
        assert_eq!(series(&text, "licensing_seats_in_use", &license), Some(live), "{leases:?}");
        assert_eq!(series(&text, "licensing_seat_waiters", &license), None, "{leases:?}: the waiter left");
        app.stop().await;
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_the_callers_own_when_it_sent_a_sane_one() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut seats = seat_client(&app).await;
    let ask = |id: Option<&str>| {
        let mut request = tonic::Request::new(pb::HeartbeatRequest {
            license_id: "lic_x".into(),
            lease_id: "l".into(),
            ..Default::default()
        });
        if let Some(id) = id {
            request.metadata_mut().insert("x-request-id", id.parse().unwrap());
        }
        request
    };
    let request_id = |status: &tonic::Status| {
        status.metadata().get("x-request-id").map(|v| v.to_str().unwrap().to_owned()).expect("x-request-id")
    };
    let mine = seats.heartbeat(ask(Some("checkout-42.a"))).await.unwrap_err();
    assert_eq!(request_id(&mine), "checkout-42.a");
    let made_up = request_id(&seats.heartbeat(ask(None)).await.unwrap_err());
    assert_eq!(made_up.len(), 24, "{made_up}");
    let other = request_id(&seats.heartbeat(ask(None)).await.unwrap_err());
    assert_ne!(made_up, other, "each request gets its own ID");
    // One that could forge log lines is replaced.
    let forged = request_id(&seats.heartbeat(ask(Some("x\"y"))).await.unwrap_err());
    assert_ne!(forged, "x\"y");
    assert_eq!(forged.len(), 24);
    app.stop().await;
}

#[tokio::test]
async fn the_metrics_endpoint_answers_only_get_metrics_and_can_be_turned_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app(Backend::Sqlite).await;
    let mut stream = tokio::net::TcpStream::connect(app.metrics_addr.unwrap()).await.unwrap();
    stream.write_all(b"GET /other HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(response.contains("GET /metrics"), "the answer says where to look: {response}");
    app.stop().await;

    let data_dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, data_dir.path()).await;
    env.insert("LICENSING_METRICS_ADDR".into(), "off".into());
    let app = spawn_with_env(Backend::Sqlite, data_dir, env).await;
    assert_eq!(app.metrics_addr, None);
    app.stop().await;
}

#[tokio::test]
async fn sigterm_turns_health_not_serving_first_serves_through_the_delay_then_ends_every_stream() {
    use licensing_proto::activation::v1 as act;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    for (backend, leases) in store_backends().await {
        let what = format!("{backend:?} with {leases:?} leases");
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![
            ("LICENSING_DATA_DIR".to_owned(), dir.path().display().to_string()),
            ("LICENSING_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
            ("LICENSING_SHUTDOWN_READINESS_DELAY_MS".to_owned(), "5000".to_owned()),
            // A stream held open through this grace would fail the guards below.
            ("LICENSING_SHUTDOWN_GRACE_MS".to_owned(), "60000".to_owned()),
        ];
        if backend == Backend::Postgres {
            env.push(("LICENSING_DATABASE_URL".to_owned(), fresh_postgres_database().await));
        }
        if leases == Leases::Redis {
            env.push(("LICENSING_REDIS_URL".to_owned(), redis_url()));
        }
        let mut server = process::Process::new(env!("CARGO_BIN_EXE_licensing-server"), &env);
        server.start().await;
        let channel = server.channel().await;
        let (node_locked, floating) = process::AdminOn(channel.clone()).licenses().await;
        let mut streams = OpenStreams::open(channel, &node_locked, &floating).await;

        server.sigterm().await;
        let update = tokio::time::timeout(DOES_NOT_HANG, streams.health.message()).await.expect("a health update");
        let update = update.unwrap().expect("NOT_SERVING, not the end");
        assert_eq!(update.status, ServingStatus::NotServing as i32, "{what}");
        // Still accepting and serving new calls while the readiness delay runs.
        let fresh = tonic::transport::Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{what}: no longer accepting right after NOT_SERVING: {e}"));
        let whole = HealthClient::new(fresh.clone()).check(HealthCheckRequest { service: String::new() }).await;
        assert_eq!(whole.unwrap().into_inner().status, ServingStatus::NotServing as i32, "{what}");
        act::activation_service_client::ActivationServiceClient::new(fresh)
            .get_verifying_key(act::GetVerifyingKeyRequest {})
            .await
            .unwrap_or_else(|status| panic!("{what}: not served during the readiness delay: {status:?}"));

        streams.assert_ended_by_the_drain(true, &what).await;
        server.exits_cleanly_within(DOES_NOT_HANG).await;
    }
}
