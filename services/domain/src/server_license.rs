//! Server licenses: what a vendor lets a customer's on-premises license server serve (its
//! grants), the signed server license file that server keeps (see docs/server-license.md), and
//! the request and return files an air-gapped server's operator carries to the vendor.
//!
//! The file is Ed25519-signed over [`SERVER_LICENSE_CONTEXT`], so neither a certificate nor a
//! lease token ever verifies as one (nor the reverse). Each file carries a serial that only
//! grows per license: a newer file supersedes every older one, and a return names the serial it
//! gives back, so only the latest file can free the activation.

use crate::certificate::{unwrap_armor, verify, wrap, SignedBlob, Signer, VerifyError};
use crate::change::MAX_SEATS;
use crate::clock::Millis;
use crate::fingerprint::{self, Component, ComponentDigest};
use crate::model::Product;
use crate::text::quoted;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Signed before a server license's payload, so no other signature verifies as one.
pub const SERVER_LICENSE_CONTEXT: &str = "licensing-server-license-v1\n";
const FILE_BEGIN: &str = "-----BEGIN LICENSING SERVER LICENSE-----";
const FILE_END: &str = "-----END LICENSING SERVER LICENSE-----";
const REQUEST_BEGIN: &str = "-----BEGIN LICENSING SERVER REQUEST-----";
const REQUEST_END: &str = "-----END LICENSING SERVER REQUEST-----";

/// Grants a server license may carry at most.
pub const MAX_GRANTS: usize = 100;

/// Largest request file accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What an on-premises server may serve of one product, or of one feature (module) of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerGrant {
    /// The product's code, e.g. `cad-pro`.
    pub product_code: String,
    /// A module of the product (e.g. `render`); empty: the product itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub feature: String,
    /// Floating seats the server may lease at once: 1 to [`MAX_SEATS`] for a feature; 0 to
    /// [`MAX_SEATS`] for a product (0 when it serves node-locked activations only).
    #[serde(default)]
    pub floating_seats: i32,
    /// Node-locked activations the server may make of the product (0: none). Only on a grant
    /// of a product, not of a feature.
    #[serde(default)]
    pub node_locked_activations: i32,
}

impl ServerGrant {
    /// `product` or `product/feature`, as people and licensectl name a grant.
    pub fn name(&self) -> String {
        match self.feature.as_str() {
            "" => self.product_code.clone(),
            f => format!("{}/{f}", self.product_code),
        }
    }
}

/// A grant refused by [`validate_grants`]: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct GrantError {
    /// `server_grants.product_code`, `server_grants.feature`, `server_grants.floating_seats`, …
    pub field: &'static str,
    /// Why, for people.
    pub message: String,
}

fn grant_error(field: &'static str, message: String) -> GrantError {
    GrantError { field, message }
}

/// Checks a server license's grants: at least one and at most [`MAX_GRANTS`]; each names a
/// product among `products` (the products that exist of those named) and, for a feature, one
/// of its modules; each product or feature once; seats within bounds (see [`ServerGrant`]).
pub fn validate_grants(grants: &[ServerGrant], products: &[Product]) -> Result<(), GrantError> {
    if grants.is_empty() {
        return Err(grant_error(
            "server_grants",
            "a server license grants at least one product or feature (e.g. cad-pro=25)".into(),
        ));
    }
    if grants.len() > MAX_GRANTS {
        return Err(grant_error("server_grants", format!("at most {MAX_GRANTS} grants, got {}", grants.len())));
    }
    for (i, grant) in grants.iter().enumerate() {
        let Some(product) = products.iter().find(|p| p.code == grant.product_code) else {
            return Err(grant_error(
                "server_grants.product_code",
                format!("no product has the code {}", quoted(&grant.product_code)),
            ));
        };
        if !grant.feature.is_empty() && !product.has_module(&grant.feature) {
            return Err(grant_error(
                "server_grants.feature",
                format!("product {} has no module {}", product.code, quoted(&grant.feature)),
            ));
        }
        if grants[..i].iter().any(|g| g.product_code == grant.product_code && g.feature == grant.feature) {
            return Err(grant_error("server_grants", format!("{} is granted twice", quoted(&grant.name()))));
        }
        let seats_bound = |field: &'static str, n: i32, min: i32| {
            if (min..=MAX_SEATS).contains(&n) {
                Ok(())
            } else {
                Err(grant_error(field, format!("{}: must be {min} to {MAX_SEATS}, got {n}", grant.name())))
            }
        };
        if grant.feature.is_empty() {
            seats_bound("server_grants.floating_seats", grant.floating_seats, 0)?;
            seats_bound("server_grants.node_locked_activations", grant.node_locked_activations, 0)?;
            if grant.floating_seats == 0 && grant.node_locked_activations == 0 {
                return Err(grant_error(
                    "server_grants.floating_seats",
                    format!("{}: grant floating seats, node-locked activations or both", grant.name()),
                ));
            }
        } else {
            seats_bound("server_grants.floating_seats", grant.floating_seats, 1)?;
            if grant.node_locked_activations != 0 {
                return Err(grant_error(
                    "server_grants.node_locked_activations",
                    format!("{}: node-locked activations are granted per product, not per feature", grant.name()),
                ));
            }
        }
    }
    Ok(())
}

/// What a server license file asserts. Instants are milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerLicensePayload {
    /// Format version, 1.
    pub v: u32,
    /// License ID (`lic_…`) of the server license.
    pub license_id: String,
    /// The customer the license was issued to.
    pub customer_id: String,
    /// The Installation ID (`ins_…`) of the server's activation.
    pub installation_id: String,
    /// The name the server's operator gave it.
    pub server_name: String,
    /// SHA-256 of `name=value` of each of the server's fingerprint components (normalized).
    pub fingerprint: Vec<ComponentDigest>,
    /// Share of `fingerprint` components the machine the file is used on must still have.
    pub match_threshold: f64,
    /// What the server may serve.
    pub grants: Vec<ServerGrant>,
    /// The license is valid from this instant.
    pub valid_from_ms: Millis,
    /// The license's expiry; `None` is perpetual.
    pub expires_at_ms: Option<Millis>,
    /// When the license's grace period ends; `None` when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ends_at_ms: Option<Millis>,
    /// When the file was signed.
    pub issued_at_ms: Millis,
    /// The server should ask for a fresh file after this instant (when it can reach the vendor).
    pub refresh_after_ms: Millis,
    /// Grows by one with every file signed for the license: a file supersedes every file of the
    /// same license with a lower serial.
    pub serial: i64,
}

/// Why a verified server license file may not be used on this machine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindingError {
    /// Too few of the file's fingerprint components are present on the machine.
    #[error("this machine has {:.0}% of the server's fingerprint components; {:.0}% are needed", .share * 100.0, .threshold * 100.0)]
    FingerprintMismatch {
        /// Share of the file's components present.
        share: f64,
        /// Share needed (the file's match threshold).
        threshold: f64,
    },
    /// The machine's fingerprint was refused (empty, unknown components, …).
    #[error(transparent)]
    Fingerprint(#[from] fingerprint::FingerprintError),
}

impl ServerLicensePayload {
    /// Whether this file replaces `old`: the same license, and a higher serial.
    pub fn supersedes(&self, old: &Self) -> bool {
        self.license_id == old.license_id && self.serial > old.serial
    }

    /// Whether the file belongs on the machine presenting `components`: at least the file's
    /// match threshold of its fingerprint components are present (the same tolerance to
    /// changed hardware as node-locked certificates). Returns the share present.
    pub fn check_machine(&self, components: &[Component]) -> Result<f64, BindingError> {
        let presented = fingerprint::public_digests(&fingerprint::normalize(components)?);
        let share = fingerprint::match_share(&self.fingerprint, &presented);
        if share < self.match_threshold {
            return Err(BindingError::FingerprintMismatch { share, threshold: self.match_threshold });
        }
        Ok(share)
    }

    /// The grant of `product_code` (`feature` empty) or of one of its features, if any.
    pub fn grant(&self, product_code: &str, feature: &str) -> Option<&ServerGrant> {
        self.grants.iter().find(|g| g.product_code == product_code && g.feature == feature)
    }
}

impl Signer {
    /// Signs a server license's JSON under [`SERVER_LICENSE_CONTEXT`].
    pub fn sign_server_license(&self, payload: &ServerLicensePayload) -> SignedBlob {
        let bytes = serde_json::to_vec(payload).expect("a server license payload serializes");
        self.sign(SERVER_LICENSE_CONTEXT, &bytes)
    }
}

/// Verifies a server license blob with only the public key and returns what it asserts.
pub fn verify_server_license(public: &VerifyingKey, blob: &SignedBlob) -> Result<ServerLicensePayload, VerifyError> {
    let bytes = verify(public, SERVER_LICENSE_CONTEXT, blob)?;
    let payload: ServerLicensePayload =
        serde_json::from_slice(&bytes).map_err(|e| VerifyError::Malformed(format!("payload JSON: {e}")))?;
    if payload.v != 1 {
        return Err(VerifyError::Malformed(format!("server license version {} is not supported", payload.v)));
    }
    Ok(payload)
}

/// The server license as a text file: base64 of the JSON blob between BEGIN/END lines.
pub fn server_license_file(blob: &SignedBlob) -> String {
    let json = serde_json::to_vec(blob).expect("a blob serializes");
    wrap(FILE_BEGIN, FILE_END, &B64.encode(json))
}

/// The blob from a server license file ([`server_license_file`]); its signature is not checked here.
pub fn parse_server_license_file(text: &str) -> Result<SignedBlob, VerifyError> {
    let body = unwrap_armor(text, FILE_BEGIN, FILE_END)?;
    let json = B64.decode(body).map_err(|e| VerifyError::Malformed(format!("base64: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| VerifyError::Malformed(format!("JSON: {e}")))
}

/// Parses and verifies a server license file in one step.
pub fn verify_server_license_file(public: &VerifyingKey, text: &str) -> Result<ServerLicensePayload, VerifyError> {
    verify_server_license(public, &parse_server_license_file(text)?)
}

/// What an air-gapped server's request asks of the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerRequestKind {
    /// Activate the server (or re-activate it): answered with a server license file.
    Activate,
    /// Give back the activation of the server license file with `serial`, so another server
    /// may be activated (a re-host).
    Return,
}

/// What an on-premises server writes for its operator to carry to the vendor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRequest {
    /// Format version, 1.
    pub v: u32,
    /// Activate, or return.
    pub kind: ServerRequestKind,
    /// The server license's key.
    pub license_key: String,
    /// The server machine's fingerprint, raw: the vendor normalizes and digests it.
    pub fingerprint: Vec<Component>,
    /// The name the operator gave the server.
    pub server_name: String,
    /// A return: the Installation ID of the server's activation (from its file); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub installation_id: String,
    /// A return: the serial of the file given back; 0 otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub serial: i64,
    /// When the server wrote the request (Unix ms, its own clock).
    pub created_at_ms: Millis,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// The request as text: base64 JSON and a SHA-256 checksum line, so transcription errors are caught.
pub fn encode_server_request(request: &ServerRequest) -> String {
    let body = B64.encode(serde_json::to_vec(request).expect("a request serializes"));
    let checksum = hex::encode(&Sha256::digest(body.as_bytes())[..8]);
    let mut text = wrap(REQUEST_BEGIN, REQUEST_END, &body);
    text.insert_str(text.len() - REQUEST_END.len() - 1, &format!("checksum:{checksum}\n"));
    text
}

/// The request from its text form ([`encode_server_request`]): refused when larger than
/// [`MAX_REQUEST_BYTES`], when its checksum does not match, or when its version is not 1.
pub fn decode_server_request(text: &str) -> Result<ServerRequest, VerifyError> {
    if text.len() > MAX_REQUEST_BYTES {
        return Err(VerifyError::Malformed(format!("larger than {} KiB", MAX_REQUEST_BYTES / 1024)));
    }
    let inner = unwrap_armor(text, REQUEST_BEGIN, REQUEST_END)?;
    let (body, checksum) =
        inner.split_once("checksum:").ok_or_else(|| VerifyError::Malformed("missing checksum line".into()))?;
    if hex::encode(&Sha256::digest(body.as_bytes())[..8]) != checksum {
        return Err(VerifyError::Malformed("checksum does not match: the request was altered or mistyped".into()));
    }
    let json = B64.decode(body).map_err(|e| VerifyError::Malformed(format!("base64: {e}")))?;
    let request: ServerRequest =
        serde_json::from_slice(&json).map_err(|e| VerifyError::Malformed(format!("JSON: {e}")))?;
    if request.v != 1 {
        return Err(VerifyError::Malformed(format!("version {} is not supported", request.v)));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificate::{verify_certificate, CERTIFICATE_CONTEXT};

    fn components() -> Vec<Component> {
        ["machine-id=m1", "disk-serial=d1", "mac=aa:bb", "hostname=lic01", "cpu=xeon"]
            .iter()
            .map(|c| {
                let (name, value) = c.split_once('=').unwrap();
                Component { name: name.into(), value: value.into() }
            })
            .collect()
    }

    fn payload(serial: i64) -> ServerLicensePayload {
        ServerLicensePayload {
            v: 1,
            license_id: "lic_1".into(),
            customer_id: "cus_1".into(),
            installation_id: "ins_1".into(),
            server_name: "lic01".into(),
            fingerprint: fingerprint::public_digests(&fingerprint::normalize(&components()).unwrap()),
            match_threshold: 0.6,
            grants: vec![
                ServerGrant {
                    product_code: "cad-pro".into(),
                    feature: String::new(),
                    floating_seats: 25,
                    node_locked_activations: 0,
                },
                ServerGrant {
                    product_code: "cad-pro".into(),
                    feature: "render".into(),
                    floating_seats: 5,
                    node_locked_activations: 0,
                },
            ],
            valid_from_ms: 0,
            expires_at_ms: Some(1_000),
            grace_ends_at_ms: None,
            issued_at_ms: 10,
            refresh_after_ms: 20,
            serial,
        }
    }

    #[test]
    fn a_server_license_file_verifies_with_the_public_key_only_and_not_when_altered_or_foreign() {
        let signer = Signer::from_seed(&[9u8; 32]);
        let file = server_license_file(&signer.sign_server_license(&payload(1)));
        assert!(file.starts_with(FILE_BEGIN), "{file}");
        let verified = verify_server_license_file(&signer.verifying_key(), &file).unwrap();
        assert_eq!(verified, payload(1));
        assert_eq!(verified.grant("cad-pro", "render").map(|g| g.floating_seats), Some(5));

        let blob = parse_server_license_file(&file).unwrap();
        let mut bytes = B64.decode(&blob.payload).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            let altered = SignedBlob { payload: B64.encode(&bytes), ..blob.clone() };
            assert!(verify_server_license(&signer.verifying_key(), &altered).is_err(), "byte {i}");
            bytes[i] ^= 1;
        }
        let other = Signer::from_seed(&[8u8; 32]);
        assert_eq!(verify_server_license(&other.verifying_key(), &blob), Err(VerifyError::BadSignature));
        // Neither a certificate's signature verifies as a server license, nor the reverse.
        let as_certificate = signer.sign(CERTIFICATE_CONTEXT, &B64.decode(&blob.payload).unwrap());
        assert_eq!(verify_server_license(&signer.verifying_key(), &as_certificate), Err(VerifyError::BadSignature));
        assert_eq!(verify_certificate(&signer.verifying_key(), &blob), Err(VerifyError::BadSignature));
        assert!(matches!(parse_server_license_file("garbage"), Err(VerifyError::Malformed(_))));
    }

    #[test]
    fn a_newer_serial_supersedes_an_older_one_of_the_same_license_only() {
        let (first, second) = (payload(1), payload(2));
        assert!(second.supersedes(&first));
        assert!(!first.supersedes(&second), "an older file never replaces a newer one");
        assert!(!first.supersedes(&first), "nor a file itself");
        let other_license = ServerLicensePayload { license_id: "lic_2".into(), ..payload(9) };
        assert!(!other_license.supersedes(&first));
    }

    #[test]
    fn a_file_binds_to_its_machine_with_the_fingerprint_tolerance() {
        let file = payload(1);
        assert_eq!(file.check_machine(&components()).unwrap(), 1.0);
        // Two of five components changed: 60% still match, the threshold.
        let mut changed = components();
        changed[0].value = "m2".into();
        changed[1].value = "d2".into();
        assert_eq!(file.check_machine(&changed).unwrap(), 0.6);
        changed[2].value = "cc:dd".into();
        let err = file.check_machine(&changed).unwrap_err();
        assert!(matches!(err, BindingError::FingerprintMismatch { .. }), "{err}");
        assert!(err.to_string().contains("40%"), "{err}");
        assert!(matches!(file.check_machine(&[]), Err(BindingError::Fingerprint(_))));
    }

    #[test]
    fn requests_round_trip_and_catch_typos_and_bad_versions() {
        let request = ServerRequest {
            v: 1,
            kind: ServerRequestKind::Return,
            license_key: "K".into(),
            fingerprint: components(),
            server_name: "lic01".into(),
            installation_id: "ins_1".into(),
            serial: 3,
            created_at_ms: 5,
        };
        let text = encode_server_request(&request);
        assert!(text.starts_with(REQUEST_BEGIN), "{text}");
        assert_eq!(decode_server_request(&text).unwrap(), request);
        // One character of the body mistyped.
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let typo = if lines[1].starts_with('e') { "f" } else { "e" };
        lines[1].replace_range(0..1, typo);
        assert!(decode_server_request(&lines.join("\n")).unwrap_err().to_string().contains("checksum"));
        let v2 = encode_server_request(&ServerRequest { v: 2, ..request });
        assert!(decode_server_request(&v2).unwrap_err().to_string().contains("version 2"));
        assert!(decode_server_request(&"x".repeat(MAX_REQUEST_BYTES + 1)).is_err());
    }

    fn product() -> Product {
        Product {
            code: "cad-pro".into(),
            name: "CAD".into(),
            modules: vec![crate::model::Module { code: "render".into(), name: "Render".into() }],
            versions: vec![],
            created_at: 0,
        }
    }

    #[test]
    fn grants_name_products_and_modules_that_exist_with_seats_in_bounds() {
        let products = [product()];
        let grant = |feature: &str, floating, node_locked| ServerGrant {
            product_code: "cad-pro".into(),
            feature: feature.into(),
            floating_seats: floating,
            node_locked_activations: node_locked,
        };
        assert_eq!(validate_grants(&[grant("", 25, 0), grant("render", 5, 0)], &products), Ok(()));
        assert_eq!(validate_grants(&[grant("", 0, 10)], &products), Ok(()));
        let field = |grants: &[ServerGrant]| validate_grants(grants, &products).unwrap_err().field;
        assert_eq!(field(&[]), "server_grants");
        let unknown = ServerGrant { product_code: "nope".into(), ..grant("", 1, 0) };
        assert_eq!(field(&[unknown]), "server_grants.product_code");
        assert_eq!(field(&[grant("paint", 1, 0)]), "server_grants.feature");
        assert_eq!(field(&[grant("render", 0, 0)]), "server_grants.floating_seats");
        assert_eq!(field(&[grant("", 0, 0)]), "server_grants.floating_seats");
        assert_eq!(field(&[grant("", MAX_SEATS + 1, 0)]), "server_grants.floating_seats");
        assert_eq!(field(&[grant("", 1, -1)]), "server_grants.node_locked_activations");
        assert_eq!(field(&[grant("render", 1, 1)]), "server_grants.node_locked_activations");
        assert_eq!(field(&[grant("", 1, 0), grant("", 2, 0)]), "server_grants");
    }
}
