//! LoRA as Hugging Face PEFT defines it: `y = W x + s · B(A(dropout(x)))` with `s = alpha / r`
//! (or `alpha / √r` with rsLoRA), A `[r, in]` Kaiming-uniform(a=√5) and B `[out, r]` zero at init,
//! so training starts from the base model exactly. Which modules get an adapter follows PEFT's
//! `target_modules`: a list of names (a module matches its own name or any dotted suffix), a
//! regex matched against the whole module path, or `all-linear` (every linear but the LM head).
//!
//! The adapter's forward and backward live in `train::linear`, beside the frozen base product.

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use regex::Regex;

/// PEFT's `bias`: which biases train alongside the adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraBias {
    None,
    All,
    LoraOnly,
}

impl LoraBias {
    pub fn parse(s: &str) -> Result<LoraBias> {
        Ok(match s {
            "none" => LoraBias::None,
            "all" => LoraBias::All,
            "lora_only" => LoraBias::LoraOnly,
            other => bail!("bias: {other:?} is not one of none, all, lora_only"),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LoraBias::None => "none",
            LoraBias::All => "all",
            LoraBias::LoraOnly => "lora_only",
        }
    }
}

/// PEFT's `target_modules`.
#[derive(Clone, Debug)]
pub enum TargetModules {
    /// Module names such as `q_proj`: a module matches when its path is the name or ends in `.name`.
    Names(Vec<String>),
    /// A regex that must match the whole module path (PEFT's `re.fullmatch`).
    Regex(Regex),
    /// Every linear layer except the output layer (PEFT's `all-linear`).
    AllLinear,
}

impl TargetModules {
    /// A regex, compiled so that it must match the whole path.
    pub fn regex(pattern: &str) -> Result<TargetModules> {
        let full = format!("^(?:{pattern})$");
        let re = Regex::new(&full).with_context(|| format!("target_modules regex {pattern:?}"))?;
        Ok(TargetModules::Regex(re))
    }

    /// Whether the linear module at `path` (e.g. `model.layers.0.self_attn.q_proj`) gets an adapter.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            TargetModules::Names(names) => names
                .iter()
                .any(|n| path == n || path.ends_with(&format!(".{n}"))),
            TargetModules::Regex(re) => re.is_match(path),
            TargetModules::AllLinear => path != "lm_head",
        }
    }
}

/// The hyper-parameters of one LoRA run.
#[derive(Clone, Debug)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: TargetModules,
    pub bias: LoraBias,
    pub use_rslora: bool,
    /// Seeds the A initialisation (PEFT draws it from torch's global generator).
    pub seed: u64,
}

impl LoraSettings {
    /// `s` in `W x + s · B A x`.
    pub fn scale(&self) -> f32 {
        let r = self.r as f64;
        let s = if self.use_rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        };
        s as f32
    }

    /// Whether the base tensor `name` trains beside the adapters: PEFT's `bias` (`all`: every
    /// bias; `lora_only`: the biases of targeted modules).
    pub fn trains_base(&self, name: &str) -> bool {
        let Some(module) = name.strip_suffix(".bias") else {
            return false;
        };
        match self.bias {
            LoraBias::None => false,
            LoraBias::All => true,
            LoraBias::LoraOnly => self.targets.matches(module),
        }
    }
}

/// One module's adapter: A `[r, in]`, B `[out, r]`, and their gradients.
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
}

impl Lora {
    /// PEFT's default init: A ~ kaiming_uniform(a=√5), i.e. U(−1/√in, 1/√in); B = 0. `stream`
    /// tells modules apart so each draws its own A from the run's seed.
    pub fn init(
        settings: &LoraSettings,
        in_features: usize,
        out_features: usize,
        stream: u64,
    ) -> Lora {
        let mut rng =
            StdRng::seed_from_u64(settings.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let bound = 1.0 / (in_features as f32).sqrt();
        let a = (0..settings.r * in_features)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Lora::from_weights(
            settings,
            in_features,
            out_features,
            a,
            vec![0.0; out_features * settings.r],
        )
    }

    /// An adapter with given A and B (e.g. read from a PEFT adapter directory).
    pub fn from_weights(
        settings: &LoraSettings,
        in_features: usize,
        out_features: usize,
        a: Vec<f32>,
        b: Vec<f32>,
    ) -> Lora {
        let r = settings.r;
        assert_eq!(a.len(), r * in_features, "LoRA A must be [r, in]");
        assert_eq!(b.len(), out_features * r, "LoRA B must be [out, r]");
        Lora {
            r,
            in_features,
            out_features,
            scale: settings.scale(),
            dropout: settings.dropout,
            grad_a: vec![0.0; a.len()],
            grad_b: vec![0.0; b.len()],
            a,
            b,
        }
    }

    pub fn parameter_count(&self) -> usize {
        self.a.len() + self.b.len()
    }
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

    fn settings(r: usize, alpha: f64, rslora: bool) -> LoraSettings {
        LoraSettings {
            r,
            alpha,
            dropout: 0.0,
            targets: TargetModules::AllLinear,
            bias: LoraBias::None,
            use_rslora: rslora,
            seed: 7,
        }
    }

    #[test]
    fn scale_is_alpha_over_r_or_its_root() {
        assert_eq!(settings(8, 32.0, false).scale(), 4.0);
        assert_eq!(settings(16, 32.0, true).scale(), 8.0);
    }

    #[test]
    fn target_names_match_whole_dotted_suffixes_only() {
        let t = TargetModules::Names(vec!["q_proj".into(), "mlp.down_proj".into()]);
        assert!(t.matches("model.layers.3.self_attn.q_proj"));
        assert!(t.matches("model.layers.0.mlp.down_proj"));
        assert!(!t.matches("model.layers.0.self_attn.qq_proj"));
        assert!(!t.matches("model.layers.0.self_attn.v_proj"));
    }

    #[test]
    fn target_regex_must_match_the_whole_path() {
        let t = TargetModules::regex(r"model\.layers\.[01]\.self_attn\.(q|v)_proj").unwrap();
        assert!(t.matches("model.layers.1.self_attn.v_proj"));
        assert!(!t.matches("model.layers.11.self_attn.v_proj"));
        assert!(!t.matches("model.layers.1.self_attn.v_proj.extra"));
        assert!(TargetModules::regex("(").is_err());
    }

    #[test]
    fn all_linear_excludes_the_lm_head() {
        assert!(TargetModules::AllLinear.matches("model.layers.0.mlp.up_proj"));
        assert!(!TargetModules::AllLinear.matches("lm_head"));
    }

    #[test]
    fn init_is_peft_kaiming_uniform_a_and_zero_b() {
        let s = settings(4, 8.0, false);
        let lora = Lora::init(&s, 100, 30, 1);
        let bound = 0.1;
        assert!(lora.a.iter().all(|&x| x.abs() < bound));
        let spread = lora.a.iter().fold(0f32, |m, &x| m.max(x.abs()));
        assert!(
            spread > 0.09,
            "A should fill U(-0.1, 0.1), max |a| = {spread}"
        );
        assert!(lora.b.iter().all(|&x| x == 0.0));
        assert_ne!(
            lora.a,
            Lora::init(&s, 100, 30, 2).a,
            "modules draw different A"
        );
        assert_eq!(lora.a, Lora::init(&s, 100, 30, 1).a, "the seed fixes A");
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
