//! Secrets at rest and in comparison.
//!
//! - License keys, session tokens, admin tokens, reset tokens and activation passwords are stored
//!   only as [`KeyedHasher`] digests (HMAC-SHA256 under a server key), and looked up by digest, so
//!   a stolen database alone does not reveal or let anyone brute-force them offline.
//! - Customer passwords are hashed with argon2id at the OWASP parameters ([`PasswordHasher`]).
//! - Anything compared against a secret goes through [`constant_time_eq`].

use argon2::password_hash::{self, Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

    /// The license key of a trial license: derived from its ID with the server key, so the
    /// machine that started the trial can be given it again (after a reinstall) though only
    /// its digest is stored.
    pub fn trial_license_key(&self, license_id: &str) -> crate::license_key::LicenseKey {
        crate::license_key::LicenseKey::from_seed(&self.mac(purpose::TRIAL_LICENSE_KEY, &[license_id]))
    }

    /// The key of a license an on-premises server serves (see [`crate::onprem`]): derived from
    /// its ID with this server's key, so the server's administrator can be shown it again
    /// though only its digest is stored, and it never changes while the data directory lasts.
    pub fn served_license_key(&self, license_id: &str) -> crate::license_key::LicenseKey {
        crate::license_key::LicenseKey::from_seed(&self.mac(purpose::SERVED_LICENSE_KEY, &[license_id]))
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
    /// Digests of license keys, for looking a key up without storing it.
    pub const LICENSE_KEY: &str = "license-key";
    /// Trial license keys, derived from the License ID.
    pub const TRIAL_LICENSE_KEY: &str = "trial-license-key";
    /// Keys of the licenses an on-premises server serves, derived from the License ID.
    pub const SERVED_LICENSE_KEY: &str = "served-license-key";
    /// Digests of the activation passwords customers may set on a license.
    pub const ACTIVATION_PASSWORD: &str = "activation-password";
    /// Digests of portal session tokens.
    pub const SESSION: &str = "session";
    /// Digests of admin API tokens.
    pub const ADMIN_TOKEN: &str = "admin-token";
    /// Digests of password-reset tokens.
    pub const RESET_TOKEN: &str = "reset-token";
}

/// Compares two byte strings in time that depends only on their lengths (for secrets and MACs).
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
/// Longest password accepted, in characters.
pub const MAX_PASSWORD_CHARS: usize = 128;

const ALGORITHM: Algorithm = Algorithm::Argon2id;
const VERSION: Version = Version::V0x13;

/// argon2id with OWASP's parameters m = 12 MiB, t = 3, p = 1: one of the configurations its
/// Password Storage Cheat Sheet lists as giving an equal level of defense (m = 19 MiB, t = 2 is
/// another; they cost about the same CPU). The lower memory is chosen because every hashing
/// thread keeps it for good: two threads fit a small server's memory bound with both cores
/// hashing (see `licensing_runtime::hashing::THREADS`). Hashes stored with other parameters
/// still verify, and [`Self::is_outdated`] tells which to re-hash at the next right password.
///
/// argon2 needs `m` KiB of working memory per hash. [`Self::hash_with`] and [`Self::verify_with`]
/// take it from a caller-owned [`HashMemory`] that is reused from one hash to the next, so a
/// process that hashes on a fixed set of threads, each with its own `HashMemory`, holds a fixed
/// amount however many passwords it hashes. (Allocating the memory per hash, as the argon2 crate's
/// own `hash_password` does, left a server holding 170-250 MiB after a few hundred logins.)
/// The output is the standard PHC string, byte for byte what the argon2 crate makes.
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

/// The working memory of argon2 (1 KiB blocks), kept between hashes by whoever owns it.
///
/// It grows to the memory cost of this process's own parameters on first use and stays there.
/// A stored hash made with a larger memory cost still verifies; the extra is given back after it.
#[derive(Default)]
pub struct HashMemory {
    blocks: Vec<Block>,
}

impl fmt::Debug for HashMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashMemory({} KiB)", self.blocks.len())
    }
}

impl HashMemory {
    /// An empty memory; it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.blocks.len() * Block::SIZE
    }

    /// Runs `compute` on `needed` blocks. Memory grown past `keep` blocks for it is given back
    /// afterwards, so one oversized stored hash does not raise what is held for good.
    fn with_blocks<T>(
        &mut self,
        needed: usize,
        keep: usize,
        compute: impl FnOnce(&mut [Block]) -> T,
    ) -> Result<T, UnusablePasswordHash> {
        let held = self.blocks.len();
        if held < needed {
            self.blocks
                .try_reserve_exact(needed - held)
                .map_err(|_| UnusablePasswordHash::TooCostly { m_kib: needed })?;
            self.blocks.resize(needed, Block::default());
        }
        let result = compute(&mut self.blocks[..needed]);
        let keep = keep.max(held);
        if self.blocks.len() > keep {
            self.blocks.truncate(keep);
            self.blocks.shrink_to_fit();
        }
        Ok(result)
    }
}

/// The most memory a stored hash may ask of a verification: 256 MiB, thirteen times the OWASP
/// cost, so that a corrupt or hostile `m=` cannot make a hashing thread take gigabytes.
pub const MAX_VERIFY_MEMORY_KIB: u32 = 256 * 1024;

/// A stored password hash that cannot be verified. Nothing can match it.
#[derive(Debug, thiserror::Error)]
pub enum UnusablePasswordHash {
    /// Not a PHC string, not argon2, or parameters, salt or output that argon2 refuses.
    #[error("the stored password hash is unusable: {0}")]
    Malformed(password_hash::Error),
    /// The stored parameters ask for more memory than [`MAX_VERIFY_MEMORY_KIB`], or than could be allocated.
    #[error("the stored password hash asks for {m_kib} KiB of memory; at most {MAX_VERIFY_MEMORY_KIB} KiB is allowed")]
    TooCostly {
        /// The memory cost the stored hash asks for, in KiB.
        m_kib: usize,
    },
}

impl From<password_hash::Error> for UnusablePasswordHash {
    fn from(e: password_hash::Error) -> Self {
        Self::Malformed(e)
    }
}

impl From<argon2::Error> for UnusablePasswordHash {
    fn from(e: argon2::Error) -> Self {
        Self::Malformed(e.into())
    }
}

impl PasswordHasher {
    /// The hasher this server uses: argon2id, m = 12 MiB, t = 3, p = 1.
    pub fn owasp() -> Self {
        Self::with_params(12 * 1024, 3, 1)
    }

    /// Whether the stored PHC string `phc` was made with other parameters than this hasher's
    /// (an older default, or another algorithm): it should be re-hashed, when the password is
    /// next known to be right, so every stored hash ends up at the current cost and memory.
    pub fn is_outdated(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else { return false };
        let same_params = Params::try_from(&parsed).is_ok_and(|p| {
            let own = self.argon.params();
            (p.m_cost(), p.t_cost(), p.p_cost()) == (own.m_cost(), own.t_cost(), own.p_cost())
        });
        let same_version =
            parsed.version.map(Version::try_from).transpose().ok().flatten().unwrap_or_default() == VERSION;
        !(parsed.algorithm == ALGORITHM.ident() && same_version && same_params)
    }

    /// Cheaper parameters, for tests only.
    pub fn with_params(m_kib: u32, t: u32, p: u32) -> Self {
        let params = Params::new(m_kib, t, p, None).expect("valid argon2 parameters");
        Self { argon: Argon2::new(ALGORITHM, VERSION, params) }
    }

    /// The blocks this hasher's own parameters need (what a [`HashMemory`] keeps).
    fn own_blocks(&self) -> usize {
        self.argon.params().block_count()
    }

    /// A PHC string, computed in `memory`; CPU-heavy (tens of ms): call it from a hashing thread.
    pub fn hash_with(&self, memory: &mut HashMemory, password: &str) -> String {
        let salt = SaltString::encode_b64(&random_bytes::<16>()).expect("16 bytes is a valid salt");
        self.hash_with_salt(memory, password, &salt)
            .expect("argon2 hashing with valid parameters and a 16-byte salt does not fail")
    }

    fn hash_with_salt(
        &self,
        memory: &mut HashMemory,
        password: &str,
        salt: &SaltString,
    ) -> Result<String, UnusablePasswordHash> {
        let params = self.argon.params();
        let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
        let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
        let mut output = [0u8; Output::MAX_LENGTH];
        let output = &mut output[..params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
        memory.with_blocks(params.block_count(), self.own_blocks(), |blocks| {
            self.argon.hash_password_into_with_memory(password.as_bytes(), salt_bytes, output, blocks)
        })??;
        let phc = PasswordHash {
            algorithm: ALGORITHM.ident(),
            version: Some(VERSION.into()),
            params: ParamsString::try_from(params)?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(output)?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches the stored PHC string `phc`, computed in `memory`: argon2 with
    /// the algorithm, version, parameters and salt the string names (as the argon2 crate's own
    /// verifier does), the outputs compared in constant time.
    pub fn verify_with(
        &self,
        memory: &mut HashMemory,
        password: &str,
        phc: &str,
    ) -> Result<bool, UnusablePasswordHash> {
        let parsed = PasswordHash::new(phc)?;
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Err(password_hash::Error::PhcStringField.into());
        };
        let algorithm = Algorithm::try_from(parsed.algorithm)?;
        let version = parsed.version.map(Version::try_from).transpose()?.unwrap_or_default();
        let params = Params::try_from(&parsed)?;
        if params.m_cost() > MAX_VERIFY_MEMORY_KIB {
            return Err(UnusablePasswordHash::TooCostly { m_kib: params.m_cost() as usize });
        }
        let argon = Argon2::new(algorithm, version, params.clone());
        let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
        let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
        let mut computed = [0u8; Output::MAX_LENGTH];
        let computed = &mut computed[..expected.len()];
        memory.with_blocks(params.block_count(), self.own_blocks(), |blocks| {
            argon.hash_password_into_with_memory(password.as_bytes(), salt_bytes, computed, blocks)
        })??;
        Ok(constant_time_eq(computed, expected.as_bytes()))
    }

    /// [`Self::hash_with`] in memory of its own, allocated for this one hash: for one-off use
    /// (tools, tests). A server hashes on `licensing_runtime::hashing`'s threads instead.
    pub fn hash(&self, password: &str) -> String {
        self.hash_with(&mut HashMemory::new(), password)
    }

    /// [`Self::verify_with`] in memory of its own; an unusable stored hash does not verify.
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        self.verify_with(&mut HashMemory::new(), password, phc).unwrap_or(false)
    }

    /// A hash of a random password, verified against when the account does not exist (or has no
    /// password) so that the answer takes as long as for a real account.
    pub fn decoy_hash(&self, memory: &mut HashMemory) -> String {
        self.hash_with(memory, &random_token("decoy", 16))
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
    fn hashes_of_other_parameters_are_outdated_and_still_verify() {
        let current = PasswordHasher::with_params(64, 2, 1);
        let fresh = current.hash("correct horse battery");
        assert!(!current.is_outdated(&fresh));
        let older = PasswordHasher::with_params(128, 1, 1).hash("correct horse battery");
        assert!(current.is_outdated(&older), "another memory and time cost");
        assert!(current.verify("correct horse battery", &older), "yet it verifies");
        assert!(!current.is_outdated("not a PHC string"), "nothing to re-hash from garbage");
        // The OWASP equal-strength choice, not the 19 MiB one.
        let owasp = PasswordHasher::owasp().argon.params().clone();
        assert_eq!((owasp.m_cost(), owasp.t_cost(), owasp.p_cost()), (12 * 1024, 3, 1));
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let hasher = PasswordHasher::with_params(64, 1, 1);
        let phc = hasher.hash("correct horse battery");
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(hasher.verify("correct horse battery", &phc));
        assert!(!hasher.verify("correct horse batterY", &phc));
        assert!(!hasher.verify("anything", "not a phc string"));
        let mut memory = HashMemory::new();
        assert!(hasher.verify_with(&mut memory, "correct horse battery", &phc).unwrap());
        assert!(!hasher.verify_with(&mut memory, "", &phc).unwrap());
        assert!(!hasher.verify_with(&mut memory, "correct horse battery ", &phc).unwrap());
    }

    /// The argon2 crate's own hasher and verifier, at the given parameters.
    fn standard(algorithm: Algorithm, version: Version, params: Params) -> Argon2<'static> {
        Argon2::new(algorithm, version, params)
    }

    #[test]
    fn new_hashes_are_the_standard_phc_strings_and_the_standard_verifier_accepts_them() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let ours = PasswordHasher::with_params(256, 2, 1);
        let theirs = standard(Algorithm::Argon2id, Version::V0x13, Params::new(256, 2, 1, None).unwrap());
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        let mut memory = HashMemory::new();
        // Memory that held another hash first gives the same answer as fresh memory.
        let _ = ours.hash_with(&mut memory, "something else entirely");
        let phc = ours.hash_with_salt(&mut memory, "correct horse battery", &salt).unwrap();
        assert_eq!(phc, theirs.hash_password(b"correct horse battery", &salt).unwrap().to_string());

        let phc = ours.hash_with(&mut memory, "correct horse battery");
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(theirs.verify_password(b"correct horse battery", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"correct horse battery", &parsed).is_ok());
        assert!(theirs.verify_password(b"correct horse batterY", &parsed).is_err());
    }

    #[test]
    fn hashes_made_by_the_standard_argon2_api_verify() {
        use argon2::password_hash::PasswordHasher as _;
        let ours = PasswordHasher::with_params(64, 1, 1);
        let mut memory = HashMemory::new();
        let longer_output = Params::new(128, 2, 1, Some(40)).unwrap();
        let mut builder = argon2::ParamsBuilder::new();
        builder.m_cost(64).t_cost(1).p_cost(1).data(argon2::AssociatedData::new(b"context").unwrap());
        let cases = [
            standard(Algorithm::Argon2id, Version::V0x13, Params::new(19 * 1024, 2, 1, None).unwrap()),
            standard(Algorithm::Argon2id, Version::V0x13, Params::new(96, 3, 2, None).unwrap()),
            standard(Algorithm::Argon2i, Version::V0x13, Params::new(64, 2, 1, None).unwrap()),
            standard(Algorithm::Argon2d, Version::V0x10, Params::new(64, 2, 1, None).unwrap()),
            standard(Algorithm::Argon2id, Version::V0x13, longer_output),
            standard(Algorithm::Argon2id, Version::V0x13, builder.build().unwrap()),
        ];
        for standard in cases {
            let salt = SaltString::encode_b64(&random_bytes::<16>()).unwrap();
            let phc = standard.hash_password(b"correct horse battery", &salt).unwrap().to_string();
            assert_eq!(ours.verify_with(&mut memory, "correct horse battery", &phc).ok(), Some(true), "{phc}");
            assert_eq!(ours.verify_with(&mut memory, "correct horse batterY", &phc).ok(), Some(false), "{phc}");
        }
        // One the default `hash_password` made, at the default (OWASP) parameters.
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = Argon2::default().hash_password(b"pw", &salt).unwrap();
        assert!(PasswordHasher::owasp().verify_with(&mut memory, "pw", &phc.to_string()).unwrap());
    }

    #[test]
    fn memory_keeps_the_hashers_own_size_and_gives_back_what_a_larger_stored_hash_took() {
        let hasher = PasswordHasher::with_params(64, 1, 1);
        let mut memory = HashMemory::new();
        assert_eq!(memory.bytes(), 0);
        let phc = hasher.hash_with(&mut memory, "correct horse battery");
        assert_eq!(memory.bytes(), 64 * 1024);
        for _ in 0..3 {
            assert!(hasher.verify_with(&mut memory, "correct horse battery", &phc).unwrap());
            assert_eq!(memory.bytes(), 64 * 1024);
        }
        let larger = PasswordHasher::with_params(256, 1, 1).hash("correct horse battery");
        assert!(hasher.verify_with(&mut memory, "correct horse battery", &larger).unwrap());
        assert_eq!(memory.bytes(), 64 * 1024, "the larger hash's memory is given back");
        let smaller = PasswordHasher::with_params(32, 1, 1).hash("correct horse battery");
        assert!(hasher.verify_with(&mut memory, "correct horse battery", &smaller).unwrap());
        assert_eq!(memory.bytes(), 64 * 1024);
    }

    #[test]
    fn unusable_stored_hashes_are_errors_not_panics() {
        let hasher = PasswordHasher::with_params(64, 1, 1);
        let mut memory = HashMemory::new();
        let good = hasher.hash("correct horse battery");
        let (salt, output) =
            good.rsplit_once('$').map(|(rest, output)| (rest.rsplit_once('$').unwrap().1, output)).unwrap();
        let unusable = [
            String::new(),
            "not a phc string".into(),
            "$".into(),
            "$$$$$".into(),
            "$argon2id".into(),
            "$argon2id$v=19$m=64,t=1,p=1".into(),
            format!("$argon2id$v=19$m=64,t=1,p=1${salt}"),
            format!("$argon2id$v=19$m=64,t=1,p=1${salt}$"),
            format!("$argon2id$v=19$m=64,t=1,p=1$${output}"),
            format!("$scrypt$ln=16,r=8,p=1${salt}${output}"),
            format!("$argon2id$v=18$m=64,t=1,p=1${salt}${output}"),
            format!("$argon2id$v=19$m=1,t=1,p=1${salt}${output}"),
            format!("$argon2id$v=19$m=64,t=0,p=1${salt}${output}"),
            format!("$argon2id$v=19$m=64,t=1,p=0${salt}${output}"),
            format!("$argon2id$v=19$m=64,t=1,p=99999999${salt}${output}"),
            format!("$argon2id$v=19$m=-64,t=1,p=1${salt}${output}"),
            format!("$argon2id$v=19$m=64,t=1,p=1,x=1${salt}${output}"),
            format!("$argon2id$v=19$m=64,t=1,p=1$c2FsdA${output}"),
            format!("$argon2id$v=19$m=64,t=1,p=1$!!!!!!!!!!!!!!!!!!!!!!${output}"),
            format!("$argon2id$v=19$m=64,t=1,p=1${salt}$AAAA"),
            format!("$argon2id$v=19$m=64,t=1,p=1${salt}${output}{output}{output}"),
            format!("$argon2id$v=19$m=4294967295,t=1,p=1${salt}${output}"),
            format!("$argon2id$v=19$m={},t=1,p=1${salt}${output}", MAX_VERIFY_MEMORY_KIB + 1),
        ];
        for phc in &unusable {
            let result = hasher.verify_with(&mut memory, "correct horse battery", phc);
            assert!(result.is_err(), "{phc:?} gave {result:?}");
            assert!(!hasher.verify("correct horse battery", phc));
        }
        assert!(matches!(
            hasher.verify_with(&mut memory, "x", &format!("$argon2id$v=19$m=4294967295,t=1,p=1${salt}${output}")),
            Err(UnusablePasswordHash::TooCostly { .. })
        ));
        // Every one-character change of a good hash: an answer (almost always an error), never a panic.
        for (i, _) in good.char_indices() {
            for replacement in ["", "$", ",", "=", "0", "9", "A", "+", "\u{e9}"] {
                let phc = format!("{}{replacement}{}", &good[..i], &good[i + 1..]);
                let _ = hasher.verify_with(&mut memory, "correct horse battery", &phc);
            }
        }
        assert!(hasher.verify_with(&mut memory, "correct horse battery", &good).unwrap());
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
