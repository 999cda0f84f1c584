//! Offline deactivation of node-locked products (the proof of removal): an air-gapped product
//! deletes its certificate, then writes a request its operator submits with
//! `ActivationService/DeactivateOffline` (or `licensectl activations deactivate-offline`), which
//! frees the activation; replays, stale requests, other licenses' keys and bad files change
//! nothing. On SQLite and PostgreSQL.

use crate::common::*;
use licensing_client::node_locked::{NodeLocked, Validity};
use licensing_client::storage::TrustedStorage;
use licensing_client::{Client, ClientError, Credentials};
use licensing_domain::fingerprint::Component;
use licensing_domain::offline_deactivation::{decode_deactivation_request, encode_deactivation_request};
use licensing_proto::account::v1 as admin_pb;
use licensing_proto::activation::v1 as pb;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::LicenseKind;
use tonic::transport::Channel;
use tonic::Code;

fn machine(name: &str) -> Vec<Component> {
    ["machine-id", "disk-serial", "mac", "hostname"]
        .iter()
        .map(|n| Component { name: n.to_string(), value: format!("{name}-{n}") })
        .collect()
}

async fn product(app: &TestApp, dir: &tempfile::TempDir, key: &str, name: &str) -> NodeLocked {
    let client = Client::new(&format!("http://{}", app.addr), &app.public_key().await).unwrap();
    NodeLocked::new(
        client,
        TrustedStorage::new(dir.path().join(format!("{name}.json"))),
        Credentials::LicenseKey(key.into()),
        machine(name),
    )
}

async fn submit(
    c: &mut ActivationServiceClient<Channel>,
    file: &str,
) -> Result<pb::DeactivateOfflineResponse, tonic::Status> {
    c.deactivate_offline(pb::DeactivateOfflineRequest { request_file: file.into() }).await.map(|r| r.into_inner())
}

/// (activations used, deactivations used) of a license.
async fn counts(app: &TestApp, license_id: &str) -> (i32, i32) {
    let l = get_license(app, license_id).await;
    (l.activations_used, l.deactivations_used)
}

async fn history(app: &TestApp, license_id: &str) -> Vec<(String, String)> {
    let request = admin_pb::GetActivationHistoryRequest { license_id: license_id.into() };
    let h = app.admin().await.get_activation_history(admin_req(request)).await.unwrap().into_inner();
    h.history.into_iter().map(|e| (e.action, e.outcome)).collect()
}

async fn audit_actions(app: &TestApp, subject: &str) -> Vec<String> {
    let request = admin_pb::ListAuditEventsRequest { subject: subject.into(), page: None };
    let events = app.admin().await.list_audit_events(admin_req(request)).await.unwrap().into_inner().events;
    events.into_iter().map(|e| e.action).collect()
}

#[tokio::test]
async fn an_air_gapped_machine_gives_its_activation_back_with_a_file_and_another_machine_takes_the_seat() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        let mut c = ActivationServiceClient::new(app.channel().await);

        // Machine A is air-gapped: activated through a request file and a certificate carried back.
        let a = product(&app, &dir, &key, "a").await;
        let asked = a.offline_activation_request("A", "linux-x86_64", "2.0").unwrap();
        let answer =
            c.activate_offline(pb::ActivateOfflineRequest { activation_request: asked }).await.unwrap().into_inner();
        let installation = answer.activation.unwrap().installation_id;
        let certificate = a.install_certificate(&answer.certificate.unwrap().certificate_file).unwrap();
        assert_eq!(certificate.installation_id, installation);
        a.validate_offline(&["render"]).expect("A works offline from its certificate");
        let b = product(&app, &dir, &key, "b").await;
        let full = b.activate("B", "linux-x86_64", "2.0").await.unwrap_err();
        assert_eq!(full.reason(), Some("ACTIVATION_LIMIT_REACHED"), "{backend:?}: one seat, held by A");

        // A gives its activation back: the certificate is gone before the request exists.
        let file = a.deactivate_offline().unwrap();
        assert!(file.starts_with("-----BEGIN LICENSING DEACTIVATION REQUEST-----"), "{file}");
        let request = decode_deactivation_request(&file).unwrap();
        assert_eq!(
            (request.installation_id.as_str(), request.license_id.as_str()),
            (installation.as_str(), license_id.as_str())
        );
        assert_eq!(request.certificate_issued_at_ms, certificate.issued_at_ms);
        assert!(matches!(a.validate_offline(&["render"]), Err(ClientError::DeactivatedOffline)));
        assert!(matches!(a.validate(&["render"], "2.0").await, Err(ClientError::DeactivatedOffline)));
        assert!(matches!(a.refresh().await, Err(ClientError::DeactivatedOffline)));
        let stored = std::fs::read_to_string(dir.path().join("a.json")).unwrap();
        assert!(!stored.contains("BEGIN LICENSING CERTIFICATE"), "{backend:?}: the certificate is deleted: {stored}");
        assert_eq!(a.deactivate_offline().unwrap(), file, "the same request again, nothing new");
        assert_eq!(a.pending_offline_deactivation().unwrap().as_deref(), Some(file.as_str()));
        assert_eq!(counts(&app, &license_id).await, (1, 0), "{backend:?}: nothing is freed until submitted");

        // The operator submits it from a connected machine: the activation is freed, and counts.
        let freed = submit(&mut c, &file).await.unwrap();
        let activation = freed.activation.unwrap();
        assert_eq!(activation.installation_id, installation);
        assert!(activation.deactivated_at.is_some());
        assert_eq!(freed.deactivations_left, 2, "{backend:?}: it spends a deactivation, like Deactivate");
        assert_eq!(freed.license.unwrap().activations_used, 0);
        assert_eq!(counts(&app, &license_id).await, (0, 1));
        b.activate("B", "linux-x86_64", "2.0").await.expect("B takes the seat A gave back");
        assert!(matches!(b.validate(&["render"], "2.0").await.unwrap(), Validity::Online(_)));

        // The same file again finds nothing live, and changes nothing.
        let replay = submit(&mut c, &file).await.unwrap_err();
        assert_eq!((replay.code(), reason(&replay)), (Code::NotFound, "INSTALLATION_NOT_FOUND".into()), "{backend:?}");
        assert_eq!(counts(&app, &license_id).await, (1, 1), "{backend:?}");
        assert!(matches!(a.validate_offline(&[]), Err(ClientError::DeactivatedOffline)));

        let lines = history(&app, &license_id).await;
        assert!(lines.contains(&("offline_activate".into(), "ok".into())), "{lines:?}");
        assert_eq!(
            lines.iter().filter(|(action, _)| action == "offline_deactivate").collect::<Vec<_>>(),
            vec![&("offline_deactivate".to_owned(), "ok".to_owned())],
            "{backend:?}: one line for the return; the replay freed nothing and recorded nothing"
        );
        let audit = audit_actions(&app, &license_id).await;
        assert_eq!(audit.iter().filter(|a| *a == "activation.offline_deactivated").count(), 1, "{audit:?}");

        // A product with no certificate cannot write one; a certificate of another machine neither.
        let empty = product(&app, &dir, &key, "never-activated").await;
        assert!(matches!(empty.deactivate_offline(), Err(ClientError::NoCertificate)));
        std::fs::copy(dir.path().join("b.json"), dir.path().join("c.json")).unwrap();
        let copied = product(&app, &dir, &key, "c").await;
        assert!(matches!(copied.deactivate_offline(), Err(ClientError::FingerprintMismatch)));
        copied.validate_offline(&[]).expect_err("B's certificate is not C's");
        assert!(std::fs::read_to_string(dir.path().join("c.json")).unwrap().contains("BEGIN LICENSING CERTIFICATE"));
        assert_eq!(copied.pending_offline_deactivation().unwrap(), None, "a refusal changes nothing");
    }
}

#[tokio::test]
async fn a_request_from_before_a_re_activation_or_with_another_key_is_refused_and_changes_nothing() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
        let (_, other_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        let mut c = ActivationServiceClient::new(app.channel().await);
        let a = product(&app, &dir, &key, "a").await;
        a.activate("A", "linux-x86_64", "2.0").await.unwrap();

        // A writes a request, then is activated again before it is submitted: the old request
        // would free a machine that holds a newer certificate.
        let stale = a.deactivate_offline().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let again = a.activate("A", "linux-x86_64", "2.0").await.unwrap();
        assert_eq!(a.pending_offline_deactivation().unwrap(), None, "activating again ends the offline return");
        a.validate_offline(&[]).expect("A works again");
        let refused = submit(&mut c, &stale).await.unwrap_err();
        assert_eq!(
            (refused.code(), reason(&refused)),
            (Code::FailedPrecondition, "SUPERSEDED_CERTIFICATE".into()),
            "{backend:?}: {}",
            refused.message()
        );
        assert_eq!(counts(&app, &license_id).await, (1, 0), "{backend:?}: nothing freed, nothing spent");
        assert!(matches!(a.validate(&[], "2.0").await.unwrap(), Validity::Online(_)), "{backend:?}");

        // The latest certificate's request, with another license's key: refused.
        let latest = a.deactivate_offline().unwrap();
        let mut request = decode_deactivation_request(&latest).unwrap();
        assert!(request.certificate_issued_at_ms >= again.issued_at_ms, "the certificate A held last");
        request.license_key = other_key.clone();
        let foreign = submit(&mut c, &encode_deactivation_request(&request)).await.unwrap_err();
        assert_eq!((foreign.code(), reason(&foreign)), (Code::FailedPrecondition, "LICENSE_MISMATCH".into()));
        // Altered on the way (one character of the body): its checksum fails.
        let mut lines: Vec<String> = latest.lines().map(str::to_owned).collect();
        let typo = if lines[1].starts_with('Q') { "R" } else { "Q" };
        lines[1].replace_range(0..1, typo);
        let altered = submit(&mut c, &lines.join("\n")).await.unwrap_err();
        assert_eq!(altered.code(), Code::InvalidArgument, "{backend:?}");
        assert!(
            altered.message().starts_with("request_file") && altered.message().contains("checksum"),
            "{}",
            altered.message()
        );
        assert_eq!(counts(&app, &license_id).await, (1, 0), "{backend:?}: refusals change nothing");

        // The latest request frees it; the stale one then finds nothing.
        submit(&mut c, &latest).await.unwrap();
        assert_eq!(counts(&app, &license_id).await, (0, 1));
        let gone = submit(&mut c, &stale).await.unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "{backend:?}");
        let lines = history(&app, &license_id).await;
        let offline: Vec<&str> =
            lines.iter().filter(|(a, _)| a == "offline_deactivate").map(|(_, o)| o.as_str()).collect();
        assert_eq!(offline, ["SUPERSEDED_CERTIFICATE", "ok"], "{backend:?}");
    }
}

#[tokio::test]
async fn bad_request_files_are_invalid_arguments_naming_request_file() {
    use licensing_domain::server_license::{encode_server_request, ServerRequest, ServerRequestKind};
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        let mut c = ActivationServiceClient::new(app.channel().await);
        let a = product(&app, &dir, &key, "a").await;
        a.activate("A", "linux-x86_64", "2.0").await.unwrap();
        let good = decode_deactivation_request(&a.deactivate_offline().unwrap()).unwrap();

        let server_request = encode_server_request(&ServerRequest {
            v: 1,
            kind: ServerRequestKind::Return,
            license_key: key.clone(),
            fingerprint: machine("a"),
            server_name: "vault".into(),
            installation_id: good.installation_id.clone(),
            serial: 1,
            created_at_ms: 0,
        });
        let activation_request = a.offline_activation_request("A", "linux", "2.0").unwrap();
        let mut nul_id = good.clone();
        nul_id.installation_id = "ins_\u{0}".into();
        let mut no_key = good.clone();
        no_key.license_key.clear();
        let mut v2 = good.clone();
        v2.v = 2;
        let cases = [
            ("empty", String::new(), ""),
            ("garbage", "garbage".to_owned(), "BEGIN LICENSING DEACTIVATION REQUEST"),
            ("oversize", format!("{}{}", encode_deactivation_request(&good), " ".repeat(70 * 1024)), "64 KiB"),
            ("server request", server_request, "ProcessServerRequest"),
            ("activation request", activation_request, "ActivateOffline"),
            ("NUL in installation_id", encode_deactivation_request(&nul_id), "installation_id"),
            ("no credential", encode_deactivation_request(&no_key), "neither"),
            ("version 2", encode_deactivation_request(&v2), "version 2"),
        ];
        for (what, file, says) in cases {
            let err = submit(&mut c, &file).await.unwrap_err();
            assert_eq!(
                (err.code(), reason(&err)),
                (Code::InvalidArgument, "DEACTIVATION_REQUEST_INVALID".into()),
                "{backend:?} {what}: {}",
                err.message()
            );
            assert!(err.message().starts_with("request_file:"), "{backend:?} {what}: {}", err.message());
            assert!(err.message().contains(says), "{backend:?} {what}: {}", err.message());
        }
        assert_eq!(counts(&app, &license_id).await, (1, 0), "{backend:?}: bad files change nothing");
        assert!(!history(&app, &license_id).await.iter().any(|(a, _)| a == "offline_deactivate"));
    }
}

#[tokio::test]
async fn operators_submit_a_request_file_with_licensectl() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let a = product(&app, &dir, &key, "a").await;
    let installation = a.activate("A", "linux-x86_64", "2.0").await.unwrap().installation_id;
    let path = dir.path().join("a.deactivation");
    std::fs::write(&path, a.deactivate_offline().unwrap()).unwrap();
    let ctl = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_licensectl"));
        cmd.env_clear().env("LICENSING_SERVER", format!("http://{}", app.addr)).args(args).kill_on_drop(true);
        async move { tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output()).await.unwrap().unwrap() }
    };
    let file = path.to_str().unwrap().to_owned();
    let args = |json: bool| {
        let mut args: Vec<String> = vec![];
        if json {
            args.push("--json".into());
        }
        args.extend(["activations".into(), "deactivate-offline".into(), file.clone()]);
        args
    };
    let out = ctl(args(true)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row["installation_id"], installation.as_str());
    assert_eq!(row["license_id"], license_id.as_str());
    assert_eq!((row["activations_used"].as_i64(), row["deactivations_left"].as_i64()), (Some(0), Some(2)));
    assert!(row["deactivated_at"].is_string(), "{row}");
    // Again: nothing is live any more; one line says so.
    let again = ctl(args(false)).await;
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains(&installation), "{stderr}");
    let missing = ctl(vec!["activations".into(), "deactivate-offline".into(), "/nonexistent/file".into()]).await;
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the request file"));
}
