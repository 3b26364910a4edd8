//! The model families as switches on the one block: each family's architecture names (HF class,
//! `model_type`, llama.cpp arch), where its norms sit, how it normalizes q and k, its scalar
//! multipliers and window layout, and the config.json keys only some families have.

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;

use super::Fields;
use crate::kernels::glu::Activation;

/// The architectures Hone runs; all are the Llama block with a few switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    SmolLM3,
    Granite,
    Olmo2,
    Gemma2,
    Gemma3,
    Phi3,
    Glm,
    Glm4,
    Starcoder2,
    /// ChatGLM2/ChatGLM3 (and GLM-4's first, remote-code release): GLM-4's block under its
    /// remote-code checkpoint names, q|k|v fused.
    ChatGlm,
    /// Baichuan 2 (remote code): Llama with q|k|v fused as `W_pack` and a normalized LM head.
    Baichuan,
    /// Qwen (v1, remote code): Llama under GPT-2-style names, q|k|v fused as `c_attn` with a
    /// bias, and in inference logn attention scaling and dynamic NTK rotary past `seq_length`.
    QwenV1,
}

/// Each family's names: transformers class (`architectures`), `model_type`, and the
/// `general.architecture` llama.cpp's converter writes (Mistral is converted as `llama`, GLM-4's
/// `GlmForCausalLM` as `chatglm`).
const NAMES: [(Architecture, &str, &str, &str); 16] = [
    (Architecture::Llama, "LlamaForCausalLM", "llama", "llama"),
    (
        Architecture::Mistral,
        "MistralForCausalLM",
        "mistral",
        "llama",
    ),
    (Architecture::Qwen2, "Qwen2ForCausalLM", "qwen2", "qwen2"),
    (Architecture::Qwen3, "Qwen3ForCausalLM", "qwen3", "qwen3"),
    (
        Architecture::SmolLM3,
        "SmolLM3ForCausalLM",
        "smollm3",
        "smollm3",
    ),
    (
        Architecture::Granite,
        "GraniteForCausalLM",
        "granite",
        "granite",
    ),
    (Architecture::Olmo2, "Olmo2ForCausalLM", "olmo2", "olmo2"),
    (
        Architecture::Gemma2,
        "Gemma2ForCausalLM",
        "gemma2",
        "gemma2",
    ),
    (
        Architecture::Gemma3,
        "Gemma3ForCausalLM",
        "gemma3_text",
        "gemma3",
    ),
    (Architecture::Phi3, "Phi3ForCausalLM", "phi3", "phi3"),
    // glm-4-9b(-chat)-hf and GLM-Edge; llama.cpp converts it as its ChatGLM arch.
    (Architecture::Glm, "GlmForCausalLM", "glm", "chatglm"),
    // GLM-4-0414 and GLM-Z1.
    (Architecture::Glm4, "Glm4ForCausalLM", "glm4", "glm4"),
    (
        Architecture::Starcoder2,
        "Starcoder2ForCausalLM",
        "starcoder2",
        "starcoder2",
    ),
    // Remote-code families (`trust_remote_code`): their checkpoints' own class names.
    (Architecture::ChatGlm, "ChatGLMModel", "chatglm", "chatglm"),
    (
        Architecture::Baichuan,
        "BaichuanForCausalLM",
        "baichuan",
        "baichuan",
    ),
    (Architecture::QwenV1, "QWenLMHeadModel", "qwen", "qwen"),
];

/// Other class names checkpoints of a family carry in `architectures`.
const CLASS_ALIASES: [(&str, Architecture); 1] =
    [("ChatGLMForConditionalGeneration", Architecture::ChatGlm)];

/// The block's linear layers as a family's checkpoints name them (module paths within a layer).
/// A family uses the fused names where it fuses ([`Architecture::fused_qkv`],
/// [`Architecture::fused_gate_up`]) and StarCoder2's ungated MLP uses `up` and `down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearNames {
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub qkv: &'static str,
    pub o: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    pub gate_up: &'static str,
    pub down: &'static str,
}

const LLAMA_LINEARS: LinearNames = LinearNames {
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    qkv: "self_attn.qkv_proj",
    o: "self_attn.o_proj",
    gate: "mlp.gate_proj",
    up: "mlp.up_proj",
    gate_up: "mlp.gate_up_proj",
    down: "mlp.down_proj",
};

/// Every family's names, for what may be named before a model is loaded (`lora_target`).
pub const ALL_LINEAR_NAMES: [LinearNames; 5] = [
    LLAMA_LINEARS,
    LinearNames {
        up: "mlp.c_fc",
        down: "mlp.c_proj",
        ..LLAMA_LINEARS
    },
    LinearNames {
        qkv: "self_attention.query_key_value",
        o: "self_attention.dense",
        gate_up: "mlp.dense_h_to_4h",
        down: "mlp.dense_4h_to_h",
        ..LLAMA_LINEARS
    },
    LinearNames {
        qkv: "self_attn.W_pack",
        ..LLAMA_LINEARS
    },
    // Qwen's MLP is `c_proj(w1(x) · silu(w2(x)))`: w2 is the gate.
    LinearNames {
        qkv: "attn.c_attn",
        o: "attn.c_proj",
        gate: "mlp.w2",
        up: "mlp.w1",
        down: "mlp.c_proj",
        ..LLAMA_LINEARS
    },
];

impl Architecture {
    fn names(self) -> (&'static str, &'static str, &'static str) {
        let &(_, class, model_type, gguf) = NAMES
            .iter()
            .find(|(a, ..)| *a == self)
            .expect("every architecture has names");
        (class, model_type, gguf)
    }

    /// The transformers class name, as written in `config.json`'s `architectures`.
    pub fn hf_class(self) -> &'static str {
        self.names().0
    }

    pub fn model_type(self) -> &'static str {
        self.names().1
    }

    /// llama.cpp's `general.architecture` for this family.
    pub fn gguf_arch(self) -> &'static str {
        self.names().2
    }

    /// The family of a GGUF's `general.architecture` (`llama` is Llama); None for those Hone does
    /// not run. llama.cpp's `chatglm` holds GLM-4 (q, k, v apart) and ChatGLM2/3 (`attn_qkv`).
    pub fn from_gguf_arch(arch: &str, fused_qkv: bool) -> Option<Self> {
        if arch == "chatglm" && fused_qkv {
            return Some(Architecture::ChatGlm);
        }
        NAMES.iter().find(|n| n.3 == arch).map(|n| n.0)
    }

    /// Whether the family's checkpoints ship their own modeling code (`trust_remote_code`), with
    /// config keys of their own.
    pub fn remote_code(self) -> bool {
        matches!(
            self,
            Architecture::ChatGlm | Architecture::Baichuan | Architecture::QwenV1
        )
    }

    /// The block's linear layers as this family's checkpoints name them.
    pub fn linear_names(self) -> LinearNames {
        match self {
            Architecture::Starcoder2 => ALL_LINEAR_NAMES[1],
            Architecture::ChatGlm => ALL_LINEAR_NAMES[2],
            Architecture::Baichuan => ALL_LINEAR_NAMES[3],
            Architecture::QwenV1 => ALL_LINEAR_NAMES[4],
            _ => LLAMA_LINEARS,
        }
    }

    /// How the family's checkpoints name the tensors outside a layer's linear layers, when not
    /// as transformers' Llama does (the remote-code families).
    pub fn checkpoint_names(self) -> Option<&'static CheckpointNames> {
        match self {
            Architecture::ChatGlm => Some(&CHATGLM_NAMES),
            Architecture::QwenV1 => Some(&QWEN_V1_NAMES),
            _ => None,
        }
    }

    /// Every llama.cpp arch Hone reads, each once.
    pub fn gguf_archs() -> Vec<&'static str> {
        let mut archs: Vec<&str> = Vec::new();
        for &(_, _, _, arch) in &NAMES {
            if !archs.contains(&arch) {
                archs.push(arch);
            }
        }
        archs
    }

    /// Where the family's block norms sit.
    pub fn norm_placement(self) -> NormPlacement {
        match self {
            Architecture::Olmo2 => NormPlacement::Post,
            Architecture::Gemma2 | Architecture::Gemma3 => NormPlacement::Sandwich,
            Architecture::Glm4 => NormPlacement::SandwichGlm4,
            _ => NormPlacement::Pre,
        }
    }

    /// What the family adds to its norm weights: Gemma's RMSNorm scales by `1 + w`.
    pub fn norm_offset(self) -> f32 {
        match self {
            Architecture::Gemma2 | Architecture::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    /// How the family normalizes q and k, if it does.
    pub fn qk_norm(self) -> Option<QkNorm> {
        match self {
            Architecture::Qwen3 | Architecture::Gemma3 => Some(QkNorm::PerHead),
            Architecture::Olmo2 => Some(QkNorm::FullWidth),
            _ => None,
        }
    }

    /// Whether the family stores q|k|v as one module (Phi-3's `qkv_proj`, ChatGLM's
    /// `query_key_value`, Baichuan's `W_pack`, Qwen's `c_attn`), which is then also the module
    /// LoRA targets.
    pub fn fused_qkv(self) -> bool {
        matches!(
            self,
            Architecture::Phi3
                | Architecture::ChatGlm
                | Architecture::Baichuan
                | Architecture::QwenV1
        )
    }

    /// Whether llama.cpp's GGUF keeps apart (`attn_q`, `attn_k`, `attn_v`) the q|k|v the family's
    /// checkpoints fuse: Baichuan's `W_pack`, which its converter splits.
    pub fn gguf_splits_qkv(self) -> bool {
        self == Architecture::Baichuan
    }

    /// Whether the family stores gate|up as one module (Phi-3's and GLM-4's `gate_up_proj`,
    /// ChatGLM's `dense_h_to_4h`).
    pub fn fused_gate_up(self) -> bool {
        matches!(
            self,
            Architecture::Phi3 | Architecture::Glm | Architecture::Glm4 | Architecture::ChatGlm
        )
    }

    /// The `partial_rotary_factor` of a family that rotates only the leading part of each head,
    /// when its config does not say (GLM-4's classes default to half, ChatGLM always rotates
    /// half).
    pub fn partial_rotary_default(self) -> Option<f64> {
        match self {
            Architecture::Phi3 => Some(1.0),
            Architecture::Glm | Architecture::Glm4 | Architecture::ChatGlm => Some(0.5),
            _ => None,
        }
    }

    /// Whether transformers' embedding layer itself multiplies by the embedding scale (Gemma's
    /// `ScaledWordEmbedding`), so what is added to its output (NEFTune's noise, prompt learning's
    /// virtual tokens) is not multiplied; Granite multiplies in the model's forward, after them.
    pub fn scales_in_embedding_layer(self) -> bool {
        matches!(self, Architecture::Gemma2 | Architecture::Gemma3)
    }

    /// Whether the family's norms are LayerNorms with a bias (StarCoder2) rather than RMSNorms.
    pub fn layer_norm(self) -> bool {
        self == Architecture::Starcoder2
    }

    /// Whether the MLP is gated, `down(act(gate) · up)`; else `c_proj(act(c_fc(x)))` (StarCoder2).
    pub fn gated_mlp(self) -> bool {
        self != Architecture::Starcoder2
    }

    /// Whether the family rotates dimensions `(2i, 2i + 1)` together (GLM-4, as llama.cpp's NORM
    /// rope) instead of `(i, i + d/2)`.
    pub fn rotary_interleaved(self) -> bool {
        matches!(
            self,
            Architecture::Glm | Architecture::Glm4 | Architecture::ChatGlm
        )
    }

    /// Whether llama.cpp's converter permutes this family's q/k rows: only for archs whose
    /// llama.cpp rotary is the interleaved (NORM) kind while HF rotates halves (Llama and the
    /// families converted as its subclasses, Baichuan); Qwen's archs use NEOX rotary, HF's own
    /// layout.
    pub fn gguf_permutes_qk(self) -> bool {
        matches!(
            self,
            Architecture::Llama
                | Architecture::Mistral
                | Architecture::SmolLM3
                | Architecture::Granite
                | Architecture::Baichuan
        )
    }
}

/// A remote-code family's checkpoint names, mapped onto the names Hone uses (transformers'
/// Llama names): whole prefixes outside the layers, and module names within a layer.
#[derive(Debug)]
pub struct CheckpointNames {
    /// (checkpoint prefix, Hone's prefix): the embeddings, the layers' common prefix, the final
    /// norm and the head.
    outer: &'static [(&'static str, &'static str)],
    /// (checkpoint module, Hone's module) within a layer.
    layer: &'static [(&'static str, &'static str)],
    /// Checkpoint tensors that hold nothing Hone uses (buffers the modeling code recomputes).
    unused: &'static [&'static str],
}

const CHATGLM_NAMES: CheckpointNames = CheckpointNames {
    outer: &[
        (
            "transformer.embedding.word_embeddings.",
            "model.embed_tokens.",
        ),
        ("transformer.encoder.layers.", "model.layers."),
        ("transformer.encoder.final_layernorm.", "model.norm."),
        ("transformer.output_layer.", "lm_head."),
    ],
    layer: &[],
    unused: &["transformer.rotary_pos_emb.inv_freq"],
};

const QWEN_V1_NAMES: CheckpointNames = CheckpointNames {
    outer: &[
        ("transformer.wte.", "model.embed_tokens."),
        ("transformer.h.", "model.layers."),
        ("transformer.ln_f.", "model.norm."),
    ],
    layer: &[
        ("ln_1.", "input_layernorm."),
        ("ln_2.", "post_attention_layernorm."),
    ],
    unused: &[],
};

impl CheckpointNames {
    /// Hone's name of checkpoint tensor or module `name`; None for the unused buffers. Names
    /// the map does not know pass unchanged.
    pub fn to_hone(&self, name: &str) -> Option<String> {
        if self.unused.contains(&name) {
            return None;
        }
        Some(Self::rename(name, self.outer, self.layer, |(c, h)| (c, h)))
    }

    /// The checkpoint's name of Hone's tensor or module `name`.
    pub fn to_checkpoint(&self, name: &str) -> String {
        Self::rename(name, self.outer, self.layer, |(c, h)| (h, c))
    }

    /// Renames `name` by the first outer prefix that matches (`from` → `to` as `dir` orders each
    /// pair) and, under the layers' prefix, the module after the layer index.
    fn rename(
        name: &str,
        outer: &[(&'static str, &'static str)],
        layer: &[(&'static str, &'static str)],
        dir: impl Fn((&'static str, &'static str)) -> (&'static str, &'static str),
    ) -> String {
        let Some((from, to)) = outer
            .iter()
            .map(|&pair| dir(pair))
            .find(|(from, _)| name.starts_with(from))
        else {
            return name.to_string();
        };
        let rest = &name[from.len()..];
        let renamed_in_layer = rest.split_once('.').and_then(|(index, module)| {
            index.parse::<usize>().ok()?;
            let (m_from, m_to) = layer
                .iter()
                .map(|&pair| dir(pair))
                .find(|(m_from, _)| module.starts_with(m_from))?;
            Some(format!("{index}.{m_to}{}", &module[m_from.len()..]))
        });
        format!("{to}{}", renamed_in_layer.as_deref().unwrap_or(rest))
    }
}

/// A multimodal checkpoint class whose language model Hone runs (its vision tower and projector
/// are left out): Gemma 3 from 4B up ships as `Gemma3ForConditionalGeneration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Wrapper {
    Gemma3ForConditionalGeneration,
}

impl Wrapper {
    pub fn from_hf_class(class: &str) -> Option<(Wrapper, Architecture)> {
        match class {
            "Gemma3ForConditionalGeneration" => Some((
                Wrapper::Gemma3ForConditionalGeneration,
                Architecture::Gemma3,
            )),
            _ => None,
        }
    }

    pub fn hf_class(self) -> &'static str {
        match self {
            Wrapper::Gemma3ForConditionalGeneration => "Gemma3ForConditionalGeneration",
        }
    }

    /// The wrapper's path of a text-model module or tensor (`model.layers.0…` →
    /// `model.language_model.layers.0…`), as transformers 5 names its modules and PEFT its keys.
    pub fn module_path(self, text_path: &str) -> String {
        match text_path.strip_prefix("model.") {
            Some(rest) => format!("model.language_model.{rest}"),
            None => text_path.to_string(),
        }
    }
}

/// The text model's name of a tensor or module of a multimodal checkpoint, in either layout
/// (`language_model.model.…` as checkpoints store it, `model.language_model.…` as transformers 5
/// names modules); None for the vision tower and the projector. Other names pass unchanged.
pub fn text_model_name(name: &str) -> Option<String> {
    let renames = [
        ("language_model.model.", "model."),
        ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ];
    for (from, to) in renames {
        if let Some(rest) = name.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    let vision = [
        "vision_tower.",
        "multi_modal_projector.",
        "model.vision_tower.",
        "model.multi_modal_projector.",
    ];
    match vision.iter().any(|p| name.starts_with(p)) {
        true => None,
        false => Some(name.to_string()),
    }
}

/// Hone's name of a module or tensor however a checkpoint or an adapter for one names it: a
/// multimodal checkpoint's language model ([`text_model_name`]) or a remote-code family's own
/// names (their prefixes are the families' alone); None for the parts Hone does not run.
pub fn hone_name(name: &str) -> Option<String> {
    let name = text_model_name(name)?;
    [&CHATGLM_NAMES, &QWEN_V1_NAMES]
        .iter()
        .try_fold(name, |name, names| names.to_hone(&name))
}

/// Sliding-window attention: each query of the windowed layers sees itself and the `size - 1`
/// keys before it (transformers' `sliding_window`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlidingWindow {
    pub size: usize,
    /// The layers that window, in increasing order; the others attend to every earlier key.
    pub layers: Vec<usize>,
}

/// Where a block's RMSNorms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NormPlacement {
    /// On each branch's input: Llama.
    Pre,
    /// On each branch's output, before the residual add: OLMo 2.
    Post,
    /// On both (four norms): Gemma 2 and 3.
    Sandwich,
    /// On both, under GLM-4-0414's names (`post_attention_layernorm` is the MLP's input norm).
    SandwichGlm4,
}

/// One of a block's norm positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockNorm {
    AttnIn,
    AttnOut,
    MlpIn,
    MlpOut,
}

impl NormPlacement {
    /// The block's norms: position, HF module name and llama.cpp name, in the order they run
    /// (HF's `post_attention_layernorm` is Llama's MLP input norm but OLMo 2's and Gemma's
    /// attention output norm).
    pub fn hf_name(self, position: BlockNorm) -> Option<&'static str> {
        let norm = self.norms().iter().find(|(p, _, _)| *p == position);
        norm.map(|&(_, hf, _)| hf)
    }

    pub fn norms(self) -> &'static [(BlockNorm, &'static str, &'static str)] {
        use BlockNorm::*;
        match self {
            NormPlacement::Pre => &[
                (AttnIn, "input_layernorm", "attn_norm"),
                (MlpIn, "post_attention_layernorm", "ffn_norm"),
            ],
            NormPlacement::Post => &[
                (AttnOut, "post_attention_layernorm", "post_attention_norm"),
                (MlpOut, "post_feedforward_layernorm", "post_ffw_norm"),
            ],
            NormPlacement::Sandwich => &[
                (AttnIn, "input_layernorm", "attn_norm"),
                (AttnOut, "post_attention_layernorm", "post_attention_norm"),
                (MlpIn, "pre_feedforward_layernorm", "ffn_norm"),
                (MlpOut, "post_feedforward_layernorm", "post_ffw_norm"),
            ],
            NormPlacement::SandwichGlm4 => &[
                (AttnIn, "input_layernorm", "attn_norm"),
                (AttnOut, "post_self_attn_layernorm", "post_attention_norm"),
                (MlpIn, "post_attention_layernorm", "ffn_norm"),
                (MlpOut, "post_mlp_layernorm", "post_ffw_norm"),
            ],
        }
    }
}

/// How q and k are RMS-normalized before the rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QkNorm {
    /// Each head over `head_dim`, one weight vector shared by the heads (Qwen3).
    PerHead,
    /// The whole projection output, weights as wide as it (OLMo 2).
    FullWidth,
}

/// Every how many layers llama.cpp's gemma2 and gemma3 make one global (the others
/// sliding-window): 2 and 6, as the families' configs default to.
pub fn gemma_global_every(architecture: Architecture) -> Option<usize> {
    match architecture {
        Architecture::Gemma2 => Some(2),
        Architecture::Gemma3 => Some(6),
        _ => None,
    }
}

/// The `query_pre_attn_scalar` llama.cpp's gemma2/gemma3 assume, having no key for it: the hidden
/// size per head for the 27B shapes (46 and 62 layers), else `head_dim`.
pub fn gemma_query_scalar(
    architecture: Architecture,
    layers: usize,
    hidden: usize,
    heads: usize,
    head_dim: usize,
) -> usize {
    let layers_27b = if architecture == Architecture::Gemma2 {
        46
    } else {
        62
    };
    if layers == layers_27b {
        hidden / heads.max(1)
    } else {
        head_dim
    }
}

/// SmolLM3 runs RoPE-free ("NoPE") every 4th layer; llama.cpp's smollm3 arch hard-codes that step.
pub const SMOLLM3_NOPE_INTERVAL: usize = 4;

/// Scalar multipliers: Granite's (transformers' `GraniteConfig`) and Gemma's (embeddings ×√hidden,
/// attention `query_pre_attn_scalar^-½`); every other family has the identity values of
/// [`Scales::default`] and the usual `1/√head_dim` attention scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scales {
    /// Token embeddings are multiplied by this (`embedding_multiplier`).
    pub embedding: f64,
    /// Attention scores are scaled by this instead of `1/√head_dim` (`attention_multiplier`).
    pub attention: Option<f64>,
    /// Each branch's output is multiplied by this before the residual add (`residual_multiplier`).
    pub residual: f64,
    /// Logits are divided by this (`logits_scaling`).
    pub logits: f64,
}

impl Default for Scales {
    fn default() -> Self {
        Scales {
            embedding: 1.0,
            attention: None,
            residual: 1.0,
            logits: 1.0,
        }
    }
}

impl Scales {
    /// Whether any multiplier differs from plain Llama's.
    pub fn is_default(&self) -> bool {
        *self == Scales::default()
    }

    /// Every multiplier finite and positive, named by its config key.
    pub(super) fn validate(&self) -> Result<()> {
        let named = [
            ("embedding_multiplier", Some(self.embedding)),
            ("attention_multiplier", self.attention),
            ("residual_multiplier", Some(self.residual)),
            ("logits_scaling", Some(self.logits)),
        ];
        for (name, value) in named {
            if let Some(v) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                bail!("field `{name}`: {v} must be a finite positive number");
            }
        }
        Ok(())
    }
}

pub(super) fn hf_architecture(json: &Value) -> Result<Architecture> {
    let fields = Fields(json);
    let classes = fields.typed("architectures", "a list of class names", |v| {
        v.as_array()?
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<&str>>>()
    })?;
    let class = classes.as_ref().and_then(|c| c.first().copied());
    let model_type = fields.str("model_type")?;
    let alias = class.and_then(|c| CLASS_ALIASES.iter().find(|a| a.0 == c));
    if let Some(&(_, architecture)) = alias {
        return Ok(architecture);
    }
    let known = match (class, model_type) {
        (Some(class), _) => NAMES.iter().find(|n| n.1 == class),
        (None, Some(model_type)) => NAMES.iter().find(|n| n.2 == model_type),
        (None, None) => None,
    };
    match (known, class) {
        (Some(names), _) => Ok(names.0),
        (None, Some(c)) => {
            let runs: Vec<&str> = NAMES.iter().map(|n| n.1).collect();
            bail!(
                "architecture {c:?} is not supported (Hone runs {})",
                runs.join(", ")
            )
        }
        (None, None) => bail!(
            "neither `architectures` nor a supported `model_type` is set (model_type: \
             {model_type:?})"
        ),
    }
}

/// SmolLM3's `no_rope_layers` (1: the layer uses RoPE, 0: it does not) as the NoPE layers' indices;
/// absent, transformers' default: every `no_rope_layer_interval`-th layer (4).
pub(super) fn hf_no_rope_layers(fields: &Fields, num_layers: usize) -> Result<Vec<usize>> {
    let flags = fields.typed("no_rope_layers", "a list of 0s and 1s", |v| {
        v.as_array()?
            .iter()
            .map(|f| match f.as_u64()? {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            })
            .collect::<Option<Vec<bool>>>()
    })?;
    let Some(flags) = flags else {
        let interval = fields
            .usize("no_rope_layer_interval")?
            .unwrap_or(SMOLLM3_NOPE_INTERVAL);
        if interval == 0 {
            bail!("field `no_rope_layer_interval` must be positive");
        }
        return Ok((0..num_layers)
            .filter(|l| (l + 1) % interval == 0)
            .collect());
    };
    if flags.len() != num_layers {
        bail!(
            "field `no_rope_layers`: {} entries for {num_layers} layers",
            flags.len()
        );
    }
    Ok((0..num_layers).filter(|&l| !flags[l]).collect())
}

/// The NoPE layers llama.cpp's smollm3 arch runs: every 4th.
pub fn smollm3_nope_pattern(num_layers: usize) -> Vec<usize> {
    (0..num_layers)
        .filter(|l| (l + 1) % SMOLLM3_NOPE_INTERVAL == 0)
        .collect()
}

/// The MLP activation of `hidden_act` (Gemma: `hidden_activation`); silu when absent.
pub(super) fn hf_activation(fields: &Fields) -> Result<Activation> {
    let (key, name) = match fields.str("hidden_activation")? {
        Some(name) => ("hidden_activation", name),
        None => ("hidden_act", fields.str("hidden_act")?.unwrap_or("silu")),
    };
    match name {
        "silu" => Ok(Activation::Silu),
        "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
        other => {
            bail!("field `{key}`: {other:?} is not supported (silu and gelu_pytorch_tanh are)")
        }
    }
}

/// A Gemma soft-cap (`attn_logit_softcapping`, `final_logit_softcapping`); other families' classes
/// have none.
pub(super) fn gemma_softcap(
    fields: &Fields,
    architecture: Architecture,
    key: &str,
) -> Result<Option<f32>> {
    if !matches!(architecture, Architecture::Gemma2 | Architecture::Gemma3) {
        return Ok(None);
    }
    match fields.f64(key)? {
        Some(cap) if !(cap.is_finite() && cap > 0.0) => {
            bail!("field `{key}`: {cap} must be a finite positive number")
        }
        cap => Ok(cap.map(|c| c as f32)),
    }
}

/// Gemma's switch Hone does not run: bidirectional attention (EmbeddingGemma), refused rather than
/// run causal.
pub(super) fn refuse_gemma_switches(fields: &Fields) -> Result<()> {
    if fields.bool("use_bidirectional_attention")? == Some(true) {
        bail!("field `use_bidirectional_attention`: bidirectional attention is not supported");
    }
    Ok(())
}

/// The layers `layer_types` marks `sliding_attention`.
fn sliding_layers(types: &[&str], num_layers: usize) -> Result<Vec<usize>> {
    if types.len() != num_layers {
        bail!(
            "field `layer_types`: {} entries for {num_layers} layers",
            types.len()
        );
    }
    Ok((0..num_layers)
        .filter(|&l| types[l] == "sliding_attention")
        .collect())
}

/// Sliding-window attention as the family's transformers class decides it: Mistral's and Phi-3's
/// `sliding_window` applies to every layer; Qwen2, Qwen3 and SmolLM3 window only with
/// `use_sliding_window`, on the layers `layer_types` marks `sliding_attention` (without
/// `layer_types`, Qwen's layers from `max_window_layers` on and SmolLM3's NoPE layers, as their
/// configs derive it). Other families have none.
pub(super) fn hf_sliding_window(
    fields: &Fields,
    architecture: Architecture,
    num_layers: usize,
    no_rope_layers: &[usize],
) -> Result<Option<SlidingWindow>> {
    let size = fields.usize("sliding_window")?;
    let types = fields.typed("layer_types", "a list of strings", |v| {
        v.as_array()?
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<&str>>>()
    })?;
    if let Some(other) = types
        .iter()
        .flatten()
        .find(|t| !matches!(**t, "full_attention" | "sliding_attention"))
    {
        bail!("field `layer_types`: {other:?} layers are not supported (full_attention and sliding_attention are)");
    }
    let layers: Vec<usize> = match architecture {
        Architecture::Mistral | Architecture::Phi3 | Architecture::Starcoder2 => {
            (0..num_layers).collect()
        }
        Architecture::Gemma2 | Architecture::Gemma3 => match &types {
            Some(types) => sliding_layers(types, num_layers)?,
            None => {
                // Before `layer_types`: every `sliding_window_pattern`-th layer is global (Gemma 2
                // alternates).
                let default = gemma_global_every(architecture).unwrap_or(6);
                let pattern = fields.usize("sliding_window_pattern")?;
                let pattern = pattern.unwrap_or(default).max(1);
                (0..num_layers).filter(|l| (l + 1) % pattern != 0).collect()
            }
        },
        Architecture::Qwen2 | Architecture::Qwen3 | Architecture::SmolLM3 => {
            if fields.bool("use_sliding_window")? != Some(true) {
                return Ok(None);
            }
            match &types {
                Some(types) => sliding_layers(types, num_layers)?,
                None if architecture == Architecture::SmolLM3 => no_rope_layers.to_vec(),
                None => {
                    let first = fields.usize("max_window_layers")?.unwrap_or(28);
                    (first..num_layers).collect()
                }
            }
        }
        _ => return Ok(None),
    };
    match size {
        Some(size) if !layers.is_empty() => Ok(Some(SlidingWindow { size, layers })),
        Some(_) | None => Ok(None),
    }
}
