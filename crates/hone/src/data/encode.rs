//! A conversation to token ids and labels: rendered through the model's chat template, tokenized
//! once, and labelled on the assistant's tokens only.
//!
//! **Tokens.** The whole conversation is rendered (`add_generation_prompt = false`) and tokenized
//! without adding special tokens, as `hone generate --chat` and `hone chat` tokenize prompts and as
//! transformers' `apply_chat_template(tokenize=True)` does: a BOS the model needs is the template's
//! to emit, so it is never doubled.
//!
//! **Labels.** Hugging Face layout: `labels` is aligned with `input_ids` (the loss shifts), and
//! [`IGNORE_INDEX`] marks positions that carry no loss. For each assistant message the template
//! renders the conversation before it with the generation prompt, and through it without; the
//! difference is the assistant's span of text — its content and whatever the template closes the
//! turn with (`<|im_end|>\n` in ChatML), which the model must learn to emit to stop. Tokens whose
//! byte offsets overlap a span are labelled with their own id (a token straddling the boundary,
//! like `\n ` before a response that starts with a space, counts as the response's). Each prompt
//! render must be a prefix of the whole. A template may render an answered turn differently once
//! later messages follow (Qwen3 drops the `<think>` block of every turn before the last user
//! query, and gives a tool call an empty one only when it is last): then the turn ends where the
//! next messages' own block begins in the whole render, so the labels cover the turn as the whole
//! conversation shows it, as transformers renders it. A conversation with tools is rendered with
//! them (`tools`), and each function it lists or calls must show in the render.
//! Templates that rewrite earlier turns in any other way cannot be labelled and are refused.
//! With `train_on_prompt` every token is labelled.
//!
//! **Truncation** to `cutoff_len` follows LLaMA-Factory's `infer_seqlen`: the conversation is cut
//! into turns, each a prompt part (everything since the previous response) and a response part.
//! Turns are given the budget from the last one backwards, so earlier turns are dropped first; a
//! turn that does not fit is split between prompt and response: a short response is kept whole,
//! else a short prompt is, else the budget is shared in proportion to their lengths. Unlike
//! LLaMA-Factory, a response always keeps at least one token (so no example is left without a
//! label), a cut prompt keeps its end (the question's end and the assistant header next to the
//! response, not the system prompt's start), a cut response keeps its start, and a leading BOS
//! token is always kept. Earlier turns are only kept while at least two tokens of budget remain.

use std::ops::Range;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::Conversation;
use crate::chat::{ChatTemplate, Message};
use crate::kernels::cross_entropy::IGNORE_INDEX;
use crate::tokenizer::Tokenizer;

/// One encoded conversation. `labels[i]` is `input_ids[i]` where the loss is taken, else
/// [`IGNORE_INDEX`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Most tokens an example may have (at least 2: a prompt token and a response token).
    pub cutoff_len: usize,
    /// Label the prompt tokens too, not only the assistant's.
    pub train_on_prompt: bool,
}

/// Encodes a conversation; errors name the row it came from.
pub fn encode(
    tok: &Tokenizer,
    template: &ChatTemplate,
    conv: &Conversation,
    opts: &EncodeOptions,
) -> Result<Example> {
    Ok(encode_measured(tok, template, conv, opts)?.0)
}

/// [`encode`], and how many tokens the whole conversation has before `cutoff_len` cuts it.
pub fn encode_measured(
    tok: &Tokenizer,
    template: &ChatTemplate,
    conv: &Conversation,
    opts: &EncodeOptions,
) -> Result<(Example, usize)> {
    ensure!(
        opts.cutoff_len >= 2,
        "cutoff_len is {}; it must be at least 2 (a prompt token and a response token)",
        opts.cutoff_len
    );
    let renderer = Renderer::of(template, conv);
    encode_messages(tok, &renderer, &conv.messages, opts).with_context(|| conv.origin.to_string())
}

/// A conversation ending with the assistant's turn, labelled on that last response only (earlier
/// answers are context, as in a preference pair's prompt) and not cut to any length.
pub(super) fn encode_last_response(
    tok: &Tokenizer,
    template: &ChatTemplate,
    conv: &Conversation,
) -> Result<Example> {
    let whole = EncodeOptions {
        cutoff_len: usize::MAX / 2,
        train_on_prompt: false,
    };
    let renderer = Renderer::of(template, conv);
    let (mut example, _) = encode_messages(tok, &renderer, &conv.messages, &whole)
        .with_context(|| conv.origin.to_string())?;
    let last = example.labels.iter().rposition(|&l| l != IGNORE_INDEX);
    let start = last.map_or(0, |last| {
        example.labels[..last]
            .iter()
            .rposition(|&l| l == IGNORE_INDEX)
            .map_or(0, |i| i + 1)
    });
    example.labels[..start].fill(IGNORE_INDEX);
    Ok(example)
}

/// A conversation's chat template with the variables it is rendered with (its tools).
struct Renderer<'a> {
    template: &'a ChatTemplate,
    vars: serde_json::Map<String, serde_json::Value>,
    /// The functions the conversation lists or calls: the render must show each.
    functions: Vec<&'a str>,
}

impl<'a> Renderer<'a> {
    fn of(template: &'a ChatTemplate, conv: &'a Conversation) -> Renderer<'a> {
        let calls = conv
            .messages
            .iter()
            .flat_map(|m| m.tool_calls.iter().flatten());
        let functions = conv
            .tools
            .iter()
            .chain(calls)
            .filter_map(|f| f["function"]["name"].as_str())
            .collect();
        Renderer {
            template,
            vars: conv.template_vars(),
            functions,
        }
    }

    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.template
            .render_with(messages, add_generation_prompt, &self.vars)
    }

    /// A template without tool support drops the tools and calls silently: training on that text
    /// would teach the model answers to tools it never saw.
    fn check_functions_shown(&self, text: &str) -> Result<()> {
        if let Some(missing) = self.functions.iter().find(|f| !text.contains(*f)) {
            bail!(
                "tools: the chat template leaves out the function `{missing}` that the \
                 conversation lists or calls (the template has no tool support?); set `template:` \
                 to a Jinja file whose template renders `tools` and `tool_calls`"
            );
        }
        Ok(())
    }
}

fn encode_messages(
    tok: &Tokenizer,
    template: &Renderer,
    messages: &[Message],
    opts: &EncodeOptions,
) -> Result<(Example, usize)> {
    let text = template.render(messages, false)?;
    template.check_functions_shown(&text)?;
    let spans = assistant_spans(template, messages, &text)?;
    let encoding = tok
        .inner()
        .encode(text.as_str(), false)
        .map_err(|e| anyhow!("cannot tokenize the rendered conversation: {e}"))?;
    let ids = encoding.get_ids();
    let span_of: Vec<Option<usize>> = encoding
        .get_offsets()
        .iter()
        .map(|&offsets| spans.iter().position(|span| overlaps(offsets, span)))
        .collect();
    let turns = turns(&span_of, spans.len())?;
    let pin_first = tok.bos_id().is_some_and(|bos| ids.first() == Some(&bos));
    let mut example = Example {
        input_ids: Vec::with_capacity(opts.cutoff_len.min(ids.len())),
        labels: Vec::with_capacity(opts.cutoff_len.min(ids.len())),
    };
    for range in kept_ranges(&turns, opts.cutoff_len, pin_first) {
        for i in range {
            example.input_ids.push(ids[i]);
            let labelled = opts.train_on_prompt || span_of[i].is_some();
            example.labels.push(if labelled {
                i64::from(ids[i])
            } else {
                IGNORE_INDEX
            });
        }
    }
    Ok((example, ids.len()))
}

/// The byte range of each assistant message's text in the rendered conversation `text`.
fn assistant_spans(
    template: &Renderer,
    messages: &[Message],
    text: &str,
) -> Result<Vec<Range<usize>>> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    for (i, _) in messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == "assistant")
    {
        let prompt = template.render(&messages[..i], true)?;
        let after_previous = spans.last().map_or(0, |s| s.end);
        let end = turn_end(template, messages, i, text)?
            .filter(|_| text.starts_with(&prompt) && prompt.len() >= after_previous);
        let Some(end) = end else {
            bail!(
                "the chat template is not prefix-consistent: rendering messages 1-{i} with the \
                 generation prompt, then 1-{} and then all {} do not extend one another, so the \
                 assistant's tokens cannot be located (templates that rewrite earlier turns \
                 cannot be trained on)",
                i + 1,
                messages.len()
            );
        };
        ensure!(
            end > prompt.len(),
            "the chat template renders nothing for message {} (assistant)",
            i + 1
        );
        spans.push(prompt.len()..end);
    }
    ensure!(
        !spans.is_empty(),
        "the conversation has no assistant message to learn from"
    );
    Ok(spans)
}

/// Where assistant message `i`'s turn ends in the whole render `text`: where the render through
/// it ends when that is a prefix of `text`; else, for a template that renders the turn differently
/// once more messages follow, where the next messages' block ends the render through them — the
/// messages up to the next assistant turn (a user turn, or tool results a template closes
/// together), rendered alone and without the tools (which a template lists in a header of its
/// own). None when neither holds.
fn turn_end(
    template: &Renderer,
    messages: &[Message],
    i: usize,
    text: &str,
) -> Result<Option<usize>> {
    let through = template.render(&messages[..=i], false)?;
    if text.starts_with(&through) {
        return Ok(Some(through.len()));
    }
    if i + 1 == messages.len() {
        return Ok(None);
    }
    let next_end = messages[i + 1..]
        .iter()
        .position(|m| m.role == "assistant")
        .map_or(messages.len(), |k| i + 1 + k);
    let with_next = template.render(&messages[..next_end], false)?;
    let next_alone = template
        .template
        .render(&messages[i + 1..next_end], false)?;
    Ok(
        (text.starts_with(&with_next) && with_next.ends_with(&next_alone))
            .then(|| with_next.len() - next_alone.len()),
    )
}

/// Whether a token's byte offsets overlap a span; a zero-width token (a post-processor may trim a
/// lone space to nothing) counts where it starts.
fn overlaps((start, end): (usize, usize), span: &Range<usize>) -> bool {
    if start == end {
        span.contains(&start)
    } else {
        start < span.end && end > span.start
    }
}

/// A prompt part and the response after it, as token ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Turn {
    source: Range<usize>,
    target: Range<usize>,
}

/// Cuts the tokens into turns at the assistant spans (`span_of[i]`: the span token `i` overlaps).
/// A response runs from its span's first token to the next prompt; the last one to the end, so
/// anything a template emits after the final turn stays with it.
fn turns(span_of: &[Option<usize>], n_spans: usize) -> Result<Vec<Turn>> {
    let mut turns = Vec::with_capacity(n_spans);
    let mut prompt_start = 0;
    for k in 0..n_spans {
        let first = span_of.iter().position(|&s| s == Some(k));
        let last = span_of.iter().rposition(|&s| s == Some(k));
        let (Some(first), Some(last)) = (first, last) else {
            return Err(anyhow!("assistant message {} has no tokens", k + 1));
        };
        let end = if k + 1 == n_spans {
            span_of.len()
        } else {
            last + 1
        };
        turns.push(Turn {
            source: prompt_start..first,
            target: first..end,
        });
        prompt_start = end;
    }
    Ok(turns)
}

/// The token ranges kept within `cutoff_len` tokens, in order (see the module comment).
/// `pin_first`: token 0 (a BOS) is kept whatever else is cut.
fn kept_ranges(turns: &[Turn], cutoff_len: usize, pin_first: bool) -> Vec<Range<usize>> {
    let mut budget = cutoff_len - usize::from(pin_first);
    let mut kept = Vec::with_capacity(2 * turns.len() + 1);
    for (k, turn) in turns.iter().enumerate().rev() {
        if k + 1 < turns.len() && budget < 2 {
            break;
        }
        let mut source = turn.source.clone();
        if k == 0 && pin_first {
            source.start += 1;
        }
        let (source_len, target_len) = infer_seqlen(source.len(), turn.target.len(), budget);
        kept.push(turn.target.start..turn.target.start + target_len);
        kept.push(source.end - source_len..source.end);
        budget -= source_len + target_len;
    }
    if pin_first {
        kept.push(0..1);
    }
    kept.reverse();
    kept.retain(|r| !r.is_empty());
    kept
}

/// How many prompt and response tokens of one turn fit in `budget` (LLaMA-Factory's
/// `infer_seqlen`, plus: a non-empty response keeps at least one token). `budget` >= 1, so the
/// proportional share only divides when both parts are non-empty.
pub(super) fn infer_seqlen(source: usize, target: usize, budget: usize) -> (usize, usize) {
    debug_assert!(budget >= 1);
    let max_target = if target * 2 < budget {
        budget
    } else if source * 2 < budget {
        budget - source
    } else {
        budget * target / (source + target)
    };
    let mut target_len = max_target.min(target);
    if target > 0 {
        target_len = target_len.max(1);
    }
    let source_len = (budget - target_len).min(source);
    (source_len, target_len)
}

#[cfg(test)]
mod tests;
