//! A product that takes a floating seat, holds it with heartbeats, and gives it back on Ctrl-C.
//!
//! ```sh
//! LICENSING_URL=http://127.0.0.1:50051 LICENSING_PUBLIC_KEY=<GetVerifyingKey> LICENSE_KEY=XXXXX-... \
//!   cargo run --example floating_seat
//! ```
//! `SEAT_TTL_MS` sets the lease time to live (default 60000).

use licensing_client::floating::{CheckoutOptions, SeatState};
use licensing_client::{Client, Credentials};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("set {name}"));
    let client = Client::new(&var("LICENSING_URL")?, &var("LICENSING_PUBLIC_KEY")?)?;
    let ttl = std::env::var("SEAT_TTL_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(60_000);
    let options = CheckoutOptions { ttl: Duration::from_millis(ttl), ..CheckoutOptions::default() };
    let guard = match client.checkout(Credentials::LicenseKey(var("LICENSE_KEY")?), options).await {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("no seat: {e}");
            std::process::exit(2);
        }
    };
    // Print what changes for a person: the lease held, reconnecting, or lost (not every heartbeat).
    let describe = |state: &SeatState| match state {
        SeatState::Held { lease_id, .. } => format!("SEAT HELD {lease_id}"),
        SeatState::Reconnecting { .. } => "SEAT RECONNECTING".to_owned(),
        SeatState::Lost { reason, message } => format!("SEAT LOST {reason}: {message}"),
    };
    let mut shown = describe(&guard.state());
    println!("{shown}");
    let mut states = guard.watch();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            changed = states.changed() => {
                if changed.is_err() { break; }
                let state = states.borrow().clone();
                let now = describe(&state);
                if now != shown {
                    println!("{now}");
                    shown = now;
                }
                if matches!(state, SeatState::Lost { .. }) {
                    std::process::exit(3);
                }
            }
        }
    }
    let released = guard.release().await;
    println!("SEAT RELEASED {released}");
    Ok(())
}
