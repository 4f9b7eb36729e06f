//! The attention metrics of `shared/spec/analysis.md`, on plain f64 maps: what
//! `vlmkit analyze` reports, defined once so that every connector's maps are
//! measured alike.
//!
//! Conventions (the spec's): natural logarithms, `0 · log 0 = 0`, population
//! standard deviations; a map is a probability distribution over the `h × w`
//! patches in row-major order. A metric that needs pairs or steps of layers
//! is `None` with a single layer, never 0.

/// Kullback–Leibler divergence `KL(p‖q)` (terms with `p = 0` are 0).
fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(pi, _)| **pi > 0.0)
        .map(|(pi, qi)| pi * (pi / qi).ln())
        .sum()
}

/// Jensen–Shannon divergence: `½ KL(p‖m) + ½ KL(q‖m)`, `m = (p + q) / 2`;
/// 0 for equal maps, `ln 2` for maps on disjoint patches.
pub fn js(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(p.len(), q.len(), "maps over different patch counts");
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| 0.5 * (a + b)).collect();
    0.5 * kl(p, &m) + 0.5 * kl(q, &m)
}

/// Cosine similarity of two maps (0 when either is all zero).
pub fn cosine(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(p.len(), q.len(), "maps over different patch counts");
    let dot: f64 = p.iter().zip(q).map(|(a, b)| a * b).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let denominator = norm(p) * norm(q);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}

/// `softmax` in f64, shifted by the maximum.
pub fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The map's centroid `Σ_p p(p) u_p` with patch coordinates
/// `u_p = ((col + 0.5) / w, (row + 0.5) / h)`, both in [0, 1].
pub fn centroid(map: &[f64], grid: (usize, usize)) -> (f64, f64) {
    let (h, w) = grid;
    assert_eq!(
        map.len(),
        h * w,
        "a map of {} patches on a {h}×{w} grid",
        map.len()
    );
    let mut c = (0.0, 0.0);
    for (index, p) in map.iter().enumerate() {
        let (row, col) = (index / w, index % w);
        c.0 += p * (col as f64 + 0.5) / w as f64;
        c.1 += p * (row as f64 + 0.5) / h as f64;
    }
    c
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Total variation of layer weights over depth: `(1/(L−1)) Σ_l |w_{l+1} − w_l|`.
pub fn total_variation(weights: &[f64]) -> Option<f64> {
    mean(weights.windows(2).map(|w| (w[1] - w[0]).abs()))
}

/// Entropy `H(w) = −Σ_l w_l ln w_l` (`ln L` for uniform weights).
pub fn entropy(weights: &[f64]) -> f64 {
    -weights
        .iter()
        .filter(|w| **w > 0.0)
        .map(|w| w * w.ln())
        .sum::<f64>()
}

/// CCRA's consistency metrics (paper Table 2) of one feature stack.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Consistency {
    /// Mean JS over the pairs of layers' maps.
    pub js_avg: Option<f64>,
    /// Mean cosine over the same pairs.
    pub cos_avg: Option<f64>,
    /// Mean distance between consecutive layers' centroids.
    pub drift: Option<f64>,
    /// `(1/N) Σ_p std_l(p_l(p))`.
    pub std_patch: f64,
    /// `(1/L) Σ_l JS(p_l, p*)`.
    pub js_to_final: f64,
    /// `(1/L) Σ_l cosine(p_l, p*)`.
    pub cos_to_final: f64,
    /// Total variation of the layer weights over depth.
    pub tv_w: Option<f64>,
    /// Entropy of the layer weights.
    pub entropy_w: f64,
}

impl Consistency {
    /// The metrics of per-layer patch maps `layers` (each a distribution over
    /// the `grid`'s patches) against the final map, with the layer weights.
    pub fn of(
        layers: &[Vec<f64>],
        final_map: &[f64],
        weights: &[f64],
        grid: (usize, usize),
    ) -> Self {
        assert!(!layers.is_empty(), "no layers");
        let pairs: Vec<(usize, usize)> = (0..layers.len())
            .flat_map(|l| (l + 1..layers.len()).map(move |k| (l, k)))
            .collect();
        let centroids: Vec<(f64, f64)> = layers.iter().map(|m| centroid(m, grid)).collect();
        let n = final_map.len();
        let std_patch = (0..n)
            .map(|p| {
                let values: Vec<f64> = layers.iter().map(|m| m[p]).collect();
                let mean = values.iter().sum::<f64>() / values.len() as f64;
                (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64)
                    .sqrt()
            })
            .sum::<f64>()
            / n as f64;
        Consistency {
            js_avg: mean(pairs.iter().map(|&(l, k)| js(&layers[l], &layers[k]))),
            cos_avg: mean(pairs.iter().map(|&(l, k)| cosine(&layers[l], &layers[k]))),
            drift: mean(
                centroids
                    .windows(2)
                    .map(|c| ((c[1].0 - c[0].0).powi(2) + (c[1].1 - c[0].1).powi(2)).sqrt()),
            ),
            std_patch,
            js_to_final: mean(layers.iter().map(|m| js(m, final_map))).expect("layers"),
            cos_to_final: mean(layers.iter().map(|m| cosine(m, final_map))).expect("layers"),
            tv_w: total_variation(weights),
            entropy_w: entropy(weights),
        }
    }
}

/// How much of a text→patch map falls on the region a question is about.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Grounding {
    /// `Σ_p a_p m_p / Σ_p a_p`.
    pub mass_in_region: f64,
    /// 1 when the arg-max patch has `m_p ≥ 0.5` (the pointing game), else 0.
    pub pointing: f64,
    /// `Σ_p m_p / N`: what uniform attention scores for `mass_in_region`.
    pub region_share: f64,
}

impl Grounding {
    /// `map` (any non-negative weights over N patches) against `mask`, the
    /// region's coverage of each patch in [0, 1] (the mask downsampled by area).
    pub fn of(map: &[f64], mask: &[f64]) -> Self {
        assert_eq!(
            map.len(),
            mask.len(),
            "a map and a mask over different patch counts"
        );
        let total: f64 = map.iter().sum();
        let inside: f64 = map.iter().zip(mask).map(|(a, m)| a * m).sum();
        let argmax = map
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, &a)| {
                if a > best.1 {
                    (i, a)
                } else {
                    best
                }
            })
            .0;
        Grounding {
            mass_in_region: if total > 0.0 { inside / total } else { 0.0 },
            pointing: if mask[argmax] >= 0.5 { 1.0 } else { 0.0 },
            region_share: mask.iter().sum::<f64>() / mask.len() as f64,
        }
    }
}

/// The AUROC of `matched` over `mismatched` similarities: the chance that a
/// matched pair scores above a mismatched one, ties counting half (0.5:
/// indistinguishable). `None` when either side is empty.
pub fn auroc(matched: &[f64], mismatched: &[f64]) -> Option<f64> {
    if matched.is_empty() || mismatched.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for m in matched {
        for x in mismatched {
            wins += if m > x {
                1.0
            } else if m == x {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (matched.len() * mismatched.len()) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LN2: f64 = std::f64::consts::LN_2;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn one_hot(n: usize, at: usize) -> Vec<f64> {
        (0..n).map(|i| if i == at { 1.0 } else { 0.0 }).collect()
    }

    #[test]
    fn identical_layers_are_perfectly_consistent() {
        let map = vec![0.1, 0.2, 0.3, 0.4];
        let layers = vec![map.clone(); 3];
        let c = Consistency::of(&layers, &map, &[1.0 / 3.0; 3], (2, 2));
        assert!(close(c.js_avg.unwrap(), 0.0));
        assert!(close(c.cos_avg.unwrap(), 1.0));
        assert!(close(c.drift.unwrap(), 0.0));
        assert!(close(c.std_patch, 0.0));
        assert!(close(c.js_to_final, 0.0));
        assert!(close(c.cos_to_final, 1.0));
        // Uniform weights: no variation, the largest entropy.
        assert!(close(c.tv_w.unwrap(), 0.0));
        assert!(close(c.entropy_w, 3f64.ln()));
    }

    #[test]
    fn maps_on_disjoint_patches_by_hand() {
        // Layer 0 on patch (row 0, col 0), layer 1 on patch (row 1, col 1) of a 2×2 grid.
        let layers = vec![one_hot(4, 0), one_hot(4, 3)];
        let final_map = one_hot(4, 3);
        let c = Consistency::of(&layers, &final_map, &[1.0, 0.0], (2, 2));
        assert!(close(c.js_avg.unwrap(), LN2));
        assert!(close(c.cos_avg.unwrap(), 0.0));
        // Centroids (0.25, 0.25) and (0.75, 0.75): √(0.5² + 0.5²).
        assert!(close(c.drift.unwrap(), 0.5f64.sqrt()));
        // Patches 0 and 3 take 1 and 0 over the two layers (std 0.5), the others 0.
        assert!(close(c.std_patch, (0.5 + 0.5) / 4.0));
        assert!(close(c.js_to_final, LN2 / 2.0));
        assert!(close(c.cos_to_final, 0.5));
        assert!(close(c.tv_w.unwrap(), 1.0));
        assert!(close(c.entropy_w, 0.0));
    }

    #[test]
    fn one_layer_has_no_pairs_or_steps() {
        let c = Consistency::of(&[vec![0.5, 0.5]], &[0.5, 0.5], &[1.0], (1, 2));
        assert_eq!(
            (c.js_avg, c.cos_avg, c.drift, c.tv_w),
            (None, None, None, None)
        );
        assert!(close(c.std_patch, 0.0));
    }

    #[test]
    fn js_is_symmetric_and_bounded() {
        let p = softmax(&[1.0, 2.0, 0.5]);
        let q = softmax(&[0.0, -1.0, 3.0]);
        assert!(close(js(&p, &q), js(&q, &p)));
        assert!(js(&p, &q) > 0.0 && js(&p, &q) < LN2);
        assert!(close(softmax(&[1000.0, 1000.0]).iter().sum(), 1.0));
    }

    #[test]
    fn grounding_by_hand() {
        let mask = vec![0.0, 1.0, 0.5, 0.0];
        // All of the map on a patch inside the region.
        let g = Grounding::of(&one_hot(4, 1), &mask);
        assert_eq!((g.mass_in_region, g.pointing), (1.0, 1.0));
        assert!(close(g.region_share, 1.5 / 4.0));
        // Uniform attention scores the region's share; its arg-max is patch 0, outside.
        let g = Grounding::of(&[0.25; 4], &mask);
        assert!(close(g.mass_in_region, g.region_share));
        assert_eq!(g.pointing, 0.0);
        // Unnormalised maps are normalised; a half-covered arg-max patch points.
        let g = Grounding::of(&[0.0, 0.0, 4.0, 0.0], &mask);
        assert!(close(g.mass_in_region, 0.5));
        assert_eq!(g.pointing, 1.0);
    }

    #[test]
    fn auroc_by_hand() {
        assert_eq!(auroc(&[0.9, 0.8], &[0.1, 0.2]), Some(1.0));
        assert_eq!(auroc(&[0.1], &[0.9]), Some(0.0));
        assert_eq!(auroc(&[0.5, 0.5], &[0.5]), Some(0.5));
        assert_eq!(auroc(&[0.3, 0.7], &[0.5]), Some(0.5));
        assert_eq!(auroc(&[], &[0.5]), None);
    }
}
