//! What a customer keeps up to date itself, over gRPC (the web portal calls the same use cases):
//! the company password, the contact details, the licensee name of a license, and the next
//! charges of recurring payments. On SQLite and PostgreSQL.

use crate::common::*;
use licensing_proto::account::v1 as pb;
use licensing_proto::account::v1::account_service_client::AccountServiceClient;
use licensing_proto::common::v1::LicenseKind;
use tonic::Code;

async fn email_of(app: &TestApp, customer_id: &str) -> String {
    app.admin()
        .await
        .get_customer(admin_req(pb::GetCustomerRequest { customer_id: customer_id.into() }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap()
        .contact_email
}

#[tokio::test]
async fn changing_the_password_needs_the_current_one_and_ends_every_other_session() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let mine = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let other = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let mut p = portal(&app).await;
        let change = |current: &str, new: &str| pb::ChangePasswordRequest {
            current_password: current.into(),
            new_password: new.into(),
        };

        let err = p.change_password(tonic::Request::new(change(CUSTOMER_PASSWORD, "x"))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{backend:?}: a session is needed");
        let err = p
            .change_password(with_token(&mine, change("not the password", "a new long passphrase")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
        assert!(err.message().starts_with("current_password:"), "{}", err.message());
        let err = p.change_password(with_token(&mine, change(CUSTOMER_PASSWORD, "short"))).await.unwrap_err();
        assert!(err.message().starts_with("new_password:"), "{}", err.message());
        login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.expect("refusals changed nothing");

        p.change_password(with_token(&mine, change(CUSTOMER_PASSWORD, "a new long passphrase"))).await.unwrap();
        p.get_account(with_token(&mine, pb::GetAccountRequest {})).await.expect("the changing session lives on");
        let err = p.get_account(with_token(&other, pb::GetAccountRequest {})).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{backend:?}: every other session ended");
        assert_eq!(login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap_err().code(), Code::Unauthenticated);
        login(&app, &f.customer_id, "a new long passphrase").await.expect("the new password works");

        // Guessing the current password through a session is throttled like logins: after five
        // wrong ones, this address waits (even with the right one); the owner elsewhere does not.
        for _ in 0..5 {
            let err = p
                .change_password(with_token(&mine, change("a wrong guess!", "yet another passphrase")))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
        }
        let err = p
            .change_password(with_token(&mine, change("a new long passphrase", "yet another passphrase")))
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::ResourceExhausted, "TOO_MANY_ATTEMPTS".into()), "{backend:?}");
        let elsewhere = AccountServiceClient::new(app.channel_from("127.0.0.2".parse().unwrap()).await)
            .login(pb::LoginRequest { login: f.customer_id.clone(), password: "a new long passphrase".into() })
            .await;
        assert!(elsewhere.is_ok(), "{backend:?}: a refused change changed nothing, and the owner is not locked out");
    }
}

#[tokio::test]
async fn contact_details_are_the_customers_own_and_a_new_email_needs_the_password() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let old_email = email_of(&app, &f.customer_id).await;
        let other_email = format!("{}@globex.example", licensing_domain::ids::new_id("m").to_lowercase());
        create_customer(&app, "Globex", &other_email).await;
        let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let mut p = portal(&app).await;
        let update = |email: &str, phone: &str, password: &str| pb::UpdateContactDetailsRequest {
            contact_name: "  Ada Lovelace ".into(),
            contact_email: email.into(),
            phone: phone.into(),
            current_password: password.into(),
        };

        let customer = p
            .update_contact_details(with_token(&session, update(&old_email, "+49 30 1234-567", "")))
            .await
            .unwrap()
            .into_inner()
            .customer
            .unwrap();
        assert_eq!((customer.contact_name.as_str(), customer.phone.as_str()), ("Ada Lovelace", "+49 30 1234-567"));
        let me =
            p.get_account(with_token(&session, pb::GetAccountRequest {})).await.unwrap().into_inner().customer.unwrap();
        assert_eq!(me.contact_name, "Ada Lovelace", "{backend:?}: stored");

        for (request, field) in [
            (update(&old_email, "call me maybe", ""), "phone:"),
            (update("not an email", "", ""), "contact_email:"),
            (update("ada@new.example", "", ""), "current_password:"),
            (update("ada@new.example", "", "a wrong password"), "current_password:"),
        ] {
            let err = p.update_contact_details(with_token(&session, request)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?} {field}");
            assert!(err.message().starts_with(field), "{}", err.message());
        }
        let err = p
            .update_contact_details(with_token(&session, update(&other_email, "", CUSTOMER_PASSWORD)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}: another account's email");
        assert_eq!(email_of(&app, &f.customer_id).await, old_email, "refusals changed nothing");

        p.update_contact_details(with_token(&session, update("Ada@New.Example", "", CUSTOMER_PASSWORD))).await.unwrap();
        assert_eq!(email_of(&app, &f.customer_id).await, "ada@new.example");
        login(&app, "ada@new.example", CUSTOMER_PASSWORD).await.expect("the new email is a login");
        assert_eq!(login(&app, &old_email, CUSTOMER_PASSWORD).await.unwrap_err().code(), Code::Unauthenticated);
        // The old address hears of it.
        let mut told = false;
        for _ in 0..100 {
            let outbox = app.data_dir.path().join("outbox");
            told = std::fs::read_dir(&outbox).into_iter().flatten().flatten().any(|e| {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                text.contains(&format!("To: {old_email}")) && text.contains("ada@new.example")
            });
            if told {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(told, "{backend:?}: the old contact email was told of the change");
    }
}

#[tokio::test]
async fn a_licensee_name_is_set_on_the_accounts_own_licenses_only() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, _, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| r.associate = true).await;
        let other = create_customer(
            &app,
            "Globex",
            &format!("{}@g.example", licensing_domain::ids::new_id("m").to_lowercase()),
        )
        .await;
        let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let stranger = login(&app, &other, CUSTOMER_PASSWORD).await.unwrap();
        let mut p = portal(&app).await;
        let set =
            |name: &str| pb::SetLicenseeNameRequest { license_id: license_id.clone(), licensee_name: name.into() };

        let license = p
            .set_licensee_name(with_token(&session, set(" Acme Research ")))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert_eq!(license.licensee_name, "Acme Research");
        let got = p
            .get_my_license(with_token(
                &session,
                pb::GetMyLicenseRequest { license_id: license_id.clone(), ..Default::default() },
            ))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert_eq!(got.licensee_name, "Acme Research", "{backend:?}: stored");
        assert_eq!(get_license(&app, &license_id).await.licensee_name, "Acme Research", "the vendor sees it too");

        let err = p.set_licensee_name(with_token(&stranger, set("Globex"))).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::NotFound, "LICENSE_NOT_FOUND".into()), "{backend:?}");
        let err = p.set_licensee_name(with_token(&session, set(&"x".repeat(201)))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with("licensee_name:"), "{}", err.message());
        assert_eq!(get_license(&app, &license_id).await.licensee_name, "Acme Research", "refusals changed nothing");
        p.set_licensee_name(with_token(&session, set(""))).await.unwrap();
        assert_eq!(get_license(&app, &license_id).await.licensee_name, "", "empty: the company name again");
    }
}

#[tokio::test]
async fn recurring_payments_list_the_next_charge_of_each_plan() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let paid = |months| pb::Payment { amount_minor: 12_000, currency: "EUR".into(), recurring_months: months };
        let (yearly, _, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
            r.associate = true;
            r.payment = Some(paid(12));
        })
        .await;
        let (monthly, _, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
            r.associate = true;
            r.payment = Some(paid(1));
        })
        .await;
        issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| r.payment = Some(paid(0))).await;
        let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let plans = portal(&app)
            .await
            .list_recurring_payments(with_token(&session, pb::ListRecurringPaymentsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .payments;
        let ids: Vec<&str> = plans.iter().map(|p| p.license_id.as_str()).collect();
        assert_eq!(ids, [monthly.as_str(), yearly.as_str()], "{backend:?}: soonest first, one-off payments left out");
        for (plan, months) in plans.iter().zip([1, 12]) {
            let paid_at = plan.last_paid_at.unwrap().seconds * 1000;
            let expected = licensing_domain::clock::add_months(paid_at, months).unwrap();
            assert_eq!(plan.next_charge_at.unwrap().seconds * 1000, expected / 1000 * 1000);
            assert_eq!((plan.amount_minor, plan.currency.as_str()), (12_000, "EUR"));
        }
        let err = portal(&app)
            .await
            .list_recurring_payments(tonic::Request::new(pb::ListRecurringPaymentsRequest {}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
}
