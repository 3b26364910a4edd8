//! Whole-config checks: value ranges and the rules between keys that LLaMA-Factory's and
//! transformers' argument parsers enforce, each failure naming the key to fix.

use super::resolve::{linear_modules, LAYER_MODULES, NON_LAYER_MODULES};
use super::values::{
    CommaList, EvalStrategy, FinetuningType, PrefLoss, PromptTuningInit, Stage, StepCount,
};
use super::{MethodArgs, SftConfig};
use crate::data::MixStrategy;

/// A failed check: the key to blame and what is wrong with it.
#[derive(Debug)]
pub(super) struct Invalid {
    pub key: &'static str,
    pub problem: String,
}

type Checked = Result<(), Invalid>;

fn fail(key: &'static str, problem: impl Into<String>) -> Checked {
    Err(Invalid {
        key,
        problem: problem.into(),
    })
}

fn require(ok: bool, key: &'static str, problem: impl Into<String>) -> Checked {
    if ok {
        Ok(())
    } else {
        fail(key, problem)
    }
}

pub(super) fn check(c: &SftConfig) -> Checked {
    check_model(c)?;
    check_method(c)?;
    check_preference(c)?;
    check_data(c)?;
    check_output(c)?;
    check_train(c)?;
    check_eval(c)
}

fn check_model(c: &SftConfig) -> Checked {
    require(
        !c.model.model_name_or_path.is_empty(),
        "model_name_or_path",
        "required: a Hugging Face model directory, a .gguf file or a Hub id",
    )?;
    if let Some(adapter) = &c.model.adapter_name_or_path {
        require(!adapter.is_empty(), "adapter_name_or_path", "empty path")?;
        require(
            c.method.finetuning_type.is_adapter(),
            "adapter_name_or_path",
            "only valid with finetuning_type: lora or ia3",
        )?;
        require(
            !adapter.contains(','),
            "adapter_name_or_path",
            "Hone continues from one adapter directory; merge the others into the model first",
        )?;
    }
    if let Some(bits) = c.model.quantization_bit {
        require(
            bits == 4 || bits == 8,
            "quantization_bit",
            "must be 4 or 8 (bits per weight of the quantized base)",
        )?;
        require(
            c.method.finetuning_type.is_adapter(),
            "quantization_bit",
            "a quantized base is frozen: only valid with finetuning_type: lora or ia3",
        )?;
    }
    require(
        !(c.model.disable_gradient_checkpointing && c.train.gradient_checkpointing),
        "disable_gradient_checkpointing",
        "conflicts with gradient_checkpointing: true; keep one",
    )?;
    Ok(())
}

/// OFT's keys: only with `finetuning_type: oft`, one of `oft_rank` and `oft_block_size`.
fn check_oft(m: &MethodArgs) -> Checked {
    let oft = m.finetuning_type == FinetuningType::Oft;
    let set = m.oft_rank != 0
        || m.oft_block_size.is_some()
        || m.module_dropout != 0.0
        || !m.use_cayley_neumann
        || m.num_cayley_neumann_terms != 5
        || m.block_share
        || m.coft
        || m.eps != 6e-5;
    if set {
        require(
            oft,
            "oft_rank, oft_block_size, module_dropout, use_cayley_neumann, num_cayley_neumann_terms, block_share, coft, eps",
            "only valid with finetuning_type: oft",
        )?;
    }
    require(
        !(m.oft_rank != 0 && m.oft_block_size.is_some_and(|b| b != 0)),
        "oft_block_size",
        "give either oft_rank or oft_block_size, not both (oft_rank × oft_block_size = the layer's inputs)",
    )?;
    require(
        m.oft_rank != 0 || m.oft_block_size != Some(0),
        "oft_block_size",
        "must be positive (or give oft_rank)",
    )?;
    require(
        (0.0..1.0).contains(&m.module_dropout),
        "module_dropout",
        "must be in [0, 1)",
    )?;
    require(
        m.num_cayley_neumann_terms >= 1,
        "num_cayley_neumann_terms",
        "must be at least 1",
    )?;
    require(m.eps > 0.0, "eps", "must be positive")
}

/// AdaLoRA's keys: only with `finetuning_type: adalora`, in PEFT's ranges.
fn check_adalora(m: &MethodArgs) -> Checked {
    let set = m.init_r != 12
        || m.target_r != 8
        || m.tinit != 0
        || m.tfinal != 0
        || m.delta_t != 1
        || m.beta1 != 0.85
        || m.beta2 != 0.85
        || m.orth_reg_weight != 0.5
        || m.total_step.is_some();
    if set {
        require(
            m.finetuning_type == FinetuningType::Adalora,
            "init_r, target_r, tinit, tfinal, deltaT, beta1, beta2, orth_reg_weight, total_step",
            "only valid with finetuning_type: adalora",
        )?;
    }
    require(m.init_r >= 1, "init_r", "must be at least 1")?;
    require(m.delta_t >= 1, "deltaT", "must be at least 1")?;
    for (key, beta) in [("beta1", m.beta1), ("beta2", m.beta2)] {
        require(beta > 0.0 && beta < 1.0, key, "must be in (0, 1)")?;
    }
    require(
        m.orth_reg_weight >= 0.0,
        "orth_reg_weight",
        "must be at least 0",
    )?;
    require(
        m.total_step != Some(0),
        "total_step",
        "must be positive (leave it out for the run's own)",
    )
}

fn check_method(c: &SftConfig) -> Checked {
    let m = &c.method;
    require(
        m.do_train,
        "do_train",
        "`hone train` always trains: set it to true or leave it out",
    )?;
    require(m.lora_rank >= 1, "lora_rank", "must be at least 1")?;
    require(
        m.lora_alpha != Some(0),
        "lora_alpha",
        "must be at least 1 (leave it out for 2 * lora_rank)",
    )?;
    require(
        (0.0..1.0).contains(&m.lora_dropout),
        "lora_dropout",
        "must be in [0, 1)",
    )?;
    modules_or_all("lora_target", &m.lora_target, &linear_modules())?;
    require(
        !m.use_rslora || m.finetuning_type == FinetuningType::Lora,
        "use_rslora",
        "only valid with finetuning_type: lora",
    )?;
    require(
        !m.use_dora || m.finetuning_type == FinetuningType::Lora,
        "use_dora",
        "only valid with finetuning_type: lora",
    )?;
    for (key, list) in [
        ("target_modules", &m.target_modules),
        ("feedforward_modules", &m.feedforward_modules),
    ] {
        if let Some(list) = list {
            let factored = matches!(
                m.finetuning_type,
                FinetuningType::Vera
                    | FinetuningType::Loha
                    | FinetuningType::Lokr
                    | FinetuningType::Adalora
            );
            require(
                m.finetuning_type == FinetuningType::Ia3 || (factored && key == "target_modules"),
                key,
                "only valid with finetuning_type: ia3 (target_modules also with vera, loha, lokr and adalora; LoRA's targets are \
                 lora_target)",
            )?;
            modules(key, list, &linear_modules())?;
        }
    }
    let vera = m.finetuning_type == FinetuningType::Vera;
    require(
        (0.0..1.0).contains(&m.vera_dropout),
        "vera_dropout",
        "must be in [0, 1)",
    )?;
    if m.vera_dropout != 0.0 || m.d_initial != 0.1 || m.projection_prng_key != 0 {
        require(
            vera,
            "vera_dropout, d_initial, projection_prng_key",
            "only valid with finetuning_type: vera",
        )?;
    }
    let lokr = m.finetuning_type == FinetuningType::Lokr;
    if m.decompose_both || m.decompose_factor != -1 {
        require(
            lokr,
            "decompose_both, decompose_factor",
            "only valid with finetuning_type: lokr",
        )?;
    }
    check_oft(m)?;
    check_adalora(m)?;
    let own = matches!(
        m.finetuning_type,
        FinetuningType::Oft | FinetuningType::Adalora | FinetuningType::Loha
    );
    if vera || lokr || own {
        require(
            matches!(m.stage, Stage::Sft | Stage::Pt),
            "stage",
            "VeRA, LoHa, LoKr, OFT and AdaLoRA train with stage: sft or pt",
        )?;
    }
    if let (Some(targets), Some(feedforward)) = (&m.target_modules, &m.feedforward_modules) {
        let outside = feedforward
            .items()
            .iter()
            .find(|f| !targets.items().contains(f));
        require(
            outside.is_none(),
            "feedforward_modules",
            "must be a subset of target_modules (as PEFT requires)",
        )?;
    }
    let starts_from_weight = m.pissa_init || m.init_lora_weights.is_some();
    if starts_from_weight {
        let key = if m.pissa_init {
            "pissa_init"
        } else {
            "init_lora_weights"
        };
        require(
            m.finetuning_type == FinetuningType::Lora,
            key,
            "only valid with finetuning_type: lora",
        )?;
        require(
            !(m.pissa_init && m.init_lora_weights.is_some()),
            "init_lora_weights",
            "conflicts with pissa_init: true; keep one",
        )?;
        require(!m.use_dora, key, "cannot start a DoRA adapter (use_dora)")?;
        require(
            c.model.adapter_name_or_path.is_none(),
            key,
            "a run that continues an adapter (adapter_name_or_path) starts from its weights",
        )?;
    }
    require(
        m.pissa_iter >= -1,
        "pissa_iter",
        "must be -1 (exact) or a number of iterations",
    )?;
    if let Some(init) = &m.init_lora_weights {
        let method = crate::adapters::InitLoraWeights::Method(init.clone());
        require(
            crate::train::lora_init::LoraInit::from_config(&method).is_ok(),
            "init_lora_weights",
            "must be olora, pissa or pissa_niter_N (PEFT's names; the default start needs no key)",
        )?;
    }
    if let Some(ratio) = m.loraplus_lr_ratio {
        require(
            ratio.is_finite() && ratio > 0.0,
            "loraplus_lr_ratio",
            "must be a positive number (B's learning rate over A's, e.g. 16)",
        )?;
        require(
            m.finetuning_type == FinetuningType::Lora,
            "loraplus_lr_ratio",
            "only valid with finetuning_type: lora",
        )?;
    }
    check_prompt_learning(c)?;
    require(
        m.freeze_trainable_layers != 0,
        "freeze_trainable_layers",
        "must not be 0: N > 0 trains the last N layers, N < 0 the first N",
    )?;
    modules_or_all(
        "freeze_trainable_modules",
        &m.freeze_trainable_modules,
        LAYER_MODULES,
    )?;
    match &m.freeze_extra_modules {
        Some(extra) => modules("freeze_extra_modules", extra, NON_LAYER_MODULES),
        None => Ok(()),
    }
}

/// Prompt tuning, P-tuning and prefix tuning: their keys, and what they cannot combine with.
fn check_prompt_learning(c: &SftConfig) -> Checked {
    let m = &c.method;
    let prompt = m.finetuning_type.is_prompt_learning();
    require(
        m.num_virtual_tokens >= 1,
        "num_virtual_tokens",
        "must be at least 1",
    )?;
    if m.prompt_tuning_init_text.is_some() || m.prompt_tuning_init != PromptTuningInit::Random {
        require(
            m.finetuning_type == FinetuningType::PromptTuning,
            "prompt_tuning_init",
            "only valid with finetuning_type: prompt_tuning",
        )?;
    }
    require(
        (m.prompt_tuning_init == PromptTuningInit::Text) == m.prompt_tuning_init_text.is_some(),
        "prompt_tuning_init_text",
        "goes with prompt_tuning_init: text, and only with it",
    )?;
    require(
        m.encoder_reparameterization_type
            .eq_ignore_ascii_case("mlp"),
        "encoder_reparameterization_type",
        "must be MLP (PEFT's default; its LSTM encoder is not supported)",
    )?;
    let prefix = m.finetuning_type == FinetuningType::Prefix;
    if m.encoder_hidden_size.is_some() {
        require(
            m.finetuning_type == FinetuningType::PTuning || (prefix && m.prefix_projection),
            "encoder_hidden_size",
            "only valid with finetuning_type: p_tuning, or prefix with prefix_projection: true",
        )?;
    }
    if m.prefix_projection {
        require(
            prefix,
            "prefix_projection",
            "only valid with finetuning_type: prefix",
        )?;
    }
    let adaption = m.finetuning_type == FinetuningType::AdaptionPrompt;
    if m.adapter_layers.is_some() {
        require(
            adaption,
            "adapter_layers",
            "only valid with finetuning_type: adaption_prompt",
        )?;
    }
    require(m.adapter_len >= 1, "adapter_len", "must be at least 1")?;
    if adaption {
        require(
            matches!(m.stage, Stage::Sft | Stage::Pt),
            "stage",
            "LLaMA-Adapter trains with stage: sft or pt",
        )?;
    }
    if let Some(init) = &m.init_weights {
        require(
            prefix,
            "init_weights",
            "only valid with finetuning_type: prefix",
        )?;
        require(
            init == "zero",
            "init_weights",
            "PEFT's prefix tuning has one: zero (unset draws the prefix from N(0, 1))",
        )?;
    }
    if !prompt {
        return Ok(());
    }
    require(
        matches!(m.stage, Stage::Sft | Stage::Pt),
        "stage",
        "prompt tuning, P-tuning and prefix tuning train with stage: sft or pt",
    )?;
    require(
        !c.packs(),
        "packing",
        "cannot pack examples with prompt learning (prompt tuning, P-tuning, prefix tuning): every sequence starts \
         with the virtual tokens",
    )
}

/// `all`, or a list of names from `allowed`.
fn modules_or_all(key: &'static str, list: &CommaList, allowed: &[&str]) -> Checked {
    if list.is("all") {
        return Ok(());
    }
    modules(key, list, allowed)
}

fn modules(key: &'static str, list: &CommaList, allowed: &[&str]) -> Checked {
    for name in list.items() {
        if !allowed.contains(&name.as_str()) {
            let nearest = super::nearest(name, allowed);
            return fail(
                key,
                format!(
                    "unknown module `{name}` (nearest: `{nearest}`); expected a comma list of {}",
                    allowed.join(", ")
                ),
            );
        }
    }
    Ok(())
}

/// The `stage: dpo` keys, and what preference training cannot combine with.
fn check_preference(c: &SftConfig) -> Checked {
    let m = &c.method;
    require(
        m.pref_beta.is_finite() && m.pref_beta > 0.0,
        "pref_beta",
        "must be a positive number (0.1 is the usual β)",
    )?;
    require(
        (0.0..0.5).contains(&m.dpo_label_smoothing),
        "dpo_label_smoothing",
        "must be in [0, 0.5)",
    )?;
    require(
        m.dpo_label_smoothing == 0.0 || m.pref_loss == PrefLoss::Sigmoid,
        "dpo_label_smoothing",
        "only valid with pref_loss: sigmoid (as in LLaMA-Factory)",
    )?;
    require(
        m.pref_ftx.is_finite() && m.pref_ftx >= 0.0,
        "pref_ftx",
        "must be a number >= 0",
    )?;
    require(m.simpo_gamma.is_finite(), "simpo_gamma", "must be a number")?;
    for (key, weight) in [
        ("kto_chosen_weight", m.kto_chosen_weight),
        ("kto_rejected_weight", m.kto_rejected_weight),
    ] {
        require(
            weight.is_finite() && weight > 0.0,
            key,
            "must be a positive number",
        )?;
    }
    if !matches!(m.stage, Stage::Dpo | Stage::Kto | Stage::Rm) {
        return Ok(());
    }
    let stage = m.stage.name();
    require(
        c.data.packing != Some(true),
        "packing",
        format!("stage: {stage} scores whole responses; they are not packed"),
    )?;
    require(
        c.train.neftune_noise_alpha.is_none(),
        "neftune_noise_alpha",
        format!("not supported with stage: {stage}"),
    )
}

fn check_data(c: &SftConfig) -> Checked {
    let d = &c.data;
    require(
        d.dataset.is_some(),
        "dataset",
        "required: comma-separated dataset names from dataset_dir/dataset_info.json",
    )?;
    require(!d.dataset_dir.is_empty(), "dataset_dir", "empty path")?;
    require(d.cutoff_len >= 1, "cutoff_len", "must be at least 1")?;
    require(
        d.max_samples != Some(0),
        "max_samples",
        "must be at least 1",
    )?;
    let v = d.val_size;
    require(
        v.is_finite() && (0.0..1.0).contains(&v) || (v > 1.0 && v.fract() == 0.0),
        "val_size",
        "must be a ratio in [0, 1) or a whole number of rows greater than 1",
    )?;
    require(
        v == 0.0 || d.eval_dataset.is_none(),
        "val_size",
        "cannot be combined with eval_dataset: evaluate on one or the other",
    )?;
    if let Some(probs) = &d.interleave_probs {
        require(
            d.mix_strategy != MixStrategy::Concat,
            "interleave_probs",
            "only valid with mix_strategy: interleave_under, interleave_over or interleave_once",
        )?;
        let parsed = c.interleave_probs();
        require(
            parsed.is_ok(),
            "interleave_probs",
            "expected comma-separated probabilities such as 0.8,0.2",
        )?;
        let datasets = d.dataset.as_ref().map_or(0, |l| l.items().len());
        require(
            probs.items().len() == datasets,
            "interleave_probs",
            format!("one probability per dataset ({datasets} datasets)"),
        )?;
        let eval = d
            .eval_dataset
            .as_ref()
            .map_or(datasets, |l| l.items().len());
        require(
            eval == datasets,
            "interleave_probs",
            format!(
                "eval_dataset has {eval} datasets and dataset {datasets}: LLaMA-Factory mixes \
                 both with these probabilities, one per dataset"
            ),
        )?;
        let sum: f64 = parsed.ok().flatten().unwrap_or_default().iter().sum();
        require(
            (sum - 1.0).abs() < 1e-6,
            "interleave_probs",
            format!("the probabilities sum to {sum}, not 1"),
        )?;
    }
    Ok(())
}

fn check_output(c: &SftConfig) -> Checked {
    let o = &c.output;
    require(!o.output_dir.is_empty(), "output_dir", "empty path")?;
    interval("logging_steps", o.logging_steps)?;
    interval("save_steps", o.save_steps)?;
    require(
        !o.save_only_model,
        "save_only_model",
        "only false: Hone checkpoints always hold the optimizer state so that they can be resumed",
    )
}

fn interval(key: &'static str, steps: StepCount) -> Checked {
    require(
        !steps.is_zero(),
        key,
        "must be at least 1 step, or a ratio in (0, 1) of the total steps",
    )
}

fn check_train(c: &SftConfig) -> Checked {
    let t = &c.train;
    require(
        t.max_steps != 0,
        "max_steps",
        "must be at least 1, or -1 to train for num_train_epochs",
    )?;
    require(
        t.num_train_epochs.is_finite() && (t.num_train_epochs > 0.0 || t.max_steps > 0),
        "num_train_epochs",
        "must be greater than 0 (or set max_steps)",
    )?;
    require(
        t.per_device_train_batch_size >= 1,
        "per_device_train_batch_size",
        "must be at least 1",
    )?;
    require(
        t.gradient_accumulation_steps >= 1,
        "gradient_accumulation_steps",
        "must be at least 1",
    )?;
    positive("learning_rate", t.learning_rate)?;
    require(
        (0.0..=1.0).contains(&t.warmup_ratio),
        "warmup_ratio",
        "must be in [0, 1]",
    )?;
    require(
        t.weight_decay.is_finite() && t.weight_decay >= 0.0,
        "weight_decay",
        "must be 0 or more",
    )?;
    require(
        (0.0..1.0).contains(&t.adam_beta1),
        "adam_beta1",
        "must be in [0, 1)",
    )?;
    require(
        (0.0..1.0).contains(&t.adam_beta2),
        "adam_beta2",
        "must be in [0, 1)",
    )?;
    positive("adam_epsilon", t.adam_epsilon)?;
    require(
        t.max_grad_norm.is_finite() && t.max_grad_norm >= 0.0,
        "max_grad_norm",
        "must be 0 (no clipping) or more",
    )?;
    if let Some(alpha) = t.neftune_noise_alpha {
        positive("neftune_noise_alpha", alpha)?;
    }
    require(
        !(t.bf16 && t.fp16),
        "fp16",
        "bf16 and fp16 cannot both be true",
    )
}

fn positive(key: &'static str, x: f64) -> Checked {
    require(x.is_finite() && x > 0.0, key, "must be greater than 0")
}

fn check_eval(c: &SftConfig) -> Checked {
    let e = &c.eval;
    require(
        e.per_device_eval_batch_size >= 1,
        "per_device_eval_batch_size",
        "must be at least 1",
    )?;
    let has_eval_data = c.data.eval_dataset.is_some() || c.data.val_size > 0.0;
    require(
        e.eval_strategy == EvalStrategy::No || has_eval_data,
        "eval_strategy",
        "evaluating needs data: set eval_dataset or val_size",
    )?;
    if let Some(steps) = e.eval_steps {
        interval("eval_steps", steps)?;
    }
    let p = &c.predict;
    if p.do_predict {
        // A reward model predicts scores; every other stage predicts by generating.
        let scores = c.method.stage == Stage::Rm;
        require(
            p.predict_with_generate || scores,
            "do_predict",
            "Hone predicts by generating: set predict_with_generate: true",
        )?;
        require(
            !(p.predict_with_generate && scores),
            "predict_with_generate",
            "a reward model predicts scores, not text (as in LLaMA-Factory)",
        )?;
        require(
            matches!(c.method.stage, Stage::Sft | Stage::Rm),
            "do_predict",
            "only valid with stage: sft or rm (as in LLaMA-Factory)",
        )?;
        require(
            has_eval_data,
            "do_predict",
            "predicting needs data: set eval_dataset or val_size",
        )?;
    }
    require(
        p.max_new_tokens >= 1,
        "max_new_tokens",
        "must be at least 1",
    )?;
    require(
        p.temperature.is_finite() && p.temperature > 0.0,
        "temperature",
        "must be above 0 (do_sample: false for greedy answers)",
    )?;
    require(
        p.top_p > 0.0 && p.top_p <= 1.0,
        "top_p",
        "must be in (0, 1]",
    )?;
    require(
        p.repetition_penalty.is_finite() && p.repetition_penalty > 0.0,
        "repetition_penalty",
        "must be above 0",
    )?;
    if let Some(patience) = e.early_stopping_steps {
        require(patience >= 1, "early_stopping_steps", "must be at least 1")?;
        require(
            e.eval_strategy != EvalStrategy::No,
            "early_stopping_steps",
            "needs evaluations: set eval_strategy to steps or epoch",
        )?;
    }
    Ok(())
}
