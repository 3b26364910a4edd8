//! Golden tests of the fused LM-head cross-entropy, AdamW, gradient clipping and the learning-rate
//! schedules against torch and transformers (fixtures written by
//! `scripts/golden/kernels_ce_optim.py`). Errors are relative: max|ours − ref| / max(1, max|ref|).

mod common;

use hone::kernels::cross_entropy::{self, CeShape};
use hone::kernels::matrix::Matrix;
use hone::train::optim::{clip_grad_norm, AdamW, AdamWConfig, Param};
use hone::train::schedule::{Schedule, ScheduleKind};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(common::fixture(&format!("kernels/{name}"))).unwrap()
}

fn tensor<T, const N: usize>(
    st: &SafeTensors,
    name: &str,
    dtype: Dtype,
    from: fn([u8; N]) -> T,
) -> Vec<T> {
    let view = st.tensor(name).unwrap();
    assert_eq!(view.dtype(), dtype, "{name}");
    view.data()
        .chunks_exact(N)
        .map(|b| from(b.try_into().unwrap()))
        .collect()
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    tensor(st, name, Dtype::F32, f32::from_le_bytes)
}

fn rel_err(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let diff = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    let scale = reference
        .iter()
        .map(|b| f64::from(b.abs()))
        .fold(1.0, f64::max);
    diff / scale
}

fn scalar_err(ours: f64, reference: f32) -> f64 {
    (ours - f64::from(reference)).abs() / f64::from(reference.abs()).max(1.0)
}

fn check_ce(case: &str, hidden: usize, vocab: usize) {
    let bytes = read(&format!("{case}.safetensors"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let h = f32s(&st, "h");
    let w = Matrix::F32 {
        values: f32s(&st, "w"),
        cols: hidden,
    };
    let labels = tensor(&st, "labels", Dtype::I64, i64::from_le_bytes);
    let n = labels.len();
    let n_labels = cross_entropy::count_labels(&labels);
    let scale = 1.0 / n_labels as f32;
    let mut worst = [0.0f64; 6];
    // Chunks of 1, not dividing the 14 or 15 labelled rows, and larger than all of them.
    for chunk in [1, 4, 5, 13, 1000] {
        let shape = CeShape {
            n,
            hidden,
            vocab,
            chunk,
            softcap: None,
        };
        let mut dh = vec![f32::NAN; n * hidden];
        let mut dw = vec![0.0; vocab * hidden];
        let (loss_sum, counted) = cross_entropy::forward_backward(
            &h,
            w.as_ref(),
            &labels,
            shape,
            scale,
            &mut dh,
            Some(&mut dw),
        )
        .unwrap();
        assert_eq!(counted, n_labels);
        let mean = loss_sum / n_labels as f64;
        let errs = [
            scalar_err(mean, f32s(&st, "loss")[0]),
            rel_err(&dh, &f32s(&st, "dh")),
            rel_err(&dw, &f32s(&st, "dw")),
            scalar_err(mean, f32s(&st, "loss64")[0]),
            rel_err(&dh, &f32s(&st, "dh64")),
            rel_err(&dw, &f32s(&st, "dw64")),
        ];
        for (w, e) in worst.iter_mut().zip(errs) {
            *w = w.max(e);
        }

        let eval = cross_entropy::loss(&h, w.as_ref(), &labels, shape).unwrap();
        assert_eq!(eval, (loss_sum, n_labels), "{case} chunk {chunk}: loss()");

        // i32 labels and a frozen head: the same dh, and dW is not needed.
        let labels32: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
        let mut dh_frozen = vec![f32::NAN; n * hidden];
        let out = cross_entropy::forward_backward(
            &h,
            w.as_ref(),
            &labels32,
            shape,
            scale,
            &mut dh_frozen,
            None,
        )
        .unwrap();
        assert_eq!(out, (loss_sum, n_labels));
        assert_eq!(dh_frozen, dh, "{case} chunk {chunk}: frozen head");
    }
    println!(
        "{case}: vs torch f32: loss {:.1e} dh {:.1e} dW {:.1e}; vs torch f64: loss {:.1e} dh {:.1e} dW {:.1e}",
        worst[0], worst[1], worst[2], worst[3], worst[4], worst[5]
    );
    assert!(worst.iter().all(|&e| e < 1e-4), "{case}: {worst:?}");

    // dW accumulates: a second call adds the same gradient again.
    let shape = CeShape {
        n,
        hidden,
        vocab,
        chunk: 4,
        softcap: None,
    };
    let mut dh = vec![0.0; n * hidden];
    let mut dw = f32s(&st, "dw");
    cross_entropy::forward_backward(
        &h,
        w.as_ref(),
        &labels,
        shape,
        scale,
        &mut dh,
        Some(&mut dw),
    )
    .unwrap();
    let twice: Vec<f32> = f32s(&st, "dw").iter().map(|x| 2.0 * x).collect();
    assert!(rel_err(&dw, &twice) < 1e-4, "{case}: dW accumulation");
}

#[test]
fn cross_entropy_with_prompt_masks_matches_torch() {
    check_ce("ce_prompt", 64, 300);
}

#[test]
fn cross_entropy_with_sharp_logits_matches_torch() {
    check_ce("ce_sharp", 32, 300);
}

fn schedule_from(config: &Value) -> Schedule {
    let s = &config["schedule"];
    Schedule {
        kind: s["name"].as_str().unwrap().parse().unwrap(),
        warmup_steps: s["num_warmup_steps"].as_u64().unwrap(),
        training_steps: s["num_training_steps"].as_u64().unwrap(),
    }
}

#[test]
fn adamw_with_clipping_and_cosine_warmup_matches_torch() {
    let bytes = read("adamw_clip_cosine.safetensors");
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let config: Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["config"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();

    let mut opt = AdamW::new();
    let mut names = Vec::new();
    for group in config["groups"].as_array().unwrap() {
        let f = |k: &str| group[k].as_f64().unwrap();
        let betas = &group["betas"];
        let cfg = AdamWConfig {
            lr: f("lr"),
            betas: (betas[0].as_f64().unwrap(), betas[1].as_f64().unwrap()),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        };
        let params: Vec<(&str, usize)> = group["params"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, shape)| {
                let len = shape
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap());
                (name.as_str(), len.product::<u64>() as usize)
            })
            .collect();
        names.extend(params.iter().map(|&(n, _)| n.to_owned()));
        opt.add_group(cfg, &params).unwrap();
    }
    let schedule = schedule_from(&config);
    assert_eq!(schedule.kind, ScheduleKind::Cosine);
    let max_norm = config["max_norm"].as_f64().unwrap() as f32;
    let norms = f32s(&st, "norm");
    let mults = tensor(&st, "lr_mult", Dtype::F64, f64::from_le_bytes);

    let mut values: Vec<Vec<f32>> = names
        .iter()
        .map(|n| f32s(&st, &format!("init.{n}")))
        .collect();
    let (mut worst_param, mut worst_norm) = (0.0f64, 0.0f64);
    for t in 1..=config["steps"].as_u64().unwrap() {
        let mut grads: Vec<Vec<f32>> = names
            .iter()
            .map(|n| f32s(&st, &format!("grad.{t}.{n}")))
            .collect();
        let mut grad_slices: Vec<&mut [f32]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
        let norm = clip_grad_norm(&mut grad_slices, max_norm);
        worst_norm = worst_norm.max(scalar_err(f64::from(norm), norms[t as usize - 1]));

        let mult = schedule.multiplier(t - 1);
        assert_eq!(mult, mults[t as usize - 1], "lr multiplier at step {t}");
        let mut params: Vec<Param> = names
            .iter()
            .zip(values.iter_mut())
            .zip(&grads)
            .map(|((name, value), grad)| Param {
                name: name.clone(),
                value: value.as_mut_slice(),
                grad: grad.as_slice(),
            })
            .collect();
        opt.step(&mut params, mult).unwrap();
        for (name, value) in names.iter().zip(&values) {
            let err = rel_err(value, &f32s(&st, &format!("param.{t}.{name}")));
            worst_param = worst_param.max(err);
        }
    }
    println!("adamw: params vs torch {worst_param:.1e}, clip norms {worst_norm:.1e}");
    assert!(worst_norm < 1e-6, "clip norm error {worst_norm:.2e}");
    assert!(worst_param < 1e-5, "parameter error {worst_param:.2e}");
    assert!(opt.groups.iter().all(|g| g.step == 5));
}

#[test]
fn schedules_match_transformers() {
    let golden: Value = serde_json::from_slice(&read("adamw_schedules.json")).unwrap();
    let mut worst = 0.0f64;
    for (name, expected) in golden["multipliers"].as_object().unwrap() {
        let schedule = Schedule {
            kind: name.parse().unwrap(),
            warmup_steps: golden["num_warmup_steps"].as_u64().unwrap(),
            training_steps: golden["num_training_steps"].as_u64().unwrap(),
        };
        for (step, e) in expected.as_array().unwrap().iter().enumerate() {
            let diff = (schedule.multiplier(step as u64) - e.as_f64().unwrap()).abs();
            worst = worst.max(diff);
        }
    }
    println!("schedules: max |multiplier − transformers| = {worst:.1e}");
    assert!(worst < 1e-12, "{worst:.2e}");
}
