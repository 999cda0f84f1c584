//! Field checks shared by the admin API and the portal. Each returns an
//! [`AccountError::InvalidArgument`] naming the field.

use crate::AccountError;
use licensing_domain::text::quoted;

/// Product and module codes: lowercase letters, digits and dashes, 2 to 64 long.
pub fn code(field: &'static str, value: &str) -> Result<(), AccountError> {
    let ok = (2..=64).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(AccountError::invalid(
            field,
            format!("{} must be 2-64 lowercase letters, digits or dashes, not starting with a dash", quoted(value)),
        ))
    }
}

/// A person-readable name: 1 to 200 characters, no control characters.
pub fn name(field: &'static str, value: &str) -> Result<(), AccountError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(AccountError::invalid(field, "must not be empty"));
    }
    if trimmed.chars().count() > 200 || trimmed.chars().any(char::is_control) {
        return Err(AccountError::invalid(field, "must be at most 200 characters without control characters"));
    }
    Ok(())
}

/// An email address, lowercased. Deliberately simple: one `@`, a dotted domain, at most 254.
pub fn email(field: &'static str, value: &str) -> Result<String, AccountError> {
    let value = value.trim().to_lowercase();
    let valid = value.len() <= 254
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        });
    if valid {
        Ok(value)
    } else {
        Err(AccountError::invalid(field, format!("{} is not an email address", quoted(&value))))
    }
}

/// A product version: `MAJOR.MINOR[.PATCH]`, numbers only.
pub fn version(field: &'static str, value: &str) -> Result<licensing_domain::version::Version, AccountError> {
    licensing_domain::version::parse(value).ok_or_else(|| {
        AccountError::invalid(field, format!("{} is not a version of the form MAJOR.MINOR[.PATCH]", quoted(value)))
    })
}

/// Search text: bounded, because substring patterns cost the database in proportion to them,
/// and storable (a NUL is invalid input on every backend).
pub fn search(field: &'static str, value: &str) -> Result<(), AccountError> {
    if value.chars().count() > 200 {
        return Err(AccountError::invalid(field, "must be at most 200 characters"));
    }
    storable(field, value)
}

/// Free text that is stored as it is (notes, reasons): PostgreSQL refuses a NUL character,
/// so it is invalid input on every backend.
pub fn storable(field: &'static str, value: &str) -> Result<(), AccountError> {
    licensing_domain::text::storable(value).map_err(|m| AccountError::invalid(field, m))
}

/// A password a person chooses.
pub fn password(field: &'static str, value: &str) -> Result<(), AccountError> {
    use licensing_domain::secrets::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
    let n = value.chars().count();
    if (MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
        Ok(())
    } else {
        Err(AccountError::invalid(
            field,
            format!("must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters long"),
        ))
    }
}

/// An ID of the given prefix (checked before any lookup).
pub fn id(field: &'static str, prefix: &str, value: &str) -> Result<(), AccountError> {
    if licensing_domain::ids::is_well_formed(prefix, value) {
        Ok(())
    } else {
        Err(AccountError::invalid(field, format!("{} is not a {prefix}_… ID", quoted(value))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert!(code("code", "cad-pro").is_ok());
        for bad in ["", "a", "Cad", "-x", "a b", "ä1"] {
            assert!(code("code", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(email("e", " Ops@Example.COM ").unwrap(), "ops@example.com");
        for bad in ["", "x", "x@y", "@y.com", "x@.com", "x@y.", "a b@c.de", "x@y@z.com"] {
            assert!(email("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_name_the_field() {
        assert_eq!(version("v", "2.1").unwrap(), (2, 1, 0));
        assert!(version("version", "two").unwrap_err().to_string().starts_with("version:"));
    }

    #[test]
    fn names_and_passwords() {
        assert!(name("n", "Acme GmbH").is_ok());
        assert!(name("n", "  ").is_err());
        assert!(name("n", &"x".repeat(201)).is_err());
        assert!(password("p", "short").is_err());
        assert!(password("p", "long enough pass").is_ok());
        assert!(password("p", &"x".repeat(129)).is_err());
    }
}
