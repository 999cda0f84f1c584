//! Abuse limits end to end: login, password reset, activation and checkout rates per client
//! address and per license (or account), answered RESOURCE_EXHAUSTED with reason RATE_LIMITED
//! and a retry-after, set by environment variables, and a refused call changes nothing.

use crate::common::*;
use licensing_proto::account::v1 as account_pb;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::LicenseKind;
use licensing_proto::seat::v1 as seat_pb;
use tonic::Code;

/// A server on the embedded default with `limits` (variable, rate) set.
async fn app_with(limits: &[(&str, &str)]) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut env = test_env(Backend::Sqlite, data_dir.path()).await;
    for (var, rate) in limits {
        env.insert((*var).to_owned(), (*rate).to_owned());
    }
    spawn_with_env(Backend::Sqlite, data_dir, env).await
}

/// The status is a rate limit refusal that says when to come back.
fn assert_rate_limited(status: &tonic::Status, naming: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), "RATE_LIMITED");
    assert!(status.message().contains(naming), "message should name {naming}: {}", status.message());
    let after: u64 = status.metadata().get("retry-after").expect("retry-after").to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "retry-after {after}");
    // One answer to when: RetryInfo says what the header says.
    let delay = licensing_runtime::status::retry_delay_of(status).expect("RetryInfo");
    assert_eq!(delay, std::time::Duration::from_secs(after), "RetryInfo {delay:?}, retry-after {after} s");
}

#[tokio::test]
async fn logins_are_limited_per_client_address_and_per_account() {
    let app =
        app_with(&[("LICENSING_RATE_LOGIN_PER_CLIENT", "5/min"), ("LICENSING_RATE_LOGIN_PER_ACCOUNT", "3/min")]).await;
    let f = fixture(&app).await;
    // Per account and address: right passwords count too (a login flood is a flood whatever
    // it guesses), but a flood from one address never refuses the account's owner elsewhere.
    for _ in 0..3 {
        login(&app, &f.customer_id, &f.customer_password).await.unwrap();
    }
    let refused = login(&app, &f.customer_id, &f.customer_password).await.unwrap_err();
    assert_rate_limited(&refused, "account");
    let elsewhere = licensing_proto::account::v1::account_service_client::AccountServiceClient::new(
        app.channel_from("127.0.0.2".parse().unwrap()).await,
    )
    .login(account_pb::LoginRequest { login: f.customer_id.clone(), password: f.customer_password.clone() })
    .await;
    assert!(elsewhere.is_ok(), "{:?}", elsewhere.err());
    // Another account from the same address still logs in, until the address's own rate is spent.
    let other = create_customer(&app, "Other Co", "other@example.com").await;
    login(&app, &other, CUSTOMER_PASSWORD).await.unwrap();
    let refused = login(&app, &other, CUSTOMER_PASSWORD).await.unwrap_err();
    assert_rate_limited(&refused, "127.0.0.1");
}

#[tokio::test]
async fn password_resets_are_limited_per_client_address() {
    let app = app_with(&[("LICENSING_RATE_RESET_PER_CLIENT", "2/min")]).await;
    let f = fixture(&app).await;
    let mut p = portal(&app).await;
    for _ in 0..2 {
        p.request_password_reset(account_pb::RequestPasswordResetRequest { login: f.customer_id.clone() })
            .await
            .unwrap();
    }
    let refused = p
        .request_password_reset(account_pb::RequestPasswordResetRequest { login: "someone@example.com".into() })
        .await
        .unwrap_err();
    assert_rate_limited(&refused, "password reset");
    // Using a reset token is in the same group: guessing tokens is as limited as asking for them.
    let refused = p
        .reset_password(account_pb::ResetPasswordRequest {
            reset_token: "rst_GUESSGUESSGUESSGUESS".into(),
            new_password: "a new long password".into(),
        })
        .await
        .unwrap_err();
    assert_rate_limited(&refused, "password reset");
}

#[tokio::test]
async fn activations_are_limited_per_license_and_per_client_address() {
    let app =
        app_with(&[("LICENSING_RATE_ACTIVATE_PER_LICENSE", "2/min"), ("LICENSING_RATE_ACTIVATE_PER_CLIENT", "4/min")])
            .await;
    let f = fixture(&app).await;
    let (first_id, first_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 10, |_| {}).await;
    let (_, second_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 10, |_| {}).await;
    let mut a = ActivationServiceClient::new(app.channel().await);
    a.activate(activate_by_key(&first_key, "m1")).await.unwrap();
    a.activate(activate_by_key(&first_key, "m2")).await.unwrap();
    let refused = a.activate(activate_by_key(&first_key, "m3")).await.unwrap_err();
    assert_rate_limited(&refused, &first_id);
    // The refused activation took no seat.
    let license = get_license(&app, &first_id).await;
    assert_eq!(license.activations_used, 2, "{license:?}");
    // Another license has its own bucket; the address's rate (4) then stops both.
    a.activate(activate_by_key(&second_key, "m1")).await.unwrap();
    let refused = a.activate(activate_by_key(&second_key, "m2")).await.unwrap_err();
    assert_rate_limited(&refused, "127.0.0.1");
}

#[tokio::test]
async fn checkouts_are_limited_per_license_and_refusals_hold_no_seat() {
    let app = app_with(&[("LICENSING_RATE_CHECKOUT_PER_LICENSE", "3/min")]).await;
    let f = fixture(&app).await;
    let (id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 10, |_| {}).await;
    let (_, other_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 10, |_| {}).await;
    let mut s = seat_client(&app).await;
    let mut leases = vec![];
    for client in ["a", "b", "c"] {
        leases.push(s.checkout(checkout_by_key(&key, client, 30)).await.unwrap().into_inner().grant.unwrap());
    }
    let refused = s.checkout(checkout_by_key(&key, "d", 30)).await.unwrap_err();
    assert_rate_limited(&refused, &id);
    // Waiting for a seat is a checkout too.
    let refused = s
        .wait_for_seat(seat_pb::WaitForSeatRequest { checkout: Some(checkout_by_key(&key, "e", 30)), max_wait: None })
        .await
        .unwrap_err();
    assert_rate_limited(&refused, &id);
    assert_eq!(live_leases(&app, &id).await.len(), 3);
    // Seats already held are not limited: heartbeats and checkins go on.
    for lease in &leases {
        s.heartbeat(seat_pb::HeartbeatRequest {
            license_id: id.clone(),
            lease_id: lease.lease_id.clone(),
            lease_token: String::new(),
        })
        .await
        .unwrap();
    }
    s.checkin(seat_pb::CheckinRequest { license_id: id.clone(), lease_id: leases[0].lease_id.clone() }).await.unwrap();
    // Other licenses are not affected.
    s.checkout(checkout_by_key(&other_key, "a", 30)).await.unwrap();
}

#[tokio::test]
async fn checkouts_are_limited_per_client_address_across_licenses() {
    let app = app_with(&[("LICENSING_RATE_CHECKOUT_PER_CLIENT", "2/s")]).await;
    let f = fixture(&app).await;
    let (_, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 10, |_| {}).await;
    let (other_id, other_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 10, |_| {}).await;
    let mut s = seat_client(&app).await;
    s.checkout(checkout_by_key(&key, "a", 30)).await.unwrap();
    s.checkout(checkout_by_key(&other_key, "a", 30)).await.unwrap();
    let refused = s.checkout(checkout_by_key(&other_key, "b", 30)).await.unwrap_err();
    assert_rate_limited(&refused, "checkout");
    assert_eq!(live_leases(&app, &other_id).await.len(), 1);
    // The bucket refills: a client that honours retry-after gets through.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    s.checkout(checkout_by_key(&other_key, "b", 30)).await.unwrap();
}

#[tokio::test]
async fn a_rate_limit_can_be_turned_off() {
    let app =
        app_with(&[("LICENSING_RATE_CHECKOUT_PER_LICENSE", "off"), ("LICENSING_RATE_CHECKOUT_PER_CLIENT", "off")])
            .await;
    let f = fixture(&app).await;
    let (_, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let mut s = seat_client(&app).await;
    // Far past the default burst per license (1,200): every call answered on its merits.
    for i in 0..1_500 {
        s.checkout(checkout_by_key(&key, "same", 30)).await.unwrap_or_else(|e| panic!("checkout {i}: {e:?}"));
    }
}
