//! One dataset row to one [`Conversation`], as LLaMA-Factory's `converter.py` reads the formats,
//! but strict: a row that LLaMA-Factory would silently drop or mangle is a [`RowError`] naming the
//! file, line, field and problem.
//!
//! - Alpaca: the user turn is `instruction`, plus `"\n" + input` when the input is not empty; the
//!   response is `output`; `history` holds earlier `[query, response]` pairs; `system` is optional.
//! - ShareGPT / OpenAI: turns come from `from`/`value` (or `role`/`content`); a leading system turn,
//!   else the `system` column, gives the system prompt. Then user-side turns (human, observation)
//!   and assistant-side turns (gpt, function_call) alternate, ending with an assistant-side turn.
//!   Roles map to chat roles: human → user, gpt and function_call → assistant, observation →
//!   tool, system → system. A function_call turn holds JSON, `{"name": …, "arguments": …}` or a
//!   list of them, and becomes an assistant turn with those `tool_calls`.
//! - Tools: the `tools` column (a JSON list of function schemas, or a string holding one, as in
//!   LLaMA-Factory's glaive data) gives the functions the chat template lists; a schema not
//!   already in OpenAI's `{"type": "function", "function": …}` shape is wrapped in it, as
//!   LLaMA-Factory's tool formatters wrap it.
//!
//! An empty or absent system prompt adds no system turn, so the chat template applies its own
//! default, as it does at inference. No message may be empty.
//!
//! Prompts to be answered ([`Answer::Optional`]) may lack the response: an Alpaca row without an
//! `output` (or with an empty one), a ShareGPT row ending with a user-side turn or with an empty
//! assistant-side turn. Their conversation then ends with the user's turn.

use std::fmt;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::info::{Format, Formatting, Tags};
use super::rows::RawRow;
use super::{Conversation, RowOrigin};
use crate::chat::Message;

/// Whether a row must end with the assistant's response. Training rows must: the response is what
/// is learnt. Prompts for a model to answer need not: a response, when given, is only a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Required,
    Optional,
}

/// Why a row was rejected: the classes [`super::SkipSummary`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    InvalidJson,
    NotAnObject,
    MissingField,
    WrongType,
    EmptyMessage,
    UnknownRole,
    RoleOrder,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::InvalidJson => "not valid JSON",
            SkipReason::NotAnObject => "not a JSON object",
            SkipReason::MissingField => "missing field",
            SkipReason::WrongType => "wrong type",
            SkipReason::EmptyMessage => "empty message",
            SkipReason::UnknownRole => "unknown role",
            SkipReason::RoleOrder => "roles out of order",
        })
    }
}

/// A rejected row: `file:line: field: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub origin: RowOrigin,
    /// The offending field, e.g. `output` or `conversations[2].from`; None for the row as a whole.
    pub field: Option<String>,
    pub problem: String,
    pub reason: SkipReason,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.origin, self.problem),
            None => write!(f, "{}: {}", self.origin, self.problem),
        }
    }
}

impl std::error::Error for RowError {}

/// A row's fault before it is placed in its file.
struct Problem {
    field: Option<String>,
    problem: String,
    reason: SkipReason,
}

impl Problem {
    fn new(field: &str, problem: impl Into<String>, reason: SkipReason) -> Problem {
        Problem {
            field: Some(field.to_owned()),
            problem: problem.into(),
            reason,
        }
    }

    fn at(self, origin: RowOrigin) -> RowError {
        RowError {
            origin,
            field: self.field,
            problem: self.problem,
            reason: self.reason,
        }
    }
}

/// The conversation a row holds, or why it holds none.
pub(super) fn convert(
    row: RawRow,
    format: &Format,
    file: &Path,
    answer: Answer,
) -> Result<Conversation, RowError> {
    let origin = RowOrigin {
        file: file.to_owned(),
        line: row.line,
    };
    let whole_row = |problem: String, reason| Problem {
        field: None,
        problem,
        reason,
    };
    let parsed = match &row.value {
        Err(message) => Err(whole_row(message.clone(), SkipReason::InvalidJson)),
        Ok(Value::Object(object)) => {
            let messages = match format.formatting {
                Formatting::Alpaca => alpaca(object, format, answer),
                Formatting::Sharegpt => sharegpt(object, format, answer),
            };
            messages.and_then(|messages| Ok((messages, tools(object, &format.columns.tools)?)))
        }
        Ok(other) => Err(whole_row(
            format!("expected a JSON object, found {}", kind(other)),
            SkipReason::NotAnObject,
        )),
    };
    match parsed {
        Ok((messages, tools)) => Ok(Conversation {
            messages,
            tools,
            origin,
        }),
        Err(problem) => Err(problem.at(origin)),
    }
}

/// The row's tools in `column`: none when absent, null, an empty string or an empty list; else
/// each function schema in OpenAI's shape.
fn tools(row: &Map<String, Value>, column: &str) -> Result<Vec<Value>, Problem> {
    let list = match row.get(column) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(Vec::new()),
        Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
            Problem::new(
                column,
                format!("not valid JSON: {e}"),
                SkipReason::WrongType,
            )
        })?,
        Some(other) => other.clone(),
    };
    let Value::Array(items) = list else {
        let problem = format!("expected a list of function schemas, found {}", kind(&list));
        return Err(Problem::new(column, problem, SkipReason::WrongType));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let field = format!("{column}[{i}]");
            let wrapped = match &tool {
                Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                    tool
                }
                Value::Object(_) => json!({"type": "function", "function": tool}),
                other => {
                    let problem = format!(
                        "expected a function schema (an object), found {}",
                        kind(other)
                    );
                    return Err(Problem::new(&field, problem, SkipReason::WrongType));
                }
            };
            match wrapped["function"]["name"].as_str() {
                Some(name) if !name.is_empty() => Ok(wrapped),
                _ => Err(Problem::new(
                    &format!("{field}.name"),
                    "missing",
                    SkipReason::MissingField,
                )),
            }
        })
        .collect()
}

/// A function_call turn's calls: its content is JSON, `{"name": …, "arguments": …}` or a list of
/// them (parallel calls); each becomes an OpenAI tool call.
fn tool_calls(content: &str, field: &str) -> Result<Vec<Value>, Problem> {
    const SHAPE: &str =
        "a function call is JSON: {\"name\": …, \"arguments\": {…}} or a list of them";
    let value: Value = serde_json::from_str(content)
        .map_err(|e| Problem::new(field, format!("{SHAPE} ({e})"), SkipReason::WrongType))?;
    let calls = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    calls
        .into_iter()
        .map(|call| {
            let name = call
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            match (name, call.get("arguments")) {
                (Some(name), Some(arguments)) => Ok(json!({
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                })),
                _ => Err(Problem::new(field, SHAPE, SkipReason::MissingField)),
            }
        })
        .collect()
}

/// A preference row (`ranking: true`): the prompt's conversation, ending with the user's turn, and
/// the chosen and rejected responses — strings in Alpaca rows, turns of the assistant's side in
/// ShareGPT rows (LLaMA-Factory's layout).
pub(super) fn convert_pair(
    row: RawRow,
    format: &Format,
    file: &Path,
) -> Result<(Conversation, String, String), RowError> {
    let origin = RowOrigin {
        file: file.to_owned(),
        line: row.line,
    };
    let responses = match &row.value {
        Ok(Value::Object(object)) => {
            let response = |column: &str| response(object, column, format);
            response(&format.columns.chosen)
                .and_then(|c| Ok((c, response(&format.columns.rejected)?)))
        }
        _ => Ok((String::new(), String::new())),
    };
    let conversation = convert(row, format, file, Answer::Optional)?;
    let (chosen, rejected) = responses.map_err(|p| p.at(origin.clone()))?;
    match conversation.messages.last() {
        Some(last) if last.role != "assistant" => Ok((conversation, chosen, rejected)),
        _ => {
            let field = match format.formatting {
                Formatting::Alpaca => &format.columns.response,
                Formatting::Sharegpt => &format.columns.messages,
            };
            let problem = format!(
                "a preference row's conversation ends with the user's turn; the responses are {} \
                 and {}",
                format.columns.chosen, format.columns.rejected
            );
            Err(Problem::new(field, problem, SkipReason::RoleOrder).at(origin))
        }
    }
}

/// A KTO row: a conversation ending with the assistant's response, and whether that response is
/// desirable (the boolean `kto_tag` column).
pub(super) fn convert_feedback(
    row: RawRow,
    format: &Format,
    file: &Path,
) -> Result<(Conversation, bool), RowError> {
    let origin = RowOrigin {
        file: file.to_owned(),
        line: row.line,
    };
    let column = &format.columns.kto_tag;
    let tag = match &row.value {
        Ok(Value::Object(object)) => match object.get(column) {
            Some(Value::Bool(tag)) => Ok(*tag),
            None | Some(Value::Null) => {
                Err(Problem::new(column, "missing", SkipReason::MissingField))
            }
            Some(other) => Err(Problem::new(
                column,
                format!("expected true or false, found {}", kind(other)),
                SkipReason::WrongType,
            )),
        },
        _ => Ok(false),
    };
    let conversation = convert(row, format, file, Answer::Required)?;
    let tag = tag.map_err(|p| p.at(origin))?;
    Ok((conversation, tag))
}

/// A preference row's response in `column`.
fn response(row: &Map<String, Value>, column: &str, format: &Format) -> Result<String, Problem> {
    let content = match format.formatting {
        Formatting::Alpaca => required_str(row, column, column)?,
        Formatting::Sharegpt => {
            let item = row
                .get(column)
                .ok_or_else(|| Problem::new(column, "missing", SkipReason::MissingField))?;
            let turn = read_turn(item, column, &format.tags)?;
            if turn.side != Side::Assistant {
                return Err(out_of_order(&turn, Side::Assistant, &format.tags));
            }
            turn.content
        }
    };
    non_empty(content, column)?;
    Ok(content.to_owned())
}

fn alpaca(
    row: &Map<String, Value>,
    format: &Format,
    answer: Answer,
) -> Result<Vec<Message>, Problem> {
    let columns = &format.columns;
    let instruction = required_str(row, &columns.prompt, &columns.prompt)?;
    let input = optional_str(row, &columns.query, &columns.query)?.unwrap_or("");
    let output = match answer {
        Answer::Required => {
            let output = required_str(row, &columns.response, &columns.response)?;
            non_empty(output, &columns.response)?;
            Some(output)
        }
        Answer::Optional => optional_str(row, &columns.response, &columns.response)?
            .filter(|output| !output.trim().is_empty()),
    };
    let system = optional_str(row, &columns.system, &columns.system)?;
    let history = history(row, &columns.history)?;
    let user = [instruction, input]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if user.trim().is_empty() {
        let problem = format!("empty (and {} is empty too)", columns.query);
        return Err(Problem::new(
            &columns.prompt,
            problem,
            SkipReason::EmptyMessage,
        ));
    }
    let mut messages = system_turn(system);
    for (query, response) in history {
        messages.push(Message::new("user", query));
        messages.push(Message::new("assistant", response));
    }
    messages.push(Message::new("user", user));
    messages.extend(output.map(|output| Message::new("assistant", output)));
    Ok(messages)
}

/// Alpaca `history`: absent, null, or a list of `[query, response]` string pairs.
fn history<'a>(
    row: &'a Map<String, Value>,
    column: &str,
) -> Result<Vec<(&'a str, &'a str)>, Problem> {
    let items = match row.get(column) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            let problem = format!(
                "expected a list of [query, response] pairs, found {}",
                kind(other)
            );
            return Err(Problem::new(column, problem, SkipReason::WrongType));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("{column}[{i}]");
            match item.as_array().map(Vec::as_slice) {
                Some([Value::String(query), Value::String(response)]) => {
                    non_empty(query, &format!("{field}[0]"))?;
                    non_empty(response, &format!("{field}[1]"))?;
                    Ok((query.as_str(), response.as_str()))
                }
                _ => {
                    let problem =
                        format!("expected a [query, response] pair of strings, found {item}");
                    Err(Problem::new(&field, problem, SkipReason::WrongType))
                }
            }
        })
        .collect()
}

/// Which side of the exchange a ShareGPT turn is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    System,
    User,
    Assistant,
}

/// One ShareGPT turn, read and classified, with the field paths its errors name.
struct Turn<'a> {
    tag: &'a str,
    role_field: String,
    content_field: String,
    side: Side,
    role: &'static str,
    content: &'a str,
}

fn sharegpt(
    row: &Map<String, Value>,
    format: &Format,
    answer: Answer,
) -> Result<Vec<Message>, Problem> {
    let column = &format.columns.messages;
    let items = match row.get(column) {
        Some(Value::Array(items)) => items,
        None => return Err(Problem::new(column, "missing", SkipReason::MissingField)),
        Some(other) => {
            let problem = format!("expected a list of turns, found {}", kind(other));
            return Err(Problem::new(column, problem, SkipReason::WrongType));
        }
    };
    let turns = items
        .iter()
        .enumerate()
        .map(|(i, item)| read_turn(item, &format!("{column}[{i}]"), &format.tags))
        .collect::<Result<Vec<_>, _>>()?;
    let (system, dialogue) = match turns.split_first() {
        Some((first, rest)) if first.side == Side::System => (Some(first.content), rest),
        _ => {
            let system = optional_str(row, &format.columns.system, &format.columns.system)?;
            (system, turns.as_slice())
        }
    };
    let dialogue = match (answer, dialogue.split_last()) {
        (Answer::Optional, Some((last, before)))
            if last.side == Side::Assistant && last.content.trim().is_empty() =>
        {
            before
        }
        _ => dialogue,
    };
    let tags = &format.tags;
    let mut messages = system_turn(system);
    for (k, turn) in dialogue.iter().enumerate() {
        let expected = if k % 2 == 0 {
            Side::User
        } else {
            Side::Assistant
        };
        if turn.side != expected {
            return Err(out_of_order(turn, expected, tags));
        }
        non_empty(turn.content, &turn.content_field)?;
        messages.push(if turn.tag == tags.function {
            Message::tool_calls(tool_calls(turn.content, &turn.content_field)?)
        } else {
            Message::new(turn.role, turn.content)
        });
    }
    match dialogue.last() {
        None => Err(Problem::new(
            column,
            format!("has no {} or {} turns", tags.user, tags.assistant),
            SkipReason::EmptyMessage,
        )),
        Some(last) if last.side == Side::User && answer == Answer::Required => {
            let problem = format!(
                "the conversation ends here; it must end with a {} or {} turn (the response)",
                tags.assistant, tags.function
            );
            Err(Problem::new(
                &last.role_field,
                problem,
                SkipReason::RoleOrder,
            ))
        }
        Some(_) => Ok(messages),
    }
}

fn read_turn<'a>(item: &'a Value, field: &str, tags: &Tags) -> Result<Turn<'a>, Problem> {
    let Some(object) = item.as_object() else {
        let problem = format!("expected an object, found {}", kind(item));
        return Err(Problem::new(field, problem, SkipReason::WrongType));
    };
    let role_field = format!("{field}.{}", tags.role);
    let content_field = format!("{field}.{}", tags.content);
    let tag = required_str(object, &tags.role, &role_field)?;
    let content = required_str(object, &tags.content, &content_field)?;
    let Some((side, role)) = role_of(tag, tags) else {
        let problem = format!(
            "unknown role {tag:?} (expected {}, {}, {}, {} or {})",
            tags.user, tags.assistant, tags.observation, tags.function, tags.system
        );
        return Err(Problem::new(&role_field, problem, SkipReason::UnknownRole));
    };
    Ok(Turn {
        tag,
        role_field,
        content_field,
        side,
        role,
        content,
    })
}

/// A ShareGPT role tag's side and chat role, or None for a tag the format does not name.
fn role_of(tag: &str, tags: &Tags) -> Option<(Side, &'static str)> {
    if tag == tags.user {
        Some((Side::User, "user"))
    } else if tag == tags.observation {
        Some((Side::User, "tool"))
    } else if tag == tags.assistant || tag == tags.function {
        Some((Side::Assistant, "assistant"))
    } else if tag == tags.system {
        Some((Side::System, "system"))
    } else {
        None
    }
}

fn out_of_order(turn: &Turn, expected: Side, tags: &Tags) -> Problem {
    let found = turn.tag;
    let problem = if turn.side == Side::System {
        format!(
            "{found:?} is out of order: a {} turn may only come first",
            tags.system
        )
    } else {
        let (one, other) = match expected {
            Side::User => (&tags.user, &tags.observation),
            _ => (&tags.assistant, &tags.function),
        };
        format!(
            "{found:?} is out of order: expected a {one} or {other} turn here (turns alternate)"
        )
    };
    Problem::new(&turn.role_field, problem, SkipReason::RoleOrder)
}

fn system_turn(system: Option<&str>) -> Vec<Message> {
    system
        .filter(|s| !s.trim().is_empty())
        .map(|s| Message::new("system", s))
        .into_iter()
        .collect()
}

fn non_empty(text: &str, field: &str) -> Result<(), Problem> {
    if text.trim().is_empty() {
        return Err(Problem::new(field, "empty", SkipReason::EmptyMessage));
    }
    Ok(())
}

/// A string field that must be present.
fn required_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a str, Problem> {
    match object.get(key) {
        None => Err(Problem::new(field, "missing", SkipReason::MissingField)),
        Some(value) => as_str(value, field),
    }
}

/// A string field that may be absent or null.
fn optional_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, Problem> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => as_str(value, field).map(Some),
    }
}

fn as_str<'a>(value: &'a Value, field: &str) -> Result<&'a str, Problem> {
    value.as_str().ok_or_else(|| {
        let problem = format!("expected a string, found {}", kind(value));
        Problem::new(field, problem, SkipReason::WrongType)
    })
}

/// A JSON value's kind, for messages.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
