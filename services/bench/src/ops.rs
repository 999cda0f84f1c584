//! What each caller does, one `Op` per scenario and baseline, and the fixtures they need
//! (a product, a customer, licenses), made through the admin API like a vendor would.

use crate::drive::Op;
use crate::echo::pb::{echo_service_client::EchoServiceClient, EchoRequest, SignLeaseTokenRequest};
use crate::stack::ADMIN_TOKEN;
use anyhow::Context as _;
use async_trait::async_trait;
use hdrhistogram::Histogram;
use licensing_domain::clock::{Clock as _, Millis, SystemClock};
use licensing_domain::fingerprint::{self, Component};
use licensing_domain::model::{License, LicenseKind};
use licensing_domain::secrets::KeyedHasher;
use licensing_domain::store::{ActivateCommand, ActivationStore, DeactivateCommand, DeactivateTarget};
use licensing_proto::account::v1 as account;
use licensing_proto::account::v1::account_service_client::AccountServiceClient;
use licensing_proto::account::v1::admin_service_client::AdminServiceClient;
use licensing_proto::activation::v1 as activation;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1 as common;
use licensing_proto::seat::v1 as seat;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use licensing_store::SqlStore;
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;
use tonic::Request;

pub(crate) const PASSWORD: &str = "bench company password";
const FEATURE: &str = "render";

fn as_admin<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse().expect("ASCII token"));
    r
}

fn now_ms() -> Millis {
    SystemClock.now()
}

/// A product and a customer with a portal password.
pub(crate) struct Fixture {
    admin: AdminServiceClient<Channel>,
    product: String,
    pub customer_id: String,
    pub login: String,
}

/// A license as its holder knows it.
#[derive(Clone)]
pub(crate) struct Issued {
    pub license_id: String,
    pub key: String,
}

impl Fixture {
    pub(crate) async fn create(account: Channel) -> anyhow::Result<Self> {
        let mut admin = AdminServiceClient::new(account);
        let product = format!("bench-{}", &licensing_domain::ids::new_id("p")[2..10].to_lowercase());
        admin
            .create_product(as_admin(account::CreateProductRequest {
                code: product.clone(),
                name: "Benchmark CAD".into(),
                modules: vec![common::Module { code: FEATURE.into(), name: "Renderer".into() }],
            }))
            .await
            .context("creating the product")?;
        let login = format!("{}@bench.example.com", licensing_domain::ids::new_id("m").to_lowercase());
        let customer = admin
            .create_customer(as_admin(account::CreateCustomerRequest {
                company_name: "Bench Corp".into(),
                contact_email: login.clone(),
                password: PASSWORD.into(),
            }))
            .await
            .context("creating the customer")?
            .into_inner()
            .customer
            .context("a created customer")?;
        Ok(Self { admin, product, customer_id: customer.customer_id, login })
    }

    pub(crate) async fn issue(&mut self, kind: common::LicenseKind, seats: i32) -> anyhow::Result<Issued> {
        let issued = self
            .admin
            .issue_license(as_admin(account::IssueLicenseRequest {
                product_code: self.product.clone(),
                customer_id: self.customer_id.clone(),
                kind: kind as i32,
                seats,
                allowed_deactivations: -1,
                modules: vec![FEATURE.into()],
                expires_at: Some(prost_types::Timestamp { seconds: now_ms() / 1000 + 365 * 86_400, nanos: 0 }),
                ..Default::default()
            }))
            .await
            .context("issuing a license")?
            .into_inner();
        Ok(Issued { license_id: issued.license.context("an issued license")?.license_id, key: issued.license_key })
    }
}

fn seat_credentials(key: &str) -> Option<seat::SeatCredentials> {
    Some(seat::SeatCredentials { credential: Some(seat::seat_credentials::Credential::LicenseKey(key.into())) })
}

fn license_credentials(key: &str) -> Option<activation::LicenseCredentials> {
    Some(activation::LicenseCredentials {
        credential: Some(activation::license_credentials::Credential::LicenseKey(key.into())),
    })
}

/// A machine's fingerprint, distinct per caller.
fn machine(caller: usize) -> Vec<common::FingerprintComponent> {
    let run = licensing_domain::ids::new_id("m");
    [("machine-id", "mid"), ("disk-serial", "disk"), ("mac", "mac")]
        .into_iter()
        .map(|(name, tag)| common::FingerprintComponent { name: name.into(), value: format!("{tag}-{run}-{caller}") })
        .collect()
}

/// A checkout as a product would send it.
fn checkout_request(license: &Issued, caller: usize) -> seat::CheckoutRequest {
    seat::CheckoutRequest {
        credentials: seat_credentials(&license.key),
        feature: FEATURE.into(),
        user: format!("user{caller}"),
        host: format!("host{caller}.bench.example.com"),
        client_instance_id: licensing_domain::ids::new_id("cli"),
        ..Default::default()
    }
}

pub(crate) struct EchoOp(pub EchoServiceClient<Channel>);

#[async_trait]
impl Op for EchoOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.0.echo(EchoRequest { payload: "ping".into() }).await?;
        Ok(())
    }
}

/// The CPU floor of a call answered with a signed lease token (see `SignLeaseToken` in
/// echo.proto), with what a heartbeat's token names.
pub(crate) struct SignLeaseTokenOp {
    client: EchoServiceClient<Channel>,
    request: SignLeaseTokenRequest,
}

impl SignLeaseTokenOp {
    pub(crate) fn new(channel: Channel, license: &Issued, caller: usize) -> Self {
        let checkout = checkout_request(license, caller);
        let request = SignLeaseTokenRequest {
            license_id: license.license_id.clone(),
            lease_id: licensing_domain::ids::new_id(licensing_domain::ids::LEASE),
            client_instance_id: checkout.client_instance_id,
            user: checkout.user,
            host: checkout.host,
            feature: checkout.feature,
        };
        Self { client: EchoServiceClient::new(channel), request }
    }
}

#[async_trait]
impl Op for SignLeaseTokenOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        let token = self.client.sign_lease_token(self.request.clone()).await?.into_inner().payload;
        // Payload and signature (verifying it here would spend the load generator's CPU).
        anyhow::ensure!(token.split('.').count() == 2, "the floor RPC did not answer with a token: {token:?}");
        Ok(())
    }
}

/// The I/O floor of a seat call (see `Roundtrips` in echo.proto) for one license.
pub(crate) struct RoundtripsOp {
    client: EchoServiceClient<Channel>,
    license_id: String,
    redis_only: bool,
}

impl RoundtripsOp {
    pub(crate) fn new(channel: Channel, license: &Issued, redis_only: bool) -> Self {
        Self { client: EchoServiceClient::new(channel), license_id: license.license_id.clone(), redis_only }
    }
}

#[async_trait]
impl Op for RoundtripsOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        let request =
            crate::echo::pb::RoundtripsRequest { license_id: self.license_id.clone(), redis_only: self.redis_only };
        let found = self.client.roundtrips(request).await?.into_inner().payload;
        anyhow::ensure!(found == self.license_id, "the floor RPC did not find license {}", self.license_id);
        Ok(())
    }
}

/// Checkout then checkin of one seat.
pub(crate) struct SeatCycleOp {
    client: SeatServiceClient<Channel>,
    request: seat::CheckoutRequest,
    /// Whether only the checkout is measured (the checkin after it frees the seat for the next
    /// call, uncounted).
    checkout_only: bool,
    checked_out_at: Option<tokio::time::Instant>,
}

impl SeatCycleOp {
    pub(crate) fn new(channel: Channel, license: &Issued, caller: usize) -> Self {
        Self {
            client: SeatServiceClient::new(channel),
            request: checkout_request(license, caller),
            checkout_only: false,
            checked_out_at: None,
        }
    }

    /// The same cycle, with latency counted up to the checkout's answer.
    pub(crate) fn measuring_the_checkout(mut self) -> Self {
        self.checkout_only = true;
        self
    }
}

#[async_trait]
impl Op for SeatCycleOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.checked_out_at = None;
        let grant = self.client.checkout(self.request.clone()).await?.into_inner().grant.context("a grant")?;
        self.checked_out_at = Some(tokio::time::Instant::now());
        self.client.checkin(seat::CheckinRequest { license_id: grant.license_id, lease_id: grant.lease_id }).await?;
        Ok(())
    }

    fn answered_at(&self) -> Option<tokio::time::Instant> {
        self.checked_out_at.filter(|_| self.checkout_only)
    }
}

/// Heartbeats of one held lease.
pub(crate) struct HeartbeatOp {
    client: SeatServiceClient<Channel>,
    request: seat::HeartbeatRequest,
}

impl HeartbeatOp {
    /// Checks a seat out, to heartbeat it.
    pub(crate) async fn new(channel: Channel, license: &Issued, caller: usize) -> anyhow::Result<Self> {
        let mut client = SeatServiceClient::new(channel);
        let grant = client.checkout(checkout_request(license, caller)).await?.into_inner().grant.context("a grant")?;
        let request = seat::HeartbeatRequest {
            license_id: grant.license_id,
            lease_id: grant.lease_id,
            lease_token: grant.lease_token,
        };
        Ok(Self { client, request })
    }
}

#[async_trait]
impl Op for HeartbeatOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        let reply = self.client.heartbeat(self.request.clone()).await?.into_inner();
        // As licensing-client does: the next heartbeat sends the token this one returned.
        self.request.lease_token = reply.lease_token;
        Ok(())
    }
}

/// A seat handed from its holder to a queued waiter: records the time from the holder's
/// checkin being acknowledged to the grant reaching the waiter.
pub(crate) struct HandoffOp {
    holder: SeatServiceClient<Channel>,
    waiter: SeatServiceClient<Channel>,
    holder_request: seat::CheckoutRequest,
    waiter_request: seat::CheckoutRequest,
    pub grant_latency_us: Arc<Mutex<Histogram<u64>>>,
}

impl HandoffOp {
    /// `license` must have exactly one seat, used by this caller alone.
    pub(crate) fn new(
        channel: Channel,
        license: &Issued,
        caller: usize,
        grant_latency_us: Arc<Mutex<Histogram<u64>>>,
    ) -> Self {
        Self {
            holder: SeatServiceClient::new(channel.clone()),
            waiter: SeatServiceClient::new(channel),
            holder_request: checkout_request(license, caller),
            waiter_request: checkout_request(license, caller + 10_000),
            grant_latency_us,
        }
    }
}

#[async_trait]
impl Op for HandoffOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        use seat::wait_for_seat_response::Event;
        let held = self.holder.checkout(self.holder_request.clone()).await?.into_inner().grant.context("a grant")?;
        let mut stream = self
            .waiter
            .wait_for_seat(seat::WaitForSeatRequest { checkout: Some(self.waiter_request.clone()), max_wait: None })
            .await?
            .into_inner();
        // Queued first (the seat is held), then the grant once it is checked in.
        match stream.message().await?.and_then(|m| m.event) {
            Some(Event::QueuePosition(_)) => {}
            other => anyhow::bail!("expected a queue position first, got {other:?}"),
        }
        self.holder.checkin(seat::CheckinRequest { license_id: held.license_id, lease_id: held.lease_id }).await?;
        let released = tokio::time::Instant::now();
        let grant = loop {
            match stream.message().await?.and_then(|m| m.event) {
                Some(Event::Grant(g)) => break g,
                Some(Event::QueuePosition(_)) => continue,
                None => anyhow::bail!("the wait ended without a grant"),
            }
        };
        let us = released.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        self.grant_latency_us.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?.record(us)?;
        self.waiter.checkin(seat::CheckinRequest { license_id: grant.license_id, lease_id: grant.lease_id }).await?;
        Ok(())
    }
}

/// Activation of a machine, then its deactivation from the product.
pub(crate) struct ActivationCycleOp {
    client: ActivationServiceClient<Channel>,
    key: String,
    fingerprint: Vec<common::FingerprintComponent>,
}

impl ActivationCycleOp {
    pub(crate) fn new(channel: Channel, license: &Issued, caller: usize) -> Self {
        Self { client: ActivationServiceClient::new(channel), key: license.key.clone(), fingerprint: machine(caller) }
    }
}

#[async_trait]
impl Op for ActivationCycleOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.client
            .activate(activation::ActivateRequest {
                credentials: license_credentials(&self.key),
                machine: Some(activation::MachineInfo {
                    fingerprint: self.fingerprint.clone(),
                    machine_name: "bench machine".into(),
                    platform: "linux-x86_64".into(),
                    product_version: "1.0".into(),
                }),
            })
            .await?;
        self.client
            .deactivate(activation::DeactivateRequest {
                target: Some(activation::deactivate_request::Target::LicenseAndMachine(
                    activation::LicenseAndMachine {
                        credentials: license_credentials(&self.key),
                        fingerprint: self.fingerprint.clone(),
                    },
                )),
            })
            .await?;
        Ok(())
    }
}

/// The CPU model every machine of a benchmark site reports: a component all its activations
/// share, as on a real site of identical workstations.
const SITE_CPU: &str = "bench-site-cpu";

/// A machine of a site license: three components of its own and the site's CPU model.
fn site_machine(run: &str, n: usize) -> Vec<Component> {
    [("machine-id", "mid"), ("disk-serial", "disk"), ("mac", "mac")]
        .into_iter()
        .map(|(name, tag)| Component { name: name.into(), value: format!("{tag}-{run}-{n}") })
        .chain([Component { name: "cpu".into(), value: SITE_CPU.into() }])
        .collect()
}

fn wire(components: &[Component]) -> Vec<common::FingerprintComponent> {
    components.iter().map(|c| common::FingerprintComponent { name: c.name.clone(), value: c.value.clone() }).collect()
}

fn site_activate_request(key: &str, machine: &[Component]) -> activation::ActivateRequest {
    activation::ActivateRequest {
        credentials: license_credentials(key),
        machine: Some(activation::MachineInfo {
            fingerprint: wire(machine),
            machine_name: "site machine".into(),
            platform: "linux-x86_64".into(),
            product_version: "1.0".into(),
        }),
    }
}

/// Activates `installations` machines of a site on `license`, straight into the store in one
/// transaction (`SqlStore::import_activations`), with their fingerprints digested under the
/// servers' hash key as the Activation service would.
pub(crate) async fn populate_site(
    store: &SqlStore,
    license: &Issued,
    installations: usize,
    hash_key: &[u8],
) -> anyhow::Result<()> {
    let hasher = KeyedHasher::new(hash_key.to_vec());
    let run = licensing_domain::ids::new_id("site");
    let now = now_ms();
    let activations = (0..installations)
        .map(|n| {
            let fingerprint = fingerprint::stored_digests(&hasher, &fingerprint::normalize(&site_machine(&run, n))?);
            Ok(licensing_domain::model::Activation {
                installation_id: licensing_domain::ids::new_id(licensing_domain::ids::INSTALLATION),
                license_id: license.license_id.clone(),
                fingerprint,
                machine_name: format!("site machine {n}"),
                platform: "linux-x86_64".into(),
                product_version: "1.0".into(),
                activated_at: now,
                last_seen_at: now,
                deactivated_at: None,
                offline: false,
                server_serial: 0,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    store.import_activations(&license.license_id, &activations).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// A new machine of the site activated (measured), then deactivated so the license stays the
/// same size.
pub(crate) struct NewSiteMachineOp {
    client: ActivationServiceClient<Channel>,
    key: String,
    run: String,
    calls: usize,
    activated_at: Option<tokio::time::Instant>,
}

impl NewSiteMachineOp {
    pub(crate) fn new(channel: Channel, license: &Issued) -> Self {
        Self {
            client: ActivationServiceClient::new(channel),
            key: license.key.clone(),
            run: licensing_domain::ids::new_id("new"),
            calls: 0,
            activated_at: None,
        }
    }
}

#[async_trait]
impl Op for NewSiteMachineOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.activated_at = None;
        self.calls += 1;
        let machine = site_machine(&self.run, self.calls);
        let answer = self.client.activate(site_activate_request(&self.key, &machine)).await?.into_inner();
        self.activated_at = Some(tokio::time::Instant::now());
        anyhow::ensure!(!answer.already_activated, "a new machine matched an activated one");
        self.client
            .deactivate(activation::DeactivateRequest {
                target: Some(activation::deactivate_request::Target::LicenseAndMachine(
                    activation::LicenseAndMachine {
                        credentials: license_credentials(&self.key),
                        fingerprint: wire(&machine),
                    },
                )),
            })
            .await?;
        Ok(())
    }

    fn answered_at(&self) -> Option<tokio::time::Instant> {
        self.activated_at
    }
}

/// The same machine of the site activated again (a product that activates at every start).
pub(crate) struct KnownSiteMachineOp {
    client: ActivationServiceClient<Channel>,
    request: activation::ActivateRequest,
}

impl KnownSiteMachineOp {
    /// Activates the caller's machine, to activate it again.
    pub(crate) async fn new(channel: Channel, license: &Issued) -> anyhow::Result<Self> {
        let mut client = ActivationServiceClient::new(channel);
        let request = site_activate_request(&license.key, &site_machine(&licensing_domain::ids::new_id("known"), 0));
        client.activate(request.clone()).await?;
        Ok(Self { client, request })
    }
}

#[async_trait]
impl Op for KnownSiteMachineOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        let answer = self.client.activate(self.request.clone()).await?.into_inner();
        anyhow::ensure!(answer.already_activated, "a known machine was activated anew");
        Ok(())
    }
}

/// Validation of an activated machine.
pub(crate) struct ValidateOp {
    client: ActivationServiceClient<Channel>,
    request: activation::ValidateRequest,
}

impl ValidateOp {
    /// Activates the caller's machine, to validate it.
    pub(crate) async fn new(channel: Channel, license: &Issued, caller: usize) -> anyhow::Result<Self> {
        let mut op = ActivationCycleOp::new(channel.clone(), license, caller);
        op.client
            .activate(activation::ActivateRequest {
                credentials: license_credentials(&license.key),
                machine: Some(activation::MachineInfo { fingerprint: op.fingerprint.clone(), ..Default::default() }),
            })
            .await?;
        let request = activation::ValidateRequest {
            credentials: license_credentials(&license.key),
            fingerprint: op.fingerprint,
            modules: vec![FEATURE.into()],
            product_version: "1.0".into(),
        };
        Ok(Self { client: op.client, request })
    }
}

#[async_trait]
impl Op for ValidateOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        let answer = self.client.validate(self.request.clone()).await?.into_inner();
        anyhow::ensure!(answer.valid, "validation refused: {answer:?}");
        Ok(())
    }
}

/// A portal login.
pub(crate) struct LoginOp {
    client: AccountServiceClient<Channel>,
    login: String,
}

impl LoginOp {
    pub(crate) fn new(channel: Channel, login: &str) -> Self {
        Self { client: AccountServiceClient::new(channel), login: login.into() }
    }
}

#[async_trait]
impl Op for LoginOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.client.login(account::LoginRequest { login: self.login.clone(), password: PASSWORD.into() }).await?;
        Ok(())
    }
}

/// Baseline of login: one argon2id verification with the login parameters by the argon2 crate's
/// own verifier (which allocates its memory for each hash), on the blocking pool.
pub(crate) struct Argon2Op {
    phc: Arc<str>,
}

impl Argon2Op {
    pub(crate) fn new(phc: &Arc<str>) -> Self {
        Self { phc: phc.clone() }
    }
}

#[async_trait]
impl Op for Argon2Op {
    async fn call(&mut self) -> anyhow::Result<()> {
        use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
        let phc = self.phc.clone();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc)
                .is_ok_and(|parsed| argon2::Argon2::default().verify_password(PASSWORD.as_bytes(), &parsed).is_ok())
        })
        .await?;
        anyhow::ensure!(ok, "the password did not verify");
        Ok(())
    }
}

/// Baseline of activation: the activation store's SQL (activate, then deactivate), straight
/// through sqlx, without gRPC, credentials or certificates.
pub(crate) struct SqlActivationOp {
    store: SqlStore,
    license_id: String,
    digests: Vec<fingerprint::ComponentDigest>,
}

impl SqlActivationOp {
    pub(crate) fn new(store: &SqlStore, license: &Issued, caller: usize) -> anyhow::Result<Self> {
        let hasher = KeyedHasher::new(*b"benchmark baseline digests key!!");
        let components: Vec<Component> =
            machine(caller).into_iter().map(|c| Component { name: c.name, value: c.value }).collect();
        let normalized = fingerprint::normalize(&components)?;
        let digests = fingerprint::stored_digests(&hasher, &normalized);
        Ok(Self { store: store.clone(), license_id: license.license_id.clone(), digests })
    }
}

#[async_trait]
impl Op for SqlActivationOp {
    async fn call(&mut self) -> anyhow::Result<()> {
        let now = now_ms();
        let command = ActivateCommand {
            license_id: self.license_id.clone(),
            installation_id: licensing_domain::ids::new_id(licensing_domain::ids::INSTALLATION),
            fingerprint_summary: fingerprint::summary(&self.digests),
            fingerprint: self.digests.clone(),
            machine_name: "bench machine".into(),
            platform: "linux-x86_64".into(),
            product_version: "1.0".into(),
            offline: false,
            server: false,
            match_threshold: 0.6,
            now,
        };
        let usable = move |l: &License| l.usability(now, LicenseKind::NodeLocked);
        self.store.activate(&command, &usable).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let deactivate = DeactivateCommand {
            license_id: self.license_id.clone(),
            target: DeactivateTarget::Fingerprint { digests: self.digests.clone(), match_threshold: 0.6 },
            counts: true,
            action: "deactivate",
            now,
        };
        self.store.deactivate(&deactivate).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(())
    }
}
