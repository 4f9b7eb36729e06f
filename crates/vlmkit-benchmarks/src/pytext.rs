//! Python's string operations where Rust's differ: the official scorers are
//! Python, and a number matches only if their text handling is reproduced.

use std::sync::LazyLock;

use regex::Regex;

/// Python's `str.isspace`: Rust's `char::is_whitespace` plus the four
/// information separators U+001C..U+001F, which Python splits on too.
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `s.split()`.
pub(crate) fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|w| !w.is_empty())
}

/// `s.strip()`.
pub(crate) fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Whether `c` matches Python's `\d` on a `str` pattern (Unicode decimal digits,
/// category Nd), as the `regex` crate's Unicode `\d` does.
pub(crate) fn is_decimal(c: char) -> bool {
    static DIGIT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\d$").expect("valid"));
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    let mut buf = [0u8; 4];
    DIGIT.is_match(c.encode_utf8(&mut buf))
}

/// What lmms-eval's tasks receive as the reply (its CLI defaults): each
/// `<think>…</think>` and `<analysis>…</analysis>` block removed (text before
/// a lone closing tag too), then stripped (`strip_reasoning_tags`).
pub(crate) fn lmms_eval_reply(reply: &str) -> String {
    let mut result = reply.to_owned();
    for (start_tag, end_tag) in [("<think>", "</think>"), ("<analysis>", "</analysis>")] {
        while let Some(start) = result.find(start_tag) {
            match result[start..].find(end_tag) {
                Some(end) => result.replace_range(start..start + end + end_tag.len(), ""),
                None => break,
            }
        }
        if result.contains(end_tag) && !result.contains(start_tag) {
            result = result.rsplit(end_tag).next().unwrap_or("").to_owned();
        }
    }
    strip(&result).to_owned()
}

/// `s[start:end]` by code points (`None` when `s` is shorter than `end`).
pub(crate) fn char_slice(s: &str, start: usize, end: usize) -> Option<&str> {
    let mut indices = s
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()));
    let from = indices.nth(start)?;
    let to = if end == start {
        from
    } else {
        indices.nth(end - start - 1)?
    };
    Some(&s[from..to])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_includes_the_separators() {
        assert_eq!(
            split(" a\u{1f}b\u{3000}c \n").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(strip("\u{1c} x \u{85}"), "x");
    }

    #[test]
    fn decimal_digits_are_category_nd_only() {
        assert!(is_decimal('7'));
        assert!(is_decimal('٣')); // Arabic-Indic three
        assert!(!is_decimal('²'));
        assert!(!is_decimal('½'));
        assert!(!is_decimal('.'));
    }

    #[test]
    fn reasoning_blocks_are_removed_as_lmms_eval_does() {
        assert_eq!(lmms_eval_reply(" <think>no</think> yes "), "yes");
        assert_eq!(lmms_eval_reply("a</think>b"), "b");
        assert_eq!(
            lmms_eval_reply("<think>unclosed yes"),
            "<think>unclosed yes"
        );
        assert_eq!(
            lmms_eval_reply("<analysis>x</analysis>B<think>y</think>"),
            "B"
        );
    }

    #[test]
    fn slices_count_code_points() {
        assert_eq!(char_slice("é. x", 1, 3), Some(". "));
        assert_eq!(char_slice("ab", 1, 3), None);
        assert_eq!(char_slice("ab", 0, 2), Some("ab"));
    }
}
