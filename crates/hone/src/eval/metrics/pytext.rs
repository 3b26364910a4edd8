//! Python `str` semantics that the reference metric tools rely on (`split()`, `strip()`,
//! `round()`), so tokens and rounding match theirs character for character.

/// Python's `str.isspace`: Unicode White_Space plus the ASCII separators U+001C..U+001F, which
/// Python counts as whitespace and Rust does not.
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()`: runs of whitespace separate words; no empty words.
pub(crate) fn split(s: &str) -> Vec<&str> {
    s.split(is_space).filter(|w| !w.is_empty()).collect()
}

/// Python's `s.strip()`.
pub(crate) fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Python's `s.rstrip()`.
pub(crate) fn rstrip(s: &str) -> &str {
    s.trim_end_matches(is_space)
}

/// Python's `round(x, 4)`: the nearest 4-decimal number to the exact binary value (ties, which
/// only an exactly representable half can produce, to even). Rust's formatting rounds the exact
/// value the same way.
pub(crate) fn round4(x: f64) -> f64 {
    format!("{x:.4}").parse().expect("a formatted float parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_python_whitespace() {
        assert_eq!(split("  a\tb\u{1f}c\u{3000}d \n"), ["a", "b", "c", "d"]);
        assert_eq!(split(" \u{a0} "), Vec::<&str>::new());
        assert_eq!(strip("\u{1c} x y \u{2003}"), "x y");
        assert_eq!(rstrip(" x \n"), " x");
    }

    #[test]
    fn round4_rounds_the_exact_binary_value() {
        assert_eq!(round4(12.34565), 12.3456); // 12.34565 is stored just below the half
        assert_eq!(round4(0.00005), 0.0001); // stored just above
        assert_eq!(round4(2.5e-5), 0.0);
        assert_eq!(round4(100.0), 100.0);
    }
}
