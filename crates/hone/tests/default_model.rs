//! The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers loading the same
//! file (fixtures/smollm2 from scripts/golden/models.py): logits, greedy generation, perplexity.

mod common;

use candle_core::{DType, Device, IndexOp};
use common::{fixture, load_tensors, max_abs_diff, real_model};
use hone::chat::{ChatTemplate, Message};
use hone::generate::{generate, generate_batch, FinishReason, GenerateConfig};
use hone::model::LoadedModel;

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn load() -> Option<LoadedModel> {
    let path = real_model(MODEL)?;
    Some(
        hone::model::load(
            path.to_str().unwrap(),
            hone::model::Precision::Exact,
            &Device::Cpu,
        )
        .unwrap(),
    )
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn logits_match_transformers() {
    let Some(m) = load() else { return };
    let golden = load_tensors(&fixture("smollm2/logits.safetensors"));
    for prompt in ["plain", "chat"] {
        let input = golden[&format!("{prompt}.input_ids")]
            .to_dtype(DType::U32)
            .unwrap();
        let logits = m
            .model
            .forward(&input.unsqueeze(0).unwrap(), None)
            .unwrap()
            .i(0)
            .unwrap();
        let positions = golden[&format!("{prompt}.positions")]
            .to_dtype(DType::U32)
            .unwrap();
        let picked = logits.index_select(&positions, 0).unwrap();
        let diff = max_abs_diff(&picked, &golden[&format!("{prompt}.logits")]);
        assert!(diff < 1e-4, "{prompt}: max abs logit difference {diff}");
        let argmax = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let expected: Vec<u32> = golden[&format!("{prompt}.argmax")]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(argmax, expected, "{prompt}: argmax at every position");
    }
}

#[test]
fn tokenizer_and_chat_template_reproduce_the_prompt_ids() {
    let Some(m) = load() else { return };
    let golden = load_tensors(&fixture("smollm2/logits.safetensors"));
    let meta = json("smollm2/greedy.json");
    let template = ChatTemplate::for_tokenizer(&m.tokenizer).unwrap();
    for case in meta["prompts"].as_array().unwrap() {
        let text = template
            .render(
                &[Message::new("user", case["question"].as_str().unwrap())],
                true,
            )
            .unwrap();
        assert_eq!(
            m.tokenizer.encode(&text, false).unwrap(),
            ids(&case["prompt_ids"])
        );
    }
    let plain = golden["plain.input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let sentence = "The old lighthouse keeper climbed the narrow stairs every evening to light the great lamp for the passing ships.";
    assert_eq!(m.tokenizer.encode(sentence, true).unwrap(), plain);
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    let Some(m) = load() else { return };
    let meta = json("smollm2/greedy.json");
    let cfg = GenerateConfig {
        max_new_tokens: meta["max_new_tokens"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    for case in meta["prompts"].as_array().unwrap() {
        let gen = generate(
            &m.model,
            &m.tokenizer,
            &ids(&case["prompt_ids"]),
            &cfg,
            |_| {},
        )
        .unwrap();
        assert_eq!(gen.ids, ids(&case["new_ids"]), "{}", case["question"]);
    }
}

/// The three golden prompts have different lengths (left padding) and answers that end at
/// different steps (rows leave the batch); a stop string ends the haiku early, which takes it out
/// of the batch first.
#[test]
fn batched_greedy_generation_matches_transformers_token_for_token() {
    let Some(m) = load() else { return };
    let meta = json("smollm2/greedy.json");
    let cases = meta["prompts"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
    let mut cfg = GenerateConfig {
        max_new_tokens: meta["max_new_tokens"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    let batch = generate_batch(&m.model, &m.tokenizer, &prompts, &cfg).unwrap();
    for (case, gen) in cases.iter().zip(&batch) {
        assert_eq!(gen.ids, ids(&case["new_ids"]), "{}", case["question"]);
        assert_eq!(gen.prompt_tokens, ids(&case["prompt_ids"]).len());
    }

    cfg.stop_strings = vec![" silent".to_string()];
    let stopped = generate_batch(&m.model, &m.tokenizer, &prompts, &cfg).unwrap();
    let haiku = cases[1]["text"].as_str().unwrap();
    assert_eq!(stopped[1].text, &haiku[..haiku.find(" silent").unwrap()]);
    assert_eq!(stopped[1].finish_reason, FinishReason::StopString);
    for row in [0, 2] {
        assert_eq!(stopped[row].ids, batch[row].ids, "row {row}");
    }
}

#[test]
fn perplexity_matches_transformers() {
    let Some(m) = load() else { return };
    let golden = json("smollm2/perplexity.json");
    let docs = hone::eval::perplexity::read_documents(&fixture("smollm2/ppl.jsonl")).unwrap();
    let max = golden["max_tokens"].as_u64().unwrap() as usize;
    let report = hone::eval::perplexity::perplexity(&m.model, &m.tokenizer, &docs, max).unwrap();
    let expected = golden["perplexity"].as_f64().unwrap();
    assert_eq!(
        report.n_tokens as u64,
        golden["n_tokens_predicted"].as_u64().unwrap()
    );
    let rel = (report.perplexity - expected).abs() / expected;
    assert!(
        rel < 1e-4,
        "perplexity {} vs transformers {expected} (relative {rel:e})",
        report.perplexity
    );
}

/// The guide's `evaluate.load("perplexity").compute(...)`: per-text perplexities and their mean
/// (the metric reproduced by scripts/golden/evaluate_perplexity.py), on the f32 path: within 2e-5
/// of the metric's definition computed one text at a time, and within 3e-4 of its padded batch of
/// 16, whose float32 reduction order moves its own figures by ~1.3e-4.
#[test]
fn text_perplexities_match_evaluate() {
    let Some(m) = load() else { return };
    let golden = json("smollm2/evaluate_perplexity.json");
    let docs = hone::eval::perplexity::read_documents(&fixture("smollm2/ppl.jsonl")).unwrap();
    let got =
        hone::eval::perplexity::text_perplexities(&m.model, &m.tokenizer, &docs, 4096).unwrap();
    let numbers = |key: &str| -> Vec<f64> {
        let values = golden[key].as_array().unwrap();
        values.iter().map(|v| v.as_f64().unwrap()).collect()
    };
    for (suffix, tolerance) in [("_unbatched_f64", 2e-5), ("", 3e-4)] {
        let want = numbers(&format!("perplexities{suffix}"));
        let mean = golden[format!("mean_perplexity{suffix}")].as_f64().unwrap();
        assert_eq!(got.perplexities.len(), want.len());
        let pairs = got.perplexities.iter().zip(&want);
        for (g, w) in pairs.chain([(&got.mean_perplexity, &mean)]) {
            let rel = (g - w).abs() / w;
            assert!(rel <= tolerance, "{g} vs {w} (evaluate{suffix}): {rel:e}");
        }
    }
}

/// The real model exported to q8_0 loads back through Hone's GGUF reader, stays within 1% of the
/// source's perplexity (measured 20.71 vs 20.75) and answers the first golden prompt as
/// transformers does on the source.
#[test]
fn q8_0_export_round_trips_within_its_error() {
    let Some(path) = real_model(MODEL) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2-q8_0.gguf");
    let quant = hone::export::gguf::GgufQuant::Q8_0;
    hone::export::gguf::export_model(path.to_str().unwrap(), None, &out, quant, false).unwrap();
    let exported = hone::model::load(
        out.to_str().unwrap(),
        hone::model::Precision::Exact,
        &Device::Cpu,
    )
    .unwrap();
    let source = load().unwrap();
    let docs = hone::eval::perplexity::read_documents(&fixture("smollm2/ppl.jsonl")).unwrap();
    let ppl = |m: &LoadedModel| {
        hone::eval::perplexity::perplexity(&m.model, &m.tokenizer, &docs, 1024)
            .unwrap()
            .perplexity
    };
    let (exported_ppl, source_ppl) = (ppl(&exported), ppl(&source));
    let rel = (exported_ppl - source_ppl).abs() / source_ppl;
    assert!(rel < 0.01, "q8_0 {exported_ppl} vs source {source_ppl}");

    let meta = json("smollm2/greedy.json");
    let case = &meta["prompts"][0];
    let cfg = GenerateConfig {
        max_new_tokens: meta["max_new_tokens"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    let gen = generate(
        &exported.model,
        &exported.tokenizer,
        &ids(&case["prompt_ids"]),
        &cfg,
        |_| {},
    )
    .unwrap();
    assert_eq!(gen.ids, ids(&case["new_ids"]), "{}", case["question"]);
}
