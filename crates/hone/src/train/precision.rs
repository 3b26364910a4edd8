//! Mixed precision (`bf16: true`), as PyTorch's autocast runs a model: the products on weight
//! matrices read bf16 copies of them (activations rounded to bf16, sums in f32), while everything
//! that is updated (LoRA A/B, full fine-tuning's master weights, norms), the embedding lookups, the
//! loss and the optimizer states stay f32.
//!
//! A frozen matrix is replaced by its bf16 rounding (half the memory of f32), unless the run saves
//! the whole model; a matrix that trains keeps its f32 values and gets a bf16 copy, made again
//! after every optimizer step. Quantized frozen matrices (QLoRA) may stay as stored, being smaller
//! than bf16: a block's products round them to bf16 one matrix at a time, while a quantized head
//! (multiplied by a chunk of tokens at a time, too often to convert it for each) keeps f32
//! products on dequantized tiles.

use super::model::TrainModel;
use crate::kernels::matrix::Matrix;

impl TrainModel {
    /// Switches the products to bf16; quantized frozen matrices keep their stored type when
    /// `keep_quantized`; frozen matrices keep their own values beside a bf16 copy when
    /// `keep_originals` (the run saves them).
    pub fn use_bf16(&mut self, keep_quantized: bool, keep_originals: bool) {
        let keep = |trains: bool| Placement {
            trains,
            keep_quantized,
            keep_originals,
        };
        for block in &mut self.blocks {
            for p in block.linears_mut() {
                let trains = p.weight_trains();
                keep(trains).place(&mut p.weight, &mut p.bf16, Matrix::to_bf16);
                if !trains && p.bf16.is_none() {
                    p.weight = std::mem::replace(&mut p.weight, Matrix::Stored(vec![]))
                        .multiplied_in_bf16();
                }
            }
        }
        match &mut self.lm_head {
            Some(head) => {
                let trains = head.grad.is_some();
                keep(trains).place(&mut head.matrix, &mut head.bf16, head_to_bf16);
            }
            // Tied: the embedding keeps its values for the lookups, the head's products read a
            // copy.
            None if converts(&self.embed_tokens.matrix, keep_quantized) => {
                self.embed_tokens.bf16 = Some(head_to_bf16(&self.embed_tokens.matrix));
            }
            None => {}
        }
        // A LoRA run on a converted base now reads the file only through the embedding's
        // lookups: copied out, the file's map and every page read through it are released.
        if !keep_originals && !keep_quantized {
            let embedding =
                std::mem::replace(&mut self.embed_tokens.matrix, Matrix::Stored(vec![]));
            self.embed_tokens.matrix = embedding.into_owned();
        }
    }

    /// Makes the bf16 copies of the matrices that train again from their updated f32 values.
    pub fn refresh_bf16(&mut self) {
        for block in &mut self.blocks {
            for p in block.linears_mut() {
                if p.bf16.is_some() && p.weight_trains() {
                    p.bf16 = Some(p.weight.to_bf16());
                }
            }
        }
        let head = self.lm_head.as_mut().unwrap_or(&mut self.embed_tokens);
        if head.bf16.is_some() && head.grad.is_some() {
            head.bf16 = Some(head_to_bf16(&head.matrix));
        }
    }
}

/// Where a matrix's bf16 form goes.
struct Placement {
    trains: bool,
    keep_quantized: bool,
    keep_originals: bool,
}

impl Placement {
    /// A copy beside `matrix` when it trains or its values are kept, in its place when it is
    /// frozen; nothing for a quantized matrix kept as stored.
    fn place(
        &self,
        matrix: &mut Matrix,
        copy: &mut Option<Matrix>,
        to_bf16: fn(&Matrix) -> Matrix,
    ) {
        let converts = converts(matrix, self.keep_quantized);
        if self.trains || self.keep_originals && converts {
            *copy = Some(to_bf16(matrix));
        } else if converts {
            *matrix = to_bf16(matrix);
        }
    }
}

/// The LM head as bf16, its kernel layout kept: the fused loss multiplies it by 256 rows at a
/// time, and packing the head for each of those products took longer than the products.
fn head_to_bf16(head: &Matrix) -> Matrix {
    head.to_bf16().keeping_packed()
}

/// Whether a frozen matrix is held as bf16: f32 and 16-bit ones are, quantized ones unless kept.
fn converts(m: &Matrix, keep_quantized: bool) -> bool {
    match m {
        Matrix::F32 { .. } => true,
        Matrix::Stored(parts) => {
            !keep_quantized || parts.iter().all(|p| !p.ggml_type().is_quantized())
        }
        Matrix::Bf16 { .. } => false,
    }
}
