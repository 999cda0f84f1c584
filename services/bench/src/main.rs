//! `licensing-bench`: the load generator. It starts the servers it measures (the all-in-one
//! server on its embedded stores, then the separate services on PostgreSQL and Redis), runs
//! every scenario next to its baseline, and prints one machine-readable line per figure.
//!
//! ```text
//! cargo run --release -p licensing-bench -- [--quick] [--embedded-only]
//! ```
//!
//! # Layout
//! - `drive`: closed-loop and open-loop load, with hdrhistogram latencies.
//! - `stack`: the servers under test, as child processes of this binary (`serve <role>`), so
//!   they run the shipped code and their memory can be read.
//! - `echo`: the baseline server (the same stack serving a trivial RPC).
//! - `ops`: what one caller does in each scenario and baseline; the fixtures.
//! - `run`: the plan, scenario by scenario; `report`: the output lines.

mod drive;
mod echo;
mod ops;
mod report;
mod run;
mod stack;

use clap::{Parser, Subcommand};
use licensing_runtime::config::ProcessEnv;

#[derive(Parser)]
#[command(name = "licensing-bench", about = "Measures the licensing servers against same-run baselines.")]
struct Cli {
    /// Short runs and a small scale scenario: under a minute.
    #[arg(long)]
    quick: bool,
    /// Only the all-in-one server on its embedded stores (no PostgreSQL or Redis needed).
    #[arg(long)]
    embedded_only: bool,
    /// PostgreSQL that may create databases (a fresh one is made and dropped).
    #[arg(long, env = "LICENSING_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// Redis for the leases; THIS DATABASE IS FLUSHED before and after the run.
    #[arg(long, env = "LICENSING_BENCH_REDIS_URL", default_value = "redis://127.0.0.1:6379/15")]
    redis_url: String,
    /// Only these groups: seat, activation, login, scale (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Internal: serve one role as a child process of the benchmark.
    #[command(hide = true)]
    Serve { role: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Some(Command::Serve { role }) => runtime.block_on(serve(&role)),
        None => {
            let stores = (!cli.embedded_only)
                .then_some(stack::ExternalStores { postgres_admin_url: cli.database_url, redis_url: cli.redis_url });
            let mut settings = if cli.quick { run::Settings::quick(stores) } else { run::Settings::full(stores) };
            settings.only = cli.only;
            runtime.block_on(run::Bench::new(settings).run())
        }
    }
}

async fn serve(role: &str) -> anyhow::Result<()> {
    use stack::Serves;
    let role = match Serves::parse(role) {
        Some(Serves::Echo) => return echo::serve(&ProcessEnv).await,
        Some(Serves::AllInOne) => licensing::Role::AllInOne,
        Some(Serves::Account) => licensing::Role::Account,
        Some(Serves::Activation) => licensing::Role::Activation,
        Some(Serves::Seat) => licensing::Role::Seat,
        None => anyhow::bail!("unknown role {role}"),
    };
    licensing::run(role, &ProcessEnv).await
}
