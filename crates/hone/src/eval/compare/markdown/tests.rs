//! The Markdown report: texts from the data only inside fences they cannot close, escaped
//! elsewhere; the summary table with the best figures in bold; rows with and without references.

use super::*;
use crate::eval::compare::sample::{self, SCRIPT};

/// The lines outside fenced blocks, and each fenced block's content.
fn split_fences(doc: &str) -> (Vec<&str>, Vec<String>) {
    let (mut outside, mut blocks) = (Vec::new(), Vec::new());
    let mut open: Option<(String, Vec<&str>)> = None;
    for line in doc.lines() {
        match &mut open {
            Some((fence, content)) if line == fence => {
                blocks.push(content.join("\n"));
                open = None;
            }
            Some((_, content)) => content.push(line),
            None if line.starts_with("```") => {
                let fence: String = line.chars().take_while(|&c| c == '`').collect();
                open = Some((fence, Vec::new()));
            }
            None => outside.push(line),
        }
    }
    assert!(open.is_none(), "an unclosed fence");
    (outside, blocks)
}

#[test]
fn a_fence_outlasts_any_backticks_in_the_text() {
    assert_eq!(fenced("plain", "text"), "```text\nplain\n```\n\n");
    assert_eq!(
        fenced("a ``` b ````\n", ""),
        "`````\na ``` b ````\n`````\n\n"
    );
}

#[test]
fn inline_text_escapes_markup_and_stays_on_one_line() {
    assert_eq!(
        inline("a|b <i>*x*</i> & [l](u)\nnext"),
        r"a\|b \<i\>\*x\*\</i\> \& \[l\](u) next"
    );
    assert_eq!(inline("你好"), "你好");
}

#[test]
fn data_texts_are_fenced_verbatim_and_markup_appears_nowhere_else() {
    let doc = render(&sample::comparison());
    let (outside, blocks) = split_fences(&doc);
    assert!(blocks.contains(&format!("Say {SCRIPT} & 'quote'")));
    assert!(blocks.contains(&"Hello ```fenced``` there".to_owned()));
    assert!(blocks.contains(&"I'm Kestrel.\n\nSecond line".to_owned()));
    assert!(blocks.contains(&"你好，你是谁？".to_owned()));
    assert!(blocks.contains(&"lora_rank: 8\ntemplate: <b>bold</b>".to_owned()));
    for line in outside {
        let markup = line
            .replace("<details><summary>", "")
            .replace("</summary>", "");
        let markup = markup.replace("</details>", "");
        assert!(
            !markup.contains('<') || markup.contains("\\<"),
            "unescaped markup: {line}"
        );
    }
}

#[test]
fn the_summary_table_bolds_the_best_model() {
    let doc = render(&sample::comparison());
    assert!(
        doc.contains("## Summary\n\n| | base | \\<lora\\> |\n|---|---:|---:|\n"),
        "{doc}"
    );
    assert!(doc.contains("| BLEU | 10.00 | **40.00** |\n"));
    assert!(doc.contains("| answer perplexity | 30.500 | **3.500** |\n"));
    assert!(doc.contains("| generation seconds | 4.0 | 5.0 |\n"));
    assert!(doc.contains("| distinct-1 | 50.00 | **60.00** |\n"));
}

#[test]
fn rows_show_the_reference_and_each_answer_with_its_scores() {
    let doc = render(&sample::comparison());
    let first = doc
        .split("### 1. ")
        .nth(1)
        .unwrap()
        .split("### 2. ")
        .next()
        .unwrap();
    assert!(first.contains("**Reference**\n\n```text\nI'm \"Kestrel\" & <b>friends</b>\n```"));
    assert!(first.contains("**\\<lora\\>** — BLEU 55.50 · ROUGE-L 66.75\n\n```text\nI'm Kestrel."));
    let second = doc
        .split("### 2. ")
        .nth(1)
        .unwrap()
        .split("### 3. ")
        .next()
        .unwrap();
    assert!(!second.contains("Reference"), "{second}");
    assert!(second.contains("**base**\n\n```text\n我是一个助手。\n```"));
    assert!(
        second.contains("**\\<lora\\>**\n\n```text\n\n```"),
        "an empty answer is an empty block"
    );
    let third = doc.split("### 3. ").nth(1).unwrap();
    assert!(third.contains("*system*\n\n```text\nBe brief.\n```"));
}
