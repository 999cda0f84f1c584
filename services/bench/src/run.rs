//! The benchmark plan: for each deployment, the baselines and scenarios in a fixed order, each
//! ratio taken against a baseline measured in the same run (next to it where it can be).

use crate::drive::{closed_loop, open_loop, Bounds, Figures, Op};
use crate::echo::pb::echo_service_client::EchoServiceClient;
use crate::ops::*;
use crate::report::{Line, Target};
use crate::stack::{redis_connection, Database, Deployment, ExternalStores, Serves, Stack};
use anyhow::Context as _;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use licensing_domain::seat_policy::SeatLimits;
use licensing_domain::secrets::PasswordHasher;
use licensing_domain::store::{CheckoutCommand, CheckoutOutcome, LeaseStore};
use licensing_proto::common::v1::LicenseKind;
use licensing_store::sql::SqlOptions;
use licensing_store::{RedisLeaseStore, SqlStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// How long each measured run lasts.
    pub duration: Duration,
    /// Closed-loop callers of the throughput scenarios (and of their echo baseline).
    pub callers: usize,
    /// Connections the callers share.
    pub connections: usize,
    /// Callers logging in at once in the login scenarios.
    pub login_callers: usize,
    /// How long the login flood whose memory is measured lasts.
    pub login_memory_duration: Duration,
    /// Live leases and licenses of the scale scenario.
    pub scale_leases: usize,
    pub scale_licenses: usize,
    /// Installations of the site license the activation scenarios compare against a small one.
    pub site_installations: usize,
    /// PostgreSQL and Redis of the production deployment; `None` skips it.
    pub stores: Option<ExternalStores>,
    /// Groups to run (`seat`, `activation`, `login`, `scale`); empty runs all.
    pub only: Vec<String>,
}

impl Settings {
    pub(crate) fn full(stores: Option<ExternalStores>) -> Self {
        Self {
            duration: Duration::from_secs(10),
            callers: 32,
            connections: 4,
            login_callers: 8,
            login_memory_duration: Duration::from_secs(30),
            scale_leases: 1_000_000,
            scale_licenses: 100_000,
            site_installations: 100_000,
            stores,
            only: vec![],
        }
    }

    /// Under a minute in all.
    pub(crate) fn quick(stores: Option<ExternalStores>) -> Self {
        Self {
            duration: Duration::from_millis(1000),
            login_memory_duration: Duration::from_secs(3),
            scale_leases: 20_000,
            scale_licenses: 2_000,
            site_installations: 10_000,
            ..Self::full(stores)
        }
    }

    fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }

    fn bounds(&self) -> Bounds {
        Bounds { duration: self.duration, max_ops: u64::MAX }
    }
}

pub(crate) struct Bench {
    settings: Settings,
}

/// The deployment's name, and the backends its seat and SQL scenarios are reported under.
fn names(deployment: Deployment) -> (&'static str, &'static str, &'static str) {
    match deployment {
        Deployment::Embedded => ("embedded", "embedded", "embedded"),
        Deployment::Production => ("production", "redis", "postgres"),
    }
}

/// An open-loop run's line: its p99 is held to the 5 ms target.
fn open_loop_line(scenario: &str, backend: &str, rate: f64, figures: &Figures) -> Line {
    Line::new(scenario, backend)
        .field("mode", "open")
        .number("rate_per_s", rate)
        .figures(figures)
        .target(Target::P99UnderMs(5.0))
}

/// Callers spread over the connections.
fn spread(channels: &[Channel], i: usize) -> Channel {
    channels[i % channels.len()].clone()
}

fn boxed(ops: Vec<impl Op>) -> Vec<Box<dyn Op>> {
    ops.into_iter().map(|op| Box::new(op) as Box<dyn Op>).collect()
}

fn emit(line: Line) {
    println!("{}", line.text());
}

/// Runs that had errors, so the process can fail at the end.
static RUNS_WITH_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Says why a run had errors, on stderr (the lines on stdout stay machine-readable).
fn explain(scenario: &str, f: &Figures) {
    if let Some(e) = &f.first_error {
        RUNS_WITH_ERRORS.fetch_add(1, Ordering::Relaxed);
        eprintln!("# {scenario}: {} errors, first: {e}", f.errors);
    }
}

impl Bench {
    pub(crate) fn new(settings: Settings) -> Self {
        Self { settings }
    }

    pub(crate) async fn run(&self) -> anyhow::Result<()> {
        let t = Instant::now();
        let embedded = Stack::embedded().await.context("starting the all-in-one server")?;
        let result = self.deployment(&embedded).await;
        embedded.stop().await;
        result?;
        match &self.settings.stores {
            Some(stores) => {
                let production = Stack::production(stores).await.context("starting the separate services")?;
                let result = async {
                    self.deployment(&production).await?;
                    if self.settings.runs("scale") {
                        self.scale(&production).await?;
                    }
                    Ok::<_, anyhow::Error>(())
                }
                .await;
                production.stop().await;
                result?;
            }
            None => eprintln!("# production deployment skipped (--embedded-only)"),
        }
        eprintln!("# done in {:.0} s", t.elapsed().as_secs_f64());
        match RUNS_WITH_ERRORS.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => anyhow::bail!("{n} runs had errors (see the lines starting with # above)"),
        }
    }

    async fn echo(&self, stack: &Stack) -> anyhow::Result<Figures> {
        let channels = stack.echo.channels(self.settings.connections).await?;
        let ops = (0..self.settings.callers).map(|i| EchoOp(EchoServiceClient::new(spread(&channels, i)))).collect();
        let f = closed_loop(boxed(ops), self.settings.bounds()).await;
        explain("echo", &f);
        Ok(f)
    }

    /// Closed loop of the echo server's `Roundtrips`: a seat call's I/O and nothing else.
    async fn roundtrips(&self, stack: &Stack, license: &Issued, redis_only: bool) -> anyhow::Result<Figures> {
        let channels = stack.echo.channels(self.settings.connections).await?;
        let ops =
            (0..self.settings.callers).map(|i| RoundtripsOp::new(spread(&channels, i), license, redis_only)).collect();
        let f = closed_loop(boxed(ops), self.settings.bounds()).await;
        explain("io_floor", &f);
        Ok(f)
    }

    /// Closed loop of the echo server's `SignLeaseToken`: the echo plus one Ed25519 signature,
    /// the most any call that answers with a signed token can reach, whatever its store.
    async fn signature_floor(&self, stack: &Stack, license: &Issued) -> anyhow::Result<Figures> {
        let channels = stack.echo.channels(self.settings.connections).await?;
        let ops = (0..self.settings.callers).map(|i| SignLeaseTokenOp::new(spread(&channels, i), license, i)).collect();
        let f = closed_loop(boxed(ops), self.settings.bounds()).await;
        explain("signature_floor", &f);
        Ok(f)
    }

    /// The signature floor's line, and `scenario`'s ops/s as a share of it.
    async fn against_signature_floor(
        &self,
        stack: &Stack,
        license: &Issued,
        backend: &str,
        scenario: &str,
        measured: &Figures,
        echo: &Figures,
    ) -> anyhow::Result<()> {
        let floor = self.signature_floor(stack, license).await?;
        emit(
            Line::new("signature_floor", backend)
                .field("signs", "lease_token")
                .field("callers", self.settings.callers)
                .figures(&floor)
                .against("echo", &floor, echo),
        );
        emit(
            Line::new(&format!("{scenario}_vs_signature_floor"), backend)
                .ratio("signature_floor", measured.ops_per_s() / floor.ops_per_s().max(1e-9)),
        );
        Ok(())
    }

    async fn deployment(&self, stack: &Stack) -> anyhow::Result<()> {
        let (name, _, _) = names(stack.deployment);
        for server in stack.servers.iter().chain([&stack.echo]) {
            let mut line = Line::new("idle_memory", name)
                .field("process", server.serves.process())
                .value("rss_mib", server.rss_mib().unwrap_or(f64::NAN));
            if server.serves != Serves::Echo {
                line = line.target(Target::ValueAtMost(30.0));
            }
            emit(line);
        }
        let mut fixture = Fixture::create(stack.account().channels(1).await?.remove(0)).await?;
        let seats = fixture.issue(LicenseKind::Concurrent, 1000).await?;
        let node_locked = fixture.issue(LicenseKind::NodeLocked, 1000).await?;

        let seat_channels = stack.seat().channels(self.settings.connections).await?;
        if self.settings.runs("seat") {
            self.seats(stack, &mut fixture, &seats, &seat_channels).await?;
        }
        if self.settings.runs("activation") {
            self.activation(stack, &mut fixture, &node_locked).await?;
        }
        if self.settings.runs("login") {
            self.logins(stack, &fixture, &seats, &seat_channels).await?;
        }
        Ok(())
    }

    async fn seats(
        &self,
        stack: &Stack,
        fixture: &mut Fixture,
        seats: &Issued,
        seat_channels: &[Channel],
    ) -> anyhow::Result<()> {
        let (name, seat_backend, _) = names(stack.deployment);
        let echo = self.echo(stack).await?;
        emit(Line::new("echo", name).figures(&echo).ratio("echo", 1.0));
        let cycle = self.seat_cycle(seat_channels, seats).await?;
        emit(
            Line::new("seat_checkout_checkin", seat_backend)
                .field("mode", "closed")
                .field("callers", self.settings.callers)
                .figures(&cycle)
                .against("echo", &cycle, &echo)
                .target(Target::RatioAtLeast(0.5)),
        );
        let echo = self.echo(stack).await?;
        let heartbeat = self.heartbeat(seat_channels, seats, self.settings.callers, None).await?;
        emit(
            Line::new("heartbeat", seat_backend)
                .field("mode", "closed")
                .field("callers", self.settings.callers)
                .figures(&heartbeat)
                .against("echo", &heartbeat, &echo)
                .target(Target::RatioAtLeast(0.6)),
        );
        // Every heartbeat answers with a freshly signed lease token: what that alone allows.
        self.against_signature_floor(stack, seats, seat_backend, "heartbeat", &heartbeat, &echo).await?;
        if stack.deployment == Deployment::Production {
            // What a heartbeat's round trips alone allow on this machine, measured rather than
            // argued: with the license read, and without it (the most the Seat service's license
            // cache can give).
            for (io, redis_only) in [("postgres+redis", false), ("redis", true)] {
                let floor = self.roundtrips(stack, seats, redis_only).await?;
                emit(
                    Line::new("io_floor", seat_backend)
                        .field("io", io)
                        .field("callers", self.settings.callers)
                        .figures(&floor)
                        .against("echo", &floor, &echo),
                );
                emit(
                    Line::new("heartbeat_vs_io_floor", seat_backend)
                        .field("io", io)
                        .ratio("io_floor", heartbeat.ops_per_s() / floor.ops_per_s().max(1e-9)),
                );
            }
        }
        let rate = cycle.ops_per_s() / 2.0;
        let open = self.seat_cycle_open(seat_channels, seats, rate, false).await?;
        emit(open_loop_line("seat_checkout_checkin", seat_backend, rate, &open));
        // The target names the checkout: the same schedule, latency up to the checkout's answer.
        let open = self.seat_cycle_open(seat_channels, seats, rate, true).await?;
        emit(open_loop_line("seat_checkout", seat_backend, rate, &open));
        let rate = heartbeat.ops_per_s() / 2.0;
        let open = self.heartbeat(seat_channels, seats, self.settings.callers * 2, Some(rate)).await?;
        emit(open_loop_line("heartbeat", seat_backend, rate, &open));
        let handoff = self.handoff(fixture, seat_channels, seat_backend).await?;
        emit(handoff.0.against("echo", &handoff.1, &echo));
        let seat_process = stack.seat();
        let mut line = Line::new("seat_memory", name)
            .field("process", seat_process.serves.process())
            .value("peak_rss_mib", seat_process.peak_rss_mib().unwrap_or(f64::NAN));
        if stack.deployment == Deployment::Embedded {
            line = line.target(Target::ValueAtMost(100.0));
        }
        emit(line);

        Ok(())
    }

    async fn activation(&self, stack: &Stack, fixture: &mut Fixture, node_locked: &Issued) -> anyhow::Result<()> {
        let (_, _, sql_backend) = names(stack.deployment);
        let activation_channels = stack.activation().channels(self.settings.connections).await?;
        let baseline = self.sql_activation(stack, fixture).await?;
        emit(Line::new("sql_activation", sql_backend).figures(&baseline).ratio("sql_activation", 1.0));
        let cycle = self.activation_cycle(&activation_channels, node_locked).await?;
        let mut line =
            Line::new("activate_deactivate", sql_backend).figures(&cycle).against("sql_activation", &cycle, &baseline);
        if stack.deployment == Deployment::Production {
            line = line.target(Target::RatioAtLeast(0.7));
        }
        emit(line);
        let echo = self.echo(stack).await?;
        let validate = self.validate(&activation_channels, node_locked).await?;
        emit(
            Line::new("validate", sql_backend)
                .figures(&validate)
                .against("echo", &validate, &echo)
                .target(Target::RatioAtLeast(0.5)),
        );
        // A valid answer carries a signed certificate: the same Ed25519 signature over a longer
        // payload than the lease token the floor signs.
        self.against_signature_floor(stack, node_locked, sql_backend, "validate", &validate, &echo).await?;
        self.activation_at_scale(stack, fixture).await
    }

    /// Activation on a site license of `site_installations` against the same on one of
    /// [`SMALL_SITE`]: a new machine (activated, then deactivated, latency up to the
    /// activation's answer) and a known one activated again. Flat means a ratio near 1.
    async fn activation_at_scale(&self, stack: &Stack, fixture: &mut Fixture) -> anyhow::Result<()> {
        let (_, _, sql_backend) = names(stack.deployment);
        let channels = stack.activation().channels(self.settings.connections).await?;
        let store = match &stack.database {
            Database::Sqlite(path) => SqlStore::open_sqlite(path).await,
            Database::Postgres { url, .. } => SqlStore::connect_postgres(url, &SqlOptions::default()).await,
        }
        .map_err(|e| anyhow::anyhow!("opening the store to populate the site licenses: {e}"))?;
        let site_seats = (self.settings.site_installations + 10_000) as i32;
        let small = fixture.issue(LicenseKind::NodeLocked, site_seats).await?;
        populate_site(&store, &small, SMALL_SITE, &stack.hash_key).await?;
        let large = fixture.issue(LicenseKind::NodeLocked, site_seats).await?;
        let t = Instant::now();
        populate_site(&store, &large, self.settings.site_installations, &stack.hash_key).await?;
        let fill_s = t.elapsed().as_secs_f64();
        store.close().await;
        eprintln!(
            "# activation at scale ({sql_backend}): {} installations imported in {fill_s:.1} s",
            self.settings.site_installations
        );
        // 32 callers for throughput (every call waits on the license's row lock, at any size),
        // one caller for the latency of an activation alone.
        for (scenario, callers) in [
            ("activate_new_machine", self.settings.callers),
            ("activate_new_machine", 1),
            ("activate_known_machine", self.settings.callers),
            ("activate_known_machine", 1),
        ] {
            // Small, large, large, small: drift over the runs (the machine is shared) weighs on
            // both sides alike.
            let mut figures = [Figures::default(), Figures::default()];
            for side in [0, 1, 1, 0] {
                let license = [&small, &large][side];
                let mut ops: Vec<Box<dyn Op>> = vec![];
                for i in 0..callers {
                    let channel = spread(&channels, i);
                    ops.push(match scenario {
                        "activate_new_machine" => Box::new(NewSiteMachineOp::new(channel, license)),
                        _ => Box::new(KnownSiteMachineOp::new(channel, license).await?),
                    });
                }
                let f = closed_loop(ops, self.settings.bounds()).await;
                explain(scenario, &f);
                figures[side].merge(&f);
                figures[side].elapsed += f.elapsed;
            }
            let [at_small, at_large] = &figures;
            emit(
                Line::new(&format!("{scenario}_at_scale"), sql_backend)
                    .field("callers", callers)
                    .field("installations", self.settings.site_installations)
                    .number("small_ops_per_s", at_small.ops_per_s())
                    .number("small_p50_ms", at_small.p50_ms())
                    .figures(at_large)
                    .against(&format!("same_with_{SMALL_SITE}"), at_large, at_small)
                    .target(Target::RatioAtLeast(0.8)),
            );
        }
        Ok(())
    }

    async fn logins(
        &self,
        stack: &Stack,
        fixture: &Fixture,
        seats: &Issued,
        seat_channels: &[Channel],
    ) -> anyhow::Result<()> {
        let (name, seat_backend, sql_backend) = names(stack.deployment);
        let account_channels = stack.account().channels(self.settings.connections).await?;
        let argon2 = self.argon2().await?;
        emit(
            Line::new("argon2", name)
                .field("callers", self.settings.login_callers)
                .figures(&argon2)
                .ratio("argon2", 1.0),
        );
        let login = self.login(&account_channels, &fixture.login, self.settings.login_callers).await?;
        emit(
            Line::new("login", sql_backend)
                .field("callers", self.settings.login_callers)
                .figures(&login)
                .against("argon2", &login, &argon2)
                .target(Target::RatioAtLeast(0.8)),
        );
        let (idle, flood, logins) = self.login_flood(seat_channels, &account_channels, seats, &fixture.login).await?;
        emit(
            Line::new("heartbeat_during_login_flood", seat_backend)
                .number("idle_p99_ms", idle.p99_ms())
                .figures(&flood)
                .number("logins_per_s", logins.ops_per_s())
                .ratio("idle_heartbeat_p99", flood.p99_ms() / idle.p99_ms().max(1e-9))
                .target(Target::RatioAtMost(2.0)),
        );
        self.login_memory(stack, &account_channels, &fixture.login).await
    }

    /// A sustained flood of logins (twice the login scenario's callers), then the Account
    /// process's memory: the most it has held since it started (VmHWM, so every login scenario
    /// before this one counts too), and what it holds before and after the flood.
    async fn login_memory(&self, stack: &Stack, account_channels: &[Channel], login: &str) -> anyhow::Result<()> {
        let (name, _, _) = names(stack.deployment);
        let account = stack.account();
        let before = account.rss_mib().unwrap_or(f64::NAN);
        let callers = self.settings.login_callers * 2;
        let ops = (0..callers).map(|i| LoginOp::new(spread(account_channels, i), login)).collect();
        let bounds = Bounds { duration: self.settings.login_memory_duration, max_ops: u64::MAX };
        let flood = closed_loop(boxed(ops), bounds).await;
        explain("login_memory", &flood);
        emit(
            Line::new("login_memory", name)
                .field("process", account.serves.process())
                .field("callers", callers)
                .field("logins", flood.ops)
                .number("logins_per_s", flood.ops_per_s())
                .field("errors", flood.errors)
                .number("rss_before_mib", before)
                .number("rss_after_mib", account.rss_mib().unwrap_or(f64::NAN))
                .value("peak_rss_mib", account.peak_rss_mib().unwrap_or(f64::NAN))
                .target(Target::ValueAtMost(64.0)),
        );
        Ok(())
    }

    async fn seat_cycle(&self, channels: &[Channel], license: &Issued) -> anyhow::Result<Figures> {
        let ops = (0..self.settings.callers).map(|i| SeatCycleOp::new(spread(channels, i), license, i)).collect();
        let f = closed_loop(boxed(ops), self.settings.bounds()).await;
        explain("seat_checkout_checkin", &f);
        Ok(f)
    }

    /// Checkout+checkin cycles started at `rate`; latency to the cycle's end, or to the
    /// checkout's answer when `checkout_only`.
    async fn seat_cycle_open(
        &self,
        channels: &[Channel],
        license: &Issued,
        rate: f64,
        checkout_only: bool,
    ) -> anyhow::Result<Figures> {
        let ops = (0..self.settings.callers * 2)
            .map(|i| {
                let op = SeatCycleOp::new(spread(channels, i), license, 500 + i);
                if checkout_only {
                    op.measuring_the_checkout()
                } else {
                    op
                }
            })
            .collect();
        let f = open_loop(boxed(ops), rate, self.settings.bounds()).await;
        explain(if checkout_only { "seat_checkout open" } else { "seat_checkout_checkin open" }, &f);
        Ok(f)
    }

    /// Closed loop, or open loop at `rate`, over `callers` held leases.
    async fn heartbeat(
        &self,
        channels: &[Channel],
        license: &Issued,
        callers: usize,
        rate: Option<f64>,
    ) -> anyhow::Result<Figures> {
        let mut ops = vec![];
        for i in 0..callers {
            ops.push(HeartbeatOp::new(spread(channels, i), license, 1000 + i).await?);
        }
        let f = match rate {
            Some(rate) => open_loop(boxed(ops), rate, self.settings.bounds()).await,
            None => closed_loop(boxed(ops), self.settings.bounds()).await,
        };
        explain("heartbeat", &f);
        Ok(f)
    }

    /// Seats handed over through WaitForSeat: one single-seat license per pair of callers.
    async fn handoff(
        &self,
        fixture: &mut Fixture,
        channels: &[Channel],
        backend: &str,
    ) -> anyhow::Result<(Line, Figures)> {
        let pairs = 4;
        let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
        let mut ops = vec![];
        for i in 0..pairs {
            let license = fixture.issue(LicenseKind::Concurrent, 1).await?;
            ops.push(HandoffOp::new(spread(channels, i), &license, i, latency.clone()));
        }
        let f = closed_loop(boxed(ops), self.settings.bounds()).await;
        explain("wait_for_seat", &f);
        let h = latency.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?.clone();
        let line = Line::new("wait_for_seat_grant", backend)
            .field("pairs", pairs)
            .field("handoffs", h.len())
            .number("handoffs_per_s", f.ops_per_s())
            .number("grant_p50_ms", h.value_at_quantile(0.5) as f64 / 1000.0)
            .number("grant_p99_ms", h.value_at_quantile(0.99) as f64 / 1000.0)
            .field("errors", f.errors);
        Ok((line, f))
    }

    async fn sql_activation(&self, stack: &Stack, fixture: &mut Fixture) -> anyhow::Result<Figures> {
        let license = fixture.issue(LicenseKind::NodeLocked, 1000).await?;
        let store = match &stack.database {
            Database::Sqlite(path) => SqlStore::open_sqlite(path).await,
            Database::Postgres { url, .. } => SqlStore::connect_postgres(url, &SqlOptions::default()).await,
        }
        .map_err(|e| anyhow::anyhow!("opening the baseline store: {e}"))?;
        let ops = (0..self.settings.callers)
            .map(|i| SqlActivationOp::new(&store, &license, i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let f = closed_loop(boxed(ops), self.settings.bounds()).await;
        store.close().await;
        explain("sql_activation", &f);
        Ok(f)
    }

    async fn activation_cycle(&self, channels: &[Channel], license: &Issued) -> anyhow::Result<Figures> {
        let ops = (0..self.settings.callers).map(|i| ActivationCycleOp::new(spread(channels, i), license, i)).collect();
        let f = closed_loop(boxed(ops), self.settings.bounds()).await;
        explain("activate_deactivate", &f);
        Ok(f)
    }

    async fn validate(&self, channels: &[Channel], license: &Issued) -> anyhow::Result<Figures> {
        let mut ops = vec![];
        for i in 0..self.settings.callers {
            ops.push(ValidateOp::new(spread(channels, i), license, 100 + i).await?);
        }
        let f = closed_loop(boxed(ops), self.settings.bounds()).await;
        explain("validate", &f);
        Ok(f)
    }

    async fn argon2(&self) -> anyhow::Result<Figures> {
        let hasher = PasswordHasher::owasp();
        let phc: Arc<str> = hasher.hash(PASSWORD).into();
        let ops = (0..self.settings.login_callers).map(|_| Argon2Op::new(&phc)).collect();
        let f = closed_loop(boxed(ops), self.settings.bounds()).await;
        explain("argon2", &f);
        Ok(f)
    }

    async fn login(&self, channels: &[Channel], login: &str, callers: usize) -> anyhow::Result<Figures> {
        let ops = (0..callers).map(|i| LoginOp::new(spread(channels, i), login)).collect();
        let f = closed_loop(boxed(ops), self.settings.bounds()).await;
        explain("login", &f);
        Ok(f)
    }

    /// Heartbeats at a steady rate, first alone, then beside a flood of logins.
    async fn login_flood(
        &self,
        seat_channels: &[Channel],
        account_channels: &[Channel],
        license: &Issued,
        login: &str,
    ) -> anyhow::Result<(Figures, Figures, Figures)> {
        let rate = 200.0;
        let callers = 16;
        let idle = self.heartbeat(seat_channels, license, callers, Some(rate)).await?;
        let flood = self.login(account_channels, login, self.settings.login_callers * 2);
        let during = self.heartbeat(seat_channels, license, callers, Some(rate));
        let (logins, during) = tokio::join!(flood, during);
        Ok((idle, during?, logins?))
    }

    /// Redis at scale: memory per lease, checkout throughput with many leases live, and the
    /// sweep's cost against the leases that expired.
    async fn scale(&self, stack: &Stack) -> anyhow::Result<()> {
        let redis_url = stack.redis_url.as_deref().context("the production stack has Redis")?;
        let store = RedisLeaseStore::connect(redis_url).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        store.open_epoch(false).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut fixture = Fixture::create(stack.account().channels(1).await?.remove(0)).await?;
        let seats = fixture.issue(LicenseKind::Concurrent, 1000).await?;
        let channels = stack.seat().channels(self.settings.connections).await?;
        let per_license = (self.settings.scale_leases / self.settings.scale_licenses).max(1);
        let hour = 3_600_000;

        let small = 1_000;
        populate(&store, small / per_license, per_license, hour).await?;
        let cycle_small = self.seat_cycle(&channels, &seats).await?;
        let sweep_small = timed_sweep(&store, per_license).await?;

        let before = used_memory(redis_url).await?;
        let added = self.settings.scale_leases - small;
        let t = Instant::now();
        populate(&store, added / per_license, per_license, hour).await?;
        let fill_s = t.elapsed().as_secs_f64();
        let after = used_memory(redis_url).await?;
        let bytes_per_lease = (after.saturating_sub(before)) as f64 / added as f64;
        let listpack_value = redis_setting(redis_url, "hash-max-listpack-value").await;
        emit(
            Line::new("redis_memory", "redis")
                .field("leases", self.settings.scale_leases)
                .field("licenses", self.settings.scale_licenses)
                .field("hash_max_listpack_value", listpack_value)
                .number("fill_leases_per_s", added as f64 / fill_s)
                .value("bytes_per_lease", bytes_per_lease)
                .target(Target::ValueAtMost(200.0)),
        );
        let cycle_large = self.seat_cycle(&channels, &seats).await?;
        emit(
            Line::new("seat_checkout_checkin_at_scale", "redis")
                .field("live_leases", self.settings.scale_leases)
                .figures(&cycle_large)
                .against(&format!("same_with_{small}_leases"), &cycle_large, &cycle_small)
                .target(Target::RatioAtLeast(0.9)),
        );
        let sweep_large = timed_sweep(&store, per_license).await?;
        emit(
            Line::new("sweep", "redis")
                .field("expired", sweep_large.0)
                .number("ms_with_1000_live", sweep_small.1 * 1000.0)
                .field("live_leases", self.settings.scale_leases)
                .number("ms", sweep_large.1 * 1000.0)
                .ratio("sweep_with_1000_live", sweep_large.1 / sweep_small.1.max(1e-9))
                .target(Target::RatioAtMost(2.0)),
        );
        Ok(())
    }
}

/// Installations of the small license the site license is compared with.
const SMALL_SITE: usize = 50;

/// Checks out `per_license` leases on each of `licenses` new licenses, straight into the lease
/// store (the scripts the Seat service runs), 64 at a time.
async fn populate(store: &RedisLeaseStore, licenses: usize, per_license: usize, ttl_ms: i64) -> anyhow::Result<()> {
    let commands = (0..licenses).flat_map(|_| {
        let license_id = licensing_domain::ids::new_id(licensing_domain::ids::LICENSE);
        (0..per_license).map(move |i| CheckoutCommand {
            license_id: license_id.clone(),
            seats: per_license as i32,
            lease_id: licensing_domain::ids::new_id(licensing_domain::ids::LEASE),
            client_instance_id: format!("{}-{}", 40_000 + i, licensing_domain::ids::new_id("ci")),
            user: format!("user{i}"),
            host: format!("host{i}.example.com"),
            feature: "render".into(),
            ttl_ms,
            cost: 1,
            limits: SeatLimits::default(),
            queue_blocked: false,
            share_key: None,
            max_processes: 0,
            borrowed: false,
            license_revision: None,
            not_after: None,
        })
    });
    let mut results =
        futures::stream::iter(commands).map(|c| async move { store.checkout(&c).await }).buffer_unordered(64);
    while let Some(result) = results.next().await {
        match result.map_err(|e| anyhow::anyhow!("populating Redis: {e}"))? {
            CheckoutOutcome::Granted { .. } => {}
            CheckoutOutcome::Denied { denial, .. } => anyhow::bail!("populating Redis: denied {denial:?}"),
            CheckoutOutcome::Recovering { .. } => anyhow::bail!("populating Redis: the lease store is recovering"),
            CheckoutOutcome::StaleLicense => anyhow::bail!("populating Redis: refused as stale, though unfenced"),
        }
    }
    Ok(())
}

/// Makes 1,000 leases expire, then times the sweep that records them: (leases swept, seconds).
async fn timed_sweep(store: &RedisLeaseStore, per_license: usize) -> anyhow::Result<(usize, f64)> {
    let expiring = 1_000;
    populate(store, expiring / per_license, per_license, 100).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let mut swept = 0;
    loop {
        let batch = store.sweep_expired(1_000).await.map_err(|e| anyhow::anyhow!("sweeping: {e}"))?;
        if batch.is_empty() {
            break;
        }
        swept += batch.len();
    }
    Ok((swept, t.elapsed().as_secs_f64()))
}

/// A Redis setting as `CONFIG GET` shows it ("?" when it does not).
async fn redis_setting(url: &str, name: &str) -> String {
    let Ok(mut conn) = redis_connection(url).await else { return "?".into() };
    let reply: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn).await.unwrap_or_default();
    reply.get(1).cloned().unwrap_or_else(|| "?".into())
}

async fn used_memory(url: &str) -> anyhow::Result<u64> {
    let mut conn = redis_connection(url).await?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory without used_memory")
}
