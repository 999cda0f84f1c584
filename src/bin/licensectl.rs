//! `licensectl`: the licensing server's admin API for operators and support staff.
//!
//! Connection and token come from `--server`/`LICENSING_SERVER` and `--token`/
//! `LICENSING_ADMIN_TOKEN`. Output is a table for people, or JSON with `--json` (times in
//! RFC 3339). Failures print one line saying what to do, never a stack trace; a closed pipe
//! (`licensectl --json ... | head`) ends it quietly.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use comfy_table::{presets, ContentArrangement, Table};
use licensing_proto::account::v1 as pb;
use licensing_proto::account::v1::admin_service_client::AdminServiceClient;
use licensing_proto::common::v1::{
    Customer, License, LicenseKind, LicenseStatus, LicenseTerms, Meter, MeterReset, MeterUsage, PageRequest, Policy,
    Product, ServerGrant, TermsStart,
};
use licensing_proto::onpremises::v1 as onprem;
use licensing_proto::onpremises::v1::on_premises_service_client::OnPremisesServiceClient;
use licensing_proto::seat::v1 as seat;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use serde_json::{json, Value};
use std::future::Future;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

/// Manage products, customers, licenses, seat policies and leases on a licensing server.
#[derive(Parser)]
#[command(name = "licensectl", version)]
struct Cli {
    /// The server's gRPC address.
    #[arg(long, env = "LICENSING_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    server: String,
    /// The admin token (printed by the server at first start).
    #[arg(long, env = "LICENSING_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of a table (times in RFC 3339).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list and show products and record their released versions.
    #[command(subcommand)]
    Products(ProductCommand),
    /// Create, list and show customers and set their portal password.
    #[command(subcommand)]
    Customers(CustomerCommand),
    /// Issue, list, show and change licenses.
    #[command(subcommand)]
    Licenses(LicenseCommand),
    /// Show and set the seat policy of a concurrent license.
    #[command(subcommand)]
    SeatPolicy(SeatPolicyCommand),
    /// List and revoke floating-seat leases.
    #[command(subcommand)]
    Leases(LeaseCommand),
    /// Set, remove and show a license's metered features and their use per period.
    #[command(subcommand)]
    Meters(MeterCommand),
    /// Create, list, show and change license policies (named terms licenses are issued from).
    #[command(subcommand)]
    Policies(PolicyCommand),
    /// Trials of a product (machines that started one without a key) and their conversion.
    #[command(subcommand)]
    Trials(TrialCommand),
    /// Server licenses of on-premises license servers.
    #[command(subcommand)]
    ServerLicense(ServerLicenseCommand),
    /// An on-premises license server (run against it, with its own admin token): its status
    /// and served license keys, activation by file or online, and the return of its license.
    #[command(subcommand)]
    Onprem(OnPremCommand),
    /// Node-locked activations given back by products.
    #[command(subcommand)]
    Activations(ActivationsCommand),
    /// Installations and activation history of a license.
    History { license_id: String },
    /// The audit log of a license, customer or product.
    Audit {
        /// A License ID, customer ID or product code.
        subject: String,
        #[command(flatten)]
        paging: Paging,
    },
    /// Usage report of a concurrent license: peak seats per day, seat hours, denials, top users.
    Usage {
        license_id: String,
        /// First day, YYYY-MM-DD (UTC) or an RFC 3339 time; 30 days before --to when omitted.
        #[arg(long)]
        from: Option<String>,
        /// Day after the last, YYYY-MM-DD (UTC) or an RFC 3339 time; now when omitted.
        #[arg(long)]
        to: Option<String>,
        /// Print the report as CSV (metric,day,subject,value), for a spreadsheet.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Subcommand)]
enum ServerLicenseCommand {
    /// Answer an air-gapped on-premises server's request file: an activation request with its
    /// signed server license file (written to --out), a return by freeing its activation.
    Respond {
        /// The request file the server wrote.
        #[arg(long)]
        request: std::path::PathBuf,
        /// Where to write the server license file (an activation request only).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// The usage reports a server license's on-premises servers uploaded, newest first: one
    /// line per grant of each report.
    Usage {
        license_id: String,
        #[command(flatten)]
        paging: Paging,
    },
}

#[derive(Subcommand)]
enum OnPremCommand {
    /// What the server serves (with the license keys products use), from which file, and why it
    /// refuses new seats if it does.
    Status,
    /// Write the activation request file to carry to the vendor (air-gapped servers).
    Request {
        /// Where to write it.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Import the server license file the vendor sent (air-gapped activation, renewal, seat change).
    Import {
        /// The server license file.
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Ask the vendor for a fresh file now (online servers).
    Refresh,
    /// Send the vendor the usage since the last report now (online servers).
    UploadUsage,
    /// Give the license back: the server stops serving at once and writes the return file
    /// (online, it is also sent to the vendor).
    Return {
        /// Where to write the return file.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Confirm that the server stops serving its products.
        #[arg(long)]
        yes: bool,
    },
}

const ONPREM_LICENSE_COLUMNS: &[&str] = &["license_id", "license_key", "kind", "product", "feature", "seats", "in_use"];
const ONPREM_STATUS_FIELDS: &[&str] = &[
    "serving",
    "not_serving",
    "license_id",
    "installation_id",
    "serial",
    "issued_at",
    "expires_at",
    "grace_ends_at",
    "vendor_url",
    "last_refresh_at",
    "last_refresh_error",
];

#[derive(Subcommand)]
enum ActivationsCommand {
    /// Free the activation an air-gapped product gave back: submit the offline deactivation
    /// request it wrote after deleting its certificate (ActivationService/DeactivateOffline).
    /// Needs no admin token: the request carries the license's credential.
    DeactivateOffline {
        /// The request file ("-----BEGIN LICENSING DEACTIVATION REQUEST-----").
        file: std::path::PathBuf,
    },
}

/// How many items a list fetches per request; every page is listed.
#[derive(clap::Args, Clone, Copy)]
struct Paging {
    /// Items fetched per request (1-1000); every page is listed whatever its size.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i32).range(1..=1000))]
    page_size: i32,
}

#[derive(Subcommand)]
enum ProductCommand {
    /// Create a product, with its modules (features a license may include).
    Create {
        /// The product code, e.g. cad-pro: unique, never changed.
        code: String,
        /// Its display name.
        #[arg(long)]
        name: String,
        /// A module as code=Name (repeat for several), e.g. --module render="Render farm".
        #[arg(long = "module", value_parser = module)]
        modules: Vec<licensing_proto::common::v1::Module>,
    },
    /// List every product.
    List {
        #[command(flatten)]
        paging: Paging,
    },
    /// Show a product with its modules and versions.
    Show { code: String },
    /// Record a released version (judged against licenses' upgrade periods).
    AddVersion {
        code: String,
        version: String,
        /// Release date, YYYY-MM-DD (UTC) or an RFC 3339 time; now when omitted.
        #[arg(long)]
        released: Option<String>,
    },
    /// Add a module (a new plug-in or feature) to an existing product, as code=Name.
    AddModule {
        code: String,
        #[arg(value_parser = module)]
        module: licensing_proto::common::v1::Module,
    },
}

#[derive(Subcommand)]
enum CustomerCommand {
    /// Create a customer (a company with a portal account).
    Create {
        /// The company's name.
        #[arg(long)]
        company: String,
        /// The contact email (the portal login and where reset mail goes).
        #[arg(long)]
        email: String,
        /// Read an initial portal password (12+ characters) from the first line of stdin; without
        /// it the customer sets one through the password reset mail.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List customers, or those whose company name or email contains --query.
    List {
        /// Text in the company name or contact email (case-insensitive).
        #[arg(long)]
        query: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show a customer.
    Show { customer_id: String },
    /// Set a customer's company-wide portal password, read from the first line of stdin (never
    /// an argument, which other users could see in the process list).
    SetPassword { customer_id: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    NodeLocked,
    Concurrent,
    Cloud,
    /// A server license: activated by a customer's on-premises license server (--seats: how
    /// many servers), which serves what its --grant flags allow.
    Server,
}

#[derive(Clone, Copy, ValueEnum)]
enum Status {
    Active,
    Suspended,
    Retired,
}

#[derive(Subcommand)]
enum LicenseCommand {
    /// Issue a license; its key and activation password are shown only now.
    Issue {
        /// The product code (the policy's when --policy is given).
        #[arg(long, required_unless_present = "policy")]
        product: Option<String>,
        /// The customer ID.
        #[arg(long)]
        customer: String,
        /// Issue from this policy (pol_...): what the other flags leave out comes from its terms.
        #[arg(long)]
        policy: Option<String>,
        #[arg(long, value_enum, required_unless_present = "policy")]
        kind: Option<Kind>,
        /// Seats (concurrent) or allowed activations (node-locked); 1 without a policy.
        #[arg(long)]
        seats: Option<i32>,
        /// Allowed deactivations; -1 for unlimited; 3 without a policy.
        #[arg(long, allow_negative_numbers = true)]
        deactivations: Option<i32>,
        /// Comma-separated module codes.
        #[arg(long, value_delimiter = ',')]
        modules: Vec<String>,
        /// Expiry, YYYY-MM-DD (UTC) or an RFC 3339 time; perpetual when omitted.
        #[arg(long)]
        expires: Option<String>,
        /// How long the license stays usable after its expiry (`7d`, `36h`), reported as in its
        /// grace period; none when omitted. At most 365 days.
        #[arg(long, value_parser = duration)]
        grace: Option<prost_types::Duration>,
        /// Associate with the customer's portal account.
        #[arg(long)]
        associate: bool,
        /// Node-locked: machines must check in at least this often (e.g. 10m, 1h; 1 minute to
        /// 365 days) or are deactivated, without spending a deactivation.
        #[arg(long, value_parser = duration)]
        heartbeat_timeout: Option<prost_types::Duration>,
        /// Server licenses: floating seats the on-premises server may serve, of a product
        /// (`cad-pro=25`) or of one of its features (`cad-pro/render=5`); repeat per grant.
        #[arg(long = "grant", value_parser = server_grant)]
        grants: Vec<ServerGrant>,
        /// Server licenses: node-locked activations the on-premises server may make of a
        /// product (`cad-pro=10`); repeat per product.
        #[arg(long = "grant-node-locked", value_parser = counted_owned)]
        grants_node_locked: Vec<(String, i32)>,
    },
    /// List licenses (every page), filtered by customer, product, status or text.
    List {
        /// Only this customer's.
        #[arg(long)]
        customer: Option<String>,
        /// Only this product's.
        #[arg(long)]
        product: Option<String>,
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// Text in the License ID, customer ID or notes, or a full license key.
        #[arg(long)]
        query: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show every field of a license.
    Show { license_id: String },
    /// Suspend a license: products stop validating and checking out.
    Suspend {
        license_id: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a suspension.
    Reinstate { license_id: String },
    /// Move the expiry to a later date (YYYY-MM-DD, UTC, or an RFC 3339 time).
    Renew {
        license_id: String,
        #[arg(long)]
        expires: String,
    },
    /// Change the seats or allowed activations.
    Seats { license_id: String, seats: i32 },
    /// Replace a server license's grants (its servers get them with their next file).
    Grants {
        license_id: String,
        /// Floating seats of a product (`cad-pro=25`) or feature (`cad-pro/render=5`); repeat.
        #[arg(long = "grant", value_parser = server_grant)]
        grants: Vec<ServerGrant>,
        /// Node-locked activations of a product (`cad-pro=10`); repeat.
        #[arg(long = "grant-node-locked", value_parser = counted_owned)]
        grants_node_locked: Vec<(String, i32)>,
    },
    /// Set how long the license stays usable after its expiry (`14d`; `0d` for none).
    Grace {
        license_id: String,
        #[arg(value_parser = duration)]
        grace: prost_types::Duration,
    },
    /// Require a node-locked license's machines to check in at least this often (e.g. 10m, 1h;
    /// 1 minute to 365 days), or `off`: a machine not seen for that long is deactivated without
    /// spending a deactivation.
    Heartbeat {
        license_id: String,
        #[arg(value_parser = heartbeat_timeout)]
        timeout: HeartbeatTimeout,
    },
    /// Set the value and own expiry of a module the license includes; without either, the
    /// module keeps neither (it stays included).
    Entitle {
        license_id: String,
        /// The module's code.
        module: String,
        /// The value the product reads, e.g. 4096 (at most 256 characters).
        #[arg(long)]
        value: Option<String>,
        /// When the module stops being licensed, YYYY-MM-DD (UTC) or an RFC 3339 time; with
        /// the license when omitted.
        #[arg(long)]
        expires: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Create a policy of a product.
    Create {
        /// The product code.
        #[arg(long)]
        product: String,
        /// A name unique within the product, e.g. "Annual, 3 machines".
        #[arg(long)]
        name: String,
        #[command(flatten)]
        terms: TermsArgs,
    },
    /// List policies, of one product or of all.
    List {
        /// Only this product's.
        #[arg(long)]
        product: Option<String>,
    },
    /// Show a policy's terms.
    Show { policy_id: String },
    /// Replace a policy's terms (its revision goes up); issued licenses keep theirs until applied.
    Update {
        policy_id: String,
        #[command(flatten)]
        terms: TermsArgs,
    },
    /// Give licenses of the policy's product its current terms (audited per license).
    Apply {
        policy_id: String,
        /// License IDs.
        #[arg(required = true)]
        licenses: Vec<String>,
    },
}

/// The terms of a policy on the command line.
#[derive(clap::Args)]
struct TermsArgs {
    #[arg(long, value_enum)]
    kind: Kind,
    /// Seats (concurrent) or allowed activations (node-locked).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    seats: i32,
    /// Allowed deactivations; -1 for unlimited.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    deactivations: i32,
    /// Comma-separated module codes.
    #[arg(long, value_delimiter = ',')]
    modules: Vec<String>,
    /// How long a license is valid from its start (e.g. 365d); perpetual when omitted.
    #[arg(long, value_parser = duration)]
    validity: Option<prost_types::Duration>,
    /// How long after its start released versions are covered; every version when omitted.
    #[arg(long, value_parser = duration)]
    upgrade_period: Option<prost_types::Duration>,
    /// When validity and upgrade period start: at issue, or at the first activation or checkout.
    #[arg(long, value_enum, default_value = "issue")]
    start: Start,
    /// Usable this long past the expiry, flagged as in grace.
    #[arg(long, value_parser = duration)]
    grace: Option<prost_types::Duration>,
    /// Node-locked: machines not seen for this long are deactivated.
    #[arg(long, value_parser = duration)]
    heartbeat_timeout: Option<prost_types::Duration>,
    /// A meter, `CODE=LIMIT[+OVERAGE]/RESET` (RESET: monthly, yearly or never); repeatable.
    #[arg(long = "meter", value_parser = meter_arg)]
    meters: Vec<Meter>,
    /// A trial policy: machines start it without a key (node-locked, 1 seat, --validity long).
    #[arg(long)]
    trial: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Start {
    /// At issue.
    Issue,
    /// At the first activation (node-locked) or checkout (concurrent).
    FirstUse,
}

impl TermsArgs {
    fn to_proto(&self) -> LicenseTerms {
        LicenseTerms {
            kind: kind_to_proto(self.kind) as i32,
            seats: self.seats,
            allowed_deactivations: self.deactivations,
            modules: self.modules.clone(),
            validity: self.validity,
            upgrade_period: self.upgrade_period,
            start: match self.start {
                Start::Issue => TermsStart::Issue,
                Start::FirstUse => TermsStart::FirstUse,
            } as i32,
            grace_period: self.grace,
            heartbeat_timeout: self.heartbeat_timeout,
            meters: self.meters.clone(),
            trial: self.trial,
        }
    }
}

/// `exports=100/monthly` or `exports=100+10/yearly`.
fn meter_arg(text: &str) -> Result<Meter, String> {
    let bad = || format!("'{text}' is not CODE=LIMIT[+OVERAGE]/RESET, e.g. exports=100+10/monthly");
    let (code, rest) = text.split_once('=').ok_or_else(bad)?;
    let (amounts, reset) = rest.split_once('/').ok_or_else(bad)?;
    let (limit, overage) = amounts.split_once('+').unwrap_or((amounts, "0"));
    let reset = match reset {
        "monthly" => MeterReset::Monthly,
        "yearly" => MeterReset::Yearly,
        "never" => MeterReset::Never,
        _ => return Err(bad()),
    };
    Ok(Meter {
        code: code.to_owned(),
        limit: limit.parse().map_err(|_| bad())?,
        overage: overage.parse().map_err(|_| bad())?,
        reset: reset as i32,
    })
}

fn kind_to_proto(kind: Kind) -> LicenseKind {
    match kind {
        Kind::NodeLocked => LicenseKind::NodeLocked,
        Kind::Concurrent => LicenseKind::Concurrent,
        Kind::Cloud => LicenseKind::Cloud,
        Kind::Server => LicenseKind::Server,
    }
}

fn license_policy_json(p: &Policy) -> Value {
    let t = p.terms.clone().unwrap_or_default();
    json!({
        "policy_id": p.policy_id, "product": p.product_code, "name": p.name, "revision": p.revision,
        "kind": LicenseKind::try_from(t.kind).map(|k| k.as_str_name()).unwrap_or("?"),
        "seats": t.seats, "deactivations": t.allowed_deactivations, "modules": t.modules,
        "validity": span(t.validity.as_ref()), "upgrade_period": span(t.upgrade_period.as_ref()),
        "start": TermsStart::try_from(t.start).map_or("?", |s| match s {
            TermsStart::FirstUse => "first_use",
            _ => "issue",
        }),
        "grace": span(t.grace_period.as_ref()), "heartbeat_timeout": span(t.heartbeat_timeout.as_ref()),
        "meters": t.meters.iter().map(|m| format!("{}={}+{}/{}", m.code, m.limit, m.overage, reset_name(m.reset))).collect::<Vec<_>>(),
        "trial": t.trial,
        "updated": time(p.updated_at.as_ref()),
    })
}

const POLICY_COLUMNS: &[&str] = &["policy_id", "product", "name", "revision", "kind", "seats", "validity", "start"];
const POLICY_SHOWN: &[&str] = &[
    "policy_id",
    "product",
    "name",
    "revision",
    "kind",
    "seats",
    "deactivations",
    "modules",
    "validity",
    "upgrade_period",
    "start",
    "grace",
    "heartbeat_timeout",
    "meters",
    "updated",
];

#[derive(Subcommand)]
enum MeterCommand {
    /// Add a meter to a license, or change the one with this code (use counted so far stays).
    Set {
        license_id: String,
        /// What is counted, e.g. exports.
        code: String,
        /// Use allowed per period.
        #[arg(long, allow_negative_numbers = true)]
        limit: i64,
        /// Use allowed beyond the limit per period (billed as overage).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        overage: i64,
        /// When the count starts again.
        #[arg(long, value_enum)]
        reset: Reset,
    },
    /// Remove a meter; what it counted stays in the history.
    Remove { license_id: String, code: String },
    /// The meters' use in the current period, and every period counted.
    Show {
        license_id: String,
        /// Print every period as CSV, for a spreadsheet.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Reset {
    /// At the start of every calendar month (UTC).
    Monthly,
    /// At the start of every calendar year (UTC).
    Yearly,
    /// Never: the limit is for the license's whole life.
    Never,
}

/// A heartbeat timeout on the command line: a duration, or `off`.
#[derive(Clone)]
struct HeartbeatTimeout(Option<prost_types::Duration>);

fn heartbeat_timeout(text: &str) -> Result<HeartbeatTimeout, String> {
    match text {
        "off" => Ok(HeartbeatTimeout(None)),
        _ => duration(text).map(|d| HeartbeatTimeout(Some(d))),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Share {
    /// Every checkout takes its own seat.
    None,
    /// Processes of the same user on the same host share a seat.
    UserHost,
    /// Processes of the same user share a seat.
    User,
    /// Processes on the same host share a seat.
    Host,
}

#[derive(Subcommand)]
enum SeatPolicyCommand {
    /// Show a concurrent license's seat policy and its pool (seats in use, waiting).
    Show { license_id: String },
    /// Replace a concurrent license's seat policy: what is not given is off. A principal is
    /// user:NAME, host:NAME or group:NAME; a duration is e.g. 15m, 2h or 7d.
    Set {
        license_id: String,
        #[command(flatten)]
        policy: Box<PolicyFlags>,
    },
}

/// A seat policy as flags (`seat-policy set`).
#[derive(clap::Args)]
struct PolicyFlags {
    /// Which checkouts share one seat.
    #[arg(long, value_enum, default_value = "none")]
    share: Share,
    /// Processes that may share one seat; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    max_processes: i32,
    /// How long a checked-in seat stays held for the same user, host and feature.
    #[arg(long, value_parser = duration)]
    linger: Option<prost_types::Duration>,
    /// The longest borrow; borrowing is off when omitted.
    #[arg(long, value_parser = duration)]
    max_borrow: Option<prost_types::Duration>,
    /// Lease time to live when a product asks for none; the server's default when omitted.
    #[arg(long, value_parser = duration)]
    default_ttl: Option<prost_types::Duration>,
    /// Seats beyond the license's seats a checkout may take (counted as overdraft).
    #[arg(long, default_value_t = 0)]
    overdraft: i32,
    /// Seats kept for a principal, as PRINCIPAL=SEATS (repeat for several).
    #[arg(long = "reserve", value_parser = reservation)]
    reservations: Vec<seat::Reservation>,
    /// The most seats a principal may hold at once, as PRINCIPAL=SEATS (repeat for several).
    #[arg(long = "cap", value_parser = cap)]
    caps: Vec<seat::SeatCap>,
    /// Only these principals may check out (repeat for several).
    #[arg(long, value_parser = principal)]
    allow: Vec<seat::Principal>,
    /// These principals never may; deny wins over allow (repeat for several).
    #[arg(long, value_parser = principal)]
    deny: Vec<seat::Principal>,
    /// Seats a checkout of a feature costs, as FEATURE=SEATS (others cost 1).
    #[arg(long = "feature-cost", value_parser = feature_cost)]
    feature_costs: Vec<(String, i32)>,
    /// A group of users and hosts, as NAME=user:a,host:b (repeat for several).
    #[arg(long = "group", value_parser = group)]
    groups: Vec<seat::SeatGroup>,
}

#[derive(Subcommand)]
enum TrialCommand {
    /// How many trials of a product were started, are active, expired and were converted.
    Stats { product: String },
    /// Convert a trial license to a paid one in place: its machine keeps its activation and key.
    Convert {
        /// The trial's License ID.
        license_id: String,
        /// The customer (cus_...) who bought it.
        #[arg(long)]
        customer: String,
        /// A paid policy (pol_...) of the trial's product whose terms it gets.
        #[arg(long)]
        policy: String,
        /// Also associate the license with the customer's portal account.
        #[arg(long)]
        associate: bool,
    },
}

#[derive(Subcommand)]
enum LeaseCommand {
    /// List the leases of a concurrent license, and how many seats are in use.
    List { license_id: String },
    /// Revoke a lease: its seat is free at once and the product is told it lost it.
    Revoke { license_id: String, lease_id: String },
}

/// A failure, said in one line a person can act on.
#[derive(Debug)]
struct Failure(String);

impl Failure {
    fn from_status(server: &str, status: tonic::Status, settings: &clap::ArgMatches) -> Self {
        // No reason: the server never answered (the transport failed), so say why it did.
        let from_server = licensing_runtime::status::reason_of(&status).is_some();
        if !from_server && matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled) {
            return Failure(licensing_runtime::tls::explain_transport_failure(server, &status, settings));
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

/// Writes to stdout. A reader that went away (`| head`) ends the program quietly, as `cat` does.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("licensectl: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`emit`].
macro_rules! out {
    ($($arg:tt)*) => { emit(&format!("{}\n", format_args!($($arg)*))) };
}

fn parse_date(flag: &str, text: &str) -> Result<prost_types::Timestamp, Failure> {
    let at = licensing_domain::clock::parse_instant(text).map_err(|e| Failure(format!("{flag}: {e}")))?;
    Ok(prost_types::Timestamp { seconds: at.div_euclid(1000), nanos: (at.rem_euclid(1000) * 1_000_000) as i32 })
}

/// A time as RFC 3339 (`2027-12-31T12:01:00Z`), or null when unset.
fn time(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok()).map_or(Value::Null, |t| json!(t.to_string()))
}

/// A table cell: an RFC 3339 time to the minute, a list joined by commas, nothing as `-`.
fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) if s.contains('T') => t.strftime("%Y-%m-%d %H:%M").to_string(),
            _ => s.clone(),
        },
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A duration as people write it (`15m`, `168h`), or null when unset.
fn span(d: Option<&prost_types::Duration>) -> Value {
    d.filter(|d| d.seconds != 0 || d.nanos != 0)
        .map_or(Value::Null, |d| json!(format!("{:#}", jiff::SignedDuration::new(d.seconds, d.nanos))))
}

/// `15m`, `2h`, `7d` (days of 24 hours) or an ISO 8601 duration (`PT15M`).
fn duration(text: &str) -> Result<prost_types::Duration, String> {
    let span: jiff::Span =
        text.parse().map_err(|e| format!("'{text}' is not a duration such as 15m, 2h or 7d: {e}"))?;
    let d = span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()).map_err(|e| format!("'{text}': {e}"))?;
    if d.is_negative() {
        return Err(format!("'{text}' is negative"));
    }
    Ok(prost_types::Duration { seconds: d.as_secs(), nanos: d.subsec_nanos() })
}

/// `user:NAME`, `host:NAME` or `group:NAME`.
fn principal(text: &str) -> Result<seat::Principal, String> {
    let (kind, name) =
        text.split_once(':').ok_or_else(|| format!("'{text}' is not user:NAME, host:NAME or group:NAME"))?;
    let kind = match kind {
        "user" => seat::PrincipalKind::User,
        "host" => seat::PrincipalKind::Host,
        "group" => seat::PrincipalKind::Group,
        _ => return Err(format!("'{text}' is not user:NAME, host:NAME or group:NAME")),
    };
    if name.is_empty() {
        return Err(format!("'{text}' names nobody"));
    }
    Ok(seat::Principal { kind: kind as i32, name: name.to_owned() })
}

fn principal_text(p: &seat::Principal) -> String {
    let kind = match seat::PrincipalKind::try_from(p.kind) {
        Ok(seat::PrincipalKind::User) => "user",
        Ok(seat::PrincipalKind::Host) => "host",
        Ok(seat::PrincipalKind::Group) => "group",
        _ => "?",
    };
    format!("{kind}:{}", p.name)
}

/// `THING=N`, split at the last `=`.
fn counted(text: &str) -> Result<(&str, i32), String> {
    let (thing, n) = text.rsplit_once('=').ok_or_else(|| format!("'{text}' is not NAME=NUMBER"))?;
    Ok((thing, n.parse().map_err(|_| format!("'{text}': '{n}' is not a whole number"))?))
}

fn counted_owned(text: &str) -> Result<(String, i32), String> {
    counted(text).map(|(thing, n)| (thing.to_owned(), n))
}

/// `PRODUCT=SEATS` or `PRODUCT/FEATURE=SEATS`: a server license's floating-seat grant.
fn server_grant(text: &str) -> Result<ServerGrant, String> {
    let (name, floating_seats) = counted(text)?;
    let (product, feature) = name.split_once('/').unwrap_or((name, ""));
    Ok(ServerGrant {
        product_code: product.to_owned(),
        feature: feature.to_owned(),
        floating_seats,
        node_locked_activations: 0,
    })
}

/// The grants of `--grant` and `--grant-node-locked`, one per product or feature.
fn merged_grants(mut grants: Vec<ServerGrant>, node_locked: Vec<(String, i32)>) -> Vec<ServerGrant> {
    for (product, activations) in node_locked {
        match grants.iter_mut().find(|g| g.product_code == product && g.feature.is_empty()) {
            Some(g) => g.node_locked_activations = activations,
            None => grants.push(ServerGrant {
                product_code: product,
                feature: String::new(),
                floating_seats: 0,
                node_locked_activations: activations,
            }),
        }
    }
    grants
}

/// A grant as one line: `cad-pro=25 node-locked=10`, `cad-pro/render=5`.
fn grant_text(g: &ServerGrant) -> String {
    let name = if g.feature.is_empty() { g.product_code.clone() } else { format!("{}/{}", g.product_code, g.feature) };
    match g.node_locked_activations {
        0 => format!("{name}={}", g.floating_seats),
        n => format!("{name}={} node-locked={n}", g.floating_seats),
    }
}

fn reservation(text: &str) -> Result<seat::Reservation, String> {
    let (who, seats) = counted(text)?;
    Ok(seat::Reservation { principal: Some(principal(who)?), seats })
}

fn cap(text: &str) -> Result<seat::SeatCap, String> {
    let (who, max_seats) = counted(text)?;
    Ok(seat::SeatCap { principal: Some(principal(who)?), max_seats })
}

fn feature_cost(text: &str) -> Result<(String, i32), String> {
    counted(text).map(|(feature, seats)| (feature.to_owned(), seats))
}

fn group(text: &str) -> Result<seat::SeatGroup, String> {
    let (name, members) = text.split_once('=').ok_or_else(|| format!("'{text}' is not NAME=user:a,host:b"))?;
    let members = members.split(',').filter(|m| !m.is_empty()).map(principal).collect::<Result<_, _>>()?;
    Ok(seat::SeatGroup { name: name.to_owned(), members })
}

fn module(text: &str) -> Result<licensing_proto::common::v1::Module, String> {
    let (code, name) = text.split_once('=').unwrap_or((text, text));
    Ok(licensing_proto::common::v1::Module { code: code.to_owned(), name: name.to_owned() })
}

fn license_json(l: &License) -> Value {
    json!({
        "license_id": l.license_id, "product": l.product_code, "customer_id": l.customer_id,
        "kind": LicenseKind::try_from(l.kind).map(|k| k.as_str_name()).unwrap_or("?"),
        "status": LicenseStatus::try_from(l.status).map(|s| s.as_str_name()).unwrap_or("?"),
        "seats": l.seats, "activations_used": l.activations_used, "allowed_deactivations": l.allowed_deactivations,
        "deactivations_used": l.deactivations_used, "modules": l.modules, "expires": time(l.expires_at.as_ref()),
        "grace_period": span(l.grace_period.as_ref()), "grace_ends": time(l.grace_ends_at.as_ref()),
        "entitlements": l.module_entitlements.iter().map(entitlement_text).collect::<Vec<_>>(),
        "associated_customer_id": l.associated_customer_id,
        "heartbeat_timeout": span(l.heartbeat_timeout.as_ref()),
        "policy": (!l.policy_id.is_empty()).then(|| format!("{} (revision {})", l.policy_id, l.policy_revision)),
        "first_used": time(l.first_used_at.as_ref()),
        "starts_at_first_use": l.starts_at_first_use,
        "server_grants": l.server_grants.iter().map(grant_text).collect::<Vec<_>>(),
    })
}

const SERVER_COLUMNS: &[&str] = &["installation_id", "server_name", "serial", "activated", "last_seen"];
const USAGE_REPORT_COLUMNS: &[&str] = &[
    "received",
    "period_start",
    "period_end",
    "installation_id",
    "serial",
    "grant",
    "kind",
    "granted",
    "peak",
    "checkouts",
    "denials",
    "seat_hours",
];

/// A server activated on a server license.
fn server_json(s: &pb::ActivatedServer) -> Value {
    json!({"installation_id": s.installation_id, "server_name": s.server_name, "serial": s.serial,
        "activated": time(s.activated_at.as_ref()), "last_seen": time(s.last_seen_at.as_ref())})
}

/// A grant's use as `cad-pro` or `cad-pro/render`.
fn usage_grant_name(g: &licensing_proto::activation::v1::ServerGrantUsage) -> String {
    if g.feature.is_empty() {
        g.product_code.clone()
    } else {
        format!("{}/{}", g.product_code, g.feature)
    }
}

fn usage_grant_json(g: &licensing_proto::activation::v1::ServerGrantUsage) -> Value {
    json!({"grant": usage_grant_name(g), "kind": g.kind, "granted": g.granted, "peak": g.peak_in_use,
        "checkouts": g.checkouts, "denials": g.denials, "seat_seconds": g.seat_seconds,
        "seat_hours": format!("{:.1}", g.seat_seconds as f64 / 3600.0)})
}

/// A usage report with its grants (JSON output).
fn usage_report_json(r: &pb::ServerUsageReport) -> Value {
    json!({"report_id": r.report_id, "license_id": r.license_id, "installation_id": r.installation_id,
        "serial": r.serial, "period_start": time(r.period_start.as_ref()), "period_end": time(r.period_end.as_ref()),
        "received": time(r.received_at.as_ref()), "grants": r.grants.iter().map(usage_grant_json).collect::<Vec<_>>()})
}

/// A usage report as table rows, one per grant.
fn usage_report_rows(r: &pb::ServerUsageReport) -> Vec<Value> {
    let report = usage_report_json(r);
    r.grants
        .iter()
        .map(|g| {
            let mut row = usage_grant_json(g);
            for key in ["received", "period_start", "period_end", "installation_id", "serial"] {
                row[key] = report[key].clone();
            }
            row
        })
        .collect()
}

/// A module entitlement as one line: `max-resolution=4096 until 2027-06-30T00:00:00Z`.
fn entitlement_text(e: &licensing_proto::common::v1::ModuleEntitlement) -> String {
    let mut text = e.module.clone();
    if !e.value.is_empty() {
        text = format!("{text}={}", e.value);
    }
    if let Value::String(until) = time(e.expires_at.as_ref()) {
        text = format!("{text} until {until}");
    }
    text
}

fn product_json(p: &Product) -> Value {
    json!({
        "code": p.code, "name": p.name,
        "modules": p.modules.iter().map(|m| json!({"code": m.code, "name": m.name})).collect::<Vec<_>>(),
        "versions": p.versions.iter().map(|v| json!({"version": v.version, "released": time(v.released_at.as_ref())})).collect::<Vec<_>>(),
        "created": time(p.created_at.as_ref()),
    })
}

/// A product as a table row: module codes and version numbers only.
fn product_row(p: &Product) -> Value {
    json!({
        "code": p.code, "name": p.name, "modules": p.modules.iter().map(|m| &m.code).collect::<Vec<_>>(),
        "versions": p.versions.iter().map(|v| &v.version).collect::<Vec<_>>(), "created": time(p.created_at.as_ref()),
    })
}

fn customer_json(c: &Customer) -> Value {
    json!({
        "customer_id": c.customer_id, "company": c.company_name, "email": c.contact_email,
        "contact": c.contact_name, "phone": c.phone, "created": time(c.created_at.as_ref()),
    })
}

fn policy_json(p: &seat::SeatPolicy) -> Value {
    let share = match seat::ShareScope::try_from(p.share_scope) {
        Ok(seat::ShareScope::UserHost) => "user-host",
        Ok(seat::ShareScope::User) => "user",
        Ok(seat::ShareScope::Host) => "host",
        _ => "none",
    };
    let named = |p: &Option<seat::Principal>| p.as_ref().map_or_else(String::new, principal_text);
    let mut costs: Vec<_> = p.feature_costs.iter().collect();
    costs.sort();
    json!({
        "share": share, "max_processes": p.max_processes_per_seat, "linger": span(p.linger.as_ref()),
        "max_borrow": span(p.max_borrow.as_ref()), "default_ttl": span(p.default_ttl.as_ref()),
        "overdraft": p.overdraft_seats,
        "reserve": p.reservations.iter().map(|r| format!("{}={}", named(&r.principal), r.seats)).collect::<Vec<_>>(),
        "cap": p.caps.iter().map(|c| format!("{}={}", named(&c.principal), c.max_seats)).collect::<Vec<_>>(),
        "allow": p.allow.iter().map(principal_text).collect::<Vec<_>>(),
        "deny": p.deny.iter().map(principal_text).collect::<Vec<_>>(),
        "feature_cost": costs.iter().map(|(f, n)| format!("{f}={n}")).collect::<Vec<_>>(),
        "group": p.groups.iter().map(|g| format!("{}={}", g.name, g.members.iter().map(principal_text).collect::<Vec<_>>().join(","))).collect::<Vec<_>>(),
    })
}

/// Rows of JSON objects as a table with the given columns (headers in capitals), no borders.
fn table(rows: &[Value], columns: &[&str]) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(columns.iter().map(|c| c.to_uppercase()));
    for row in rows {
        t.add_row(columns.iter().map(|c| cell(&row[*c])));
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t.trim_fmt()
}

/// One object as `field  value` lines, in the order of `names`.
fn fields(row: &Value, names: &[&str]) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    for name in names {
        t.add_row([(*name).to_owned(), cell(&row[*name])]);
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t.trim_fmt()
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values serialize")
}

fn print(json_mode: bool, rows: Vec<Value>, columns: &[&str]) {
    if json_mode {
        out!("{}", pretty(&Value::Array(rows)));
    } else {
        out!("{}", table(&rows, columns));
    }
}

/// One object: JSON, or `field  value` lines in the order of `names`.
fn print_one(json_mode: bool, row: &Value, names: &[&str]) {
    if json_mode {
        out!("{}", pretty(row));
    } else {
        out!("{}", fields(row, names));
    }
}

const LICENSE_COLUMNS: &[&str] =
    &["license_id", "product", "customer_id", "kind", "status", "seats", "activations_used", "expires"];
const LICENSE_FIELDS: &[&str] = &[
    "license_id",
    "product",
    "customer_id",
    "kind",
    "status",
    "seats",
    "activations_used",
    "allowed_deactivations",
    "deactivations_used",
    "modules",
    "expires",
    "grace_period",
    "grace_ends",
    "entitlements",
    "associated_customer_id",
    "heartbeat_timeout",
    "policy",
    "starts_at_first_use",
    "first_used",
];
const PRODUCT_COLUMNS: &[&str] = &["code", "name", "modules", "versions", "created"];
const CUSTOMER_COLUMNS: &[&str] = &["customer_id", "company", "email", "created"];
const CUSTOMER_FIELDS: &[&str] = &["customer_id", "company", "email", "contact", "phone", "created"];
const POLICY_FIELDS: &[&str] = &[
    "share",
    "max_processes",
    "linger",
    "max_borrow",
    "default_ttl",
    "overdraft",
    "reserve",
    "cap",
    "allow",
    "deny",
    "feature_cost",
    "group",
];

const METER_COLUMNS: &[&str] = &["meter", "limit", "overage", "reset"];
const METER_USAGE_COLUMNS: &[&str] =
    &["meter", "period_start", "period_end", "used", "limit", "overage", "overage_used", "remaining"];

fn reset_name(reset: i32) -> &'static str {
    match MeterReset::try_from(reset) {
        Ok(MeterReset::Monthly) => "monthly",
        Ok(MeterReset::Yearly) => "yearly",
        Ok(MeterReset::Never) => "never",
        _ => "unspecified",
    }
}

fn meter_json(m: &Meter) -> Value {
    json!({"meter": m.code, "limit": m.limit, "overage": m.overage, "reset": reset_name(m.reset)})
}

fn meter_usage_json(u: &MeterUsage) -> Value {
    let m = u.meter.clone().unwrap_or_default();
    json!({"meter": m.code, "period_start": time(u.period_start.as_ref()), "period_end": time(u.period_end.as_ref()),
        "used": u.used, "limit": m.limit, "overage": m.overage, "overage_used": u.overage_used,
        "remaining": u.remaining})
}

/// A license's meters after a change.
fn print_meters(json_out: bool, l: &License) {
    let rows: Vec<Value> = l.meters.iter().map(meter_json).collect();
    if json_out {
        out!("{}", pretty(&json!({"license_id": l.license_id, "meters": rows})));
    } else {
        out!("{}", table(&rows, METER_COLUMNS));
    }
}

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

/// Every page of a list: `fetch` gets each page request and answers the items and the next
/// page's token (empty after the last).
async fn all_pages<T, F, Fut>(paging: Paging, mut fetch: F) -> Result<Vec<T>, Failure>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Failure>>,
{
    let mut items = vec![];
    let mut page_token = String::new();
    loop {
        let (page, next) = fetch(PageRequest { page_size: paging.page_size, page_token: page_token.clone() }).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        if next == page_token {
            return Err(Failure(format!("the server answered the same page token twice ({next}); listing stopped")));
        }
        page_token = next;
    }
}

/// The first line of stdin, without its line ending.
fn password_from_stdin() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| Failure(format!("cannot read the password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(Failure("no password on stdin: give it as the first line".into()));
    }
    Ok(password)
}

fn onprem_status_json(s: &onprem::GetServerStatusResponse) -> Value {
    json!({
        "serving": s.serving,
        "not_serving": if s.serving { Value::Null } else { json!(format!("{}: {}", s.not_serving_reason, s.not_serving_message)) },
        "license_id": s.license_id, "installation_id": s.installation_id, "serial": s.serial,
        "issued_at": time(s.issued_at.as_ref()), "expires_at": time(s.expires_at.as_ref()),
        "grace_ends_at": time(s.grace_ends_at.as_ref()), "vendor_url": s.vendor_url,
        "last_refresh_at": time(s.last_refresh_at.as_ref()), "last_refresh_error": s.last_refresh_error,
        "licenses": s.licenses.iter().map(|l| json!({
            "license_id": l.license_id, "license_key": l.license_key, "kind": l.kind, "product": l.product_code,
            "feature": l.feature, "seats": l.seats, "in_use": l.in_use,
        })).collect::<Vec<_>>(),
    })
}

fn print_onprem_status(as_json: bool, s: &onprem::GetServerStatusResponse) {
    let row = onprem_status_json(s);
    if as_json {
        out!("{}", pretty(&row));
    } else {
        out!("{}", fields(&row, ONPREM_STATUS_FIELDS));
        let licenses = row["licenses"].as_array().cloned().unwrap_or_default();
        if !licenses.is_empty() {
            out!("\n{}", table(&licenses, ONPREM_LICENSE_COLUMNS));
        }
    }
}

async fn run(cli: Cli, settings: &clap::ArgMatches) -> Result<(), Failure> {
    let tls = licensing_runtime::tls::client_config(settings).map_err(|e| Failure(e.to_string()))?;
    let channel: Channel = licensing_runtime::tls::endpoint(&cli.server, tls)
        .map_err(|_| Failure(format!("--server: '{}' is not a URL such as http://127.0.0.1:50051", cli.server)))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15))
        .connect_lazy();
    let mut admin = AdminServiceClient::new(channel.clone());
    let server = cli.server.clone();
    let fail = |s: tonic::Status| Failure::from_status(&server, s, settings);
    let token = &cli.token;
    match cli.command {
        Command::Products(ProductCommand::Create { code, name, modules }) => {
            let request = pb::CreateProductRequest { code, name, modules };
            let p = admin.create_product(authorized(token, request)?).await.map_err(fail)?.into_inner().product;
            let p = p.unwrap_or_default();
            if cli.json {
                out!("{}", pretty(&product_json(&p)));
            } else {
                out!("{}", table(&[product_row(&p)], PRODUCT_COLUMNS));
            }
        }
        Command::Products(ProductCommand::List { paging }) => {
            let products = all_pages(paging, |page| {
                let mut admin = admin.clone();
                async move {
                    let r = admin
                        .list_products(authorized(token, pb::ListProductsRequest { page: Some(page) })?)
                        .await
                        .map_err(fail)?
                        .into_inner();
                    Ok((r.products, r.next_page_token))
                }
            })
            .await?;
            if cli.json {
                print(true, products.iter().map(product_json).collect(), &[]);
            } else {
                print(false, products.iter().map(product_row).collect(), PRODUCT_COLUMNS);
            }
        }
        Command::Products(ProductCommand::Show { code }) => {
            let p = admin.get_product(authorized(token, pb::GetProductRequest { code })?).await.map_err(fail)?;
            let p = p.into_inner().product.unwrap_or_default();
            if cli.json {
                out!("{}", pretty(&product_json(&p)));
            } else {
                out!("{}", fields(&product_row(&p), PRODUCT_COLUMNS));
                if !p.modules.is_empty() {
                    let rows: Vec<Value> =
                        p.modules.iter().map(|m| json!({"module": m.code, "name": m.name})).collect();
                    out!("\n{}", table(&rows, &["module", "name"]));
                }
                if !p.versions.is_empty() {
                    let rows: Vec<Value> = p
                        .versions
                        .iter()
                        .map(|v| json!({"version": v.version, "released": time(v.released_at.as_ref())}))
                        .collect();
                    out!("\n{}", table(&rows, &["version", "released"]));
                }
            }
        }
        Command::Products(ProductCommand::AddVersion { code, version, released }) => {
            let released_at = released.map(|d| parse_date("--released", &d)).transpose()?;
            let request = pb::AddProductVersionRequest { product_code: code, version, released_at };
            let p = admin.add_product_version(authorized(token, request)?).await.map_err(fail)?;
            let p = p.into_inner().product.unwrap_or_default();
            if cli.json {
                out!("{}", pretty(&product_json(&p)));
            } else {
                out!("{}", table(&[product_row(&p)], PRODUCT_COLUMNS));
            }
        }
        Command::Products(ProductCommand::AddModule { code, module }) => {
            let request = pb::AddProductModuleRequest { product_code: code, module: Some(module) };
            let p = admin.add_product_module(authorized(token, request)?).await.map_err(fail)?;
            let p = p.into_inner().product.unwrap_or_default();
            if cli.json {
                out!("{}", pretty(&product_json(&p)));
            } else {
                out!("{}", table(&[product_row(&p)], PRODUCT_COLUMNS));
            }
        }
        Command::Customers(CustomerCommand::Create { company, email, password_stdin }) => {
            let password = if password_stdin { password_from_stdin()? } else { String::new() };
            let request = pb::CreateCustomerRequest { company_name: company, contact_email: email, password };
            let c = admin.create_customer(authorized(token, request)?).await.map_err(fail)?.into_inner().customer;
            print_one(cli.json, &customer_json(&c.unwrap_or_default()), CUSTOMER_FIELDS);
        }
        Command::Customers(CustomerCommand::List { query, paging }) => {
            let query = query.unwrap_or_default();
            let customers = all_pages(paging, |page| {
                let mut admin = admin.clone();
                let query = query.clone();
                async move {
                    let request = pb::ListCustomersRequest { page: Some(page), query };
                    let r = admin.list_customers(authorized(token, request)?).await.map_err(fail)?.into_inner();
                    Ok((r.customers, r.next_page_token))
                }
            })
            .await?;
            print(cli.json, customers.iter().map(customer_json).collect(), CUSTOMER_COLUMNS);
        }
        Command::Customers(CustomerCommand::Show { customer_id }) => {
            let c = admin.get_customer(authorized(token, pb::GetCustomerRequest { customer_id })?).await;
            let c = c.map_err(fail)?.into_inner().customer.unwrap_or_default();
            print_one(cli.json, &customer_json(&c), CUSTOMER_FIELDS);
        }
        Command::Customers(CustomerCommand::SetPassword { customer_id }) => {
            let password = password_from_stdin()?;
            let request = pb::SetCustomerPasswordRequest { customer_id: customer_id.clone(), password };
            admin.set_customer_password(authorized(token, request)?).await.map_err(fail)?;
            if cli.json {
                out!("{}", pretty(&json!({"customer_id": customer_id, "password_set": true})));
            } else {
                out!("The portal password of {customer_id} is set.");
            }
        }
        Command::Licenses(LicenseCommand::Issue {
            product,
            customer,
            policy,
            kind,
            seats,
            deactivations,
            modules,
            expires,
            grace,
            associate,
            heartbeat_timeout,
            grants,
            grants_node_locked,
        }) => {
            let kind = kind.map(kind_to_proto);
            // Without a policy, the defaults of a plain license; with one, what is left out is its.
            let (seats, deactivations) = match &policy {
                None => (seats.unwrap_or(1), deactivations.unwrap_or(3)),
                Some(_) => (seats.unwrap_or(0), deactivations.unwrap_or(0)),
            };
            let expires_at = expires.as_deref().map(|e| parse_date("--expires", e)).transpose()?;
            let request = pb::IssueLicenseRequest {
                product_code: product.unwrap_or_default(),
                customer_id: customer,
                policy_id: policy.unwrap_or_default(),
                kind: kind.map_or(0, |k| k as i32),
                seats: if kind == Some(LicenseKind::Cloud) { 0 } else { seats },
                allowed_deactivations: deactivations,
                modules,
                expires_at,
                grace_period: grace,
                associate,
                heartbeat_timeout,
                server_grants: merged_grants(grants, grants_node_locked),
                ..Default::default()
            };
            let issued = admin.issue_license(authorized(token, request)?).await.map_err(fail)?.into_inner();
            let mut row = license_json(&issued.license.unwrap_or_default());
            row["license_key"] = json!(issued.license_key);
            row["activation_password"] = json!(issued.activation_password);
            if cli.json {
                out!("{}", pretty(&row));
            } else {
                out!(
                    "{}\n\nLicense key (shown once): {}\nActivation password: {}",
                    table(&[row.clone()], LICENSE_COLUMNS),
                    row["license_key"].as_str().unwrap_or(""),
                    row["activation_password"].as_str().unwrap_or("")
                );
            }
        }
        Command::Licenses(LicenseCommand::List { customer, product, status, query, paging }) => {
            let status = status.map_or(0, |s| match s {
                Status::Active => LicenseStatus::Active as i32,
                Status::Suspended => LicenseStatus::Suspended as i32,
                Status::Retired => LicenseStatus::Retired as i32,
            });
            let filter = pb::ListLicensesRequest {
                customer_id: customer.unwrap_or_default(),
                product_code: product.unwrap_or_default(),
                status,
                query: query.unwrap_or_default(),
                page: None,
            };
            let licenses = all_pages(paging, |page| {
                let mut admin = admin.clone();
                let request = pb::ListLicensesRequest { page: Some(page), ..filter.clone() };
                async move {
                    let r = admin.list_licenses(authorized(token, request)?).await.map_err(fail)?.into_inner();
                    Ok((r.licenses, r.next_page_token))
                }
            })
            .await?;
            print(cli.json, licenses.iter().map(license_json).collect(), LICENSE_COLUMNS);
        }
        Command::Licenses(LicenseCommand::Show { license_id }) => {
            let r = admin
                .get_license(authorized(token, pb::GetLicenseRequest { license_id })?)
                .await
                .map_err(fail)?
                .into_inner();
            let l = r.license.unwrap_or_default();
            let mut shown = license_json(&l);
            if l.kind != LicenseKind::Server as i32 {
                print_one(cli.json, &shown, LICENSE_FIELDS);
            } else {
                // A server license: its grants, and the servers activated on it.
                let servers: Vec<Value> = r.servers.iter().map(server_json).collect();
                if cli.json {
                    shown["servers"] = Value::Array(servers);
                    out!("{}", pretty(&shown));
                } else {
                    let names: Vec<&str> = LICENSE_FIELDS.iter().copied().chain(["server_grants"]).collect();
                    out!("{}", fields(&shown, &names));
                    match servers.is_empty() {
                        true => out!("\nno server is activated"),
                        false => out!("\n{}", table(&servers, SERVER_COLUMNS)),
                    }
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
                LicenseCommand::Grants { license_id, grants, grants_node_locked } => {
                    let server_grants = merged_grants(grants, grants_node_locked);
                    let request = pb::SetServerGrantsRequest { license_id, server_grants };
                    admin.set_server_grants(authorized(token, request)?).await.map_err(fail)?.into_inner().license
                }
                LicenseCommand::Grace { license_id, grace } => {
                    let request = pb::SetLicenseGracePeriodRequest { license_id, grace_period: Some(grace) };
                    admin
                        .set_license_grace_period(authorized(token, request)?)
                        .await
                        .map_err(fail)?
                        .into_inner()
                        .license
                }
                LicenseCommand::Heartbeat { license_id, timeout } => {
                    let request = pb::SetHeartbeatTimeoutRequest { license_id, heartbeat_timeout: timeout.0 };
                    admin.set_heartbeat_timeout(authorized(token, request)?).await.map_err(fail)?.into_inner().license
                }
                LicenseCommand::Entitle { license_id, module, value, expires } => {
                    let expires_at = expires.as_deref().map(|e| parse_date("--expires", e)).transpose()?;
                    let request = pb::SetModuleEntitlementRequest {
                        license_id,
                        module,
                        value: value.unwrap_or_default(),
                        expires_at,
                    };
                    admin.set_module_entitlement(authorized(token, request)?).await.map_err(fail)?.into_inner().license
                }
                LicenseCommand::Issue { .. } | LicenseCommand::List { .. } | LicenseCommand::Show { .. } => {
                    unreachable!("issue, list and show are handled above")
                }
            };
            print(cli.json, vec![license_json(&license.unwrap_or_default())], LICENSE_COLUMNS);
        }
        Command::SeatPolicy(SeatPolicyCommand::Show { license_id }) => {
            let request = seat::GetPoolStatusRequest { license_id: license_id.clone() };
            let pool = SeatServiceClient::new(channel).get_pool_status(authorized(token, request)?).await;
            let pool = pool.map_err(fail)?.into_inner();
            let policy = policy_json(&pool.policy.unwrap_or_default());
            if cli.json {
                let shown = json!({
                    "license_id": license_id, "seats_total": pool.seats_total, "seats_in_use": pool.seats_in_use,
                    "overdraft_in_use": pool.overdraft_in_use, "waiting": pool.waiting,
                    "earliest_expiry": time(pool.earliest_expiry.as_ref()), "policy": policy,
                });
                out!("{}", pretty(&shown));
            } else {
                out!("{}", fields(&policy, POLICY_FIELDS));
                out!(
                    "\n{} of {} seats in use ({} overdraft), {} waiting",
                    pool.seats_in_use,
                    pool.seats_total,
                    pool.overdraft_in_use,
                    pool.waiting
                );
            }
        }
        Command::SeatPolicy(SeatPolicyCommand::Set { license_id, policy }) => {
            let PolicyFlags {
                share,
                max_processes,
                linger,
                max_borrow,
                default_ttl,
                overdraft,
                reservations,
                caps,
                allow,
                deny,
                feature_costs,
                groups,
            } = *policy;
            let share_scope = match share {
                Share::None => seat::ShareScope::None,
                Share::UserHost => seat::ShareScope::UserHost,
                Share::User => seat::ShareScope::User,
                Share::Host => seat::ShareScope::Host,
            };
            let policy = seat::SeatPolicy {
                share_scope: share_scope as i32,
                max_processes_per_seat: max_processes,
                linger,
                max_borrow,
                overdraft_seats: overdraft,
                reservations,
                caps,
                allow,
                deny,
                feature_costs: feature_costs.into_iter().collect(),
                default_ttl,
                groups,
            };
            let request = seat::UpdateSeatPolicyRequest { license_id, policy: Some(policy) };
            let set = SeatServiceClient::new(channel).update_seat_policy(authorized(token, request)?).await;
            let set = set.map_err(fail)?.into_inner().policy.unwrap_or_default();
            print_one(cli.json, &policy_json(&set), POLICY_FIELDS);
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
                    "since": time(l.checked_out_at.as_ref()), "last_heartbeat": time(l.last_heartbeat_at.as_ref()), "expires": time(l.expires_at.as_ref())}))
                .collect();
            print(
                cli.json,
                rows,
                &["lease_id", "user", "host", "feature", "seats", "state", "since", "last_heartbeat", "expires"],
            );
            if !cli.json {
                out!("\n{} of {} seats in use", reply.seats_in_use, reply.seats_total);
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
        Command::Trials(TrialCommand::Stats { product }) => {
            let request = pb::GetTrialStatsRequest { product_code: product.clone() };
            let r = admin.get_trial_stats(authorized(token, request)?).await.map_err(fail)?.into_inner();
            let row = json!({
                "product": product,
                "started": r.started,
                "active": r.active,
                "expired": r.expired,
                "converted": r.converted,
            });
            print_one(cli.json, &row, &["product", "started", "active", "expired", "converted"]);
        }
        Command::Trials(TrialCommand::Convert { license_id, customer, policy, associate }) => {
            let request = pb::ConvertTrialRequest { license_id, customer_id: customer, policy_id: policy, associate };
            let l = admin.convert_trial(authorized(token, request)?).await.map_err(fail)?.into_inner().license;
            print_one(cli.json, &license_json(&l.unwrap_or_default()), LICENSE_FIELDS);
        }
        Command::ServerLicense(ServerLicenseCommand::Respond { request, out }) => {
            let request_file = std::fs::read_to_string(&request)
                .map_err(|e| Failure(format!("--request: cannot read {}: {e}", request.display())))?;
            // An activation request's answer must land somewhere: checked before anything is
            // signed (the server judges the rest of the file).
            let activation = licensing_domain::server_license::decode_server_request(&request_file)
                .is_ok_and(|r| r.kind == licensing_domain::server_license::ServerRequestKind::Activate);
            if activation && out.is_none() {
                return Err(Failure(
                    "--out: name the file to write the server license file to (this is an activation request)".into(),
                ));
            }
            let answer = admin
                .process_server_request(authorized(token, pb::ProcessServerRequestRequest { request_file })?)
                .await
                .map_err(fail)?
                .into_inner();
            let row = json!({
                "license_id": answer.license.as_ref().map(|l| l.license_id.clone()).unwrap_or_default(),
                "installation_id": answer.installation_id, "serial": answer.serial, "returned": answer.returned,
                "server_license_file": out.as_ref().filter(|_| !answer.returned).map(|p| p.display().to_string()),
            });
            if let (false, Some(out)) = (answer.returned, &out) {
                std::fs::write(out, &answer.server_license_file)
                    .map_err(|e| Failure(format!("--out: cannot write {}: {e}", out.display())))?;
            }
            if cli.json {
                out!("{}", pretty(&row));
            } else {
                out!(
                    "{}",
                    table(&[row], &["license_id", "installation_id", "serial", "returned", "server_license_file"])
                );
            }
        }
        Command::Onprem(command) => {
            let mut server = OnPremisesServiceClient::new(channel.clone());
            match command {
                OnPremCommand::Status => {
                    let s = server.get_server_status(authorized(token, onprem::GetServerStatusRequest {})?).await;
                    print_onprem_status(cli.json, &s.map_err(fail)?.into_inner());
                }
                OnPremCommand::Request { out } => {
                    let r = server
                        .write_activation_request(authorized(token, onprem::WriteActivationRequestRequest {})?)
                        .await
                        .map_err(fail)?
                        .into_inner();
                    std::fs::write(&out, r.request_file)
                        .map_err(|e| Failure(format!("--out: cannot write {}: {e}", out.display())))?;
                    let row = json!({ "request_file": out.display().to_string() });
                    print_one(cli.json, &row, &["request_file"]);
                }
                OnPremCommand::Import { file } => {
                    let server_license_file = std::fs::read_to_string(&file)
                        .map_err(|e| Failure(format!("--file: cannot read {}: {e}", file.display())))?;
                    let request = onprem::ImportServerLicenseRequest { server_license_file };
                    let r = server.import_server_license(authorized(token, request)?).await.map_err(fail)?;
                    print_onprem_status(cli.json, &r.into_inner().status.unwrap_or_default());
                }
                OnPremCommand::Refresh => {
                    let request = onprem::RefreshServerLicenseRequest {};
                    let r = server.refresh_server_license(authorized(token, request)?).await.map_err(fail)?;
                    print_onprem_status(cli.json, &r.into_inner().status.unwrap_or_default());
                }
                OnPremCommand::UploadUsage => {
                    let request = onprem::UploadUsageRequest {};
                    let r = server.upload_usage(authorized(token, request)?).await.map_err(fail)?.into_inner();
                    let row = json!({
                        "report_id": r.report_id, "period_start": time(r.period_start.as_ref()),
                        "period_end": time(r.period_end.as_ref()),
                    });
                    print_one(cli.json, &row, &["report_id", "period_start", "period_end"]);
                }
                OnPremCommand::Return { out, yes } => {
                    if !yes {
                        return Err(Failure(
                            "--yes: the server stops serving its products at once; add --yes to confirm".into(),
                        ));
                    }
                    let request = onprem::ReturnServerLicenseRequest { confirm: true };
                    let r = server.return_server_license(authorized(token, request)?).await.map_err(fail)?.into_inner();
                    std::fs::write(&out, &r.return_file)
                        .map_err(|e| Failure(format!("--out: cannot write {}: {e}; the server has stopped serving, and the return file is lost: ask the vendor to free the activation", out.display())))?;
                    let row = json!({
                        "serial": r.serial, "return_file": out.display().to_string(),
                        "returned_online": r.returned_online, "online_error": r.online_error,
                    });
                    print_one(cli.json, &row, &["serial", "return_file", "returned_online", "online_error"]);
                }
            }
        }
        Command::Activations(ActivationsCommand::DeactivateOffline { file }) => {
            use licensing_proto::activation::v1 as act;
            let request_file = std::fs::read_to_string(&file)
                .map_err(|e| Failure(format!("cannot read the request file {}: {e}", file.display())))?;
            let answer = act::activation_service_client::ActivationServiceClient::new(channel)
                .deactivate_offline(act::DeactivateOfflineRequest { request_file })
                .await
                .map_err(fail)?
                .into_inner();
            let (a, l) = (answer.activation.unwrap_or_default(), answer.license.unwrap_or_default());
            let row = json!({
                "license_id": a.license_id, "installation_id": a.installation_id, "machine": a.machine_name,
                "deactivated_at": time(a.deactivated_at.as_ref()), "activations_used": l.activations_used,
                "deactivations_left": answer.deactivations_left,
            });
            let names = [
                "license_id",
                "installation_id",
                "machine",
                "deactivated_at",
                "activations_used",
                "deactivations_left",
            ];
            print_one(cli.json, &row, &names);
        }
        Command::ServerLicense(ServerLicenseCommand::Usage { license_id, paging }) => {
            let reports = all_pages(paging, |page| {
                let mut admin = admin.clone();
                let license_id = license_id.clone();
                async move {
                    let request = pb::ListServerUsageReportsRequest { license_id, page: Some(page) };
                    let r =
                        admin.list_server_usage_reports(authorized(token, request)?).await.map_err(fail)?.into_inner();
                    Ok((r.reports, r.next_page_token))
                }
            })
            .await?;
            if cli.json {
                out!("{}", pretty(&Value::Array(reports.iter().map(usage_report_json).collect())));
            } else if reports.is_empty() {
                out!("no usage report from the servers of {license_id}");
            } else {
                let rows: Vec<Value> = reports.iter().flat_map(usage_report_rows).collect();
                out!("{}", table(&rows, USAGE_REPORT_COLUMNS));
            }
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
                .map(|e| json!({"when": time(e.occurred_at.as_ref()), "action": e.action, "installation_id": e.installation_id,
                    "machine": e.machine_name, "fingerprint": e.fingerprint_digest, "outcome": e.outcome}))
                .collect();
            print(cli.json, rows, &["when", "action", "installation_id", "machine", "fingerprint", "outcome"]);
        }
        Command::Audit { subject, paging } => {
            let events = all_pages(paging, |page| {
                let mut admin = admin.clone();
                let request = pb::ListAuditEventsRequest { subject: subject.clone(), page: Some(page) };
                async move {
                    let r = admin.list_audit_events(authorized(token, request)?).await.map_err(fail)?.into_inner();
                    Ok((r.events, r.next_page_token))
                }
            })
            .await?;
            let rows = events
                .iter()
                .map(|e| {
                    let details = serde_json::from_str(&e.details_json).unwrap_or_else(|_| json!(e.details_json));
                    json!({"sequence": e.sequence, "when": time(e.occurred_at.as_ref()), "actor": e.actor,
                        "action": e.action, "subject": e.subject, "details": details})
                })
                .collect();
            print(cli.json, rows, &["when", "actor", "action", "subject", "details"]);
        }
        Command::Policies(PolicyCommand::Create { product, name, terms }) => {
            let request = pb::CreatePolicyRequest { product_code: product, name, terms: Some(terms.to_proto()) };
            let p = admin.create_policy(authorized(token, request)?).await.map_err(fail)?.into_inner().policy;
            print_one(cli.json, &license_policy_json(&p.unwrap_or_default()), POLICY_SHOWN);
        }
        Command::Policies(PolicyCommand::List { product }) => {
            let request = pb::ListPoliciesRequest { product_code: product.unwrap_or_default() };
            let r = admin.list_policies(authorized(token, request)?).await.map_err(fail)?.into_inner();
            print(cli.json, r.policies.iter().map(license_policy_json).collect(), POLICY_COLUMNS);
        }
        Command::Policies(PolicyCommand::Show { policy_id }) => {
            let p = admin.get_policy(authorized(token, pb::GetPolicyRequest { policy_id })?).await.map_err(fail)?;
            print_one(cli.json, &license_policy_json(&p.into_inner().policy.unwrap_or_default()), POLICY_SHOWN);
        }
        Command::Policies(PolicyCommand::Update { policy_id, terms }) => {
            let request = pb::UpdatePolicyRequest { policy_id, terms: Some(terms.to_proto()) };
            let p = admin.update_policy(authorized(token, request)?).await.map_err(fail)?.into_inner().policy;
            print_one(cli.json, &license_policy_json(&p.unwrap_or_default()), POLICY_SHOWN);
        }
        Command::Policies(PolicyCommand::Apply { policy_id, licenses }) => {
            let request = pb::ApplyPolicyRequest { policy_id, license_ids: licenses };
            let r = admin.apply_policy(authorized(token, request)?).await.map_err(fail)?.into_inner();
            print(cli.json, r.licenses.iter().map(license_json).collect(), LICENSE_COLUMNS);
        }
        Command::Meters(MeterCommand::Set { license_id, code, limit, overage, reset }) => {
            let reset = match reset {
                Reset::Monthly => MeterReset::Monthly,
                Reset::Yearly => MeterReset::Yearly,
                Reset::Never => MeterReset::Never,
            };
            let meter = Some(Meter { code, limit, overage, reset: reset as i32 });
            let request = pb::SetLicenseMeterRequest { license_id, meter };
            let l = admin.set_license_meter(authorized(token, request)?).await.map_err(fail)?.into_inner().license;
            print_meters(cli.json, &l.unwrap_or_default());
        }
        Command::Meters(MeterCommand::Remove { license_id, code }) => {
            let request = pb::RemoveLicenseMeterRequest { license_id, code };
            let l = admin.remove_license_meter(authorized(token, request)?).await.map_err(fail)?.into_inner().license;
            print_meters(cli.json, &l.unwrap_or_default());
        }
        Command::Meters(MeterCommand::Show { license_id, csv }) => {
            let request = pb::GetLicenseMeterUsageRequest { license_id, as_csv: csv };
            let r = admin.get_license_meter_usage(authorized(token, request)?).await.map_err(fail)?.into_inner();
            if csv {
                emit(&r.csv);
                return Ok(());
            }
            let current: Vec<Value> = r.current.iter().map(meter_usage_json).collect();
            let history: Vec<Value> = r.history.iter().map(meter_usage_json).collect();
            if cli.json {
                out!("{}", pretty(&json!({"current": current, "history": history})));
                return Ok(());
            }
            out!("{}", table(&current, METER_USAGE_COLUMNS));
            if !history.is_empty() {
                out!("\nEvery period counted:\n{}", table(&history, METER_USAGE_COLUMNS));
            }
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
                emit(&r.csv);
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
                    "from": time(r.from.as_ref()), "to": time(r.to.as_ref()), "days": days,
                    "total_seat_hours": r.total_seat_hours, "checkouts": r.checkouts,
                    "overdraft_checkouts": r.overdraft_checkouts, "events_dropped": r.events_dropped,
                    "denials": r.denials.iter().map(|d| json!({"reason": d.reason, "count": d.count})).collect::<Vec<_>>(),
                    "top_users": r.top_users.iter().map(|u| json!({"user": u.user, "seat_hours": u.seat_hours, "checkouts": u.checkouts})).collect::<Vec<_>>(),
                });
                out!("{}", pretty(&report));
                return Ok(());
            }
            print(false, days, &["day", "peak_seats", "seat_hours", "checkouts", "denials"]);
            out!(
                "\n{:.2} seat hours, {} checkouts ({} overdraft) from {} to {}",
                r.total_seat_hours,
                r.checkouts,
                r.overdraft_checkouts,
                cell(&time(r.from.as_ref())),
                cell(&time(r.to.as_ref()))
            );
            for d in &r.denials {
                out!("denied {}: {}", d.reason, d.count);
            }
            for u in &r.top_users {
                out!("user {}: {:.2} seat hours, {} checkouts", u.user, u.seat_hours, u.checkouts);
            }
            if r.events_dropped > 0 {
                out!("warning: {} usage events were lost (the usage queue was full)", r.events_dropped);
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // The TLS settings of the connection are options too (config::client_args).
    let settings = Cli::command()
        .args(licensing_runtime::config::client_args())
        .after_help("Every option is also an environment variable, named in brackets; an option given wins.")
        .get_matches();
    let cli = Cli::from_arg_matches(&settings).unwrap_or_else(|e| e.exit());
    match run(cli, &settings).await {
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
    fn dates_are_checked_against_the_calendar_and_printed_in_rfc_3339() {
        assert_eq!(parse_date("--expires", "2027-12-31").unwrap().seconds, 1_830_211_200);
        assert!(parse_date("--expires", "31.12.2027").is_err());
        let impossible = parse_date("--expires", "2027-02-31").unwrap_err().0;
        assert!(impossible.starts_with("--expires: '2027-02-31' is not a date"), "{impossible}");
        let noon = prost_types::Timestamp { seconds: 1_830_254_460, nanos: 0 };
        assert_eq!(time(Some(&noon)), json!("2027-12-31T12:01:00Z"));
        assert_eq!(cell(&time(Some(&noon))), "2027-12-31 12:01", "the minute is enough in a table");
        assert_eq!(time(None), Value::Null);
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&json!("2027-12-31")), "2027-12-31", "a day stays a day");
    }

    #[test]
    fn seat_policy_flags_are_parsed() {
        assert_eq!(duration("15m").unwrap().seconds, 900);
        assert_eq!(duration("7d").unwrap().seconds, 7 * 86_400);
        assert_eq!(duration("PT1H").unwrap().seconds, 3_600);
        assert!(duration("soon").is_err() && duration("-5m").is_err());
        assert_eq!(span(Some(&prost_types::Duration { seconds: 900, nanos: 0 })), json!("15m"));
        let r = reservation("user:alice=2").unwrap();
        assert_eq!((principal_text(r.principal.as_ref().unwrap()).as_str(), r.seats), ("user:alice", 2));
        assert!(principal("alice").is_err() && principal("team:x").is_err() && principal("user:").is_err());
        assert!(cap("host:kiosk=one").is_err());
        let g = group("design=user:alice,host:ws-7").unwrap();
        assert_eq!(g.members.len(), 2);
        assert_eq!(feature_cost("render=3").unwrap(), ("render".to_owned(), 3));
    }

    #[test]
    fn every_command_says_what_it_does() {
        fn check(command: &clap::Command, path: &str) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "`{path}` has no description");
                check(sub, &path);
            }
        }
        Cli::command().debug_assert();
        check(&Cli::command(), "licensectl");
    }
}
