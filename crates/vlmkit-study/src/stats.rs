//! Means and 95% confidence intervals over seeds (Student's t).

use serde::{Deserialize, Serialize};

/// Two-sided 95% quantiles `t_{0.975, df}` of Student's t for df = 1..=30
/// (index `df - 1`), to four decimals.
const T_975: [f64; 30] = [
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
    2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687,
    2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
];

/// The standard normal's 0.975 quantile.
const Z_975: f64 = 1.959_963_984_540_054;

/// `t_{0.975, df}`: the factor that turns a standard error into the half-width of
/// a two-sided 95% confidence interval with `df` degrees of freedom.
///
/// A table for df ≤ 30; beyond, the Cornish–Fisher expansion of the t quantile
/// around the normal one (its error is below 1e-5 there). `df = 0` has no
/// interval: NaN.
pub fn t_975(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T_975[df - 1],
        _ => {
            let z = Z_975;
            let v = df as f64;
            let z2 = z * z;
            let g1 = (z2 + 1.0) * z / 4.0;
            let g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0;
            let g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0;
            let g4 =
                ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0;
            z + g1 / v + g2 / (v * v) + g3 / (v * v * v) + g4 / (v * v * v * v)
        }
    }
}

/// A mean over seeds with its 95% confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    /// Half-width of the 95% interval, `t_{0.975, n-1} · s / √n` with `s` the
    /// sample standard deviation; `None` for a single value.
    pub ci95: Option<f64>,
    pub n: usize,
    /// The values averaged, in seed order.
    pub values: Vec<f64>,
}

impl Estimate {
    /// The mean and interval of `values` (`None` when there are none).
    pub fn of(values: &[f64]) -> Option<Estimate> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let ci95 = (n > 1).then(|| {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t_975(n - 1) * (var / n as f64).sqrt()
        });
        Some(Estimate {
            mean,
            ci95,
            n,
            values: values.to_vec(),
        })
    }

    /// The interval's bounds (the mean twice for a single value).
    pub fn bounds(&self) -> (f64, f64) {
        let h = self.ci95.unwrap_or(0.0);
        (self.mean - h, self.mean + h)
    }
}

pub use vlmkit_train::bench::median;

#[cfg(test)]
mod tests {
    use super::*;

    /// Student's t density with `df` degrees of freedom (integer df: the gamma
    /// ratio by its two-step recurrence).
    fn t_density(x: f64, df: usize) -> f64 {
        let pi = std::f64::consts::PI;
        // Γ((ν+1)/2) / Γ(ν/2): 1/√π at ν = 1, √π/2 at ν = 2, × (ν+1)/ν per step of 2.
        let mut ratio = if df % 2 == 1 {
            1.0 / pi.sqrt()
        } else {
            pi.sqrt() / 2.0
        };
        let mut v = if df % 2 == 1 { 1 } else { 2 };
        while v < df {
            ratio *= (v + 1) as f64 / v as f64;
            v += 2;
        }
        let nu = df as f64;
        ratio / (nu * pi).sqrt() * (1.0 + x * x / nu).powf(-(nu + 1.0) / 2.0)
    }

    /// P(T ≤ x) for x ≥ 0 by Simpson's rule.
    fn t_cdf(x: f64, df: usize) -> f64 {
        let n = 20_000;
        let h = x / n as f64;
        let mut sum = t_density(0.0, df) + t_density(x, df);
        for i in 1..n {
            let w = if i % 2 == 1 { 4.0 } else { 2.0 };
            sum += w * t_density(i as f64 * h, df);
        }
        0.5 + sum * h / 3.0
    }

    #[test]
    fn t_quantiles_match_published_values() {
        for (df, expected) in [
            (1, 12.706),
            (2, 4.303),
            (3, 3.182),
            (4, 2.776),
            (5, 2.571),
            (9, 2.262),
            (10, 2.228),
            (20, 2.086),
            (29, 2.045),
            (30, 2.042),
            (40, 2.021),
            (60, 2.000),
            (120, 1.980),
        ] {
            assert!(
                (t_975(df) - expected).abs() < 6e-4,
                "df {df}: {} vs {expected}",
                t_975(df)
            );
        }
        assert!((t_975(1_000_000) - 1.95996).abs() < 1e-5);
        assert!(t_975(0).is_nan());
    }

    #[test]
    fn every_t_quantile_puts_97_5_percent_below_it() {
        for df in 1..=200 {
            let p = t_cdf(t_975(df), df);
            assert!((p - 0.975).abs() < 2e-5, "df {df}: P(T ≤ t) = {p}");
        }
        // Decreasing towards the normal value, including across the table's end.
        for df in 1..300 {
            assert!(
                t_975(df) > t_975(df + 1) && t_975(df + 1) > Z_975,
                "df {df}"
            );
        }
    }

    #[test]
    fn estimates() {
        let e = Estimate::of(&[0.5, 0.7]).unwrap();
        assert!((e.mean - 0.6).abs() < 1e-12);
        // s = 0.1414…, s/√2 = 0.1, × 12.7062.
        assert!((e.ci95.unwrap() - 1.27062).abs() < 1e-9);
        let e = Estimate::of(&[1.0, 2.0, 3.0]).unwrap();
        // s = 1, s/√3, × 4.3027.
        assert!((e.ci95.unwrap() - 4.3027 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(e.bounds().0, 2.0 - e.ci95.unwrap());
        let single = Estimate::of(&[0.25]).unwrap();
        assert_eq!((single.mean, single.ci95, single.n), (0.25, None, 1));
        assert_eq!(Estimate::of(&[]), None);
        let same = Estimate::of(&[0.4, 0.4, 0.4]).unwrap();
        assert!(same.ci95.unwrap() < 1e-12);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
