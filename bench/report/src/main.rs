//! Renders the results of `bench/run` into `docs/benchmarks.md` and SVG plots.
//!
//! `bench/run` leaves one `<section>.json` per section and a `machine.json`
//! under the results directory; this reads them, computes medians, ratios and
//! verdicts (`verdict`), writes the Markdown (`render`) and the plots (`plot`).
//!
//! Usage: `mesh-bench-report <results dir> <markdown out> <plot dir> [section order...]`

mod model;
mod plot;
mod render;
mod verdict;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use model::{Machine, Section};

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The sections found in `results`, in `order` first, then any others by name.
fn read_sections(results: &Path, order: &[String]) -> anyhow::Result<Vec<Section>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(results)
        .with_context(|| format!("listing {}", results.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .filter(|path| path.file_stem().is_some_and(|stem| stem != "machine"))
        .collect();
    paths.sort();
    let mut sections: Vec<Section> = paths.iter().map(|path| read_json(path)).collect::<anyhow::Result<_>>()?;
    let rank = |section: &Section| order.iter().position(|name| *name == section.id).unwrap_or(order.len());
    sections.sort_by_key(rank);
    Ok(sections)
}

/// A path from the Markdown's directory to the plot directory, for links.
fn relative_link(markdown: &Path, plots: &Path) -> String {
    let base = markdown.parent().unwrap_or(Path::new(""));
    plots.strip_prefix(base).unwrap_or(plots).to_string_lossy().into_owned()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [results, markdown, plots, order @ ..] = args.as_slice() else {
        bail!("usage: mesh-bench-report <results dir> <markdown out> <plot dir> [section order...]");
    };
    let (results, markdown, plots) = (Path::new(results), Path::new(markdown), Path::new(plots));
    let machine: Machine = read_json(&results.join("machine.json"))?;
    let sections = read_sections(results, order)?;
    if sections.is_empty() {
        bail!("no section results in {}", results.display());
    }
    std::fs::create_dir_all(plots).with_context(|| format!("creating {}", plots.display()))?;
    for section in &sections {
        for figure in &section.plots {
            plot::draw(figure, plots).with_context(|| format!("section {}", section.id))?;
        }
    }
    let not_run: Vec<String> =
        order.iter().filter(|name| !sections.iter().any(|section| section.id == **name)).cloned().collect();
    let text = render::document(&machine, &sections, &not_run, &relative_link(markdown, plots), "benchmarks-notes.md");
    std::fs::write(markdown, text).with_context(|| format!("writing {}", markdown.display()))?;
    for section in &sections {
        let tally = render::tally(section);
        println!(
            "{}: {} pass, {} fail, {} not measured, {} without target",
            section.id, tally.pass, tally.fail, tally.not_measured, tally.no_target
        );
    }
    Ok(())
}
