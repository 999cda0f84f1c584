//! The seat service alone, for production (PostgreSQL and Redis; see docker-compose.yml).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    licensing::main(licensing::Role::Seat).await
}
