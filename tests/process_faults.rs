//! kill -9 under load: the built binaries run as child processes while clients activate machines
//! and check seats out; the processes are SIGKILLed mid-stream and started again on the same data.
//! Every acknowledged activation and lease is still there, counters agree with the rows (nothing
//! half-done), and clients that retry what was in flight succeed without taking a second seat.
//! Once on the embedded default (one process, SQLite), once as separate services on PostgreSQL
//! and Redis (the Activation and Seat processes are killed; the Account service stays up).

use crate::common::process::{separate_services_env, Process};
use crate::common::*;
use licensing_proto::account::v1 as acc;
use licensing_proto::account::v1::admin_service_client::AdminServiceClient;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::LicenseKind;
use licensing_proto::seat::v1 as seat;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// How long clients load the servers before the kill.
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(1_500);
/// Concurrent activating and checking-out clients.
const CLIENTS: usize = 3;

/// The processes of one deployment and which of them serve what.
struct Deployment {
    processes: Vec<Process>,
    /// Indexes into `processes`: admin, activation, seat; and which ones the test kills.
    admin: usize,
    activation: usize,
    seat: usize,
    killed: Vec<usize>,
}

impl Deployment {
    /// The all-in-one server on a SQLite file under `dir`, without the per-client abuse limits
    /// (every client is 127.0.0.1 here); its one process is the one killed.
    fn embedded(dir: &std::path::Path) -> Self {
        let mut env = vec![
            ("LICENSING_DATA_DIR".to_owned(), dir.display().to_string()),
            ("LICENSING_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
        ];
        unlimited(&mut env);
        Self {
            processes: vec![Process::new(env!("CARGO_BIN_EXE_licensing-server"), &env)],
            admin: 0,
            activation: 0,
            seat: 0,
            killed: vec![0],
        }
    }
}

/// What clients saw: answered requests (name -> ID the server gave) and requests in flight when
/// the server died (no answer: they may or may not have happened).
#[derive(Default)]
struct Outcomes {
    acknowledged: HashMap<String, String>,
    in_doubt: HashSet<String>,
}

/// Sends `request(name)` for fresh names until `stop`, then once more fails; records outcomes.
async fn load<F, Fut>(prefix: String, stop: Arc<AtomicBool>, request: F) -> Outcomes
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<String, tonic::Status>>,
{
    let mut outcomes = Outcomes::default();
    for i in 0.. {
        let name = format!("{prefix}-{i}");
        match tokio::time::timeout(Duration::from_secs(5), request(name.clone())).await {
            Ok(Ok(id)) => {
                outcomes.acknowledged.insert(name, id);
            }
            _ => {
                outcomes.in_doubt.insert(name);
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    }
    outcomes
}

async fn acknowledged_writes_survive_kill_9(mut deployment: Deployment) {
    for p in &mut deployment.processes {
        p.start().await;
    }
    let admin_channel = deployment.processes[deployment.admin].channel().await;
    let mut admin = AdminServiceClient::new(admin_channel.clone());
    admin
        .create_product(admin_req(acc::CreateProductRequest {
            code: "kill-test".into(),
            name: "Kill test".into(),
            modules: vec![],
        }))
        .await
        .unwrap();
    let customer = create_customer_on(&mut admin).await;
    let issue = |kind: LicenseKind| {
        let mut admin = admin.clone();
        let customer = customer.clone();
        async move {
            let issued = admin
                .issue_license(admin_req(acc::IssueLicenseRequest {
                    product_code: "kill-test".into(),
                    customer_id: customer,
                    kind: kind as i32,
                    seats: 100_000,
                    allowed_deactivations: 1,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            (issued.license.unwrap().license_id, issued.license_key)
        }
    };
    let (node_locked_id, node_locked_key) = issue(LicenseKind::NodeLocked).await;
    let (floating_id, floating_key) = issue(LicenseKind::Concurrent).await;

    // Load, then SIGKILL in the middle of it.
    let stop = Arc::new(AtomicBool::new(false));
    let activation_url = deployment.processes[deployment.activation].url();
    let seat_url = deployment.processes[deployment.seat].url();
    let mut activating = vec![];
    let mut checking_out = vec![];
    for c in 0..CLIENTS {
        let channel = Channel::from_shared(activation_url.clone()).unwrap().connect_lazy();
        let key = node_locked_key.clone();
        activating.push(tokio::spawn(load(format!("machine-{c}"), stop.clone(), move |name| {
            let mut client = ActivationServiceClient::new(channel.clone());
            let request = activate_by_key(&key, &name);
            async move {
                let r = client.activate(request).await?.into_inner();
                Ok(r.activation.unwrap().installation_id)
            }
        })));
        let channel = Channel::from_shared(seat_url.clone()).unwrap().connect_lazy();
        let key = floating_key.clone();
        checking_out.push(tokio::spawn(load(format!("client-{c}"), stop.clone(), move |name| {
            let mut client = SeatServiceClient::new(channel.clone());
            let request = checkout_by_key(&key, &name, 600);
            async move {
                let r = client.checkout(request).await?.into_inner();
                Ok(r.grant.unwrap().lease_id)
            }
        })));
    }
    tokio::time::sleep(LOAD_BEFORE_KILL).await;
    stop.store(true, Ordering::SeqCst);
    for &i in &deployment.killed {
        deployment.processes[i].kill_9().await;
    }
    let mut activations = Outcomes::default();
    for task in activating {
        let o = task.await.unwrap();
        activations.acknowledged.extend(o.acknowledged);
        activations.in_doubt.extend(o.in_doubt);
    }
    let mut leases = Outcomes::default();
    for task in checking_out {
        let o = task.await.unwrap();
        leases.acknowledged.extend(o.acknowledged);
        leases.in_doubt.extend(o.in_doubt);
    }
    eprintln!(
        "killed after {} acknowledged activations ({} in doubt) and {} acknowledged checkouts ({} in doubt)",
        activations.acknowledged.len(),
        activations.in_doubt.len(),
        leases.acknowledged.len(),
        leases.in_doubt.len()
    );
    assert!(activations.acknowledged.len() >= 10, "load reached the server: {}", activations.acknowledged.len());
    assert!(leases.acknowledged.len() >= 10, "load reached the server: {}", leases.acknowledged.len());

    // Start again on the same data.
    for &i in &deployment.killed {
        deployment.processes[i].start().await;
    }
    let admin = AdminServiceClient::new(deployment.processes[deployment.admin].channel().await);
    let mut activation = ActivationServiceClient::new(deployment.processes[deployment.activation].channel().await);
    let mut seats = SeatServiceClient::new(deployment.processes[deployment.seat].channel().await);

    // Every acknowledged activation is there; the counter agrees with the rows.
    let active = active_installations(&admin, &node_locked_id).await;
    for (machine, installation) in &activations.acknowledged {
        assert!(active.contains(installation), "acknowledged activation of {machine} ({installation}) was lost");
    }
    assert_eq!(activations_used(&admin, &node_locked_id).await as usize, active.len(), "counter matches rows");
    // Retrying is safe: the acknowledged ones answer "already activated" with the same ID, the
    // ones in doubt succeed, and nothing is counted twice.
    for (machine, installation) in activations.acknowledged.iter().take(5) {
        let again = activation.activate(activate_by_key(&node_locked_key, machine)).await.unwrap().into_inner();
        assert!(again.already_activated);
        assert_eq!(&again.activation.unwrap().installation_id, installation);
    }
    for machine in &activations.in_doubt {
        activation.activate(activate_by_key(&node_locked_key, machine)).await.unwrap();
    }
    let active = active_installations(&admin, &node_locked_id).await;
    assert_eq!(active.len(), activations.acknowledged.len() + activations.in_doubt.len());
    assert_eq!(activations_used(&admin, &node_locked_id).await as usize, active.len());

    // Every acknowledged lease is there, once per client.
    let live = live_leases_of(&mut seats, &floating_id).await;
    for (client, lease) in &leases.acknowledged {
        assert_eq!(live.get(client), Some(lease), "acknowledged lease of {client} was lost");
    }
    for client in &leases.in_doubt {
        seats.checkout(checkout_by_key(&floating_key, client, 600)).await.unwrap();
    }
    let live = live_leases_of(&mut seats, &floating_id).await;
    assert_eq!(live.len(), leases.acknowledged.len() + leases.in_doubt.len(), "one lease per client");
    let pool = seats
        .list_leases(admin_req(seat::ListLeasesRequest { license_id: floating_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pool.seats_in_use as usize, live.len(), "seats in use agree with the leases");

    for p in &mut deployment.processes {
        if p.is_running() {
            p.kill_9().await;
        }
    }
}

/// kill -9 while products record metered use: after a restart every acknowledged use is
/// counted, and retrying every use (acknowledged or in doubt) counts each exactly once.
async fn acknowledged_uses_survive_kill_9(mut deployment: Deployment) {
    use licensing_proto::activation::v1 as act;
    use licensing_proto::common::v1::{Meter, MeterReset};
    for p in &mut deployment.processes {
        p.start().await;
    }
    let mut admin = AdminServiceClient::new(deployment.processes[deployment.admin].channel().await);
    admin
        .create_product(admin_req(acc::CreateProductRequest {
            code: "meter-kill".into(),
            name: "Meter kill test".into(),
            modules: vec![],
        }))
        .await
        .unwrap();
    let customer = create_customer_on(&mut admin).await;
    let issued = admin
        .issue_license(admin_req(acc::IssueLicenseRequest {
            product_code: "meter-kill".into(),
            customer_id: customer,
            kind: LicenseKind::Cloud as i32,
            meters: vec![Meter {
                code: "exports".into(),
                limit: 1_000_000,
                overage: 0,
                reset: MeterReset::Never as i32,
            }],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let key = issued.license_key;
    let record = move |idempotency_key: String| act::RecordUsageRequest {
        credentials: Some(act::LicenseCredentials {
            credential: Some(act::license_credentials::Credential::LicenseKey(key.clone())),
        }),
        meter: "exports".into(),
        amount: 1,
        idempotency_key,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let url = deployment.processes[deployment.activation].url();
    let mut recording = vec![];
    for c in 0..CLIENTS {
        let channel = Channel::from_shared(url.clone()).unwrap().connect_lazy();
        let record = record.clone();
        recording.push(tokio::spawn(load(format!("use-{c}"), stop.clone(), move |name| {
            let mut client = ActivationServiceClient::new(channel.clone());
            let request = record(name);
            async move {
                let r = client.record_usage(request).await?.into_inner();
                Ok(r.usage.unwrap().used.to_string())
            }
        })));
    }
    tokio::time::sleep(LOAD_BEFORE_KILL).await;
    stop.store(true, Ordering::SeqCst);
    for &i in &deployment.killed {
        deployment.processes[i].kill_9().await;
    }
    let mut uses = Outcomes::default();
    for task in recording {
        let o = task.await.unwrap();
        uses.acknowledged.extend(o.acknowledged);
        uses.in_doubt.extend(o.in_doubt);
    }
    eprintln!("killed after {} acknowledged uses ({} in doubt)", uses.acknowledged.len(), uses.in_doubt.len());
    assert!(uses.acknowledged.len() >= 10, "load reached the server: {}", uses.acknowledged.len());

    for &i in &deployment.killed {
        deployment.processes[i].start().await;
    }
    let mut activation = ActivationServiceClient::new(deployment.processes[deployment.activation].channel().await);
    let counted = |activation: &mut ActivationServiceClient<Channel>| {
        let request = act::GetMeterUsageRequest { credentials: record(String::new()).credentials };
        let mut activation = activation.clone();
        async move { activation.get_meter_usage(request).await.unwrap().into_inner().meters[0].used as usize }
    };
    let after_restart = counted(&mut activation).await;
    assert!(
        (uses.acknowledged.len()..=uses.acknowledged.len() + uses.in_doubt.len()).contains(&after_restart),
        "{after_restart} counted after the restart: every acknowledged use and at most those in doubt"
    );
    for name in uses.acknowledged.keys() {
        let again = activation.record_usage(record(name.clone())).await.unwrap().into_inner();
        assert!(again.replayed, "acknowledged use {name} was counted and is recognised");
    }
    for name in &uses.in_doubt {
        activation.record_usage(record(name.clone())).await.unwrap();
    }
    assert_eq!(counted(&mut activation).await, uses.acknowledged.len() + uses.in_doubt.len(), "each use once");

    for p in &mut deployment.processes {
        if p.is_running() {
            p.kill_9().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_server_killed_while_recording_use_counts_each_use_once() {
    let dir = tempfile::tempdir().unwrap();
    acknowledged_uses_survive_kill_9(Deployment::embedded(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_service_killed_while_recording_use_counts_each_use_once() {
    if !postgres_available().await || !redis_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = separate_services_env(dir.path()).await;
    let deployment = Deployment {
        processes: vec![
            // Account first: it applies the migrations.
            Process::new(env!("CARGO_BIN_EXE_account"), &env),
            Process::new(env!("CARGO_BIN_EXE_activation"), &env),
        ],
        admin: 0,
        activation: 1,
        seat: 1,
        killed: vec![1],
    };
    acknowledged_uses_survive_kill_9(deployment).await;
}

async fn create_customer_on(admin: &mut AdminServiceClient<Channel>) -> String {
    admin
        .create_customer(admin_req(acc::CreateCustomerRequest {
            company_name: "Kill Co".into(),
            contact_email: "ops@kill.example".into(),
            password: CUSTOMER_PASSWORD.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap()
        .customer_id
}

async fn active_installations(admin: &AdminServiceClient<Channel>, license_id: &str) -> HashSet<String> {
    let history = admin
        .clone()
        .get_activation_history(admin_req(acc::GetActivationHistoryRequest { license_id: license_id.into() }))
        .await
        .unwrap()
        .into_inner();
    history.installations.into_iter().filter(|i| i.active).map(|i| i.installation_id).collect()
}

async fn activations_used(admin: &AdminServiceClient<Channel>, license_id: &str) -> i32 {
    let license = admin
        .clone()
        .get_license(admin_req(acc::GetLicenseRequest { license_id: license_id.into() }))
        .await
        .unwrap()
        .into_inner()
        .license
        .unwrap();
    license.activations_used
}

/// client_instance_id -> lease ID of the live leases; a client holding two leases fails.
async fn live_leases_of(seats: &mut SeatServiceClient<Channel>, license_id: &str) -> HashMap<String, String> {
    let listed = seats
        .list_leases(admin_req(seat::ListLeasesRequest { license_id: license_id.into() }))
        .await
        .unwrap()
        .into_inner()
        .leases;
    let mut by_client = HashMap::new();
    for lease in listed {
        let previous = by_client.insert(lease.client_instance_id.clone(), lease.lease_id);
        assert!(previous.is_none(), "client {} holds two leases", lease.client_instance_id);
    }
    by_client
}

/// Clients all come from 127.0.0.1 here: the abuse limits would be the test's subject, not this.
fn unlimited(env: &mut Vec<(String, String)>) {
    for var in [
        "LICENSING_RATE_ACTIVATE_PER_CLIENT",
        "LICENSING_RATE_ACTIVATE_PER_LICENSE",
        "LICENSING_RATE_CHECKOUT_PER_CLIENT",
        "LICENSING_RATE_CHECKOUT_PER_LICENSE",
    ] {
        env.push((var.into(), "off".into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_server_killed_under_load_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    acknowledged_writes_survive_kill_9(Deployment::embedded(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_services_killed_under_load_keep_every_acknowledged_write() {
    if !postgres_available().await || !redis_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut env = separate_services_env(dir.path()).await;
    unlimited(&mut env);
    let deployment = Deployment {
        processes: vec![
            // Account first: it applies the migrations.
            Process::new(env!("CARGO_BIN_EXE_account"), &env),
            Process::new(env!("CARGO_BIN_EXE_activation"), &env),
            Process::new(env!("CARGO_BIN_EXE_seat"), &env),
        ],
        admin: 0,
        activation: 1,
        seat: 2,
        killed: vec![1, 2],
    };
    acknowledged_writes_survive_kill_9(deployment).await;
}
