//! The default model with its weights kept as stored (the default path) against the f32 path
//! (`--exact`, itself equal to transformers): perplexity, greedy answers to the golden prompts and
//! the KL divergence of each decoding step's next-token distribution. Checked on the shipped Q4_1
//! file and on Q8_0 and Q4_K_M exports of it, so the 32-element and the K-quant kernels both run
//! on a real model. Each comparison prints its figures (`cargo test -- --nocapture`).

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, real_model};
use hone::export::gguf::{export_model, GgufQuant};
use hone::generate::{generate, GenerateConfig};
use hone::model::{load, LoadedModel, Precision};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

fn perplexity(m: &LoadedModel) -> f64 {
    let docs = hone::eval::perplexity::read_documents(&fixture("smollm2/ppl.jsonl")).unwrap();
    hone::eval::perplexity::perplexity(&m.model, &m.tokenizer, &docs, 1024)
        .unwrap()
        .perplexity
}

/// Softmax of `logits` in f64.
fn probabilities(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// KL(p ‖ q) of two next-token distributions given as logits.
fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    let (p, q) = (probabilities(p), probabilities(q));
    p.iter()
        .zip(&q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, q)| p * (p / q.max(1e-300)).ln())
        .sum()
}

/// Per decoding step (one token at a time through the cache, after the prompt), the KL divergence
/// of the stored path's next-token distribution from the exact one's, and whether both argmaxes
/// agree: the exact path's greedy tokens are fed to both.
fn decode_divergence(
    exact: &LoadedModel,
    stored: &LoadedModel,
    prompt: &[u32],
    steps: usize,
) -> (Vec<f64>, usize) {
    let (mut ce, mut cs) = (exact.model.new_cache(), stored.model.new_cache());
    let mut input = prompt.to_vec();
    let (mut kls, mut agree) = (Vec::new(), 0);
    for _ in 0..steps {
        let ids = Tensor::from_slice(&input, (1, input.len()), &Device::Cpu).unwrap();
        let last = |m: &LoadedModel, cache| {
            let logits = m.model.forward(&ids, Some(cache)).unwrap();
            let v = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[v.len() - m.model.config().vocab_size..].to_vec()
        };
        let (le, ls) = (last(exact, &mut ce), last(stored, &mut cs));
        kls.push(kl_divergence(&le, &ls));
        let argmax = |v: &[f32]| hone::generate::sampling::argmax(v);
        agree += usize::from(argmax(&le) == argmax(&ls));
        input = vec![argmax(&le)];
    }
    (kls, agree)
}

/// The checks for one file: perplexity within 0.5% of the f32 path, and over the decoding steps of
/// the golden prompts (the f32 path's greedy tokens fed to both) a mean KL divergence below 0.005
/// and the same argmax on at least 90% of them (8-bit activations move a few near-ties: measured
/// 2.3e-3 to 3.8e-3 and 91 to 95 of 96). Free-running greedy answers are printed, not asserted:
/// the first moved near-tie changes the rest of an answer (measured: 0 or 1 of the 3 answers
/// whole).
fn check(path: &std::path::Path) {
    let spec = path.to_str().unwrap();
    let exact = load(spec, Precision::Exact, &Device::Cpu).unwrap();
    let stored = load(spec, Precision::Stored, &Device::Cpu).unwrap();
    let name = path.file_name().unwrap().to_string_lossy();

    let (pe, ps) = (perplexity(&exact), perplexity(&stored));
    let rel = (ps - pe).abs() / pe;
    println!(
        "{name}: perplexity stored {ps:.4} vs f32 {pe:.4} ({:.3}%)",
        rel * 100.0
    );
    assert!(rel < 0.005, "{name}: perplexity {ps} vs {pe}");

    let golden = json("smollm2/greedy.json");
    let cases = golden["prompts"].as_array().unwrap();
    let cfg = GenerateConfig {
        max_new_tokens: golden["max_new_tokens"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    let (mut same, mut kls, mut agree, mut prefixes) = (0, Vec::new(), 0, Vec::new());
    for case in cases {
        let prompt: Vec<u32> = case["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = |m: &LoadedModel| {
            generate(&m.model, &m.tokenizer, &prompt, &cfg, |_| {})
                .unwrap()
                .ids
        };
        let (a, b) = (ids(&exact), ids(&stored));
        same += usize::from(a == b);
        prefixes.push(a.iter().zip(&b).take_while(|(x, y)| x == y).count());
        let (k, a) = decode_divergence(&exact, &stored, &prompt, cfg.max_new_tokens);
        kls.extend(k);
        agree += a;
    }
    let mean_kl = kls.iter().sum::<f64>() / kls.len() as f64;
    let max_kl = kls.iter().fold(0f64, |a, &b| a.max(b));
    println!(
        "{name}: {same}/{} golden answers equal to the f32 path's (common prefixes {prefixes:?} \
         tokens); {} decoding steps: mean KL {mean_kl:.2e}, max {max_kl:.2e}, argmax agrees on \
         {agree}",
        cases.len(),
        kls.len()
    );
    assert!(mean_kl < 0.005, "{name}: mean KL {mean_kl}");
    assert!(
        agree * 10 >= kls.len() * 9,
        "{name}: argmax agrees on {agree}"
    );
}

#[test]
fn shipped_q4_1_model_as_stored_matches_the_f32_path() {
    let Some(path) = real_model(MODEL) else {
        return;
    };
    check(&path);
}

#[test]
fn q8_0_and_q4_k_m_exports_as_stored_match_their_f32_path() {
    let Some(path) = real_model(MODEL) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (quant, file) in [
        (GgufQuant::Q8_0, "q8_0.gguf"),
        (GgufQuant::Q4KM, "q4_k_m.gguf"),
    ] {
        let out = tmp.path().join(file);
        export_model(path.to_str().unwrap(), None, &out, quant, false).unwrap();
        check(&out);
    }
}
