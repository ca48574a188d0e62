//! Medians, ratios and pass/fail of one row. A ratio is printed only when
//! both sides ran: a peer that failed makes the cell say why, and the verdict
//! "not measured", never a number.

use std::collections::BTreeMap;

use crate::model::{Measured, Row, Target};

/// The median of `samples`, or `None` when there are none. An even count
/// takes the mean of the middle two, so two runs give their midpoint.
#[must_use]
pub(crate) fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|sample| sample.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[middle] } else { f64::midpoint(sorted[middle - 1], sorted[middle]) })
}

/// One side of a row: its median, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Side {
    Measured { median: f64, low: f64, high: f64, runs: usize },
    Failed(String),
}

impl Side {
    fn of(measured: &Measured, failures: &BTreeMap<String, String>) -> Side {
        if let Some(reason) = failures.get(&measured.name) {
            return Side::Failed(format!("{} failed: {reason}", measured.name));
        }
        let finite: Vec<f64> = measured.samples.iter().copied().filter(|sample| sample.is_finite()).collect();
        match median(&finite) {
            Some(median) => Side::Measured {
                median,
                low: finite.iter().copied().fold(f64::INFINITY, f64::min),
                high: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                runs: finite.len(),
            },
            None => Side::Failed(format!("{} failed: no sample recorded", measured.name)),
        }
    }

    #[must_use]
    pub(crate) fn median(&self) -> Option<f64> {
        match self {
            Side::Measured { median, .. } => Some(*median),
            Side::Failed(_) => None,
        }
    }
}

/// The ratio cell: a number only when both sides were measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ratio {
    NoPeer,
    Value(f64),
    Refused(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Fail,
    NotMeasured,
    NoTarget,
}

impl Verdict {
    #[must_use]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "**fail**",
            Verdict::NotMeasured => "not measured",
            Verdict::NoTarget => "no target",
        }
    }
}

/// Everything a table row shows, computed from the raw row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Judged {
    pub(crate) subject: Side,
    pub(crate) peer: Option<Side>,
    pub(crate) ratio: Ratio,
    pub(crate) verdict: Verdict,
}

#[must_use]
pub(crate) fn judge(row: &Row, failures: &BTreeMap<String, String>) -> Judged {
    let subject = Side::of(&row.subject, failures);
    let peer = row.peer.as_ref().map(|peer| Side::of(peer, failures));
    let ratio = match (&subject, &peer) {
        (_, None) => Ratio::NoPeer,
        (Side::Failed(reason), Some(_)) | (Side::Measured { .. }, Some(Side::Failed(reason))) => {
            Ratio::Refused(reason.clone())
        }
        (Side::Measured { median, .. }, Some(Side::Measured { median: peer_median, .. })) => {
            if peer_median.abs() < f64::MIN_POSITIVE {
                Ratio::Refused(format!("{} measured 0", row.peer.as_ref().map_or("peer", |peer| peer.name.as_str())))
            } else {
                Ratio::Value(median / peer_median)
            }
        }
    };
    let verdict = verdict(row.target, &subject, peer.as_ref(), &ratio);
    Judged { subject, peer, ratio, verdict }
}

fn verdict(target: Option<Target>, subject: &Side, peer: Option<&Side>, ratio: &Ratio) -> Verdict {
    let Some(target) = target else {
        return Verdict::NoTarget;
    };
    let Some(figure) = subject.median() else {
        return Verdict::NotMeasured;
    };
    let met = match target {
        Target::AtLeast(bound) => Some(figure >= bound),
        Target::AtMost(bound) => Some(figure <= bound),
        Target::RatioAtLeast(bound) => match ratio {
            Ratio::Value(value) => Some(*value >= bound),
            Ratio::NoPeer | Ratio::Refused(_) => None,
        },
        Target::RatioAtMost(bound) => match ratio {
            Ratio::Value(value) => Some(*value <= bound),
            Ratio::NoPeer | Ratio::Refused(_) => None,
        },
        Target::AddedAtMost(bound) => peer.and_then(Side::median).map(|peer_figure| figure - peer_figure <= bound),
    };
    match met {
        Some(true) => Verdict::Pass,
        Some(false) => Verdict::Fail,
        None => Verdict::NotMeasured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Better;

    fn measured(name: &str, samples: &[f64]) -> Measured {
        Measured { name: name.into(), label: name.into(), samples: samples.to_vec() }
    }

    fn row(subject: &[f64], peer: Option<&[f64]>, target: Option<Target>) -> Row {
        Row {
            measure: "rps".into(),
            unit: "req/s".into(),
            better: Better::Higher,
            subject: measured("gateway", subject),
            peer: peer.map(|samples| measured("envoy", samples)),
            target,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts_and_nothing() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        // A run that produced NaN is no sample, not a median of garbage.
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratio_is_subject_over_peer_median() {
        let judged = judge(&row(&[100.0, 300.0, 200.0], Some(&[100.0, 90.0, 110.0]), None), &BTreeMap::new());
        assert_eq!(judged.ratio, Ratio::Value(2.0));
        assert_eq!(judged.subject, Side::Measured { median: 200.0, low: 100.0, high: 300.0, runs: 3 });
        assert_eq!(judged.verdict, Verdict::NoTarget);
    }

    #[test]
    fn a_failed_peer_refuses_the_ratio_and_the_verdict() {
        let failures = BTreeMap::from([("envoy".to_owned(), "exited with 1 before listening".to_owned())]);
        // Samples left over from a partial run must not turn into a ratio.
        let judged = judge(&row(&[100.0], Some(&[50.0]), Some(Target::RatioAtLeast(1.0))), &failures);
        assert_eq!(judged.ratio, Ratio::Refused("envoy failed: exited with 1 before listening".into()));
        assert_eq!(judged.verdict, Verdict::NotMeasured);
    }

    #[test]
    fn a_peer_without_samples_refuses_the_ratio() {
        let judged = judge(&row(&[100.0], Some(&[]), Some(Target::RatioAtLeast(1.0))), &BTreeMap::new());
        assert_eq!(judged.ratio, Ratio::Refused("envoy failed: no sample recorded".into()));
        assert_eq!(judged.verdict, Verdict::NotMeasured);
    }

    #[test]
    fn a_peer_measuring_zero_gives_no_ratio() {
        let judged = judge(&row(&[100.0], Some(&[0.0]), Some(Target::RatioAtLeast(1.0))), &BTreeMap::new());
        assert!(matches!(judged.ratio, Ratio::Refused(_)));
        assert_eq!(judged.verdict, Verdict::NotMeasured);
    }

    #[test]
    fn a_failed_subject_is_not_measured_even_against_an_absolute_target() {
        let failures = BTreeMap::from([("gateway".to_owned(), "did not answer".to_owned())]);
        let judged = judge(&row(&[], None, Some(Target::AtMost(5.0))), &failures);
        assert_eq!(judged.subject, Side::Failed("gateway failed: did not answer".into()));
        assert_eq!(judged.verdict, Verdict::NotMeasured);
    }

    #[test]
    fn targets_pass_and_fail_on_the_median() {
        let cases = [
            (row(&[120.0], Some(&[100.0]), Some(Target::RatioAtLeast(1.2))), Verdict::Pass),
            (row(&[119.0], Some(&[100.0]), Some(Target::RatioAtLeast(1.2))), Verdict::Fail),
            (row(&[29.0], Some(&[100.0]), Some(Target::RatioAtMost(0.3))), Verdict::Pass),
            (row(&[31.0], Some(&[100.0]), Some(Target::RatioAtMost(0.3))), Verdict::Fail),
            (row(&[300.0], Some(&[200.0]), Some(Target::AddedAtMost(100.0))), Verdict::Pass),
            (row(&[301.0], Some(&[200.0]), Some(Target::AddedAtMost(100.0))), Verdict::Fail),
            // One slow outlier among three runs does not decide the verdict.
            (row(&[4.0, 4.5, 40.0], None, Some(Target::AtMost(5.0))), Verdict::Pass),
            (row(&[499.0, 600.0, 700.0], None, Some(Target::AtLeast(500.0))), Verdict::Pass),
            (row(&[499.0], None, Some(Target::AtLeast(500.0))), Verdict::Fail),
            // A ratio target without a peer cannot be judged.
            (row(&[1.0], None, Some(Target::RatioAtLeast(1.0))), Verdict::NotMeasured),
        ];
        for (row, expected) in cases {
            assert_eq!(judge(&row, &BTreeMap::new()).verdict, expected, "{:?} {:?}", row.subject.samples, row.target);
        }
    }
}
