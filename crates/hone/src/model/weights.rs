//! Loading a model's config and weights from any source, under HF tensor names: every weight
//! expanded to f32 ([`load`], the exact path), or matrices kept in their stored type and read in
//! place from the file's memory map ([`load_stored`]).
//!
//! GGUF files name tensors llama.cpp's way (`blk.N.attn_q.weight`) and, for the `llama` arch, store
//! q/k projection rows permuted for llama.cpp's interleaved rotary layout; both are undone here so
//! the rest of Hone sees one layout, the HF one (for a stored matrix, by reading its rows in the HF
//! order).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::config::{text_model_name, Architecture, ModelConfig, RopeScaling};
use super::linear::Weight;
use crate::io::gguf::{GgufFile, GgufTensorInfo};
use crate::io::safetensors;
use crate::io::source::ModelSource;
use crate::kernels::stored::{StoredMatrix, WeightBytes};
use crate::quant::GgmlType;

/// Config and f32 weights keyed by HF tensor name.
pub fn load(
    source: &ModelSource,
    device: &Device,
) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    match source {
        ModelSource::HfDir(dir) => {
            let cfg = ModelConfig::from_hf_file(&dir.join("config.json"))?;
            let files = safetensors::checkpoint_files(dir)?;
            let weights = safetensors::load_f32(&files, device)?;
            let weights = weights
                .into_iter()
                .filter_map(|(name, t)| Some((checkpoint_name(&cfg, &name)?, t)))
                .collect();
            Ok((cfg, weights))
        }
        ModelSource::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            load_gguf(&gguf, device)
        }
    }
}

/// Config and weights of an open GGUF file.
pub fn load_gguf(
    gguf: &GgufFile,
    device: &Device,
) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    load_gguf_filtered(gguf, device, |_| true)
}

/// [`load_gguf`] over the tensors `wanted` accepts.
fn load_gguf_filtered(
    gguf: &GgufFile,
    device: &Device,
    wanted: impl Fn(&GgufTensorInfo) -> bool,
) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    let mut cfg = ModelConfig::from_gguf(gguf)?;
    let mut weights = HashMap::new();
    for info in gguf.tensors.iter().filter(|i| wanted(i)) {
        if info.name == "rope_freqs.weight" {
            let (factors, _) = gguf.tensor_f32(&info.name)?;
            cfg.rope_scaling = Some(RopeScaling::FreqFactors(factors));
            continue;
        }
        let Some(hf_name) = hf_name(&info.name, cfg.architecture) else {
            continue;
        };
        let (mut data, shape) = gguf.tensor_f32(&info.name)?;
        let row_len: usize = shape[1..].iter().product();
        if let Some(heads) = checked_permuted_heads(&hf_name, &cfg, shape[0])
            .with_context(|| format!("{}: tensor {}", gguf.path.display(), info.name))?
        {
            data = unpermute_rows(&data, heads, row_len);
        }
        if is_norm(&hf_name) && cfg.norm_offset != 0.0 {
            // llama.cpp stores Gemma's norm weights with the 1 of `1 + w` added.
            data.iter_mut().for_each(|w| *w -= cfg.norm_offset);
        }
        let t = Tensor::from_vec(data, shape, device)
            .with_context(|| format!("{}: tensor {}", gguf.path.display(), info.name))?;
        weights.insert(hf_name, t);
    }
    if cfg.architecture.gguf_splits_qkv() {
        pack_qkv(&cfg, &mut weights, |parts| Ok(Tensor::cat(parts, 0)?))
            .with_context(|| format!("{}", gguf.path.display()))?;
    }
    Ok((cfg, weights))
}

/// The q, k and v projections of layer `l` (Llama's names, as llama.cpp's GGUF keeps them) and
/// the module a family that fuses them stores them in.
fn qkv_names(cfg: &ModelConfig, l: usize) -> ([String; 3], String) {
    let n = cfg.architecture.linear_names();
    let name = |module: &str| format!("model.layers.{l}.{module}.weight");
    ([name(n.q), name(n.k), name(n.v)], name(n.qkv))
}

/// Each layer's q, k and v (read apart from a GGUF) stacked into the module the family's
/// checkpoints fuse them in (Baichuan's `W_pack`), by `stack`.
pub fn pack_qkv<W: Clone>(
    cfg: &ModelConfig,
    weights: &mut HashMap<String, W>,
    stack: impl Fn(&[W]) -> Result<W>,
) -> Result<()> {
    for l in 0..cfg.num_hidden_layers {
        let (parts, packed) = qkv_names(cfg, l);
        let parts: Vec<W> = parts
            .iter()
            .map(|p| {
                weights
                    .remove(p)
                    .with_context(|| format!("tensor {p} is missing"))
            })
            .collect::<Result<_>>()?;
        weights.insert(packed, stack(&parts)?);
    }
    Ok(())
}

/// Each layer's fused q|k|v split into q, k and v (for llama.cpp's GGUF), the inverse of
/// [`pack_qkv`].
pub fn unpack_qkv(cfg: &ModelConfig, weights: &mut HashMap<String, Tensor>) -> Result<()> {
    let (q, kv) = cfg.attention_widths();
    for l in 0..cfg.num_hidden_layers {
        let (parts, packed) = qkv_names(cfg, l);
        let w = weights
            .remove(&packed)
            .with_context(|| format!("tensor {packed} is missing"))?;
        for (name, (start, len)) in parts.into_iter().zip([(0, q), (q, kv), (q + kv, kv)]) {
            weights.insert(name, w.narrow(0, start, len)?);
        }
    }
    Ok(())
}

/// Config and weights keyed by HF tensor name: 2-D f16/bf16/quantized tensors stay in their
/// stored type, mapped from the file; f32 tensors and vectors (norms, biases) are f32.
pub fn load_stored(
    source: &ModelSource,
    device: &Device,
) -> Result<(ModelConfig, HashMap<String, Weight>)> {
    match source {
        ModelSource::HfDir(dir) => {
            let cfg = ModelConfig::from_hf_file(&dir.join("config.json"))?;
            let mut weights = HashMap::new();
            for path in safetensors::checkpoint_files(dir)? {
                let (map, tensors) = safetensors::map_file(&path)?;
                for t in tensors {
                    let Some(name) = checkpoint_name(&cfg, &t.name) else {
                        continue;
                    };
                    let ty = match t.dtype {
                        DType::F16 => Some(GgmlType::F16),
                        DType::BF16 => Some(GgmlType::BF16),
                        _ => None,
                    };
                    let w = match (ty, &t.shape[..]) {
                        (Some(ty), &[rows, cols]) => {
                            let bytes = WeightBytes::Mapped {
                                map: map.clone(),
                                range: t.range.clone(),
                            };
                            let m =
                                StoredMatrix::new(ty, rows, cols, bytes).with_context(|| {
                                    format!("{}: tensor {}", path.display(), t.name)
                                })?;
                            Weight::Stored(m)
                        }
                        _ => Weight::F32(t.to_f32(&map, device)?),
                    };
                    if weights.insert(name, w).is_some() {
                        anyhow::bail!(
                            "{}: tensor {} also appears in another shard",
                            path.display(),
                            t.name
                        );
                    }
                }
            }
            Ok((cfg, weights))
        }
        ModelSource::Gguf(path) => load_gguf_stored(&GgufFile::open_populated(path)?, device),
    }
}

/// [`load_stored`] for an open GGUF file.
pub fn load_gguf_stored(
    gguf: &GgufFile,
    device: &Device,
) -> Result<(ModelConfig, HashMap<String, Weight>)> {
    let is_matrix = |info: &GgufTensorInfo| info.dims.len() == 2 && info.ggml_type != GgmlType::F32;
    // Vectors, f32 matrices and the rope factors (which complete the config): as the f32 path
    // reads them.
    let (cfg, f32_weights) = load_gguf_filtered(gguf, device, |info| !is_matrix(info))?;
    let mut weights: HashMap<String, Weight> = f32_weights
        .into_iter()
        .map(|(n, t)| (n, Weight::F32(t)))
        .collect();
    for info in gguf.tensors.iter().filter(|i| is_matrix(i)) {
        let Some(hf_name) = hf_name(&info.name, cfg.architecture) else {
            continue;
        };
        let (rows, cols) = (info.dims[1] as usize, info.dims[0] as usize);
        let range = info.offset as usize..(info.offset + info.n_bytes) as usize;
        let bytes = WeightBytes::Mapped {
            map: gguf.map(),
            range,
        };
        let mut m = StoredMatrix::new(info.ggml_type, rows, cols, bytes)
            .with_context(|| format!("{}: tensor {}", gguf.path.display(), info.name))?;
        if let Some(heads) = checked_permuted_heads(&hf_name, &cfg, rows)
            .with_context(|| format!("{}: tensor {}", gguf.path.display(), info.name))?
        {
            m = m.with_row_order(unpermuted_order(rows, heads));
        }
        weights.insert(hf_name, Weight::Stored(m));
    }
    if cfg.architecture.gguf_splits_qkv() {
        pack_qkv(&cfg, &mut weights, stack_weights)
            .with_context(|| format!("{}", gguf.path.display()))?;
    }
    Ok((cfg, weights))
}

/// Weights stacked by rows: stored matrices of one type as they are, any other mix in f32.
fn stack_weights(parts: &[Weight]) -> Result<Weight> {
    let stored: Option<Vec<&StoredMatrix>> = parts
        .iter()
        .map(|w| match w {
            Weight::Stored(m) => Some(m),
            Weight::F32(_) => None,
        })
        .collect();
    if let Some(stored) = stored.filter(|s| s.iter().all(|m| m.ggml_type() == s[0].ggml_type())) {
        return Ok(Weight::Stored(StoredMatrix::stack_rows(&stored)?));
    }
    let tensors: Vec<Tensor> = parts
        .iter()
        .map(|w| match w {
            Weight::Stored(m) => Ok(Tensor::from_vec(
                m.to_f32(),
                (m.rows(), m.cols()),
                &Device::Cpu,
            )?),
            Weight::F32(t) => Ok(t.clone()),
        })
        .collect::<Result<_>>()?;
    Ok(Weight::F32(Tensor::cat(&tensors, 0)?))
}

/// The name Hone uses for checkpoint tensor `name`: a multimodal checkpoint's language-model
/// tensors under the text model's names, its vision parts left out (None); a remote-code
/// family's under transformers' Llama names, its recomputed buffers left out.
pub fn checkpoint_name(cfg: &ModelConfig, name: &str) -> Option<String> {
    if let Some(names) = cfg.architecture.checkpoint_names() {
        return names.to_hone(name);
    }
    match cfg.wrapper {
        Some(_) => text_model_name(name),
        None => Some(name.to_string()),
    }
}

/// Baichuan 2's `NormHead`: the LM head `lm_head.weight` with each row divided by its length,
/// f32 or rounded back to its 16-bit stored type, as the modeling file normalizes the weight in
/// the model's dtype. Checkpoints hold the raw rows; models that run (not train) the head
/// normalize them once.
pub fn normalize_head(weights: &mut HashMap<String, Weight>) -> Result<()> {
    let Some(head) = weights.get_mut("lm_head.weight") else {
        return Ok(());
    };
    *head = match head {
        Weight::Stored(m) => Weight::Stored(normalized_stored(m)?),
        Weight::F32(t) => Weight::F32(normalized_tensor(t)?),
    };
    Ok(())
}

/// A `[rows, cols]` f32 matrix with its rows normalized ([`normalize_rows`]).
pub fn normalized_tensor(t: &Tensor) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    let mut values = t.flatten_all()?.to_vec1::<f32>()?;
    normalize_rows(&mut values, cols);
    Ok(Tensor::from_vec(values, (rows, cols), t.device())?)
}

/// Each row of a `[rows, cols]` matrix divided by its length, as `F.normalize(w, dim=1)` does
/// (at least 1e-12, so a zero row stays zero); the lengths.
pub fn normalize_rows(values: &mut [f32], cols: usize) -> Vec<f32> {
    values
        .chunks_exact_mut(cols)
        .map(|row| {
            let length = row.iter().map(|&x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= length);
            length
        })
        .collect()
}

/// A 16-bit head with its rows normalized and rounded back to the stored type, as the modeling
/// file normalizes the weight in the model's dtype.
fn normalized_stored(m: &StoredMatrix) -> Result<StoredMatrix> {
    let (rows, cols) = (m.rows(), m.cols());
    let mut values = m.to_f32();
    normalize_rows(&mut values, cols);
    let bytes: Vec<u8> = match m.ggml_type() {
        GgmlType::F16 => values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        other => {
            anyhow::bail!("lm_head.weight: a normalized head stored as {other:?} is not supported")
        }
    };
    StoredMatrix::new(
        m.ggml_type(),
        rows,
        cols,
        WeightBytes::Owned(std::sync::Arc::new(bytes)),
    )
}

/// The bias beside a LayerNorm weight `….weight` (StarCoder2's norms).
pub fn norm_bias_name(weight: &str) -> String {
    format!("{}.bias", weight.strip_suffix(".weight").unwrap_or(weight))
}

/// Whether HF tensor `hf_name` is an RMSNorm weight (a block's, a q/k norm or the final one).
pub fn is_norm(hf_name: &str) -> bool {
    hf_name.ends_with("norm.weight")
}

/// The number of heads whose rows llama.cpp permuted in tensor `hf_name` (q and k projections of
/// the archs it permutes).
pub fn permuted_heads(hf_name: &str, cfg: &ModelConfig) -> Option<usize> {
    if !cfg.architecture.gguf_permutes_qk() {
        None
    } else if hf_name.contains("self_attn.q_proj") {
        Some(cfg.num_attention_heads)
    } else if hf_name.contains("self_attn.k_proj") {
        Some(cfg.num_key_value_heads)
    } else {
        None
    }
}

/// [`permuted_heads`] for a stored tensor of `rows` rows, which must be the config's heads of
/// `head_dim` each before they can be unpermuted (a GGUF whose tensors disagree with its metadata
/// divided by a zero head size, found by fuzzing).
fn checked_permuted_heads(hf_name: &str, cfg: &ModelConfig, rows: usize) -> Result<Option<usize>> {
    let Some(heads) = permuted_heads(hf_name, cfg) else {
        return Ok(None);
    };
    let want = heads * cfg.head_dim;
    if rows != want {
        bail!(
            "{rows} rows, but the metadata's {heads} heads of {} make {want}",
            cfg.head_dim
        );
    }
    Ok(Some(heads))
}

/// The HF name of a llama.cpp tensor name in a model of family `arch`; None for tensors Hone does
/// not use.
pub fn hf_name(gguf_name: &str, arch: Architecture) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output_norm.bias" => Some("model.norm.bias"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let hf_module = layer_names(arch).find(|(g, _)| *g == module)?.1;
    Some(format!("model.layers.{layer}.{hf_module}.{kind}"))
}

/// The llama.cpp name of an HF tensor name (the inverse of [`hf_name`]); None for tensors llama.cpp
/// has no name for.
pub fn gguf_name(hf_name: &str, arch: Architecture) -> Option<String> {
    let fixed = match hf_name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "model.norm.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let gguf_module = layer_names(arch).find(|(_, h)| *h == module)?.0;
    Some(format!("blk.{layer}.{gguf_module}.{kind}"))
}

/// llama.cpp module names within a block of family `arch` and their HF equivalents: the norms'
/// HF names depend on where they sit ([`super::config::NormPlacement::norms`]), and a family with fused
/// projections has `attn_qkv` (Phi-3) and an `ffn_up` that holds gate and up (Phi-3, GLM-4).
pub fn layer_names(arch: Architecture) -> impl Iterator<Item = (&'static str, &'static str)> {
    let norms = arch.norm_placement().norms().iter();
    let norms = norms.map(|&(_, hf, gguf)| (gguf, hf));
    let n = arch.linear_names();
    let mut linears = if arch.fused_qkv() && !arch.gguf_splits_qkv() {
        vec![("attn_qkv", n.qkv)]
    } else {
        vec![
            ("attn_q", n.q),
            ("attn_k", n.k),
            ("attn_v", n.v),
            ("attn_q_norm", "self_attn.q_norm"),
            ("attn_k_norm", "self_attn.k_norm"),
        ]
    };
    if !arch.gated_mlp() {
        linears.extend([("ffn_up", n.up), ("ffn_down", n.down)]);
    } else if arch.fused_gate_up() {
        linears.extend([("ffn_up", n.gate_up), ("ffn_down", n.down)]);
    } else {
        linears.extend([("ffn_gate", n.gate), ("ffn_up", n.up), ("ffn_down", n.down)]);
    }
    linears.push(("attn_output", n.o));
    norms.chain(linears)
}

/// The block modules of [`layer_names`] a model of `cfg` has (the q/k norms only when it
/// normalizes q and k).
pub fn layer_modules(cfg: &ModelConfig) -> impl Iterator<Item = (&'static str, &'static str)> {
    let qk_norm = cfg.qk_norm.is_some();
    layer_names(cfg.architecture)
        .filter(move |(_, hf)| qk_norm || !matches!(*hf, "self_attn.q_norm" | "self_attn.k_norm"))
}

/// Undo llama.cpp's q/k permutation. Within each head, GGUF row `i * 2 + j` holds HF row
/// `j * half + i` (HF keeps the two rotated halves apart; llama.cpp interleaves them).
pub fn unpermute_rows(data: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    permute_rows_with(data, n_heads, row_len, |half, r| (r % half) * 2 + r / half)
}

/// Apply llama.cpp's q/k permutation (the inverse of [`unpermute_rows`]), for writing GGUF.
pub fn permute_rows(data: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    permute_rows_with(data, n_heads, row_len, |half, r| (r % 2) * half + r / 2)
}

/// The stored row that holds each HF row of a llama.cpp-permuted q/k matrix of `n_rows` rows.
pub fn unpermuted_order(n_rows: usize, n_heads: usize) -> Vec<u32> {
    row_sources(n_rows, n_heads, |half, r| (r % half) * 2 + r / half)
}

/// Output row `r` of each head is copied from input row `src(half, r)` of that head.
fn permute_rows_with(
    data: &[f32],
    n_heads: usize,
    row_len: usize,
    src: impl Fn(usize, usize) -> usize,
) -> Vec<f32> {
    let sources = row_sources(data.len() / row_len, n_heads, src);
    let mut out = vec![0f32; data.len()];
    for (to, &from) in out.chunks_exact_mut(row_len).zip(&sources) {
        let from = from as usize * row_len;
        to.copy_from_slice(&data[from..from + row_len]);
    }
    out
}

/// For each output row, the input row it comes from: row `r` of each head from row `src(half, r)`
/// of that head.
fn row_sources(n_rows: usize, n_heads: usize, src: impl Fn(usize, usize) -> usize) -> Vec<u32> {
    let head_dim = n_rows / n_heads;
    let half = head_dim / 2;
    (0..n_rows)
        .map(|row| {
            let (h, r) = (row / head_dim, row % head_dim);
            (h * head_dim + src(half, r)) as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRE: Architecture = Architecture::Llama;

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight", PRE).unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias", PRE).unwrap(),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.11.ffn_down.weight", PRE).unwrap(),
            "model.layers.11.mlp.down_proj.weight"
        );
        assert_eq!(hf_name("output.weight", PRE).unwrap(), "lm_head.weight");
        assert_eq!(hf_name("rope_freqs.weight", PRE), None);
    }

    #[test]
    fn hf_names_map_back_to_gguf_names() {
        for name in [
            "token_embd.weight",
            "output_norm.weight",
            "output.weight",
            "blk.0.attn_q.bias",
            "blk.12.ffn_gate.weight",
            "blk.2.attn_k_norm.weight",
        ] {
            assert_eq!(gguf_name(&hf_name(name, PRE).unwrap(), PRE).unwrap(), name);
        }
        assert_eq!(gguf_name("model.rotary_emb.inv_freq", PRE), None);
    }

    /// HF's `post_attention_layernorm` is Llama's MLP input norm but OLMo 2's attention output norm.
    #[test]
    fn norm_names_follow_where_the_norms_sit() {
        let post = Architecture::Olmo2;
        let name = "model.layers.2.post_attention_layernorm.weight";
        assert_eq!(gguf_name(name, PRE).unwrap(), "blk.2.ffn_norm.weight");
        assert_eq!(
            gguf_name(name, post).unwrap(),
            "blk.2.post_attention_norm.weight"
        );
        assert_eq!(
            hf_name("blk.0.post_ffw_norm.weight", post).unwrap(),
            "model.layers.0.post_feedforward_layernorm.weight"
        );
        assert_eq!(hf_name("blk.0.attn_norm.weight", post), None);
    }

    #[test]
    fn permutation_matches_llama_cpp_and_round_trips() {
        // One head of dim 4, rows of length 1: HF rows [a0 a1 | b0 b1] interleave to [a0 b0 a1 b1].
        let hf = [0.0, 1.0, 10.0, 11.0];
        assert_eq!(permute_rows(&hf, 1, 1), vec![0.0, 10.0, 1.0, 11.0]);
        let data: Vec<f32> = (0..2 * 8 * 3).map(|x| x as f32).collect();
        assert_eq!(unpermute_rows(&permute_rows(&data, 2, 3), 2, 3), data);
    }
}
