//! Text for people: names and reasons that came from the wire, the cluster or a
//! policy file are printed with their control characters escaped, so that a
//! crafted name cannot end a table row, forge the next one, or move the terminal's
//! cursor.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is: C0 and C1 controls, DEL, and the
/// bidirectional overrides and isolates that reorder what follows them on screen.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character written as an escape (`\n`, `\r`, `\t`,
/// `\u{1b}`, ...) and every backslash doubled, so that an escape in the output
/// always means a control character in the name. Borrows when there is nothing to
/// escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c) || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape("default/web-1"), Cow::Borrowed(_)));
        assert_eq!(escape("ns/café"), "ns/café");
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("a\r\tb"), "a\\r\\tb");
        assert_eq!(escape("\u{1b}[2J\u{1b}[H"), "\\u{1b}[2J\\u{1b}[H");
        assert_eq!(escape("x\u{7f}\u{85}"), "x\\u{7f}\\u{85}");
        assert_eq!(escape("evil\u{202e}txt"), "evil\\u{202e}txt");
        // A literal backslash-n in a name is not mistaken for an escaped newline.
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert!(
            !escape("\u{0}\u{7}\u{8}\u{b}\u{c}")
                .chars()
                .any(char::is_control)
        );
    }
}
