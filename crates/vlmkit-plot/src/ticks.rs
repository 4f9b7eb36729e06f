//! "Nice" axis ticks: steps of 1, 2 or 5 times a power of ten.

/// An axis range with its tick positions and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticks {
    /// Lower end of the axis (a tick value, so the axis starts on a labelled tick).
    pub min: f64,
    /// Upper end of the axis.
    pub max: f64,
    pub values: Vec<f64>,
    pub labels: Vec<String>,
    /// Whether the axis is logarithmic (then `min > 0`).
    pub log: bool,
}

impl Ticks {
    /// Linear ticks covering `[min, max]` with about `target_count` ticks. Non-finite
    /// bounds fall back to `[0, 1]`; an empty range is widened around its value.
    pub fn linear(min: f64, max: f64, target_count: usize) -> Ticks {
        let (mut lo, mut hi) = if min.is_finite() && max.is_finite() {
            (min.min(max), min.max(max))
        } else {
            (0.0, 1.0)
        };
        let magnitude = lo.abs().max(hi.abs());
        if hi - lo <= magnitude * 1e-12 {
            let pad = if magnitude > 0.0 {
                magnitude * 0.1
            } else {
                1.0
            };
            lo -= pad;
            hi += pad;
        }
        let intervals = target_count.max(2) - 1;
        // Dividing each bound first keeps the step finite even for ranges near f64::MAX.
        let step = nice_step(hi / intervals as f64 - lo / intervals as f64);
        // The small epsilon keeps values that are multiples of the step up to
        // rounding (e.g. 0.3 / 0.1) from gaining an extra tick.
        let first = (lo / step + 1e-9).floor() as i64;
        let last = (hi / step - 1e-9).ceil() as i64;
        let last = last.min(first.saturating_add(2 * intervals as i64 + 2));
        let values: Vec<f64> = (first..=last)
            .map(|i| {
                let value = i as f64 * step;
                if value.abs() < step * 1e-6 {
                    0.0
                } else {
                    value
                }
            })
            // Near f64::MAX the outermost multiples of the step overflow to infinity.
            .filter(|v: &f64| v.is_finite())
            .collect();
        let labels = values.iter().map(|&v| format_linear(v, step)).collect();
        Ticks {
            min: (first as f64 * step).max(-f64::MAX),
            max: (last as f64 * step).min(f64::MAX),
            values,
            labels,
            log: false,
        }
    }

    /// Logarithmic ticks covering `[min, max]` (both must be positive; otherwise the
    /// axis falls back to `[1, 10]`). Ticks sit on powers of ten when the range spans
    /// at least two decades, and on 1-2-5 multiples otherwise.
    pub fn log(min: f64, max: f64) -> Ticks {
        let (mut lo, mut hi) = if min > 0.0 && max > 0.0 && min.is_finite() && max.is_finite() {
            (min.min(max), min.max(max))
        } else {
            (1.0, 10.0)
        };
        let candidates = log_candidates(lo, hi);
        let below = candidates.iter().rev().find(|&&c| c <= lo * (1.0 + 1e-9));
        let above = candidates.iter().find(|&&c| c >= hi * (1.0 - 1e-9));
        let (mut axis_lo, mut axis_hi) = (*below.unwrap_or(&lo), *above.unwrap_or(&hi));
        if axis_lo >= axis_hi {
            // A single value: show the neighbouring 1-2-5 steps around it.
            lo = axis_lo / 2.5;
            hi = axis_hi * 2.5;
            let wider = log_candidates(lo, hi);
            axis_lo = *wider.iter().rev().find(|&&c| c < axis_lo).unwrap_or(&lo);
            axis_hi = *wider.iter().find(|&&c| c > axis_hi).unwrap_or(&hi);
        }
        let in_range = |c: &&f64| **c >= axis_lo * (1.0 - 1e-9) && **c <= axis_hi * (1.0 + 1e-9);
        let all: Vec<f64> = log_candidates(axis_lo, axis_hi)
            .iter()
            .filter(in_range)
            .copied()
            .collect();
        let powers: Vec<f64> = all
            .iter()
            .copied()
            .filter(|&c| is_power_of_ten(c))
            .collect();
        let values = if powers.len() >= 3 { powers } else { all };
        let labels = values.iter().map(|&v| format_log(v)).collect();
        Ticks {
            min: axis_lo,
            max: axis_hi,
            values,
            labels,
            log: true,
        }
    }

    /// Position of `value` along the axis: 0 at `min`, 1 at `max` (not clamped).
    pub fn fraction(&self, value: f64) -> f64 {
        if self.log {
            (value.ln() - self.min.ln()) / (self.max.ln() - self.min.ln())
        } else {
            (value - self.min) / (self.max - self.min)
        }
    }
}

/// The smallest step of the form {1, 2, 5} × 10^k that is at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let exponent = raw.log10().floor();
    let power = 10f64.powf(exponent);
    let fraction = raw / power;
    // Tolerance so that e.g. 0.2 (stored as 0.2000000001) is not bumped to 0.5.
    let nice = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|&m| fraction <= m * (1.0 + 1e-9))
        .unwrap_or(10.0);
    nice * power
}

/// Every value {1, 2, 5} × 10^k from the decade below `lo` to the decade above `hi`.
fn log_candidates(lo: f64, hi: f64) -> Vec<f64> {
    let first = lo.log10().floor() as i32 - 1;
    let last = hi.log10().ceil() as i32 + 1;
    (first..=last)
        .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)))
        .collect()
}

fn is_power_of_ten(value: f64) -> bool {
    let exponent = value.log10();
    (exponent - exponent.round()).abs() < 1e-9
}

/// Formats a linear tick with just enough decimals for its step.
fn format_linear(value: f64, step: f64) -> String {
    let step_exponent = (step.log10() + 1e-9).floor() as i32;
    let largest = value.abs();
    if step < 1e-4 || largest >= 1e6 {
        if value == 0.0 {
            return "0".to_owned();
        }
        let value_exponent = (largest.log10() + 1e-9).floor() as i32;
        let mantissa_decimals = (value_exponent - step_exponent).clamp(0, 16) as usize;
        return format!("{value:.mantissa_decimals$e}");
    }
    let decimals = (-step_exponent).max(0) as usize;
    format!("{value:.decimals$}")
}

/// Formats a log tick (a 1-2-5 multiple of a power of ten).
fn format_log(value: f64) -> String {
    let exponent = (value.log10() + 1e-9).floor() as i32;
    if !(-4..=5).contains(&exponent) {
        let mantissa = (value / 10f64.powi(exponent)).round();
        return format!("{mantissa}e{exponent}");
    }
    let decimals = (-exponent).max(0) as usize;
    format!("{value:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
        for (a, e) in actual.iter().zip(expected) {
            assert!(
                (a - e).abs() <= 1e-9 * e.abs().max(1.0),
                "{actual:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn nice_step_rounds_up_to_one_two_five() {
        assert_eq!(nice_step(0.9), 1.0);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.2), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(0.2), 0.2);
        assert!((nice_step(0.03) - 0.05).abs() < 1e-15);
        assert_eq!(nice_step(1800.0), 2000.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(nice_step(f64::NAN), 1.0);
    }

    #[test]
    fn linear_ticks_cover_the_range_with_nice_values() {
        let ticks = Ticks::linear(0.13, 0.92, 6);
        assert_close(&ticks.values, &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(ticks.labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert!(ticks.min <= 0.13 && ticks.max >= 0.92);

        let ticks = Ticks::linear(0.0, 1000.0, 5);
        assert_close(&ticks.values, &[0.0, 500.0, 1000.0]);
        assert_eq!(ticks.labels, ["0", "500", "1000"]);

        let ticks = Ticks::linear(-3.0, 7.0, 6);
        assert_close(&ticks.values, &[-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(ticks.labels[2], "0", "no negative zero");
    }

    #[test]
    fn linear_ticks_keep_exact_multiples_as_endpoints() {
        let ticks = Ticks::linear(0.1, 0.3, 3);
        assert_close(&ticks.values, &[0.1, 0.2, 0.3]);
    }

    #[test]
    fn degenerate_linear_ranges_are_widened() {
        let ticks = Ticks::linear(5.0, 5.0, 5);
        assert!(ticks.min < 5.0 && ticks.max > 5.0);
        let ticks = Ticks::linear(0.0, 0.0, 5);
        assert!(ticks.min < 0.0 && ticks.max > 0.0);
        let ticks = Ticks::linear(f64::NAN, f64::INFINITY, 5);
        assert_eq!((ticks.min, ticks.max), (0.0, 1.0));
        let swapped = Ticks::linear(10.0, 0.0, 3);
        assert_eq!((swapped.min, swapped.max), (0.0, 10.0));
    }

    #[test]
    fn extreme_ranges_stay_bounded() {
        let ticks = Ticks::linear(-f64::MAX, f64::MAX, 5);
        assert!(ticks.values.len() <= 12, "{:?}", ticks.values);
        assert!(ticks.min < 0.0 && ticks.max > 0.0);
        let ticks = Ticks::linear(0.0, 1e-300, 5);
        assert!(ticks.values.len() <= 12 && ticks.max >= 1e-300);
    }

    #[test]
    fn tiny_and_huge_values_use_scientific_labels() {
        let ticks = Ticks::linear(0.0, 3e-5, 4);
        assert_eq!(ticks.labels.last().unwrap(), "3e-5");
        let ticks = Ticks::linear(0.0, 4e6, 3);
        assert_eq!(ticks.labels, ["0", "2e6", "4e6"]);
    }

    #[test]
    fn log_ticks_use_decades_for_wide_ranges() {
        let ticks = Ticks::log(0.003, 40.0);
        assert_close(&ticks.values, &[0.01, 0.1, 1.0, 10.0]);
        assert_eq!(ticks.labels, ["0.01", "0.1", "1", "10"]);
        assert!((ticks.min - 0.002).abs() < 1e-12 && (ticks.max - 50.0).abs() < 1e-9);
        assert!(ticks.fraction(ticks.min).abs() < 1e-12);
        assert!((ticks.fraction(ticks.max) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn log_ticks_use_one_two_five_for_narrow_ranges() {
        let ticks = Ticks::log(2.3, 4.1);
        assert_close(&ticks.values, &[2.0, 5.0]);
        let ticks = Ticks::log(0.3, 3.0);
        assert_close(&ticks.values, &[0.2, 0.5, 1.0, 2.0, 5.0]);
        assert_eq!(ticks.labels, ["0.2", "0.5", "1", "2", "5"]);
    }

    #[test]
    fn log_ticks_handle_single_values_and_bad_input() {
        let ticks = Ticks::log(1.0, 1.0);
        assert!(ticks.min < 1.0 && ticks.max > 1.0);
        assert!(ticks.values.len() >= 2);
        let ticks = Ticks::log(-1.0, 0.0);
        assert_eq!((ticks.min, ticks.max), (1.0, 10.0));
        let ticks = Ticks::log(1e-7, 1e-5);
        assert_eq!(ticks.labels, ["1e-7", "1e-6", "1e-5"]);
    }
}
