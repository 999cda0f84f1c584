//! The domain of the licensing server: what a license, a customer and a product are, how license
//! keys and secrets work, how errors are classified, and the interfaces storage must provide.
//!
//! Nothing here knows about gRPC, protobuf or SQL: the gRPC adapters convert to and from these
//! types, and the store implementations return them.
//!
//! # Layout
//! - [`model`]: products, customers, licenses, audit events.
//! - [`change`]: the admin changes to a license, validated and applied as pure functions.
//! - [`license_key`]: the `XXXXX-XXXXX-XXXXX-XXXXX-XXXXX` key format with its check character.
//! - [`secrets`]: keyed hashes for keys and tokens, argon2id for passwords, random tokens.
//! - [`ids`]: prefixed random identifiers (`lic_…`, `cus_…`).
//! - [`fingerprint`]: machine fingerprints, their digests and share-based matching.
//! - [`certificate`]: Ed25519-signed certificates and lease tokens, offline request format.
//! - [`server_license`]: server licenses for on-premises license servers: grants, the signed
//!   server license file, and the request and return files of air-gapped servers.
//! - [`onprem`]: the on-premises server's side: the local licenses its file's grants make, and
//!   when it may grant new seats (file dates, the vendor's refusal, a clock set back).
//! - [`server_usage`]: the usage reports on-premises servers upload (what they used of their
//!   server license's grants per period), one per server and period.
//! - [`clock`]: the one source of "now" for services, replaceable in tests.
//! - [`error`]: the classification every service error maps to, and the store's error.
//! - [`version`]: product versions.
//! - [`seat_policy`]: per-license seat policy and the rule that decides a new seat.
//! - [`text`]: bounds on the short names clients send.
//! - [`usage`]: usage reports computed from the usage log, and their CSV form.
//! - [`policy`]: license policies (templates) and time counted from first use.
//! - [`trial`]: trials without a key, once per machine, and their conversion.
//! - [`meter`]: metered features: limits per period, uses and their CSV form.
//! - [`observe`]: events worth counting (seat denials, activations), reported to an [`observe::Observer`].
//! - [`store`]: the storage interfaces, implemented by `licensing-store`.

pub mod certificate;
pub mod change;
pub mod clock;
pub mod error;
pub mod fingerprint;
pub mod ids;
pub mod license_key;
pub mod meter;
pub mod model;
pub mod observe;
pub mod offline_deactivation;
pub mod onprem;
pub mod policy;
pub mod seat_policy;
pub mod secrets;
pub mod server_license;
pub mod server_usage;
pub mod store;
pub mod text;
pub mod trial;
pub mod usage;
pub mod version;
