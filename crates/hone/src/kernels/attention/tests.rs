//! Attention against PyTorch's eager attention (fixtures from scripts/golden/kernels_attn.py)
//! and against finite differences of its own forward.

use std::collections::HashMap;
use std::path::PathBuf;

use rand::{rngs::StdRng, Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};

use super::*;

/// Tile sizes tried on every case: the default (one or two tiles at these lengths) and small
/// odd ones, so partial tiles, key tiles starting mid query tile and fully masked tile rows
/// all occur.
const TILINGS: [Tiles; 4] = [
    TILES,
    Tiles { q: 5, k: 7 },
    Tiles { q: 16, k: 3 },
    Tiles { q: 1, k: 64 },
];

struct Case {
    shape: AttnShape,
    f32s: HashMap<String, Vec<f32>>,
    segment_ids: Option<Vec<u32>>,
}

impl Case {
    fn get(&self, name: &str) -> &[f32] {
        &self.f32s[name]
    }

    fn inputs(&self) -> AttnInputs<'_> {
        AttnInputs {
            q: self.get("q"),
            k: self.get("k"),
            v: self.get("v"),
            segment_ids: self.segment_ids.as_deref(),
        }
    }
}

fn load(name: &str) -> Case {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/kernels")
        .join(format!("attn_{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut f32s = HashMap::new();
    let mut segment_ids = None;
    for (key, view) in st.tensors() {
        let data = view.data();
        match view.dtype() {
            Dtype::F32 => {
                let values = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
                f32s.insert(key, values.collect());
            }
            Dtype::I64 => {
                let ids = data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32);
                segment_ids = Some(ids.collect());
            }
            other => panic!("{key}: unexpected dtype {other:?}"),
        }
    }
    let (q, k) = (st.tensor("q").unwrap(), st.tensor("k").unwrap());
    let shape = AttnShape {
        batch: q.shape()[0],
        seq: q.shape()[1],
        heads: q.shape()[2],
        kv_heads: k.shape()[2],
        head_dim: q.shape()[3],
        scale: 1.0 / (q.shape()[3] as f32).sqrt(),
        window: metadata(&bytes, "window"),
        softcap: metadata(&bytes, "softcap"),
        alibi: false,
    };
    Case {
        shape,
        f32s,
        segment_ids,
    }
}

/// A setting of the fixture's from its metadata (absent: none): its sliding window or soft-cap.
fn metadata<T: std::str::FromStr>(bytes: &[u8], key: &str) -> Option<T> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).unwrap();
    let value = metadata.metadata().as_ref()?.get(key)?;
    value.parse().ok()
}

/// max|got - want| / max(1, max|want|).
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let scale = want.iter().map(|b| b.abs()).fold(1.0, f32::max);
    diff / scale
}

#[test]
fn matches_torch() {
    let cases = [
        "causal_t13_g1",
        "segments_t37_g3",
        "segments_t70_g3",
        "causal_t70_g1",
        "window9_t70_g1",
        "window70_t150_g2",
        "window5_segments_t37_g3",
        "softcap_window9_t70_g2",
    ];
    for name in cases {
        let case = load(name);
        let s = case.shape;
        for tiles in TILINGS {
            let mut out = vec![f32::NAN; s.q_len()];
            let mut lse = vec![f32::NAN; s.lse_len()];
            forward_tiled(s, case.inputs(), &mut out, &mut lse, tiles);
            let (mut dq, mut dk, mut dv) = (
                vec![f32::NAN; s.q_len()],
                vec![f32::NAN; s.kv_len()],
                vec![f32::NAN; s.kv_len()],
            );
            let grads = AttnGrads {
                dq: &mut dq,
                dk: &mut dk,
                dv: &mut dv,
            };
            backward_tiled(s, case.inputs(), &out, &lse, case.get("dout"), grads, tiles);
            for (what, got) in [
                ("out", &out),
                ("lse", &lse),
                ("dq", &dq),
                ("dk", &dk),
                ("dv", &dv),
            ] {
                let err = rel_err(got, case.get(what));
                assert!(
                    err < 1e-4,
                    "{name} {tiles:?} {what}: relative error {err:e}"
                );
            }
        }
    }
}

/// Gradients of L = Σ out ∘ w against central differences of the forward, every coordinate of
/// q, k and v, on a tiny GQA shape with segments and multi-tile tilings. In f32 with step 1e-2
/// the difference quotient is good to ~1e-4 (truncation) + ~1e-5 (rounding), hence 1e-3.
#[test]
fn finite_differences() {
    let s = AttnShape {
        batch: 2,
        seq: 7,
        heads: 4,
        kv_heads: 2,
        head_dim: 4,
        scale: 0.5,
        window: None,
        softcap: None,
        alibi: false,
    };
    let mut rng = StdRng::seed_from_u64(3);
    let mut random = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect::<Vec<_>>()
    };
    let (q, k, v, w) = (
        random(s.q_len()),
        random(s.kv_len()),
        random(s.kv_len()),
        random(s.q_len()),
    );
    let seg = [0, 0, 0, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4, 4];
    let loss = |q: &[f32], k: &[f32], v: &[f32], tiles: Tiles| {
        let (mut out, mut lse) = (vec![0.0; s.q_len()], vec![0.0; s.lse_len()]);
        let x = AttnInputs {
            q,
            k,
            v,
            segment_ids: Some(&seg),
        };
        forward_tiled(s, x, &mut out, &mut lse, tiles);
        out.iter()
            .zip(&w)
            .map(|(&o, &w)| o as f64 * w as f64)
            .sum::<f64>()
    };
    for tiles in [TILES, Tiles { q: 3, k: 2 }] {
        let x = AttnInputs {
            q: &q,
            k: &k,
            v: &v,
            segment_ids: Some(&seg),
        };
        let (mut out, mut lse) = (vec![0.0; s.q_len()], vec![0.0; s.lse_len()]);
        forward_tiled(s, x, &mut out, &mut lse, tiles);
        let (mut dq, mut dk, mut dv) = (
            vec![0.0; s.q_len()],
            vec![0.0; s.kv_len()],
            vec![0.0; s.kv_len()],
        );
        let grads = AttnGrads {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
        };
        backward_tiled(s, x, &out, &lse, &w, grads, tiles);

        let eps = 1e-2;
        for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
            for idx in 0..grad.len() {
                let mut xs = [q.clone(), k.clone(), v.clone()];
                xs[which][idx] += eps;
                let up = loss(&xs[0], &xs[1], &xs[2], tiles);
                xs[which][idx] -= 2.0 * eps;
                let down = loss(&xs[0], &xs[1], &xs[2], tiles);
                let fd = (up - down) / (2.0 * eps as f64);
                let err = (fd - grad[idx] as f64).abs() / fd.abs().max(1.0);
                assert!(
                    err < 1e-3,
                    "{tiles:?} input {which} [{idx}]: fd {fd} vs {}",
                    grad[idx]
                );
            }
        }
    }
}

#[test]
#[should_panic(expected = "not a multiple")]
fn rejects_heads_not_a_multiple_of_kv_heads() {
    let s = AttnShape {
        batch: 1,
        seq: 1,
        heads: 3,
        kv_heads: 2,
        head_dim: 1,
        scale: 1.0,
        window: None,
        softcap: None,
        alibi: false,
    };
    let x = AttnInputs {
        q: &[0.0; 3],
        k: &[0.0; 2],
        v: &[0.0; 2],
        segment_ids: None,
    };
    forward(s, x, &mut [0.0; 3], &mut [0.0; 3]);
}

/// ALiBi's slopes as Baichuan's `_get_interleave` gives them (printed by its modeling file):
/// powers of two for 8 heads, the 4-head set then every other 8-head slope for 6, and the 8-head
/// set then the odd powers of 2^-0.5 for 12.
#[test]
fn alibi_slopes_match_baichuan() {
    let slopes = alibi_slopes;
    let powers =
        |exponents: &[f32]| -> Vec<f32> { exponents.iter().map(|&e| 2f32.powf(e)).collect() };
    assert_eq!(slopes(8), powers(&[-1., -2., -3., -4., -5., -6., -7., -8.]));
    assert_eq!(slopes(6), [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
    let twelve = slopes(12);
    assert_eq!(
        twelve[..8],
        powers(&[-1., -2., -3., -4., -5., -6., -7., -8.])[..]
    );
    for (got, want) in twelve[8..].iter().zip(powers(&[-0.5, -1.5, -2.5, -3.5])) {
        assert!((got - want).abs() < 1e-7, "{got} vs {want}");
    }
}
