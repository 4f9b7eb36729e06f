//! The mask-guided grounding loss: how well a text→patch attention map covers the
//! region a query refers to (AGE-VLM's Dice alignment, usable with any connector
//! that exposes such a map).

use candle_core::{bail, Result, Tensor, D};

/// The Dice smoothing term ε of `shared/spec/connectors.md` § age.
pub const DICE_EPS: f64 = 1.0;

/// Mean Dice loss between attention maps and region masks.
///
/// `maps` is `B×N` or `B×K×N` (K maps per sample, e.g. one per cross-attention
/// block), non-negative; `regions` is `B×N` in [0, 1] (the mask area-averaged on
/// the map's token grid); `present[b]` says whether sample `b` has a mask. Each
/// map is scaled to a peak of one, `â = a / max(a)`, then
/// `Dice = 1 − (2 Σ â·m + ε) / (Σ â + Σ m + ε)`; the result is the mean over the
/// maps of the samples that have a mask. `None` when no sample has one: those
/// contribute nothing, and there is nothing to average.
///
/// A composition of candle ops whose backwards are sound (products, sums, the
/// max's subgradient, `index_select`), so it trains on any device.
pub fn dice_loss(maps: &Tensor, regions: &Tensor, present: &[bool]) -> Result<Option<Tensor>> {
    let maps = match maps.rank() {
        2 => maps.unsqueeze(1)?,
        3 => maps.clone(),
        _ => bail!(
            "dice_loss: maps must be B×N or B×K×N, got shape {:?}",
            maps.dims()
        ),
    };
    let (b, _k, n) = maps.dims3()?;
    if regions.dims() != [b, n] {
        bail!(
            "dice_loss: regions of shape {:?} do not match maps of shape {:?} (expected [{b}, {n}])",
            regions.dims(),
            maps.dims()
        );
    }
    if present.len() != b {
        bail!("dice_loss: {} mask flags for a batch of {b}", present.len());
    }
    let rows: Vec<u32> = (0..b as u32).filter(|&i| present[i as usize]).collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let index = Tensor::from_vec(rows.clone(), rows.len(), maps.device())?;
    let a = maps.index_select(&index, 0)?;
    let m = regions
        .to_dtype(a.dtype())?
        .index_select(&index, 0)?
        .unsqueeze(1)?;
    let peak = a.max_keepdim(D::Minus1)?.clamp(1e-12, f64::INFINITY)?;
    let scaled = a.broadcast_div(&peak)?;
    let overlap = scaled.broadcast_mul(&m)?.sum(D::Minus1)?;
    let sizes = (scaled.sum(D::Minus1)? + m.sum(D::Minus1)?.broadcast_as(overlap.shape())?)?;
    let ratio = ((overlap * 2.0)? + DICE_EPS)?.div(&(sizes + DICE_EPS)?)?;
    let dice = ratio.affine(-1.0, 1.0)?;
    Ok(Some(dice.mean_all()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, randn_var, GradCheck};
    use candle_core::{DType, Device};

    fn dice_by_hand(a: &[f64], m: &[f64]) -> f64 {
        let peak = a.iter().copied().fold(f64::MIN, f64::max);
        let s: Vec<f64> = a.iter().map(|x| x / peak).collect();
        let overlap: f64 = s.iter().zip(m).map(|(x, y)| x * y).sum();
        1.0 - (2.0 * overlap + 1.0) / (s.iter().sum::<f64>() + m.iter().sum::<f64>() + 1.0)
    }

    #[test]
    fn matches_the_formula_and_skips_samples_without_a_mask() {
        let a = [
            [0.1, 0.6, 0.3, 0.0],
            [0.25, 0.25, 0.25, 0.25],
            [0.9, 0.05, 0.05, 0.0],
        ];
        let m = [
            [0.0, 1.0, 0.5, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ];
        let maps = Tensor::new(&a, &Device::Cpu).unwrap();
        let regions = Tensor::new(&m, &Device::Cpu).unwrap();
        let got = dice_loss(&maps, &regions, &[true, false, true])
            .unwrap()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let expected = (dice_by_hand(&a[0], &m[0]) + dice_by_hand(&a[2], &m[2])) / 2.0;
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        assert!(dice_loss(&maps, &regions, &[false; 3]).unwrap().is_none());
        // A map that peaks exactly on the region scores better than one that does not.
        let on = Tensor::new(&[[0.0, 1.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let off = Tensor::new(&[[1.0, 0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let region = Tensor::new(&[[0.0, 1.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let score = |t: &Tensor| {
            dice_loss(t, &region, &[true])
                .unwrap()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert_eq!(score(&on), 0.0);
        assert!(score(&off) > 0.6);
        // Disjoint halves of a large grid: 1 − 1/(Σâ + Σm + ε), within 0.005 of one.
        let n = 200;
        let half: Vec<f64> = (0..n).map(|i| f64::from(u8::from(i < n / 2))).collect();
        let other: Vec<f64> = half.iter().map(|v| 1.0 - v).collect();
        let a = Tensor::from_vec(half, (1, n), &Device::Cpu).unwrap();
        let m = Tensor::from_vec(other, (1, n), &Device::Cpu).unwrap();
        let disjoint = dice_loss(&a, &m, &[true]).unwrap().unwrap();
        let disjoint = disjoint.to_scalar::<f64>().unwrap();
        assert!((disjoint - (1.0 - 1.0 / 201.0)).abs() < 1e-12, "{disjoint}");
    }

    #[test]
    fn several_maps_per_sample_are_averaged() {
        let a = [[[0.1, 0.9], [0.7, 0.3]]];
        let m = [[0.0, 1.0]];
        let maps = Tensor::new(&a, &Device::Cpu).unwrap();
        let regions = Tensor::new(&m, &Device::Cpu).unwrap();
        let got = dice_loss(&maps, &regions, &[true]).unwrap().unwrap();
        let expected = (dice_by_hand(&a[0][0], &m[0]) + dice_by_hand(&a[0][1], &m[0])) / 2.0;
        assert!((got.to_scalar::<f64>().unwrap() - expected).abs() < 1e-12);
    }

    #[test]
    fn shapes_that_do_not_fit_are_named() {
        let maps = Tensor::zeros((2, 3, 5), DType::F32, &Device::Cpu).unwrap();
        let regions = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let err = dice_loss(&maps, &regions, &[true, true])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[2, 4]") && err.contains("[2, 3, 5]"), "{err}");
        let regions = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        let err = dice_loss(&maps, &regions, &[true]).unwrap_err().to_string();
        assert!(err.contains("1 mask flags for a batch of 2"), "{err}");
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Positive maps (as attention is): softmax of random logits.
        let logits = randn_var(&[3, 2, 6], 1.0, 11).unwrap();
        let regions = Tensor::new(
            &[
                [0.0, 0.5, 1.0, 0.0, 0.0, 0.25],
                [1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                [0.0, 0.0, 0.0, 0.3, 0.9, 0.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let loss = || {
            let maps = crate::ops::softmax_last_dim(logits.as_tensor())?;
            Ok(dice_loss(&maps, &regions, &[true, false, true])?.expect("two samples have masks"))
        };
        check_gradients(&[("logits", &logits)], loss, &GradCheck::default()).unwrap();
    }
}
