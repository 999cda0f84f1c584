//! Machine fingerprints: a set of named components. Raw component values are never stored: the
//! store keeps keyed digests, certificates carry plain SHA-256 digests a product can recompute.
//!
//! A machine matches a stored activation when at least `threshold` (a share, e.g. 0.6) of the
//! stored components are still present, so replacing a NIC does not burn an activation, while
//! a clone that shares too few components does not match.

use crate::secrets::KeyedHasher;
use crate::text::quoted;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Component names the service matches on.
pub const COMPONENT_NAMES: &[&str] =
    &["machine-id", "disk-serial", "mac", "hostname", "cpu", "board-serial", "os-install-id"];
/// Most components a fingerprint may have.
pub const MAX_COMPONENTS: usize = 16;
/// Longest component value accepted, in bytes (after trimming).
pub const MAX_VALUE_LEN: usize = 256;

/// One named part of a machine's fingerprint, as presented (e.g. `machine-id` and its value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Component {
    /// One of [`COMPONENT_NAMES`] (lowercase once normalized).
    pub name: String,
    /// The raw value; trimmed and lowercased once normalized. Never stored.
    pub value: String,
}

/// A stored component: its name and a digest of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentDigest {
    /// One of [`COMPONENT_NAMES`].
    pub name: String,
    /// Hex digest of `name=value`: keyed when stored, plain SHA-256 in certificates.
    pub digest: String,
}

/// Why a presented fingerprint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// No components.
    #[error("fingerprint: name at least one component (e.g. machine-id)")]
    Empty,
    /// More than [`MAX_COMPONENTS`] components (the count found).
    #[error("fingerprint: at most {MAX_COMPONENTS} components, got {0}")]
    TooMany(usize),
    /// A component name outside [`COMPONENT_NAMES`] (as sent).
    #[error("fingerprint: unknown component {} (known: machine-id, disk-serial, mac, hostname, cpu, board-serial, os-install-id)", quoted(.0))]
    UnknownComponent(String),
    /// A component whose value is blank (its name).
    #[error("fingerprint: component {} has an empty value", quoted(.0))]
    EmptyValue(String),
    /// A component value longer than [`MAX_VALUE_LEN`] (its name).
    #[error("fingerprint: component {} is longer than {MAX_VALUE_LEN} bytes", quoted(.0))]
    ValueTooLong(String),
    /// The same component and value twice (name, value).
    #[error("fingerprint: component {}={} is listed twice", quoted(.0), quoted(.1))]
    Duplicate(String, String),
}

/// Checks a presented fingerprint; values are trimmed and compared case-insensitively.
pub fn normalize(components: &[Component]) -> Result<Vec<Component>, FingerprintError> {
    if components.is_empty() {
        return Err(FingerprintError::Empty);
    }
    if components.len() > MAX_COMPONENTS {
        return Err(FingerprintError::TooMany(components.len()));
    }
    let mut out: Vec<Component> = Vec::with_capacity(components.len());
    for c in components {
        let name = c.name.trim().to_ascii_lowercase();
        if !COMPONENT_NAMES.contains(&name.as_str()) {
            return Err(FingerprintError::UnknownComponent(c.name.clone()));
        }
        let value = c.value.trim().to_lowercase();
        if value.is_empty() {
            return Err(FingerprintError::EmptyValue(name));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(FingerprintError::ValueTooLong(name));
        }
        let component = Component { name, value };
        if out.contains(&component) {
            return Err(FingerprintError::Duplicate(component.name, component.value));
        }
        out.push(component);
    }
    Ok(out)
}

/// Keyed digests, for storage.
pub fn stored_digests(hasher: &KeyedHasher, components: &[Component]) -> Vec<ComponentDigest> {
    components
        .iter()
        .map(|c| ComponentDigest {
            name: c.name.clone(),
            digest: hasher.digest("fingerprint", &format!("{}={}", c.name, c.value)),
        })
        .collect()
}

/// Plain SHA-256 of `name=value` (normalized), for certificates: a product recomputes these.
pub fn public_digests(components: &[Component]) -> Vec<ComponentDigest> {
    components
        .iter()
        .map(|c| ComponentDigest {
            name: c.name.clone(),
            digest: hex::encode(Sha256::digest(format!("{}={}", c.name, c.value))),
        })
        .collect()
}

/// A short digest naming a whole fingerprint in history views.
pub fn summary(digests: &[ComponentDigest]) -> String {
    let mut parts: Vec<&str> = digests.iter().map(|d| d.digest.as_str()).collect();
    parts.sort_unstable();
    hex::encode(&Sha256::digest(parts.join(","))[..6])
}

/// The share (0.0 to 1.0) of `stored` components present in `presented`.
pub fn match_share(stored: &[ComponentDigest], presented: &[ComponentDigest]) -> f64 {
    if stored.is_empty() {
        return 0.0;
    }
    let present = stored.iter().filter(|s| presented.contains(s)).count();
    present as f64 / stored.len() as f64
}

/// Whether at least `threshold` (a share, 0.0 to 1.0) of the stored components are present.
pub fn matches(stored: &[ComponentDigest], presented: &[ComponentDigest], threshold: f64) -> bool {
    match_share(stored, presented) >= threshold
}

/// The default share of stored components that must still match.
pub const DEFAULT_MATCH_THRESHOLD: f64 = 0.6;

/// The most components a stored fingerprint may have and still reach `min_share` of them when
/// it shares only `shared` components with a machine (0: none can). Stores find the activations
/// a machine may match through the components they share, never by reading every activation;
/// a component shared by very many of them (a CPU model common across a site) is followed
/// only to the activations this small, since only those could match through such components
/// alone.
pub fn most_stored_components_for(shared: usize, min_share: f64) -> usize {
    (1..=MAX_COMPONENTS).rev().find(|&stored| shared.min(stored) as f64 / stored as f64 >= min_share).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(mac: &str, disk: &str) -> Vec<Component> {
        [("machine-id", "4c4c4544-0042"), ("disk-serial", disk), ("mac", mac), ("hostname", "ws-17")]
            .iter()
            .map(|(n, v)| Component { name: n.to_string(), value: v.to_string() })
            .collect()
    }

    #[test]
    fn a_replaced_nic_still_matches_a_clone_sharing_little_does_not() {
        let h = KeyedHasher::new(vec![7u8; 32]);
        let stored = stored_digests(&h, &normalize(&machine("aa:bb", "S123")).unwrap());
        let new_nic = stored_digests(&h, &normalize(&machine("cc:dd", "S123")).unwrap());
        assert_eq!(match_share(&stored, &new_nic), 0.75);
        assert!(matches(&stored, &new_nic, DEFAULT_MATCH_THRESHOLD));
        let clone = stored_digests(&h, &normalize(&machine("ee:ff", "S999")).unwrap());
        assert_eq!(match_share(&stored, &clone), 0.5);
        assert!(!matches(&stored, &clone, DEFAULT_MATCH_THRESHOLD));
    }

    #[test]
    fn values_are_normalized_and_bad_fingerprints_refused() {
        let a = normalize(&[Component { name: " MAC ".into(), value: " AA:BB ".into() }]).unwrap();
        assert_eq!(a[0], Component { name: "mac".into(), value: "aa:bb".into() });
        assert_eq!(normalize(&[]), Err(FingerprintError::Empty));
        let unknown = [Component { name: "shoe-size".into(), value: "42".into() }];
        assert!(matches!(normalize(&unknown), Err(FingerprintError::UnknownComponent(_))));
        let long = [Component { name: "mac".into(), value: "x".repeat(300) }];
        assert!(matches!(normalize(&long), Err(FingerprintError::ValueTooLong(_))));
        let many: Vec<Component> = (0..17).map(|i| Component { name: "mac".into(), value: format!("{i}") }).collect();
        assert_eq!(normalize(&many), Err(FingerprintError::TooMany(17)));
        let dup =
            [Component { name: "mac".into(), value: "a".into() }, Component { name: "MAC".into(), value: "A".into() }];
        assert!(matches!(normalize(&dup), Err(FingerprintError::Duplicate(..))));
    }

    #[test]
    fn only_small_fingerprints_can_match_through_few_shared_components() {
        // 3 of 5 is 0.6; 3 of 6 is not.
        assert_eq!(most_stored_components_for(3, 0.6), 5);
        assert_eq!(most_stored_components_for(1, 0.6), 1);
        assert_eq!(most_stored_components_for(2, 0.3), 6);
        assert_eq!(most_stored_components_for(0, 0.6), 0);
        assert_eq!(most_stored_components_for(16, 0.6), MAX_COMPONENTS);
        // The bound agrees with the share itself at every size.
        let h = KeyedHasher::new(vec![1u8; 32]);
        for shared in 0..=MAX_COMPONENTS {
            for threshold in [0.3, 0.5, 0.6, 0.75, 1.0] {
                let most = most_stored_components_for(shared, threshold);
                for stored in 1..=MAX_COMPONENTS {
                    let stored_digests: Vec<ComponentDigest> = (0..stored)
                        .map(|i| ComponentDigest { name: "mac".into(), digest: h.digest("t", &i.to_string()) })
                        .collect();
                    let presented: Vec<ComponentDigest> = stored_digests.iter().take(shared).cloned().collect();
                    assert_eq!(
                        matches(&stored_digests, &presented, threshold),
                        stored <= most,
                        "shared {shared}, stored {stored}, threshold {threshold}"
                    );
                }
            }
        }
    }

    #[test]
    fn public_digests_are_plain_sha256() {
        let d = public_digests(&[Component { name: "mac".into(), value: "aa".into() }]);
        assert_eq!(d[0].digest, hex::encode(Sha256::digest("mac=aa")));
    }
}
