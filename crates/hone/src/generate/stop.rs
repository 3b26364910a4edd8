//! Stop strings over streamed text: text is released only once no stop string can still begin in it.
//!
//! The full text is not always an extension of the last one: SentencePiece byte-fallback decoding
//! turns a whole run of byte tokens into U+FFFD as soon as one byte makes the run invalid UTF-8, so
//! text already released (an ASCII byte, a complete character) can be rewritten by the next token.
//! Released text cannot be taken back; the scanner waits until the text agrees with it again.

pub struct StopScanner {
    stops: Vec<String>,
    text: String,
    /// Text handed out so far.
    released: String,
}

impl StopScanner {
    pub fn new(stops: &[String]) -> Self {
        StopScanner {
            stops: stops.to_vec(),
            text: String::new(),
            released: String::new(),
        }
    }

    /// Take the completion's full text so far; return the newly final piece and whether a stop
    /// string was found (the text is then cut before it).
    pub fn push(&mut self, full_text: &str) -> (&str, bool) {
        self.text = full_text.to_string();
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min();
        if let Some(cut) = first_stop {
            self.text.truncate(cut);
            return (self.release(cut, true), true);
        }
        // Hold back an incomplete UTF-8 character (decoded as U+FFFD) and any tail that could be
        // the start of a stop string.
        let complete = self.text.trim_end_matches('\u{FFFD}').len();
        let mut safe = complete;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if self.text[..complete].ends_with(&s[..k]) {
                    safe = safe.min(complete - k);
                }
            }
        }
        (self.release(safe, false), false)
    }

    /// Release whatever was held back (generation ended without a stop string).
    pub fn flush(&mut self) -> &str {
        self.release(self.text.len(), true)
    }

    /// Hand out the text from the end of what was released up to `end`. While the text disagrees
    /// with what was released, nothing is handed out; at the `last` call, what follows the common
    /// prefix is, so no generated text is lost.
    fn release(&mut self, end: usize, last: bool) -> &str {
        let start = if self.text.starts_with(&self.released) {
            self.released.len()
        } else if last {
            common_prefix_len(&self.released, &self.text)
        } else {
            return "";
        };
        let end = floor_char_boundary(&self.text, end).max(start);
        self.released = self.text[..end].to_string();
        &self.text[start..end]
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Byte length of the longest common prefix of `a` and `b` that ends on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((at, _), _)| at)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_possible_stop_prefix_and_cuts_at_the_stop() {
        let stops = vec!["\nUser:".to_string()];
        let mut s = StopScanner::new(&stops);
        assert_eq!(s.push("Hello"), ("Hello", false));
        assert_eq!(s.push("Hello world\nUs"), (" world", false));
        assert_eq!(s.push("Hello world\nUser: hi"), ("", true));
        assert_eq!(s.text(), "Hello world");
    }

    #[test]
    fn a_false_alarm_is_released_later() {
        let stops = vec!["###".to_string()];
        let mut s = StopScanner::new(&stops);
        assert_eq!(s.push("a #"), ("a ", false));
        assert_eq!(s.push("a # b"), ("# b", false));
        assert_eq!(s.flush(), "");
        assert_eq!(s.text(), "a # b");
    }

    #[test]
    fn rewritten_released_text_is_waited_out() {
        let mut s = StopScanner::new(&[]);
        assert_eq!(s.push("a&"), ("a&", false));
        // A byte token after "&" made the byte run invalid: it all decodes to U+FFFD.
        assert_eq!(s.push("a\u{FFFD}\u{FFFD}"), ("", false));
        assert_eq!(s.push("a&学"), ("学", false));
        // Generation ends while "学" (three byte tokens) is rewritten: the rest after "a&" is released.
        let fffd4 = "\u{FFFD}".repeat(4);
        assert_eq!(s.push(&format!("a&{fffd4}x")), ("", false));
        assert_eq!(s.flush(), format!("{fffd4}x"));
        assert_eq!(s.text(), format!("a&{fffd4}x"));
    }

    #[test]
    fn a_stop_after_rewritten_text_releases_the_rest() {
        let stops = vec!["STOP".to_string()];
        let mut s = StopScanner::new(&stops);
        assert_eq!(s.push("a&"), ("a&", false));
        assert_eq!(
            s.push("a\u{FFFD}\u{FFFD}xSTOP"),
            ("\u{FFFD}\u{FFFD}x", true)
        );
        assert_eq!(s.text(), "a\u{FFFD}\u{FFFD}x");
    }

    #[test]
    fn incomplete_characters_wait() {
        let mut s = StopScanner::new(&[]);
        assert_eq!(s.push("你\u{FFFD}"), ("你", false));
        assert_eq!(s.push("你好"), ("好", false));
    }
}
