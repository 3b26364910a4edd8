//! The request bodies of OpenAI's chat and completions APIs as `hone serve` reads them, checked
//! field by field (ranges as OpenAI documents them; an error names the field), and turned into
//! what the engine needs.

use serde::Deserialize;

use super::error::ApiError;
use crate::chat::Message;
use crate::generate::{GenerateConfig, SamplingConfig};

/// A string or a list of strings (`stop`, a completion's `prompt`).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Default, Clone)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields both APIs share.
#[derive(Deserialize, Debug, Default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// An extension (vLLM's and llama.cpp's): keep the k most likely tokens; 0 or -1 is off.
    pub top_k: Option<i64>,
    pub n: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// An extension: transformers' multiplicative repetition penalty (1 is off).
    pub repetition_penalty: Option<f32>,
    /// Token id (as a string) → bias in [-100, 100] added to its logit.
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// An extension (vLLM's): keep generating past end-of-turn tokens, up to `max_tokens`.
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

/// A chat message's content: a string, or a list of parts of which only text is understood.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
    /// An assistant message's calls (`{"id", "type": "function", "function": {"name",
    /// "arguments"}}`, arguments a JSON string).
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: Common,
    /// Chat's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<u64>,
    /// Extra chat-template variables (vLLM's extension), e.g. `{"enable_thinking": false}`.
    #[serde(default)]
    pub chat_template_kwargs: serde_json::Map<String, serde_json::Value>,
    /// Functions the model may call, and whether it may (see `serve::tools`).
    pub tools: Option<Vec<serde_json::Value>>,
    pub tool_choice: Option<serde_json::Value>,
}

#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub common: Common,
    /// Legacy form: the number of alternatives to report with each token (0–5).
    pub logprobs: Option<u64>,
}

/// What a request asks of the engine, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub generate: GenerateConfig,
    pub n: usize,
    pub top_logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Parses a body as `T`, with OpenAI's 400 for malformed JSON or a field of the wrong type.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "The request body is not valid JSON"
        } else {
            "The request body does not match the API"
        };
        ApiError::invalid(None, format!("{what}: {e}"))
    })
}

impl ChatRequest {
    /// The conversation as the chat template takes it.
    pub fn conversation(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                Some("messages"),
                "`messages` is empty: send at least one message",
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let param = format!("messages[{i}]");
                // OpenAI's newer name for the system role; templates know only `system`.
                let role = match m.role.as_str() {
                    "developer" => "system",
                    role @ ("system" | "user" | "assistant" | "tool") => role,
                    other => {
                        return Err(ApiError::invalid(
                            Some(&format!("{param}.role")),
                            format!(
                            "role `{other}` is not supported (system, developer, user, assistant, tool)"
                        ),
                        ))
                    }
                };
                if let (Some(calls), "assistant") = (&m.tool_calls, role) {
                    let content = match &m.content {
                        Some(Content::Text(text)) => text.clone(),
                        Some(Content::Parts(parts)) => text_parts(parts, &param)?,
                        None => String::new(),
                    };
                    let calls = template_calls(calls, &param)?;
                    return Ok(Message {
                        content,
                        ..Message::tool_calls(calls)
                    });
                }
                let content = match &m.content {
                    Some(Content::Text(text)) => text.clone(),
                    Some(Content::Parts(parts)) => text_parts(parts, &param)?,
                    None => {
                        return Err(ApiError::invalid(
                            Some(&format!("{param}.content")),
                            "the message has no content",
                        ))
                    }
                };
                Ok(Message::new(role, content))
            })
            .collect()
    }

    pub fn settings(&self, bounds: Bounds) -> Result<Settings, ApiError> {
        let max_tokens = match (self.max_completion_tokens, self.common.max_tokens) {
            (Some(n), _) => Some(("max_completion_tokens", n)),
            (None, Some(n)) => Some(("max_tokens", n)),
            (None, None) => None,
        };
        let top_logprobs = match (self.logprobs, self.top_logprobs) {
            (false, Some(_)) => {
                return Err(ApiError::invalid(
                    Some("top_logprobs"),
                    "`top_logprobs` needs `logprobs: true`",
                ))
            }
            (false, None) => None,
            (true, k) => Some(in_range("top_logprobs", k.unwrap_or(0), 0, 20)? as usize),
        };
        self.common.settings(max_tokens, top_logprobs, bounds)
    }
}

/// An assistant message's calls as chat templates take them: OpenAI sends each call's arguments
/// as a JSON string, templates expect the object (vLLM parses them the same way).
fn template_calls(
    calls: &[serde_json::Value],
    param: &str,
) -> Result<Vec<serde_json::Value>, ApiError> {
    calls
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let field = format!("{param}.tool_calls[{j}]");
            let function = &call["function"];
            let name = function["name"].as_str().filter(|n| !n.is_empty());
            let arguments = match &function["arguments"] {
                serde_json::Value::String(text) => serde_json::from_str(text).map_err(|e| {
                    ApiError::invalid(
                        Some(&format!("{field}.function.arguments")),
                        format!("not a JSON object: {e}"),
                    )
                })?,
                other => other.clone(),
            };
            match name {
                Some(name) => Ok(serde_json::json!({
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                })),
                None => Err(ApiError::invalid(
                    Some(&format!("{field}.function.name")),
                    "missing",
                )),
            }
        })
        .collect()
}

/// The text of a content-part list; other part types are refused.
fn text_parts(parts: &[ContentPart], param: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        match (part.kind.as_str(), &part.text) {
            ("text", Some(t)) => text.push_str(t),
            (kind, _) => {
                return Err(ApiError::invalid(
                    Some(&format!("{param}.content[{j}]")),
                    format!("content part of type `{kind}` is not supported (text only)"),
                ))
            }
        }
    }
    Ok(text)
}

impl CompletionRequest {
    /// The one prompt; a list of several is refused (send one request each).
    pub fn prompt_text(&self) -> Result<&str, ApiError> {
        match &self.prompt {
            OneOrMany::One(p) => Ok(p),
            OneOrMany::Many(list) if list.len() == 1 => Ok(&list[0]),
            OneOrMany::Many(_) => Err(ApiError::invalid(
                Some("prompt"),
                "one prompt per request: send a string or a list of one",
            )),
        }
    }

    pub fn settings(&self, bounds: Bounds) -> Result<Settings, ApiError> {
        let max_tokens = self.common.max_tokens.map(|n| ("max_tokens", n));
        let top_logprobs = self
            .logprobs
            .map(|k| in_range("logprobs", k, 0, 5).map(|k| k as usize))
            .transpose()?;
        self.common.settings(max_tokens, top_logprobs, bounds)
    }
}

/// What a request's settings are checked against.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Sequences decoded together: the most choices (`n`) a request may ask for.
    pub max_batch: usize,
    pub vocab_size: usize,
}

impl Common {
    fn settings(
        &self,
        max_tokens: Option<(&str, u64)>,
        top_logprobs: Option<usize>,
        bounds: Bounds,
    ) -> Result<Settings, ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(out_of_range("temperature", "between 0 and 2"));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(out_of_range("top_p", "in (0, 1]"));
        }
        let top_k = match self.top_k.unwrap_or(0) {
            k if k >= 0 => k as usize,
            -1 => 0,
            _ => return Err(out_of_range("top_k", "≥ 0 (0 or -1: off)")),
        };
        let penalty = |name: &str, v: Option<f32>| match v.unwrap_or(0.0) {
            v if (-2.0..=2.0).contains(&v) => Ok(v),
            _ => Err(out_of_range(name, "between -2 and 2")),
        };
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(out_of_range("repetition_penalty", "> 0"));
        }
        let n = in_range("n", self.n.unwrap_or(1), 1, bounds.max_batch as u64)? as usize;
        let logit_bias = self.logit_bias(bounds.vocab_size)?;
        let stop = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stop.len() > 4 {
            return Err(ApiError::invalid(Some("stop"), "at most 4 stop sequences"));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(Some("stop"), "a stop sequence is empty"));
        }
        let max_new_tokens = match max_tokens {
            Some((name, n)) => in_range(name, n, 1, u32::MAX as u64)? as usize,
            None => usize::MAX,
        };
        let seed = match self.seed {
            Some(seed) => seed as u64,
            None => rand::random(),
        };
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid(
                Some("stream_options"),
                "`stream_options` is only allowed with `stream: true`",
            ));
        }
        Ok(Settings {
            generate: GenerateConfig {
                max_new_tokens,
                sampling: SamplingConfig {
                    temperature,
                    top_k,
                    top_p,
                    repetition_penalty,
                    presence_penalty: penalty("presence_penalty", self.presence_penalty)?,
                    frequency_penalty: penalty("frequency_penalty", self.frequency_penalty)?,
                    logit_bias,
                    seed,
                },
                stop_strings: stop,
                ignore_eos: self.ignore_eos,
            },
            n,
            top_logprobs,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

impl Common {
    /// `logit_bias` as (token id, bias) pairs: ids inside the vocabulary, biases in [-100, 100].
    fn logit_bias(&self, vocab_size: usize) -> Result<Vec<(u32, f32)>, ApiError> {
        let Some(map) = &self.logit_bias else {
            return Ok(Vec::new());
        };
        map.iter()
            .map(|(id, &bias)| {
                let id = id
                    .parse::<u32>()
                    .ok()
                    .filter(|&i| (i as usize) < vocab_size)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            Some("logit_bias"),
                            format!("`{id}` is not a token id of this model (0..{vocab_size})"),
                        )
                    })?;
                if !(-100.0..=100.0).contains(&bias) {
                    return Err(out_of_range(
                        "logit_bias",
                        "between -100 and 100 for each token",
                    ));
                }
                Ok((id, bias))
            })
            .collect()
    }
}

fn in_range(name: &str, v: u64, low: u64, high: u64) -> Result<u64, ApiError> {
    if (low..=high).contains(&v) {
        Ok(v)
    } else {
        Err(out_of_range(name, &format!("between {low} and {high}")))
    }
}

fn out_of_range(name: &str, range: &str) -> ApiError {
    ApiError::invalid(Some(name), format!("`{name}` must be {range}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Settings, ApiError> {
        let bounds = Bounds {
            max_batch: 8,
            vocab_size: 100,
        };
        parse::<ChatRequest>(body.as_bytes())?.settings(bounds)
    }

    #[test]
    fn logit_bias_names_token_ids_of_the_model() {
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        let bias = |b: &str| chat(&format!("{{{msgs},\"logit_bias\":{b}}}"));
        assert_eq!(
            bias(r#"{"100":1}"#).unwrap_err().param.as_deref(),
            Some("logit_bias")
        );
        assert_eq!(
            bias(r#"{"x":1}"#).unwrap_err().param.as_deref(),
            Some("logit_bias")
        );
        assert_eq!(
            bias(r#"{"7":-101}"#).unwrap_err().param.as_deref(),
            Some("logit_bias")
        );
        let ok = bias(r#"{"7":-100}"#).unwrap();
        assert_eq!(ok.generate.sampling.logit_bias, vec![(7, -100.0)]);
    }

    #[test]
    fn fields_are_checked_and_named() {
        let ok = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,
            "max_completion_tokens":5,"stop":"x","seed":3,"n":2,"logprobs":true,"top_logprobs":2}"#,
        )
        .unwrap();
        assert_eq!(ok.generate.max_new_tokens, 5);
        assert_eq!(ok.generate.stop_strings, vec!["x"]);
        assert_eq!(
            (ok.n, ok.top_logprobs, ok.generate.sampling.seed),
            (2, Some(2), 3)
        );
        let param = |body: &str| chat(body).unwrap_err().param;
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        assert_eq!(
            param(&format!("{{{msgs},\"temperature\":3}}")).as_deref(),
            Some("temperature")
        );
        assert_eq!(param(&format!("{{{msgs},\"n\":9}}")).as_deref(), Some("n"));
        assert_eq!(
            param(&format!("{{{msgs},\"top_logprobs\":2}}")).as_deref(),
            Some("top_logprobs")
        );
        assert_eq!(
            param(&format!("{{{msgs},\"max_tokens\":0}}")).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param(&format!(
                "{{{msgs},\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}}"
            ))
            .as_deref(),
            Some("stop")
        );
        let bad = chat("{\"messages\": [").unwrap_err();
        assert!(
            bad.message
                .starts_with("The request body is not valid JSON"),
            "{}",
            bad.message
        );
        let wrong = chat(r#"{"messages":[],"temperature":"hot"}"#).unwrap_err();
        assert!(
            wrong.message.contains("does not match"),
            "{}",
            wrong.message
        );
    }

    #[test]
    fn messages_take_text_parts_and_the_developer_role() {
        let req = parse::<ChatRequest>(
            br#"{"messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        let conv = req.conversation().unwrap();
        assert_eq!(
            conv,
            vec![
                Message::new("system", "be brief"),
                Message::new("user", "ab")
            ]
        );
        let tool =
            parse::<ChatRequest>(br#"{"messages":[{"role":"tool","content":"x"}]}"#).unwrap();
        assert_eq!(
            tool.conversation().unwrap(),
            vec![Message::new("tool", "x")]
        );
        let function =
            parse::<ChatRequest>(br#"{"messages":[{"role":"function","content":"x"}]}"#).unwrap();
        assert_eq!(
            function.conversation().unwrap_err().param.as_deref(),
            Some("messages[0].role")
        );
    }
}
