//! The value types of the run config that YAML scalars alone do not express: comma lists,
//! step counts that may be ratios, the resume target, and the enumerated choices.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A list written LLaMA-Factory's way, `a,b,c` (spaces around items are trimmed), or as a YAML
/// sequence. Printed back as the comma string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommaList(pub Vec<String>);

impl CommaList {
    pub fn items(&self) -> &[String] {
        &self.0
    }

    /// True when the list is the single word `word` (e.g. `all`, `none`).
    pub fn is(&self, word: &str) -> bool {
        self.0.len() == 1 && self.0[0] == word
    }
}

impl From<&str> for CommaList {
    fn from(s: &str) -> Self {
        CommaList(s.split(',').map(|item| item.trim().to_string()).collect())
    }
}

impl fmt::Display for CommaList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl Serialize for CommaList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CommaList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = CommaList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a comma-separated string or a list of names")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<CommaList, E> {
                checked(CommaList::from(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommaList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item.trim().to_string());
                }
                checked(CommaList(items))
            }
        }
        d.deserialize_any(ListVisitor)
    }
}

fn checked<E: de::Error>(list: CommaList) -> Result<CommaList, E> {
    if list.0.is_empty() || list.0.iter().any(String::is_empty) {
        return Err(E::custom(format!(
            "empty name in the list {:?}",
            list.to_string()
        )));
    }
    Ok(list)
}

/// An interval in optimizer steps, as transformers' `*_steps` arguments: an integer is a count,
/// a number in (0, 1) a ratio of the run's total steps (rounded up once the total is known).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepCount {
    Steps(u64),
    Ratio(f64),
}

impl StepCount {
    /// The count for a run of `total_steps` optimizer steps.
    pub fn resolve(self, total_steps: u64) -> u64 {
        match self {
            StepCount::Steps(n) => n,
            StepCount::Ratio(r) => (total_steps as f64 * r).ceil() as u64,
        }
    }

    pub fn is_zero(self) -> bool {
        self == StepCount::Steps(0)
    }
}

impl Serialize for StepCount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            StepCount::Steps(n) => s.serialize_u64(n),
            StepCount::Ratio(r) => s.serialize_f64(r),
        }
    }
}

impl<'de> Deserialize<'de> for StepCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl Visitor<'_> for StepVisitor {
            type Value = StepCount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number of steps or a ratio in (0, 1) of the total steps")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<StepCount, E> {
                Ok(StepCount::Steps(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<StepCount, E> {
                u64::try_from(n)
                    .map(StepCount::Steps)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<StepCount, E> {
                if x > 0.0 && x < 1.0 {
                    Ok(StepCount::Ratio(x))
                } else if x >= 0.0 && x.fract() == 0.0 && x <= u64::MAX as f64 {
                    Ok(StepCount::Steps(x as u64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(x), &self))
                }
            }
        }
        d.deserialize_any(StepVisitor)
    }
}

/// `resume_from_checkpoint`: `null`/`false` start fresh, `true` takes the newest complete
/// `checkpoint-N` in `output_dir`, a path names one checkpoint directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ResumeFrom {
    #[default]
    No,
    Latest,
    Path(PathBuf),
}

impl ResumeFrom {
    pub fn is_resuming(&self) -> bool {
        *self != ResumeFrom::No
    }
}

impl Serialize for ResumeFrom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ResumeFrom::No => s.serialize_none(),
            ResumeFrom::Latest => s.serialize_bool(true),
            ResumeFrom::Path(p) => s.collect_str(&p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ResumeFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ResumeVisitor;
        impl<'de> Visitor<'de> for ResumeVisitor {
            type Value = ResumeFrom;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "true (the latest checkpoint in output_dir), a checkpoint directory, or null",
                )
            }
            fn visit_unit<E: de::Error>(self) -> Result<ResumeFrom, E> {
                Ok(ResumeFrom::No)
            }
            fn visit_none<E: de::Error>(self) -> Result<ResumeFrom, E> {
                Ok(ResumeFrom::No)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<ResumeFrom, D2::Error> {
                d.deserialize_any(self)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<ResumeFrom, E> {
                Ok(if b {
                    ResumeFrom::Latest
                } else {
                    ResumeFrom::No
                })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ResumeFrom, E> {
                if s.is_empty() {
                    return Err(E::invalid_value(de::Unexpected::Str(s), &self));
                }
                Ok(ResumeFrom::Path(PathBuf::from(s)))
            }
        }
        d.deserialize_any(ResumeVisitor)
    }
}

/// LLaMA-Factory's `stage`: what a run learns from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Supervised fine-tuning: conversations, the loss on the responses.
    #[default]
    Sft,
    /// Continued pre-training: raw text, the loss on every token.
    Pt,
    /// Direct preference optimization and its relatives (`pref_loss`): chosen/rejected pairs.
    Dpo,
    /// Kahneman-Tversky optimization: single responses tagged desirable or not.
    Kto,
    /// Reward modelling: a value head learns to score chosen above rejected responses.
    Rm,
}

impl Stage {
    /// The config value, as LLaMA-Factory spells it.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Sft => "sft",
            Stage::Pt => "pt",
            Stage::Dpo => "dpo",
            Stage::Kto => "kto",
            Stage::Rm => "rm",
        }
    }
}

/// LLaMA-Factory's `pref_loss` for `stage: dpo` (the formulas are in `train::dpo::loss`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefLoss {
    /// DPO: −log σ(β·h), h the policy's log-ratio margin over the reference's.
    #[default]
    Sigmoid,
    /// SLiC: max(0, 1 − β·h).
    Hinge,
    /// IPO: (h − 1/(2β))², on mean token log-probabilities.
    Ipo,
    /// ORPO: reference-free, an SFT term plus β times an odds-ratio term.
    Orpo,
    /// SimPO: reference-free, −log σ(β·(mean log-prob margin) − γ).
    Simpo,
}

impl PrefLoss {
    /// Whether the loss compares the policy with a frozen reference model.
    pub fn uses_reference(self) -> bool {
        !matches!(self, PrefLoss::Orpo | PrefLoss::Simpo)
    }

    /// Whether a sequence's log-probability is the mean over its tokens (else the sum).
    pub fn averages_tokens(self) -> bool {
        matches!(self, PrefLoss::Ipo | PrefLoss::Orpo | PrefLoss::Simpo)
    }
}

/// LLaMA-Factory's `finetuning_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinetuningType {
    /// Low-rank adapters on the `lora_target` linear layers; the base weights stay frozen.
    #[default]
    Lora,
    /// Every weight trains.
    Full,
    /// Only `freeze_trainable_modules` of the `freeze_trainable_layers` (plus
    /// `freeze_extra_modules`) train.
    Freeze,
    /// (IA)³: a learned vector scales each targeted layer's outputs (or, for the
    /// `feedforward_modules`, its inputs); the base weights stay frozen. Hone's own (PEFT's method).
    Ia3,
    /// Prompt tuning: `num_virtual_tokens` learned embeddings before every sequence; the base
    /// stays frozen. Hone's own (PEFT's `PROMPT_TUNING`).
    #[serde(rename = "prompt_tuning")]
    PromptTuning,
    /// P-tuning: prompt tuning whose virtual tokens come out of a small MLP encoder (PEFT's
    /// `P_TUNING`; the saved adapter holds the encoder's output).
    #[serde(rename = "p_tuning")]
    PTuning,
    /// Prefix tuning: learned keys and values before every layer's own, for
    /// `num_virtual_tokens` positions every token attends first; the base stays frozen. Hone's
    /// own (PEFT's `PREFIX_TUNING`).
    Prefix,
    /// LLaMA-Adapter: a learned prompt in each of the top `adapter_layers` layers that their
    /// attention also attends, through a gate that starts at zero; the base stays frozen. Hone's
    /// own (PEFT's `ADAPTION_PROMPT`).
    #[serde(rename = "adaption_prompt")]
    AdaptionPrompt,
    /// VeRA: frozen random projections shared by every targeted layer, scaled per layer by two
    /// learned vectors; the base stays frozen. Hone's own (PEFT's `VERA`).
    Vera,
    /// LoHa: each targeted layer's update is the Hadamard product of two rank-`lora_rank`
    /// products, scaled by `lora_alpha / lora_rank`; the base stays frozen. Hone's own (PEFT's
    /// `LOHA`).
    Loha,
    /// LoKr: each targeted layer's update is a Kronecker product of two factors (the second of
    /// rank `lora_rank` when small), scaled by `lora_alpha / lora_rank`; the base stays frozen.
    /// Hone's own (PEFT's `LOKR`).
    Lokr,
    /// OFT: each `lora_target` layer's input is turned by a learned block-diagonal orthogonal
    /// matrix (blocks of `oft_block_size`, or `oft_rank` blocks); the base stays frozen.
    Oft,
    /// AdaLoRA: an SVD-shaped update `B·diag(E)·A` on each `target_modules` layer whose ranks
    /// (from `init_r` down to an average `target_r`) go where they matter most, with an
    /// orthogonality penalty; the base stays frozen. Hone's own (PEFT's `ADALORA`).
    Adalora,
}

impl FinetuningType {
    /// Whether the run trains an adapter over a frozen base (and saves a PEFT adapter).
    pub fn is_adapter(self) -> bool {
        !matches!(self, FinetuningType::Full | FinetuningType::Freeze)
    }

    /// Whether the run learns virtual tokens (prompt tuning, P-tuning, prefix tuning).
    pub fn is_prompt_learning(self) -> bool {
        matches!(
            self,
            FinetuningType::PromptTuning | FinetuningType::PTuning | FinetuningType::Prefix
        )
    }
}

/// PEFT's `prompt_tuning_init`: how prompt tuning's virtual tokens start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptTuningInit {
    /// Drawn from N(0, 1), as PEFT's `nn.Embedding` starts.
    #[default]
    #[serde(alias = "RANDOM")]
    Random,
    /// The embeddings of `prompt_tuning_init_text`'s tokens, repeated or cut to the number of
    /// virtual tokens.
    #[serde(alias = "TEXT")]
    Text,
    /// The embeddings of tokens drawn uniformly from the vocabulary.
    #[serde(alias = "SAMPLE_VOCAB")]
    SampleVocab,
}

impl PromptTuningInit {
    /// PEFT's name for it, as `adapter_config.json` stores it.
    pub fn peft_name(self) -> &'static str {
        match self {
            PromptTuningInit::Random => "RANDOM",
            PromptTuningInit::Text => "TEXT",
            PromptTuningInit::SampleVocab => "SAMPLE_VOCAB",
        }
    }
}

/// LLaMA-Factory's `quantization_method`: Hone quantizes a base at load as bitsandbytes does
/// (GPTQ, AWQ, HQQ, EETQ and the rest need their own pre-quantized checkpoints or kernels).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizationMethod {
    #[default]
    Bnb,
}

/// LLaMA-Factory's `quantization_type`: bitsandbytes' 4-bit data type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizationType {
    /// NormalFloat: codes at the quantiles of a normal distribution (QLoRA's choice).
    #[default]
    Nf4,
    /// A 4-bit float: sign, 2 exponent bits, 1 mantissa bit.
    Fp4,
}

/// transformers' `eval_strategy` (`IntervalStrategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalStrategy {
    #[default]
    No,
    Steps,
    Epoch,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: for<'de> Deserialize<'de>>(yaml: &str) -> Result<T, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn comma_lists_accept_strings_and_sequences() {
        let a: CommaList = parse("identity, alpaca_en_demo").unwrap();
        let b: CommaList = parse("[identity, alpaca_en_demo]").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "identity,alpaca_en_demo");
        let err = parse::<CommaList>("\"a,,b\"").unwrap_err();
        assert!(err.contains("empty name"), "{err}");
    }

    #[test]
    fn step_counts_are_whole_numbers_or_ratios() {
        assert_eq!(parse::<StepCount>("10").unwrap(), StepCount::Steps(10));
        assert_eq!(parse::<StepCount>("10.0").unwrap(), StepCount::Steps(10));
        assert_eq!(parse::<StepCount>("0.25").unwrap(), StepCount::Ratio(0.25));
        assert_eq!(StepCount::Ratio(0.25).resolve(9), 3);
        for bad in ["1.5", "-3", "\"ten\""] {
            assert!(parse::<StepCount>(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn resume_takes_bool_path_or_null() {
        assert_eq!(parse::<ResumeFrom>("null").unwrap(), ResumeFrom::No);
        assert_eq!(parse::<ResumeFrom>("false").unwrap(), ResumeFrom::No);
        assert_eq!(parse::<ResumeFrom>("true").unwrap(), ResumeFrom::Latest);
        assert_eq!(
            parse::<ResumeFrom>("out/checkpoint-5").unwrap(),
            ResumeFrom::Path("out/checkpoint-5".into())
        );
        assert!(parse::<ResumeFrom>("3").is_err());
    }
}
