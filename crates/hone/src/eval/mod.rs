//! Evaluation: metrics that say how well a model fits or answers held-out data.

pub mod compare;
pub mod generate;
pub mod metrics;
pub mod perplexity;

/// How an error message names a JSON value's type ("a number", "an array", ...).
pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
