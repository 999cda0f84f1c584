//! Product versions: `MAJOR.MINOR[.PATCH]`, numbers only.

/// A version as numbers; a missing patch is 0.
pub type Version = (u64, u64, u64);

/// `None` when `value` is not `MAJOR.MINOR[.PATCH]`.
pub fn parse(value: &str) -> Option<Version> {
    let numbers: Option<Vec<u64>> =
        value.trim().split('.').map(|p| if p.is_empty() || p.len() > 9 { None } else { p.parse().ok() }).collect();
    match numbers?.as_slice() {
        [major, minor] => Some((*major, *minor, 0)),
        [major, minor, patch] => Some((*major, *minor, *patch)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse("2.1"), Some((2, 1, 0)));
        assert_eq!(parse(" 10.0.3 "), Some((10, 0, 3)));
        for bad in ["", "1", "1.x", "1..2", "v1.2", "1.2.3.4", "9999999999.1", "-1.2"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
