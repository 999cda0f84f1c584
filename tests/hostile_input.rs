//! Hostile input: random and extreme field values for every RPC of every service, on every
//! backend. No call may answer INTERNAL or UNKNOWN (a panic or a bug); every message is short and
//! free of control characters whatever it quotes (a 1 MiB string, a NUL, an ANSI escape); and the
//! server keeps serving.

use crate::common::*;
use licensing_proto::account::v1 as acc;
use licensing_proto::account::v1::account_service_client::AccountServiceClient;
use licensing_proto::activation::v1 as act;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{
    FingerprintComponent, LicenseKind, Module, ModuleEntitlement, PageRequest, ServerGrant,
};
use licensing_proto::seat::v1 as seat;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::transport::Channel;
use tonic::Code;

/// One generated call: which RPC, and the raw values its fields are built from.
#[derive(Clone)]
struct Input {
    rpc: u8,
    texts: Vec<String>,
    ints: Vec<i32>,
    seconds: i64,
    nanos: i32,
}

/// Long texts shown by their start and length, so a failure report stays readable.
impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let texts: Vec<String> = self
            .texts
            .iter()
            .map(|t| format!("{:?}({} chars)", t.chars().take(40).collect::<String>(), t.chars().count()))
            .collect();
        write!(f, "rpc {} texts {texts:?} ints {:?} seconds {} nanos {}", self.rpc, self.ints, self.seconds, self.nanos)
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "\\PC{0,40}",
        "[a-z0-9-]{1,70}",
        "(lic|cus|ins|lse|ses|rst|adm)_[0-9A-Z]{0,20}",
        "[0-9A-Z]{5}-[0-9A-Z]{5}-[0-9A-Z]{5}-[0-9A-Z]{5}-[0-9A-Z]{5}",
        ".{0,10}@.{0,10}",
        Just("x".repeat(70_000)),
        Just("y".repeat(1 << 20)),
        Just("'; DROP TABLE licenses; --".to_owned()),
        Just("\u{0000}\u{FEFF}\u{202E}".to_owned()),
        Just("\u{1b}[31mred\u{1b}[0m\r\nforged log line".to_owned()),
        // Text PostgreSQL cannot store (a NUL) inside text that is otherwise well formed.
        "(lic|cus|ins|lse|prod)_[0-9A-Z]{2}\\x00[0-9A-Z]{2}",
        "[a-z]{1,5}\\x00[a-z]{0,5}",
    ]
}

fn input() -> impl Strategy<Value = Input> {
    (
        0u8..75,
        proptest::collection::vec(text(), 6),
        proptest::collection::vec(prop_oneof![any::<i32>(), -2i32..5, Just(i32::MAX), Just(i32::MIN)], 4),
        prop_oneof![any::<i64>(), 0i64..4_000_000_000, Just(i64::MIN), Just(253_402_300_800i64)],
        any::<i32>(),
    )
        .prop_map(|(rpc, texts, ints, seconds, nanos)| Input { rpc, texts, ints, seconds, nanos })
}

#[derive(Clone)]
struct Clients {
    admin: licensing_proto::account::v1::admin_service_client::AdminServiceClient<Channel>,
    portal: AccountServiceClient<Channel>,
    activation: ActivationServiceClient<Channel>,
    seat: SeatServiceClient<Channel>,
    session: String,
    license_id: String,
}

fn fp(i: &Input) -> Vec<FingerprintComponent> {
    vec![
        FingerprintComponent { name: i.texts[2].clone(), value: i.texts[3].clone() },
        FingerprintComponent { name: "mac".into(), value: i.texts[4].clone() },
    ]
}

fn act_creds(i: &Input) -> Option<act::LicenseCredentials> {
    use act::license_credentials::Credential;
    Some(act::LicenseCredentials {
        credential: Some(if i.ints[0] % 2 == 0 {
            Credential::LicenseKey(i.texts[0].clone())
        } else {
            Credential::LicenseIdAndPassword(act::LicenseIdAndPassword {
                license_id: i.texts[0].clone(),
                password: i.texts[1].clone(),
            })
        }),
    })
}

fn seat_creds(i: &Input) -> Option<seat::SeatCredentials> {
    Some(seat::SeatCredentials { credential: Some(seat::seat_credentials::Credential::LicenseKey(i.texts[0].clone())) })
}

fn ts(i: &Input) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: i.seconds, nanos: i.nanos })
}

fn duration(i: &Input) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: i.seconds, nanos: i.nanos })
}

fn meter(i: &Input) -> licensing_proto::common::v1::Meter {
    licensing_proto::common::v1::Meter {
        code: i.texts[1].clone(),
        limit: i.seconds,
        overage: i64::from(i.ints[2]),
        reset: i.ints[3],
    }
}

fn terms(i: &Input) -> licensing_proto::common::v1::LicenseTerms {
    licensing_proto::common::v1::LicenseTerms {
        kind: i.ints[0],
        seats: i.ints[1],
        allowed_deactivations: i.ints[2],
        modules: vec![i.texts[2].clone()],
        validity: duration(i),
        upgrade_period: duration(i),
        start: i.ints[3],
        grace_period: duration(i),
        heartbeat_timeout: if i.ints[3] % 2 == 0 { duration(i) } else { None },
        meters: vec![meter(i)],
        trial: i.ints[1] % 2 == 0,
    }
}

fn page(i: &Input) -> Option<PageRequest> {
    Some(PageRequest { page_size: i.ints[1], page_token: i.texts[5].clone() })
}

/// Sends the call and returns its status (Ok for a success).
async fn call(c: &mut Clients, i: &Input) -> tonic::Status {
    let t = |n: usize| i.texts[n].clone();
    let lic = if i.ints[2] % 3 == 0 { c.license_id.clone() } else { t(0) };
    let code = |r: Result<(), tonic::Status>| r.err().unwrap_or_else(|| tonic::Status::ok(""));
    macro_rules! run {
        ($e:expr) => {
            code($e.await.map(|_| ()))
        };
    }
    match i.rpc {
        0 => run!(c.admin.create_product(admin_req(acc::CreateProductRequest { code: t(0), name: t(1), modules: vec![Module { code: t(2), name: t(3) }] }))),
        1 => run!(c.admin.add_product_version(admin_req(acc::AddProductVersionRequest { product_code: t(0), version: t(1), released_at: ts(i) }))),
        2 => run!(c.admin.create_customer(admin_req(acc::CreateCustomerRequest { company_name: t(0), contact_email: t(1), password: t(2) }))),
        3 => run!(c.admin.set_customer_password(admin_req(acc::SetCustomerPasswordRequest { customer_id: t(0), password: t(1) }))),
        4 => run!(c.admin.issue_license(admin_req(acc::IssueLicenseRequest {
            product_code: t(0),
            customer_id: t(1),
            kind: i.ints[0],
            seats: i.ints[1],
            allowed_deactivations: i.ints[2],
            modules: vec![t(2)],
            valid_from: ts(i),
            expires_at: ts(i),
            upgrades_until: ts(i),
            associate: i.ints[3] % 2 == 0,
            payment: Some(acc::Payment { amount_minor: i.seconds, currency: t(3), recurring_months: i.ints[3] }),
            notes: t(4),
            meters: vec![meter(i)],
            grace_period: duration(i),
            policy_id: t(5),
            heartbeat_timeout: if i.ints[3] % 3 == 0 { duration(i) } else { None },
            module_entitlements: vec![ModuleEntitlement { module: t(2), value: t(5), expires_at: ts(i) }],
            server_grants: vec![ServerGrant { product_code: t(0), feature: t(2), floating_seats: i.ints[1], node_locked_activations: i.ints[2] }],
        }))),
        5 => run!(c.admin.get_license(admin_req(acc::GetLicenseRequest { license_id: lic }))),
        6 => run!(c.admin.list_licenses(admin_req(acc::ListLicensesRequest { page: page(i), customer_id: t(1), product_code: t(2), status: i.ints[0], query: t(3) }))),
        7 => run!(c.admin.suspend_license(admin_req(acc::SuspendLicenseRequest { license_id: lic, reason: t(1) }))),
        8 => run!(c.admin.renew_license(admin_req(acc::RenewLicenseRequest { license_id: lic, expires_at: ts(i), payment: None }))),
        9 => run!(c.admin.set_license_seats(admin_req(acc::SetLicenseSeatsRequest { license_id: lic, seats: i.ints[1] }))),
        10 => run!(c.admin.add_license_modules(admin_req(acc::AddLicenseModulesRequest { license_id: lic, modules: vec![t(1), t(2)], payment: None }))),
        11 => run!(c.admin.extend_upgrade_period(admin_req(acc::ExtendUpgradePeriodRequest { license_id: lic, upgrades_until: ts(i), payment: None }))),
        12 => run!(c.admin.list_audit_events(admin_req(acc::ListAuditEventsRequest { subject: t(0), page: page(i) }))),
        13 => run!(c.admin.get_activation_history(admin_req(acc::GetActivationHistoryRequest { license_id: lic }))),
        14 => run!(c.admin.return_license(admin_req(acc::ReturnLicenseRequest { license_id: lic, reason: t(1) }))),
        15 => run!(c.admin.associate_license(admin_req(acc::AdminServiceAssociateLicenseRequest { license_id: lic, customer_id: t(1) }))),
        16 => run!(c.admin.list_customers(admin_req(acc::ListCustomersRequest { page: page(i), query: t(0) }))),
        17 => run!(c.activation.activate(act::ActivateRequest {
            credentials: act_creds(i),
            machine: Some(act::MachineInfo { fingerprint: fp(i), machine_name: t(4), platform: t(5), product_version: t(1) }),
        })),
        18 => run!(c.activation.validate(act::ValidateRequest { credentials: act_creds(i), fingerprint: fp(i), modules: vec![t(4)], product_version: t(5) })),
        19 => {
            use act::deactivate_request::Target;
            match i.ints[3].rem_euclid(3) {
                0 => run!(c.activation.deactivate(act::DeactivateRequest { target: Some(Target::InstallationId(t(0))) })),
                1 => run!(c.activation.deactivate(with_token(&c.session, act::DeactivateRequest { target: Some(Target::InstallationId(t(0))) }))),
                _ => run!(c.activation.deactivate(act::DeactivateRequest {
                    target: Some(Target::LicenseAndInstallation(act::LicenseAndInstallation { credentials: act_creds(i), installation_id: t(0) })),
                })),
            }
        }
        20 => run!(c.activation.refresh_certificate(act::RefreshCertificateRequest { credentials: act_creds(i), fingerprint: fp(i) })),
        21 => run!(c.activation.activate_offline(act::ActivateOfflineRequest { activation_request: format!("-----BEGIN LICENSING ACTIVATION REQUEST-----\n{}\nchecksum:{}\n-----END LICENSING ACTIVATION REQUEST-----", t(0), t(1)) })),
        22 => run!(c.activation.watch_license(act::WatchLicenseRequest { credentials: act_creds(i), fingerprint: fp(i) })),
        23 => run!(c.seat.checkout(seat::CheckoutRequest {
            credentials: seat_creds(i),
            feature: t(1),
            user: t(2),
            host: t(3),
            client_instance_id: t(4),
            ttl: duration(i),
            borrow_for: if i.ints[3] % 2 == 0 { duration(i) } else { None },
            groups: vec![t(5)],
        })),
        24 => run!(c.seat.heartbeat(seat::HeartbeatRequest { license_id: lic, lease_id: t(1), lease_token: t(2) })),
        25 => run!(c.seat.checkin(seat::CheckinRequest { license_id: lic, lease_id: t(1) })),
        26 => run!(c.seat.list_leases(admin_req(seat::ListLeasesRequest { license_id: lic }))),
        27 => run!(c.seat.revoke_lease(admin_req(seat::RevokeLeaseRequest { license_id: lic, lease_id: t(1), reason: t(2) }))),
        28 => run!(c.seat.get_pool_status(admin_req(seat::GetPoolStatusRequest { license_id: lic }))),
        29 => {
            let wait = seat::WaitForSeatRequest {
                checkout: Some(seat::CheckoutRequest { credentials: seat_creds(i), client_instance_id: t(4), ttl: duration(i), ..Default::default() }),
                max_wait: Some(prost_types::Duration { seconds: i.seconds.rem_euclid(2), nanos: 0 }),
            };
            match c.seat.wait_for_seat(wait).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    let first = tokio::time::timeout(std::time::Duration::from_secs(3), stream.message()).await;
                    match first {
                        Ok(Err(s)) => s,
                        _ => tonic::Status::ok(""),
                    }
                }
                Err(s) => s,
            }
        }
        30 => run!(c.portal.login(acc::LoginRequest { login: t(0), password: t(1) })),
        31 => run!(c.portal.request_password_reset(acc::RequestPasswordResetRequest { login: t(0) })),
        32 => run!(c.portal.reset_password(acc::ResetPasswordRequest { reset_token: t(0), new_password: t(1) })),
        33 => run!(c.portal.get_my_license(with_token(&c.session, acc::GetMyLicenseRequest { license_id: lic, installations_page: page(i), history_page: page(i) }))),
        34 => run!(c.portal.deactivate_installation(with_token(&c.session, acc::DeactivateInstallationRequest { license_id: lic, installation_id: t(1) }))),
        35 => run!(c.portal.transfer_license(with_token(&c.session, acc::TransferLicenseRequest { license_id: lic, to_customer_id: t(1) }))),
        36 => run!(c.portal.associate_license(with_token(&c.session, acc::AssociateLicenseRequest { license_key: t(0) }))),
        37 => run!(c.portal.return_concurrent_license(with_token(&c.session, acc::ReturnConcurrentLicenseRequest { license_id: lic, new_seats: i.ints[1], split: i.ints.clone() }))),
        38 => {
            // Any token a header can carry (a NUL cannot even be sent, nor a megabyte).
            let token: String = t(0).chars().filter(|c| c.is_ascii_graphic()).take(4096).collect();
            run!(c.portal.list_my_licenses(with_token(&token, acc::ListMyLicensesRequest { page: page(i) })))
        }
        40 => {
            let principal = |n: usize| Some(seat::Principal { kind: i.ints[n], name: t(n) });
            let policy = seat::SeatPolicy {
                share_scope: i.ints[0],
                max_processes_per_seat: i.ints[1],
                linger: duration(i),
                max_borrow: duration(i),
                overdraft_seats: i.ints[2],
                reservations: vec![seat::Reservation { principal: principal(1), seats: i.ints[3] }],
                caps: vec![seat::SeatCap { principal: principal(2), max_seats: i.ints[1] }],
                allow: principal(3).into_iter().collect(),
                deny: principal(0).into_iter().collect(),
                feature_costs: [(t(4), i.ints[2])].into(),
                default_ttl: duration(i),
                groups: vec![seat::SeatGroup { name: t(5), members: principal(1).into_iter().collect() }],
            };
            run!(c.seat.update_seat_policy(admin_req(seat::UpdateSeatPolicyRequest { license_id: lic, policy: Some(policy) })))
        }
        41 => run!(c.seat.get_usage_report(admin_req(seat::GetUsageReportRequest { license_id: lic, from: ts(i), to: ts(i), as_csv: i.ints[0] % 2 == 0 }))),
        42 => run!(c.portal.get_my_usage_report(with_token(&c.session, acc::GetMyUsageReportRequest { license_id: lic, from: ts(i), to: None, as_csv: true }))),
        43 => run!(c.portal.get_my_seat_policy(with_token(&c.session, acc::GetMySeatPolicyRequest { license_id: lic }))),
        45 => run!(c.portal.change_password(with_token(&c.session, acc::ChangePasswordRequest { current_password: t(1), new_password: t(2) }))),
        46 => run!(c.portal.update_contact_details(with_token(&c.session, acc::UpdateContactDetailsRequest { contact_name: t(1), contact_email: t(2), phone: t(3), current_password: t(4) }))),
        47 => run!(c.portal.set_licensee_name(with_token(&c.session, acc::SetLicenseeNameRequest { license_id: lic, licensee_name: t(1) }))),
        48 => run!(c.portal.list_recurring_payments(with_token(&c.session, acc::ListRecurringPaymentsRequest {}))),
        49 => run!(c.activation.record_usage(act::RecordUsageRequest { credentials: act_creds(i), meter: t(1), amount: i.seconds, idempotency_key: t(2) })),
        50 => run!(c.activation.get_meter_usage(act::GetMeterUsageRequest { credentials: act_creds(i) })),
        51 => run!(c.admin.set_license_meter(admin_req(acc::SetLicenseMeterRequest { license_id: lic, meter: Some(meter(i)) }))),
        52 => run!(c.admin.remove_license_meter(admin_req(acc::RemoveLicenseMeterRequest { license_id: lic, code: t(1) }))),
        53 => run!(c.admin.get_license_meter_usage(admin_req(acc::GetLicenseMeterUsageRequest { license_id: lic, as_csv: i.ints[0] % 2 == 0 }))),
        54 => run!(c.portal.get_my_meter_usage(with_token(&c.session, acc::GetMyMeterUsageRequest { license_id: lic, as_csv: true }))),
        55 => run!(c.admin.set_license_grace_period(admin_req(acc::SetLicenseGracePeriodRequest { license_id: lic, grace_period: duration(i) }))),
        56 => run!(c.activation.heartbeat(act::HeartbeatRequest { credentials: act_creds(i), fingerprint: fp(i) })),
        57 => run!(c.admin.set_heartbeat_timeout(admin_req(acc::SetHeartbeatTimeoutRequest {
            license_id: lic,
            heartbeat_timeout: if i.ints[3] % 2 == 0 { duration(i) } else { None },
        }))),
        58 => run!(c.admin.create_policy(admin_req(acc::CreatePolicyRequest { product_code: t(0), name: t(1), terms: Some(terms(i)) }))),
        59 => run!(c.admin.get_policy(admin_req(acc::GetPolicyRequest { policy_id: t(0) }))),
        60 => run!(c.admin.list_policies(admin_req(acc::ListPoliciesRequest { product_code: t(0) }))),
        61 => run!(c.admin.update_policy(admin_req(acc::UpdatePolicyRequest { policy_id: t(0), terms: Some(terms(i)) }))),
        62 => run!(c.admin.apply_policy(admin_req(acc::ApplyPolicyRequest { policy_id: t(0), license_ids: vec![lic, t(1)] }))),
        63 => run!(c.admin.add_product_module(admin_req(acc::AddProductModuleRequest { product_code: t(0), module: Some(Module { code: t(4), name: t(1) }) }))),
        64 => run!(c.admin.set_module_entitlement(admin_req(acc::SetModuleEntitlementRequest { license_id: lic, module: t(4), value: t(1), expires_at: ts(i) }))),
        65 => run!(c.activation.activate_trial(act::ActivateTrialRequest {
            product_code: t(0),
            machine: Some(act::MachineInfo { fingerprint: fp(i), machine_name: t(4), platform: t(5), product_version: t(1) }),
        })),
        66 => run!(c.admin.convert_trial(admin_req(acc::ConvertTrialRequest { license_id: lic, customer_id: t(1), policy_id: t(2), associate: i.ints[3] % 2 == 0 }))),
        67 => run!(c.admin.get_trial_stats(admin_req(acc::GetTrialStatsRequest { product_code: t(0) }))),
        68 => run!(c.activation.activate_server(act::ActivateServerRequest {
            credentials: act_creds(i),
            machine: Some(act::MachineInfo { fingerprint: fp(i), machine_name: t(1), platform: t(4), product_version: t(5) }),
        })),
        69 => run!(c.admin.process_server_request(admin_req(acc::ProcessServerRequestRequest { request_file: t(0) }))),
        71 => run!(c.activation.report_server_usage(act::ReportServerUsageRequest {
            credentials: act_creds(i),
            installation_id: t(1),
            serial: i.seconds,
            period_start: ts(i),
            period_end: if i.ints[3] % 2 == 0 { ts(i) } else { None },
            grants: vec![act::ServerGrantUsage {
                product_code: t(2),
                feature: t(3),
                kind: t(4),
                granted: i.ints[0],
                peak_in_use: i.ints[1],
                checkouts: i.seconds,
                denials: i64::from(i.ints[2]),
                seat_seconds: i64::from(i.ints[3]),
            }],
        })),
        72 => run!(c.admin.list_server_usage_reports(admin_req(acc::ListServerUsageReportsRequest { license_id: lic, page: page(i) }))),
        70 => {
            // Raw text, or a well-formed, checksummed request carrying the hostile values.
            let request_file = match i.ints[3].rem_euclid(2) {
                0 => t(0),
                _ => licensing_domain::offline_deactivation::encode_deactivation_request(
                    &licensing_domain::offline_deactivation::DeactivationRequest {
                        v: 1,
                        license_id: lic,
                        license_key: t(0),
                        password: t(1),
                        installation_id: t(5),
                        certificate_issued_at_ms: i.seconds,
                        fingerprint: fp(i)
                            .into_iter()
                            .map(|c| licensing_domain::fingerprint::Component { name: c.name, value: c.value })
                            .collect(),
                        created_at_ms: i64::from(i.nanos),
                    },
                ),
            };
            run!(c.activation.deactivate_offline(act::DeactivateOfflineRequest { request_file }))
        }
        73 => run!(c.activation.return_server(act::ReturnServerRequest { return_file: t(0) })),
        74 => run!(c.admin.set_server_grants(admin_req(acc::SetServerGrantsRequest {
            license_id: lic,
            server_grants: vec![licensing_proto::common::v1::ServerGrant {
                product_code: t(0),
                feature: t(1),
                floating_seats: i.ints[0],
                node_locked_activations: i.ints[1],
            }],
        }))),
        _ => run!(c.portal.regenerate_activation_password(with_token(&c.session, acc::RegenerateActivationPasswordRequest { license_id: lic }))),
    }
}

/// Every RPC with a NUL character in each of its text fields, and with well-formed values
/// around it: text PostgreSQL cannot store is invalid input, never INTERNAL, and every backend
/// answers each case with the same code (SQLite could store a NUL, but must not either).
#[test]
fn a_nul_in_any_text_field_is_invalid_input_on_every_backend() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut answers: Vec<(Backend, Vec<(String, Code)>)> = vec![];
    let mut internal = vec![];
    for backend in rt.block_on(backends()) {
        let (_app, clients) = rt.block_on(async {
            let app = spawn_app(backend).await;
            let f = fixture(&app).await;
            let (license_id, _, _) = issue_license(&app, &f, LicenseKind::Concurrent, 3, |r| r.associate = true).await;
            let session = AccountServiceClient::new(app.channel().await)
                .login(acc::LoginRequest { login: f.customer_id.clone(), password: CUSTOMER_PASSWORD.into() })
                .await
                .unwrap()
                .into_inner()
                .session_token;
            let ch = app.channel().await;
            let clients = Clients {
                admin: app.admin().await,
                portal: AccountServiceClient::new(ch.clone()),
                activation: ActivationServiceClient::new(ch.clone()),
                seat: SeatServiceClient::new(ch),
                session,
                license_id,
            };
            (app, clients)
        });
        let plain = ["lic_ABCD1234ABCD1234", "secret-password", "machine-id", "m-1", "render", "lic_ABCD1234ABCD1234"];
        let mut codes = vec![];
        for rpc in 0u8..75 {
            for field in 0..plain.len() {
                for nul in ["lic_AB\0CD", "a\0b", "\0", "cus_\0", "2.0\0", "ops@acme\0.example"] {
                    let mut texts: Vec<String> = plain.iter().map(|t| t.to_string()).collect();
                    texts[field] = nul.to_owned();
                    for ints in [[0, 1, 1, 1], [1, 2, 3, 0]] {
                        let i =
                            Input { rpc, texts: texts.clone(), ints: ints.to_vec(), seconds: 1_900_000_000, nanos: 0 };
                        let status = rt.block_on(call(&mut clients.clone(), &i));
                        let case = format!("rpc {rpc}, NUL {nul:?} in text {field}, ints {ints:?}");
                        if matches!(status.code(), Code::Internal | Code::Unknown) {
                            internal.push(format!("{backend:?}: {case}: {:?} {}", status.code(), status.message()));
                        }
                        codes.push((case, status.code()));
                    }
                }
            }
        }
        answers.push((backend, codes));
    }
    assert!(internal.is_empty(), "{} cases failed internally:\n{}", internal.len(), internal.join("\n"));
    if let [(_, sqlite), (_, postgres)] = answers.as_slice() {
        let differ: Vec<String> = sqlite
            .iter()
            .zip(postgres)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((case, a), (_, b))| format!("{case}: SQLite {a:?}, PostgreSQL {b:?}"))
            .collect();
        assert!(differ.is_empty(), "{} cases differ between backends:\n{}", differ.len(), differ.join("\n"));
    }
}

/// The longest status message a call may answer (in characters), whatever its input.
const MAX_MESSAGE_CHARS: usize = 1_000;

#[test]
fn no_input_makes_any_rpc_fail_internally() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for backend in rt.block_on(backends()) {
        let (app, clients) = rt.block_on(async {
            let app = spawn_app(backend).await;
            let f = fixture(&app).await;
            let (license_id, _, _) = issue_license(&app, &f, LicenseKind::Concurrent, 3, |r| r.associate = true).await;
            let session = AccountServiceClient::new(app.channel().await)
                .login(acc::LoginRequest { login: f.customer_id.clone(), password: CUSTOMER_PASSWORD.into() })
                .await
                .unwrap()
                .into_inner()
                .session_token;
            let ch = app.channel().await;
            let clients = Clients {
                admin: app.admin().await,
                portal: AccountServiceClient::new(ch.clone()),
                activation: ActivationServiceClient::new(ch.clone()),
                seat: SeatServiceClient::new(ch),
                session,
                license_id,
            };
            (app, clients)
        });
        let cases = std::env::var("HOSTILE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        runner
            .run(&input(), |i| {
                let status = rt.block_on(call(&mut clients.clone(), &i));
                let (code, message) = (status.code(), status.message());
                prop_assert!(
                    !matches!(code, Code::Internal | Code::Unknown),
                    "{backend:?}: rpc {} answered {code:?} ({}) for {i:?}",
                    i.rpc,
                    message.chars().take(200).collect::<String>()
                );
                prop_assert!(
                    message.chars().count() <= MAX_MESSAGE_CHARS,
                    "{backend:?}: rpc {} answered a message of {} characters for {i:?}",
                    i.rpc,
                    message.chars().count()
                );
                prop_assert!(
                    !message.contains(&"x".repeat(80)) && !message.contains(&"y".repeat(80)),
                    "{backend:?}: rpc {} echoed a long input beyond a short preview: {}",
                    i.rpc,
                    message.chars().take(200).collect::<String>()
                );
                prop_assert!(
                    !message.chars().any(char::is_control),
                    "{backend:?}: rpc {} echoed a control character: {:?}",
                    i.rpc,
                    message.chars().take(300).collect::<String>()
                );
                Ok(())
            })
            .unwrap();
        rt.block_on(async {
            use tonic_health::pb::health_client::HealthClient;
            let status = HealthClient::new(app.channel().await)
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .unwrap();
            assert_eq!(status.into_inner().status, 1, "{backend:?}: still SERVING");
        });
    }
}
