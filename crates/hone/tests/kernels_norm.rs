//! RMSNorm, RoPE and SwiGLU training kernels against torch autograd through transformers' own
//! modules (fixtures from scripts/golden/kernels_norm.py).
//!
//! Error measure: max over elements of |a − b| / max(1, |b|), i.e. relative for large values and
//! absolute for small ones (the fixtures' values are O(1) apart from deliberate outliers, which a
//! whole-tensor max|b| would let dominate), asserted ≤ 1e-4 against both torch's float32 result
//! and its float64 result.

mod common;

use std::collections::HashMap;

use common::fixture;
use hone::kernels::glu::{self, Activation};
use hone::kernels::{layernorm, rmsnorm, rope};
use hone::model::config::ModelConfig;
use hone::model::rope::RopeTables;
use safetensors::{Dtype, SafeTensors};

const TOL: f32 = 1e-4;

struct Fixture {
    tensors: HashMap<String, (Dtype, Vec<u8>)>,
    metadata: HashMap<String, String>,
}

impl Fixture {
    fn open(name: &str) -> Fixture {
        let bytes = std::fs::read(fixture(&format!("kernels/{name}"))).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, (v.dtype(), v.data().to_vec())))
            .collect();
        let metadata = meta.metadata().clone().unwrap_or_default();
        Fixture { tensors, metadata }
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let (dtype, data) = &self.tensors[name];
        assert_eq!(*dtype, Dtype::F32, "{name}");
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn positions(&self, name: &str) -> Vec<u32> {
        let (dtype, data) = &self.tensors[name];
        assert_eq!(*dtype, Dtype::I64, "{name}");
        data.chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect()
    }

    /// Asserts `got` matches `<case>.<name>` (torch float32) and `<case>.<name>64` (float64).
    fn check(&self, case: &str, name: &str, got: &[f32]) {
        for suffix in ["", "64"] {
            let key = format!("{case}.{name}{suffix}");
            let want = self.f32(&key);
            assert_eq!(got.len(), want.len(), "{key}");
            let rel = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs() / b.abs().max(1.0)));
            eprintln!("{key:16} max |got - want| / max(1, |want|) = {rel:.2e}");
            assert!(rel <= TOL, "{key}: relative error {rel:e}");
        }
    }
}

#[test]
fn rmsnorm_matches_torch() {
    let fx = Fixture::open("norm_rmsnorm.safetensors");
    for case in ["tok", "odd"] {
        let get = |n: &str| fx.f32(&format!("{case}.{n}"));
        let (x, w, dy, eps) = (get("x"), get("w"), get("dy"), get("eps")[0]);
        let n = x.len() / w.len();
        let (mut y, mut rstd) = (vec![0.0; x.len()], vec![0.0; n]);
        rmsnorm::forward(&x, &w, eps, &mut y, &mut rstd);
        fx.check(case, "y", &y);
        let want_rstd = get("rstd");
        for (a, b) in rstd.iter().zip(&want_rstd) {
            assert!((a - b).abs() <= TOL * b, "{case}.rstd: {a} vs {b}");
        }
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        rmsnorm::backward(&dy, &x, &w, &rstd, &mut dx, Some(&mut dw));
        fx.check(case, "dx", &dx);
        fx.check(case, "dw", &dw);
    }
}

/// StarCoder2's LayerNorm: forward, input, weight and bias gradients.
#[test]
fn layernorm_matches_torch() {
    let fx = Fixture::open("norm_layernorm.safetensors");
    for case in ["ln_tok", "ln_odd"] {
        let get = |n: &str| fx.f32(&format!("{case}.{n}"));
        let (x, w, b, dy, eps) = (get("x"), get("w"), get("b"), get("dy"), get("eps")[0]);
        let (mut y, mut rstd) = (vec![0.0; x.len()], vec![0.0; x.len() / w.len()]);
        layernorm::forward(&x, &w, &b, eps, &mut y, &mut rstd);
        fx.check(case, "y", &y);
        let mut dx = vec![0.0; x.len()];
        let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; w.len()]);
        layernorm::backward(&dy, &x, &w, &rstd, &mut dx, (Some(&mut dw), Some(&mut db)));
        fx.check(case, "dx", &dx);
        fx.check(case, "dw", &dw);
        fx.check(case, "db", &db);
    }
}

#[test]
fn rope_matches_torch() {
    let fx = Fixture::open("norm_rope.safetensors");
    for case in ["default", "llama3", "phi3-long", "phi3-short", "glm"] {
        let json = serde_json::from_str(&fx.metadata[&format!("{case}.config")]).unwrap();
        let cfg = ModelConfig::from_hf_json(&json).unwrap();
        let get = |n: &str| fx.f32(&format!("{case}.{n}"));
        let (want_cos, want_sin) = (get("cos"), get("sin"));
        let positions = fx.positions(&format!("{case}.positions"));
        let tables = RopeTables::new(&cfg, want_cos.len() / (cfg.rotary_dim / 2));
        let (cos, sin) = tables.select_set(tables.call_set(&positions), false);
        fx.check_tables(case, (cos, sin), (&want_cos, &want_sin));

        let shape = rope::RopeShape {
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim,
            rotary_dim: cfg.rotary_dim,
            interleaved: cfg.architecture.rotary_interleaved(),
        };
        let mut y = get("x");
        rope::forward(&mut y, &positions, shape, cos, sin);
        fx.check(case, "y", &y);
        let mut dx = get("dy");
        rope::backward(&mut dx, &positions, shape, cos, sin);
        fx.check(case, "dx", &dx);
    }
}

impl Fixture {
    /// Hone's tables against transformers' (both computed in f32; agree to f32 rounding of cos/sin).
    fn check_tables(&self, case: &str, got: (&[f32], &[f32]), want: (&[f32], &[f32])) {
        for (got, want) in [got.0, got.1].into_iter().zip([want.0, want.1]) {
            assert_eq!(got.len(), want.len());
            let diff = got
                .iter()
                .zip(want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= 1e-6, "{case}: rope tables differ by {diff:e}");
        }
    }
}

#[test]
fn gated_activations_match_torch() {
    for (case, act) in [
        ("swiglu", Activation::Silu),
        ("geglu", Activation::GeluTanh),
    ] {
        let fx = Fixture::open(&format!("norm_{case}.safetensors"));
        let get = |n: &str| fx.f32(&format!("{case}.{n}"));
        let (gate, up, dy) = (get("gate"), get("up"), get("dy"));
        // The fixture's rows of 167, side by side as the stacked gate|up product leaves them.
        let width = 167;
        let gate_up: Vec<f32> = gate
            .chunks(width)
            .zip(up.chunks(width))
            .flat_map(|(g, u)| g.iter().chain(u).copied())
            .collect();
        let mut out = vec![0.0; gate.len()];
        glu::forward(act, &gate_up, width, &mut out);
        fx.check(case, "y", &out);
        let mut dgate_up = vec![0.0; gate_up.len()];
        glu::backward(act, &dy, &gate_up, width, &mut dgate_up);
        let half = |second: bool| -> Vec<f32> {
            let range = if second { width..2 * width } else { 0..width };
            dgate_up
                .chunks(2 * width)
                .flat_map(|row| row[range.clone()].to_vec())
                .collect()
        };
        fx.check(case, "dgate", &half(false));
        fx.check(case, "dup", &half(true));
    }
}
