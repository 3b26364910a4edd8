//! Which AdamW group each trainable tensor joins, as the anchors build them: transformers' two
//! groups (weight decay on everything but biases and norm weights), or with LoRA+
//! (`loraplus_lr_ratio`, LLaMA-Factory's `_create_loraplus_optimizer`) three: LoRA's A matrices at
//! the learning rate; B matrices and every 1-D tensor (biases, DoRA's magnitudes) at `ratio ×` it,
//! with weight decay except on biases and norm weights.

use super::optim::AdamWConfig;

/// A group's hyper-parameters and its tensors as `(name, element count)`.
pub type Group<'a> = (AdamWConfig, Vec<(&'a str, usize)>);

/// Whether a tensor, by name, joins a group.
type Joins = fn(&str) -> bool;

/// The groups of the tensors `shapes` (Hone's names, as `TrainModel::trainable_shapes` gives
/// them), each with `base` changed as its group needs; groups without tensors are left out.
pub fn param_groups<'a>(
    shapes: &'a [(String, usize)],
    base: AdamWConfig,
    loraplus_lr_ratio: Option<f64>,
) -> Vec<Group<'a>> {
    let without_decay = AdamWConfig {
        weight_decay: 0.0,
        ..base
    };
    let groups: Vec<(AdamWConfig, Joins)> = match loraplus_lr_ratio {
        None => vec![(base, |n: &str| !no_decay(n)), (without_decay, no_decay)],
        Some(ratio) => {
            let fast = |c: AdamWConfig| AdamWConfig {
                lr: c.lr * ratio,
                ..c
            };
            vec![
                (base, |n: &str| !loraplus_fast(n)),
                (fast(base), |n: &str| loraplus_fast(n) && !no_decay(n)),
                (fast(without_decay), |n: &str| {
                    loraplus_fast(n) && no_decay(n)
                }),
            ]
        }
    };
    groups
        .into_iter()
        .map(|(config, joins)| {
            let params = shapes
                .iter()
                .filter(|(n, _)| joins(n))
                .map(|(n, s)| (n.as_str(), *s))
                .collect();
            (config, params)
        })
        .filter(|(_, params): &Group| !params.is_empty())
        .collect()
}

/// transformers' rule: no weight decay on biases and norm weights.
fn no_decay(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("norm")
}

/// LoRA+'s faster tensors: LoRA's B matrices and every 1-D tensor.
fn loraplus_fast(name: &str) -> bool {
    name.ends_with(".lora_B.weight") || name.ends_with(".lora_magnitude_vector") || no_decay(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(group: &Group<'a>) -> Vec<&'a str> {
        group.1.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn loraplus_speeds_up_b_and_vectors_and_decays_all_but_biases() {
        let m = "model.layers.0.self_attn.q_proj";
        let shapes: Vec<(String, usize)> = [
            "lora_A.weight",
            "lora_B.weight",
            "lora_magnitude_vector",
            "bias",
        ]
        .iter()
        .map(|s| (format!("{m}.{s}"), 4))
        .collect();
        let base = AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let plain = param_groups(&shapes, base, None);
        assert_eq!(plain.len(), 2);
        assert_eq!(names(&plain[1]), [format!("{m}.bias")]);

        let plus = param_groups(&shapes, base, Some(16.0));
        let summary: Vec<(f64, f64, usize)> = plus
            .iter()
            .map(|(c, p)| (c.lr, c.weight_decay, p.len()))
            .collect();
        assert_eq!(
            summary,
            [(1e-3, 0.01, 1), (1.6e-2, 0.01, 2), (1.6e-2, 0.0, 1)]
        );
        assert_eq!(names(&plus[0]), [format!("{m}.lora_A.weight")]);
    }
}
