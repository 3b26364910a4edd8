//! Chat templates: turn a conversation into the prompt text a model was trained on, as transformers'
//! `apply_chat_template(messages, tokenize=False)` does.
//!
//! Templates are Jinja, run here by minijinja with Python string methods (`pycompat`) and the
//! environment transformers sets up: `trim_blocks` and `lstrip_blocks`, a `tojson` filter that writes
//! what Python's `json.dumps` writes, `raise_exception(msg)`, `strftime_now(fmt)`, and the variables
//! `messages`, `add_generation_prompt`, `bos_token`/`eos_token` (when known), `tools` and `documents`
//! (none unless a render is given them, as transformers' `tools=` and `documents=`). An assistant
//! message may carry `tool_calls` (OpenAI's `{"type": "function", "function": {"name",
//! "arguments"}}` objects) and a `tool` message a call's result, as transformers takes them.
//!
//! A template comes with the model, from anyone: a render is bounded in steps (minijinja's fuel),
//! nesting (its recursion limit of 500) and output size, so a runaway template ends in an error.
//! What minijinja cannot bound is a string a template doubles in a variable without writing it
//! (`{% set ns.s = ns.s ~ ns.s %}` in a loop): its own limit stops `'a' * n` at 100 MB, and the
//! step budget stops long loops, but 30 doublings fit in neither.

mod pyjson;
mod strftime;

pub(crate) use strftime::format_utc;

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use anyhow::{Context, Result};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::tokenizer::Tokenizer;

const TEMPLATE_NAME: &str = "chat_template";

/// Jinja instructions one render may run. Real templates take a few hundred per message (Qwen2.5's
/// with tools, the longest seen here: ~400), so this is ample for tens of thousands of turns and
/// stops an endless loop within about a second.
const MAX_STEPS: u64 = 50_000_000;

/// Bytes a render may write beyond four times its input's text: real templates add a bounded
/// frame per message around the text they are given.
const OUTPUT_ALLOWANCE: usize = 16 << 20;

/// Said when a model has no chat template: where one can come from.
const NO_TEMPLATE: &str =
    "this model has no chat template (no tokenizer.chat_template in the GGUF, no \
chat_template.jinja or chat_template in tokenizer_config.json); pass a Jinja template file with \
--chat-template FILE, or put it in the model directory as chat_template.jinja";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// The functions an assistant turn calls (empty content then), in OpenAI's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
        }
    }

    /// An assistant turn that calls `calls` and says nothing.
    pub fn tool_calls(calls: Vec<serde_json::Value>) -> Message {
        Message {
            tool_calls: Some(calls),
            ..Message::new("assistant", "")
        }
    }
}

/// A template's own refusal, raised by `raise_exception(msg)` (e.g. roles out of order); holds `msg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateException(pub String);

impl fmt::Display for TemplateException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the chat template rejected the conversation: {}", self.0)
    }
}

impl std::error::Error for TemplateException {}

/// A compiled chat template with the special tokens it may refer to, and the extra variables a
/// caller sets (transformers' `apply_chat_template(**kwargs)`, e.g. Qwen3's `enable_thinking`).
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    kwargs: BTreeMap<String, Value>,
}

impl ChatTemplate {
    pub fn new(source: &str, bos: Option<&str>, eos: Option<&str>) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(MAX_STEPS));
        env.add_filter("tojson", pyjson::tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime::strftime_now);
        env.add_template_owned(TEMPLATE_NAME, without_generation_tags(source))
            // Not `{e:#}`: minijinja's alternate form adds a multi-line source excerpt, and errors
            // are one line; the plain form keeps the position ("in chat_template:LINE").
            .map_err(|e| anyhow::Error::new(e).context("the chat template does not parse"))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos.map(str::to_owned),
            eos_token: eos.map(str::to_owned),
            kwargs: BTreeMap::new(),
        })
    }

    /// Sets template variable `name` for every render (the standard ones, such as `messages`,
    /// keep their meaning: they are set after).
    pub fn with_kwarg(mut self, name: &str, value: impl Serialize) -> Self {
        self.kwargs
            .insert(name.to_string(), Value::from_serialize(value));
        self
    }

    /// The template a tokenizer carries, with its bos/eos tokens; a clear error when it has none.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let source = tokenizer.chat_template().context(NO_TEMPLATE)?;
        ChatTemplate::new(source, tokenizer.bos_token(), tokenizer.eos_token())
    }

    /// Renders a conversation. A template's `raise_exception` surfaces as a [`TemplateException`].
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// [`Self::render`] with variables for this call besides the template's own kwargs (vLLM's
    /// `chat_template_kwargs`, a conversation's `tools`); `messages`, `add_generation_prompt` and
    /// the special tokens keep their meaning.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let mut vars: BTreeMap<&str, Value> = BTreeMap::new();
        vars.insert("tools", Value::from(()));
        vars.insert("documents", Value::from(()));
        for (name, value) in &self.kwargs {
            vars.insert(name, value.clone());
        }
        for (name, value) in extra {
            vars.insert(name, Value::from_serialize(value));
        }
        vars.insert("messages", Value::from_serialize(messages));
        vars.insert("add_generation_prompt", Value::from(add_generation_prompt));
        if let Some(bos) = &self.bos_token {
            vars.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            vars.insert("eos_token", Value::from(eos.as_str()));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("added in new()");
        let input_bytes: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len() + m.tool_calls.as_ref().map_or(0, json_len))
            .sum::<usize>()
            + extra.values().map(json_len).sum::<usize>();
        let mut out = CappedOutput {
            text: Vec::new(),
            cap: input_bytes
                .saturating_mul(4)
                .saturating_add(OUTPUT_ALLOWANCE),
        };
        match template.render_captured_to(&vars, &mut out) {
            Ok(_) => String::from_utf8(out.text).context("the chat template wrote invalid UTF-8"),
            Err(err) => Err(render_error(err, out.cap)),
        }
    }
}

/// A render's error as Hone reports it: a template's `raise_exception` as its message, the limits
/// as what they are, anything else with minijinja's description and position.
fn render_error(err: Error, cap: usize) -> anyhow::Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<TemplateException>() {
            return anyhow::Error::new(raised.clone());
        }
        source = e.source();
    }
    match err.kind() {
        // The output is the one writer, and it fails only at its cap.
        ErrorKind::WriteFailure => anyhow::anyhow!(
            "rendering the chat template failed: it wrote more than {cap} bytes, far more than \
             the conversation holds (a runaway loop?)"
        ),
        ErrorKind::OutOfFuel => anyhow::anyhow!(
            "rendering the chat template failed: it ran past {MAX_STEPS} steps (a loop that \
             does not end?)"
        ),
        _ => anyhow::Error::new(err).context("rendering the chat template failed"),
    }
}

fn json_len(value: &impl Serialize) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// A render's output, refusing to grow past `cap` bytes.
struct CappedOutput {
    text: Vec<u8>,
    cap: usize,
}

impl io::Write for CappedOutput {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.text.len() + bytes.len() > self.cap {
            return Err(io::Error::other("the output size limit was reached"));
        }
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The text of a special token as tokenizer_config.json gives it: a string, or an AddedToken
/// object `{"content": ..., ...}`.
pub fn token_text(value: &serde_json::Value) -> Option<&str> {
    value.as_str().or_else(|| value.get("content")?.as_str())
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(TemplateException(message)))
}

/// transformers lets templates mark assistant text with `{% generation %}...{% endgeneration %}`
/// (for training masks); when rendering it is a plain block, so the tags become `{% if true %}` /
/// `{% endif %}`, keeping their whitespace-control marks.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // The closing `%}` comes after the opening `{%`: in `{%}` they would overlap.
        let Some(end) = tag[2..].find("%}").map(|at| at + 2) else {
            break;
        };
        let inner = &tag[2..end];
        let (open, body) = split_marker(inner, true);
        let (body, close) = split_marker(body.trim(), false);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => out.push_str(&format!("{{%{open} {r} {close}%}}")),
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Splits a leading (or trailing) `-`/`+` whitespace-control mark off a tag's inside.
fn split_marker(inner: &str, leading: bool) -> (&str, &str) {
    let marked = |c: char| c == '-' || c == '+';
    if leading && inner.starts_with(marked) {
        (&inner[..1], &inner[1..])
    } else if !leading && inner.ends_with(marked) {
        (&inner[..inner.len() - 1], &inner[inner.len() - 1..])
    } else if leading {
        ("", inner)
    } else {
        (inner, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[Message]) -> Result<String> {
        ChatTemplate::new(source, Some("<s>"), Some("</s>"))?.render(messages, true)
    }

    #[test]
    fn raise_exception_carries_the_message() {
        let err = render("{{ raise_exception('roles must alternate') }}", &[]).unwrap_err();
        assert_eq!(
            err.downcast_ref::<TemplateException>().unwrap().0,
            "roles must alternate"
        );
        let nested = "{% for m in messages %}{% if m.role == 'x' %}{{ raise_exception('no x: ' + m.content) }}{% endif %}{% endfor %}";
        let err = render(nested, &[Message::new("x", "y")]).unwrap_err();
        assert_eq!(
            err.downcast_ref::<TemplateException>().unwrap().0,
            "no x: y"
        );
    }

    /// Found by fuzzing: `{%}` opens a tag that its own `%` does not close.
    #[test]
    fn a_tag_is_closed_after_its_opening() {
        assert_eq!(without_generation_tags("{%}"), "{%}");
        assert_eq!(
            without_generation_tags("{%}x%}{% generation %}"),
            "{%}x%}{% if true %}"
        );
        assert!(render("{%}", &[]).is_err());
    }

    /// A hostile template ends in a one-line error: an endless loop at the step budget, a flood
    /// of output at the size cap, runaway recursion at minijinja's depth limit.
    #[test]
    fn runaway_templates_stop_at_their_limits() {
        let hi = [Message::new("user", "hi")];
        let cases = [
            (
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                "steps",
            ),
            (
                "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
                "bytes",
            ),
            (
                "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
                "recursion",
            ),
        ];
        for (source, said) in cases {
            let err = format!("{:#}", render(source, &hi).unwrap_err());
            assert!(err.contains(said), "{source}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    /// Template kwargs (the template's own, then a call's) are variables (booleans print as Python
    /// does); `messages` and the other standard ones cannot be overridden by them.
    #[test]
    fn kwargs_are_template_variables() {
        let source =
            "{{ enable_thinking is defined }}|{{ enable_thinking }}|{{ messages | length }}";
        let template = ChatTemplate::new(source, None, None).unwrap();
        let one = [Message::new("user", "hi")];
        assert_eq!(template.render(&one, true).unwrap(), "False||1");
        let template = template.with_kwarg("enable_thinking", false);
        assert_eq!(template.render(&one, true).unwrap(), "True|False|1");
        let call = serde_json::json!({"enable_thinking": true, "messages": []});
        let call = call.as_object().unwrap();
        assert_eq!(
            template.render_with(&one, true, call).unwrap(),
            "True|True|1"
        );
    }

    #[test]
    fn other_errors_are_not_exceptions() {
        assert!(ChatTemplate::new("{% if %}", None, None).is_err());
        let err = render("{{ no_such_function() }}", &[]).unwrap_err();
        assert!(err.downcast_ref::<TemplateException>().is_none());
    }

    #[test]
    fn variables_follow_transformers() {
        let source = "{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}|{{ messages[0].content.strip() }}";
        let out = render(source, &[Message::new("user", " hi ")]).unwrap();
        assert_eq!(out, "<s>|</s>|True|True|True|hi");
        let unknown = ChatTemplate::new("{{ bos_token is defined }}", None, None).unwrap();
        assert_eq!(unknown.render(&[], false).unwrap(), "False");
    }

    #[test]
    fn blocks_are_trimmed_like_transformers() {
        let source = "  {% for m in messages %}\n{{ m.role }}\n  {% endfor %}\n";
        assert_eq!(
            render(source, &[Message::new("a", ""), Message::new("b", "")]).unwrap(),
            "a\nb\n"
        );
    }

    #[test]
    fn generation_tags_render_their_body() {
        let source = "{% for m in messages %}{%- generation -%} [{{ m.content }}] {%- endgeneration %}{% endfor %}";
        assert_eq!(
            without_generation_tags(source).matches("if true").count(),
            1
        );
        assert_eq!(
            render(source, &[Message::new("assistant", "x")]).unwrap(),
            "[x]"
        );
    }

    #[test]
    fn token_text_accepts_strings_and_objects() {
        assert_eq!(token_text(&serde_json::json!("<s>")), Some("<s>"));
        assert_eq!(
            token_text(&serde_json::json!({"__type": "AddedToken", "content": "<s>"})),
            Some("<s>")
        );
        assert_eq!(token_text(&serde_json::json!(3)), None);
    }
}
