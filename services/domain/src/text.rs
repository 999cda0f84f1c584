//! Short free-text fields clients send (names of users, hosts, machines, features): trimmed,
//! bounded, and free of control characters, which the stores use as separators.

/// Characters of input a message quotes before it cuts it short.
pub const PREVIEW_CHARS: usize = 40;

/// Input as a message quotes it: in single quotes, at most [`PREVIEW_CHARS`] characters (then
/// `…`), with control and invisible formatting characters (NUL, ANSI escapes, line breaks,
/// bidirectional overrides) and the quote itself escaped, so a person sees what was sent and a
/// 1 MiB or terminal-escaping input never comes back whole.
pub fn quoted(input: &str) -> String {
    let mut out = String::with_capacity(input.len().min(PREVIEW_CHARS * 2) + 2);
    out.push('\'');
    for (n, c) in input.chars().enumerate() {
        if n == PREVIEW_CHARS {
            out.push('…');
            break;
        }
        escape_into(&mut out, c);
    }
    out.push('\'');
    out
}

/// Whether a character is one a person cannot see as itself (and a terminal may act on).
fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '\'' => out.push_str("\\'"),
        '\\' => out.push_str("\\\\"),
        c if invisible(c) => out.extend(c.escape_default()),
        c => out.push(c),
    }
}

/// A whole message made safe to send, whatever it quotes: invisible characters escaped and at
/// most `max_chars` characters. The last line of defence behind [`quoted`].
pub fn bounded_message(message: &str, max_chars: usize) -> String {
    if message.chars().count() <= max_chars && !message.chars().any(invisible) {
        return message.to_owned();
    }
    let mut out = String::new();
    let mut chars = 0;
    for c in message.chars() {
        let escaped: Vec<char> = if invisible(c) { c.escape_default().collect() } else { vec![c] };
        if chars + escaped.len() > max_chars {
            out.push('…');
            break;
        }
        chars += escaped.len();
        out.extend(escaped);
    }
    out
}

/// Whether text can be stored as it is on every backend: PostgreSQL refuses a NUL character
/// in text, which SQLite would keep, so it is invalid input everywhere.
pub fn storable(value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!("{} contains a NUL character, which cannot be stored", quoted(value)));
    }
    Ok(())
}

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
    fn input_is_quoted_short_and_escaped() {
        assert_eq!(quoted("ann"), "'ann'");
        assert_eq!(quoted("it's"), "'it\\'s'");
        assert_eq!(quoted("\u{1b}[31mred\0\r\n"), "'\\u{1b}[31mred\\u{0}\\r\\n'");
        assert_eq!(quoted("\u{202e}gpj.exe"), "'\\u{202e}gpj.exe'");
        let long = quoted(&"x".repeat(1 << 20));
        assert_eq!(long.chars().count(), PREVIEW_CHARS + 3);
        assert!(long.ends_with("…'"));
        assert!(!quoted("\u{7}\u{85}").chars().any(char::is_control));
    }

    #[test]
    fn messages_are_bounded_and_escaped() {
        assert_eq!(bounded_message("fine", 10), "fine");
        assert_eq!(bounded_message("a\u{1b}b", 10), "a\\u{1b}b");
        assert_eq!(bounded_message(&"z".repeat(50), 10), format!("{}…", "z".repeat(10)));
    }

    #[test]
    fn a_nul_cannot_be_stored() {
        assert!(storable("plain text").is_ok());
        let refused = storable("lic_\0X").unwrap_err();
        assert!(refused.contains("NUL") && !refused.contains('\0'), "{refused}");
    }

    #[test]
    fn trimmed_bounded_and_without_control_characters() {
        assert_eq!(bounded_text("  ann ", 8, true).unwrap(), "ann");
        assert!(bounded_text("   ", 8, true).is_err());
        assert_eq!(bounded_text("", 8, false).unwrap(), "");
        assert!(bounded_text("a\u{1f}b", 8, false).is_err());
        assert!(bounded_text("123456789", 8, false).is_err());
    }
}
