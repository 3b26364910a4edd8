//! Chat templates: a hostile template (runaway loops, deep recursion, huge strings) must end in
//! bounded time and memory with an error. The input is the template, then optionally a JSON
//! conversation and JSON variables (tools, kwargs) to render it with.

use hone::chat::{ChatTemplate, Message};

use crate::{parts, run};

pub fn chat_template(data: &[u8]) {
    let [source, messages, variables] = parts(data, 3)[..] else {
        unreachable!("parts gives three")
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let Ok(template) = ChatTemplate::new(source, Some("<s>"), Some("</s>")) else {
        return;
    };
    let messages: Vec<Message> =
        serde_json::from_slice(messages).unwrap_or_else(|_| run::conversation());
    let variables = serde_json::from_slice(variables).unwrap_or_default();
    for add_generation_prompt in [false, true] {
        let _ = template.render_with(&messages, add_generation_prompt, &variables);
    }
}
