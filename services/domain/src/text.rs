//! Short free-text fields clients send (names of users, hosts, machines, features): trimmed,
//! bounded, and free of control characters, which the stores use as separators.

/// The trimmed value, or what is wrong with it (to be prefixed with the field's name).
pub fn bounded_text(value: &str, max_chars: usize, required: bool) -> Result<String, String> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.chars().count() > max_chars || value.chars().any(char::is_control) {
        return Err(format!("must be at most {max_chars} characters without control characters"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_bounded_and_without_control_characters() {
        assert_eq!(bounded_text("  ann ", 8, true).unwrap(), "ann");
        assert!(bounded_text("   ", 8, true).is_err());
        assert_eq!(bounded_text("", 8, false).unwrap(), "");
        assert!(bounded_text("a\u{1f}b", 8, false).is_err());
        assert!(bounded_text("123456789", 8, false).is_err());
    }
}
