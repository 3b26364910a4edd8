//! The `hone train` config keys, grouped as LLaMA-Factory groups them (model, method, dataset,
//! output, train, eval), with LLaMA-Factory's names and LLaMA-Factory / transformers defaults.
//!
//! Keys accepted only so that LLaMA-Factory example configs run unchanged, and that change
//! nothing in Hone, say so on their field; `SftConfig::ignored_settings` reports them when set.

use serde::{Deserialize, Serialize};

use super::values::{
    CommaList, EvalStrategy, FinetuningType, PrefLoss, PromptTuningInit, QuantizationMethod,
    QuantizationType, ResumeFrom, Stage, StepCount,
};
use crate::data::MixStrategy;
use crate::train::schedule::ScheduleKind;

/// `### model`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelArgs {
    /// The base model: a Hugging Face model directory, a `.gguf` file or a Hub id. Required.
    pub model_name_or_path: String,
    /// A PEFT LoRA adapter directory to continue training from (LoRA only). LLaMA-Factory's
    /// comma list of several adapters is not supported: Hone starts from one.
    pub adapter_name_or_path: Option<String>,
    /// No-op: Hone runs no model code from the Hub, so there is nothing to trust.
    pub trust_remote_code: bool,
    /// LLaMA-Factory's switch for its default recomputation; Hone recomputes only with
    /// `gradient_checkpointing: true`, so this only conflicts with that.
    pub disable_gradient_checkpointing: bool,
    /// QLoRA (LLaMA-Factory's key): 4 or 8 trains LoRA on a frozen quantized base. A quantized
    /// GGUF base is used as stored; any other base has its decoder layers' matrices quantized at
    /// load: 4 as bitsandbytes does (`quantization_type`, `double_quantization`), 8 as Q8_0.
    pub quantization_bit: Option<u32>,
    /// How a base is quantized at load: `bnb` (bitsandbytes), the only method Hone has.
    pub quantization_method: QuantizationMethod,
    /// The 4-bit data type: `nf4` (default) or `fp4`.
    pub quantization_type: QuantizationType,
    /// Quantize the 4-bit blocks' absmax values too (bitsandbytes' nested quantization).
    pub double_quantization: bool,
}

impl Default for ModelArgs {
    fn default() -> Self {
        ModelArgs {
            model_name_or_path: String::new(),
            adapter_name_or_path: None,
            trust_remote_code: false,
            disable_gradient_checkpointing: false,
            quantization_bit: None,
            quantization_method: QuantizationMethod::default(),
            quantization_type: QuantizationType::default(),
            double_quantization: true,
        }
    }
}

/// `### method`: LLaMA-Factory's `FinetuningArguments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MethodArgs {
    /// `sft` (supervised fine-tuning), `pt` (continued pre-training on raw text), `dpo`
    /// (preference optimization on chosen/rejected pairs) or `kto` (on tagged responses).
    pub stage: Stage,
    /// `hone train` always trains, so only `true` is accepted (Hone's default; transformers'
    /// is `false`, which LLaMA-Factory uses for evaluation-only runs).
    pub do_train: bool,
    pub finetuning_type: FinetuningType,
    /// LoRA rank r.
    pub lora_rank: u32,
    /// LoRA alpha; unset means `2 * lora_rank`, as LLaMA-Factory. Filled in when loading.
    pub lora_alpha: Option<u32>,
    /// Dropout on the LoRA input, in [0, 1).
    pub lora_dropout: f64,
    /// Linear layers that get adapters: `all` (every linear layer of the decoder blocks, PEFT's
    /// `all-linear`) or names such as `q_proj,v_proj`.
    pub lora_target: CommaList,
    /// Scale adapters by alpha / sqrt(r) instead of alpha / r (rank-stabilized LoRA).
    pub use_rslora: bool,
    /// DoRA: each adapted layer also learns a magnitude per output row (PEFT's `use_dora`).
    pub use_dora: bool,
    /// PiSSA: start A and B from the weight's top singular triplets (the base becomes the residual).
    pub pissa_init: bool,
    /// PiSSA's fast-SVD iterations; -1 for the exact top triplets.
    pub pissa_iter: i64,
    /// Save the PiSSA adapter converted to plain LoRA on the original base (Hone always does).
    pub pissa_convert: bool,
    /// PEFT's `init_lora_weights` for the starts LLaMA-Factory has no key for: `olora`, `pissa`,
    /// `pissa_niter_N`.
    pub init_lora_weights: Option<String>,
    /// LoRA+: B matrices (and 1-D tensors) learn this many times faster than A matrices.
    pub loraplus_lr_ratio: Option<f64>,
    /// LoRA+'s learning rate for LoRA on embedding layers, which Hone does not adapt (a note).
    pub loraplus_lr_embedding: Option<f64>,
    /// IA3 and VeRA (PEFT's field): the linear layers that get a vector; unset is PEFT's default
    /// for the family (IA3 on Llama, Mistral: `k_proj,v_proj,down_proj`; Qwen2/3, Gemma:
    /// `q_proj,v_proj,down_proj`; VeRA: `q_proj,v_proj`).
    pub target_modules: Option<CommaList>,
    /// IA3 (PEFT's field): the targets whose input, not output, is scaled (default `down_proj`).
    pub feedforward_modules: Option<CommaList>,
    /// Prompt tuning, P-tuning and prefix tuning (PEFT's field): how many virtual tokens precede
    /// every sequence.
    pub num_virtual_tokens: u32,
    /// Prompt tuning (PEFT's field): `random`, `text` (from `prompt_tuning_init_text`) or
    /// `sample_vocab`.
    pub prompt_tuning_init: PromptTuningInit,
    /// Prompt tuning (PEFT's field): the text whose token embeddings start the virtual tokens.
    pub prompt_tuning_init_text: Option<String>,
    /// P-tuning, and prefix tuning with `prefix_projection` (PEFT's field): the encoder's hidden
    /// width; unset is the virtual tokens' width (P-tuning: the hidden size; prefix tuning: the
    /// key/value heads × head_dim).
    pub encoder_hidden_size: Option<u32>,
    /// Prefix tuning (PEFT's field): the keys and values come out of a two-layer tanh MLP over
    /// smaller embeddings (trained; the adapter saves only its output).
    pub prefix_projection: bool,
    /// Prefix tuning (PEFT's field): `zero` starts the prefix (or the projection's last layer)
    /// at zero; unset draws it from N(0, 1) as `nn.Embedding` does.
    pub init_weights: Option<String>,
    /// OFT: how many blocks each layer's rotation has (0: from `oft_block_size`).
    pub oft_rank: u32,
    /// OFT: the size of each rotation block; unset is 32 without `oft_rank` (give one of the two).
    pub oft_block_size: Option<u32>,
    /// OFT: LLaMA-Factory passes it to PEFT, whose OFT 0.21 never applies it (nor does Hone).
    pub module_dropout: f64,
    /// OFT (PEFT's field): R as the Cayley–Neumann series (`num_cayley_neumann_terms` terms), or
    /// the exact Cayley transform.
    pub use_cayley_neumann: bool,
    pub num_cayley_neumann_terms: u32,
    /// OFT (PEFT's field): one rotation shared by all blocks of a layer.
    pub block_share: bool,
    /// OFT (PEFT's field): constrained OFT, each block kept within `eps` of the identity.
    pub coft: bool,
    pub eps: f64,
    /// AdaLoRA (PEFT's fields): each layer's starting rank and the average rank the budget ends
    /// at, the steps before it shrinks and after it stops, the steps between reallocations, the
    /// importance EMAs' factors, the orthogonality penalty's weight, and the run's length the
    /// schedule spans (unset: the run's own total steps).
    pub init_r: u32,
    pub target_r: u32,
    pub tinit: u64,
    pub tfinal: u64,
    #[serde(rename = "deltaT")]
    pub delta_t: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub orth_reg_weight: f64,
    pub total_step: Option<u64>,
    /// LoKr (PEFT's field): also split W1 into a rank-r product when r is small.
    pub decompose_both: bool,
    /// LoKr (PEFT's field): the factor each dimension is split by (-1: nearest its square root).
    pub decompose_factor: i64,
    /// VeRA (PEFT's field): dropout on the adapter's input.
    pub vera_dropout: f64,
    /// VeRA (PEFT's field): where every λ_d starts.
    pub d_initial: f64,
    /// VeRA (PEFT's field): seeds the shared projections (Hone draws its own, not torch's, and
    /// saves them, as PEFT's default `save_projection`).
    pub projection_prng_key: u64,
    /// LLaMA-Adapter (PEFT's field): the length of each adapted layer's prompt.
    pub adapter_len: u32,
    /// LLaMA-Adapter (PEFT's field): how many of the top layers get a prompt; unset is every
    /// layer.
    pub adapter_layers: Option<u32>,
    /// P-tuning (PEFT's field): the encoder, `MLP` (PEFT's default; its `LSTM` is not supported).
    pub encoder_reparameterization_type: String,
    /// Freeze tuning: the last N decoder layers train when positive, the first N when negative.
    pub freeze_trainable_layers: i64,
    /// Freeze tuning: `all` or block sub-modules (`self_attn`, `mlp`, ...) that train in those layers.
    pub freeze_trainable_modules: CommaList,
    /// Freeze tuning: modules outside the decoder layers that also train (`embed_tokens`, `norm`,
    /// `lm_head`).
    pub freeze_extra_modules: Option<CommaList>,
    /// `stage: dpo`: β, how strongly the policy is held to the reference (the temperature of
    /// the implicit reward β·log π/π_ref).
    pub pref_beta: f64,
    /// `stage: dpo`: the preference loss.
    pub pref_loss: PrefLoss,
    /// `stage: dpo`: conservative DPO's label smoothing ε (`pref_loss: sigmoid` only).
    pub dpo_label_smoothing: f64,
    /// `stage: dpo`: weight of an SFT term, the chosen response's mean token negative
    /// log-likelihood, added to each pair's loss.
    pub pref_ftx: f64,
    /// `stage: dpo`: SimPO's target reward margin γ.
    pub simpo_gamma: f64,
    /// `stage: kto`: the weight of desirable responses' losses (λ_D).
    pub kto_chosen_weight: f64,
    /// `stage: kto`: the weight of undesirable responses' losses (λ_U).
    pub kto_rejected_weight: f64,
}

/// `### dataset`: LLaMA-Factory's `DataArguments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataArgs {
    /// Training datasets, by name in `dataset_dir/dataset_info.json`. Required.
    pub dataset: Option<CommaList>,
    pub dataset_dir: String,
    /// Evaluation datasets; excludes `val_size`.
    pub eval_dataset: Option<CommaList>,
    /// Prompt template name; unset uses the model's own chat template.
    pub template: Option<String>,
    /// Passed to the chat template as `enable_thinking` (reasoning models such as Qwen3: false
    /// renders an empty `<think></think>` in the prompt); unset leaves it undefined, the
    /// template's own default.
    pub enable_thinking: Option<bool>,
    /// Maximum tokens per example; longer ones are truncated.
    pub cutoff_len: u32,
    /// Use at most this many rows of each dataset (the first ones).
    pub max_samples: Option<u64>,
    /// How several `dataset`s make one training set: `concat`, `interleave_under`,
    /// `interleave_over` or `interleave_once` (see `data::mix`).
    pub mix_strategy: MixStrategy,
    /// The interleaving strategies' probability of each dataset, e.g. `0.8,0.2`.
    pub interleave_probs: Option<CommaList>,
    /// Held-out share of the training rows for evaluation: a ratio in [0, 1) or a row count > 1.
    pub val_size: f64,
    /// Hone's own: skip malformed dataset rows with a warning instead of stopping.
    pub skip_invalid_rows: bool,
    /// Compute the loss on prompt tokens too, not only on responses.
    pub train_on_prompt: bool,
    /// Pack several examples into each `cutoff_len` sequence; unset is on for `stage: pt` and
    /// off otherwise, as in LLaMA-Factory (see `SftConfig::packs`).
    pub packing: Option<bool>,
    /// No-op: Hone keeps no preprocessed-dataset cache.
    pub overwrite_cache: bool,
    /// No-op: Hone tokenizes in-process on its own thread pool.
    pub preprocessing_num_workers: Option<u32>,
    /// No-op: Hone batches in-process, without loader workers.
    pub dataloader_num_workers: Option<u32>,
}

/// `### output`: the saving and logging part of transformers' `TrainingArguments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputArgs {
    pub output_dir: String,
    /// Clear a non-empty `output_dir` before training (never while resuming).
    pub overwrite_output_dir: bool,
    pub logging_steps: StepCount,
    pub save_steps: StepCount,
    /// Keep only the newest N checkpoints (plus the best one); unset or 0 keeps all.
    pub save_total_limit: Option<u64>,
    /// Only `false`: Hone checkpoints always hold the optimizer state, so they can be resumed.
    pub save_only_model: bool,
    /// No-op (reported as ignored): LLaMA-Factory draws loss curves; Hone leaves them in
    /// `trainer_log.jsonl`.
    pub plot_loss: bool,
    /// `tensorboard` (or `all`) also writes TensorBoard event files; other services are noted
    /// and ignored (`trainer_log.jsonl` and `trainer_state.json` are always written).
    pub report_to: CommaList,
    /// Where the TensorBoard event files go (default `output_dir/runs/{time}_{host}`).
    pub logging_dir: Option<String>,
    pub resume_from_checkpoint: ResumeFrom,
}

/// `### train`: the optimization part of transformers' `TrainingArguments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainArgs {
    pub num_train_epochs: f64,
    /// Total optimizer steps; overrides `num_train_epochs` when positive, `-1` means unset.
    pub max_steps: i64,
    pub per_device_train_batch_size: u32,
    pub gradient_accumulation_steps: u32,
    pub learning_rate: f64,
    pub lr_scheduler_type: ScheduleKind,
    /// Linear warmup: whole steps, or (transformers 5) a ratio in (0, 1) of the total steps.
    pub warmup_steps: StepCount,
    /// Linear warmup as a ratio of the total steps (transformers 4); used when `warmup_steps` is 0.
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub max_grad_norm: f64,
    pub seed: u64,
    /// NEFTune: uniform noise of this alpha on input embeddings while training.
    pub neftune_noise_alpha: Option<f64>,
    /// Mixed precision: products on bf16 copies of the weights, everything updated in f32
    /// (`train::precision`).
    pub bf16: bool,
    /// Taken as `bf16` (with a note): CPUs have no fast fp16 products.
    pub fp16: bool,
    /// No-op: Hone trains in one process.
    pub ddp_timeout: u64,
    /// Recompute each block's activations in the backward instead of keeping them (transformers'
    /// key): activation memory falls to one hidden width per token and layer, for one more
    /// forward pass of compute. Off by default: Hone's kept activations are lean, and LLaMA-Factory's
    /// default (on) costs a third more time where memory is not short.
    pub gradient_checkpointing: bool,
}

/// `### eval`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalArgs {
    pub per_device_eval_batch_size: u32,
    pub eval_strategy: EvalStrategy,
    /// Evaluate every N steps with `eval_strategy: steps`; unset means `logging_steps`, as
    /// transformers. Filled in when loading.
    pub eval_steps: Option<StepCount>,
    /// Stop after this many evaluations in a row without a lower `eval_loss`.
    pub early_stopping_steps: Option<u64>,
}

impl Default for MethodArgs {
    fn default() -> Self {
        MethodArgs {
            stage: Stage::Sft,
            do_train: true,
            finetuning_type: FinetuningType::Lora,
            lora_rank: 8,
            lora_alpha: None,
            lora_dropout: 0.0,
            lora_target: CommaList::from("all"),
            use_rslora: false,
            use_dora: false,
            pissa_init: false,
            pissa_iter: 16,
            pissa_convert: false,
            init_lora_weights: None,
            loraplus_lr_ratio: None,
            loraplus_lr_embedding: None,
            target_modules: None,
            feedforward_modules: None,
            num_virtual_tokens: 20,
            prompt_tuning_init: PromptTuningInit::Random,
            prompt_tuning_init_text: None,
            encoder_hidden_size: None,
            prefix_projection: false,
            init_weights: None,
            decompose_both: false,
            decompose_factor: -1,
            init_r: 12,
            target_r: 8,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.5,
            total_step: None,
            oft_rank: 0,
            oft_block_size: None,
            module_dropout: 0.0,
            use_cayley_neumann: true,
            num_cayley_neumann_terms: 5,
            block_share: false,
            coft: false,
            eps: 6e-5,
            vera_dropout: 0.0,
            d_initial: 0.1,
            projection_prng_key: 0,
            adapter_len: 10,
            adapter_layers: None,
            encoder_reparameterization_type: "MLP".into(),
            freeze_trainable_layers: 2,
            freeze_trainable_modules: CommaList::from("all"),
            freeze_extra_modules: None,
            pref_beta: 0.1,
            pref_loss: PrefLoss::Sigmoid,
            dpo_label_smoothing: 0.0,
            pref_ftx: 0.0,
            simpo_gamma: 0.5,
            kto_chosen_weight: 1.0,
            kto_rejected_weight: 1.0,
        }
    }
}

impl Default for DataArgs {
    fn default() -> Self {
        DataArgs {
            dataset: None,
            dataset_dir: "data".into(),
            eval_dataset: None,
            template: None,
            enable_thinking: None,
            cutoff_len: 2048,
            max_samples: None,
            mix_strategy: MixStrategy::Concat,
            interleave_probs: None,
            val_size: 0.0,
            skip_invalid_rows: false,
            train_on_prompt: false,
            packing: None,
            overwrite_cache: false,
            preprocessing_num_workers: None,
            dataloader_num_workers: None,
        }
    }
}

impl Default for OutputArgs {
    fn default() -> Self {
        OutputArgs {
            output_dir: "trainer_output".into(),
            overwrite_output_dir: false,
            logging_steps: StepCount::Steps(500),
            save_steps: StepCount::Steps(500),
            save_total_limit: None,
            save_only_model: false,
            plot_loss: false,
            report_to: CommaList::from("none"),
            logging_dir: None,
            resume_from_checkpoint: ResumeFrom::No,
        }
    }
}

impl Default for TrainArgs {
    fn default() -> Self {
        TrainArgs {
            num_train_epochs: 3.0,
            max_steps: -1,
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            lr_scheduler_type: ScheduleKind::Linear,
            warmup_steps: StepCount::Steps(0),
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            seed: 42,
            neftune_noise_alpha: None,
            bf16: false,
            fp16: false,
            ddp_timeout: 1800,
            gradient_checkpointing: false,
        }
    }
}

/// `### predict`: LLaMA-Factory's `do_predict` and its `GeneratingArguments`, with their defaults
/// (sampling at temperature 0.95, top-p 0.7, top-k 50; `do_sample: false` for greedy answers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PredictArgs {
    /// After training, answer the evaluation rows (`eval_dataset` or the `val_size` split) with
    /// the trained model: `generated_predictions.jsonl` and `predict_results.json` in `output_dir`.
    pub do_predict: bool,
    /// Predict by generating (the only way Hone predicts; `do_predict` requires it).
    pub predict_with_generate: bool,
    pub max_new_tokens: u32,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: u32,
    pub repetition_penalty: f64,
}

impl Default for PredictArgs {
    fn default() -> Self {
        PredictArgs {
            do_predict: false,
            predict_with_generate: false,
            max_new_tokens: 1024,
            do_sample: true,
            temperature: 0.95,
            top_p: 0.7,
            top_k: 50,
            repetition_penalty: 1.0,
        }
    }
}

impl Default for EvalArgs {
    fn default() -> Self {
        EvalArgs {
            per_device_eval_batch_size: 8,
            eval_strategy: EvalStrategy::No,
            eval_steps: None,
            early_stopping_steps: None,
        }
    }
}
