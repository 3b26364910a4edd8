//! A [`Comparison`] as Markdown (GitHub-flavoured: pipe tables, `<details>`): the summary table,
//! then each row's prompt, reference and answers as fenced blocks, then the settings. Texts from
//! the data go into fences long enough that nothing inside can close them; short texts in tables
//! and headings are escaped.

use std::fmt::Write;

use super::summary::{row_scores_text, settings_rows, summary_note, summary_rows};
use super::{AdapterSettings, Comparison, RowReport};

/// The document.
pub fn render(comparison: &Comparison) -> String {
    let settings = &comparison.settings;
    let mut out = String::from("# Model comparison\n\n");
    let _ = writeln!(
        out,
        "Base model {} · prompts {} · {} rows · {} models\n",
        inline(&settings.base_model),
        inline(&settings.prompts_file.display().to_string()),
        comparison.rows.len(),
        comparison.models.len()
    );
    out += &summary(comparison);
    out += "## Answers\n\n";
    for (i, row) in comparison.rows.iter().enumerate() {
        out += &row_section(i + 1, row, comparison);
    }
    out += &settings_section(comparison);
    out
}

fn summary(comparison: &Comparison) -> String {
    let mut out = String::from("## Summary\n\n|");
    for model in &comparison.models {
        let _ = write!(out, " | {}", inline(&model.label));
    }
    out += " |\n|---";
    out += &"|---:".repeat(comparison.models.len());
    out += "|\n";
    let rows = summary_rows(comparison);
    for row in &rows {
        let _ = write!(out, "| {}", inline(row.name));
        let best = row.best();
        for (i, value) in row.values.iter().enumerate() {
            let text = value.map_or_else(|| "–".to_owned(), |v| format!("{v:.*}", row.decimals));
            let text = if best == Some(i) {
                format!("**{text}**")
            } else {
                text
            };
            let _ = write!(out, " | {text}");
        }
        out += " |\n";
    }
    out.push('\n');
    if let Some(note) = summary_note(&rows) {
        let _ = writeln!(out, "{note}\n");
    }
    out
}

fn row_section(number: usize, row: &RowReport, comparison: &Comparison) -> String {
    let mut out = format!("### {number}. {}\n\n", inline(&row.origin.to_string()));
    out += "**Prompt**\n\n";
    if let [only] = row.prompt.as_slice() {
        out += &fenced(&only.content, "text");
    } else {
        for message in &row.prompt {
            let _ = writeln!(out, "*{}*\n", inline(&message.role));
            out += &fenced(&message.content, "text");
        }
    }
    if let Some(reference) = &row.reference {
        out += "**Reference**\n\n";
        out += &fenced(reference, "text");
    }
    for (model, answer) in comparison.models.iter().zip(&row.answers) {
        let _ = write!(out, "**{}**", inline(&model.label));
        if let Some(scores) = &answer.scores {
            let _ = write!(out, " — {}", row_scores_text(scores));
        }
        out += "\n\n";
        out += &fenced(&answer.text, "text");
    }
    out
}

fn settings_section(comparison: &Comparison) -> String {
    let mut out = String::from("## Settings\n\n");
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
    out
}

fn adapter_settings(label: &str, adapter: &AdapterSettings) -> String {
    let mut out = format!(
        "### {} (adapter {})\n\n",
        inline(label),
        inline(&adapter.dir.display().to_string())
    );
    out += &key_value_table(adapter.config.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some((path, text)) = &adapter.training_args {
        // HTML inside `<summary>`: escaped as HTML, not as Markdown.
        let _ = writeln!(
            out,
            "<details><summary>{}</summary>\n",
            super::html::escape(&path.display().to_string())
        );
        out += &fenced(text, "yaml");
        out += "</details>\n\n";
    }
    out
}

fn key_value_table<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("| setting | value |\n|---|---|\n");
    for (key, value) in pairs {
        let _ = writeln!(out, "| {} | {} |", inline(key), inline(value));
    }
    out + "\n"
}

/// `text` as a fenced code block: the fence is a run of backticks longer than any inside the text,
/// so the text cannot end the block early.
pub fn fenced(text: &str, info: &str) -> String {
    let longest_run = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run.max(2) + 1);
    let newline = if text.ends_with('\n') { "" } else { "\n" };
    format!("{fence}{info}\n{text}{newline}{fence}\n\n")
}

/// A short text for a heading, a paragraph or a table cell: on one line, with every character
/// Markdown (or inline HTML) could read as markup backslash-escaped, `|` included for tables.
pub fn inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '|' | '~' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
