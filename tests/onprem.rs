//! The on-premises license server (issue 26), end to end: a vendor's server (SQLite and
//! PostgreSQL) and a customer's licensing-server in on-premises mode, as two servers (and, in
//! the last test, two processes of the real binary). Online, the on-premises server activates
//! itself, serves its grants to products with the same calls they make of the vendor (up to the
//! file's seats and no further), follows a seat change and a suspension at its next refresh,
//! reports its usage to the vendor, and its admin token can issue or enlarge nothing. Air-gapped, the whole cycle runs by files:
//! an older (replayed) or altered file is refused, a file bound to another server is refused,
//! a return stops serving at once and frees the vendor's activation, so a second server can be
//! activated (a re-host). An expired file stops new checkouts while leases run to their end,
//! and a clock set back is refused.

use crate::common::process::Process;
use crate::common::*;
// The server machines and grants of the vendor-side tests.
use crate::server_license::{grant, server};
use licensing_domain::clock::ManualClock;
use licensing_proto::account::v1 as admin_pb;
use licensing_proto::activation::v1 as act;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{LicenseKind, ServerGrant};
use licensing_proto::onpremises::v1 as pb;
use licensing_proto::onpremises::v1::on_premises_service_client::OnPremisesServiceClient;
use licensing_proto::seat::v1 as seat_pb;
use std::collections::HashMap;
use tonic::Code;

/// A server license for one server: 2 floating seats and 1 node-locked activation of the
/// fixture's product, 1 seat of its `render` feature.
async fn issue_server_license(vendor: &TestApp, f: &Fixture, expires_s: i64) -> (String, String) {
    let product = f.product.clone();
    let (license_id, key, _) = issue_license(vendor, f, LicenseKind::Server, 1, |r| {
        r.modules = vec![];
        r.expires_at = ts(expires_s);
        r.server_grants = vec![grant(&product, "", 2, 1), grant(&product, "render", 1, 0)];
    })
    .await;
    (license_id, key)
}

async fn vendor_public_key(vendor: &TestApp) -> String {
    let mut client = ActivationServiceClient::new(vendor.channel().await);
    client.get_verifying_key(act::GetVerifyingKeyRequest {}).await.unwrap().into_inner().public_key
}

/// An on-premises server on its own data directory and machine, online when `vendor_url` is set.
async fn spawn_onprem(
    key: &str,
    public_key: &str,
    vendor_url: Option<String>,
    machine: &str,
    clock: Option<ManualClock>,
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, dir.path()).await;
    env.insert("LICENSING_ON_PREMISES".into(), "true".into());
    env.insert("LICENSING_SERVER_LICENSE_KEY".into(), key.into());
    env.insert("LICENSING_VENDOR_PUBLIC_KEY".into(), public_key.into());
    // The tests refresh when they mean to; the first refresh runs at start.
    env.insert("LICENSING_REFRESH_INTERVAL_MS".into(), "3600000".into());
    if let Some(url) = vendor_url {
        env.insert("LICENSING_VENDOR_URL".into(), url);
    }
    let mut overrides = licensing::Overrides { machine: Some(server(machine)), ..test_overrides() };
    if let Some(clock) = clock {
        overrides.clock = std::sync::Arc::new(clock);
    }
    spawn_with(Backend::Sqlite, dir, env, overrides).await
}

async fn respawn_onprem(app: TestApp, machine: &str) -> TestApp {
    let (dir, env) = app.stop().await;
    let overrides = licensing::Overrides { machine: Some(server(machine)), ..test_overrides() };
    spawn_with(Backend::Sqlite, dir, env, overrides).await
}

async fn onprem_admin(app: &TestApp) -> OnPremisesServiceClient<tonic::transport::Channel> {
    OnPremisesServiceClient::new(app.channel().await)
}

async fn status(app: &TestApp) -> pb::GetServerStatusResponse {
    onprem_admin(app).await.get_server_status(admin_req(pb::GetServerStatusRequest {})).await.unwrap().into_inner()
}

/// The key of the served license of `product`/`feature` (`node_locked` for activations).
fn served_key(status: &pb::GetServerStatusResponse, feature: &str, kind: &str) -> String {
    let served = status.licenses.iter().find(|l| l.feature == feature && l.kind == kind);
    served
        .unwrap_or_else(|| panic!("no served {kind} license of {feature:?}: {:?}", status.licenses))
        .license_key
        .clone()
}

async fn checkout(app: &TestApp, key: &str, client: &str, feature: &str) -> Result<seat_pb::LeaseGrant, tonic::Status> {
    let request = seat_pb::CheckoutRequest { feature: feature.into(), ..checkout_by_key(key, client, 60) };
    seat_client(app).await.checkout(request).await.map(|r| r.into_inner().grant.unwrap())
}

async fn import(app: &TestApp, file: &str) -> Result<pb::GetServerStatusResponse, tonic::Status> {
    let request = pb::ImportServerLicenseRequest { server_license_file: file.into() };
    onprem_admin(app).await.import_server_license(admin_req(request)).await.map(|r| r.into_inner().status.unwrap())
}

async fn refresh(app: &TestApp) -> Result<pb::GetServerStatusResponse, tonic::Status> {
    let request = pb::RefreshServerLicenseRequest {};
    onprem_admin(app).await.refresh_server_license(admin_req(request)).await.map(|r| r.into_inner().status.unwrap())
}

async fn activation_request(app: &TestApp) -> String {
    let request = pb::WriteActivationRequestRequest {};
    onprem_admin(app).await.write_activation_request(admin_req(request)).await.unwrap().into_inner().request_file
}

async fn vendor_answer(vendor: &TestApp, file: &str) -> Result<admin_pb::ProcessServerRequestResponse, tonic::Status> {
    let request = admin_pb::ProcessServerRequestRequest { request_file: file.into() };
    vendor.admin().await.process_server_request(admin_req(request)).await.map(|r| r.into_inner())
}

async fn set_grants(vendor: &TestApp, license_id: &str, grants: Vec<ServerGrant>) {
    let request = admin_pb::SetServerGrantsRequest { license_id: license_id.into(), server_grants: grants };
    vendor.admin().await.set_server_grants(admin_req(request)).await.unwrap();
}

fn assert_refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, why: &str) {
    let status = result.expect_err(why);
    assert_eq!(status.code(), code, "{why}: {status:?}");
    assert!(!status.message().is_empty(), "{why}: a message a person can act on");
}

/// The server license file with one character of its signed body changed.
fn altered(file: &str) -> String {
    let mut lines: Vec<String> = file.lines().map(str::to_owned).collect();
    let line = &mut lines[2];
    let c = if line.starts_with('A') { "B" } else { "A" };
    line.replace_range(0..1, c);
    lines.join("\n")
}

#[tokio::test]
async fn an_online_on_premises_server_serves_its_grants_follows_the_vendor_and_can_enlarge_nothing() {
    for backend in backends().await {
        let vendor = spawn_app(backend).await;
        let f = fixture(&vendor).await;
        let (license_id, key) = issue_server_license(&vendor, &f, now_s() + 365 * 86_400).await;
        let public_key = vendor_public_key(&vendor).await;
        let onprem = spawn_onprem(&key, &public_key, Some(format!("http://{}", vendor.addr)), "lic01", None).await;

        // It activated itself online: the vendor shows the server's activation.
        let s = refresh(&onprem).await.unwrap();
        assert!(s.serving, "{s:?}");
        assert_eq!(s.license_id, license_id);
        assert!(s.serial >= 1);
        assert_eq!(get_license(&vendor, &license_id).await.activations_used, 1);
        assert_eq!(s.licenses.len(), 3, "product seats, node-locked activations, the feature's seats");

        // Products use it with the same calls, up to the file's seats and no further.
        let floating = served_key(&s, "", "concurrent");
        let lease = checkout(&onprem, &floating, "ws-1", "").await.unwrap();
        checkout(&onprem, &floating, "ws-2", "").await.unwrap();
        assert_refused(checkout(&onprem, &floating, "ws-3", "").await, Code::ResourceExhausted, "a third seat");
        let render = served_key(&s, "render", "concurrent");
        checkout(&onprem, &render, "ws-1", "render").await.unwrap();
        assert_refused(checkout(&onprem, &render, "ws-2", "render").await, Code::ResourceExhausted, "feature seats");
        let node_locked = served_key(&s, "", "node_locked");
        let mut activation = ActivationServiceClient::new(onprem.channel().await);
        activation.activate(activate_by_key(&node_locked, "pc-1")).await.unwrap();
        assert_refused(
            activation.activate(activate_by_key(&node_locked, "pc-2")).await,
            Code::ResourceExhausted,
            "activations",
        );
        assert!(vendor_checkout_refused(&vendor, &floating).await, "a served key means nothing at the vendor");

        // Its usage reaches the vendor: per grant, the peak in use and the checkouts.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await; // the usage log's write
        let sent = onprem_admin(&onprem).await.upload_usage(admin_req(pb::UploadUsageRequest {})).await.unwrap();
        let sent = sent.into_inner();
        let list = admin_pb::ListServerUsageReportsRequest { license_id: license_id.clone(), page: None };
        let reports = vendor.admin().await.list_server_usage_reports(admin_req(list)).await.unwrap().into_inner();
        let report = reports.reports.iter().find(|r| r.report_id == sent.report_id).expect("the report at the vendor");
        let used: Vec<_> =
            report.grants.iter().map(|g| (g.feature.as_str(), g.kind.as_str(), g.granted, g.peak_in_use)).collect();
        assert!(used.contains(&("", "floating", 2, 2)), "{used:?}");
        assert!(used.contains(&("render", "floating", 1, 1)), "{used:?}");
        assert!(used.contains(&("", "node_locked", 1, 1)), "{used:?}");
        let floating_use = report.grants.iter().find(|g| g.feature.is_empty() && g.kind == "floating").unwrap();
        assert_eq!((floating_use.checkouts, floating_use.denials), (2, 1), "two seats granted, one refused");

        // A seat change at the vendor reaches it at the next refresh.
        set_grants(&vendor, &license_id, vec![grant(&f.product, "", 3, 1), grant(&f.product, "render", 1, 0)]).await;
        let s2 = refresh(&onprem).await.unwrap();
        assert!(s2.serial > s.serial);
        assert_eq!(served_key(&s2, "", "concurrent"), floating, "the same key across files");
        checkout(&onprem, &floating, "ws-3", "").await.unwrap();
        assert_refused(checkout(&onprem, &floating, "ws-4", "").await, Code::ResourceExhausted, "a fourth seat");

        // The local admin token lists and revokes leases, reads usage; it issues or enlarges nothing.
        let floating_id = &s.licenses.iter().find(|l| l.license_key == floating).unwrap().license_id;
        assert_eq!(live_leases(&onprem, floating_id).await.len(), 3);
        let revoke = seat_pb::RevokeLeaseRequest {
            license_id: floating_id.clone(),
            lease_id: lease.lease_id.clone(),
            reason: "test".into(),
        };
        seat_client(&onprem).await.revoke_lease(admin_req(revoke)).await.unwrap();
        let report = seat_pb::GetUsageReportRequest { license_id: floating_id.clone(), ..Default::default() };
        seat_client(&onprem).await.get_usage_report(admin_req(report)).await.unwrap();
        let mut admin = onprem.admin().await;
        let issue = admin_pb::IssueLicenseRequest { product_code: f.product.clone(), seats: 100, ..Default::default() };
        assert_refused(admin.issue_license(admin_req(issue)).await, Code::Unimplemented, "IssueLicense");
        let seats = admin_pb::SetLicenseSeatsRequest { license_id: floating_id.clone(), seats: 100 };
        assert_refused(admin.set_license_seats(admin_req(seats)).await, Code::Unimplemented, "SetLicenseSeats");
        let renew = admin_pb::RenewLicenseRequest { license_id: floating_id.clone(), ..Default::default() };
        assert_refused(admin.renew_license(admin_req(renew)).await, Code::Unimplemented, "RenewLicense");
        let overdraft = seat_pb::UpdateSeatPolicyRequest {
            license_id: floating_id.clone(),
            policy: Some(seat_pb::SeatPolicy { overdraft_seats: 5, ..Default::default() }),
        };
        assert_refused(
            seat_client(&onprem).await.update_seat_policy(admin_req(overdraft)).await,
            Code::PermissionDenied,
            "overdraft",
        );
        let trial =
            act::ActivateTrialRequest { product_code: f.product.clone(), machine: activate_by_key("", "pc-9").machine };
        assert_refused(activation.activate_trial(trial).await, Code::Unimplemented, "ActivateTrial");
        let server = act::ActivateServerRequest { credentials: activate_by_key(&key, "x").credentials, machine: None };
        assert_refused(activation.activate_server(server).await, Code::Unimplemented, "ActivateServer");
        assert_eq!(live_leases(&onprem, floating_id).await.len(), 2, "nothing above changed a seat");

        // A suspension at the vendor stops new seats at the next refresh; leases held go on.
        let suspend = admin_pb::SuspendLicenseRequest { license_id: license_id.clone(), reason: "unpaid".into() };
        vendor.admin().await.suspend_license(admin_req(suspend)).await.unwrap();
        assert_refused(refresh(&onprem).await, Code::FailedPrecondition, "a suspended license gets no file");
        let refused = checkout(&onprem, &floating, "ws-5", "").await.unwrap_err();
        assert_eq!((refused.code(), reason(&refused).as_str()), (Code::FailedPrecondition, "REFUSED_BY_VENDOR"));
        let held = live_leases(&onprem, floating_id).await[0].lease_id.clone();
        let beat = seat_pb::HeartbeatRequest { lease_id: held, license_id: floating_id.clone(), ..Default::default() };
        seat_client(&onprem).await.heartbeat(beat).await.expect("a lease held keeps its seat");
        let s3 = status(&onprem).await;
        assert_eq!(s3.not_serving_reason, "REFUSED_BY_VENDOR", "{s3:?}");
        // Reinstated at the vendor, the next refresh serves again.
        let reinstate = admin_pb::ReinstateLicenseRequest { license_id: license_id.clone() };
        vendor.admin().await.reinstate_license(admin_req(reinstate)).await.unwrap();
        assert!(refresh(&onprem).await.unwrap().serving);
        checkout(&onprem, &floating, "ws-5", "").await.unwrap();
    }
}

async fn vendor_checkout_refused(vendor: &TestApp, key: &str) -> bool {
    seat_client(vendor).await.checkout(checkout_by_key(key, "ws-x", 60)).await.is_err()
}

#[tokio::test]
async fn an_air_gapped_server_runs_the_whole_cycle_by_files_and_is_rehosted_after_its_return() {
    for backend in backends().await {
        let vendor = spawn_app(backend).await;
        let f = fixture(&vendor).await;
        let (license_id, key) = issue_server_license(&vendor, &f, now_s() + 365 * 86_400).await;
        let public_key = vendor_public_key(&vendor).await;
        let onprem = spawn_onprem(&key, &public_key, None, "lic01", None).await;

        // Without a file nothing is served, and the status says what to do.
        let s = status(&onprem).await;
        assert_eq!((s.serving, s.not_serving_reason.as_str()), (false, "NO_SERVER_LICENSE"));
        assert_refused(refresh(&onprem).await, Code::FailedPrecondition, "air-gapped: no online refresh");

        // Activation by files.
        let answer = vendor_answer(&vendor, &activation_request(&onprem).await).await.unwrap();
        let file1 = answer.server_license_file;
        assert_refused(import(&onprem, &altered(&file1)).await, Code::InvalidArgument, "an altered file");
        assert!(!status(&onprem).await.serving, "the altered file changed nothing");
        let s1 = import(&onprem, &file1).await.unwrap();
        assert!(s1.serving, "{s1:?}");
        let floating = served_key(&s1, "", "concurrent");
        checkout(&onprem, &floating, "ws-1", "").await.unwrap();
        checkout(&onprem, &floating, "ws-2", "").await.unwrap();
        assert_refused(checkout(&onprem, &floating, "ws-3", "").await, Code::ResourceExhausted, "2 seats");

        // A seat change, carried by files; the older file is never taken again.
        set_grants(&vendor, &license_id, vec![grant(&f.product, "", 3, 1)]).await;
        let file2 = vendor_answer(&vendor, &activation_request(&onprem).await).await.unwrap().server_license_file;
        let s2 = import(&onprem, &file2).await.unwrap();
        assert!(s2.serial > s1.serial);
        assert_eq!(s2.licenses.len(), 2, "the render grant is gone");
        checkout(&onprem, &floating, "ws-3", "").await.unwrap();
        let replay = import(&onprem, &file1).await.unwrap_err();
        assert_eq!((replay.code(), reason(&replay).as_str()), (Code::FailedPrecondition, "SUPERSEDED_SERVER_LICENSE"));
        assert_refused(import(&onprem, &file2).await, Code::FailedPrecondition, "the same file twice");
        assert_eq!(status(&onprem).await.serial, s2.serial, "refused files changed nothing");

        // A second server cannot be activated while the first holds the license.
        let second = spawn_onprem(&key, &public_key, None, "lic02", None).await;
        let request2 = activation_request(&second).await;
        let refused = vendor_answer(&vendor, &request2).await.unwrap_err();
        assert_ne!(refused.code(), Code::Internal, "{refused:?}");
        // Nor can the first server's file be moved to it.
        let moved = import(&second, &file2).await.unwrap_err();
        assert_eq!((moved.code(), reason(&moved).as_str()), (Code::FailedPrecondition, "FINGERPRINT_MISMATCH"));

        // The return: the first server stops at once, for good (a restart does not bring it back).
        let no = pb::ReturnServerLicenseRequest { confirm: false };
        assert_refused(
            onprem_admin(&onprem).await.return_server_license(admin_req(no)).await,
            Code::InvalidArgument,
            "confirm",
        );
        let yes = pb::ReturnServerLicenseRequest { confirm: true };
        let returned = onprem_admin(&onprem).await.return_server_license(admin_req(yes)).await.unwrap().into_inner();
        assert_eq!(returned.serial, s2.serial);
        assert!(!returned.returned_online, "air-gapped: the file is carried");
        let stopped = checkout(&onprem, &floating, "ws-9", "").await.unwrap_err();
        assert_eq!((stopped.code(), reason(&stopped).as_str()), (Code::FailedPrecondition, "SERVER_LICENSE_RETURNED"));
        let onprem = respawn_onprem(onprem, "lic01").await;
        assert_eq!(status(&onprem).await.not_serving_reason, "SERVER_LICENSE_RETURNED");
        assert_refused(import(&onprem, &file2).await, Code::FailedPrecondition, "the returned file");

        // The vendor takes the return file: the activation is freed, and the re-host works.
        let taken = vendor_answer(&vendor, &returned.return_file).await.unwrap();
        assert!(taken.returned);
        assert_eq!(get_license(&vendor, &license_id).await.activations_used, 0);
        let file3 = vendor_answer(&vendor, &request2).await.unwrap().server_license_file;
        let s3 = import(&second, &file3).await.unwrap();
        assert!(s3.serving, "{s3:?}");
        checkout(&second, &served_key(&s3, "", "concurrent"), "ws-1", "").await.unwrap();
    }
}

#[tokio::test]
async fn an_expired_file_stops_new_checkouts_while_leases_run_on_and_a_clock_set_back_is_refused() {
    let vendor = spawn_app(Backend::Sqlite).await;
    let f = fixture(&vendor).await;
    let expires = now_s() + 2 * 3600;
    let (_, key) = issue_server_license(&vendor, &f, expires).await;
    let public_key = vendor_public_key(&vendor).await;
    let clock = ManualClock::new(now_ms());
    let onprem = spawn_onprem(&key, &public_key, None, "lic01", Some(clock.clone())).await;
    let file = vendor_answer(&vendor, &activation_request(&onprem).await).await.unwrap().server_license_file;
    let s = import(&onprem, &file).await.unwrap();
    let floating = served_key(&s, "", "concurrent");
    checkout(&onprem, &floating, "ws-1", "").await.unwrap();

    // A clock set back behind what the server has seen: no new seat.
    clock.advance(-86_400_000);
    let back = checkout(&onprem, &floating, "ws-2", "").await.unwrap_err();
    assert_eq!((back.code(), reason(&back).as_str()), (Code::FailedPrecondition, "CLOCK_SET_BACK"));
    assert_eq!(status(&onprem).await.not_serving_reason, "CLOCK_SET_BACK");
    clock.advance(86_400_000);
    checkout(&onprem, &floating, "ws-2", "").await.unwrap();

    // Near the file's end a lease is granted up to the end, and kept alive by heartbeat until
    // then; past it, new checkouts stop.
    clock.set(expires * 1000 - 30_000);
    let late = checkout(&onprem, &floating, "ws-late", "").await.unwrap();
    assert!(late.expires_at.unwrap().seconds <= expires, "no lease outlives the file");
    clock.set(expires * 1000 - 10_000);
    let beat = seat_pb::HeartbeatRequest {
        lease_id: late.lease_id.clone(),
        license_id: late.license_id.clone(),
        ..Default::default()
    };
    let beat = seat_client(&onprem).await.heartbeat(beat).await.unwrap().into_inner();
    assert!(beat.expires_at.unwrap().seconds <= expires, "no heartbeat moves it past the file's end");
    clock.set(expires * 1000 + 1_000);
    let ended = checkout(&onprem, &floating, "ws-3", "").await.unwrap_err();
    assert_eq!((ended.code(), reason(&ended).as_str()), (Code::FailedPrecondition, "EXPIRED"));
}

#[tokio::test]
async fn bad_configuration_of_on_premises_mode_names_the_variable() {
    let key = licensing_domain::license_key::LicenseKey::generate();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("LICENSING_ON_PREMISES", "true")], "LICENSING_SERVER_LICENSE_KEY"),
        (
            &[("LICENSING_ON_PREMISES", "true"), ("LICENSING_SERVER_LICENSE_KEY", "not-a-key")],
            "LICENSING_SERVER_LICENSE_KEY",
        ),
        (
            &[
                ("LICENSING_ON_PREMISES", "true"),
                ("LICENSING_SERVER_LICENSE_KEY", key.as_str()),
                ("LICENSING_VENDOR_PUBLIC_KEY", "bm90IGEga2V5"),
            ],
            "LICENSING_VENDOR_PUBLIC_KEY",
        ),
        (&[("LICENSING_VENDOR_URL", "http://vendor.example")], "LICENSING_VENDOR_URL"),
    ];
    for (vars, var) in cases {
        let env: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let err = licensing_runtime::config::Config::from_lookup(&env, "127.0.0.1:0", "t").unwrap_err();
        assert_eq!(err.var, var, "{err}");
    }
}

/// Two processes of the real binary: the vendor's server and the customer's on-premises
/// server, configured only by environment variables as the README shows.
#[tokio::test]
async fn the_on_premises_binary_activates_online_against_the_vendor_binary_and_serves_products() {
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_licensing-server");
    let vendor_env = vec![
        ("LICENSING_DATA_DIR".to_owned(), dir.path().join("vendor").display().to_string()),
        ("LICENSING_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
    ];
    let mut vendor = Process::new(binary, &vendor_env);
    vendor.start().await;
    let vendor_app = ProcessApp(vendor.channel().await);
    let f = fixture_on(&vendor_app).await;
    let product = f.product.clone();
    let mut admin = admin_pb::admin_service_client::AdminServiceClient::new(vendor_app.0.clone());
    let issued = admin
        .issue_license(admin_req(admin_pb::IssueLicenseRequest {
            product_code: product.clone(),
            customer_id: f.customer_id.clone(),
            kind: LicenseKind::Server as i32,
            seats: 1,
            expires_at: ts(now_s() + 86_400),
            server_grants: vec![grant(&product, "", 1, 0)],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut activation = ActivationServiceClient::new(vendor_app.0.clone());
    let public_key =
        activation.get_verifying_key(act::GetVerifyingKeyRequest {}).await.unwrap().into_inner().public_key;
    let onprem_env = vec![
        ("LICENSING_DATA_DIR".to_owned(), dir.path().join("onprem").display().to_string()),
        ("LICENSING_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
        ("LICENSING_ON_PREMISES".to_owned(), "true".to_owned()),
        ("LICENSING_SERVER_LICENSE_KEY".to_owned(), issued.license_key.clone()),
        ("LICENSING_VENDOR_PUBLIC_KEY".to_owned(), public_key),
        ("LICENSING_VENDOR_URL".to_owned(), vendor.url()),
    ];
    let mut onprem = Process::new(binary, &onprem_env);
    onprem.start().await;
    let channel = onprem.channel().await;
    let mut admin_onprem = OnPremisesServiceClient::new(channel.clone());
    // The first refresh runs at start; wait for it.
    let mut s = pb::GetServerStatusResponse::default();
    for _ in 0..100 {
        s = admin_onprem.get_server_status(admin_req(pb::GetServerStatusRequest {})).await.unwrap().into_inner();
        if s.serving {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(s.serving, "{s:?}");
    let key = served_key(&s, "", "concurrent");
    let mut seats = licensing_proto::seat::v1::seat_service_client::SeatServiceClient::new(channel);
    seats.checkout(checkout_by_key(&key, "ws-1", 60)).await.unwrap();
    let second = seats.checkout(checkout_by_key(&key, "ws-2", 60)).await.unwrap_err();
    assert_eq!(second.code(), Code::ResourceExhausted);
    onprem.stop().await;
    vendor.stop().await;
}

/// A vendor reached through a channel only (a process).
struct ProcessApp(tonic::transport::Channel);

async fn fixture_on(app: &ProcessApp) -> Fixture {
    let mut admin = admin_pb::admin_service_client::AdminServiceClient::new(app.0.clone());
    let product = format!("prod-{}", licensing_domain::ids::new_id("p")[2..10].to_lowercase());
    let request = admin_pb::CreateProductRequest { code: product.clone(), name: "CAD".into(), modules: vec![] };
    admin.create_product(admin_req(request)).await.unwrap();
    let request = admin_pb::CreateCustomerRequest {
        company_name: "Acme".into(),
        contact_email: format!("{product}@example.com"),
        ..Default::default()
    };
    let customer = admin.create_customer(admin_req(request)).await.unwrap().into_inner().customer.unwrap();
    Fixture { product, customer_id: customer.customer_id, customer_password: String::new() }
}
