//! The `tojson` filter as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
//! indent=None, separators=None, sort_keys=False)`, with those four as keyword arguments.
//!
//! minijinja's own `tojson` escapes HTML characters and writes compact separators; templates that put
//! tool schemas or arguments in the prompt need Python's exact text (`{"a": 1, "b": [1, 2]}`).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

struct Style {
    /// None: one line. Some(unit): a newline before each item, indented by `unit` per level.
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

pub(super) fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.is_integer() => Some(" ".repeat(v.as_usize().unwrap_or(0))),
        Some(v) => Some(
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid("indent must be an int or a string"))?,
        ),
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(pair) => match &pair[..] {
            [item, key] => (item.clone(), key.clone()),
            _ => return Err(invalid("separators must be a pair of strings")),
        },
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = Style {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_value(&mut out, value, &style, 0)?;
    Ok(Value::from(out))
}

fn invalid(message: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("tojson: {message}"))
}

fn write_value(out: &mut String, value: &Value, style: &Style, level: usize) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => out.push_str(&py_float(f64::try_from(value.clone())?)),
        ValueKind::String => {
            write_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), &items, style, level, |out, item, level| {
                write_value(out, item, style, level)
            })?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((map_key(&key)?, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(
                out,
                ('{', '}'),
                &entries,
                style,
                level,
                |out, (key, item), level| {
                    write_string(out, key, style.ensure_ascii);
                    out.push_str(&style.key_sep);
                    write_value(out, item, style, level)
                },
            )?;
        }
        kind => {
            return Err(invalid(&format!(
                "an {kind} value is not JSON serializable"
            )))
        }
    }
    Ok(())
}

/// Python turns non-string keys into strings: numbers as written, booleans and None as JSON words.
fn map_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None | ValueKind::Bool | ValueKind::Number => {
            let mut text = String::new();
            write_value(&mut text, key, &Style::compact(), 0)?;
            Ok(text)
        }
        kind => Err(invalid(&format!(
            "keys must be str, int, float, bool or None, not {kind}"
        ))),
    }
}

impl Style {
    fn compact() -> Style {
        Style {
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            ensure_ascii: false,
            sort_keys: false,
        }
    }
}

fn write_container<T>(
    out: &mut String,
    (open, close): (char, char),
    items: &[T],
    style: &Style,
    level: usize,
    mut write_item: impl FnMut(&mut String, &T, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(unit) = &style.indent {
            out.push('\n');
            out.push_str(&unit.repeat(depth));
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_sep);
        }
        newline(out, level + 1);
        write_item(out, item, level + 1)?;
    }
    newline(out, level);
    out.push(close);
    Ok(())
}

fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, positional between 1e-4 and 1e16, else
/// `d.ddde+XX`; `json.dumps` spells the non-finite values NaN/Infinity.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    // `{:e}` gives the shortest round-trip digits: "1.2345e-5", "3e0".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always writes an exponent");
    let exp: i32 = exp.parse().expect("{:e} writes an integer exponent");
    let digits = mantissa.replace('.', "");
    let body = if (-4..16).contains(&exp) {
        if exp < 0 {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else {
            let point = exp as usize + 1;
            let padded = format!("{digits:0<point$}");
            let (int, frac) = padded.split_at(point);
            format!("{int}.{}", if frac.is_empty() { "0" } else { frac })
        }
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{exp_sign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::Environment;

    /// Renders `{{ <expr> | tojson(<args>) }}` with the filter installed and `s` = `text`.
    fn dumps(expr: &str, args: &str, text: &str) -> String {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        let source = format!("{{{{ {expr} | tojson({args}) }}}}");
        env.render_str(&source, minijinja::context! { s => text })
            .unwrap()
    }

    // Expected strings are Python's json.dumps with transformers' defaults. Dict literals keep their
    // order (minijinja's preserve_order), as Python dicts do.
    #[test]
    fn matches_python_defaults() {
        let text = "x\"\\\n\t\u{1}é🦀\u{7f}\u{2028}";
        let python =
            "{\"b\": [1, 2.5, null, true], \"a\": \"x\\\"\\\\\\n\\t\\u0001é🦀\u{7f}\u{2028}\"}";
        assert_eq!(
            dumps(r#"{"b": [1, 2.5, none, true], "a": s}"#, "", text),
            python
        );
    }

    #[test]
    fn matches_python_options() {
        let x = r#"{"b": [1, 2.5, none, true], "a": "x"}"#;
        assert_eq!(
            dumps(x, "indent=2", ""),
            "{\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"a\": \"x\"\n}"
        );
        assert_eq!(
            dumps(r#"{"b": {}, "a": []}"#, "indent=2, sort_keys=true", ""),
            "{\n  \"a\": [],\n  \"b\": {}\n}"
        );
        assert_eq!(
            dumps("s", "ensure_ascii=true", "é🦀\u{2028}"),
            "\"\\u00e9\\ud83e\\udd80\\u2028\""
        );
        assert_eq!(
            dumps(r#"{"k": 1}"#, "separators=[',', ':']", ""),
            "{\"k\":1}"
        );
        let nested = r#"[[1, [2]], {"a": {"b": 1}}]"#;
        let python = "[\n\t[\n\t\t1,\n\t\t[\n\t\t\t2\n\t\t]\n\t],\n\t{\n\t\t\"a\": {\n\t\t\t\"b\": 1\n\t\t}\n\t}\n]";
        assert_eq!(dumps(nested, "indent='\t'", ""), python);
    }

    #[test]
    fn floats_match_python_repr() {
        let floats = [
            1e16,
            1e-5,
            0.0001,
            123456789012345.6,
            -0.0,
            1.5e300,
            3.0,
            0.1,
            1e22,
            5e-324,
            f64::INFINITY,
            f64::NAN,
        ];
        let x = Value::from(floats.iter().map(|&f| Value::from(f)).collect::<Vec<_>>());
        let mut out = String::new();
        write_value(&mut out, &x, &Style::compact(), 0).unwrap();
        let python = "[1e+16, 1e-05, 0.0001, 123456789012345.6, -0.0, 1.5e+300, 3.0, 0.1, 1e+22, 5e-324, Infinity, NaN]";
        assert_eq!(out, python);
    }

    #[test]
    fn rejects_unknown_arguments_and_undefined() {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        assert!(env.render_str("{{ 1 | tojson(colour=1) }}", ()).is_err());
        assert!(env.render_str("{{ nothing | tojson }}", ()).is_err());
    }
}
