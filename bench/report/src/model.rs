//! The JSON that `bench/run` writes under `docs/bench/results/`: one
//! `<section>.json` per section and one `machine.json`. Collectors write raw
//! samples (one per repetition); every statistic is computed here, so the
//! rules for medians, ratios and verdicts live in one place.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One section of the suite (edge, cache, ...), as its collector wrote it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Section {
    /// File stem, e.g. `edge`.
    #[serde(rename = "section")]
    pub(crate) id: String,
    pub(crate) title: String,
    /// Markdown: what runs against what, and how.
    #[serde(default)]
    pub(crate) about: String,
    /// The exact commands the section ran, in order.
    #[serde(default)]
    pub(crate) commands: Vec<String>,
    /// When, by which command and under which load the section ran: a
    /// subset run (`bench/run cache`) refreshes only its own sections.
    #[serde(default)]
    pub(crate) measured: String,
    /// Repetitions asked for; rows may hold fewer samples when runs failed.
    pub(crate) repetitions: u32,
    /// Participants that failed to run, by name, with the reason. A row whose
    /// subject or peer is named here gets no ratio and no verdict.
    #[serde(default)]
    pub(crate) failures: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) rows: Vec<Row>,
    #[serde(default)]
    pub(crate) plots: Vec<Plot>,
}

/// Which direction of a figure is the good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Better {
    Higher,
    Lower,
}

/// What ran and what it measured, one value per repetition.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Measured {
    /// Key into `Section::failures`.
    pub(crate) name: String,
    /// How the table names it.
    pub(crate) label: String,
    #[serde(default)]
    pub(crate) samples: Vec<f64>,
}

/// A stated goal for a row.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub(crate) enum Target {
    /// subject / peer ≥ value.
    RatioAtLeast(f64),
    /// subject / peer ≤ value.
    RatioAtMost(f64),
    /// subject − peer ≤ value (e.g. added latency over the direct path).
    AddedAtMost(f64),
    /// subject ≥ value, in the row's unit.
    AtLeast(f64),
    /// subject ≤ value, in the row's unit.
    AtMost(f64),
}

/// One line of a section's table.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Row {
    /// What is measured, e.g. "rps, 1 in flight".
    pub(crate) measure: String,
    pub(crate) unit: String,
    pub(crate) better: Better,
    pub(crate) subject: Measured,
    #[serde(default)]
    pub(crate) peer: Option<Measured>,
    #[serde(default)]
    pub(crate) target: Option<Target>,
}

/// A figure to draw: named lines of (x, y) points on shared axes.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Plot {
    /// File stem under the plot directory.
    pub(crate) file: String,
    pub(crate) title: String,
    pub(crate) x_label: String,
    pub(crate) y_label: String,
    pub(crate) lines: Vec<Line>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Line {
    pub(crate) label: String,
    pub(crate) points: Vec<(f64, f64)>,
}

/// Where and when the suite ran.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Machine {
    pub(crate) date: String,
    pub(crate) commit: String,
    /// The command line that produced the results, e.g. `bench/run --quick`.
    pub(crate) command: String,
    pub(crate) quick: bool,
    pub(crate) repetitions: u32,
    /// Durations and sizes the run used, e.g. "edge runs: 3 s".
    #[serde(default)]
    pub(crate) scale: Vec<String>,
    pub(crate) cpu: String,
    pub(crate) cores: u32,
    pub(crate) memory: String,
    pub(crate) kernel: String,
    pub(crate) os: String,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) pinning: String,
    /// Tool name → version line, or why it is missing.
    #[serde(default)]
    pub(crate) versions: BTreeMap<String, String>,
}
