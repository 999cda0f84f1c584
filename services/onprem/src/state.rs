//! What the on-premises server keeps in its data directory: the server license file in force
//! (`server-license.txt`, as the vendor signed it) and its state (`onprem-state.json`: the
//! highest serial seen per license, a return, the vendor's refusal, the latest instant seen).
//! Both are written to a temporary file and renamed, so a crash leaves the old or the new.

use crate::error::OnPremError;
use licensing_domain::clock::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The state kept beside the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersistedState {
    /// The highest serial imported per server license: an older file is never taken again.
    pub serials: BTreeMap<String, i64>,
    /// The serial of the file given back, until a newer file arrives.
    pub returned_serial: Option<i64>,
    /// The vendor's refusal at the last refresh (`reason`, `message`), until a file arrives.
    pub refused: Option<(String, String)>,
    /// The latest instant this server's clock showed (Unix ms).
    pub seen_at: Millis,
    /// Where the next usage report starts (the end of the last one sent, or when the first
    /// file came in).
    pub usage_since: Option<Millis>,
}

/// The two files, in the data directory.
#[derive(Debug, Clone)]
pub struct StateFiles {
    dir: PathBuf,
}

const FILE: &str = "server-license.txt";
const STATE: &str = "onprem-state.json";

impl StateFiles {
    /// The files in `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Where the server license file in force is kept.
    pub fn file_path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    pub(crate) fn read_file(&self) -> Result<Option<String>, OnPremError> {
        read_optional(&self.file_path())
    }

    pub(crate) fn write_file(&self, text: &str) -> Result<(), OnPremError> {
        write_atomically(&self.file_path(), text.as_bytes())
    }

    pub(crate) fn remove_file(&self) -> Result<(), OnPremError> {
        match std::fs::remove_file(self.file_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(OnPremError::Disk(format!("removing {}: {e}", self.file_path().display()))),
        }
    }

    pub(crate) fn read_state(&self) -> Result<PersistedState, OnPremError> {
        let path = self.dir.join(STATE);
        match read_optional(&path)? {
            None => Ok(PersistedState::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                OnPremError::Disk(format!("{} is damaged ({e}); restore it from a backup", path.display()))
            }),
        }
    }

    pub(crate) fn write_state(&self, state: &PersistedState) -> Result<(), OnPremError> {
        let json = serde_json::to_vec_pretty(state).map_err(|e| OnPremError::Disk(e.to_string()))?;
        write_atomically(&self.dir.join(STATE), &json)
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, OnPremError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OnPremError::Disk(format!("reading {}: {e}", path.display()))),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OnPremError> {
    let disk = |e: std::io::Error| OnPremError::Disk(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(disk)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(disk)?;
        f.write_all(bytes).map_err(disk)?;
        f.sync_all().map_err(disk)?;
    }
    std::fs::rename(&tmp, path).map_err(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_file_round_trip_and_missing_ones_read_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let files = StateFiles::new(dir.path().join("data"));
        assert_eq!(files.read_file().unwrap(), None);
        assert_eq!(files.read_state().unwrap(), PersistedState::default());
        let state = PersistedState {
            serials: [("lic_A".to_owned(), 3)].into(),
            returned_serial: Some(3),
            refused: Some(("SUSPENDED".into(), "why".into())),
            seen_at: 42,
            usage_since: Some(7),
        };
        files.write_state(&state).unwrap();
        files.write_file("file").unwrap();
        assert_eq!(files.read_state().unwrap(), state);
        assert_eq!(files.read_file().unwrap().as_deref(), Some("file"));
        files.remove_file().unwrap();
        files.remove_file().unwrap();
        assert_eq!(files.read_file().unwrap(), None);
    }
}
