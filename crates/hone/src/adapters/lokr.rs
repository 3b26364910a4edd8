//! LoKr adapters in PEFT's format (`peft_type: "LOKR"`, `peft.LoKrConfig`): per targeted layer
//! `ΔW = kron(W1, W2) · alpha / r`, W1 `[a, c]` and W2 `[b, d]` with `out = a·b`, `in = c·d` (each
//! dimension split by PEFT's `factorization`), W1 saved whole (`lokr_w1`) or as `lokr_w1_a ·
//! lokr_w1_b` (`decompose_both` with r small), W2 whole (`lokr_w2`, r ≥ half its larger side) or
//! as `lokr_w2_a · lokr_w2_b`. By the mixed-product property `kron(W1, X·Y) = kron(W1, X) ·
//! kron(I_c, Y)`, with `X·Y` = W2 (`X = W2a, Y = W2b`, or `X = I_b, Y = W2`), the update is a
//! LoRA of rank `c·q` (q = r or b): that is how every model command applies and merges it
//! ([`LokrWeights::as_lora`]) and how training computes it.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::config::{peft_json, refuse_set, PeftCommon, PEFT_VERSION};
use super::targets::selects;
use super::{LoraWeights, TargetModules};

/// Each module's tensors' suffixes: `w1`, `w1_a`, `w1_b`, `w2`, `w2_a`, `w2_b`.
pub const KEYS: [&str; 6] = [
    ".lokr_w1",
    ".lokr_w1_a",
    ".lokr_w1_b",
    ".lokr_w2",
    ".lokr_w2_a",
    ".lokr_w2_b",
];

/// A LoKr config: the fields Hone interprets typed, every other field kept as read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LokrConfig {
    #[serde(flatten)]
    pub common: PeftCommon,
    #[serde(default = "default_rank")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub decompose_both: bool,
    #[serde(default = "default_factor")]
    pub decompose_factor: i64,
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_rank() -> usize {
    8
}

fn default_alpha() -> f64 {
    8.0
}

fn default_factor() -> i64 {
    -1
}

/// Fields that, when set, make the adapter compute something Hone does not, and why.
const UNSUPPORTED: [(&str, &str); 7] = [
    ("modules_to_save", "Hone trains and saves the adapter only"),
    ("layers_to_transform", "Hone targets modules by name only"),
    ("layers_pattern", "Hone targets modules by name only"),
    ("rank_pattern", "every module has rank r"),
    ("alpha_pattern", "every module has alpha"),
    (
        "rank_dropout",
        "PEFT draws it from torch's generator at every step",
    ),
    (
        "module_dropout",
        "PEFT draws it from torch's generator at every step",
    ),
];

/// One of LoKr's two Kronecker factors: whole, or a rank-r product `a · b`.
#[derive(Debug, Clone, PartialEq)]
pub enum Factor {
    Whole(Vec<f32>),
    Product { a: Vec<f32>, b: Vec<f32>, r: usize },
}

/// One module's LoKr factors: W1 `[a, c]`, W2 `[b, d]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LokrWeights {
    pub w1: Factor,
    pub w2: Factor,
    /// `(a, b, c, d)`: `out = a·b`, `in = c·d`.
    pub dims: (usize, usize, usize, usize),
    pub scale: f64,
}

impl LokrConfig {
    /// A new config as PEFT writes it.
    pub fn new(r: usize, alpha: f64, target_modules: Vec<String>) -> LokrConfig {
        let other = match json!({
            "auto_mapping": null, "peft_version": PEFT_VERSION, "alpha_pattern": {}, "init_weights": true,
            "layers_pattern": null, "layers_to_transform": null, "module_dropout": 0.0, "modules_to_save": null,
            "rank_dropout": 0.0, "rank_dropout_scale": false, "rank_pattern": {}, "use_effective_conv2d": false,
        }) {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object literal"),
        };
        LokrConfig {
            common: PeftCommon::causal_lm(),
            r,
            alpha,
            decompose_both: false,
            decompose_factor: -1,
            target_modules: Some(TargetModules::Names(target_modules)),
            exclude_modules: None,
            other,
        }
    }

    /// The config as PEFT writes it.
    pub fn to_json(&self) -> Value {
        let typed = json!({
            "peft_type": "LOKR",
            "r": self.r,
            "alpha": self.alpha,
            "decompose_both": self.decompose_both,
            "decompose_factor": self.decompose_factor,
            "target_modules": self.target_modules,
            "exclude_modules": self.exclude_modules,
        });
        peft_json(&self.other, &self.common, typed)
    }

    /// Whether the config targets module `module` (PEFT's rules; unset: q_proj, v_proj).
    pub fn selects(&self, module: &str) -> Result<bool> {
        let (targets, exclude) = (self.target_modules.as_ref(), self.exclude_modules.as_ref());
        selects(targets, exclude, module)
    }

    /// The update's scale, `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// PEFT's split of a `[out, in]` layer, `(a, b, c, d)`, and whether W1 and W2 are whole.
    pub fn layout(&self, out: usize, inp: usize) -> ((usize, usize, usize, usize), bool, bool) {
        let (a, b) = factorization(out, self.decompose_factor);
        let (c, d) = factorization(inp, self.decompose_factor);
        let r = self.r as f64;
        let w1_whole = !(self.decompose_both && r < a.max(c) as f64 / 2.0);
        let w2_whole = r >= b.max(d) as f64 / 2.0;
        ((a, b, c, d), w1_whole, w2_whole)
    }

    /// Refuse what Hone cannot honour. Errors are `field: problem`.
    pub fn validate(&self) -> Result<()> {
        refuse_set(&self.other, &UNSUPPORTED)?;
        if self.r == 0 {
            bail!("r: must be positive");
        }
        if !self.alpha.is_finite() {
            bail!("alpha: must be a finite number");
        }
        self.common.validate()?;
        Ok(())
    }
}

/// PEFT's `factorization(dimension, factor)`: `(m, n)`, `m ≤ n`, `m·n = dimension`; with
/// `factor` -1 the pair nearest the square root, else `m = factor` when it divides.
pub fn factorization(dimension: usize, factor: i64) -> (usize, usize) {
    if factor > 0 && dimension.is_multiple_of(factor as usize) {
        return (factor as usize, dimension / factor as usize);
    }
    let limit = if factor == -1 {
        dimension
    } else {
        factor.max(0) as usize
    };
    let (mut m, mut n) = (1, dimension);
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while !dimension.is_multiple_of(new_m) {
            new_m += 1;
        }
        let new_n = dimension / new_m;
        if new_m + new_n > length || new_m > limit {
            break;
        }
        (m, n) = (new_m, new_n);
    }
    if m > n {
        (m, n) = (n, m);
    }
    (m, n)
}

impl Factor {
    /// The factor as a `[rows, cols]` matrix.
    pub fn matrix(&self, rows: usize, cols: usize) -> Vec<f32> {
        match self {
            Factor::Whole(w) => w.clone(),
            Factor::Product { a, b, r } => {
                let mut m = vec![0.0; rows * cols];
                for i in 0..rows {
                    for k in 0..*r {
                        let x = a[i * r + k];
                        for (o, y) in m[i * cols..(i + 1) * cols].iter_mut().zip(&b[k * cols..]) {
                            *o += x * y;
                        }
                    }
                }
                m
            }
        }
    }
}

impl LokrWeights {
    /// How many values the factors hold.
    pub fn parameters(&self) -> usize {
        [&self.w1, &self.w2]
            .iter()
            .map(|f| match f {
                Factor::Whole(w) => w.len(),
                Factor::Product { a, b, .. } => a.len() + b.len(),
            })
            .sum()
    }

    pub fn out_features(&self) -> usize {
        self.dims.0 * self.dims.1
    }

    pub fn in_features(&self) -> usize {
        self.dims.2 * self.dims.3
    }

    /// `(X [b, q], Y [q, d], q)` with `X·Y = W2`: W2's own product, or `I_b · W2`.
    pub fn w2_split(&self) -> (Vec<f32>, Vec<f32>, usize) {
        split_w2(&self.w2, self.dims.1)
    }

    /// The update as LoRA of rank `c·q` (see the module comment), the scale kept.
    pub fn as_lora(&self) -> LoraWeights {
        let (a, b, c, d) = self.dims;
        let w1 = self.w1.matrix(a, c);
        let (x, y, q) = self.w2_split();
        let (lora_a, lora_b) = kron_lora(&w1, (&x, &y), (a, b, c, d), q);
        LoraWeights {
            a: lora_a,
            b: lora_b,
            r: c * q,
            in_features: c * d,
            out_features: a * b,
            scale: self.scale,
            magnitude: None,
        }
    }
}

/// `(X [b, q], Y [q, d], q)` with `X·Y = W2` (`b` W2's rows): its own product, or `I_b · W2`.
pub fn split_w2(w2: &Factor, b: usize) -> (Vec<f32>, Vec<f32>, usize) {
    match w2 {
        Factor::Product { a, b: y, r } => (a.clone(), y.clone(), *r),
        Factor::Whole(w) => (identity(b), w.clone(), b),
    }
}

/// The `n × n` identity.
fn identity(n: usize) -> Vec<f32> {
    let mut m = vec![0.0; n * n];
    (0..n).for_each(|i| m[i * n + i] = 1.0);
    m
}

/// `(A', B')` with `B' = kron(W1 [a, c], X [b, q])` `[a·b, c·q]` and `A' = kron(I_c, Y [q, d])`
/// `[c·q, c·d]`.
pub fn kron_lora(
    w1: &[f32],
    (x, y): (&[f32], &[f32]),
    (a, b, c, d): (usize, usize, usize, usize),
    q: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut lora_b = vec![0.0; a * b * c * q];
    for i in 0..a {
        for k in 0..b {
            let row = &mut lora_b[(i * b + k) * c * q..(i * b + k + 1) * c * q];
            for j in 0..c {
                for m in 0..q {
                    row[j * q + m] = w1[i * c + j] * x[k * q + m];
                }
            }
        }
    }
    let mut lora_a = vec![0.0; c * q * c * d];
    for j in 0..c {
        for m in 0..q {
            let row = &mut lora_a[(j * q + m) * c * d..(j * q + m + 1) * c * d];
            row[j * d..(j + 1) * d].copy_from_slice(&y[m * d..(m + 1) * d]);
        }
    }
    (lora_a, lora_b)
}
