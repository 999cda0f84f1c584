//! The authorization matrix: each RPC called as nobody, with a wrong token, as a customer, as
//! the admin, and (for the portal) as another customer; product RPCs with another license's
//! key or lease. Every cell asserts the exact status code.

use crate::common::*;
use licensing_proto::account::v1 as acc;
use licensing_proto::account::v1::account_service_client::AccountServiceClient;
use licensing_proto::activation::v1 as act;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{FingerprintComponent, LicenseKind};
use licensing_proto::seat::v1 as seat;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use tonic::transport::Channel;
use tonic::Code;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Nobody,
    WrongToken,
    /// Customer A, who owns the world's licenses.
    Customer,
    /// Customer B, on A's licenses.
    OtherCustomer,
    Admin,
}

struct World {
    channel: Channel,
    product: String,
    customer_a: String,
    customer_b: String,
    session_a: String,
    session_b: String,
    /// A's node-locked license and an installation on it.
    license_a: String,
    installation_a: String,
    /// A's floating license and a live lease on it.
    floating_a: String,
    lease_a: String,
    /// B's floating license and key.
    floating_b: String,
    floating_key_b: String,
}

fn request<T>(who: Who, w: &World, message: T) -> tonic::Request<T> {
    match who {
        Who::Nobody => tonic::Request::new(message),
        Who::WrongToken => with_token("adm_WRONGTOKEN0123456789ABCDEFGHJ", message),
        Who::Customer => with_token(&w.session_a, message),
        Who::OtherCustomer => with_token(&w.session_b, message),
        Who::Admin => admin_req(message),
    }
}

fn exports_meter() -> licensing_proto::common::v1::Meter {
    licensing_proto::common::v1::Meter {
        code: "exports".into(),
        limit: 10,
        overage: 0,
        reset: licensing_proto::common::v1::MeterReset::Monthly as i32,
    }
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

async fn admin_rpc(rpc: &str, who: Who, w: &World) -> Code {
    let mut c = licensing_proto::account::v1::admin_service_client::AdminServiceClient::new(w.channel.clone());
    let mut s = SeatServiceClient::new(w.channel.clone());
    let lic = || w.license_a.clone();
    match rpc {
        "CreateProduct" => code(
            c.create_product(request(
                who,
                w,
                acc::CreateProductRequest { code: format!("p-{}", rand_suffix()), name: "P".into(), modules: vec![] },
            ))
            .await,
        ),
        "GetProduct" => code(c.get_product(request(who, w, acc::GetProductRequest { code: w.product.clone() })).await),
        "ListProducts" => code(c.list_products(request(who, w, acc::ListProductsRequest::default())).await),
        "AddProductVersion" => code(
            c.add_product_version(request(
                who,
                w,
                acc::AddProductVersionRequest {
                    product_code: w.product.clone(),
                    version: format!("9.{}", rand_num()),
                    released_at: None,
                },
            ))
            .await,
        ),
        "AddProductModule" => code(
            c.add_product_module(request(
                who,
                w,
                acc::AddProductModuleRequest {
                    product_code: w.product.clone(),
                    module: Some(licensing_proto::common::v1::Module {
                        code: format!("plugin-{}", rand_suffix()),
                        name: "Plug-in".into(),
                    }),
                },
            ))
            .await,
        ),
        "CreateCustomer" => code(
            c.create_customer(request(
                who,
                w,
                acc::CreateCustomerRequest {
                    company_name: "X".into(),
                    contact_email: format!("{}@x.example", rand_suffix()),
                    password: String::new(),
                },
            ))
            .await,
        ),
        "GetCustomer" => {
            code(c.get_customer(request(who, w, acc::GetCustomerRequest { customer_id: w.customer_a.clone() })).await)
        }
        "ListCustomers" => code(c.list_customers(request(who, w, acc::ListCustomersRequest::default())).await),
        "SetCustomerPassword" => code(
            c.set_customer_password(request(
                who,
                w,
                acc::SetCustomerPasswordRequest {
                    customer_id: w.customer_b.clone(),
                    password: CUSTOMER_PASSWORD.into(),
                },
            ))
            .await,
        ),
        "IssueLicense" => code(
            c.issue_license(request(
                who,
                w,
                acc::IssueLicenseRequest {
                    product_code: w.product.clone(),
                    customer_id: w.customer_a.clone(),
                    kind: LicenseKind::Cloud as i32,
                    ..Default::default()
                },
            ))
            .await,
        ),
        "GetLicense" => code(c.get_license(request(who, w, acc::GetLicenseRequest { license_id: lic() })).await),
        "ListLicenses" => code(c.list_licenses(request(who, w, acc::ListLicensesRequest::default())).await),
        "SuspendLicense" => {
            let r = code(
                c.suspend_license(request(
                    who,
                    w,
                    acc::SuspendLicenseRequest { license_id: lic(), reason: String::new() },
                ))
                .await,
            );
            if r == Code::Ok {
                c.reinstate_license(admin_req(acc::ReinstateLicenseRequest { license_id: lic() })).await.unwrap();
            }
            r
        }
        "ReinstateLicense" => {
            // Reinstating an active license is refused for everyone; only the admin gets that far.
            code(c.reinstate_license(request(who, w, acc::ReinstateLicenseRequest { license_id: lic() })).await)
        }
        "RenewLicense" => code(
            c.renew_license(request(
                who,
                w,
                acc::RenewLicenseRequest {
                    license_id: lic(),
                    expires_at: ts(now_s() + 3_000 * 86_400 + rand_num() as i64),
                    payment: None,
                },
            ))
            .await,
        ),
        "SetLicenseSeats" => code(
            c.set_license_seats(request(who, w, acc::SetLicenseSeatsRequest { license_id: lic(), seats: 5 })).await,
        ),
        "SetAllowedDeactivations" => code(
            c.set_allowed_deactivations(request(
                who,
                w,
                acc::SetAllowedDeactivationsRequest { license_id: lic(), allowed_deactivations: 3 },
            ))
            .await,
        ),
        "AddLicenseModules" => {
            let r = code(
                c.add_license_modules(request(
                    who,
                    w,
                    acc::AddLicenseModulesRequest { license_id: lic(), modules: vec!["export".into()], payment: None },
                ))
                .await,
            );
            if r == Code::Ok {
                c.remove_license_modules(admin_req(acc::RemoveLicenseModulesRequest {
                    license_id: lic(),
                    modules: vec!["export".into()],
                }))
                .await
                .unwrap();
            }
            r
        }
        "RemoveLicenseModules" => {
            c.add_license_modules(admin_req(acc::AddLicenseModulesRequest {
                license_id: lic(),
                modules: vec!["export".into()],
                payment: None,
            }))
            .await
            .unwrap();
            let r = code(
                c.remove_license_modules(request(
                    who,
                    w,
                    acc::RemoveLicenseModulesRequest { license_id: lic(), modules: vec!["export".into()] },
                ))
                .await,
            );
            if r != Code::Ok {
                c.remove_license_modules(admin_req(acc::RemoveLicenseModulesRequest {
                    license_id: lic(),
                    modules: vec!["export".into()],
                }))
                .await
                .unwrap();
            }
            r
        }
        "ExtendUpgradePeriod" => code(
            c.extend_upgrade_period(request(
                who,
                w,
                acc::ExtendUpgradePeriodRequest {
                    license_id: lic(),
                    upgrades_until: ts(now_s() + 4_000 * 86_400 + rand_num() as i64),
                    payment: None,
                },
            ))
            .await,
        ),
        "SetModuleEntitlement" => code(
            c.set_module_entitlement(request(
                who,
                w,
                acc::SetModuleEntitlementRequest {
                    license_id: lic(),
                    module: "render".into(),
                    value: "4096".into(),
                    expires_at: None,
                },
            ))
            .await,
        ),
        "SetLicenseGracePeriod" => code(
            c.set_license_grace_period(request(
                who,
                w,
                acc::SetLicenseGracePeriodRequest {
                    license_id: lic(),
                    grace_period: Some(prost_types::Duration { seconds: 7 * 86_400, nanos: 0 }),
                },
            ))
            .await,
        ),
        "SetPortalDeactivationPolicy" => code(
            c.set_portal_deactivation_policy(request(
                who,
                w,
                acc::SetPortalDeactivationPolicyRequest { license_id: lic(), portal_deactivation_counts: true },
            ))
            .await,
        ),
        "SetHeartbeatTimeout" => code(
            c.set_heartbeat_timeout(request(
                who,
                w,
                // A day: the world's machines are not culled while the matrix runs.
                acc::SetHeartbeatTimeoutRequest {
                    license_id: lic(),
                    heartbeat_timeout: Some(prost_types::Duration { seconds: 86_400, nanos: 0 }),
                },
            ))
            .await,
        ),
        "ReturnLicense" => {
            // Returned, then associated back so later cells see the same world.
            let r = code(
                c.return_license(request(
                    who,
                    w,
                    acc::ReturnLicenseRequest { license_id: w.floating_b.clone(), reason: String::new() },
                ))
                .await,
            );
            c.associate_license(admin_req(acc::AdminServiceAssociateLicenseRequest {
                license_id: w.floating_b.clone(),
                customer_id: w.customer_b.clone(),
            }))
            .await
            .unwrap();
            r
        }
        "AssociateLicense" => code(
            c.associate_license(request(
                who,
                w,
                acc::AdminServiceAssociateLicenseRequest {
                    license_id: w.floating_b.clone(),
                    customer_id: w.customer_b.clone(),
                },
            ))
            .await,
        ),
        "ListAuditEvents" => {
            code(c.list_audit_events(request(who, w, acc::ListAuditEventsRequest { subject: lic(), page: None })).await)
        }
        "GetActivationHistory" => code(
            c.get_activation_history(request(who, w, acc::GetActivationHistoryRequest { license_id: lic() })).await,
        ),
        "SetLicenseMeter" => code(
            c.set_license_meter(request(
                who,
                w,
                acc::SetLicenseMeterRequest { license_id: lic(), meter: Some(exports_meter()) },
            ))
            .await,
        ),
        // Runs after SetLicenseMeter: the admin removes the meter it set.
        "RemoveLicenseMeter" => code(
            c.remove_license_meter(request(
                who,
                w,
                acc::RemoveLicenseMeterRequest { license_id: lic(), code: "exports".into() },
            ))
            .await,
        ),
        "CreatePolicy" => code(
            c.create_policy(request(
                who,
                w,
                acc::CreatePolicyRequest {
                    product_code: w.product.clone(),
                    name: format!("{who:?}"),
                    terms: Some(licensing_proto::common::v1::LicenseTerms {
                        kind: LicenseKind::Concurrent as i32,
                        seats: 2,
                        ..Default::default()
                    }),
                },
            ))
            .await,
        ),
        // A's license is no trial: the admin is told so (the authorization is what is tested).
        "ConvertTrial" => code(
            c.convert_trial(request(
                who,
                w,
                acc::ConvertTrialRequest {
                    license_id: lic(),
                    customer_id: w.customer_a.clone(),
                    policy_id: "pol_0000000000000000".into(),
                    associate: false,
                },
            ))
            .await,
        ),
        "GetTrialStats" => code(
            c.get_trial_stats(request(who, w, acc::GetTrialStatsRequest { product_code: w.product.clone() })).await,
        ),
        "ListPolicies" => {
            code(c.list_policies(request(who, w, acc::ListPoliciesRequest { product_code: w.product.clone() })).await)
        }
        "GetLicenseMeterUsage" => code(
            c.get_license_meter_usage(request(
                who,
                w,
                acc::GetLicenseMeterUsageRequest { license_id: lic(), as_csv: true },
            ))
            .await,
        ),
        "ListLeases" => {
            code(s.list_leases(request(who, w, seat::ListLeasesRequest { license_id: w.floating_a.clone() })).await)
        }
        "GetPoolStatus" => code(
            s.get_pool_status(request(who, w, seat::GetPoolStatusRequest { license_id: w.floating_a.clone() })).await,
        ),
        "UpdateSeatPolicy" => code(
            s.update_seat_policy(request(
                who,
                w,
                seat::UpdateSeatPolicyRequest {
                    license_id: w.floating_a.clone(),
                    policy: Some(seat::SeatPolicy { overdraft_seats: 1, ..Default::default() }),
                },
            ))
            .await,
        ),
        "GetUsageReport" => code(
            s.get_usage_report(request(
                who,
                w,
                seat::GetUsageReportRequest { license_id: w.floating_a.clone(), ..Default::default() },
            ))
            .await,
        ),
        "RevokeLease" => code(
            s.revoke_lease(request(
                who,
                w,
                seat::RevokeLeaseRequest {
                    license_id: w.floating_a.clone(),
                    lease_id: "lse_0000000000000000".into(),
                    reason: String::new(),
                },
            ))
            .await,
        ),
        "GetLeaseStoreStatus" => {
            code(s.get_lease_store_status(request(who, w, seat::GetLeaseStoreStatusRequest {})).await)
        }
        "EndLeaseStoreRecovery" => code(
            s.end_lease_store_recovery(request(who, w, seat::EndLeaseStoreRecoveryRequest { reason: "test".into() }))
                .await,
        ),
        // An empty request file: past the admin check, it is refused as invalid input.
        "ProcessServerRequest" => code(
            c.process_server_request(request(who, w, acc::ProcessServerRequestRequest { request_file: String::new() }))
                .await,
        ),
        "SetServerGrants" => code(
            c.set_server_grants(request(
                who,
                w,
                acc::SetServerGrantsRequest { license_id: lic(), server_grants: vec![] },
            ))
            .await,
        ),
        // The license exists and has no usage report: an empty page.
        "ListServerUsageReports" => code(
            c.list_server_usage_reports(request(
                who,
                w,
                acc::ListServerUsageReportsRequest { license_id: w.license_a.clone(), page: None },
            ))
            .await,
        ),
        other => panic!("no cell for {other}"),
    }
}

fn rand_suffix() -> String {
    licensing_domain::ids::new_id("r").to_lowercase()[2..12].to_owned()
}

fn rand_num() -> u32 {
    rand::random::<u32>() % 100_000
}

const ADMIN_RPCS: &[&str] = &[
    "CreateProduct",
    "GetProduct",
    "ListProducts",
    "AddProductVersion",
    "AddProductModule",
    "CreateCustomer",
    "GetCustomer",
    "ListCustomers",
    "SetCustomerPassword",
    "IssueLicense",
    "GetLicense",
    "ListLicenses",
    "SuspendLicense",
    "ReinstateLicense",
    "RenewLicense",
    "SetLicenseSeats",
    "SetAllowedDeactivations",
    "AddLicenseModules",
    "RemoveLicenseModules",
    "ExtendUpgradePeriod",
    "SetPortalDeactivationPolicy",
    "SetLicenseGracePeriod",
    "SetHeartbeatTimeout",
    "SetModuleEntitlement",
    "ReturnLicense",
    "AssociateLicense",
    "ListAuditEvents",
    "GetActivationHistory",
    "SetLicenseMeter",
    "RemoveLicenseMeter",
    "GetLicenseMeterUsage",
    "CreatePolicy",
    "ListPolicies",
    "ConvertTrial",
    "GetTrialStats",
    "ListLeases",
    "GetPoolStatus",
    "UpdateSeatPolicy",
    "GetUsageReport",
    "RevokeLease",
    "GetLeaseStoreStatus",
    "EndLeaseStoreRecovery",
    "ProcessServerRequest",
    "SetServerGrants",
    "ListServerUsageReports",
];

/// Admin calls that the license's own customer may make with a portal session too (on its own
/// licenses; another account's are as good as unknown).
const OWNER_OR_ADMIN_RPCS: &[&str] = &["ListLeases", "GetUsageReport"];

/// As the admin: what each call answers with the world's valid inputs.
fn admin_expected(rpc: &str) -> Code {
    match rpc {
        "ReinstateLicense" => Code::FailedPrecondition,
        "RevokeLease" => Code::NotFound,
        // No such policy: checked after the caller is known to be the admin.
        "ConvertTrial" => Code::NotFound,
        "ProcessServerRequest" => Code::InvalidArgument,
        // No grants: past the admin check, refused as invalid input.
        "SetServerGrants" => Code::InvalidArgument,
        _ => Code::Ok,
    }
}

fn session_req<T>(session: Option<&str>, message: T) -> tonic::Request<T> {
    match session {
        Some(s) => with_token(s, message),
        None => tonic::Request::new(message),
    }
}

/// `as_owner` calls as customer A; `as_other` as customer B, on A's resources.
async fn portal_rpc(rpc: &str, session: Option<&str>, w: &World) -> Code {
    let mut p = AccountServiceClient::new(w.channel.clone());
    match rpc {
        "GetAccount" => code(p.get_account(session_req(session, acc::GetAccountRequest {})).await),
        "ListMyLicenses" => {
            code(p.list_my_licenses(session_req(session, acc::ListMyLicensesRequest { page: None })).await)
        }
        "GetMyLicense" => code(
            p.get_my_license(session_req(
                session,
                acc::GetMyLicenseRequest { license_id: w.license_a.clone(), ..Default::default() },
            ))
            .await,
        ),
        "ListMyLeases" => code(
            p.list_my_leases(session_req(session, acc::ListMyLeasesRequest { license_id: w.floating_a.clone() })).await,
        ),
        "GetActivationPassword" => code(
            p.get_activation_password(session_req(
                session,
                acc::GetActivationPasswordRequest { license_id: w.license_a.clone() },
            ))
            .await,
        ),
        "GetMySeatPolicy" => code(
            p.get_my_seat_policy(session_req(
                session,
                acc::GetMySeatPolicyRequest { license_id: w.floating_a.clone() },
            ))
            .await,
        ),
        "GetMyMeterUsage" => code(
            p.get_my_meter_usage(session_req(
                session,
                acc::GetMyMeterUsageRequest { license_id: w.license_a.clone(), as_csv: true },
            ))
            .await,
        ),
        "GetMyUsageReport" => code(
            p.get_my_usage_report(session_req(
                session,
                acc::GetMyUsageReportRequest { license_id: w.floating_a.clone(), ..Default::default() },
            ))
            .await,
        ),
        "ListReceipts" => code(p.list_receipts(session_req(session, acc::ListReceiptsRequest { page: None })).await),
        "ListMyAuditEvents" => {
            code(p.list_my_audit_events(session_req(session, acc::ListMyAuditEventsRequest { page: None })).await)
        }
        // Mutating calls aimed at resources A does not hold, so the owner's answer is a refusal
        // too, but a different one from the stranger's NotFound where it applies.
        "DeactivateInstallation" => code(
            p.deactivate_installation(session_req(
                session,
                acc::DeactivateInstallationRequest {
                    license_id: w.license_a.clone(),
                    installation_id: "ins_0000000000000000".into(),
                },
            ))
            .await,
        ),
        "TransferLicense" => code(
            p.transfer_license(session_req(
                session,
                acc::TransferLicenseRequest {
                    license_id: w.license_a.clone(),
                    to_customer_id: "cus_0000000000000000".into(),
                },
            ))
            .await,
        ),
        "ReturnConcurrentLicense" => code(
            p.return_concurrent_license(session_req(
                session,
                acc::ReturnConcurrentLicenseRequest {
                    license_id: w.floating_a.clone(),
                    new_seats: -5,
                    ..Default::default()
                },
            ))
            .await,
        ),
        "RegenerateActivationPassword" => code(
            p.regenerate_activation_password(session_req(
                session,
                acc::RegenerateActivationPasswordRequest { license_id: "lic_0000000000000000".into() },
            ))
            .await,
        ),
        "AssociateLicense" => code(
            p.associate_license(session_req(
                session,
                acc::AssociateLicenseRequest { license_key: w.floating_key_b.clone() },
            ))
            .await,
        ),
        "ListRecurringPayments" => {
            code(p.list_recurring_payments(session_req(session, acc::ListRecurringPaymentsRequest {})).await)
        }
        "SetLicenseeName" => code(
            p.set_licensee_name(session_req(
                session,
                acc::SetLicenseeNameRequest { license_id: w.license_a.clone(), licensee_name: "A".into() },
            ))
            .await,
        ),
        // Refused for the owner too (a wrong current password), so nothing changes.
        "ChangePassword" => code(
            p.change_password(session_req(
                session,
                acc::ChangePasswordRequest { current_password: "wrong".into(), new_password: "x".repeat(12) },
            ))
            .await,
        ),
        "UpdateContactDetails" => code(
            p.update_contact_details(session_req(
                session,
                acc::UpdateContactDetailsRequest { contact_email: "not an email".into(), ..Default::default() },
            ))
            .await,
        ),
        other => panic!("no cell for {other}"),
    }
}

/// (rpc, as the owner A, as another customer B on A's resources)
const PORTAL_CELLS: &[(&str, Code, Code)] = &[
    ("GetAccount", Code::Ok, Code::Ok),
    ("ListMyLicenses", Code::Ok, Code::Ok),
    ("GetMyLicense", Code::Ok, Code::NotFound),
    ("ListMyLeases", Code::Ok, Code::NotFound),
    ("GetActivationPassword", Code::Ok, Code::NotFound),
    ("GetMySeatPolicy", Code::Ok, Code::NotFound),
    ("GetMyUsageReport", Code::Ok, Code::NotFound),
    ("GetMyMeterUsage", Code::Ok, Code::NotFound),
    ("ListReceipts", Code::Ok, Code::Ok),
    ("ListMyAuditEvents", Code::Ok, Code::Ok),
    ("DeactivateInstallation", Code::NotFound, Code::NotFound),
    ("TransferLicense", Code::NotFound, Code::NotFound),
    ("ReturnConcurrentLicense", Code::InvalidArgument, Code::NotFound),
    ("RegenerateActivationPassword", Code::NotFound, Code::NotFound),
    ("AssociateLicense", Code::FailedPrecondition, Code::Ok),
    ("ListRecurringPayments", Code::Ok, Code::Ok),
    ("SetLicenseeName", Code::Ok, Code::NotFound),
    ("ChangePassword", Code::InvalidArgument, Code::InvalidArgument),
    ("UpdateContactDetails", Code::InvalidArgument, Code::InvalidArgument),
];

async fn world(app: &TestApp) -> World {
    let f = fixture(app).await;
    let customer_b = create_customer(app, "B", &format!("{}@b.example", rand_suffix())).await;
    let (license_a, key_a, _) = issue_license(app, &f, LicenseKind::NodeLocked, 3, |r| r.associate = true).await;
    let (floating_a, floating_key_a, _) =
        issue_license(app, &f, LicenseKind::Concurrent, 3, |r| r.associate = true).await;
    let (floating_b, floating_key_b, _) = issue_license(app, &f, LicenseKind::Concurrent, 3, |r| {
        r.customer_id = customer_b.clone();
        r.associate = true;
    })
    .await;
    let channel = app.channel().await;
    let installation_a = ActivationServiceClient::new(channel.clone())
        .activate(act::ActivateRequest {
            credentials: Some(act::LicenseCredentials {
                credential: Some(act::license_credentials::Credential::LicenseKey(key_a.clone())),
            }),
            machine: Some(act::MachineInfo {
                fingerprint: vec![FingerprintComponent { name: "machine-id".into(), value: "a-1".into() }],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .activation
        .unwrap()
        .installation_id;
    let lease_a = SeatServiceClient::new(channel.clone())
        .checkout(seat::CheckoutRequest {
            credentials: Some(seat::SeatCredentials {
                credential: Some(seat::seat_credentials::Credential::LicenseKey(floating_key_a.clone())),
            }),
            client_instance_id: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .lease_id;
    let login = |id: String| {
        let channel = channel.clone();
        async move {
            AccountServiceClient::new(channel)
                .login(acc::LoginRequest { login: id, password: CUSTOMER_PASSWORD.into() })
                .await
                .unwrap()
                .into_inner()
                .session_token
        }
    };
    World {
        session_a: login(f.customer_id.clone()).await,
        session_b: login(customer_b.clone()).await,
        channel,
        product: f.product,
        customer_a: f.customer_id,
        customer_b,
        license_a,
        installation_a,
        floating_a,
        lease_a,
        floating_b,
        floating_key_b,
    }
}

#[tokio::test]
async fn every_rpc_answers_each_caller_with_the_exact_status() {
    let app = spawn_app(Backend::Sqlite).await;
    let w = world(&app).await;

    for rpc in ADMIN_RPCS {
        for who in [Who::Nobody, Who::WrongToken, Who::Customer, Who::OtherCustomer, Who::Admin] {
            let expected = match who {
                Who::Admin => admin_expected(rpc),
                Who::Customer if OWNER_OR_ADMIN_RPCS.contains(rpc) => Code::Ok,
                Who::OtherCustomer if OWNER_OR_ADMIN_RPCS.contains(rpc) => Code::NotFound,
                _ => Code::Unauthenticated,
            };
            assert_eq!(admin_rpc(rpc, who, &w).await, expected, "{rpc} as {who:?}");
        }
    }

    for (rpc, owner, other) in PORTAL_CELLS {
        assert_eq!(portal_rpc(rpc, None, &w).await, Code::Unauthenticated, "{rpc} as nobody");
        assert_eq!(
            portal_rpc(rpc, Some("ses_WRONG00000000000000000000000000"), &w).await,
            Code::Unauthenticated,
            "{rpc} with a wrong session"
        );
        assert_eq!(portal_rpc(rpc, Some(ADMIN_TOKEN), &w).await, Code::Unauthenticated, "{rpc} with the admin token");
        assert_eq!(portal_rpc(rpc, Some(&w.session_b), &w).await, *other, "{rpc} as customer B on A's resources");
        assert_eq!(portal_rpc(rpc, Some(&w.session_a), &w).await, *owner, "{rpc} as customer A");
    }

    // Product calls with another license's key or lease.
    let mut activation = ActivationServiceClient::new(w.channel.clone());
    let key = |k: &str| {
        Some(act::LicenseCredentials {
            credential: Some(act::license_credentials::Credential::LicenseKey(k.to_owned())),
        })
    };
    let machine_a = vec![FingerprintComponent { name: "machine-id".into(), value: "a-1".into() }];
    // ActivateTrial needs no credentials, like Activate with a key: any caller is answered on
    // the merits (this product offers no trial), never UNAUTHENTICATED.
    for token in [None, Some(ADMIN_TOKEN), Some(w.session_a.as_str())] {
        let trial = act::ActivateTrialRequest {
            product_code: w.product.clone(),
            machine: Some(act::MachineInfo { fingerprint: machine_a.clone(), ..Default::default() }),
        };
        let answer = activation.activate_trial(session_req(token, trial)).await;
        assert_eq!(code(answer), Code::FailedPrecondition, "ActivateTrial with {token:?}");
    }
    let deactivate_with_b = activation
        .deactivate(act::DeactivateRequest {
            target: Some(act::deactivate_request::Target::LicenseAndMachine(act::LicenseAndMachine {
                credentials: key(&w.floating_key_b),
                fingerprint: machine_a.clone(),
            })),
        })
        .await;
    assert_eq!(
        code(deactivate_with_b),
        Code::FailedPrecondition,
        "B's (floating) key cannot return A's node-locked machine"
    );
    // A's installation named by its ID: the ID is no credential. Nobody, a wrong or admin token,
    // customer B's session and B's key are all refused; A's session works (below, last).
    let by_id = |token: Option<&str>| {
        let message = act::DeactivateRequest {
            target: Some(act::deactivate_request::Target::InstallationId(w.installation_a.clone())),
        };
        match token {
            Some(token) => with_token(token, message),
            None => tonic::Request::new(message),
        }
    };
    for (token, expected) in [
        (None, Code::Unauthenticated),
        (Some("ses_WRONG00000000000000000000000000"), Code::Unauthenticated),
        (Some(ADMIN_TOKEN), Code::Unauthenticated),
        (Some(w.session_b.as_str()), Code::NotFound),
    ] {
        assert_eq!(code(activation.deactivate(by_id(token)).await), expected, "Deactivate by ID with {token:?}");
    }
    let with_b_key = activation
        .deactivate(act::DeactivateRequest {
            target: Some(act::deactivate_request::Target::LicenseAndInstallation(act::LicenseAndInstallation {
                credentials: key(&w.floating_key_b),
                installation_id: w.installation_a.clone(),
            })),
        })
        .await;
    assert_eq!(code(with_b_key), Code::FailedPrecondition, "B's (floating) key cannot free A's installation");
    let refresh_with_b = activation
        .refresh_certificate(act::RefreshCertificateRequest {
            credentials: key(&w.floating_key_b),
            fingerprint: machine_a.clone(),
        })
        .await;
    assert_eq!(code(refresh_with_b), Code::FailedPrecondition);
    // A product's (floating) key activates no on-premises server: only a server license's does.
    let server_with_b = activation
        .activate_server(act::ActivateServerRequest {
            credentials: key(&w.floating_key_b),
            machine: Some(act::MachineInfo { fingerprint: machine_a.clone(), ..Default::default() }),
        })
        .await;
    assert_eq!(code(server_with_b), Code::FailedPrecondition, "a floating key activates no server");
    // Nor does it report a server's usage, even naming A's installation.
    let now = now_s();
    let report_with_b = activation
        .report_server_usage(act::ReportServerUsageRequest {
            credentials: key(&w.floating_key_b),
            installation_id: w.installation_a.clone(),
            serial: 1,
            period_start: ts(now - 3600),
            period_end: ts(now),
            grants: vec![act::ServerGrantUsage {
                product_code: w.product.clone(),
                kind: "floating".into(),
                ..Default::default()
            }],
        })
        .await;
    assert_eq!(code(report_with_b), Code::FailedPrecondition, "a floating key reports no server's usage");
    // A key names its own license: B's key cannot count against A's meter, nor read it.
    app.admin()
        .await
        .set_license_meter(admin_req(acc::SetLicenseMeterRequest {
            license_id: w.license_a.clone(),
            meter: Some(exports_meter()),
        }))
        .await
        .unwrap();
    let use_with_b = activation
        .record_usage(act::RecordUsageRequest {
            credentials: key(&w.floating_key_b),
            meter: "exports".into(),
            amount: 1,
            idempotency_key: "auth-matrix".into(),
        })
        .await;
    assert_eq!(code(use_with_b), Code::NotFound, "B's key has no meter of A's");
    let a_usage = app
        .admin()
        .await
        .get_license_meter_usage(admin_req(acc::GetLicenseMeterUsageRequest {
            license_id: w.license_a.clone(),
            as_csv: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a_usage.current.iter().map(|u| u.used).sum::<i64>(), 0, "A's meter untouched");
    let heartbeat_with_b = activation
        .heartbeat(act::HeartbeatRequest { credentials: key(&w.floating_key_b), fingerprint: machine_a.clone() })
        .await;
    assert_eq!(code(heartbeat_with_b), Code::FailedPrecondition, "B's (floating) key cannot keep A's machine alive");
    let mut seats = SeatServiceClient::new(w.channel.clone());
    let hb = seats
        .heartbeat(seat::HeartbeatRequest {
            license_id: w.floating_b.clone(),
            lease_id: w.lease_a.clone(),
            lease_token: String::new(),
        })
        .await;
    assert_eq!(code(hb), Code::NotFound, "A's lease named under B's license");
    let checkin = seats
        .checkin(seat::CheckinRequest { license_id: w.floating_b.clone(), lease_id: w.lease_a.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(!checkin.released, "B's license cannot release A's lease");
    assert_eq!(
        code(
            seats
                .heartbeat(seat::HeartbeatRequest {
                    license_id: w.floating_a.clone(),
                    lease_id: w.lease_a.clone(),
                    lease_token: String::new()
                })
                .await
        ),
        Code::Ok,
        "A's lease lives on"
    );
    let installations = app
        .admin()
        .await
        .get_activation_history(admin_req(acc::GetActivationHistoryRequest { license_id: w.license_a.clone() }))
        .await
        .unwrap()
        .into_inner()
        .installations;
    assert!(
        installations.iter().any(|i| i.installation_id == w.installation_a && i.active),
        "A's installation untouched"
    );
    assert_eq!(code(activation.deactivate(by_id(Some(&w.session_a))).await), Code::Ok, "A's own session frees it");
}
