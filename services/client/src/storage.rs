//! Trusted storage: the certificate file and the last time the product saw, in one JSON file.
//! The last-seen time is what detects a clock set back.

use crate::ClientError;
use licensing_domain::clock::Millis;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What trusted storage holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The certificate as the server issued it (`SignedCertificate.certificate_file`).
    pub certificate_file: String,
    /// The latest time this product has seen (Unix ms).
    pub last_seen_ms: Millis,
    /// The offline deactivation request written when the product gave its activation back
    /// offline ([`crate::node_locked::NodeLocked::deactivate_offline`]); `certificate_file` is
    /// empty then, and stays so until the product activates again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_deactivation: Option<String>,
}

/// The product's trusted-storage file (one JSON file, written through a temporary file).
#[derive(Debug, Clone)]
pub struct TrustedStorage {
    path: PathBuf,
}

impl TrustedStorage {
    /// Storage in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// What the file holds; `None` when there is no file.
    pub fn load(&self) -> Result<Option<Stored>, ClientError> {
        read_json(&self.path)
    }

    /// Replaces the file's contents.
    pub fn save(&self, stored: &Stored) -> Result<(), ClientError> {
        write_json(&self.path, stored)
    }

    /// Deletes the file (nothing to do when it is gone).
    pub fn clear(&self) -> Result<(), ClientError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ClientError::Storage(format!("{}: {e}", self.path.display()))),
        }
    }
}

/// A JSON file, or `None` when there is none.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ClientError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map(Some).map_err(|e| ClientError::Storage(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClientError::Storage(format!("{}: {e}", path.display()))),
    }
}

/// Written through a temporary file and a rename, so a crash never leaves half a file.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ClientError> {
    let err = |e: std::io::Error| ClientError::Storage(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value).expect("plain data serializes")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
