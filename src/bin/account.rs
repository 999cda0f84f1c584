//! The account service alone, for production (PostgreSQL and Redis; see docker-compose.yml).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    licensing::run(licensing::Role::Account, &licensing_runtime::config::ProcessEnv).await
}
