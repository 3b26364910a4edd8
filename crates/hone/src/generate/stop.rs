//! Stop strings over streamed text: text is released only once no stop string can still begin in it.

pub struct StopScanner<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
}

impl<'a> StopScanner<'a> {
    pub fn new(stops: &'a [String]) -> Self {
        StopScanner {
            stops,
            text: String::new(),
            emitted: 0,
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
            let start = self.emitted.min(cut);
            self.emitted = cut;
            return (&self.text[start..], true);
        }
        // Hold back an incomplete UTF-8 character (decoded as U+FFFD) and any tail that could be
        // the start of a stop string.
        let complete = self.text.trim_end_matches('\u{FFFD}').len();
        let mut safe = complete;
        for s in self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if self.text[..complete].ends_with(&s[..k]) {
                    safe = safe.min(complete - k);
                }
            }
        }
        let safe = floor_char_boundary(&self.text, safe.max(self.emitted));
        let start = self.emitted;
        self.emitted = safe;
        (&self.text[start..safe], false)
    }

    /// Release whatever was held back (generation ended without a stop string).
    pub fn flush(&mut self) -> &str {
        let start = self.emitted;
        self.emitted = self.text.len();
        &self.text[start..]
    }

    pub fn text(&self) -> &str {
        &self.text
    }
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
    fn incomplete_characters_wait() {
        let mut s = StopScanner::new(&[]);
        assert_eq!(s.push("你\u{FFFD}"), ("你", false));
        assert_eq!(s.push("你好"), ("好", false));
    }
}
