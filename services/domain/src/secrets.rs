//! Secrets at rest and in comparison.
//!
//! - License keys, session tokens, admin tokens, reset tokens and activation passwords are stored
//!   only as [`KeyedHasher`] digests (HMAC-SHA256 under a server key), and looked up by digest, so
//!   a stolen database alone does not reveal or let anyone brute-force them offline.
//! - Customer passwords are hashed with argon2id at the OWASP parameters ([`PasswordHasher`]).
//! - Anything compared against a secret goes through [`constant_time_eq`].

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;

/// HMAC-SHA256 under a server-side key, hex-encoded.
#[derive(Clone)]
pub struct KeyedHasher {
    key: Vec<u8>,
}

impl fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyedHasher(<redacted>)")
    }
}

impl KeyedHasher {
    /// At least 32 bytes of key: shorter keys are refused by the configuration layer.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into() }
    }

    fn mac(&self, purpose: &str, parts: &[&str]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        for part in parts {
            mac.update(&[0]);
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// The digest of `secret` in the named `purpose` (so a token of one kind never matches another).
    pub fn digest(&self, purpose: &str, secret: &str) -> String {
        hex::encode(self.mac(purpose, &[secret]))
    }

    /// The activation password of a license: derived from its ID and a stored random salt, so it
    /// can be shown again but never sits in the database. 20 symbols, 100 bits, grouped by 5.
    pub fn activation_password(&self, license_id: &str, salt: &str) -> String {
        let bytes = self.mac(purpose::ACTIVATION_PASSWORD, &[license_id, salt]);
        let alphabet = crate::license_key::ALPHABET;
        let mut out = String::with_capacity(23);
        for (i, b) in bytes.iter().take(20).enumerate() {
            if i > 0 && i % 5 == 0 {
                out.push('-');
            }
            out.push(alphabet[(*b & 31) as usize] as char);
        }
        out
    }
}

/// Purposes of keyed digests.
pub mod purpose {
    pub const LICENSE_KEY: &str = "license-key";
    pub const ACTIVATION_PASSWORD: &str = "activation-password";
    pub const SESSION: &str = "session";
    pub const ADMIN_TOKEN: &str = "admin-token";
    pub const RESET_TOKEN: &str = "reset-token";
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A random token `prefix_<base32>` with `bytes` bytes of entropy (at least 16 for sessions).
pub fn random_token(prefix: &str, bytes: usize) -> String {
    let mut rng = rand::rng();
    let alphabet = crate::license_key::ALPHABET;
    let symbols = (bytes * 8).div_ceil(5);
    let mut token = String::with_capacity(prefix.len() + 1 + symbols);
    token.push_str(prefix);
    token.push('_');
    for _ in 0..symbols {
        token.push(alphabet[rng.random_range(0..32)] as char);
    }
    token
}

/// Random bytes from the OS-seeded CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rng().fill(&mut out[..]);
    out
}

/// Bounds on a password a person chooses (OWASP: at least 64 accepted, a minimum of 12 here).
pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// argon2id with the OWASP minimum parameters (m = 19 MiB, t = 2, p = 1).
#[derive(Clone)]
pub struct PasswordHasher {
    argon: Argon2<'static>,
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHasher(argon2id)")
    }
}

impl Default for PasswordHasher {
    fn default() -> Self {
        Self::owasp()
    }
}

impl PasswordHasher {
    pub fn owasp() -> Self {
        Self::with_params(19 * 1024, 2, 1)
    }

    /// Cheaper parameters, for tests only.
    pub fn with_params(m_kib: u32, t: u32, p: u32) -> Self {
        let params = Params::new(m_kib, t, p, None).expect("valid argon2 parameters");
        Self { argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params) }
    }

    /// A PHC string; CPU-heavy (tens of ms): call it from a blocking thread.
    pub fn hash(&self, password: &str) -> String {
        let salt = SaltString::encode_b64(&random_bytes::<16>()).expect("16 bytes is a valid salt");
        self.argon
            .hash_password(password.as_bytes(), &salt)
            .expect("argon2 hashing with valid parameters does not fail")
            .to_string()
    }

    /// Constant-time verification; a malformed stored hash simply does not verify.
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        PasswordHash::new(phc).is_ok_and(|parsed| self.argon.verify_password(password.as_bytes(), &parsed).is_ok())
    }

    /// A hash of a random password, verified against when the account does not exist so that
    /// the answer takes as long as for a real account.
    pub fn decoy_hash(&self) -> String {
        self.hash(&random_token("decoy", 16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_digest_depends_on_key_purpose_and_secret() {
        let a = KeyedHasher::new(vec![1u8; 32]);
        let b = KeyedHasher::new(vec![2u8; 32]);
        assert_eq!(a.digest(purpose::SESSION, "x"), a.digest(purpose::SESSION, "x"));
        assert_ne!(a.digest(purpose::SESSION, "x"), b.digest(purpose::SESSION, "x"));
        assert_ne!(a.digest(purpose::SESSION, "x"), a.digest(purpose::RESET_TOKEN, "x"));
        assert_ne!(a.digest(purpose::SESSION, "x"), a.digest(purpose::SESSION, "y"));
        assert_eq!(a.digest(purpose::SESSION, "x").len(), 64);
    }

    #[test]
    fn activation_passwords_depend_on_license_salt_and_key() {
        let a = KeyedHasher::new(vec![1u8; 32]);
        let p = a.activation_password("lic_1", "salt1");
        assert_eq!(p, a.activation_password("lic_1", "salt1"));
        assert_eq!(p.len(), 23);
        assert_ne!(p, a.activation_password("lic_1", "salt2"));
        assert_ne!(p, a.activation_password("lic_2", "salt1"));
        assert_ne!(p, KeyedHasher::new(vec![2u8; 32]).activation_password("lic_1", "salt1"));
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let hasher = PasswordHasher::with_params(64, 1, 1);
        let phc = hasher.hash("correct horse battery");
        assert!(phc.starts_with("$argon2id$"));
        assert!(hasher.verify("correct horse battery", &phc));
        assert!(!hasher.verify("correct horse batterY", &phc));
        assert!(!hasher.verify("anything", "not a phc string"));
    }

    #[test]
    fn tokens_are_random_and_long_enough() {
        let t = random_token("ses", 20);
        assert!(t.starts_with("ses_"));
        assert_eq!(t.len(), 4 + 32);
        assert_ne!(t, random_token("ses", 20));
        assert!(constant_time_eq(t.as_bytes(), t.as_bytes()));
        assert!(!constant_time_eq(t.as_bytes(), b"ses_"));
    }
}
