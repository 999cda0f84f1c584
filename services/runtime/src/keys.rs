//! The server's secret keys: the key of keyed hashes and the Ed25519 signing key.
//!
//! Taken from `LICENSING_HASH_KEY` / `LICENSING_SIGNING_KEY` when set (production: every
//! service must share them). Otherwise, for the embedded default, they live in
//! `<data dir>/server-keys.json`, created with fresh random keys at first start (mode 0600).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use licensing_domain::secrets::{random_bytes, KeyedHasher};
use std::path::Path;

/// Name of the key file in the data directory (embedded default only).
pub const KEY_FILE: &str = "server-keys.json";

/// The server's secret keys; never printed (its `Debug` is redacted).
#[derive(Clone)]
pub struct ServerKeys {
    /// Key of the keyed hashes (at least 32 bytes).
    pub hash_key: Vec<u8>,
    /// Ed25519 seed (the private key).
    pub signing_seed: [u8; 32],
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKeys(<redacted>)")
    }
}

/// Why the keys could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A variable is set but not base64 of the right length.
    #[error("{var} must be base64 of {what}")]
    Malformed {
        /// The variable at fault.
        var: &'static str,
        /// What it must hold, e.g. "exactly 32 bytes".
        what: &'static str,
    },
    /// A separate service started without this variable (they must share their keys).
    #[error(
        "{0} is not set: separate services must share their keys, so set LICENSING_HASH_KEY and LICENSING_SIGNING_KEY"
    )]
    Missing(&'static str),
    /// The key file could not be read, parsed or written.
    #[error("key file {path}: {message}")]
    File {
        /// The key file's path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

fn decode_hash_key(b64: &str) -> Result<Vec<u8>, KeyError> {
    B64.decode(b64.trim())
        .ok()
        .filter(|k| k.len() >= 32)
        .ok_or(KeyError::Malformed { var: "LICENSING_HASH_KEY", what: "at least 32 bytes" })
}

fn decode_seed(b64: &str) -> Result<[u8; 32], KeyError> {
    B64.decode(b64.trim())
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or(KeyError::Malformed { var: "LICENSING_SIGNING_KEY", what: "exactly 32 bytes" })
}

impl ServerKeys {
    /// The keyed hasher of `hash_key`.
    pub fn hasher(&self) -> KeyedHasher {
        KeyedHasher::new(self.hash_key.clone())
    }

    /// Keys from the environment only (the separate services).
    pub fn from_env_values(hash_key: Option<&str>, signing_key: Option<&str>) -> Result<Self, KeyError> {
        Ok(Self {
            hash_key: decode_hash_key(hash_key.ok_or(KeyError::Missing("LICENSING_HASH_KEY"))?)?,
            signing_seed: decode_seed(signing_key.ok_or(KeyError::Missing("LICENSING_SIGNING_KEY"))?)?,
        })
    }

    /// Keys from the environment where set, else from (or into) the key file in `data_dir`.
    pub fn load_or_create(
        data_dir: &Path,
        hash_key: Option<&str>,
        signing_key: Option<&str>,
    ) -> Result<Self, KeyError> {
        let path = data_dir.join(KEY_FILE);
        let file_err = |message: String| KeyError::File { path: path.display().to_string(), message };
        let stored = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| file_err(e.to_string()))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))?;
            let field = |name: &str| {
                json.get(name)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| file_err(format!("missing {name}")))
            };
            Self { hash_key: decode_hash_key(&field("hash_key")?)?, signing_seed: decode_seed(&field("signing_key")?)? }
        } else {
            let fresh = Self { hash_key: random_bytes::<32>().to_vec(), signing_seed: random_bytes::<32>() };
            std::fs::create_dir_all(data_dir).map_err(|e| file_err(e.to_string()))?;
            let json = serde_json::json!({ "hash_key": B64.encode(&fresh.hash_key), "signing_key": B64.encode(fresh.signing_seed) });
            write_private(&path, json.to_string().as_bytes()).map_err(|e| file_err(e.to_string()))?;
            fresh
        };
        Ok(Self {
            hash_key: hash_key.map(decode_hash_key).transpose()?.unwrap_or(stored.hash_key),
            signing_seed: signing_key.map(decode_seed).transpose()?.unwrap_or(stored.signing_seed),
        })
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("keys-{}", licensing_domain::ids::new_id("t")));
        let a = ServerKeys::load_or_create(&dir, None, None).unwrap();
        let b = ServerKeys::load_or_create(&dir, None, None).unwrap();
        assert_eq!(a.hash_key, b.hash_key);
        assert_eq!(a.signing_seed, b.signing_seed);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_keys_are_validated() {
        assert!(matches!(ServerKeys::from_env_values(None, None), Err(KeyError::Missing(_))));
        let short = B64.encode([1u8; 8]);
        let seed = B64.encode([2u8; 32]);
        assert!(matches!(ServerKeys::from_env_values(Some(&short), Some(&seed)), Err(KeyError::Malformed { .. })));
        let long = B64.encode([1u8; 32]);
        assert!(ServerKeys::from_env_values(Some(&long), Some(&seed)).is_ok());
    }
}
