//! Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p,
//! after a repetition penalty — in the order transformers' `generate` applies them, so the same
//! settings mean the same thing in Hone — and OpenAI's presence and frequency penalties (applied
//! first, on the tokens generated so far, as OpenAI documents them and vLLM applies them, after
//! OpenAI's per-token `logit_bias`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0: off).
    pub top_p: f32,
    /// CTRL-style penalty on tokens already in the context (1.0: off).
    pub repetition_penalty: f32,
    /// OpenAI's: subtracted once from the logit of every token generated so far (0: off).
    pub presence_penalty: f32,
    /// OpenAI's: subtracted from a token's logit once per time it was generated (0: off).
    pub frequency_penalty: f32,
    /// OpenAI's `logit_bias`: added to these tokens' logits before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 42,
        }
    }
}

pub struct Sampler {
    cfg: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Sampler { cfg, rng }
    }

    /// The next token id given the last position's logits, every token id seen so far
    /// (`context`) and those of them generated (`generated`).
    pub fn next(&mut self, logits: &[f32], context: &[u32], generated: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        for &(id, bias) in &self.cfg.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        let (presence, frequency) = (self.cfg.presence_penalty, self.cfg.frequency_penalty);
        if presence != 0.0 || frequency != 0.0 {
            apply_openai_penalties(&mut logits, generated, presence, frequency);
        }
        if self.cfg.repetition_penalty != 1.0 {
            apply_repetition_penalty(&mut logits, context, self.cfg.repetition_penalty);
        }
        if self.cfg.temperature <= 0.0 {
            return argmax(&logits);
        }
        for l in &mut logits {
            *l /= self.cfg.temperature;
        }
        let candidates = filter_top_k_top_p(&logits, self.cfg.top_k, self.cfg.top_p);
        let r: f32 = self.rng.random();
        let total: f32 = candidates.iter().map(|&(_, p)| p).sum();
        let mut acc = 0.0;
        for &(id, p) in &candidates {
            acc += p / total;
            if r < acc {
                return id;
            }
        }
        candidates.last().map_or(0, |&(id, _)| id)
    }
}

/// Index of the largest logit; the first one on ties, as torch.argmax.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Divide positive logits by the penalty and multiply negative ones, once per distinct token.
fn apply_repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    let mut seen = std::collections::HashSet::new();
    for &id in context {
        if let Some(l) = logits.get_mut(id as usize) {
            if seen.insert(id) {
                *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
            }
        }
    }
}

/// `logit[j] -= count[j] · frequency + (count[j] > 0) · presence`, counts over `generated`.
fn apply_openai_penalties(logits: &mut [f32], generated: &[u32], presence: f32, frequency: f32) {
    let mut counts = std::collections::HashMap::<u32, f32>::new();
    for &id in generated {
        *counts.entry(id).or_default() += 1.0;
    }
    for (id, count) in counts {
        if let Some(l) = logits.get_mut(id as usize) {
            *l -= count * frequency + presence;
        }
    }
}

/// Softmax probabilities of the surviving tokens, most likely first.
fn filter_top_k_top_p(logits: &[f32], top_k: usize, top_p: f32) -> Vec<(u32, f32)> {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let max = logits[order[0] as usize];
    let weights: Vec<f32> = order
        .iter()
        .map(|&i| (logits[i as usize] - max).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    let mut out = Vec::with_capacity(order.len());
    let mut cumulative = 0.0;
    for (&id, w) in order.iter().zip(weights) {
        let p = w / total;
        out.push((id, p));
        cumulative += p;
        // transformers keeps tokens until the cumulative mass reaches top_p, and at least one.
        if cumulative >= top_p {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingConfig::default());
        assert_eq!(s.next(&[0.1, 3.0, 3.0, -1.0], &[], &[]), 1);
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        let mut logits = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut logits, &[0, 1, 0], 2.0);
        assert_eq!(logits, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn presence_and_frequency_penalties_follow_openai() {
        let mut logits = vec![2.0, 2.0, 2.0];
        apply_openai_penalties(&mut logits, &[0, 1, 1], 0.5, 0.25);
        assert_eq!(logits, vec![2.0 - 0.25 - 0.5, 2.0 - 0.5 - 0.5, 2.0]);
        // Greedy decoding turns away from a repeated token once the penalty outweighs its lead.
        let cfg = SamplingConfig {
            frequency_penalty: 1.0,
            ..Default::default()
        };
        assert_eq!(Sampler::new(cfg).next(&[1.5, 1.0], &[0], &[0]), 1);
    }

    #[test]
    fn logit_bias_is_added_before_choosing() {
        let cfg = SamplingConfig {
            logit_bias: vec![(0, -100.0), (2, 0.5)],
            ..Default::default()
        };
        assert_eq!(Sampler::new(cfg).next(&[5.0, 1.0, 0.7], &[], &[]), 2);
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [0.0f32, 3.0, 2.0, 1.0];
        let k2: Vec<u32> = filter_top_k_top_p(&logits, 2, 1.0)
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(k2, vec![1, 2]);
        // p(1) ≈ 0.644, p(2) ≈ 0.237: 0.5 keeps one token, 0.8 keeps two.
        assert_eq!(filter_top_k_top_p(&logits, 0, 0.5).len(), 1);
        assert_eq!(filter_top_k_top_p(&logits, 0, 0.8).len(), 2);
    }

    #[test]
    fn sampling_is_reproducible_from_the_seed_and_follows_the_distribution() {
        let logits = [0.0f32, 1.0, 2.0];
        let cfg = SamplingConfig {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |cfg: &SamplingConfig| {
            let mut s = Sampler::new(cfg.clone());
            (0..3000)
                .map(|_| s.next(&logits, &[], &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(&cfg);
        assert_eq!(a, draw(&cfg));
        let share_of_2 = a.iter().filter(|&&t| t == 2).count() as f32 / a.len() as f32;
        // softmax([0,1,2])[2] = 0.665
        assert!((share_of_2 - 0.665).abs() < 0.03, "{share_of_2}");
    }
}
