//! Continuous batching as `hone serve` runs it: sequences with their own caches, at different
//! positions and with different LoRA adapters, decoded in one step, give what each gives alone —
//! the adapted rows PEFT's logits (fixtures from scripts/golden/peft_adapters.py).

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::{fixture, load_tensors, max_abs_diff};
use hone::adapters::read_adapter;
use hone::io::source::ModelSource;
use hone::model::{weights, Cache, Llama, LoraSet};

fn stored_model(base: &str) -> Llama {
    let source = ModelSource::HfDir(fixture(&format!("models/{base}")));
    let (cfg, w) = weights::load_stored(&source, &Device::Cpu).unwrap();
    Llama::from_stored(cfg, w, None, &Device::Cpu).unwrap()
}

/// The golden input ids (one row) and PEFT's logits `[t, vocab]` for it.
fn golden(adapter: &str) -> (Vec<u32>, Tensor) {
    let golden = load_tensors(&fixture(&format!("adapters/{adapter}.golden.safetensors")));
    let ids = golden["input_ids"].to_dtype(DType::U32).unwrap();
    let ids = ids.i(0).unwrap().to_vec1::<u32>().unwrap();
    (ids, golden["logits"].i(0).unwrap())
}

/// Logits of `ids` fed one token per step from `from` on, after prefilling `..from`, with
/// `adapter` on every product, each step in a batch with `others` (advanced alongside): the
/// positions `from..` as `[t - from, vocab]`.
fn stepped(
    model: &Llama,
    ids: &[u32],
    from: usize,
    adapter: Option<&LoraSet>,
    others: &mut [(Cache, Option<&LoraSet>, u32)],
) -> Tensor {
    let mut cache = model.new_cache();
    let mut rows = vec![model.prefill(&ids[..from], &mut cache, adapter).unwrap()];
    for &id in &ids[from..ids.len() - 1] {
        let mut tokens = vec![id];
        let mut caches = vec![&mut cache];
        let mut sets = vec![adapter];
        for (c, set, token) in others.iter_mut() {
            tokens.push(*token);
            caches.push(c);
            sets.push(*set);
        }
        let logits = model.decode_step(&tokens, &mut caches, &sets).unwrap();
        let vocab = logits.len() / tokens.len();
        rows.push(logits[..vocab].to_vec());
    }
    let vocab = rows[0].len();
    Tensor::from_vec(rows.concat(), (ids.len() - from, vocab), &Device::Cpu).unwrap()
}

#[test]
fn adapted_rows_in_a_shared_batch_give_peft_logits() {
    for (name, base) in common::PEFT_ADAPTERS {
        let model = stored_model(base);
        let (ids, want) = golden(name);
        let set = model.lora_set(&read_adapter(&fixture(&format!("adapters/{name}"))).unwrap());
        let set = set.unwrap();
        // Two companions at other positions: one on the base alone, one on the same adapter.
        let companion = |len: usize| {
            let mut c = model.new_cache();
            model.prefill(&ids[..len], &mut c, None).unwrap();
            c
        };
        let mut others = vec![
            (companion(1), None, ids[0]),
            (companion(3), Some(&set), ids[2]),
        ];
        let from = 2;
        let got = stepped(&model, &ids, from, Some(&set), &mut others);
        let diff = max_abs_diff(&got, &want.narrow(0, from - 1, ids.len() - from).unwrap());
        assert!(diff < 1e-4, "{name}: max abs logit difference {diff}");
    }
}

#[test]
fn base_rows_beside_adapted_ones_give_the_base_logits() {
    for (name, base) in common::PEFT_ADAPTERS {
        let model = stored_model(base);
        let (ids, _) = golden(name);
        let set = model.lora_set(&read_adapter(&fixture(&format!("adapters/{name}"))).unwrap());
        let set = set.unwrap();
        let whole = model
            .forward(
                &Tensor::new(ids.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                None,
            )
            .unwrap()
            .i(0)
            .unwrap();
        let mut c = model.new_cache();
        model.prefill(&ids[..4], &mut c, Some(&set)).unwrap();
        let got = stepped(&model, &ids, 1, None, &mut [(c, Some(&set), ids[3])]);
        let diff = max_abs_diff(&got, &whole.narrow(0, 0, ids.len() - 1).unwrap());
        assert!(diff < 1e-4, "{name}: max abs logit difference {diff}");
    }
}

#[test]
fn an_adapter_that_does_not_fit_is_refused_by_name() {
    let model = stored_model("llama-gqa");
    let adapter = read_adapter(&fixture("adapters/qwen2-all-linear")).unwrap();
    let err = format!(
        "{:#}",
        model.lora_set(&adapter).err().expect("must not fit")
    );
    assert!(err.contains("model.layers.0."), "{err}");
}
