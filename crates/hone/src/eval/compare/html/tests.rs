//! The HTML report: every text escaped (no markup from the data survives), a self-contained page,
//! the side-by-side table with and without references, Chinese text, the best figures marked.

use super::*;
use crate::eval::compare::sample::{self, SCRIPT};

#[test]
fn escape_covers_markup_and_both_quotes() {
    assert_eq!(
        escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
        "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
    );
    assert_eq!(escape("你好 ok"), "你好 ok");
}

#[test]
fn no_text_from_the_data_becomes_markup() {
    let page = render(&sample::comparison());
    assert!(!page.contains("<script"), "a script tag got through");
    assert!(!page.contains("<b>"), "a bold tag got through");
    assert!(!page.contains("<lora>"), "a label got through unescaped");
    assert!(page.contains(&escape(SCRIPT)));
    assert!(page
        .contains("Say &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;quote&#39;"));
    assert!(page.contains("<code>models/a&amp;b.gguf</code>"));
    assert!(page.contains("data/prompts &quot;q&quot;.jsonl"));
    assert!(page.contains("<th>&lt;lora&gt;</th>"));
    assert!(page.contains("<pre>lora_rank: 8\ntemplate: &lt;b&gt;bold&lt;/b&gt;\n</pre>"));
}

#[test]
fn the_page_is_self_contained_utf8_and_balanced() {
    let page = render(&sample::comparison());
    assert!(
        page.starts_with("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">")
    );
    assert!(page.ends_with("</body>\n</html>\n"));
    for external in ["<link", "src=", "url(", "@import", "http:", "https:"] {
        assert!(
            !page.contains(external),
            "{external} in a self-contained page"
        );
    }
    for tag in [
        "table", "tr", "td", "th", "div", "section", "details", "pre", "code", "thead", "tbody",
    ] {
        let opened =
            page.matches(&format!("<{tag}>")).count() + page.matches(&format!("<{tag} ")).count();
        let closed = page.matches(&format!("</{tag}>")).count();
        assert_eq!(
            opened, closed,
            "<{tag}> opened {opened} times, closed {closed}"
        );
    }
    assert!(page.contains("white-space: pre-wrap"));
}

#[test]
fn rows_show_prompt_reference_answers_and_their_scores_side_by_side() {
    let page = render(&sample::comparison());
    let head = "<thead><tr><th>#</th><th>Prompt</th><th>Reference</th><th>base</th><th>&lt;lora&gt;</th></tr></thead>";
    assert!(page.contains(head), "{page}");
    assert!(page.contains("<div class=\"text\">I&#39;m Kestrel.\n\nSecond line</div><div class=\"scores\">BLEU 55.50 · ROUGE-L 66.75</div>"));
    // The Chinese row has no reference and an empty answer.
    assert!(page.contains(
        "<td><div class=\"text\">你好，你是谁？</div></td><td class=\"ref\"><span class=\"empty\">no reference</span></td>\
         <td><div class=\"text\">我是一个助手。</div></td><td><span class=\"empty\">(empty)</span></td>"
    ));
    // A multi-turn prompt shows each turn with its role.
    assert!(page.contains("<div class=\"turn\"><span class=\"role\">assistant</span><div class=\"text\">Hello!</div></div>"));
}

#[test]
fn the_summary_marks_the_best_model_of_each_ranked_figure() {
    let page = render(&sample::comparison());
    assert!(page.contains("<tr><th>BLEU</th><td>10.00</td><td class=\"best\">40.00</td></tr>"));
    assert!(page.contains(
        "<tr><th>answer perplexity</th><td>30.500</td><td class=\"best\">3.500</td></tr>"
    ));
    assert!(page.contains(
        "<tr><th>data perplexity</th><td class=\"best\">20.250</td><td>21.000</td></tr>"
    ));
    assert!(page.contains("<tr><th>rows/s</th><td>0.750</td><td>0.600</td></tr>"));
    assert!(
        page.contains("<tr><th>distinct-2</th><td>75.00</td><td class=\"best\">80.50</td></tr>")
    );
    assert!(page.contains(
        "<tr><th>repetition (4-gram)</th><td class=\"best\">0.00</td><td>12.50</td></tr>"
    ));
}

#[test]
fn without_references_there_is_no_reference_column_and_no_scores() {
    let mut comparison = sample::comparison();
    for row in &mut comparison.rows {
        row.reference = None;
        for answer in &mut row.answers {
            answer.scores = None;
        }
    }
    for model in &mut comparison.models {
        model.scores = None;
        model.answer_perplexity = None;
    }
    let page = render(&comparison);
    assert!(!page.contains("Reference"));
    assert!(!page.contains("class=\"ref\""));
    assert!(!page.contains("BLEU"));
    assert!(!page.contains("answer perplexity</th>"));
    assert!(page.contains("<tr><th>data perplexity</th>"));
}
