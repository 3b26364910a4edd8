//! Prompt-learning adapters at inference: what each puts before every sequence — virtual tokens'
//! embeddings (prompt tuning, P-tuning) or every layer's keys and values (prefix tuning) — and
//! where in a pass they go. In a pass, ids from the vocabulary's size up name the virtual tokens
//! (`vocab + i` the i-th), so a cache that records its ids can be rebuilt from them.

use anyhow::{bail, Result};

use super::attend::PrefixKv;
use super::config::ModelConfig;
use crate::adapters::{Adapter, PromptMethod};

/// What a prompt-learning adapter puts before every sequence.
#[derive(Clone, Debug)]
pub enum Virtual {
    /// Prompt tuning and P-tuning: `[n, hidden]` embeddings, the sequence's first tokens.
    Tokens(Vec<f32>),
    /// Prefix tuning: `[n, layers · 2 · kv width]` keys and values ([`PrefixKv`]'s table).
    Prefix(Vec<f32>),
}

impl Virtual {
    /// `adapter`'s virtual tokens, checked to fit `cfg` (None for other adapters).
    pub fn of(adapter: &Adapter, cfg: &ModelConfig) -> Result<Option<Virtual>> {
        let (Some(values), Some(method)) = (&adapter.prompt, adapter.prompt_method()) else {
            return Ok(None);
        };
        let width = adapter.prompt_width().unwrap_or(0);
        let (want, what) = match method {
            PromptMethod::PrefixTuning => (
                prefix_width(cfg) * 2 * cfg.num_hidden_layers,
                "num_layers · 2 · token_dim, where token_dim is the key/value heads × head_dim",
            ),
            _ => (cfg.hidden_size, "token_dim, the hidden size"),
        };
        if width != want {
            bail!(
                "the {} adapter's rows are {width} wide but this model's are {want} ({what}): is it an adapter for \
                 another base model?",
                method.name()
            );
        }
        Ok(Some(match method {
            PromptMethod::PrefixTuning => Virtual::Prefix(values.clone()),
            _ => Virtual::Tokens(values.clone()),
        }))
    }

    /// How many virtual tokens.
    pub fn len(&self, cfg: &ModelConfig) -> usize {
        match self {
            Virtual::Tokens(t) => t.len() / cfg.hidden_size,
            Virtual::Prefix(t) => t.len() / (prefix_width(cfg) * 2 * cfg.num_hidden_layers),
        }
    }

    /// The embeddings of the virtual tokens, when they are tokens.
    pub fn tokens(&self) -> Option<&[f32]> {
        match self {
            Virtual::Tokens(t) => Some(t),
            Virtual::Prefix(_) => None,
        }
    }

    /// The prefix's keys and values for the placeholders in `places`, when it is a prefix.
    pub fn prefix<'a>(
        &'a self,
        cfg: &ModelConfig,
        places: &'a [(usize, usize)],
    ) -> Option<PrefixKv<'a>> {
        match self {
            Virtual::Prefix(table) if !places.is_empty() => Some(PrefixKv {
                table,
                n: self.len(cfg),
                width: prefix_width(cfg),
                places,
            }),
            _ => None,
        }
    }
}

/// One layer's keys of one token: the key/value heads × head_dim.
pub fn prefix_width(cfg: &ModelConfig) -> usize {
    cfg.num_key_value_heads * cfg.head_dim
}

/// Each virtual token's id in `ids`: its index there and which virtual token it is.
pub fn places(ids: &[u32], vocab: u32) -> Vec<(usize, usize)> {
    ids.iter()
        .enumerate()
        .filter_map(|(i, &id)| id.checked_sub(vocab).map(|j| (i, j as usize)))
        .collect()
}

/// `ids` (`[rows, t]`) with the ids of `n` virtual tokens (`vocab..vocab + n`) in each row right
/// after its `pads[r]` padding positions.
pub fn insert(ids: &[u32], t: usize, pads: &[usize], (vocab, n): (u32, usize)) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len() + pads.len() * n);
    for (row, &pad) in ids.chunks(t.max(1)).zip(pads) {
        out.extend_from_slice(&row[..pad]);
        out.extend(vocab..vocab + n as u32);
        out.extend_from_slice(&row[pad..]);
    }
    out
}
