//! License keys: `XXXXX-XXXXX-XXXXX-XXXXX-XXXXX`, 24 random symbols and a check symbol.
//!
//! The alphabet is Crockford's base32 (no I, L, O, U), so keys read aloud or typed from paper are
//! unambiguous; on input, `I`/`L` are read as `1` and `O` as `0`. The last symbol is a Luhn mod 32
//! check, which catches every single-symbol typo and every swap of two adjacent symbols before any
//! lookup is made.

use rand::Rng;
use std::fmt;

/// Crockford's base32: the symbols of license keys, IDs and random tokens (no I, L, O, U).
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const GROUPS: usize = 5;
const GROUP_LEN: usize = 5;
const SYMBOLS: usize = GROUPS * GROUP_LEN;

/// A license key in canonical form (uppercase, dashed), known to have a valid check symbol.
#[derive(Clone, PartialEq, Eq)]
pub struct LicenseKey(String);

/// Why typed text is not a license key; the message tells the person what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenseKeyError {
    /// Not 25 symbols once dashes and spaces are removed (the count found).
    #[error("a license key has 25 symbols in five groups of five (XXXXX-XXXXX-XXXXX-XXXXX-XXXXX); this one has {0}")]
    WrongLength(usize),
    /// A symbol outside the alphabet (even after reading I/L as 1 and O as 0).
    #[error("a license key holds only digits and the letters A-Z without U; {} is not one of them", crate::text::quoted(&.0.to_string()))]
    BadSymbol(char),
    /// The check symbol does not fit the other 24: a typo.
    #[error("the license key's check symbol does not match: it was mistyped")]
    BadCheck,
}

fn value_of(symbol: u8) -> Option<u32> {
    let normalized = match symbol.to_ascii_uppercase() {
        b'I' | b'L' => b'1',
        b'O' => b'0',
        other => other,
    };
    ALPHABET.iter().position(|&s| s == normalized).map(|p| p as u32)
}

/// Luhn mod N over the symbol values, from the right, doubling every second one.
fn check_value(values: &[u32]) -> u32 {
    let n = ALPHABET.len() as u32;
    let mut factor = 2;
    let mut sum = 0;
    for &v in values.iter().rev() {
        let addend = factor * v;
        sum += addend / n + addend % n;
        factor = if factor == 2 { 1 } else { 2 };
    }
    (n - sum % n) % n
}

impl LicenseKey {
    /// A new random key (120 random bits and its check symbol).
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let values: Vec<u32> = (0..SYMBOLS - 1).map(|_| rng.random_range(0..32)).collect();
        Self::from_values(&values)
    }

    /// The key whose 24 symbols are read from `seed` (at least 24 bytes, each taken mod 32):
    /// a key the server can derive again, e.g. from a keyed digest.
    pub fn from_seed(seed: &[u8]) -> Self {
        let values: Vec<u32> = seed.iter().take(SYMBOLS - 1).map(|b| u32::from(*b) % 32).collect();
        Self::from_values(&values)
    }

    fn from_values(values: &[u32]) -> Self {
        let check = check_value(values);
        let mut key = String::with_capacity(SYMBOLS + GROUPS - 1);
        for (i, v) in values.iter().chain(std::iter::once(&check)).enumerate() {
            if i > 0 && i % GROUP_LEN == 0 {
                key.push('-');
            }
            key.push(ALPHABET[*v as usize] as char);
        }
        Self(key)
    }

    /// Parses a key as a person typed it: any case, with or without dashes and spaces.
    pub fn parse(input: &str) -> Result<Self, LicenseKeyError> {
        let symbols: Vec<char> = input.chars().filter(|c| *c != '-' && !c.is_whitespace()).collect();
        if symbols.len() != SYMBOLS {
            return Err(LicenseKeyError::WrongLength(symbols.len()));
        }
        let mut values = Vec::with_capacity(SYMBOLS);
        for c in symbols {
            let v = u8::try_from(c).ok().and_then(value_of).ok_or(LicenseKeyError::BadSymbol(c))?;
            values.push(v);
        }
        let (body, check) = values.split_at(SYMBOLS - 1);
        if check_value(body) != check[0] {
            return Err(LicenseKeyError::BadCheck);
        }
        Ok(Self::from_values(body))
    }

    /// The canonical text, `XXXXX-XXXXX-XXXXX-XXXXX-XXXXX`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LicenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Never prints the key itself: keys are secrets and must not reach logs.
impl fmt::Debug for LicenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LicenseKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back() {
        for _ in 0..200 {
            let key = LicenseKey::generate();
            assert_eq!(key.as_str().len(), 29);
            assert_eq!(LicenseKey::parse(key.as_str()).unwrap(), key);
            let sloppy = key.as_str().to_lowercase().replace('-', " ");
            assert_eq!(LicenseKey::parse(&sloppy).unwrap(), key);
        }
    }

    #[test]
    fn every_single_symbol_typo_is_caught() {
        let key = LicenseKey::generate();
        let compact: Vec<u8> = key.as_str().bytes().filter(|b| *b != b'-').collect();
        for i in 0..compact.len() {
            for &s in ALPHABET.iter() {
                if s == compact[i] {
                    continue;
                }
                let mut typo = compact.clone();
                typo[i] = s;
                let typo = String::from_utf8(typo).unwrap();
                assert_eq!(LicenseKey::parse(&typo), Err(LicenseKeyError::BadCheck), "{typo}");
            }
        }
    }

    #[test]
    fn adjacent_swaps_are_caught() {
        let key = LicenseKey::generate();
        let compact: Vec<u8> = key.as_str().bytes().filter(|b| *b != b'-').collect();
        for i in 0..compact.len() - 1 {
            if compact[i] == compact[i + 1] {
                continue;
            }
            let mut swapped = compact.clone();
            swapped.swap(i, i + 1);
            let swapped = String::from_utf8(swapped).unwrap();
            // Luhn mod N misses only the swap of the two symbols whose values sum to N-1 around
            // the doubling boundary; everything else must be caught.
            if let Ok(parsed) = LicenseKey::parse(&swapped) {
                assert_ne!(parsed, key);
                let (a, b) = (value_of(compact[i]).unwrap(), value_of(compact[i + 1]).unwrap());
                assert!(a + b == 31 || a == 0 || b == 0 || a == 31 || b == 31, "{swapped}");
            }
        }
    }

    #[test]
    fn malformed_keys_say_what_is_wrong() {
        assert_eq!(LicenseKey::parse("ABC"), Err(LicenseKeyError::WrongLength(3)));
        assert_eq!(LicenseKey::parse(""), Err(LicenseKeyError::WrongLength(0)));
        assert_eq!(LicenseKey::parse("UUUUU-UUUUU-UUUUU-UUUUU-UUUUU"), Err(LicenseKeyError::BadSymbol('U')));
        assert!(matches!(LicenseKey::parse("ÄÄÄÄÄ-ÄÄÄÄÄ-ÄÄÄÄÄ-ÄÄÄÄÄ-ÄÄÄÄÄ"), Err(LicenseKeyError::BadSymbol('Ä'))));
    }

    #[test]
    fn ambiguous_letters_are_read_as_digits() {
        let key = LicenseKey::generate();
        let with_o = key.as_str().replace('0', "O").replace('1', "l");
        assert_eq!(LicenseKey::parse(&with_o).unwrap(), key);
    }

    #[test]
    fn debug_does_not_leak_the_key() {
        let key = LicenseKey::generate();
        assert!(!format!("{key:?}").contains(key.as_str()));
    }
}
