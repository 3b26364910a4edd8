//! OFT adapters in PEFT's format (`peft_type: "OFT"`, `peft.OFTConfig`, PEFT ≥ 0.14's layout):
//! per targeted layer `oft_R.weight` `[blocks, b(b−1)/2]` (one row with `block_share`), the
//! triangles of skew-symmetric `Q_i`. The layer computes `W (x · blockdiag(R_1, …))`, each `R_i`
//! a Cayley transform of `Q_i` ([`crate::kernels::rotation`]): the input is rotated, not the
//! output shifted, so OFT is no LoRA. Merged, `W' = W · blockdiag(R)ᵀ`, as PEFT's `merge`.
//! `coft` projects each `Q_i` into a small ball before use, as PEFT's forward does.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::config::{peft_json, refuse_set, PeftCommon, PEFT_VERSION};
use super::targets::selects;
use super::TargetModules;
use crate::kernels::rotation::{self, Cayley};

/// Each module's tensor suffix.
pub const KEY: &str = ".oft_R.weight";

/// PEFT's `OFTConfig`: the fields Hone interprets typed, every other field kept as read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OftConfig {
    #[serde(flatten)]
    pub common: PeftCommon,
    /// Blocks per layer (0: from `oft_block_size`); exactly one of the two is set.
    #[serde(default)]
    pub r: usize,
    #[serde(default = "default_block_size")]
    pub oft_block_size: usize,
    /// PEFT 0.21 builds this dropout but its forward never applies it.
    #[serde(default)]
    pub module_dropout: f64,
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    #[serde(default)]
    pub coft: bool,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub block_share: bool,
    #[serde(default = "yes")]
    pub use_cayley_neumann: bool,
    #[serde(default = "default_terms")]
    pub num_cayley_neumann_terms: usize,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_block_size() -> usize {
    32
}

fn default_eps() -> f64 {
    6e-5
}

fn yes() -> bool {
    true
}

fn default_terms() -> usize {
    5
}

/// Fields that, when set, make the adapter compute something Hone does not, and why.
const UNSUPPORTED: [(&str, &str); 4] = [
    ("modules_to_save", "Hone trains and saves the adapter only"),
    ("layers_to_transform", "Hone targets modules by name only"),
    ("layers_pattern", "Hone targets modules by name only"),
    (
        "fan_in_fan_out",
        "it is for GPT-2 style Conv1D layers; Llama layers store weights [out, in]",
    ),
];

/// One module's rotation: the stored triangles and how they become `R`.
#[derive(Debug, Clone, PartialEq)]
pub struct OftWeights {
    /// `[rows, b(b−1)/2]`: one row per block, or one shared by all.
    pub triangles: Vec<f32>,
    pub block_size: usize,
    pub cayley: Cayley,
    /// COFT's `eps` (None: no projection).
    pub coft: Option<f64>,
}

impl OftConfig {
    /// A new config as PEFT writes it: `oft_block_size` blocks (or `r` of them when given).
    pub fn new(r: usize, oft_block_size: usize, target_modules: Vec<String>) -> OftConfig {
        let other = match json!({
            "auto_mapping": null, "peft_version": PEFT_VERSION, "bias": "none", "fan_in_fan_out": false,
            "init_weights": true, "layers_pattern": null, "layers_to_transform": null, "modules_to_save": null,
        }) {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object literal"),
        };
        OftConfig {
            common: PeftCommon::causal_lm(),
            r,
            oft_block_size,
            module_dropout: 0.0,
            target_modules: Some(TargetModules::Names(target_modules)),
            exclude_modules: None,
            coft: false,
            eps: default_eps(),
            block_share: false,
            use_cayley_neumann: true,
            num_cayley_neumann_terms: default_terms(),
            other,
        }
    }

    /// The config as PEFT writes it.
    pub fn to_json(&self) -> Value {
        let typed = json!({
            "peft_type": "OFT",
            "r": self.r,
            "oft_block_size": self.oft_block_size,
            "module_dropout": self.module_dropout,
            "target_modules": self.target_modules,
            "exclude_modules": self.exclude_modules,
            "coft": self.coft,
            "eps": self.eps,
            "block_share": self.block_share,
            "use_cayley_neumann": self.use_cayley_neumann,
            "num_cayley_neumann_terms": self.num_cayley_neumann_terms,
        });
        peft_json(&self.other, &self.common, typed)
    }

    /// Whether the config targets module `module` (PEFT's rules; unset: q_proj, v_proj).
    pub fn selects(&self, module: &str) -> Result<bool> {
        let (targets, exclude) = (self.target_modules.as_ref(), self.exclude_modules.as_ref());
        selects(targets, exclude, module)
    }

    /// How `R` is made.
    pub fn cayley(&self) -> Cayley {
        match self.use_cayley_neumann {
            true => Cayley::Neumann(self.num_cayley_neumann_terms),
            false => Cayley::Exact,
        }
    }

    /// COFT's `eps`, when on.
    pub fn coft_eps(&self) -> Option<f64> {
        self.coft.then_some(self.eps)
    }

    /// PEFT's blocks of a layer with `in_features` inputs, `(blocks, b)`: `r` or
    /// `oft_block_size` moved to the nearest divisor of `in_features` when it is not one
    /// (PEFT warns and does the same).
    pub fn geometry(&self, in_features: usize) -> (usize, usize) {
        match self.r {
            0 => {
                let b = nearest_divisor(in_features, self.oft_block_size);
                (in_features / b, b)
            }
            r => {
                let r = nearest_divisor(in_features, r);
                (r, in_features / r)
            }
        }
    }

    /// Refuse what Hone cannot honour. Errors are `field: problem`.
    pub fn validate(&self) -> Result<()> {
        refuse_set(&self.other, &UNSUPPORTED)?;
        match self.other.get("bias").and_then(Value::as_str) {
            None | Some("none") => {}
            Some(b) => bail!("bias: {b:?} is not supported (OFT adapters that train biases)"),
        }
        if (self.r == 0) == (self.oft_block_size == 0) {
            bail!(
                "r: give exactly one of r ({}) and oft_block_size ({}), since r × oft_block_size = in_features",
                self.r,
                self.oft_block_size
            );
        }
        if self.use_cayley_neumann && self.num_cayley_neumann_terms == 0 {
            bail!("num_cayley_neumann_terms: must be at least 1");
        }
        if self.coft && !(self.eps.is_finite() && self.eps > 0.0) {
            bail!("eps: must be a positive number");
        }
        self.common.validate()?;
        Ok(())
    }
}

/// PEFT's `adjust_oft_parameters`: `wanted` when it divides `n`, else the nearest divisor of
/// `n` (the lower one on a tie); `n` itself when `wanted` is at least `n`.
fn nearest_divisor(n: usize, wanted: usize) -> usize {
    if wanted >= n {
        return n;
    }
    if n.is_multiple_of(wanted) {
        return wanted;
    }
    let mut higher = wanted;
    while higher <= n && !n.is_multiple_of(higher) {
        higher += 1;
    }
    let mut lower = wanted;
    while lower > 1 && !n.is_multiple_of(lower) {
        lower -= 1;
    }
    match wanted - lower <= higher - wanted {
        true => lower,
        false => higher,
    }
}

/// `b` from a triangle's length `b(b−1)/2` (None: no `b` has it).
pub fn block_size_of(triangle: usize) -> Option<usize> {
    let b = ((1.0 + (1.0 + 8.0 * triangle as f64).sqrt()) / 2.0).round() as usize;
    (rotation::triangle_len(b) == triangle && b > 1).then_some(b)
}

impl OftWeights {
    /// Stored rows: the blocks, or 1 when they share one rotation.
    pub fn rows(&self) -> usize {
        self.triangles.len() / rotation::triangle_len(self.block_size)
    }

    pub fn parameters(&self) -> usize {
        self.triangles.len()
    }

    /// Every stored block's `R`, `[rows, b, b]`, after COFT's projection.
    pub fn rotations(&self) -> Vec<f32> {
        let mut triangles = self.triangles.clone();
        if let Some(eps) = self.coft {
            rotation::project(&mut triangles, self.block_size, eps);
        }
        rotation::rotations(&triangles, self.block_size, self.cayley)
    }

    /// Whether the rotation fits a layer with `in_features` inputs; the problem otherwise.
    pub fn fits(&self, in_features: usize) -> std::result::Result<(), String> {
        let b = self.block_size;
        let rows = self.rows();
        if !in_features.is_multiple_of(b) {
            return Err(format!(
                "its {b}-wide blocks do not tile the layer's {in_features} inputs"
            ));
        }
        if rows != 1 && rows != in_features / b {
            return Err(format!(
                "it has {rows} blocks of {b} but the layer's {in_features} inputs make {}",
                in_features / b
            ));
        }
        Ok(())
    }

    /// `W · blockdiag(R)ᵀ` for `W` `[out, in]`, in place: PEFT's merge.
    pub fn merge_into(&self, w: &mut [f32], in_features: usize) {
        let b = self.block_size;
        let r = self.rotations();
        let merged = rotation::rotate(w, &rotation::transposed(&r, b), b, in_features / b);
        w.copy_from_slice(&merged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PEFT's adjustment of an `r` or block size that does not divide the layer.
    #[test]
    fn blocks_are_peft_s() {
        let config = |r, b| OftConfig::new(r, b, vec!["q_proj".into()]);
        assert_eq!(config(0, 32).geometry(576), (18, 32));
        assert_eq!(config(0, 32).geometry(1536), (48, 32));
        // 80 is not a multiple of 32: PEFT's nearest divisors are 20 and 40; 40 is nearer.
        assert_eq!(config(0, 32).geometry(80), (2, 40));
        assert_eq!(config(0, 7).geometry(32), (4, 8));
        assert_eq!(config(4, 0).geometry(64), (4, 16));
        assert_eq!(config(0, 64).geometry(32), (1, 32));
        assert_eq!(block_size_of(496), Some(32));
        assert_eq!(block_size_of(6), Some(4));
        assert_eq!(block_size_of(5), None);
    }

    #[test]
    fn exactly_one_of_r_and_the_block_size() {
        let mut c = OftConfig::new(0, 32, vec!["q_proj".into()]);
        assert!(c.validate().is_ok());
        c.r = 4;
        assert!(c.validate().unwrap_err().to_string().starts_with("r: "));
        c.other.insert("bias".into(), json!("all"));
        assert!(c.validate().unwrap_err().to_string().starts_with("bias: "));
    }
}
