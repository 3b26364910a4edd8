//! Checking an adapter read from disk: that its tensors are the ones its config's method has (a
//! file of one method under another's config is refused by name), and that they fit the config.

use super::{
    AdaloraConfig, Adapter, AdaptionConfig, Bias, Ia3Config, LohaConfig, LokrConfig, OftConfig,
    PeftConfig, PromptConfig, PromptMethod, VeraConfig,
};

impl Adapter {
    /// Checks the modules against the config: each is a target of it, with the rank and scale (or
    /// the IA3 side) the config gives it and tensors of the stated shapes. Errors name the module.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if let PeftConfig::Oft(config) = &self.config {
            return self.validate_oft(config);
        }
        if let PeftConfig::Adalora(config) = &self.config {
            return self.validate_adalora(config);
        }
        if let Some(module) = self.adalora.keys().next() {
            bail!("{module}: has AdaLoRA triplets (lora_A, lora_E, lora_B) but the config's peft_type is not \"ADALORA\"");
        }
        if let Some(module) = self.oft.keys().next() {
            bail!(
                "{module}: has an OFT rotation (oft_R) but the config's peft_type is not \"OFT\""
            );
        }
        let config = match &self.config {
            PeftConfig::Lora(config) => config,
            PeftConfig::Ia3(config) => return self.validate_ia3(config),
            PeftConfig::Prompt(config) => return self.validate_prompt(config),
            PeftConfig::Adaption(config) => return self.validate_adaption(config),
            PeftConfig::Vera(config) => return self.validate_vera(config),
            PeftConfig::Loha(config) => return self.validate_loha(config),
            PeftConfig::Lokr(config) => return self.validate_lokr(config),
            PeftConfig::Oft(_) | PeftConfig::Adalora(_) => unreachable!("checked above"),
        };
        if self.prompt.is_some() {
            bail!("prompt_embeddings: a prompt-learning tensor, but the config's peft_type is \"LORA\"");
        }
        if let Some(module) = self.adaption.keys().next() {
            bail!("{module}.adaption_prompt: a LLaMA-Adapter tensor, but the config's peft_type is not \"ADAPTION_PROMPT\"");
        }
        if let Some(module) = self.loha.keys().next() {
            bail!(
                "{module}: has LoHa factors (hada_w*), but the config's peft_type is not \"LOHA\""
            );
        }
        if let Some(module) = self.lokr.keys().next() {
            bail!(
                "{module}: has LoKr factors (lokr_w*), but the config's peft_type is not \"LOKR\""
            );
        }
        if self.vera.is_some() {
            bail!(
                "base_model.vera_A: VeRA's projections, but the config's peft_type is not \"VERA\""
            );
        }
        if let Some(module) = self.scales.keys().next() {
            bail!("{module}: has an IA3 vector (ia3_l) but the config's peft_type is \"LORA\"");
        }
        let matcher = config.matcher()?;
        for (module, w) in &self.modules {
            if !matcher.is_target(module)? {
                bail!(
                    "{module}: has LoRA weights but target_modules ({}) does not select it",
                    config.target_modules_text()
                );
            }
            let r = matcher.rank(module)?;
            if w.r != r {
                bail!(
                    "{module}: lora_A has rank {} but the config gives rank {r} (r / rank_pattern)",
                    w.r
                );
            }
            if w.a.len() != w.r * w.in_features || w.b.len() != w.out_features * w.r {
                bail!(
                    "{module}: lora_A has {} values and lora_B {}, not [{r}, {}] and [{}, {r}]",
                    w.a.len(),
                    w.b.len(),
                    w.in_features,
                    w.out_features
                );
            }
            match (&w.magnitude, config.use_dora) {
                (None, true) => bail!("{module}: use_dora is set but the module has no lora_magnitude_vector"),
                (Some(_), false) => bail!("{module}: has a lora_magnitude_vector (DoRA) but use_dora is not set"),
                (Some(m), true) if m.len() != w.out_features => bail!(
                    "{module}: lora_magnitude_vector has {} values, not one per output feature ({})",
                    m.len(),
                    w.out_features
                ),
                _ => {}
            }
            let scale = matcher.scale(module)?;
            if (w.scale - scale).abs() > 1e-9 * scale.abs().max(1.0) {
                bail!(
                    "{module}: scale {} differs from the config's {scale} (lora_alpha, alpha_pattern, use_rslora)",
                    w.scale
                );
            }
        }
        if !self.biases.is_empty() && config.bias == Bias::None {
            bail!("the adapter has bias tensors but its config says bias \"none\"");
        }
        Ok(())
    }

    fn validate_vera(&self, config: &VeraConfig) -> anyhow::Result<()> {
        use anyhow::bail;
        if let Some(name) = (self.modules.keys().chain(self.scales.keys()))
            .chain(self.biases.keys())
            .chain(self.adaption.keys())
            .chain(self.loha.keys())
            .next()
        {
            bail!("{name}: a VERA adapter holds only vera_A, vera_B and each module's vera_lambda_d and vera_lambda_b");
        }
        let Some(vera) = &self.vera else {
            bail!("base_model.vera_A: missing (the shared projections, saved with save_projection: true)");
        };
        if vera.r != config.r {
            bail!("r: {} but vera_A has {} rows", config.r, vera.r);
        }
        for (module, (d, _)) in &vera.lambdas {
            if !config.selects(module)? {
                bail!("{module}: has VeRA vectors but target_modules does not select it");
            }
            if d.len() != vera.r {
                bail!("{module}.vera_lambda_d: [{}], not [r {}]", d.len(), vera.r);
            }
        }
        Ok(())
    }

    fn validate_loha(&self, config: &LohaConfig) -> anyhow::Result<()> {
        use anyhow::bail;
        if let Some(name) = (self.modules.keys().chain(self.scales.keys()))
            .chain(self.biases.keys())
            .chain(self.adaption.keys())
            .next()
        {
            bail!("{name}: a LOHA adapter holds only each module's hada_w1_a, hada_w1_b, hada_w2_a and hada_w2_b");
        }
        if self.vera.is_some() {
            bail!("base_model.vera_A: VeRA's projections, but the config's peft_type is \"LOHA\"");
        }
        for (module, w) in &self.loha {
            if !config.selects(module)? {
                bail!("{module}: has LoHa factors but target_modules does not select it");
            }
            if w.r != config.r {
                bail!(
                    "{module}: hada factors of rank {} but the config's r is {}",
                    w.r,
                    config.r
                );
            }
        }
        Ok(())
    }

    fn validate_lokr(&self, config: &LokrConfig) -> anyhow::Result<()> {
        use anyhow::bail;
        let others = (self.modules.keys().chain(self.scales.keys()))
            .chain(self.biases.keys())
            .chain(self.adaption.keys())
            .chain(self.loha.keys())
            .next();
        if let Some(name) = others {
            bail!("{name}: a LOKR adapter holds only each module's lokr_w1* and lokr_w2* factors");
        }
        if self.vera.is_some() || self.prompt.is_some() {
            bail!("a LOKR adapter holds only each module's lokr_w1* and lokr_w2* factors");
        }
        for module in self.lokr.keys() {
            if !config.selects(module)? {
                bail!("{module}: has LoKr factors but target_modules does not select it");
            }
        }
        Ok(())
    }

    fn validate_adalora(&self, config: &AdaloraConfig) -> anyhow::Result<()> {
        use anyhow::bail;
        let others = (self.modules.keys().chain(self.scales.keys()))
            .chain(self.biases.keys())
            .chain(self.adaption.keys())
            .chain(self.loha.keys())
            .chain(self.lokr.keys())
            .chain(self.oft.keys())
            .next();
        if let Some(name) = others {
            bail!("{name}: an ADALORA adapter holds only each module's lora_A, lora_E and lora_B");
        }
        if self.vera.is_some() || self.prompt.is_some() {
            bail!("an ADALORA adapter holds only each module's lora_A, lora_E and lora_B");
        }
        for (module, w) in &self.adalora {
            if !config.selects(module)? {
                bail!("{module}: has AdaLoRA triplets but target_modules does not select it");
            }
            let kept = match config.kept(module) {
                Some(kept) => kept.iter().filter(|&&k| k).count(),
                None => config.init_r,
            };
            if w.r != kept {
                bail!(
                    "{module}: lora_A has {} rows but the config keeps {kept} (init_r / rank_pattern)",
                    w.r
                );
            }
        }
        Ok(())
    }

    fn validate_oft(&self, config: &OftConfig) -> anyhow::Result<()> {
        use anyhow::bail;
        let others = (self.modules.keys().chain(self.scales.keys()))
            .chain(self.biases.keys())
            .chain(self.adaption.keys())
            .chain(self.loha.keys())
            .chain(self.lokr.keys())
            .chain(self.adalora.keys())
            .next();
        if let Some(name) = others {
            bail!("{name}: an OFT adapter holds only each module's oft_R rotation");
        }
        if self.vera.is_some() || self.prompt.is_some() {
            bail!("an OFT adapter holds only each module's oft_R rotation");
        }
        for (module, w) in &self.oft {
            if !config.selects(module)? {
                bail!("{module}: has an OFT rotation but target_modules does not select it");
            }
            if config.block_share && w.rows() != 1 {
                bail!(
                    "{module}: block_share is set but oft_R holds {} blocks, not one shared",
                    w.rows()
                );
            }
        }
        Ok(())
    }

    fn validate_adaption(&self, config: &AdaptionConfig) -> anyhow::Result<()> {
        use anyhow::bail;
        if let Some(name) = self
            .modules
            .keys()
            .chain(self.scales.keys())
            .chain(self.biases.keys())
            .chain(self.loha.keys())
            .chain(self.vera.iter().flat_map(|v| v.lambdas.keys()))
            .next()
        {
            bail!("{name}: an ADAPTION_PROMPT adapter holds only adaption_prompt and adaption_gate tensors");
        }
        if self.prompt.is_some() {
            bail!("prompt_embeddings: not part of an ADAPTION_PROMPT adapter");
        }
        if self.adaption.len() != config.adapter_layers() {
            bail!(
                "adapter_layers: {} but the file has prompts for {} layers",
                config.adapter_layers(),
                self.adaption.len()
            );
        }
        let len = config.adapter_len();
        for (module, p) in &self.adaption {
            if p.prompt.len() % len.max(1) != 0 || p.prompt.is_empty() {
                bail!(
                    "{module}.adaption_prompt: {} values are not adapter_len {len} rows",
                    p.prompt.len()
                );
            }
        }
        Ok(())
    }

    fn validate_prompt(&self, config: &PromptConfig) -> anyhow::Result<()> {
        use anyhow::bail;
        if let Some(name) = self
            .modules
            .keys()
            .chain(self.scales.keys())
            .chain(self.biases.keys())
            .chain(self.adaption.keys())
            .chain(self.loha.keys())
            .chain(self.vera.iter().flat_map(|v| v.lambdas.keys()))
            .next()
        {
            bail!(
                "{name}: a {} adapter holds only prompt_embeddings",
                config.peft_type.peft_type()
            );
        }
        let Some(prompt) = &self.prompt else {
            bail!(
                "prompt_embeddings: missing (a {} adapter's one tensor)",
                config.peft_type.peft_type()
            );
        };
        let n = config.num_virtual_tokens();
        if let Some(dim) = config.row_width() {
            if prompt.len() != n * dim {
                let width = match config.peft_type {
                    PromptMethod::PrefixTuning => "num_layers · 2 · token_dim",
                    _ => "token_dim",
                };
                bail!(
                    "prompt_embeddings: {} values, not [num_virtual_tokens {n}, {width} {dim}]",
                    prompt.len()
                );
            }
        } else if config.peft_type == PromptMethod::PrefixTuning {
            bail!("token_dim, num_layers: a PREFIX_TUNING config needs both");
        } else if n == 0 || prompt.len() % n != 0 {
            bail!(
                "prompt_embeddings: {} values do not split into num_virtual_tokens {n} rows",
                prompt.len()
            );
        }
        Ok(())
    }

    fn validate_ia3(&self, config: &Ia3Config) -> anyhow::Result<()> {
        use anyhow::bail;
        if let Some(module) = self.modules.keys().next() {
            bail!("{module}: has LoRA weights but the config's peft_type is \"IA3\"");
        }
        if let Some(name) = self.biases.keys().next() {
            bail!("{name}: IA3 adapters carry no biases");
        }
        let matcher = config.matcher()?;
        for (module, v) in &self.scales {
            if !matcher.is_target(module)? {
                bail!("{module}: has an IA3 vector but target_modules does not select it");
            }
            if v.feedforward != matcher.is_feedforward(module)? {
                bail!(
                    "{module}: ia3_l is {:?}, which disagrees with feedforward_modules ([1, in] scales the input of a \
                     feedforward module, [out, 1] the output of any other)",
                    v.shape()
                );
            }
        }
        Ok(())
    }
}
