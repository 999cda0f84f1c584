//! Offline deactivation requests: the proof of removal an air-gapped node-locked product writes
//! once it has deleted its certificate, for an operator to carry to the vendor (see
//! docs/certificate.md, "Offline deactivation request"). Like FlexNet's "secure return", the
//! product removes its certificate first and only then writes the request, so the activation is
//! freed only for a machine that can no longer use it offline.
//!
//! The request is not signed (the product holds no key): it carries the license's credential as
//! the product has it, and a checksum that catches transcription errors. It names the
//! certificate it gives back by the certificate's `issued_at_ms`, so the vendor can refuse a
//! request written from a certificate older than the machine's latest (re-)activation.

use crate::certificate::{unwrap_armor, wrap, CertificatePayload, VerifyError};
use crate::clock::Millis;
use crate::fingerprint::Component;
use crate::ids;
use crate::text::quoted;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const BEGIN: &str = "-----BEGIN LICENSING DEACTIVATION REQUEST-----";
const END: &str = "-----END LICENSING DEACTIVATION REQUEST-----";

/// Largest deactivation request accepted, in bytes.
pub const MAX_DEACTIVATION_REQUEST_BYTES: usize = 64 * 1024;

/// Longest credential a request may carry, in bytes.
const MAX_CREDENTIAL: usize = 200;

/// What a product writes when it gives its activation back offline, after deleting its
/// certificate. Instants are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeactivationRequest {
    /// Format version, 1.
    pub v: u32,
    /// The License ID (`lic_…`) of the certificate given back.
    pub license_id: String,
    /// The license key as typed into the product; empty when the product uses the License ID
    /// and an activation password instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license_key: String,
    /// The activation password (or the customer's portal password), when the product uses one
    /// with the License ID instead of a key; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// The Installation ID (`ins_…`) of the certificate given back.
    pub installation_id: String,
    /// `issued_at_ms` of the certificate given back: tells it from the certificates signed
    /// for the installation before and after it.
    pub certificate_issued_at_ms: Millis,
    /// The machine's fingerprint, raw, as the product presents it.
    pub fingerprint: Vec<Component>,
    /// When the product wrote the request (its own clock; informational).
    pub created_at_ms: Millis,
}

/// How the product proves the license is its own: what it activated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeactivationCredential {
    /// The license key.
    LicenseKey(String),
    /// The License ID's activation password (or the customer's portal password).
    Password(String),
}

impl DeactivationRequest {
    /// The request giving back the certificate `certificate` asserts, proven by `credential`,
    /// from the machine `fingerprint` describes, written at `now`.
    pub fn for_certificate(
        certificate: &CertificatePayload,
        credential: DeactivationCredential,
        fingerprint: Vec<Component>,
        now: Millis,
    ) -> Self {
        let (license_key, password) = match credential {
            DeactivationCredential::LicenseKey(key) => (key, String::new()),
            DeactivationCredential::Password(password) => (String::new(), password),
        };
        Self {
            v: 1,
            license_id: certificate.license_id.clone(),
            license_key,
            password,
            installation_id: certificate.installation_id.clone(),
            certificate_issued_at_ms: certificate.issued_at_ms,
            fingerprint,
            created_at_ms: now,
        }
    }

    /// The credential the request carries.
    pub fn credential(&self) -> DeactivationCredential {
        match self.license_key.is_empty() {
            false => DeactivationCredential::LicenseKey(self.license_key.clone()),
            true => DeactivationCredential::Password(self.password.clone()),
        }
    }

    /// Checks what the request names: well-formed IDs, exactly one credential, a certificate
    /// time. The message names the request's field at fault.
    pub fn check(&self) -> Result<(), String> {
        if !ids::is_well_formed(ids::LICENSE, &self.license_id) {
            return Err(format!("license_id {} is not a License ID (lic_…)", quoted(&self.license_id)));
        }
        if !ids::is_well_formed(ids::INSTALLATION, &self.installation_id) {
            return Err(format!("installation_id {} is not an Installation ID (ins_…)", quoted(&self.installation_id)));
        }
        match (self.license_key.is_empty(), self.password.is_empty()) {
            (true, true) => return Err("carries neither license_key nor password".into()),
            (false, false) => return Err("carries both license_key and password: one proves the license".into()),
            _ => {}
        }
        if self.license_key.len().max(self.password.len()) > MAX_CREDENTIAL {
            return Err(format!("its credential is longer than {MAX_CREDENTIAL} bytes"));
        }
        if self.certificate_issued_at_ms <= 0 {
            return Err(format!(
                "certificate_issued_at_ms must be the issued_at_ms of the certificate given back, got {}",
                self.certificate_issued_at_ms
            ));
        }
        Ok(())
    }
}

/// The request as text: base64 JSON and a SHA-256 checksum line, so transcription errors are
/// caught (the same layout as the activation and server request files).
pub fn encode_deactivation_request(request: &DeactivationRequest) -> String {
    let body = B64.encode(serde_json::to_vec(request).expect("a request serializes"));
    let checksum = hex::encode(&Sha256::digest(body.as_bytes())[..8]);
    let mut text = wrap(BEGIN, END, &body);
    text.insert_str(text.len() - END.len() - 1, &format!("checksum:{checksum}\n"));
    text
}

/// Files that are not deactivation requests, by their first line, and what to do with them.
const OTHER_FILES: &[(&str, &str)] = &[
    (
        "-----BEGIN LICENSING SERVER REQUEST-----",
        "this is an on-premises server's request file: the vendor answers it with AdminService/ProcessServerRequest \
         (licensectl server-license respond)",
    ),
    (
        "-----BEGIN LICENSING ACTIVATION REQUEST-----",
        "this is an offline activation request: submit it with ActivationService/ActivateOffline",
    ),
    ("-----BEGIN LICENSING CERTIFICATE-----", "this is a certificate, not a deactivation request"),
    ("-----BEGIN LICENSING SERVER LICENSE-----", "this is a server license file, not a deactivation request"),
];

/// The request from its text form ([`encode_deactivation_request`]): refused when larger than
/// [`MAX_DEACTIVATION_REQUEST_BYTES`], when it is another kind of file, when its checksum does
/// not match, or when its version is not 1. What it names is checked by
/// [`DeactivationRequest::check`].
pub fn decode_deactivation_request(text: &str) -> Result<DeactivationRequest, VerifyError> {
    let malformed = |why: String| VerifyError::Malformed(why);
    if text.len() > MAX_DEACTIVATION_REQUEST_BYTES {
        return Err(malformed(format!("larger than {} KiB", MAX_DEACTIVATION_REQUEST_BYTES / 1024)));
    }
    if !text.contains(BEGIN) {
        if let Some((_, what)) = OTHER_FILES.iter().find(|(begin, _)| text.contains(begin)) {
            return Err(malformed((*what).to_owned()));
        }
    }
    let inner = unwrap_armor(text, BEGIN, END)?;
    let (body, checksum) = inner.split_once("checksum:").ok_or_else(|| malformed("missing checksum line".into()))?;
    if hex::encode(&Sha256::digest(body.as_bytes())[..8]) != checksum {
        return Err(malformed("checksum does not match: the request was altered or mistyped".into()));
    }
    let json = B64.decode(body).map_err(|e| malformed(format!("base64: {e}")))?;
    let request: DeactivationRequest = serde_json::from_slice(&json).map_err(|e| malformed(format!("JSON: {e}")))?;
    if request.v != 1 {
        return Err(malformed(format!("version {} is not supported", request.v)));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server_license::{encode_server_request, ServerRequest, ServerRequestKind};

    fn components() -> Vec<Component> {
        vec![
            Component { name: "machine-id".into(), value: "m1".into() },
            Component { name: "disk-serial".into(), value: "d1".into() },
        ]
    }

    fn request() -> DeactivationRequest {
        DeactivationRequest {
            v: 1,
            license_id: "lic_0123456789ABCDEF".into(),
            license_key: "ABCDE-FGHIJ".into(),
            password: String::new(),
            installation_id: "ins_0123456789ABCDEF".into(),
            certificate_issued_at_ms: 1_700_000_000_000,
            fingerprint: components(),
            created_at_ms: 1_700_000_100_000,
        }
    }

    #[test]
    fn a_deactivation_request_round_trips_and_catches_typos_versions_and_other_files() {
        let text = encode_deactivation_request(&request());
        assert!(text.starts_with(BEGIN), "{text}");
        assert!(text.contains("\nchecksum:"), "{text}");
        assert!(text.trim_end().ends_with(END), "{text}");
        let decoded = decode_deactivation_request(&text).unwrap();
        assert_eq!(decoded, request());
        assert_eq!(decoded.check(), Ok(()));
        assert_eq!(decoded.credential(), DeactivationCredential::LicenseKey("ABCDE-FGHIJ".into()));

        // One character of the body mistyped.
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let typo = if lines[1].starts_with('e') { "f" } else { "e" };
        lines[1].replace_range(0..1, typo);
        let err = decode_deactivation_request(&lines.join("\n")).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        // Without its checksum line.
        let unchecked: Vec<&str> = text.lines().filter(|l| !l.starts_with("checksum:")).collect();
        assert!(decode_deactivation_request(&unchecked.join("\n")).unwrap_err().to_string().contains("checksum"));

        let v2 = encode_deactivation_request(&DeactivationRequest { v: 2, ..request() });
        assert!(decode_deactivation_request(&v2).unwrap_err().to_string().contains("version 2"));
        let big = format!("{BEGIN}\n{}\n{END}\n", "A".repeat(MAX_DEACTIVATION_REQUEST_BYTES));
        assert!(decode_deactivation_request(&big).unwrap_err().to_string().contains("64 KiB"));
        assert!(decode_deactivation_request("garbage").unwrap_err().to_string().contains(BEGIN));
        assert!(decode_deactivation_request("").is_err());

        // A server's request file is named for what it is, not taken as a deactivation.
        let server = encode_server_request(&ServerRequest {
            v: 1,
            kind: ServerRequestKind::Return,
            license_key: "K".into(),
            fingerprint: components(),
            server_name: "lic01".into(),
            installation_id: "ins_0123456789ABCDEF".into(),
            serial: 1,
            created_at_ms: 0,
        });
        let err = decode_deactivation_request(&server).unwrap_err().to_string();
        assert!(err.contains("ProcessServerRequest"), "{err}");
    }

    #[test]
    fn a_request_names_one_credential_and_well_formed_ids() {
        let with = |change: fn(&mut DeactivationRequest)| {
            let mut r = request();
            change(&mut r);
            r.check()
        };
        assert!(with(|r| r.license_id = "lic_\u{0}".into()).unwrap_err().starts_with("license_id"));
        assert!(with(|r| r.installation_id = "nope".into()).unwrap_err().starts_with("installation_id"));
        assert!(with(|r| r.license_key.clear()).unwrap_err().contains("neither"));
        assert!(with(|r| r.password = "p".into()).unwrap_err().contains("both"));
        assert!(with(|r| r.license_key = "k".repeat(201)).unwrap_err().contains("longer"));
        assert!(with(|r| r.certificate_issued_at_ms = 0).unwrap_err().starts_with("certificate_issued_at_ms"));
        let by_password = DeactivationRequest { license_key: String::new(), password: "secret".into(), ..request() };
        assert_eq!(by_password.check(), Ok(()));
        assert_eq!(by_password.credential(), DeactivationCredential::Password("secret".into()));
        // The password is left out of the JSON when a key is used, and the reverse.
        let text = encode_deactivation_request(&by_password);
        assert_eq!(decode_deactivation_request(&text).unwrap(), by_password);
    }
}
