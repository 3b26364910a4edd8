//! LoRA as Hugging Face PEFT defines it: `y = W x + s · B(A(dropout(x)))` with `s = alpha / r`
//! (or `alpha / √r` with rsLoRA), A `[r, in]` Kaiming-uniform(a=√5) and B `[out, r]` zero at init,
//! so training starts from the base model exactly. Which modules get an adapter, and each one's
//! rank and alpha, come from the PEFT adapter config (`crate::adapters`), so a run trains exactly
//! the adapter PEFT would build from the same `adapter_config.json`.
//!
//! The adapter's forward and backward live in `train::linear`, beside the frozen base product;
//! DoRA's (`use_dora`: a learned magnitude per output row) in `train::dora`.

use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::lora_init::LoraInit;
use crate::adapters::dora::LowRank;
use crate::adapters::{AdapterConfig, Bias, InitLoraWeights, LoraWeights, ModuleMatcher};
use crate::model::layout::{block_linears, linear_module_names};
use crate::model::norm::Tensor1;
use crate::model::ModelConfig;

/// A LoRA run's adapter config (PEFT's `LoraConfig`: rank, alpha, dropout, targets, bias, rsLoRA,
/// rank/alpha patterns) with its module patterns compiled, how A and B start, and the seed of the
/// initialisation.
pub struct LoraSettings {
    pub config: AdapterConfig,
    pub matcher: ModuleMatcher,
    /// PEFT's default, or from the base weight (`init_lora_weights`: OLoRA, PiSSA).
    pub init: LoraInit,
    /// Seeds the A initialisation (PEFT draws it from torch's global generator) and PiSSA's
    /// random start.
    pub seed: u64,
}

impl LoraSettings {
    pub fn new(config: AdapterConfig, seed: u64) -> Result<LoraSettings> {
        let init = LoraInit::from_config(&config.init_lora_weights)?;
        // An adapter *read* with OLoRA's or PiSSA's init only fits the changed base, so the
        // config refuses those inits; a run starting one changes the base itself.
        let mut checked = config.clone();
        checked.init_lora_weights = InitLoraWeights::Default(true);
        checked.validate()?;
        if init.from_weight() && config.use_dora {
            bail!(
                "init_lora_weights: {:?} cannot start a DoRA adapter",
                config.init_lora_weights
            );
        }
        let matcher = config.matcher()?;
        Ok(LoraSettings {
            config,
            matcher,
            init,
            seed,
        })
    }

    /// PEFT refuses a config whose targets match no module of the model; so does Hone, naming
    /// the model's own linear layers (Phi-3 has `qkv_proj`, not `q_proj`).
    pub fn check_targets_exist(&self, cfg: &ModelConfig) -> Result<()> {
        check_targets_exist(&self.matcher, &self.config, cfg)
    }

    /// Whether the base tensor `name` trains beside the adapters: PEFT's `bias` (`all`: every
    /// bias; `lora_only`: the biases of targeted modules).
    pub fn trains_base(&self, name: &str) -> bool {
        let Some(module) = name.strip_suffix(".bias") else {
            return false;
        };
        match self.config.bias {
            Bias::None => false,
            Bias::All => true,
            Bias::LoraOnly => self.matcher.is_target(module).unwrap_or(false),
        }
    }
}

/// See [`LoraSettings::check_targets_exist`].
pub fn check_targets_exist(
    matcher: &ModuleMatcher,
    config: &AdapterConfig,
    cfg: &ModelConfig,
) -> Result<()> {
    let linears = block_linears(cfg);
    for layer in 0..cfg.num_hidden_layers {
        for linear in &linears {
            if matcher.is_target(&format!("model.layers.{layer}.{}", linear.name))? {
                return Ok(());
            }
        }
    }
    bail!(
        "LoRA targets {}: none of this model's linear layers match (each block has {})",
        config.target_modules_text(),
        linear_module_names(cfg).join(", ")
    )
}

/// One module's adapter: A `[r, in]`, B `[out, r]`, DoRA's magnitude `[out]`, and their gradients.
#[derive(Clone, Debug)]
pub struct Lora {
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub scale: f32,
    pub dropout: f32,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub grad_a: Vec<f32>,
    pub grad_b: Vec<f32>,
    /// DoRA's `lora_magnitude_vector` (None: plain LoRA). A new DoRA adapter gets it from its
    /// base weight once the projection is built ([`super::dora::init_magnitudes`]).
    pub magnitude: Option<Tensor1>,
    /// `(A₀, B₀)` of an adapter that started from the base weight (OLoRA, PiSSA), whose base is
    /// the residual `W − s·B₀·A₀`: saved adapters are converted back onto W with them.
    pub start: Option<(Vec<f32>, Vec<f32>)>,
}

impl Lora {
    /// PEFT's default init: A ~ kaiming_uniform(a=√5), i.e. U(−1/√in, 1/√in); B = 0. `stream`
    /// tells modules apart so each draws its own A from the run's seed.
    pub fn init(shape: LoraShape, scale: f32, dropout: f32, seed: u64, stream: u64) -> Lora {
        let mut rng = StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let bound = 1.0 / (shape.in_features as f32).sqrt();
        Lora {
            r: shape.r,
            in_features: shape.in_features,
            out_features: shape.out_features,
            scale,
            dropout,
            a: (0..shape.r * shape.in_features)
                .map(|_| rng.random_range(-bound..bound))
                .collect(),
            b: vec![0.0; shape.out_features * shape.r],
            grad_a: vec![0.0; shape.r * shape.in_features],
            grad_b: vec![0.0; shape.out_features * shape.r],
            magnitude: None,
            start: None,
        }
    }

    /// An adapter that starts from saved weights (e.g. a PEFT adapter directory).
    pub fn from_weights(w: &LoraWeights, dropout: f32) -> Lora {
        Lora {
            r: w.r,
            in_features: w.in_features,
            out_features: w.out_features,
            scale: w.scale as f32,
            dropout,
            grad_a: vec![0.0; w.a.len()],
            grad_b: vec![0.0; w.b.len()],
            a: w.a.clone(),
            b: w.b.clone(),
            magnitude: w.magnitude.clone().map(|m| Tensor1::new(m, true)),
            start: None,
        }
    }

    /// The update `scale · B·A`, borrowed.
    pub fn low_rank(&self) -> LowRank<'_> {
        LowRank {
            a: &self.a,
            b: &self.b,
            r: self.r,
            scale: self.scale,
        }
    }

    /// The adapter as PEFT saves it: on the original base, so one that started from the base
    /// weight is converted to `A' = [A; A₀]`, `B' = [B, −B₀]` (rank 2r; `s·B'·A' = s·(B·A − B₀·A₀)`,
    /// the update from W), as PEFT's `path_initial_model_for_weight_conversion`.
    pub fn weights(&self) -> LoraWeights {
        let (a, b, r) = match &self.start {
            None => (self.a.clone(), self.b.clone(), self.r),
            Some((a0, b0)) => {
                let a = [self.a.as_slice(), a0].concat();
                let b = self
                    .b
                    .chunks_exact(self.r)
                    .zip(b0.chunks_exact(self.r))
                    .flat_map(|(b, b0)| b.iter().copied().chain(b0.iter().map(|v| -v)))
                    .collect();
                (a, b, 2 * self.r)
            }
        };
        LoraWeights {
            a,
            b,
            r,
            in_features: self.in_features,
            out_features: self.out_features,
            scale: f64::from(self.scale),
            magnitude: self.magnitude.as_ref().map(|m| m.value.clone()),
        }
    }
}

/// Rank and layer sizes of one adapter.
#[derive(Clone, Copy, Debug)]
pub struct LoraShape {
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
}

/// PEFT's `print_trainable_parameters()` line.
pub fn trainable_parameters_line(trainable: usize, total: usize) -> String {
    let percent = if total == 0 {
        0.0
    } else {
        100.0 * trainable as f64 / total as f64
    };
    format!(
        "trainable params: {} || all params: {} || trainable%: {:.4}",
        thousands(trainable),
        thousands(total),
        percent
    )
}

/// The trainable count of a [`trainable_parameters_line`] (None: not such a line).
pub fn parse_trainable_parameters(line: &str) -> Option<usize> {
    let count = line
        .strip_prefix("trainable params: ")?
        .split(" ||")
        .next()?;
    count.replace(',', "").parse().ok()
}

/// `1234567` → `1,234,567`, as Python's `f"{n:,}"`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::TargetModules;

    fn settings(bias: Bias, targets: &[&str]) -> LoraSettings {
        let names = targets.iter().map(|t| t.to_string()).collect();
        let mut config = AdapterConfig::new(4, 8.0, TargetModules::Names(names));
        config.bias = bias;
        LoraSettings::new(config, 7).unwrap()
    }

    #[test]
    fn bias_modes_choose_which_biases_train() {
        let q = "model.layers.0.self_attn.q_proj.bias";
        let k = "model.layers.0.self_attn.k_proj.bias";
        assert!(!settings(Bias::None, &["q_proj"]).trains_base(q));
        assert!(settings(Bias::All, &["q_proj"]).trains_base(k));
        let only = settings(Bias::LoraOnly, &["q_proj"]);
        assert!(only.trains_base(q) && !only.trains_base(k));
        assert!(!only.trains_base("model.layers.0.self_attn.q_proj.weight"));
    }

    #[test]
    fn init_is_peft_kaiming_uniform_a_and_zero_b() {
        let shape = LoraShape {
            r: 4,
            in_features: 100,
            out_features: 30,
        };
        let lora = Lora::init(shape, 2.0, 0.0, 7, 1);
        assert!(lora.a.iter().all(|&x| x.abs() < 0.1));
        let spread = lora.a.iter().fold(0f32, |m, &x| m.max(x.abs()));
        assert!(
            spread > 0.09,
            "A should fill U(-0.1, 0.1), max |a| = {spread}"
        );
        assert!(lora.b.iter().all(|&x| x == 0.0));
        assert_ne!(
            lora.a,
            Lora::init(shape, 2.0, 0.0, 7, 2).a,
            "modules draw different A"
        );
        assert_eq!(
            lora.a,
            Lora::init(shape, 2.0, 0.0, 7, 1).a,
            "the seed fixes A"
        );
    }

    #[test]
    fn trainable_line_is_peft_format() {
        assert_eq!(
            trainable_parameters_line(460_800, 134_975_808),
            "trainable params: 460,800 || all params: 134,975,808 || trainable%: 0.3414"
        );
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
