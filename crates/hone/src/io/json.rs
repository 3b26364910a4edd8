//! JSON text as the Hugging Face libraries write their files (`config.json`,
//! `adapter_config.json`, `tokenizer_config.json`, …): `json.dumps(..., indent=2,
//! sort_keys=True)`. Hone's JSON objects otherwise keep their keys' order, as Python's dicts do, so
//! the sorting is done here, explicitly, where the anchors sort.

use serde_json::Value;

/// `value` with every object's keys sorted, at every depth.
pub fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// `value` indented by two spaces with sorted keys, as the HF libraries save it.
pub fn sorted_pretty(value: &Value) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&sort_keys(value.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_at_every_depth_and_lists_keep_their_order() {
        let value: Value =
            serde_json::from_str(r#"{"b": {"y": 1, "x": [{"d": 0, "c": 1}]}, "a": [3, 1]}"#)
                .unwrap();
        assert_eq!(
            serde_json::to_string(&sort_keys(value)).unwrap(),
            r#"{"a":[3,1],"b":{"x":[{"c":1,"d":0}],"y":1}}"#
        );
    }
}
