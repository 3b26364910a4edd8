//! Answer perplexity on the tiny GGUF: the labelled tokens are the answer and its end of turn,
//! the figure is their NLL computed by hand from the logits (and the conversation's NLL minus the
//! prompt's), and long conversations lose their prompt's start.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, D};

use super::*;
use crate::data::RowOrigin;
use crate::model::{load, LoadedModel, Precision};

/// The tiny random Llama GGUF with a SentencePiece tokenizer and a ChatML template.
fn tiny() -> (LoadedModel, ChatTemplate) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer/tiny-spm.gguf");
    let loaded = load(path.to_str().unwrap(), Precision::Exact, &Device::Cpu).unwrap();
    let template = ChatTemplate::for_tokenizer(&loaded.tokenizer).unwrap();
    (loaded, template)
}

fn conversation(turns: &[(&str, &str)], line: usize) -> Conversation {
    Conversation {
        messages: turns.iter().map(|&(r, c)| Message::new(r, c)).collect(),
        tools: Vec::new(),
        origin: RowOrigin {
            file: PathBuf::from("rows.jsonl"),
            line,
        },
    }
}

/// Σ −log softmax(logits)[t][ids[t+1]] over the positions whose next token is labelled,
/// from the full logits in f64 (not through the fused loss kernel).
fn nll_by_hand(model: &Llama, ids: &[u32], labels: &[i64]) -> (f64, usize) {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap();
    let logits = logits.to_dtype(DType::F64).unwrap();
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let log_probs: Vec<Vec<f64>> = log_probs.to_vec2().unwrap();
    let (mut nll, mut n) = (0f64, 0usize);
    for t in 0..ids.len() - 1 {
        if labels[t + 1] != IGNORE_INDEX {
            nll -= log_probs[t][ids[t + 1] as usize];
            n += 1;
        }
    }
    (nll, n)
}

#[test]
fn the_answer_and_its_end_of_turn_are_labelled_the_prompt_is_not() {
    let (loaded, template) = tiny();
    let messages = [Message::new("user", "What is the capital of France?")];
    let (ids, labels) = answer_tokens(&loaded.tokenizer, &template, &messages, "Paris.").unwrap();
    let first = labels.iter().position(|&l| l != IGNORE_INDEX).unwrap();
    assert!(
        labels[first..].iter().all(|&l| l != IGNORE_INDEX),
        "one span, to the end"
    );
    let answer = loaded.tokenizer.decode(&ids[first..], false).unwrap();
    assert_eq!(answer.trim_start(), "Paris.<|im_end|>\n");
    let prompt = template.render(&messages, true).unwrap();
    assert_eq!(
        loaded.tokenizer.encode(&prompt, false).unwrap(),
        ids[..first],
        "the unlabelled tokens are the prompt's"
    );
}

#[test]
fn answer_perplexity_is_the_answer_tokens_nll() {
    let (loaded, template) = tiny();
    let rows = [
        conversation(
            &[
                ("user", "Name a colour."),
                ("assistant", "Blue, like the sky."),
            ],
            1,
        ),
        conversation(&[("user", "No reference here.")], 2),
        conversation(
            &[
                ("system", "Brief."),
                ("user", "Hi"),
                ("assistant", "Yo"),
                ("user", "Nine?"),
                ("assistant", "Nine."),
            ],
            3,
        ),
    ];
    let context = loaded.model.config().max_position_embeddings;
    let report =
        answer_perplexity(&loaded.model, &loaded.tokenizer, &template, &rows, context).unwrap();
    assert_eq!((report.n_documents, report.n_documents_too_short), (2, 0));
    let (mut nll, mut n) = (0f64, 0usize);
    for row in [&rows[0], &rows[2]] {
        let (messages, answer) = split_reference(row);
        let (ids, labels) =
            answer_tokens(&loaded.tokenizer, &template, messages, answer.unwrap()).unwrap();
        assert!(ids.len() <= context, "the row fits, nothing is cut");
        let (row_nll, row_n) = nll_by_hand(&loaded.model, &ids, &labels);
        nll += row_nll;
        n += row_n;
        // Where the prompt's tokens are a prefix of the conversation's, the answer's NLL is
        // the conversation's minus the prompt's.
        let prompt_ids = loaded
            .tokenizer
            .encode(&template.render(messages, true).unwrap(), false)
            .unwrap();
        assert_eq!(ids[..prompt_ids.len()], prompt_ids);
        let difference = sequence_nll(&loaded.model, &ids).unwrap().0
            - sequence_nll(&loaded.model, &prompt_ids).unwrap().0;
        assert!(
            (difference - row_nll).abs() < 1e-3 * row_nll,
            "{difference} vs {row_nll}"
        );
    }
    assert_eq!(report.n_tokens, n);
    assert!(
        (report.mean_nll - nll / n as f64).abs() < 1e-5,
        "{} vs {}",
        report.mean_nll,
        nll / n as f64
    );
    assert!((report.perplexity - report.mean_nll.exp()).abs() < 1e-9 * report.perplexity);
}

#[test]
fn a_long_conversation_loses_the_start_of_its_prompt() {
    let (loaded, template) = tiny();
    let row = conversation(
        &[
            ("user", "A fairly long question, to be cut."),
            ("assistant", "Yes"),
        ],
        1,
    );
    let (messages, answer) = split_reference(&row);
    let (ids, labels) =
        answer_tokens(&loaded.tokenizer, &template, messages, answer.unwrap()).unwrap();
    let answer_len = labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
    let keep = answer_len + 2;
    let cut = ids.len() - keep;
    let report = answer_perplexity(
        &loaded.model,
        &loaded.tokenizer,
        &template,
        std::slice::from_ref(&row),
        keep,
    )
    .unwrap();
    let (nll, n) = nll_by_hand(&loaded.model, &ids[cut..], &labels[cut..]);
    assert_eq!((report.n_tokens, n), (answer_len, answer_len));
    assert!((report.mean_nll - nll / n as f64).abs() < 1e-5);

    let report = answer_perplexity(
        &loaded.model,
        &loaded.tokenizer,
        &template,
        std::slice::from_ref(&row),
        1,
    );
    assert_eq!(
        report.unwrap_err().to_string(),
        "no reference answer has a token left to predict"
    );
    let unanswered = conversation(&[("user", "q")], 7);
    let err = answer_perplexity(
        &loaded.model,
        &loaded.tokenizer,
        &template,
        &[unanswered],
        64,
    );
    assert_eq!(
        err.unwrap_err().to_string(),
        "no conversation has a reference answer to score"
    );
}
