//! Block-diagonal rotations of a layer's input, as OFT learns them: `x · blockdiag(R_1, …, R_n)`,
//! each `R_i` (`b × b`) the Cayley transform of a skew-symmetric `Q_i` stored as its strict upper
//! triangle, row by row (`torch.triu_indices(b, b, 1)` order). Forward beside backward, for
//! inference (`model`) and training (`train`) alike.
//!
//! PEFT's two transforms ([`Cayley`]) are written as polynomials or one inverse of `b × b`
//! matrices; their products go through the one GEMM helper on a single thread, the blocks
//! spread over the pool.

use rayon::prelude::*;

use super::matmul::{matmul, MatMut, MatRef, Threads};

/// How `R` is made from `Q`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cayley {
    /// PEFT's default, `use_cayley_neumann` with this many terms: `I + 2Q + 2Q² + … + Q^d`,
    /// the truncated series of `(I + Q)(I − Q)⁻¹`.
    Neumann(usize),
    /// `use_cayley_neumann: false`: `(I − Q)(I + Q)⁻¹` (note the opposite sign convention).
    Exact,
}

impl Cayley {
    /// The series' coefficients of `Q¹, Q², …` as PEFT's `_cayley_batch` adds them: 2 for every
    /// power but the last, which gets 1 (and is at least `Q³` once there are 3 terms).
    fn coefficients(terms: usize) -> Vec<f32> {
        match terms {
            0 | 1 => Vec::new(),
            2 => vec![2.0],
            _ => {
                let degree = (terms - 1).max(3);
                let mut c = vec![2.0; degree];
                c[degree - 1] = 1.0;
                c
            }
        }
    }
}

/// The number of stored values of one `b × b` skew-symmetric block: `b(b − 1)/2`.
pub fn triangle_len(b: usize) -> usize {
    b * b.saturating_sub(1) / 2
}

/// `a · b` for `n × n` row-major matrices.
fn mul(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0.0; n * n];
    matmul(
        MatMut::new(&mut c, n, n),
        MatRef::new(a, n, n),
        MatRef::new(b, n, n),
        false,
        Threads::Single,
    );
    c
}

fn transpose(a: &[f32], n: usize) -> Vec<f32> {
    (0..n * n).map(|i| a[(i % n) * n + i / n]).collect()
}

fn identity(n: usize) -> Vec<f32> {
    (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect()
}

/// `Q = U − Uᵀ`, U holding `v` on its strict upper triangle.
pub fn skew(v: &[f32], b: usize) -> Vec<f32> {
    let mut q = vec![0.0; b * b];
    let mut k = 0;
    for r in 0..b {
        for c in r + 1..b {
            q[r * b + c] = v[k];
            q[c * b + r] = -v[k];
            k += 1;
        }
    }
    q
}

/// The gradient of the triangle `v` from the gradient of `Q = skew(v)`.
fn skew_backward(dq: &[f32], b: usize) -> Vec<f32> {
    let mut dv = Vec::with_capacity(triangle_len(b));
    for r in 0..b {
        for c in r + 1..b {
            dv.push(dq[r * b + c] - dq[c * b + r]);
        }
    }
    dv
}

/// `Q¹ … Q^d` (`powers[k]` is `Q^(k+1)`).
fn powers(q: &[f32], b: usize, d: usize) -> Vec<Vec<f32>> {
    let mut p: Vec<Vec<f32>> = Vec::with_capacity(d);
    for k in 0..d {
        let next = match k {
            0 => q.to_vec(),
            _ => mul(&p[k - 1], q, b),
        };
        p.push(next);
    }
    p
}

/// Gauss–Jordan inverse with partial pivoting, in f64 (`I + Q` with Q skew-symmetric is never
/// singular: its eigenvalues are `1 + iλ`).
fn inverse(a: &[f32], n: usize) -> Vec<f32> {
    let mut m: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let mut inv: Vec<f64> = identity(n).into_iter().map(f64::from).collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| m[i * n + col].abs().total_cmp(&m[j * n + col].abs()))
            .expect("a non-empty column");
        for k in 0..n {
            m.swap(col * n + k, pivot * n + k);
            inv.swap(col * n + k, pivot * n + k);
        }
        let p = m[col * n + col];
        for k in 0..n {
            m[col * n + k] /= p;
            inv[col * n + k] /= p;
        }
        for row in (0..n).filter(|&r| r != col) {
            let f = m[row * n + col];
            if f != 0.0 {
                for k in 0..n {
                    m[row * n + k] -= f * m[col * n + k];
                    inv[row * n + k] -= f * inv[col * n + k];
                }
            }
        }
    }
    inv.into_iter().map(|v| v as f32).collect()
}

/// One block's `R` from its triangle `v`.
pub fn rotation(v: &[f32], b: usize, cayley: Cayley) -> Vec<f32> {
    let q = skew(v, b);
    let mut r = identity(b);
    match cayley {
        Cayley::Neumann(terms) => {
            let c = Cayley::coefficients(terms);
            for (ck, pk) in c.iter().zip(powers(&q, b, c.len())) {
                r.iter_mut().zip(pk).for_each(|(r, p)| *r += ck * p);
            }
        }
        Cayley::Exact => {
            let i = identity(b);
            let minus: Vec<f32> = i.iter().zip(&q).map(|(i, q)| i - q).collect();
            let plus: Vec<f32> = i.iter().zip(&q).map(|(i, q)| i + q).collect();
            r = mul(&minus, &inverse(&plus, b), b);
        }
    }
    r
}

/// The gradient of one block's triangle `v` from `g`, the gradient of its `R`.
pub fn rotation_backward(v: &[f32], b: usize, cayley: Cayley, g: &[f32]) -> Vec<f32> {
    let q = skew(v, b);
    let dq = match cayley {
        // R = I + Σ c_k Q^k: dQ = Σ_k c_k Σ_{j<k} (Qᵀ)^j G (Qᵀ)^(k−1−j). With Qᵀ = −Q and
        // H_m = G (Qᵀ)^m, grouping by j: dQ = Σ_j (Qᵀ)^j S_j, S_j = Σ_m c_(j+m+1) H_m.
        Cayley::Neumann(terms) => {
            let c = Cayley::coefficients(terms);
            let d = c.len();
            // (Qᵀ)^k = (−1)^k Q^k.
            let qt: Vec<Vec<f32>> = powers(&q, b, d.saturating_sub(1))
                .into_iter()
                .enumerate()
                .map(|(k, p)| match k % 2 {
                    0 => p.iter().map(|v| -v).collect(),
                    _ => p,
                })
                .collect();
            let h: Vec<Vec<f32>> = std::iter::once(g.to_vec())
                .chain(qt.iter().map(|p| mul(g, p, b)))
                .collect();
            let mut dq = vec![0.0; b * b];
            for j in 0..d {
                let mut s = vec![0.0; b * b];
                for (m, hm) in h.iter().enumerate().take(d - j) {
                    s.iter_mut().zip(hm).for_each(|(s, h)| *s += c[j + m] * h);
                }
                let term = match j {
                    0 => s,
                    _ => mul(&qt[j - 1], &s, b),
                };
                dq.iter_mut().zip(term).for_each(|(d, t)| *d += t);
            }
            dq
        }
        // R = (I − Q) M, M = (I + Q)⁻¹: dQ = −(I + Rᵀ) G Mᵀ.
        Cayley::Exact => {
            let i = identity(b);
            let plus: Vec<f32> = i.iter().zip(&q).map(|(i, q)| i + q).collect();
            let m = inverse(&plus, b);
            let minus: Vec<f32> = i.iter().zip(&q).map(|(i, q)| i - q).collect();
            let r = mul(&minus, &m, b);
            let left: Vec<f32> = transpose(&r, b)
                .iter()
                .zip(&i)
                .map(|(r, i)| r + i)
                .collect();
            mul(&mul(&left, g, b), &transpose(&m, b), b)
                .into_iter()
                .map(|v| -v)
                .collect()
        }
    };
    skew_backward(&dq, b)
}

/// COFT's projection of each block's `Q` into the Frobenius ball of radius
/// `eps / √(rows)` (PEFT's `_project_batch`; `rows` = the stored blocks), in place.
pub fn project(v: &mut [f32], b: usize, eps: f64) {
    let n = triangle_len(b);
    let rows = v.len() / n.max(1);
    let radius = eps / (rows as f64).sqrt();
    for block in v.chunks_exact_mut(n) {
        // ‖Q‖_F² counts each stored value twice (it and its negated mirror).
        let norm = (2.0 * block.iter().map(|&x| (x as f64).powi(2)).sum::<f64>()).sqrt();
        if norm > radius {
            let factor = (radius / norm) as f32;
            block.iter_mut().for_each(|x| *x *= factor);
        }
    }
}

/// Every block's `R` (`[rows, b, b]`) from the stored triangles (`[rows, b(b−1)/2]`).
pub fn rotations(v: &[f32], b: usize, cayley: Cayley) -> Vec<f32> {
    let n = triangle_len(b);
    v.par_chunks_exact(n.max(1))
        .flat_map_iter(|t| rotation(t, b, cayley))
        .collect()
}

/// `x · blockdiag(R_1, …, R_blocks)` for `x` `[tokens, blocks · b]`: block `i` of every row times
/// `R_i` (`r` holds one `R` per block, or one shared by all).
pub fn rotate(x: &[f32], r: &[f32], b: usize, blocks: usize) -> Vec<f32> {
    let width = blocks * b;
    let n = x.len() / width;
    let mut y = vec![0.0; x.len()];
    for i in 0..blocks {
        matmul(
            MatMut::strided(&mut y[i * b..], n, b, width),
            MatRef::strided(&x[i * b..], n, b, width),
            MatRef::new(block(r, b, i), b, b),
            false,
            Threads::Pool,
        );
    }
    y
}

/// The backward of [`rotate`]: from `dy` (the rotated input's gradient) adds
/// `dy · blockdiag(R)ᵀ` to `dx` and returns each block's `∂L/∂R_i = x_iᵀ dy_i` (`[blocks, b,
/// b]`; summed into one for a shared `R`).
pub fn rotate_backward(
    x: &[f32],
    dy: &[f32],
    r: &[f32],
    b: usize,
    blocks: usize,
    dx: &mut [f32],
) -> Vec<f32> {
    let width = blocks * b;
    let n = x.len() / width;
    let stored = r.len() / (b * b);
    let mut dr = vec![0.0; r.len()];
    for i in 0..blocks {
        matmul(
            MatMut::strided(&mut dx[i * b..], n, b, width),
            MatRef::strided(&dy[i * b..], n, b, width),
            MatRef::new(block(r, b, i), b, b).t(),
            true,
            Threads::Pool,
        );
        let at = (i % stored) * b * b;
        matmul(
            MatMut::new(&mut dr[at..at + b * b], b, b),
            MatRef::strided(&x[i * b..], n, b, width).t(),
            MatRef::strided(&dy[i * b..], n, b, width),
            true,
            Threads::Pool,
        );
    }
    dr
}

/// Each `b × b` block of `r` transposed: the rotations' inverses.
pub fn transposed(r: &[f32], b: usize) -> Vec<f32> {
    r.chunks_exact(b * b)
        .flat_map(|m| transpose(m, b))
        .collect()
}

/// Block `i`'s `R` (the shared one when `r` holds one).
fn block(r: &[f32], b: usize, i: usize) -> &[f32] {
    let stored = r.len() / (b * b);
    let at = (i % stored) * b * b;
    &r[at..at + b * b]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triangle(b: usize, seed: u32) -> Vec<f32> {
        (0..triangle_len(b))
            .map(|k| (((k as u32 * 2654435761) ^ seed) % 1000) as f32 / 5000.0 - 0.1)
            .collect()
    }

    /// The exact transform is orthogonal; the series is its `(I + Q)(I − Q)⁻¹` twin, so it
    /// approaches the exact transform of `−Q`.
    #[test]
    fn cayley_transforms_rotate() {
        let b = 6;
        let v = triangle(b, 7);
        let exact = rotation(&v, b, Cayley::Exact);
        let rrt = mul(&exact, &transpose(&exact, b), b);
        for (x, i) in rrt.iter().zip(identity(b)) {
            assert!((x - i).abs() < 1e-5, "RRᵀ = I");
        }
        let negated: Vec<f32> = v.iter().map(|x| -x).collect();
        let series = rotation(&negated, b, Cayley::Neumann(12));
        for (s, e) in series.iter().zip(&exact) {
            assert!((s - e).abs() < 1e-4, "series {s} vs exact {e}");
        }
    }

    /// The terms as PEFT adds them: 3 and 4 terms both end at Q³.
    #[test]
    fn the_series_coefficients_are_peft_s() {
        assert_eq!(Cayley::coefficients(1), Vec::<f32>::new());
        assert_eq!(Cayley::coefficients(2), vec![2.0]);
        assert_eq!(Cayley::coefficients(3), vec![2.0, 2.0, 1.0]);
        assert_eq!(Cayley::coefficients(4), vec![2.0, 2.0, 1.0]);
        assert_eq!(Cayley::coefficients(5), vec![2.0, 2.0, 2.0, 1.0]);
    }

    /// The triangle's gradient against central differences of `⟨G, R(v)⟩`, for both transforms.
    #[test]
    fn rotation_backward_matches_finite_differences() {
        let b = 5;
        let v = triangle(b, 3);
        let g: Vec<f32> = (0..b * b)
            .map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.5)
            .collect();
        for cayley in [Cayley::Neumann(5), Cayley::Neumann(3), Cayley::Exact] {
            let analytic = rotation_backward(&v, b, cayley, &g);
            for k in 0..v.len() {
                let loss = |v: &[f64]| -> f64 {
                    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                    let r = rotation(&v, b, cayley);
                    r.iter().zip(&g).map(|(r, g)| (r * g) as f64).sum()
                };
                let mut v64: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                let h = 1e-3;
                v64[k] += h;
                let up = loss(&v64);
                v64[k] -= 2.0 * h;
                let down = loss(&v64);
                let numeric = (up - down) / (2.0 * h);
                let err = (analytic[k] as f64 - numeric).abs();
                assert!(
                    err < 2e-3,
                    "{cayley:?} v[{k}]: {} vs {numeric}",
                    analytic[k]
                );
            }
        }
    }

    /// Rotating and its backward agree with the dense block-diagonal product, shared or not.
    #[test]
    fn rotate_is_the_block_diagonal_product() {
        let (b, blocks, n) = (3, 2, 4);
        let x: Vec<f32> = (0..n * b * blocks)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        for stored in [blocks, 1] {
            let v: Vec<f32> = (0..stored)
                .flat_map(|s| triangle(b, s as u32 + 1))
                .collect();
            let r = rotations(&v, b, Cayley::Exact);
            let y = rotate(&x, &r, b, blocks);
            let width = b * blocks;
            for t in 0..n {
                for i in 0..blocks {
                    let rb = block(&r, b, i);
                    for c in 0..b {
                        let want: f32 = (0..b)
                            .map(|k| x[t * width + i * b + k] * rb[k * b + c])
                            .sum();
                        assert!((y[t * width + i * b + c] - want).abs() < 1e-5);
                    }
                }
            }
            let dy: Vec<f32> = (0..x.len()).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut dx = vec![0.0; x.len()];
            let dr = rotate_backward(&x, &dy, &r, b, blocks, &mut dx);
            // ⟨dy, x·R⟩ is linear in both: its gradient in x is dy·Rᵀ, in R_i Σ_t x_iᵀ dy_i.
            let mut want_dr = vec![0.0f32; r.len()];
            for t in 0..n {
                for i in 0..blocks {
                    let at = (i % stored) * b * b;
                    for k in 0..b {
                        for c in 0..b {
                            want_dr[at + k * b + c] +=
                                x[t * width + i * b + k] * dy[t * width + i * b + c];
                        }
                    }
                }
            }
            for (a, w) in dr.iter().zip(&want_dr) {
                assert!((a - w).abs() < 1e-4);
            }
            let back = rotate(&dy, &transposed(&r, b), b, blocks);
            for (a, w) in dx.iter().zip(&back) {
                assert!((a - w).abs() < 1e-5);
            }
        }
    }

    /// COFT shrinks a block outside its ball onto the sphere and leaves one inside alone.
    #[test]
    fn projection_keeps_blocks_in_the_ball() {
        let b = 4;
        let large = triangle(b, 1).iter().map(|x| x * 10.0).collect();
        let mut v = [large, vec![1e-4; triangle_len(b)]].concat();
        let small = v[triangle_len(b)..].to_vec();
        project(&mut v, b, 0.5);
        let radius = 0.5 / 2f64.sqrt();
        let norm = (2.0
            * v[..triangle_len(b)]
                .iter()
                .map(|&x| (x as f64).powi(2))
                .sum::<f64>())
        .sqrt();
        assert!(
            (norm - radius).abs() < 1e-6,
            "projected onto the sphere: {norm}"
        );
        assert_eq!(&v[triangle_len(b)..], &small[..]);
    }
}
