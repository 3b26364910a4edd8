//! The aggregate figures of a comparison, one row per figure and one column per model: the table
//! every report leads with, and, as plain text, what `hone compare` prints.

use super::metrics::{diversity, Lang};
use super::{Comparison, ModelRun, Scores};
use crate::model::Precision;

/// Which way a figure improves, to mark the best model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Speed: it depends on the machine as much as on the model, so no model is marked.
    Unranked,
}

/// A text score's name and how to read it from a model's scores.
type ScoreColumn = (&'static str, fn(&Scores) -> f64);

/// One figure for every model (None where a model has no value).
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub name: &'static str,
    pub values: Vec<Option<f64>>,
    pub better: Better,
    /// Decimals a report shows (the text table shows 4, as `hone eval` does).
    pub decimals: usize,
}

impl SummaryRow {
    /// The index of the model with the best value, when the figure is ranked and at least two
    /// models have values that are not all equal.
    pub fn best(&self) -> Option<usize> {
        let present: Vec<(usize, f64)> = self
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i, (*v)?)))
            .collect();
        let sign = match self.better {
            Better::Higher => 1.0,
            Better::Lower => -1.0,
            Better::Unranked => return None,
        };
        let (first, rest) = present.split_first()?;
        if rest.is_empty() || rest.iter().all(|(_, v)| v == &first.1) {
            return None;
        }
        present
            .iter()
            .max_by(|a, b| (sign * a.1).total_cmp(&(sign * b.1)))
            .map(|&(i, _)| i)
    }
}

/// The figures present in `comparison`: text scores when rows have references, the reference
/// answers' perplexity, the held-out data's perplexity when measured, then generation speed.
pub fn summary_rows(comparison: &Comparison) -> Vec<SummaryRow> {
    let models = &comparison.models;
    let column = |f: &dyn Fn(&ModelRun) -> Option<f64>| models.iter().map(f).collect::<Vec<_>>();
    let mut rows = Vec::new();
    if models.iter().any(|m| m.scores.is_some()) {
        let scores: [ScoreColumn; 7] = [
            ("BLEU", |s| s.bleu),
            ("ROUGE-1", |s| s.rouge1),
            ("ROUGE-2", |s| s.rouge2),
            ("ROUGE-L", |s| s.rouge_l),
            ("BLEU-4 (sentence)", |s| s.bleu4_sentence_avg),
            ("exact match", |s| s.exact_match),
            ("F1", |s| s.f1),
        ];
        for (name, get) in scores {
            rows.push(SummaryRow {
                name,
                values: column(&|m| m.scores.as_ref().map(get)),
                better: Better::Higher,
                decimals: 2,
            });
        }
    }
    for (i, (name, higher)) in diversity::FIGURES.into_iter().enumerate() {
        rows.push(SummaryRow {
            name,
            values: column(&|m| Some(m.diversity.values()[i])),
            better: if higher {
                Better::Higher
            } else {
                Better::Lower
            },
            decimals: 2,
        });
    }
    if models.iter().any(|m| m.answer_perplexity.is_some()) {
        rows.push(SummaryRow {
            name: "answer perplexity",
            values: column(&|m| m.answer_perplexity.as_ref().map(|p| p.perplexity)),
            better: Better::Lower,
            decimals: 3,
        });
    }
    if models.iter().any(|m| m.data_perplexity.is_some()) {
        rows.push(SummaryRow {
            name: "data perplexity",
            values: column(&|m| m.data_perplexity.as_ref().map(|p| p.perplexity)),
            better: Better::Lower,
            decimals: 3,
        });
    }
    rows.push(SummaryRow {
        name: "generation seconds",
        values: column(&|m| Some(m.seconds)),
        better: Better::Unranked,
        decimals: 1,
    });
    rows.push(SummaryRow {
        name: "rows/s",
        values: column(&|m| Some(m.rows_per_second)),
        better: Better::Unranked,
        decimals: 3,
    });
    rows
}

/// How the comparison was run, as (setting, value) pairs for the reports' settings table.
pub fn settings_rows(comparison: &Comparison) -> Vec<(&'static str, String)> {
    let settings = &comparison.settings;
    let with_reference = comparison
        .rows
        .iter()
        .filter(|r| r.reference.is_some())
        .count();
    let metrics = match settings.score_options.lang {
        Lang::En => "en: sacrebleu 13a, rouge-score",
        Lang::Zh => "zh: sacrebleu zh, jieba ROUGE (LLaMA-Factory's)",
    };
    let stemmer = if settings.score_options.stemmer {
        ", Porter stemmer"
    } else {
        ""
    };
    let mut rows = vec![
        ("base model", settings.base_model.clone()),
        (
            "prompts",
            format!(
                "{} ({} rows, {with_reference} with a reference)",
                settings.prompts_file.display(),
                comparison.rows.len()
            ),
        ),
        (
            "decoding",
            format!(
                "greedy, at most {} new tokens, batches of {}",
                settings.max_new_tokens, settings.batch_size
            ),
        ),
        (
            "chat template",
            settings
                .chat_template
                .as_ref()
                .map_or_else(|| "the model's own".to_owned(), |p| p.display().to_string()),
        ),
        ("metrics", format!("{metrics}{stemmer}")),
        (
            "weights",
            match settings.precision {
                Precision::Stored => "as stored in the model file".to_owned(),
                Precision::Exact => "expanded to f32 (--exact)".to_owned(),
            },
        ),
    ];
    let measured = |m: &ModelRun| m.answer_perplexity.is_some() || m.data_perplexity.is_some();
    if comparison.models.iter().any(measured) {
        let text = format!(
            "sequences cut to {} tokens; answer perplexity scores the reference answer's tokens \
             given the prompt",
            settings.max_length
        );
        rows.push(("perplexity", text));
    }
    if let Some(path) = &settings.perplexity_data {
        rows.push(("perplexity data", path.display().to_string()));
    }
    rows
}

/// The reports' note under the summary table, when it has figures to explain.
pub fn summary_note(rows: &[SummaryRow]) -> Option<&'static str> {
    rows.iter().any(|r| r.better != Better::Unranked).then_some(
        "Scores are 0–100 (higher is better) over the rows with a reference; perplexity is \
             lower-better. The best model of each figure is in bold.",
    )
}

/// An answer's own scores against its row's reference, as the reports show them under it.
pub fn row_scores_text(scores: &Scores) -> String {
    format!("BLEU {:.2} · ROUGE-L {:.2}", scores.bleu, scores.rouge_l)
}

/// The summary as an aligned plain-text table (4 decimals, as `hone eval` prints scores; `-`
/// where a model has no value).
pub fn text_table(comparison: &Comparison) -> String {
    const NAME_WIDTH: usize = 20;
    let widths: Vec<usize> = comparison
        .models
        .iter()
        .map(|m| m.label.chars().count().max(12) + 2)
        .collect();
    let mut out = format!("{:<NAME_WIDTH$}", "");
    for (model, width) in comparison.models.iter().zip(&widths) {
        out += &format!("{:>width$}", model.label);
    }
    out.push('\n');
    for row in summary_rows(comparison) {
        out += &format!("{:<NAME_WIDTH$}", row.name);
        for (value, width) in row.values.iter().zip(&widths) {
            let text = value.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
            out += &format!("{text:>width$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<f64>], better: Better) -> SummaryRow {
        SummaryRow {
            name: "x",
            values: values.to_vec(),
            better,
            decimals: 2,
        }
    }

    #[test]
    fn the_best_model_is_marked_only_where_models_differ() {
        let values = [Some(3.0), None, Some(5.0), Some(4.0)];
        assert_eq!(row(&values, Better::Higher).best(), Some(2));
        assert_eq!(row(&values, Better::Lower).best(), Some(0));
        assert_eq!(row(&values, Better::Unranked).best(), None);
        assert_eq!(row(&[Some(2.0), Some(2.0)], Better::Higher).best(), None);
        assert_eq!(row(&[Some(2.0), None], Better::Higher).best(), None);
    }
}
