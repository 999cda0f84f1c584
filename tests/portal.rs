//! The customer portal (AccountService) end to end over gRPC, on SQLite and PostgreSQL.

use crate::common::*;
use licensing_domain::clock::{Clock, ManualClock, SystemClock, DAY, MINUTE};
use licensing_proto::account::v1 as pb;
use licensing_proto::account::v1::account_service_client::AccountServiceClient;
use licensing_proto::activation::v1 as act;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{FingerprintComponent, LicenseKind, LicenseStatus};
use licensing_proto::seat::v1 as seat;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

/// A second customer with a password, and its ID.
async fn other_customer(app: &TestApp, email: &str) -> String {
    create_customer(app, "Globex", email).await
}

fn machine(id: &str) -> Vec<FingerprintComponent> {
    vec![FingerprintComponent { name: "machine-id".into(), value: id.into() }]
}

async fn activate(app: &TestApp, key: &str, id: &str) -> String {
    ActivationServiceClient::new(app.channel().await)
        .activate(act::ActivateRequest {
            credentials: Some(act::LicenseCredentials {
                credential: Some(act::license_credentials::Credential::LicenseKey(key.into())),
            }),
            machine: Some(act::MachineInfo {
                fingerprint: machine(id),
                machine_name: format!("pc-{id}"),
                platform: "linux".into(),
                product_version: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .activation
        .unwrap()
        .installation_id
}

/// The newest reset token mailed to `email` (the embedded default writes mail to files).
async fn mailed_reset_token(app: &TestApp, email: &str) -> Option<String> {
    for _ in 0..50 {
        if let Ok(entries) = std::fs::read_dir(app.data_dir.path().join("outbox")) {
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if text.contains(&format!("To: {email}")) {
                    let token = text.split_whitespace().find(|w| w.starts_with("rst_")).map(str::to_owned);
                    let _ = std::fs::remove_file(entry.path());
                    return token;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn login_sessions_logout_and_rate_limits() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let customer = app
            .admin()
            .await
            .get_customer(admin_req(pb::GetCustomerRequest { customer_id: f.customer_id.clone() }))
            .await
            .unwrap()
            .into_inner();
        let email = customer.customer.unwrap().contact_email;

        let by_id = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        assert!(by_id.starts_with("ses_") && by_id.len() >= 30);
        let by_email = login(&app, &email.to_uppercase(), CUSTOMER_PASSWORD).await.unwrap();
        let mut p = portal(&app).await;
        let me = p
            .get_account(with_token(&by_email, pb::GetAccountRequest {}))
            .await
            .unwrap()
            .into_inner()
            .customer
            .unwrap();
        assert_eq!(me.customer_id, f.customer_id);

        let wrong = login(&app, &f.customer_id, "not the password").await.unwrap_err();
        let unknown = login(&app, "nobody@nowhere.example", "not the password").await.unwrap_err();
        assert_eq!(
            (wrong.code(), wrong.message()),
            (unknown.code(), unknown.message()),
            "{backend:?}: no account enumeration"
        );
        assert_eq!((wrong.code(), reason(&wrong)), (Code::Unauthenticated, "LOGIN_FAILED".into()));

        let err = p.get_account(tonic::Request::new(pb::GetAccountRequest {})).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::Unauthenticated, "SESSION_MISSING".into()));
        let err = p
            .get_account(with_token("ses_FORGED0000000000000000000000000", pb::GetAccountRequest {}))
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::Unauthenticated, "SESSION_INVALID".into()));
        let err = p.get_account(with_token(ADMIN_TOKEN, pb::GetAccountRequest {})).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "an admin token is not a session");

        p.logout(with_token(&by_id, pb::LogoutRequest {})).await.unwrap();
        let err = p.get_account(with_token(&by_id, pb::GetAccountRequest {})).await.unwrap_err();
        assert_eq!(reason(&err), "SESSION_INVALID", "logged out");
        p.get_account(with_token(&by_email, pb::GetAccountRequest {})).await.expect("other sessions live on");

        // The guesser at 127.0.0.1 (five wrong passwords by now) waits, even with the right one;
        // the owner at another address, who has not been guessing, logs in at once.
        for _ in 0..4 {
            login(&app, &f.customer_id, "still wrong").await.unwrap_err();
        }
        let err = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::ResourceExhausted, "TOO_MANY_ATTEMPTS".into()), "{backend:?}");
        assert!(err.metadata().get("retry-after").is_some());
        let owner = AccountServiceClient::new(app.channel_from("127.0.0.2".parse().unwrap()).await)
            .login(pb::LoginRequest { login: f.customer_id.clone(), password: CUSTOMER_PASSWORD.into() })
            .await;
        assert!(owner.is_ok(), "{backend:?}: the owner is not locked out: {:?}", owner.err());

        let err = login(&app, "not an email", "x").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let events = p
            .list_my_audit_events(with_token(&by_email, pb::ListMyAuditEventsRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .events;
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        assert!(
            actions.contains(&"portal.login")
                && actions.contains(&"portal.login_failed")
                && actions.contains(&"portal.logout"),
            "{actions:?}"
        );
        assert!(events.iter().all(|e| !e.details_json.contains(CUSTOMER_PASSWORD)));
    }
}

#[tokio::test]
async fn password_reset_by_mail_ends_every_session() {
    for backend in backends().await {
        let clock = ManualClock::new(SystemClock.now());
        let app = spawn_app_with_clock(backend, clock.clone()).await;
        let f = fixture(&app).await;
        let email = app
            .admin()
            .await
            .get_customer(admin_req(pb::GetCustomerRequest { customer_id: f.customer_id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .customer
            .unwrap()
            .contact_email;
        let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let mut p = portal(&app).await;

        // The same answer for an account that does not exist.
        p.request_password_reset(pb::RequestPasswordResetRequest { login: "ghost@nowhere.example".into() })
            .await
            .unwrap();
        p.request_password_reset(pb::RequestPasswordResetRequest { login: email.clone() }).await.unwrap();
        let token = mailed_reset_token(&app, &email).await.expect("a reset mail in the outbox");

        let err = p
            .reset_password(pb::ResetPasswordRequest { reset_token: token.clone(), new_password: "short".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "a weak password is refused and the token stays usable");
        p.reset_password(pb::ResetPasswordRequest {
            reset_token: token.clone(),
            new_password: "a brand new passphrase".into(),
        })
        .await
        .unwrap();
        let err = p.get_account(with_token(&session, pb::GetAccountRequest {})).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{backend:?}: resetting ends every session");
        assert_eq!(login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap_err().code(), Code::Unauthenticated);
        login(&app, &f.customer_id, "a brand new passphrase").await.expect("the new password works");

        let err = p
            .reset_password(pb::ResetPasswordRequest {
                reset_token: token.clone(),
                new_password: "another new passphrase".into(),
            })
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "RESET_TOKEN_USED".into()));
        let err = p
            .reset_password(pb::ResetPasswordRequest {
                reset_token: "rst_NOSUCHTOKEN00000000000000000000".into(),
                new_password: "another new passphrase".into(),
            })
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::NotFound, "RESET_TOKEN_INVALID".into()));
        let err = p
            .reset_password(pb::ResetPasswordRequest {
                reset_token: "nonsense".into(),
                new_password: "another new passphrase".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        p.request_password_reset(pb::RequestPasswordResetRequest { login: f.customer_id.clone() }).await.unwrap();
        let late = mailed_reset_token(&app, &email).await.expect("a second mail");
        clock.advance(31 * MINUTE);
        let err = p
            .reset_password(pb::ResetPasswordRequest {
                reset_token: late,
                new_password: "another new passphrase".into(),
            })
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "RESET_TOKEN_EXPIRED".into()), "{backend:?}");
    }
}

#[tokio::test]
async fn licenses_installations_history_leases_and_manual_deactivation() {
    for backend in backends().await {
        let clock = ManualClock::new(SystemClock.now());
        let app = spawn_app_with_clock(backend, clock.clone()).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 3, |r| {
            r.associate = true;
            r.allowed_deactivations = 1;
            r.expires_at = ts(now_s() + 2 * 86_400);
        })
        .await;
        let (floating_id, floating_key, _) =
            issue_license(&app, &f, LicenseKind::Concurrent, 2, |r| r.associate = true).await;
        let (unassociated, _, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
        let s = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let mut p = portal(&app).await;

        let mine = p
            .list_my_licenses(with_token(&s, pb::ListMyLicensesRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .licenses;
        let ids: Vec<&str> = mine.iter().map(|l| l.license_id.as_str()).collect();
        assert!(ids.contains(&license_id.as_str()) && ids.contains(&floating_id.as_str()));
        assert!(!ids.contains(&unassociated.as_str()), "{backend:?}: only associated licenses are listed");

        let lost = activate(&app, &key, "lost-laptop").await;
        activate(&app, &key, "desk").await;
        let details = p
            .get_my_license(with_token(
                &s,
                pb::GetMyLicenseRequest { license_id: license_id.clone(), ..Default::default() },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(details.installations.len(), 2);
        assert_eq!(details.license.unwrap().activations_used, 2);
        assert_eq!(details.history.iter().filter(|h| h.action == "activate").count(), 2);

        let g = SeatServiceClient::new(app.channel().await)
            .checkout(seat::CheckoutRequest {
                credentials: Some(seat::SeatCredentials {
                    credential: Some(seat::seat_credentials::Credential::LicenseKey(floating_key.clone())),
                }),
                user: "alice".into(),
                client_instance_id: "c1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .grant
            .unwrap();
        let leases = p
            .list_my_leases(with_token(&s, pb::ListMyLeasesRequest { license_id: floating_id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .leases;
        assert_eq!(
            (leases.len(), leases[0].lease_id.as_str(), leases[0].user.as_str()),
            (1, g.lease_id.as_str(), "alice")
        );

        // The license expires; the portal can still free the lost machine (it counts by default).
        clock.advance(3 * DAY);
        let s = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.expect("sessions last hours, so log in again");
        let d = p
            .deactivate_installation(with_token(
                &s,
                pb::DeactivateInstallationRequest { license_id: license_id.clone(), installation_id: lost.clone() },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((d.installation.unwrap().active, d.deactivations_left), (false, 0), "{backend:?}");
        let err = p
            .deactivate_installation(with_token(
                &s,
                pb::DeactivateInstallationRequest { license_id: license_id.clone(), installation_id: lost.clone() },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "already deactivated");
        let desk =
            get_my_installations(&mut p, &s, &license_id).await.into_iter().find(|i| i.active).unwrap().installation_id;
        let err = p
            .deactivate_installation(with_token(
                &s,
                pb::DeactivateInstallationRequest { license_id: license_id.clone(), installation_id: desk.clone() },
            ))
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::ResourceExhausted, "DEACTIVATION_LIMIT_REACHED".into()));
        // The vendor decides portal deactivations do not count: then it goes through.
        app.admin()
            .await
            .set_portal_deactivation_policy(admin_req(pb::SetPortalDeactivationPolicyRequest {
                license_id: license_id.clone(),
                portal_deactivation_counts: false,
            }))
            .await
            .unwrap();
        p.deactivate_installation(with_token(
            &s,
            pb::DeactivateInstallationRequest { license_id: license_id.clone(), installation_id: desk },
        ))
        .await
        .unwrap();
        let l = get_license(&app, &license_id).await;
        assert_eq!((l.activations_used, l.deactivations_used), (0, 1), "{backend:?}");
        let history = p
            .get_my_license(with_token(
                &s,
                pb::GetMyLicenseRequest { license_id: license_id.clone(), ..Default::default() },
            ))
            .await
            .unwrap()
            .into_inner()
            .history;
        assert_eq!(history.iter().filter(|h| h.action == "portal_deactivate").count(), 2);
    }
}

/// A license's details page its installations and its history (newest first), so a site
/// license of 100,000 installations is shown a page at a time; every installation and every
/// line comes exactly once across the pages.
#[tokio::test]
async fn license_details_page_installations_and_history() {
    for backend in backends().await {
        // A clock that stands still: every activation at the same millisecond, so pages must
        // break ties in activation time.
        let clock = ManualClock::new(SystemClock.now());
        let app = spawn_app_with_clock(backend, clock.clone()).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 10, |r| r.associate = true).await;
        let mut installed = vec![];
        for i in 0..7 {
            installed.push(activate(&app, &key, &format!("site-{i}")).await);
            if i == 3 {
                clock.advance(MINUTE);
            }
        }
        let s = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let p = portal(&app).await;
        let details = |installations_token: &str, history_token: &str| {
            let request = pb::GetMyLicenseRequest {
                license_id: license_id.clone(),
                installations_page: Some(licensing_proto::common::v1::PageRequest {
                    page_size: 3,
                    page_token: installations_token.into(),
                }),
                history_page: Some(licensing_proto::common::v1::PageRequest {
                    page_size: 2,
                    page_token: history_token.into(),
                }),
            };
            let mut p = p.clone();
            let s = s.clone();
            async move { p.get_my_license(with_token(&s, request)).await.map(|r| r.into_inner()) }
        };
        // Both lists page at once; each is followed until its token comes back empty.
        let (mut seen, mut history, mut pages) = (vec![], vec![], (0, 0));
        let (mut installations_token, mut history_token) = (String::new(), String::new());
        let (mut installations_done, mut history_done) = (false, false);
        while !(installations_done && history_done) {
            let page = details(&installations_token, &history_token).await.unwrap();
            assert!(page.installations.len() <= 3 && page.history.len() <= 2, "{backend:?}");
            if !installations_done {
                pages.0 += 1;
                seen.extend(page.installations.iter().map(|i| i.installation_id.clone()));
                installations_token = page.installations_next_page_token;
                installations_done = installations_token.is_empty();
            }
            if !history_done {
                pages.1 += 1;
                history.extend(page.history.iter().map(|h| h.installation_id.clone()));
                history_token = page.history_next_page_token;
                history_done = history_token.is_empty();
            }
            assert!(pages.1 < 10, "{backend:?}: the pages never end");
        }
        assert_eq!(pages, (3, 4), "{backend:?}: 7 installations 3 a page, 7 lines of history 2 a page");
        let mut ids = seen.clone();
        ids.sort();
        let mut expected = installed.clone();
        expected.sort();
        assert_eq!(ids, expected, "{backend:?}: each installation once");
        assert!(seen[..3].iter().all(|id| installed[4..].contains(id)), "{backend:?}: newest first");
        history.reverse();
        assert_eq!(history, installed, "{backend:?}: the history newest first");
        // Without a page, the first page of the default size.
        let all = get_my_installations(&mut portal(&app).await, &s, &license_id).await;
        assert_eq!(all.len(), 7);
        // A token this list did not give is refused, whoever sends it.
        for bad in ["lic_0000000000000000", "12.ins_x", "\u{0}"] {
            let err = details(bad, "").await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {bad}");
            assert!(err.message().starts_with("installations_page.page_token"), "{}", err.message());
        }
        let err = details("", "yesterday").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}

async fn get_my_installations(
    p: &mut AccountServiceClient<Channel>,
    session: &str,
    license_id: &str,
) -> Vec<pb::Installation> {
    p.get_my_license(with_token(
        session,
        pb::GetMyLicenseRequest { license_id: license_id.into(), ..Default::default() },
    ))
    .await
    .unwrap()
    .into_inner()
    .installations
}

#[tokio::test]
async fn activation_passwords_and_returning_a_concurrent_license() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, issued_password) =
            issue_license(&app, &f, LicenseKind::Concurrent, 2, |r| r.associate = true).await;
        let s = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let mut p = portal(&app).await;
        let shown = p
            .get_activation_password(with_token(
                &s,
                pb::GetActivationPasswordRequest { license_id: license_id.clone() },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(shown.activation_password, issued_password);
        let fresh = p
            .regenerate_activation_password(with_token(
                &s,
                pb::RegenerateActivationPasswordRequest { license_id: license_id.clone() },
            ))
            .await
            .unwrap()
            .into_inner()
            .activation_password;
        assert_ne!(fresh, issued_password);
        let mut seats = SeatServiceClient::new(app.channel().await);
        let by_password = |password: &str, client: &str| seat::CheckoutRequest {
            credentials: Some(seat::SeatCredentials {
                credential: Some(seat::seat_credentials::Credential::LicenseIdAndPassword(
                    seat::LicenseIdAndPassword { license_id: license_id.clone(), password: password.into() },
                )),
            }),
            client_instance_id: client.into(),
            ..Default::default()
        };
        let err = seats.checkout(by_password(&issued_password, "old")).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{backend:?}: the old password stops working at once");
        seats.checkout(by_password(&fresh, "new")).await.expect("the new password works");

        // A customer cannot give itself seats by returning a license: more seats, or a split
        // that adds up to more (or fewer) than the 2 bought, are refused and change nothing.
        for (new_seats, split) in [(5, vec![]), (0, vec![2, 1]), (0, vec![1]), (0, vec![2, 0]), (2, vec![2])] {
            let err = p
                .return_concurrent_license(with_token(
                    &s,
                    pb::ReturnConcurrentLicenseRequest {
                        license_id: license_id.clone(),
                        new_seats,
                        split: split.clone(),
                    },
                ))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {new_seats} {split:?}: {}", err.message());
        }
        seats.checkout(by_password(&fresh, "still")).await.expect("the license is untouched");
        // The 2 seats bought, re-split as two licenses of 1.
        let returned = p
            .return_concurrent_license(with_token(
                &s,
                pb::ReturnConcurrentLicenseRequest {
                    license_id: license_id.clone(),
                    split: vec![1, 1],
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let replacement = returned.replacement.unwrap();
        assert_eq!(returned.retired.unwrap().status, LicenseStatus::Retired as i32);
        assert_eq!((replacement.seats, replacement.replaces_license_id.as_str()), (1, license_id.as_str()));
        assert_eq!(returned.reissued.len(), 2, "{backend:?}");
        let second = &returned.reissued[1];
        assert_eq!(second.license.as_ref().unwrap().seats, 1);
        assert_ne!(second.license_key, returned.license_key);
        let second_checkout = seat::CheckoutRequest {
            credentials: Some(seat::SeatCredentials {
                credential: Some(seat::seat_credentials::Credential::LicenseKey(second.license_key.clone())),
            }),
            client_instance_id: "second".into(),
            ..Default::default()
        };
        seats.checkout(second_checkout).await.expect("the second new license works");
        let old_key_checkout = seat::CheckoutRequest {
            credentials: Some(seat::SeatCredentials {
                credential: Some(seat::seat_credentials::Credential::LicenseKey(key.clone())),
            }),
            client_instance_id: "orphan".into(),
            ..Default::default()
        };
        let err = seats.checkout(old_key_checkout).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err)),
            (Code::FailedPrecondition, "RETIRED".into()),
            "{backend:?}: the old Activation ID stops working"
        );
        let new_key_checkout = seat::CheckoutRequest {
            credentials: Some(seat::SeatCredentials {
                credential: Some(seat::seat_credentials::Credential::LicenseKey(returned.license_key.clone())),
            }),
            client_instance_id: "new".into(),
            ..Default::default()
        };
        seats.checkout(new_key_checkout).await.expect("the replacement works");
        let err = p
            .regenerate_activation_password(with_token(
                &s,
                pb::RegenerateActivationPasswordRequest { license_id: license_id.clone() },
            ))
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "LICENSE_RETIRED".into()));
        let err = p
            .return_concurrent_license(with_token(
                &s,
                pb::ReturnConcurrentLicenseRequest {
                    license_id: replacement.license_id.clone(),
                    new_seats: -1,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn association_transfer_receipts_and_support_returns() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let other =
            other_customer(&app, &format!("{}@globex.example", licensing_domain::ids::new_id("g").to_lowercase()))
                .await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| {
            r.payment = Some(pb::Payment { amount_minor: 49_900, currency: "EUR".into(), recurring_months: 12 });
        })
        .await;
        let a = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let b = login(&app, &other, CUSTOMER_PASSWORD).await.unwrap();
        let mut p = portal(&app).await;

        let err = p
            .associate_license(with_token(&a, pb::AssociateLicenseRequest { license_key: "ABCDE".into() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let l = p
            .associate_license(with_token(&a, pb::AssociateLicenseRequest { license_key: key.to_lowercase() }))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert_eq!(l.associated_customer_id, f.customer_id);
        let err = p
            .associate_license(with_token(&b, pb::AssociateLicenseRequest { license_key: key.clone() }))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err)),
            (Code::FailedPrecondition, "LICENSE_ASSOCIATED_ELSEWHERE".into()),
            "{backend:?}"
        );

        let err = p
            .transfer_license(with_token(
                &a,
                pb::TransferLicenseRequest { license_id: license_id.clone(), to_customer_id: f.customer_id.clone() },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "transfer to the same account");
        let err = p
            .transfer_license(with_token(
                &a,
                pb::TransferLicenseRequest {
                    license_id: license_id.clone(),
                    to_customer_id: "cus_0000000000000000".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::NotFound, "CUSTOMER_NOT_FOUND".into()));
        p.transfer_license(with_token(
            &a,
            pb::TransferLicenseRequest { license_id: license_id.clone(), to_customer_id: other.clone() },
        ))
        .await
        .unwrap();
        let of_b = p
            .list_my_licenses(with_token(&b, pb::ListMyLicensesRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .licenses;
        assert_eq!(of_b.len(), 1);
        let of_a = p
            .list_my_licenses(with_token(&a, pb::ListMyLicensesRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .licenses;
        assert!(of_a.is_empty(), "{backend:?}");
        let b_audit = p
            .list_my_audit_events(with_token(&b, pb::ListMyAuditEventsRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(b_audit.iter().any(|e| e.action == "portal.license_received"));

        // Receipts: the issue payment, then a recurring renewal.
        app.admin()
            .await
            .renew_license(admin_req(pb::RenewLicenseRequest {
                license_id: license_id.clone(),
                expires_at: ts(now_s() + 800 * 86_400),
                payment: Some(pb::Payment { amount_minor: 19_900, currency: "EUR".into(), recurring_months: 12 }),
            }))
            .await
            .unwrap();
        let err = app
            .admin()
            .await
            .renew_license(admin_req(pb::RenewLicenseRequest {
                license_id: license_id.clone(),
                expires_at: ts(now_s() + 900 * 86_400),
                payment: Some(pb::Payment { amount_minor: 1, currency: "euro".into(), recurring_months: 0 }),
            }))
            .await
            .unwrap_err();
        assert_eq!((err.code(), err.message().starts_with("payment.currency")), (Code::InvalidArgument, true));
        let receipts = p
            .list_receipts(with_token(&a, pb::ListReceiptsRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .receipts;
        let kinds: Vec<&str> = receipts.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds.len(), 2, "{backend:?}: {kinds:?}");
        assert!(kinds.contains(&"issue") && kinds.contains(&"renewal"));
        assert!(receipts.iter().all(|r| r.next_renewal_at.is_some() && r.currency == "EUR"));
        let none_for_b = p
            .list_receipts(with_token(&b, pb::ListReceiptsRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .receipts;
        assert!(none_for_b.is_empty(), "receipts belong to the purchasing customer");

        // Support returns the license for a customer whose machine is gone: activations freed, dissociated.
        activate(&app, &key, "gone").await;
        let l = app
            .admin()
            .await
            .return_license(admin_req(pb::ReturnLicenseRequest {
                license_id: license_id.clone(),
                reason: "machine stolen".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert_eq!(
            (l.activations_used, l.associated_customer_id.as_str(), l.deactivations_used),
            (0, "", 0),
            "{backend:?}"
        );
        app.admin()
            .await
            .associate_license(admin_req(pb::AdminServiceAssociateLicenseRequest {
                license_id: license_id.clone(),
                customer_id: f.customer_id.clone(),
            }))
            .await
            .unwrap();
        assert_eq!(
            p.list_my_licenses(with_token(&a, pb::ListMyLicensesRequest { page: None }))
                .await
                .unwrap()
                .into_inner()
                .licenses
                .len(),
            1
        );
    }
}

#[tokio::test]
async fn a_customer_never_sees_or_changes_another_accounts_data() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let victim = f.customer_id.clone();
        let (license_id, key, password) = issue_license(&app, &f, LicenseKind::NodeLocked, 3, |r| {
            r.associate = true;
            r.payment = Some(pb::Payment { amount_minor: 100, currency: "USD".into(), recurring_months: 0 });
        })
        .await;
        let (floating_id, _, _) = issue_license(&app, &f, LicenseKind::Concurrent, 3, |r| r.associate = true).await;
        let installation = activate(&app, &key, "victim-pc").await;
        let attacker =
            other_customer(&app, &format!("{}@evil.example", licensing_domain::ids::new_id("e").to_lowercase())).await;
        let s = login(&app, &attacker, CUSTOMER_PASSWORD).await.unwrap();
        let mut p = portal(&app).await;
        let before = get_license(&app, &license_id).await;
        let before_floating = get_license(&app, &floating_id).await;

        let not_mine = |status: tonic::Status, what: &str| {
            assert!(
                matches!(status.code(), Code::NotFound | Code::PermissionDenied),
                "{backend:?} {what}: {:?} {}",
                status.code(),
                status.message()
            );
        };
        not_mine(
            p.get_my_license(with_token(
                &s,
                pb::GetMyLicenseRequest { license_id: license_id.clone(), ..Default::default() },
            ))
            .await
            .unwrap_err(),
            "GetMyLicense",
        );
        not_mine(
            p.list_my_leases(with_token(&s, pb::ListMyLeasesRequest { license_id: floating_id.clone() }))
                .await
                .unwrap_err(),
            "ListMyLeases",
        );
        not_mine(
            p.deactivate_installation(with_token(
                &s,
                pb::DeactivateInstallationRequest {
                    license_id: license_id.clone(),
                    installation_id: installation.clone(),
                },
            ))
            .await
            .unwrap_err(),
            "DeactivateInstallation",
        );
        not_mine(
            p.get_activation_password(with_token(
                &s,
                pb::GetActivationPasswordRequest { license_id: license_id.clone() },
            ))
            .await
            .unwrap_err(),
            "GetActivationPassword",
        );
        not_mine(
            p.regenerate_activation_password(with_token(
                &s,
                pb::RegenerateActivationPasswordRequest { license_id: license_id.clone() },
            ))
            .await
            .unwrap_err(),
            "RegenerateActivationPassword",
        );
        not_mine(
            p.return_concurrent_license(with_token(
                &s,
                pb::ReturnConcurrentLicenseRequest { license_id: floating_id.clone(), ..Default::default() },
            ))
            .await
            .unwrap_err(),
            "ReturnConcurrentLicense",
        );
        not_mine(
            p.transfer_license(with_token(
                &s,
                pb::TransferLicenseRequest { license_id: license_id.clone(), to_customer_id: attacker.clone() },
            ))
            .await
            .unwrap_err(),
            "TransferLicense",
        );
        let err = p
            .associate_license(with_token(&s, pb::AssociateLicenseRequest { license_key: key.clone() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "associating someone else's license by its key");
        // Lists show only the attacker's own (empty) data.
        assert!(p
            .list_my_licenses(with_token(&s, pb::ListMyLicensesRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .licenses
            .is_empty());
        assert!(p
            .list_receipts(with_token(&s, pb::ListReceiptsRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .receipts
            .is_empty());
        let audit = p
            .list_my_audit_events(with_token(&s, pb::ListMyAuditEventsRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(audit.iter().all(|e| e.subject == attacker), "{backend:?}: only the attacker's own audit entries");
        // A customer on admin RPCs.
        let err = app
            .admin()
            .await
            .get_license(with_token(&s, pb::GetLicenseRequest { license_id: license_id.clone() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);

        // Nothing changed.
        assert_eq!(get_license(&app, &license_id).await, before, "{backend:?}");
        assert_eq!(get_license(&app, &floating_id).await, before_floating);
        let v = login(&app, &victim, CUSTOMER_PASSWORD).await.unwrap();
        let shown = p
            .get_activation_password(with_token(
                &v,
                pb::GetActivationPasswordRequest { license_id: license_id.clone() },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(shown.activation_password, password);
        let installs = get_my_installations(&mut p, &v, &license_id).await;
        assert!(installs.iter().all(|i| i.active));
    }
}

/// A minimal SMTP server on loopback that keeps what it receives.
async fn fake_smtp() -> (u16, std::sync::Arc<tokio::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(body) = data.as_mut() {
                        if line == "." {
                            store.lock().await.push(data.take().unwrap());
                            write.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            body.push_str(&line);
                            body.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 fake\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 OK\r\n",
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, received)
}

#[tokio::test]
async fn reset_mail_goes_out_through_smtp_when_configured() {
    let (port, received) = fake_smtp().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, dir.path()).await;
    env.insert("LICENSING_SMTP_URL".into(), format!("smtp://127.0.0.1:{port}"));
    env.insert("LICENSING_MAIL_FROM".into(), "licensing@vendor.example".into());
    env.insert("LICENSING_RESET_URL".into(), "https://portal.vendor.example/reset".into());
    let app = spawn_with_env(Backend::Sqlite, dir, env).await;
    let f = fixture(&app).await;
    let mut p = portal(&app).await;
    p.request_password_reset(pb::RequestPasswordResetRequest { login: f.customer_id.clone() }).await.unwrap();
    let mut mail = None;
    for _ in 0..100 {
        if let Some(m) = received.lock().await.first().cloned() {
            mail = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Quoted-printable, as mail clients decode it: soft line breaks and `=3D`.
    let mail = mail.expect("the reset mail reached the SMTP server").replace("=\n", "").replace("=3D", "=");
    assert!(mail.contains("From: licensing@vendor.example"), "{mail}");
    assert!(mail.contains("https://portal.vendor.example/reset?token=rst_"), "{mail}");
    let token = mail.split_whitespace().find(|w| w.starts_with("rst_")).unwrap().to_owned();
    p.reset_password(pb::ResetPasswordRequest { reset_token: token, new_password: "mailed and reset ok".into() })
        .await
        .unwrap();
    login(&app, &f.customer_id, "mailed and reset ok").await.expect("the mailed token worked");
    assert!(!app.data_dir.path().join("outbox").exists(), "nothing went to the file outbox");
}

/// A recurring payment renews after calendar months: 12 months after 2 December 2026 is
/// 2 December 2027 (it was 27 November, counted as 360 days), and a monthly payment made on
/// 31 January renews on the last day of February.
#[tokio::test]
async fn recurring_payments_renew_after_calendar_months() {
    let at = |text: &str| licensing_domain::clock::parse_instant(text).unwrap();
    for (paid, months, renews) in
        [("2026-12-02T09:30:00Z", 12, "2027-12-02T09:30:00Z"), ("2027-01-31T00:00:00Z", 1, "2027-02-28T00:00:00Z")]
    {
        let clock = ManualClock::new(at(paid));
        let app = spawn_app_with_clock(Backend::Sqlite, clock).await;
        let f = fixture(&app).await;
        issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
            r.associate = true;
            r.expires_at = ts(at(paid) / 1000 + 800 * 86_400);
            r.payment = Some(pb::Payment { amount_minor: 49_900, currency: "EUR".into(), recurring_months: months });
        })
        .await;
        let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let receipts = portal(&app)
            .await
            .list_receipts(with_token(&session, pb::ListReceiptsRequest { page: None }))
            .await
            .unwrap()
            .into_inner()
            .receipts;
        let next = receipts[0].next_renewal_at.unwrap();
        assert_eq!(next.seconds * 1000, at(renews), "{paid} + {months} months");
    }
}

/// A sustained login flood, with right and wrong passwords, unknown accounts (checked against the
/// decoy hash) and checkouts by License ID plus the company password, hashes every password in
/// the hashing threads' own memory: the threads allocate one argon2 memory each, however many
/// hashes run. (A hash allocating its own left the all-in-one server and the Account service at
/// 200+ MiB; the benchmark's `login_memory` scenario measures what the processes hold.)
#[tokio::test]
async fn a_login_flood_hashes_in_one_memory_per_hashing_thread() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, data_dir.path()).await;
    for limit in ["LICENSING_RATE_LOGIN_PER_CLIENT", "LICENSING_RATE_LOGIN_PER_ACCOUNT"] {
        env.insert(limit.into(), "off".into());
    }
    let app = spawn_with_env(Backend::Sqlite, data_dir, env).await;
    let f = fixture(&app).await;
    let (license_id, _, _) = issue_license(&app, &f, LicenseKind::Concurrent, 8, |r| r.associate = true).await;
    let channel = app.channel().await;

    // Fewer failures than the 5 per account and 20 per address that would stop logins unhashed.
    let logins = (0..60).map(|i| {
        let mut portal = AccountServiceClient::new(channel.clone());
        let (login, password, right) = match i % 15 {
            0..=2 => (format!("nobody{i}@nowhere.example"), CUSTOMER_PASSWORD, false),
            3 if i < 45 => (f.customer_id.clone(), "not the password", false),
            _ => (f.customer_id.clone(), CUSTOMER_PASSWORD, true),
        };
        async move {
            let answer = portal.login(pb::LoginRequest { login, password: password.into() }).await;
            match answer {
                Ok(session) => assert!(right && session.into_inner().session_token.starts_with("ses_")),
                Err(e) => assert!(!right && reason(&e) == "LOGIN_FAILED", "{e:?}"),
            }
        }
    });
    let checkouts = (0..8).map(|i| {
        let mut seats = SeatServiceClient::new(channel.clone());
        let request = seat::CheckoutRequest {
            credentials: Some(seat::SeatCredentials {
                credential: Some(seat::seat_credentials::Credential::LicenseIdAndPassword(
                    seat::LicenseIdAndPassword { license_id: license_id.clone(), password: CUSTOMER_PASSWORD.into() },
                )),
            }),
            client_instance_id: format!("flood-{i}"),
            ..Default::default()
        };
        async move {
            seats.checkout(request).await.expect("the company password checks out a seat");
        }
    });
    futures::future::join_all(logins.map(futures::FutureExt::boxed).chain(checkouts.map(futures::FutureExt::boxed)))
        .await;

    let allocated = licensing_runtime::hashing::memories_allocated();
    assert!(
        (1..=licensing_runtime::hashing::THREADS).contains(&allocated),
        "{allocated} argon2 memories allocated by {} hashing threads",
        licensing_runtime::hashing::THREADS
    );
}

/// A password stored with other argon2 parameters (an older default) still logs in, and is then
/// stored again at the current cost and memory.
#[tokio::test]
async fn a_password_hash_of_older_parameters_is_rehashed_at_the_next_login() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let store =
        licensing_store::SqlStore::open_sqlite(&app.data_dir.path().join(licensing::DATABASE_FILE)).await.unwrap();
    use licensing_domain::store::CatalogStore as _;
    let older = licensing_domain::secrets::PasswordHasher::with_params(512, 1, 1).hash(CUSTOMER_PASSWORD);
    let audit = licensing_domain::model::AuditRecord::new("test", "test.old_hash", &f.customer_id);
    store.set_customer_password_hash(&f.customer_id, &older, audit).await.unwrap();

    login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.expect("an older hash still verifies");
    let stored = store.customer_password_hash(&f.customer_id).await.unwrap().unwrap();
    assert_ne!(stored, older, "re-hashed");
    assert!(!test_overrides().password_hasher.is_outdated(&stored), "at the current parameters: {stored}");
    login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.expect("and it verifies");
    let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
    let events = portal(&app)
        .await
        .list_my_audit_events(with_token(&session, pb::ListMyAuditEventsRequest { page: None }))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.iter().filter(|e| e.action == "portal.password_rehashed").count(), 1, "once");
}

/// The vendor's notes on a license are the vendor's: the customer never sees them, in the portal
/// or in what a product validating the license hears; the admin API does.
#[tokio::test]
async fn a_customer_never_sees_the_vendors_notes() {
    use licensing_proto::activation::v1 as act;
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let notes = "pays late; do not extend without approval";
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| {
        r.associate = true;
        r.notes = notes.into();
    })
    .await;
    assert_eq!(get_license(&app, &license_id).await.notes, notes, "the vendor sees them");
    let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
    let mut p = portal(&app).await;
    let listed = p.list_my_licenses(with_token(&session, pb::ListMyLicensesRequest { page: None })).await.unwrap();
    assert!(listed.into_inner().licenses.iter().all(|l| l.notes.is_empty()));
    let details = p
        .get_my_license(with_token(
            &session,
            pb::GetMyLicenseRequest { license_id: license_id.clone(), ..Default::default() },
        ))
        .await
        .unwrap();
    assert_eq!(details.into_inner().license.unwrap().notes, "");
    let mut activation = ActivationServiceClient::new(app.channel().await);
    activation.activate(activate_by_key(&key, "m1")).await.unwrap();
    let machine = activate_by_key(&key, "m1").machine.unwrap();
    let validated = activation
        .validate(act::ValidateRequest {
            credentials: Some(act::LicenseCredentials {
                credential: Some(act::license_credentials::Credential::LicenseKey(key.clone())),
            }),
            fingerprint: machine.fingerprint,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validated.license.unwrap().notes, "", "nor does the product");
}
