//! Function calling in `/v1/chat/completions`: the request's `tools` go to the chat template
//! (transformers' `tools=`), and the model's answer is read back into OpenAI's `tool_calls`.
//!
//! Answers are parsed in the Hermes format, the one Qwen2.5, Qwen3 and the Hermes models are
//! trained on (vLLM's `hermes` parser): each call is a `<tool_call>{"name": …, "arguments": …}
//! </tool_call>` block, and text before the first block is the message's content. A template
//! whose prompt with tools does not ask for such blocks is refused with the request, not guessed
//! at. `tool_choice` `none` renders no tools and parses nothing; `auto` is the default;
//! `required` and a named function would need constrained decoding, which Hone does not do.
//!
//! Streaming sends content as it comes until a `<tool_call>` opens (text that may be the start
//! of one is held back), then holds the rest and sends the calls whole, one delta each, when the
//! choice finishes — OpenAI's clients accumulate deltas, so a call in one piece is valid.

use serde_json::{json, Value};

use super::error::ApiError;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// What a request asks about tools, checked.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    /// The functions, in OpenAI's `{"type": "function", "function": {…}}` shape; empty when the
    /// request has none or `tool_choice` is `none`.
    pub functions: Vec<Value>,
}

impl Tools {
    /// Reads `tools` and `tool_choice`.
    pub fn from_request(
        tools: Option<&[Value]>,
        choice: Option<&Value>,
    ) -> Result<Tools, ApiError> {
        let functions = tools.unwrap_or_default();
        for (i, tool) in functions.iter().enumerate() {
            let name = tool["function"]["name"].as_str().unwrap_or_default();
            if tool["type"] != "function" || name.is_empty() {
                return Err(ApiError::invalid(
                    Some(&format!("tools[{i}]")),
                    "a tool is {\"type\": \"function\", \"function\": {\"name\": …, …}}",
                ));
            }
        }
        let choice = match choice {
            None => "auto",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => "named",
        };
        match choice {
            "none" => Ok(Tools::default()),
            "auto" => Ok(Tools {
                functions: functions.to_vec(),
            }),
            "required" | "named" => Err(ApiError::invalid(
                Some("tool_choice"),
                "`tool_choice` `required` or a named function needs constrained decoding, which \
                 Hone does not do: use `auto` (the default) or `none`",
            )),
            other => Err(ApiError::invalid(
                Some("tool_choice"),
                format!("`tool_choice` `{other}` is not one of none, auto, required"),
            )),
        }
    }

    pub fn active(&self) -> bool {
        !self.functions.is_empty()
    }

    /// The template variables that give the template the tools.
    pub fn template_vars(&self) -> serde_json::Map<String, Value> {
        let mut vars = serde_json::Map::new();
        if self.active() {
            vars.insert("tools".into(), Value::from(self.functions.clone()));
        }
        vars
    }

    /// Checks that `prompt`, rendered with the tools, lists them and asks for `<tool_call>`
    /// blocks, the only answer format Hone reads.
    pub fn check_prompt(&self, prompt: &str) -> Result<(), ApiError> {
        let listed = self.functions.iter().all(|f| {
            f["function"]["name"]
                .as_str()
                .is_some_and(|name| prompt.contains(name))
        });
        if !listed || !prompt.contains(OPEN) {
            return Err(ApiError::invalid(
                Some("tools"),
                "the model's chat template does not offer tools in the Hermes format \
                 (<tool_call> blocks, as Qwen2.5's and Qwen3's do), the only one Hone parses",
            ));
        }
        Ok(())
    }
}

/// An answer split into its content and its calls (each with a fresh `call_…` id and its
/// arguments as a JSON string, as OpenAI sends them). No calls when a block is not closed or its
/// JSON is not a call: then the whole text is content.
pub fn parse(text: &str) -> (Option<String>, Vec<Value>) {
    let Some(start) = text.find(OPEN) else {
        return (Some(text.to_string()), Vec::new());
    };
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(after) = rest.trim_start().strip_prefix(OPEN) {
        let Some(end) = after.find(CLOSE) else {
            return (Some(text.to_string()), Vec::new());
        };
        match call(after[..end].trim()) {
            Some(c) => calls.push(c),
            None => return (Some(text.to_string()), Vec::new()),
        }
        rest = &after[end + CLOSE.len()..];
    }
    if !rest.trim().is_empty() {
        return (Some(text.to_string()), Vec::new());
    }
    let content = text[..start].trim_end();
    ((!content.is_empty()).then(|| content.to_string()), calls)
}

/// One `{"name": …, "arguments": …}` block as an OpenAI tool call.
fn call(block: &str) -> Option<Value> {
    let parsed: Value = serde_json::from_str(block).ok()?;
    let name = parsed.get("name")?.as_str()?;
    let arguments = match parsed.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "{}".to_string(),
    };
    Some(json!({
        "id": format!("call_{:024x}", rand::random::<u128>() >> 32),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }))
}

/// A streamed choice's text with tools active: what can be sent now, and what waits for the end.
#[derive(Debug, Default)]
pub struct StreamSplitter {
    /// Text not sent yet: a possible start of `<tool_call>`, or everything from one on.
    held: String,
    in_calls: bool,
}

impl StreamSplitter {
    /// Takes the next piece of text; returns the content that can be sent now.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.in_calls {
            return String::new();
        }
        if let Some(at) = self.held.find(OPEN) {
            self.in_calls = true;
            let before = self.held[..at].to_string();
            self.held.drain(..at);
            return before;
        }
        // Keep back the longest tail that could still grow into `<tool_call>`.
        let keep = (1..OPEN.len().min(self.held.len() + 1))
            .rev()
            .find(|&k| {
                self.held.is_char_boundary(self.held.len() - k)
                    && OPEN.starts_with(&self.held[self.held.len() - k..])
            })
            .unwrap_or(0);
        let send = self.held.len() - keep;
        let out = self.held[..send].to_string();
        self.held.drain(..send);
        out
    }

    /// At the choice's end: the content still to send and the calls.
    pub fn finish(self) -> (String, Vec<Value>) {
        if !self.in_calls {
            return (self.held, Vec::new());
        }
        match parse(&self.held) {
            (_, calls) if !calls.is_empty() => (String::new(), calls),
            _ => (self.held, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hermes_blocks_become_tool_calls() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";
        let (content, calls) = parse(text);
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["function"]["name"], "weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        let (content, calls) = parse("<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>");
        assert_eq!((content, calls.len()), (None, 1));
    }

    #[test]
    fn anything_else_stays_content() {
        for text in [
            "Plain answer.",
            "<tool_call>{\"name\": \"a\", \"arguments\": {}}",
            "<tool_call>not json</tool_call>",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"a\"}</tool_call> and more",
        ] {
            assert_eq!(parse(text), (Some(text.to_string()), Vec::new()), "{text}");
        }
    }

    #[test]
    fn streaming_holds_back_only_what_may_open_a_call() {
        let mut s = StreamSplitter::default();
        assert_eq!(s.push("Sure <"), "Sure ");
        assert_eq!(s.push("b>x"), "<b>x");
        assert_eq!(s.push(" <tool"), " ");
        assert_eq!(s.push("_call>{\"name\": \"a\", "), "");
        assert_eq!(s.push("\"arguments\": {}}</tool_call>"), "");
        let (rest, calls) = s.finish();
        assert_eq!((rest.as_str(), calls.len()), ("", 1));
        let mut broken = StreamSplitter::default();
        assert_eq!(broken.push("é<tool_call>{oops"), "é");
        assert_eq!(
            broken.finish(),
            ("<tool_call>{oops".to_string(), Vec::new())
        );
        let mut plain = StreamSplitter::default();
        assert_eq!(plain.push("a <tool"), "a ");
        assert_eq!(plain.finish().0, "<tool");
    }

    #[test]
    fn tool_choice_and_malformed_tools() {
        let tool = json!({"type": "function", "function": {"name": "f"}});
        let tools = [tool.clone()];
        assert!(Tools::from_request(Some(&tools), None).unwrap().active());
        let none = Tools::from_request(Some(&tools), Some(&json!("none"))).unwrap();
        assert!(!none.active());
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "f"}}),
        ] {
            let err = Tools::from_request(Some(&tools), Some(&choice)).unwrap_err();
            assert!(err.body()["error"]["param"] == "tool_choice", "{choice}");
        }
        let bad = [json!({"type": "function", "function": {}})];
        let err = Tools::from_request(Some(&bad), None).unwrap_err();
        assert_eq!(err.body()["error"]["param"], "tools[0]");
    }
}
