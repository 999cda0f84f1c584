//! Signed license certificates (see docs/certificate.md), lease tokens, and the offline
//! activation request format. Ed25519 over a domain-separated message, so a signature made for
//! one purpose never verifies for another.

use crate::clock::Millis;
use crate::fingerprint::ComponentDigest;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Signed before a certificate's payload, so no other signature verifies as a certificate.
pub const CERTIFICATE_CONTEXT: &str = "licensing-certificate-v1\n";
/// Signed before a lease token's payload, so no other signature verifies as a lease token.
pub const LEASE_TOKEN_CONTEXT: &str = "licensing-lease-v1\n";
const CERT_BEGIN: &str = "-----BEGIN LICENSING CERTIFICATE-----";
const CERT_END: &str = "-----END LICENSING CERTIFICATE-----";
const REQUEST_BEGIN: &str = "-----BEGIN LICENSING ACTIVATION REQUEST-----";
const REQUEST_END: &str = "-----END LICENSING ACTIVATION REQUEST-----";

/// What a certificate asserts. Instants are milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificatePayload {
    /// Format version, 1.
    pub v: u32,
    /// License ID (`lic_…`).
    pub license_id: String,
    /// The Installation ID (`ins_…`) the certificate is for.
    pub installation_id: String,
    /// The licensed product's code.
    pub product_code: String,
    /// The customer the license was issued to.
    pub customer_id: String,
    /// [`crate::model::LicenseKind::as_str`] of the license.
    pub kind: String,
    /// Codes of the modules the license includes and that were licensed when it was signed
    /// (a module whose own expiry had passed is left out).
    pub modules: Vec<String>,
    /// The license is valid from this instant.
    pub valid_from_ms: Millis,
    /// The license's expiry; `None` is perpetual.
    pub expires_at_ms: Option<Millis>,
    /// Versions released before this instant may run; `None` means every version.
    pub upgrades_until_ms: Option<Millis>,
    /// When the certificate was signed.
    pub issued_at_ms: Millis,
    /// Ask the server for a fresh certificate after this instant.
    pub refresh_after_ms: Millis,
    /// Offline use is allowed until this instant, never beyond the license's expiry or, when
    /// it has a grace period, the end of that.
    pub valid_until_ms: Millis,
    /// SHA-256 of `name=value` of each fingerprint component (normalized: trimmed, lowercase).
    pub fingerprint: Vec<ComponentDigest>,
    /// Share of `fingerprint` components a machine must still have.
    pub match_threshold: f64,
    /// Machines the license may be activated on (its seats); 0 in certificates signed before
    /// the field existed.
    #[serde(default)]
    pub seats: i32,
    /// The license's meters with their count when the certificate was signed; absent when the
    /// license has none (and in certificates signed before the field existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meters: Vec<CertificateMeter>,
    /// When the license's grace period ends (its expiry plus the grace period); `None` (and
    /// absent from the JSON) when it has none, as in certificates signed before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ends_at_ms: Option<Millis>,
    /// The license requires this machine to check in (ActivationService.Heartbeat, or a
    /// certificate refresh) at least every this many seconds, or it is deactivated; 0 (and
    /// absent from the payload) when it requires no heartbeats.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub heartbeat_timeout_secs: i64,
    /// When the license's time started at its first use (its expiry and upgrade period count
    /// from then); absent when its time counts from issue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_used_at_ms: Option<Millis>,
    /// The value and own expiry of each module in `modules` that has either; absent when none
    /// has (and in certificates signed before the field existed). A module past its expiry
    /// here is not licensed, offline as online.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entitlements: Vec<CertificateEntitlement>,
}

/// A module's entitlement as a certificate carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateEntitlement {
    /// The module's code, one of the certificate's `modules`.
    pub module: String,
    /// The value the product reads, e.g. `4096`; `None` (absent) when the module has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// When the module stops being licensed; `None` (absent): with the license.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<Millis>,
}

/// A meter as a certificate carries it: its limit and what was left when it was signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateMeter {
    /// The meter's code, e.g. `exports`.
    pub code: String,
    /// Use allowed per period.
    pub limit: i64,
    /// Use allowed beyond the limit per period.
    pub overage: i64,
    /// `monthly`, `yearly` or `never`.
    pub reset: String,
    /// Counted in the current period at signing.
    pub used: i64,
    /// Left within the limit at signing (0 once in overage).
    pub remaining: i64,
    /// When the current period ends and the count starts again; `None` when it never resets.
    pub period_end_ms: Option<Millis>,
}

impl From<&crate::meter::MeterUsage> for CertificateMeter {
    fn from(u: &crate::meter::MeterUsage) -> Self {
        Self {
            code: u.meter.code.clone(),
            limit: u.meter.limit,
            overage: u.meter.overage,
            reset: u.meter.reset.as_str().into(),
            used: u.used,
            remaining: u.remaining(),
            period_end_ms: u.period.end,
        }
    }
}

impl CertificatePayload {
    /// Whether the certificate licenses `module` at `now`: listed, and its own expiry (if any)
    /// not reached. `Err(Some(expiry))` when that expiry passed, `Err(None)` when not listed.
    pub fn module_licensed(&self, module: &str, now: Millis) -> Result<(), Option<Millis>> {
        if !self.modules.iter().any(|m| m == module) {
            return Err(None);
        }
        match self.entitlement(module).and_then(|e| e.expires_at_ms) {
            Some(end) if now >= end => Err(Some(end)),
            _ => Ok(()),
        }
    }

    /// The entitlement the certificate carries for `module`, if any (whether or not its expiry
    /// passed; see [`Self::module_licensed`]).
    pub fn entitlement(&self, module: &str) -> Option<&CertificateEntitlement> {
        self.entitlements.iter().find(|e| e.module == module)
    }

    /// The value of `module` at `now`: `None` when the module has none, is not in the
    /// certificate, or its own expiry passed.
    pub fn entitlement_value(&self, module: &str, now: Millis) -> Option<&str> {
        self.module_licensed(module, now).ok()?;
        self.entitlement(module)?.value.as_deref()
    }

    /// `Some(grace end)` when at `now` the license is past its expiry but within its grace
    /// period: still usable, but the product should warn that it needs renewing.
    pub fn in_grace(&self, now: Millis) -> Option<Millis> {
        let expires = self.expires_at_ms?;
        let end = self.grace_ends_at_ms?;
        (now >= expires && now < end).then_some(end)
    }
}

/// Leaves a field out of the signed payload when it says nothing, so certificates of licenses
/// without the feature stay byte for byte as before.
fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A payload and its signature, as certificates are stored and sent (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBlob {
    /// Base64 of the payload bytes.
    pub payload: String,
    /// Base64 of the Ed25519 signature over context || payload bytes.
    pub signature: String,
    /// [`key_id`] of the key that signed it, so a product knows which public key to verify with.
    pub key_id: String,
}

/// Why a signed blob, lease token or offline request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not base64, not JSON, missing armor lines or checksum (what was wrong).
    #[error("the certificate is not in the expected format: {0}")]
    Malformed(String),
    /// The signature does not match the payload under this public key.
    #[error("the signature does not verify: the certificate was altered or signed by another key")]
    BadSignature,
}

/// The server's signing key.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(key_id={})", self.key_id())
    }
}

/// First 8 bytes of SHA-256 of the public key, hex.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

impl Signer {
    /// The key from its 32-byte Ed25519 seed (the server's signing key file).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(seed) }
    }

    /// The public key products verify with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// [`key_id`] of the public key.
    pub fn key_id(&self) -> String {
        key_id(&self.verifying_key())
    }

    /// Signs `context` followed by `payload` (one of the `*_CONTEXT` constants).
    pub fn sign(&self, context: &str, payload: &[u8]) -> SignedBlob {
        let mut message = Vec::with_capacity(context.len() + payload.len());
        message.extend_from_slice(context.as_bytes());
        message.extend_from_slice(payload);
        let signature = self.key.sign(&message);
        SignedBlob { payload: B64.encode(payload), signature: B64.encode(signature.to_bytes()), key_id: self.key_id() }
    }

    /// Signs a certificate's JSON under [`CERTIFICATE_CONTEXT`].
    pub fn sign_certificate(&self, payload: &CertificatePayload) -> SignedBlob {
        let bytes = serde_json::to_vec(payload).expect("a certificate payload serializes");
        self.sign(CERTIFICATE_CONTEXT, &bytes)
    }
}

/// Verifies a blob with only the public key and returns the payload bytes.
pub fn verify(public: &VerifyingKey, context: &str, blob: &SignedBlob) -> Result<Vec<u8>, VerifyError> {
    let payload = B64.decode(&blob.payload).map_err(|e| VerifyError::Malformed(format!("payload: {e}")))?;
    let signature = B64.decode(&blob.signature).map_err(|e| VerifyError::Malformed(format!("signature: {e}")))?;
    let signature = Signature::from_slice(&signature).map_err(|_| VerifyError::Malformed("signature length".into()))?;
    let mut message = context.as_bytes().to_vec();
    message.extend_from_slice(&payload);
    public.verify(&message, &signature).map_err(|_| VerifyError::BadSignature)?;
    Ok(payload)
}

/// Verifies a certificate blob with only the public key and returns what it asserts.
pub fn verify_certificate(public: &VerifyingKey, blob: &SignedBlob) -> Result<CertificatePayload, VerifyError> {
    let bytes = verify(public, CERTIFICATE_CONTEXT, blob)?;
    serde_json::from_slice(&bytes).map_err(|e| VerifyError::Malformed(format!("payload JSON: {e}")))
}

/// What a lease token asserts: `<base64 payload>.<base64 signature>` over [`LEASE_TOKEN_CONTEXT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTokenPayload {
    /// Format version, 1.
    pub v: u32,
    /// Lease ID (`lse_…`).
    pub lease_id: String,
    /// License ID (`lic_…`).
    pub license_id: String,
    /// The client process the lease was granted to.
    pub client_instance_id: String,
    /// The lease's fencing number; only grows per license.
    pub fence: i64,
    /// The lease holds until this instant (for a borrowed seat, the end of the borrow).
    pub expires_at_ms: Millis,
    /// Borrowed for offline use: valid without heartbeats until `expires_at_ms`.
    #[serde(default)]
    pub borrowed: bool,
    /// What the lease holds, so a lease store that lost it can put it back (see
    /// [`crate::store::LeaseStore::reestablish`]). Absent from tokens signed before it existed.
    #[serde(default)]
    pub feature: String,
    /// User name the client reported.
    #[serde(default)]
    pub user: String,
    /// Host name the client reported.
    #[serde(default)]
    pub host: String,
    /// Seats of the pool the lease holds.
    #[serde(default)]
    pub seats_held: i32,
    /// The lease's time to live, in ms.
    #[serde(default)]
    pub ttl_ms: i64,
}

impl Signer {
    /// A lease token, `<base64 payload>.<base64 signature>` under [`LEASE_TOKEN_CONTEXT`].
    pub fn sign_lease_token(&self, payload: &LeaseTokenPayload) -> String {
        let bytes = serde_json::to_vec(payload).expect("a lease token serializes");
        let blob = self.sign(LEASE_TOKEN_CONTEXT, &bytes);
        format!("{}.{}", blob.payload, blob.signature)
    }
}

/// Verifies a lease token with only the public key.
pub fn verify_lease_token(public: &VerifyingKey, token: &str) -> Result<LeaseTokenPayload, VerifyError> {
    let (payload, signature) =
        token.split_once('.').ok_or_else(|| VerifyError::Malformed("a lease token is payload.signature".into()))?;
    let blob = SignedBlob { payload: payload.into(), signature: signature.into(), key_id: String::new() };
    let bytes = verify(public, LEASE_TOKEN_CONTEXT, &blob)?;
    serde_json::from_slice(&bytes).map_err(|e| VerifyError::Malformed(format!("lease token JSON: {e}")))
}

/// The server's public key from its base64 form (as `GetVerifyingKey` returns it).
pub fn verifying_key_from_base64(b64: &str) -> Result<VerifyingKey, VerifyError> {
    let bytes: [u8; 32] = B64
        .decode(b64.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| VerifyError::Malformed("the public key must be base64 of 32 bytes".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| VerifyError::Malformed("not an Ed25519 public key".into()))
}

/// `body` between `begin` and `end` lines, 64 characters a line.
pub(crate) fn wrap(begin: &str, end: &str, body: &str) -> String {
    let mut out = String::from(begin);
    out.push('\n');
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(end);
    out.push('\n');
    out
}

/// What lies between `begin` and `end` in `text`, whitespace removed.
pub(crate) fn unwrap_armor(text: &str, begin: &str, end: &str) -> Result<String, VerifyError> {
    let start = text.find(begin).ok_or_else(|| VerifyError::Malformed(format!("missing {begin}")))? + begin.len();
    let stop = text[start..].find(end).ok_or_else(|| VerifyError::Malformed(format!("missing {end}")))? + start;
    Ok(text[start..stop].split_whitespace().collect())
}

/// The certificate as a text file: base64 of the JSON blob between BEGIN/END lines.
pub fn certificate_file(blob: &SignedBlob) -> String {
    let json = serde_json::to_vec(blob).expect("a blob serializes");
    wrap(CERT_BEGIN, CERT_END, &B64.encode(json))
}

/// The blob from a certificate file ([`certificate_file`]); its signature is not checked here.
pub fn parse_certificate_file(text: &str) -> Result<SignedBlob, VerifyError> {
    let body = unwrap_armor(text, CERT_BEGIN, CERT_END)?;
    let json = B64.decode(body).map_err(|e| VerifyError::Malformed(format!("base64: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| VerifyError::Malformed(format!("JSON: {e}")))
}

/// What an air-gapped product writes for an operator to carry to a connected machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineRequest {
    /// Format version, 1.
    pub v: u32,
    /// The license key as typed into the product.
    pub license_key: String,
    /// The machine's fingerprint, raw: the server normalizes and digests it.
    pub fingerprint: Vec<crate::fingerprint::Component>,
    /// Human-readable machine name.
    pub machine_name: String,
    /// The machine's platform, e.g. `linux-x86_64`.
    pub platform: String,
    /// The product version running.
    pub product_version: String,
    /// When the product wrote the request (Unix ms, the machine's clock).
    pub created_at_ms: Millis,
}

/// The request as text: base64 JSON and a SHA-256 checksum line, so transcription errors are caught.
pub fn encode_offline_request(request: &OfflineRequest) -> String {
    let body = B64.encode(serde_json::to_vec(request).expect("a request serializes"));
    let checksum = hex::encode(&Sha256::digest(body.as_bytes())[..8]);
    let mut text = wrap(REQUEST_BEGIN, REQUEST_END, &body);
    text.insert_str(text.len() - REQUEST_END.len() - 1, &format!("checksum:{checksum}\n"));
    text
}

/// The request from its text form ([`encode_offline_request`]), refused when its checksum does not match.
pub fn decode_offline_request(text: &str) -> Result<OfflineRequest, VerifyError> {
    let inner = unwrap_armor(text, REQUEST_BEGIN, REQUEST_END)?;
    let (body, checksum) =
        inner.split_once("checksum:").ok_or_else(|| VerifyError::Malformed("missing checksum line".into()))?;
    if hex::encode(&Sha256::digest(body.as_bytes())[..8]) != checksum {
        return Err(VerifyError::Malformed("checksum does not match: the request was altered or mistyped".into()));
    }
    let json = B64.decode(body).map_err(|e| VerifyError::Malformed(format!("base64: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| VerifyError::Malformed(format!("JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> CertificatePayload {
        CertificatePayload {
            v: 1,
            license_id: "lic_1".into(),
            installation_id: "ins_1".into(),
            product_code: "cad".into(),
            customer_id: "cus_1".into(),
            kind: "node_locked".into(),
            modules: vec!["render".into()],
            valid_from_ms: 0,
            expires_at_ms: Some(10),
            upgrades_until_ms: None,
            issued_at_ms: 1,
            refresh_after_ms: 2,
            valid_until_ms: 3,
            fingerprint: vec![],
            match_threshold: 0.6,
            seats: 3,
            meters: Vec::new(),
            grace_ends_at_ms: None,
            heartbeat_timeout_secs: 0,
            first_used_at_ms: None,
            entitlements: Vec::new(),
        }
    }

    #[test]
    fn a_certificate_without_entitlements_has_no_such_field_and_one_with_them_licenses_until_each_expiry() {
        let signer = Signer::from_seed(&[9u8; 32]);
        let json = String::from_utf8(B64.decode(&signer.sign_certificate(&payload()).payload).unwrap()).unwrap();
        assert!(!json.contains("entitlements"), "old readers see the payload as before: {json}");
        let entitled = CertificatePayload {
            modules: vec!["render".into(), "export".into()],
            entitlements: vec![CertificateEntitlement {
                module: "render".into(),
                value: Some("4096".into()),
                expires_at_ms: Some(7),
            }],
            ..payload()
        };
        let verified = verify_certificate(&signer.verifying_key(), &signer.sign_certificate(&entitled)).unwrap();
        assert_eq!(verified, entitled);
        assert_eq!(
            (verified.entitlement_value("render", 6), verified.module_licensed("render", 6)),
            (Some("4096"), Ok(()))
        );
        assert_eq!(
            (verified.entitlement_value("render", 7), verified.module_licensed("render", 7)),
            (None, Err(Some(7)))
        );
        assert_eq!((verified.entitlement_value("export", 7), verified.module_licensed("export", 100)), (None, Ok(())));
        assert_eq!(verified.module_licensed("other", 0), Err(None));
    }

    #[test]
    fn a_certificate_without_a_grace_period_has_no_such_field_and_one_with_it_says_when_in_grace() {
        let signer = Signer::from_seed(&[9u8; 32]);
        let plain = signer.sign_certificate(&payload());
        let json = String::from_utf8(B64.decode(&plain.payload).unwrap()).unwrap();
        assert!(!json.contains("grace_ends_at_ms"), "old readers see the payload as before: {json}");
        let graced = CertificatePayload { grace_ends_at_ms: Some(20), ..payload() };
        let verified = verify_certificate(&signer.verifying_key(), &signer.sign_certificate(&graced)).unwrap();
        assert_eq!(verified.grace_ends_at_ms, Some(20));
        assert_eq!(
            (verified.in_grace(9), verified.in_grace(10), verified.in_grace(19), verified.in_grace(20)),
            (None, Some(20), Some(20), None)
        );
        assert_eq!(payload().in_grace(15), None, "no grace period: expired is expired");
    }

    #[test]
    fn a_heartbeat_requirement_is_in_the_payload_only_when_there_is_one() {
        let without = serde_json::to_string(&payload()).unwrap();
        assert!(!without.contains("heartbeat"), "{without}");
        let with = CertificatePayload { heartbeat_timeout_secs: 600, ..payload() };
        let text = serde_json::to_string(&with).unwrap();
        assert!(text.contains("\"heartbeat_timeout_secs\":600"), "{text}");
        assert_eq!(serde_json::from_str::<CertificatePayload>(&text).unwrap(), with);
        assert_eq!(serde_json::from_str::<CertificatePayload>(&without).unwrap().heartbeat_timeout_secs, 0);
    }

    #[test]
    fn certificates_verify_with_the_public_key_only_and_fail_when_altered() {
        let signer = Signer::from_seed(&[9u8; 32]);
        let blob = signer.sign_certificate(&payload());
        let file = certificate_file(&blob);
        let parsed = parse_certificate_file(&file).unwrap();
        assert_eq!(verify_certificate(&signer.verifying_key(), &parsed).unwrap(), payload());

        let mut bytes = B64.decode(&blob.payload).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            let altered = SignedBlob { payload: B64.encode(&bytes), ..blob.clone() };
            assert!(verify_certificate(&signer.verifying_key(), &altered).is_err(), "byte {i}");
            bytes[i] ^= 1;
        }
        let other = Signer::from_seed(&[8u8; 32]);
        assert_eq!(verify_certificate(&other.verifying_key(), &blob), Err(VerifyError::BadSignature));
        // A lease token's signature is not a certificate's.
        let lease = signer.sign(LEASE_TOKEN_CONTEXT, &B64.decode(&blob.payload).unwrap());
        assert_eq!(verify_certificate(&signer.verifying_key(), &lease), Err(VerifyError::BadSignature));
    }

    #[test]
    fn offline_requests_round_trip_and_catch_typos() {
        let request = OfflineRequest {
            v: 1,
            license_key: "K".into(),
            fingerprint: vec![],
            machine_name: "lab".into(),
            platform: "linux".into(),
            product_version: "1.0".into(),
            created_at_ms: 5,
        };
        let text = encode_offline_request(&request);
        assert!(text.starts_with(REQUEST_BEGIN));
        assert_eq!(decode_offline_request(&text).unwrap(), request);
        let typo = text.replacen('A', "B", 1);
        assert!(decode_offline_request(&typo).is_err());
    }
}
