//! The all-in-one licensing server: every service in one process, on a SQLite file and the
//! embedded lease store (or on PostgreSQL/Redis when their URLs are set).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    licensing::main(licensing::Role::AllInOne).await
}
