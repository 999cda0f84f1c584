//! Prefixed random identifiers, e.g. `lic_3V8Q0M1KX2T9WZ4H`: the prefix says what the ID names.

use crate::license_key::ALPHABET;
use rand::Rng;

/// Prefix of license IDs (`lic_…`).
pub const LICENSE: &str = "lic";
/// Prefix of policy IDs.
pub const POLICY: &str = "pol";
/// Prefix of customer IDs (`cus_…`).
pub const CUSTOMER: &str = "cus";
/// Prefix of node-locked installation (activation) IDs (`ins_…`).
pub const INSTALLATION: &str = "ins";
/// Prefix of floating-seat lease IDs (`lse_…`).
pub const LEASE: &str = "lse";
/// Prefix of payment receipt IDs (`rcp_…`).
pub const RECEIPT: &str = "rcp";
/// Prefix of server usage report IDs (`sur_…`).
pub const SERVER_USAGE_REPORT: &str = "sur";
/// Prefix of admin token IDs (`adm_…`).
pub const ADMIN_TOKEN: &str = "adm";

/// Random characters after the prefix: 16 from a 32-symbol alphabet, 80 bits.
const RANDOM_CHARS: usize = 16;

/// A fresh random ID: `prefix`, `_`, then 16 symbols of the license-key alphabet (80 bits).
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + 1 + RANDOM_CHARS);
    id.push_str(prefix);
    id.push('_');
    for _ in 0..RANDOM_CHARS {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// Whether `id` has the shape of an ID with this prefix (checked before any lookup).
pub fn is_well_formed(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| rest.len() == RANDOM_CHARS && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_well_formed_and_distinct() {
        let a = new_id(LICENSE);
        let b = new_id(LICENSE);
        assert_ne!(a, b);
        assert!(is_well_formed(LICENSE, &a), "{a}");
        assert!(!is_well_formed(CUSTOMER, &a));
        assert!(!is_well_formed(LICENSE, "lic_short"));
        assert!(!is_well_formed(LICENSE, "lic_IIIIIIIIIIIIIIII"), "I is not in the alphabet");
    }
}
