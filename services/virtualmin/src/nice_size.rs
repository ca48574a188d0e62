//! Webmin's `nice_size` read back into bytes. Virtualmin prints human sizes
//! where it has no byte-exact field; a printed size stands for an interval of
//! byte counts, and that interval is what this module returns.
//!
//! Two styles exist (reference §4):
//! - Webmin ≥ 1.940: base 1024, labels `bytes kiB|KiB MiB GiB TiB PiB`, two
//!   decimals **truncated**: `X U` means `[ceil(X·U), ceil((X+0.01)·U))`.
//! - Webmin ≤ 1.930: labels `bytes kB MB GB TB` (still base 1024), `%.2f`
//!   **rounded**: `X U` means `[(X−0.005)·U, (X+0.005)·U]`, both ends kept
//!   because a tie may round either way.
//!
//! `N bytes` is exact in both. Numbers are read as exact decimal cents, never
//! through floating point, so the interval is exact; only for TiB and PiB is
//! it widened slightly, because Perl's `int(x*100)` can land one cent high
//! when `x*100` rounds up to an integer in binary floating point.

use crate::domain::ByteAmount;

/// Why a size string could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a Webmin size")]
pub struct SizeParseError {
    /// The text, cut to 40 characters.
    pub text: String,
}

/// Parses `Unlimited`, `734 bytes`, `1.19 GiB`, `1.50 kB` and the like.
pub fn parse_nice_size(text: &str) -> Result<ByteAmount, SizeParseError> {
    let error = || SizeParseError { text: text.chars().take(40).collect() };
    if text == "Unlimited" {
        return Ok(ByteAmount::Unlimited);
    }
    let (number, label) = text.split_once(' ').ok_or_else(error)?;
    let cents = parse_cents(number).ok_or_else(error)?;
    let (power, legacy) = match label {
        "bytes" => {
            // Byte counts are printed as integers in every style.
            if cents % 100 != 0 {
                return Err(error());
            }
            return Ok(ByteAmount::Exact(cents / 100));
        }
        "kiB" | "KiB" => (1, false),
        "MiB" => (2, false),
        "GiB" => (3, false),
        "TiB" => (4, false),
        "PiB" => (5, false),
        "kB" => (1, true),
        "MB" => (2, true),
        "GB" => (3, true),
        "TB" => (4, true),
        _ => return Err(error()),
    };
    let unit = 1u128 << (10 * power);
    let cents = u128::from(cents);
    let (low, high_exclusive) = if legacy {
        // value/unit in [X-0.005, X+0.005] → value in [(2c-1)·U/200, (2c+1)·U/200].
        let low = (2 * cents).saturating_sub(1) * unit;
        let high = (2 * cents + 1) * unit;
        (low.div_ceil(200), high / 200 + 1)
    } else {
        let float_slack = unit >> 36;
        let low = (cents * unit).div_ceil(100).saturating_sub(float_slack);
        let high = ((cents + 1) * unit).div_ceil(100);
        (low, high.max(low + 1))
    };
    let low = u64::try_from(low).map_err(|_| error())?;
    let high_exclusive = u64::try_from(high_exclusive).unwrap_or(u64::MAX);
    Ok(ByteAmount::Range { min_bytes: low, max_bytes_exclusive: high_exclusive })
}

/// Reads `123`, `1.5` or `117.73` as hundredths, exactly; refuses signs,
/// exponents and more than two decimals.
fn parse_cents(number: &str) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || whole.len() > 17 || fraction.len() > 2 || (number.contains('.') && fraction.is_empty()) {
        return None;
    }
    if !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let fraction_cents: u64 = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<u64>().ok()? * 10,
        _ => fraction.parse().ok()?,
    };
    whole.checked_mul(100)?.checked_add(fraction_cents)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Webmin's formatter, re-implemented from `gen_samples.py` (itself
    /// measured against Webmin's Perl), for the round-trip properties.
    #[derive(Clone, Copy, Debug)]
    enum Style {
        Current,
        Webmin1941,
        Webmin1940,
        Legacy,
    }

    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)] // Perl's float arithmetic, on purpose
    fn nice_size(n: u64, style: Style) -> String {
        let labels: &[&str] = match style {
            Style::Current => &["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"],
            Style::Webmin1941 | Style::Webmin1940 => &["bytes", "kiB", "MiB", "GiB", "TiB", "PiB"],
            Style::Legacy => &["bytes", "kB", "MB", "GB", "TB"],
        };
        if let Style::Legacy = style {
            let mut unit_index = 0;
            for k in (1..=4).rev() {
                if n as f64 > 1024f64.powi(k) {
                    unit_index = k;
                    break;
                }
            }
            let mut text = format!("{:.2}", n as f64 / 1024f64.powi(unit_index));
            if text.ends_with(".00") {
                text.truncate(text.len() - 3);
            }
            return format!("{text} {}", labels[usize::try_from(unit_index).unwrap()]);
        }
        let threshold = if let Style::Webmin1940 = style { 1000.0 } else { 1024.0 };
        let mut x = n as f64;
        let mut k = 0;
        if x >= 1024.0 {
            loop {
                x /= 1024.0;
                k += 1;
                if !(x >= threshold && k < 5) {
                    break;
                }
            }
        }
        let truncated = (x * 100.0).trunc() / 100.0;
        format!("{} {}", perl_number(truncated), labels[k])
    }

    /// Perl's default number format for values with at most two decimals.
    fn perl_number(value: f64) -> String {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }

    fn contains(amount: &ByteAmount, n: u64) -> bool {
        match *amount {
            ByteAmount::Exact(bytes) => bytes == n,
            ByteAmount::Range { min_bytes, max_bytes_exclusive } => min_bytes <= n && n < max_bytes_exclusive,
            ByteAmount::Unlimited => false,
        }
    }

    fn check(text: &str, expected: ByteAmount) {
        assert_eq!(parse_nice_size(text), Ok(expected), "{text}");
    }

    fn range(min_bytes: u64, max_bytes_exclusive: u64) -> ByteAmount {
        ByteAmount::Range { min_bytes, max_bytes_exclusive }
    }

    #[test]
    fn reference_table_reads_back() {
        check("0 bytes", ByteAmount::Exact(0));
        check("734 bytes", ByteAmount::Exact(734));
        check("1024 bytes", ByteAmount::Exact(1024));
        check("1 KiB", range(1024, 1035));
        check("1.5 KiB", range(1536, 1547));
        check("1.19 GiB", range(1_277_752_771, 1_288_490_189));
        check("Unlimited", ByteAmount::Unlimited);
        check("1.50 kB", range(1531, 1542));
        check("2 GB", range(2_142_114_939, 2_152_852_358));
    }

    #[test]
    fn reference_examples_fall_inside_their_interval() {
        for (bytes, current, legacy) in [
            (123_456_789u64, "117.73 MiB", "117.74 MB"),
            (1_288_490_188, "1.19 GiB", "1.20 GB"),
            (999_999_999_999, "931.32 GiB", "931.32 GB"),
            (1_099_511_627_776, "1 TiB", "1024 GB"),
            (1_688_849_859_584, "1.53 TiB", "1.54 TB"),
            (1_152_921_504_606_846_976, "1024 PiB", "1048576 TB"),
            (1_048_575, "1023.99 KiB", "1024 kB"),
            (5_000_000, "4.76 MiB", "4.77 MB"),
        ] {
            assert!(contains(&parse_nice_size(current).unwrap(), bytes), "{current}");
            assert!(contains(&parse_nice_size(legacy).unwrap(), bytes), "{legacy}");
        }
    }

    #[test]
    fn garbage_is_refused() {
        for text in ["", "12", "1.5", "1.5 XB", "-2 KiB", "1.234 MiB", "1e3 KiB", "1. KiB", " 1 KiB", "1.5 bytes"] {
            assert!(parse_nice_size(text).is_err(), "{text:?}");
        }
    }

    fn any_size() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..4096,
            0u64..(1 << 24),
            // Spread over every unit up to a few PiB, where float rounding bites.
            (0u32..53, any::<u64>()).prop_map(|(bits, raw)| raw >> (63 - bits)),
            // Just below and above unit boundaries.
            (1u32..6, 0u64..2048).prop_map(|(power, offset)| (1u64 << (10 * power)).saturating_sub(offset)),
            (1u32..6, 0u64..2048).prop_map(|(power, offset)| (1u64 << (10 * power)) + offset),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn current_style_round_trips(n in any_size()) {
            let text = nice_size(n, Style::Current);
            let amount = parse_nice_size(&text).unwrap();
            prop_assert!(contains(&amount, n), "{} -> {:?}", text, amount);
        }

        #[test]
        fn webmin_1941_style_round_trips(n in any_size()) {
            let text = nice_size(n, Style::Webmin1941);
            prop_assert!(contains(&parse_nice_size(&text).unwrap(), n), "{}", text);
        }

        #[test]
        fn webmin_1940_style_round_trips(n in any_size()) {
            let text = nice_size(n, Style::Webmin1940);
            prop_assert!(contains(&parse_nice_size(&text).unwrap(), n), "{}", text);
        }

        #[test]
        fn legacy_style_round_trips(n in any_size()) {
            let text = nice_size(n, Style::Legacy);
            prop_assert!(contains(&parse_nice_size(&text).unwrap(), n), "{}", text);
        }

        #[test]
        fn intervals_are_tight(n in 1024u64..(1 << 50)) {
            // A truncated two-decimal figure spans at most 1% of its unit (plus float slack).
            if let ByteAmount::Range { min_bytes, max_bytes_exclusive } = parse_nice_size(&nice_size(n, Style::Current)).unwrap() {
                let width = max_bytes_exclusive - min_bytes;
                prop_assert!(width <= n / 100 + (1 << 14) + 2, "width {} for {}", width, n);
            }
        }
    }
}
