//! Incremental decoding for streaming generation: push one id at a time, get the text it completes.
//!
//! Decoding tokens one by one is wrong twice over: a character split across byte tokens decodes to
//! U+FFFD halves, and SentencePiece decoders strip the leading space of whatever comes first. So each
//! step decodes a short window that starts one emitted chunk back (the context), and emits only what
//! the new ids add to it, holding text back while it ends in an incomplete character. The pieces
//! concatenate to `decode(all ids)`.

use anyhow::Result;

use super::Tokenizer;

/// Streaming decoder over a [`Tokenizer`]; see [`Tokenizer::stream`].
pub struct TokenStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the context window: ids before it are final and never decoded again.
    prefix: usize,
    /// End of what has been emitted.
    read: usize,
}

impl<'a> TokenStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        TokenStream {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds one id; returns the text it completes (often empty while a character is incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let (before, now) = self.window()?;
        match now.strip_prefix(&before) {
            Some(new) if !new.is_empty() && !new.ends_with('\u{FFFD}') => {
                let new = new.to_owned();
                self.prefix = self.read;
                self.read = self.ids.len();
                Ok(new)
            }
            _ => Ok(String::new()),
        }
    }

    /// The text held back so far (a trailing incomplete character decodes as U+FFFD, as in `decode`).
    pub fn finish(self) -> Result<String> {
        let (before, now) = self.window()?;
        let common = before
            .char_indices()
            .zip(now.chars())
            .find(|((_, a), b)| a != b)
            .map_or(before.len().min(now.len()), |((at, _), _)| at);
        Ok(now[common..].to_owned())
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The context window decoded without and with the ids not yet emitted.
    fn window(&self) -> Result<(String, String)> {
        let skip = self.skip_special_tokens;
        let before = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], skip)?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..], skip)?;
        Ok((before, now))
    }
}
