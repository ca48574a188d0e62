//! Leak detection by trend: a least-squares line through a window of
//! samples, and the rules that call it a leak. Pure arithmetic, no clock.
//!
//! A series is a leak when, over the window,
//! 1. the fitted line rises by at least the threshold (`leak_threshold_mb`),
//! 2. the line explains most of the variation (R² at least `min_r_squared`),
//!    which a sawtooth, whose memory is freed every cycle, does not, and
//! 3. the later half of the window still rises at half the whole window's
//!    rate or more, so a series that grew and then levelled off (a plateau,
//!    such as a cache filling up to its budget) is not reported, and
//! 4. the growth is spread over the window: at least half of its intervals
//!    rise, each by at least a quarter of the per-interval growth the
//!    threshold implies. A single step (an allocator arena or a buffer
//!    grown once, then flat) fits a rising line well but is not a trend.
//!
//! Severity is the window's growth in multiples of the threshold.

/// How serious a leak is; ordered from least to most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeakSeverity {
    /// Grew by at least 1x the threshold over the window.
    Low,
    /// At least 2x.
    Medium,
    /// At least 5x.
    High,
    /// At least 10x.
    Critical,
}

impl LeakSeverity {
    /// The severity of `growth_bytes` over a window, for a leak threshold of
    /// `threshold_bytes`; `None` below the threshold.
    #[must_use]
    pub fn of_growth(growth_bytes: f64, threshold_bytes: f64) -> Option<Self> {
        debug_assert!(threshold_bytes > 0.0, "the threshold is validated positive");
        let multiple = growth_bytes / threshold_bytes;
        if multiple >= 10.0 {
            Some(Self::Critical)
        } else if multiple >= 5.0 {
            Some(Self::High)
        } else if multiple >= 2.0 {
            Some(Self::Medium)
        } else if multiple >= 1.0 {
            Some(Self::Low)
        } else {
            None
        }
    }
}

/// One sample: seconds since any fixed origin, and a size in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the window's origin.
    pub seconds: f64,
    /// The series' value, in bytes.
    pub bytes: f64,
}

/// A least-squares line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearFit {
    /// The line's slope, in bytes per second.
    pub slope_bytes_per_second: f64,
    /// The share of the variation the line explains, 0 to 1; 1 when the
    /// samples do not vary at all.
    pub r_squared: f64,
}

/// Fits a line through `samples`; `None` with fewer than two samples or
/// when they were all taken at the same time.
#[must_use]
pub fn least_squares(samples: &[Sample]) -> Option<LinearFit> {
    if samples.len() < 2 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // a window holds at most 100,000 samples
    let count = samples.len() as f64;
    let mean_seconds = samples.iter().map(|s| s.seconds).sum::<f64>() / count;
    let mean_bytes = samples.iter().map(|s| s.bytes).sum::<f64>() / count;
    let mut covariance = 0.0;
    let mut seconds_variance = 0.0;
    let mut bytes_variance = 0.0;
    for sample in samples {
        let seconds_offset = sample.seconds - mean_seconds;
        let bytes_offset = sample.bytes - mean_bytes;
        covariance += seconds_offset * bytes_offset;
        seconds_variance += seconds_offset * seconds_offset;
        bytes_variance += bytes_offset * bytes_offset;
    }
    if seconds_variance == 0.0 {
        return None;
    }
    let slope_bytes_per_second = covariance / seconds_variance;
    let r_squared =
        if bytes_variance == 0.0 { 1.0 } else { (covariance * covariance) / (seconds_variance * bytes_variance) };
    Some(LinearFit { slope_bytes_per_second, r_squared })
}

/// What makes a trend a leak; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakCriteria {
    /// Least growth over the window, in bytes.
    pub threshold_bytes: f64,
    /// Least R² of the window's line.
    pub min_r_squared: f64,
}

/// A series found leaking over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakFinding {
    /// How serious it is.
    pub severity: LeakSeverity,
    /// The window's slope, in bytes per second.
    pub slope_bytes_per_second: f64,
    /// The fitted growth across the window, in bytes.
    pub window_growth_bytes: f64,
    /// The seconds the window spans.
    pub window_seconds: f64,
    /// The samples in the window.
    pub window_samples: usize,
    /// The window's R².
    pub r_squared: f64,
}

/// Judges one window of samples, oldest first; `None` when it is not a leak.
#[must_use]
pub fn detect_leak(window: &[Sample], criteria: &LeakCriteria) -> Option<LeakFinding> {
    let (first, last) = (window.first()?, window.last()?);
    let fit = least_squares(window)?;
    let window_seconds = last.seconds - first.seconds;
    let window_growth_bytes = fit.slope_bytes_per_second * window_seconds;
    let severity = LeakSeverity::of_growth(window_growth_bytes, criteria.threshold_bytes)?;
    if fit.r_squared < criteria.min_r_squared {
        return None;
    }
    let later_half = &window[window.len() / 2..];
    let later_fit = least_squares(later_half)?;
    if later_fit.slope_bytes_per_second < fit.slope_bytes_per_second / 2.0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // a window holds at most 100,000 samples
    let least_rise_bytes = criteria.threshold_bytes / (4.0 * (window.len() - 1) as f64);
    let rising_intervals = window.windows(2).filter(|pair| pair[1].bytes - pair[0].bytes >= least_rise_bytes).count();
    if rising_intervals * 2 < window.len() - 1 {
        return None;
    }
    Some(LeakFinding {
        severity,
        slope_bytes_per_second: fit.slope_bytes_per_second,
        window_growth_bytes,
        window_seconds,
        window_samples: window.len(),
        r_squared: fit.r_squared,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    /// One sample per second, values in MiB.
    fn per_second(values_mib: &[f64]) -> Vec<Sample> {
        (0_u32..).zip(values_mib).map(|(second, mib)| Sample { seconds: f64::from(second), bytes: mib * MIB }).collect()
    }

    /// The threshold used by the table: 1 MiB, R² at least 0.8.
    fn criteria() -> LeakCriteria {
        LeakCriteria { threshold_bytes: MIB, min_r_squared: 0.8 }
    }

    fn check(values_mib: &[f64], expected: Option<LeakSeverity>) {
        let found = detect_leak(&per_second(values_mib), &criteria()).map(|finding| finding.severity);
        assert_eq!(found, expected, "{values_mib:?}");
    }

    #[test]
    fn leaks_are_graded_by_growth_over_the_window() {
        // 10 samples span 9 s.
        check(&[0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8], Some(LeakSeverity::Low));
        check(&[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5], Some(LeakSeverity::Medium));
        check(&[0.0, 0.6, 1.2, 1.8, 2.4, 3.0, 3.6, 4.2, 4.8, 5.4], Some(LeakSeverity::High));
        check(&[0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0], Some(LeakSeverity::Critical));
    }

    #[test]
    fn noisy_steady_growth_is_still_a_leak() {
        check(&[10.0, 10.5, 10.6, 11.2, 11.3, 11.9, 12.0, 12.6, 12.7, 13.2], Some(LeakSeverity::Medium));
    }

    #[test]
    fn growth_below_the_threshold_is_not_a_leak() {
        check(&[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], None);
    }

    #[test]
    fn flat_shrinking_and_constant_series_are_not_leaks() {
        check(&[5.0; 10], None);
        check(&[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0], None);
        check(&[5.0, 5.1, 4.9, 5.0, 5.1, 4.9, 5.0, 5.1, 4.9, 5.0], None);
    }

    #[test]
    fn a_sawtooth_is_not_a_leak_wherever_the_window_starts() {
        let cycle = [0.0, 1.0, 2.0, 3.0, 4.0];
        let sawtooth: Vec<f64> = cycle.iter().copied().cycle().take(30).collect();
        for start in 0..sawtooth.len() - 10 {
            check(&sawtooth[start..start + 10], None);
        }
    }

    #[test]
    fn a_plateau_is_not_a_leak_once_the_window_reaches_it() {
        check(&[0.0, 2.0, 4.0, 6.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0], None);
        check(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 6.0, 6.0, 6.0], None);
        check(&[8.0; 10], None);
    }

    #[test]
    fn a_single_step_is_not_a_leak() {
        check(&[23.0, 23.0, 23.0, 23.0, 23.0, 23.0, 24.0, 25.0, 25.0, 25.0], None);
        check(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 3.0], None);
        // A test process's resident KiB while it sawed 0-4 MiB (jemalloc kept
        // the freed pages, then took fresh ones): R² 0.82, later half rising.
        let sawing_kib = [23_072.0, 23_072.0, 23_076.0, 23_076.0, 23_084.0, 23_088.0, 24_132.0, 25_168.0, 25_124.0];
        let window_mib: Vec<f64> = sawing_kib.iter().map(|kib| kib / 1024.0).collect();
        let criteria = LeakCriteria { threshold_bytes: 2.0 * MIB, min_r_squared: 0.8 };
        assert_eq!(detect_leak(&per_second(&window_mib), &criteria), None);
    }

    #[test]
    fn growth_every_other_interval_is_still_a_leak() {
        check(&[0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0], Some(LeakSeverity::High));
    }

    #[test]
    fn the_fit_is_exact_on_a_line_and_undefined_without_spread() {
        let fit = least_squares(&per_second(&[1.0, 2.0, 3.0])).unwrap();
        assert!((fit.slope_bytes_per_second - MIB).abs() < 1e-6);
        assert!((fit.r_squared - 1.0).abs() < 1e-12);
        assert_eq!(least_squares(&per_second(&[1.0])), None);
        assert_eq!(least_squares(&[Sample { seconds: 1.0, bytes: 1.0 }, Sample { seconds: 1.0, bytes: 2.0 }]), None);
        let flat = least_squares(&per_second(&[4.0, 4.0, 4.0])).unwrap();
        assert_eq!(flat, LinearFit { slope_bytes_per_second: 0.0, r_squared: 1.0 });
    }

    #[test]
    fn severity_bands_start_at_their_multiple() {
        let cases = [
            (0.99, None),
            (1.0, Some(LeakSeverity::Low)),
            (2.0, Some(LeakSeverity::Medium)),
            (4.99, Some(LeakSeverity::Medium)),
            (5.0, Some(LeakSeverity::High)),
            (10.0, Some(LeakSeverity::Critical)),
        ];
        for (multiple, expected) in cases {
            assert_eq!(LeakSeverity::of_growth(multiple * MIB, MIB), expected, "{multiple}x");
        }
    }
}
