//! `licensectl`: the licensing server's admin API for operators and support staff.
//!
//! Connection and token come from `--server`/`LICENSING_SERVER` and `--token`/
//! `LICENSING_ADMIN_TOKEN`. Output is a table for people, or JSON with `--json`. Failures print
//! one line saying what to do, never a stack trace.

use clap::{Parser, Subcommand, ValueEnum};
use licensing_proto::account::v1 as pb;
use licensing_proto::account::v1::admin_service_client::AdminServiceClient;
use licensing_proto::common::v1::{License, LicenseKind, LicenseStatus};
use licensing_proto::seat::v1 as seat;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "licensectl", about = "Manage licenses and leases on a licensing server", version)]
struct Cli {
    /// The server's gRPC address.
    #[arg(long, env = "LICENSING_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    server: String,
    /// The admin token (printed by the server at first start).
    #[arg(long, env = "LICENSING_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Issue, list, show and change licenses.
    #[command(subcommand)]
    Licenses(LicenseCommand),
    /// List and revoke floating-seat leases.
    #[command(subcommand)]
    Leases(LeaseCommand),
    /// Installations and activation history of a license.
    History { license_id: String },
    /// Usage report of a concurrent license: peak seats per day, seat hours, denials, top users.
    Usage {
        license_id: String,
        /// First day, YYYY-MM-DD (UTC); 30 days before --to when omitted.
        #[arg(long)]
        from: Option<String>,
        /// Day after the last, YYYY-MM-DD (UTC); now when omitted.
        #[arg(long)]
        to: Option<String>,
        /// Print the report as CSV (metric,day,subject,value), for a spreadsheet.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    NodeLocked,
    Concurrent,
    Cloud,
}

#[derive(Clone, Copy, ValueEnum)]
enum Status {
    Active,
    Suspended,
    Retired,
}

#[derive(Subcommand)]
enum LicenseCommand {
    Issue {
        #[arg(long)]
        product: String,
        #[arg(long)]
        customer: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// Seats (concurrent) or allowed activations (node-locked).
        #[arg(long, default_value_t = 1)]
        seats: i32,
        /// Allowed deactivations; -1 for unlimited.
        #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
        deactivations: i32,
        /// Comma-separated module codes.
        #[arg(long, value_delimiter = ',')]
        modules: Vec<String>,
        /// Expiry date, YYYY-MM-DD (UTC); perpetual when omitted.
        #[arg(long)]
        expires: Option<String>,
        /// Associate with the customer's portal account.
        #[arg(long)]
        associate: bool,
    },
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        product: Option<String>,
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// Text in the License ID, customer ID or notes, or a full license key.
        #[arg(long)]
        query: Option<String>,
    },
    Show {
        license_id: String,
    },
    Suspend {
        license_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    Reinstate {
        license_id: String,
    },
    /// Move the expiry to a later date (YYYY-MM-DD, UTC).
    Renew {
        license_id: String,
        #[arg(long)]
        expires: String,
    },
    /// Change the seats or allowed activations.
    Seats {
        license_id: String,
        seats: i32,
    },
}

#[derive(Subcommand)]
enum LeaseCommand {
    List { license_id: String },
    Revoke { license_id: String, lease_id: String },
}

/// A failure, said in one line a person can act on.
#[derive(Debug)]
struct Failure(String);

impl Failure {
    fn from_status(server: &str, status: tonic::Status) -> Self {
        // No reason: the server never answered (the transport failed), so say why it did.
        let from_server = licensing_runtime::status::reason_of(&status).is_some();
        if !from_server && matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled) {
            return Failure(licensing_runtime::tls::explain_transport_failure(
                server,
                &status,
                &licensing_runtime::config::ProcessEnv,
            ));
        }
        Failure(match status.code() {
            tonic::Code::Unavailable => {
                format!("cannot reach the licensing server at {server} ({}); is it running?", status.message())
            }
            tonic::Code::Unauthenticated => {
                format!(
                    "the server refused the admin token ({}); pass --token or set LICENSING_ADMIN_TOKEN",
                    status.message()
                )
            }
            tonic::Code::DeadlineExceeded => format!("the server at {server} did not answer in time"),
            code => format!("{}: {}", code_name(code), status.message()),
        })
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .flat_map(|c| if c.is_uppercase() { vec![' ', c.to_ascii_lowercase()] } else { vec![c] })
        .collect::<String>()
        .trim()
        .to_owned()
}

fn parse_date(flag: &str, text: &str) -> Result<prost_types::Timestamp, Failure> {
    let at = licensing_domain::clock::parse_instant(text).map_err(|e| Failure(format!("{flag}: {e}")))?;
    Ok(prost_types::Timestamp { seconds: at.div_euclid(1000), nanos: (at.rem_euclid(1000) * 1_000_000) as i32 })
}

fn date(ts: Option<&prost_types::Timestamp>) -> String {
    match ts {
        None => "-".into(),
        // The minute is enough in a table; RFC 3339 would be `T…Z`.
        Some(t) => {
            let at = licensing_domain::clock::rfc3339(t.seconds.saturating_mul(1000));
            at.get(..16).map_or(at.clone(), |minute| minute.replace('T', " "))
        }
    }
}

fn license_json(l: &License) -> Value {
    json!({
        "license_id": l.license_id, "product": l.product_code, "customer_id": l.customer_id,
        "kind": LicenseKind::try_from(l.kind).map(|k| k.as_str_name()).unwrap_or("?"),
        "status": LicenseStatus::try_from(l.status).map(|s| s.as_str_name()).unwrap_or("?"),
        "seats": l.seats, "activations_used": l.activations_used, "allowed_deactivations": l.allowed_deactivations,
        "deactivations_used": l.deactivations_used, "modules": l.modules, "expires": date(l.expires_at.as_ref()),
        "associated_customer_id": l.associated_customer_id,
    })
}

/// Rows of JSON objects as an aligned table with the given columns.
fn table(rows: &[Value], columns: &[&str]) -> String {
    let cell = |row: &Value, c: &str| match &row[c] {
        Value::String(s) => s.clone(),
        Value::Array(a) => {
            a.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect::<Vec<_>>().join(",")
        }
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let widths: Vec<usize> =
        columns.iter().map(|c| rows.iter().map(|r| cell(r, c).len()).chain([c.len()]).max().unwrap_or(0)).collect();
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(columns.iter().map(|c| c.to_uppercase()).collect())];
    out.extend(rows.iter().map(|r| line(columns.iter().map(|c| cell(r, c)).collect())));
    out.join("\n")
}

fn print(json_mode: bool, rows: Vec<Value>, columns: &[&str]) {
    if json_mode {
        println!("{}", serde_json::to_string_pretty(&Value::Array(rows)).expect("JSON values serialize"));
    } else {
        println!("{}", table(&rows, columns));
    }
}

const LICENSE_COLUMNS: &[&str] =
    &["license_id", "product", "customer_id", "kind", "status", "seats", "activations_used", "expires"];

fn authorized<T>(token: &Option<String>, message: T) -> Result<tonic::Request<T>, Failure> {
    let token =
        token.as_deref().ok_or_else(|| Failure("no admin token: pass --token or set LICENSING_ADMIN_TOKEN".into()))?;
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| Failure("the admin token has characters a header cannot carry".into()))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let tls = licensing_runtime::tls::client_config(&licensing_runtime::config::ProcessEnv)
        .map_err(|e| Failure(e.to_string()))?;
    let channel: Channel = licensing_runtime::tls::endpoint(&cli.server, tls)
        .map_err(|_| Failure(format!("--server: '{}' is not a URL such as http://127.0.0.1:50051", cli.server)))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15))
        .connect_lazy();
    let mut admin = AdminServiceClient::new(channel.clone());
    let fail = |s: tonic::Status| Failure::from_status(&cli.server, s);
    let token = &cli.token;
    match cli.command {
        Command::Licenses(LicenseCommand::Issue {
            product,
            customer,
            kind,
            seats,
            deactivations,
            modules,
            expires,
            associate,
        }) => {
            let kind = match kind {
                Kind::NodeLocked => LicenseKind::NodeLocked,
                Kind::Concurrent => LicenseKind::Concurrent,
                Kind::Cloud => LicenseKind::Cloud,
            };
            let expires_at = expires.as_deref().map(|e| parse_date("--expires", e)).transpose()?;
            let request = pb::IssueLicenseRequest {
                product_code: product,
                customer_id: customer,
                kind: kind as i32,
                seats: if kind == LicenseKind::Cloud { 0 } else { seats },
                allowed_deactivations: deactivations,
                modules,
                expires_at,
                associate,
                ..Default::default()
            };
            let issued = admin.issue_license(authorized(token, request)?).await.map_err(fail)?.into_inner();
            let mut row = license_json(&issued.license.unwrap_or_default());
            row["license_key"] = json!(issued.license_key);
            row["activation_password"] = json!(issued.activation_password);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&row).expect("JSON values serialize"));
            } else {
                println!(
                    "{}\n\nLicense key (shown once): {}\nActivation password: {}",
                    table(&[row.clone()], LICENSE_COLUMNS),
                    row["license_key"].as_str().unwrap_or(""),
                    row["activation_password"].as_str().unwrap_or("")
                );
            }
        }
        Command::Licenses(LicenseCommand::List { customer, product, status, query }) => {
            let status = status.map_or(0, |s| match s {
                Status::Active => LicenseStatus::Active as i32,
                Status::Suspended => LicenseStatus::Suspended as i32,
                Status::Retired => LicenseStatus::Retired as i32,
            });
            let request = pb::ListLicensesRequest {
                customer_id: customer.unwrap_or_default(),
                product_code: product.unwrap_or_default(),
                status,
                query: query.unwrap_or_default(),
                page: Some(licensing_proto::common::v1::PageRequest { page_size: 1000, page_token: String::new() }),
            };
            let licenses = admin.list_licenses(authorized(token, request)?).await.map_err(fail)?.into_inner().licenses;
            print(cli.json, licenses.iter().map(license_json).collect(), LICENSE_COLUMNS);
        }
        Command::Licenses(LicenseCommand::Show { license_id }) => {
            let l = admin
                .get_license(authorized(token, pb::GetLicenseRequest { license_id })?)
                .await
                .map_err(fail)?
                .into_inner()
                .license
                .unwrap_or_default();
            let row = license_json(&l);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&row).expect("JSON values serialize"));
            } else if let Value::Object(fields) = row {
                for (k, v) in fields {
                    println!("{k:<24} {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned));
                }
            }
        }
        Command::Licenses(change) => {
            let license = match change {
                LicenseCommand::Suspend { license_id, reason } => {
                    admin
                        .suspend_license(authorized(token, pb::SuspendLicenseRequest { license_id, reason })?)
                        .await
                        .map_err(fail)?
                        .into_inner()
                        .license
                }
                LicenseCommand::Reinstate { license_id } => {
                    admin
                        .reinstate_license(authorized(token, pb::ReinstateLicenseRequest { license_id })?)
                        .await
                        .map_err(fail)?
                        .into_inner()
                        .license
                }
                LicenseCommand::Renew { license_id, expires } => {
                    let expires_at = Some(parse_date("--expires", &expires)?);
                    let request = pb::RenewLicenseRequest { license_id, expires_at, payment: None };
                    admin.renew_license(authorized(token, request)?).await.map_err(fail)?.into_inner().license
                }
                LicenseCommand::Seats { license_id, seats } => {
                    admin
                        .set_license_seats(authorized(token, pb::SetLicenseSeatsRequest { license_id, seats })?)
                        .await
                        .map_err(fail)?
                        .into_inner()
                        .license
                }
                _ => unreachable!("issue, list and show are handled above"),
            };
            print(cli.json, vec![license_json(&license.unwrap_or_default())], LICENSE_COLUMNS);
        }
        Command::Leases(LeaseCommand::List { license_id }) => {
            let reply = SeatServiceClient::new(channel)
                .list_leases(authorized(token, seat::ListLeasesRequest { license_id })?)
                .await
                .map_err(fail)?
                .into_inner();
            let state = |l: &licensing_proto::common::v1::Lease| {
                let mut flags = vec![];
                for (on, name) in [(l.borrowed, "borrowed"), (l.lingering, "lingering"), (l.overdraft, "overdraft")] {
                    if on {
                        flags.push(name.to_owned());
                    }
                }
                if l.shared_processes > 1 {
                    flags.push(format!("shared by {}", l.shared_processes));
                }
                if flags.is_empty() {
                    "held".to_owned()
                } else {
                    flags.join(", ")
                }
            };
            let rows = reply
                .leases
                .iter()
                .map(|l| json!({"lease_id": l.lease_id, "user": l.user, "host": l.host, "feature": l.feature,
                    "seats": l.seats_held, "state": state(l),
                    "since": date(l.checked_out_at.as_ref()), "last_heartbeat": date(l.last_heartbeat_at.as_ref()), "expires": date(l.expires_at.as_ref())}))
                .collect();
            print(
                cli.json,
                rows,
                &["lease_id", "user", "host", "feature", "seats", "state", "since", "last_heartbeat", "expires"],
            );
            if !cli.json {
                println!("\n{} of {} seats in use", reply.seats_in_use, reply.seats_total);
            }
        }
        Command::Leases(LeaseCommand::Revoke { license_id, lease_id }) => {
            let r = SeatServiceClient::new(channel)
                .revoke_lease(authorized(
                    token,
                    seat::RevokeLeaseRequest { license_id, lease_id: lease_id.clone(), reason: "licensectl".into() },
                )?)
                .await
                .map_err(fail)?
                .into_inner();
            print(
                cli.json,
                vec![json!({"lease_id": lease_id, "revoked": r.revoked, "fence": r.fence})],
                &["lease_id", "revoked", "fence"],
            );
        }
        Command::History { license_id } => {
            let h = admin
                .get_activation_history(authorized(token, pb::GetActivationHistoryRequest { license_id })?)
                .await
                .map_err(fail)?
                .into_inner();
            let rows = h
                .history
                .iter()
                .map(|e| json!({"when": date(e.occurred_at.as_ref()), "action": e.action, "installation_id": e.installation_id,
                    "machine": e.machine_name, "fingerprint": e.fingerprint_digest, "outcome": e.outcome}))
                .collect();
            print(cli.json, rows, &["when", "action", "installation_id", "machine", "fingerprint", "outcome"]);
        }
        Command::Usage { license_id, from, to, csv } => {
            let from = from.map(|d| parse_date("--from", &d)).transpose()?;
            let to = to.map(|d| parse_date("--to", &d)).transpose()?;
            let r = SeatServiceClient::new(channel)
                .get_usage_report(authorized(token, seat::GetUsageReportRequest { license_id, from, to, as_csv: csv })?)
                .await
                .map_err(fail)?
                .into_inner();
            if csv {
                print!("{}", r.csv);
                return Ok(());
            }
            let days: Vec<Value> = r
                .daily_peaks
                .iter()
                .map(|d| {
                    json!({"day": d.day, "peak_seats": d.peak_seats, "seat_hours": format!("{:.2}", d.seat_hours),
                    "checkouts": d.checkouts, "denials": d.denials})
                })
                .collect();
            if cli.json {
                let report = json!({
                    "from": date(r.from.as_ref()), "to": date(r.to.as_ref()), "days": days,
                    "total_seat_hours": r.total_seat_hours, "checkouts": r.checkouts,
                    "overdraft_checkouts": r.overdraft_checkouts, "events_dropped": r.events_dropped,
                    "denials": r.denials.iter().map(|d| json!({"reason": d.reason, "count": d.count})).collect::<Vec<_>>(),
                    "top_users": r.top_users.iter().map(|u| json!({"user": u.user, "seat_hours": u.seat_hours, "checkouts": u.checkouts})).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
                return Ok(());
            }
            print(false, days, &["day", "peak_seats", "seat_hours", "checkouts", "denials"]);
            println!(
                "\n{:.2} seat hours, {} checkouts ({} overdraft) from {} to {}",
                r.total_seat_hours,
                r.checkouts,
                r.overdraft_checkouts,
                date(r.from.as_ref()),
                date(r.to.as_ref())
            );
            for d in &r.denials {
                println!("denied {}: {}", d.reason, d.count);
            }
            for u in &r.top_users {
                println!("user {}: {:.2} seat hours, {} checkouts", u.user, u.seat_hours, u.checkouts);
            }
            if r.events_dropped > 0 {
                println!("warning: {} usage events were lost (the usage queue was full)", r.events_dropped);
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("licensectl: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_checked_against_the_calendar() {
        assert_eq!(parse_date("--expires", "2027-12-31").unwrap().seconds, 1_830_211_200);
        assert!(parse_date("--expires", "31.12.2027").is_err());
        let impossible = parse_date("--expires", "2027-02-31").unwrap_err().0;
        assert!(impossible.starts_with("--expires: '2027-02-31' is not a date"), "{impossible}");
        assert_eq!(date(Some(&prost_types::Timestamp { seconds: 1_830_254_460, nanos: 0 })), "2027-12-31 12:01");
        assert_eq!(date(None), "-");
    }
}
