//! A [`Comparison`] as one self-contained HTML page: inline CSS, no scripts, fonts or images, so it
//! opens the same anywhere, offline. Every text from the data, models or files is HTML-escaped.

use std::fmt::Write;

use super::summary::{row_scores_text, settings_rows, summary_note, summary_rows};
use super::{AdapterSettings, Answer, Comparison, RowReport};
use crate::chat::Message;

const STYLE: &str = r#"
:root { --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --alt: #f6f8fa; --accent: #0969da;
        --best: #dafbe1; --ref: #fff8e1; }
* { box-sizing: border-box; }
body { margin: 0; padding: 32px 40px 48px; color: var(--fg); background: #fff;
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC",
       "PingFang SC", "Hiragino Sans", "Microsoft YaHei", sans-serif; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: var(--muted); margin: 0; }
code, pre { font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
code { background: var(--alt); padding: 1px 5px; border-radius: 4px; overflow-wrap: anywhere; }
table { border-collapse: collapse; }
th, td { border: 1px solid var(--line); padding: 8px 10px; vertical-align: top; text-align: left; }
thead th { background: var(--alt); font-weight: 600; }
.summary td { text-align: right; font-variant-numeric: tabular-nums; min-width: 120px; }
.summary td.best { background: var(--best); font-weight: 600; }
.summary tbody th, .settings th { font-weight: 500; background: var(--alt); }
.settings th { width: 200px; }
.note { color: var(--muted); font-size: 13px; margin: 8px 0 0; }
.answers { width: 100%; table-layout: fixed; }
.answers col.num { width: 64px; }
.answers tbody tr:nth-child(even) { background: #fbfcfd; }
.answers td.ref { background: var(--ref); }
.text { white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word; }
.origin { color: var(--muted); font-size: 11px; overflow-wrap: anywhere; }
.turn + .turn { margin-top: 6px; }
.role { display: block; color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .04em; }
.scores { margin-top: 8px; color: var(--muted); font-size: 12px; font-variant-numeric: tabular-nums; }
.empty { color: var(--muted); font-style: italic; }
details { margin: 10px 0; }
summary { cursor: pointer; color: var(--accent); }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: var(--alt); padding: 12px 14px;
      border-radius: 6px; margin: 8px 0 0; }
"#;

/// The page.
pub fn render(comparison: &Comparison) -> String {
    let labels: Vec<&str> = comparison.models.iter().map(|m| m.label.as_str()).collect();
    let mut page = String::new();
    page += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
    page += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
    let _ = writeln!(
        page,
        "<title>Hone comparison: {}</title>",
        escape(&labels.join(" vs "))
    );
    let _ = writeln!(page, "<style>{STYLE}</style>\n</head>\n<body>");
    page += &header(comparison);
    page += &summary(comparison);
    page += &answers(comparison);
    page += &settings(comparison);
    page += "</body>\n</html>\n";
    page
}

/// `&`, `<`, `>`, `"` and `'` as character references: safe in text and in quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            c => out.push(c),
        }
    }
    out
}

fn header(comparison: &Comparison) -> String {
    let settings = &comparison.settings;
    format!(
        "<header>\n<h1>Model comparison</h1>\n<p class=\"meta\">Base model <code>{}</code> · \
         prompts <code>{}</code> · {} rows · {} models</p>\n</header>\n",
        escape(&settings.base_model),
        escape(&settings.prompts_file.display().to_string()),
        comparison.rows.len(),
        comparison.models.len()
    )
}

fn summary(comparison: &Comparison) -> String {
    let mut out = String::from("<section>\n<h2>Summary</h2>\n<table class=\"summary\">\n");
    out += &label_row("<th></th>", comparison);
    out += "<tbody>\n";
    let rows = summary_rows(comparison);
    for row in &rows {
        let _ = write!(out, "<tr><th>{}</th>", escape(row.name));
        let best = row.best();
        for (i, value) in row.values.iter().enumerate() {
            let class = if best == Some(i) {
                " class=\"best\""
            } else {
                ""
            };
            let text = value.map_or_else(|| "–".to_owned(), |v| format!("{v:.*}", row.decimals));
            let _ = write!(out, "<td{class}>{text}</td>");
        }
        out += "</tr>\n";
    }
    out += "</tbody>\n</table>\n";
    if let Some(note) = summary_note(&rows) {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(note));
    }
    out + "</section>\n"
}

/// A table head row: `first` cell(s), then one cell per model label.
fn label_row(first: &str, comparison: &Comparison) -> String {
    let mut out = format!("<thead><tr>{first}");
    for model in &comparison.models {
        let _ = write!(out, "<th>{}</th>", escape(&model.label));
    }
    out + "</tr></thead>\n"
}

fn answers(comparison: &Comparison) -> String {
    let with_reference = comparison.rows.iter().any(|r| r.reference.is_some());
    let mut out = String::from("<section>\n<h2>Answers</h2>\n<table class=\"answers\">\n");
    out += "<colgroup><col class=\"num\"><col>";
    if with_reference {
        out += "<col>";
    }
    out += &"<col>".repeat(comparison.models.len());
    out += "</colgroup>\n";
    let reference_head = if with_reference {
        "<th>Reference</th>"
    } else {
        ""
    };
    out += &label_row(
        &format!("<th>#</th><th>Prompt</th>{reference_head}"),
        comparison,
    );
    out += "<tbody>\n";
    for (i, row) in comparison.rows.iter().enumerate() {
        out += &answer_row(i + 1, row, with_reference);
    }
    out + "</tbody>\n</table>\n</section>\n"
}

fn answer_row(number: usize, row: &RowReport, with_reference: bool) -> String {
    // The file is in the page's header; the line is enough here, the full origin a tooltip.
    let mut out = format!(
        "<tr><td>{number}<div class=\"origin\" title=\"{}\">line {}</div></td><td>{}</td>",
        escape(&row.origin.to_string()),
        row.origin.line,
        prompt(&row.prompt)
    );
    if with_reference {
        match &row.reference {
            Some(reference) => {
                let _ = write!(out, "<td class=\"ref\">{}</td>", text_block(reference));
            }
            None => out += "<td class=\"ref\"><span class=\"empty\">no reference</span></td>",
        }
    }
    for answer in &row.answers {
        out += &answer_cell(answer);
    }
    out + "</tr>\n"
}

/// The prompt's turns: a lone user turn as its text, a longer conversation turn by turn.
fn prompt(messages: &[Message]) -> String {
    if let [only] = messages {
        return text_block(&only.content);
    }
    messages
        .iter()
        .map(|m| {
            format!(
                "<div class=\"turn\"><span class=\"role\">{}</span>{}</div>",
                escape(&m.role),
                text_block(&m.content)
            )
        })
        .collect()
}

fn answer_cell(answer: &Answer) -> String {
    let mut out = String::from("<td>");
    out += &text_block(&answer.text);
    if let Some(scores) = &answer.scores {
        let _ = write!(
            out,
            "<div class=\"scores\">{}</div>",
            escape(&row_scores_text(scores))
        );
    }
    out + "</td>"
}

/// Text with its line breaks and spacing kept; an empty text says so.
fn text_block(text: &str) -> String {
    if text.trim().is_empty() {
        return "<span class=\"empty\">(empty)</span>".to_owned();
    }
    format!("<div class=\"text\">{}</div>", escape(text))
}

fn settings(comparison: &Comparison) -> String {
    let mut out = String::from("<section>\n<h2>Settings</h2>\n");
    out += &key_value_table(
        settings_rows(comparison)
            .iter()
            .map(|(k, v)| (*k, v.as_str())),
    );
    for model in &comparison.models {
        if let Some(adapter) = &model.adapter {
            out += &adapter_settings(&model.label, adapter);
        }
    }
    out + "</section>\n"
}

fn adapter_settings(label: &str, adapter: &AdapterSettings) -> String {
    let mut out = format!(
        "<h3>{} <span class=\"meta\">adapter <code>{}</code></span></h3>\n",
        escape(label),
        escape(&adapter.dir.display().to_string())
    );
    out += &key_value_table(adapter.config.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some((path, text)) = &adapter.training_args {
        let _ = writeln!(
            out,
            "<details><summary>{}</summary><pre>{}</pre></details>",
            escape(&path.display().to_string()),
            escape(text)
        );
    }
    out
}

fn key_value_table<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("<table class=\"settings\">\n<tbody>\n");
    for (key, value) in pairs {
        let _ = writeln!(
            out,
            "<tr><th>{}</th><td class=\"text\">{}</td></tr>",
            escape(key),
            escape(value)
        );
    }
    out + "</tbody>\n</table>\n"
}

#[cfg(test)]
mod tests;
