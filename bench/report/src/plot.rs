//! SVG line plots (latency distributions, soak RSS and errors over time).
//! Text is emitted as SVG `<text>`, so no font is loaded at build or run time.

use std::path::Path;

use anyhow::{Context, bail};
use plotters::prelude::*;

use crate::model::Plot;

/// Colours that stay apart in print and for common colour blindness (Okabe–Ito).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// The axis range of every point in `plot`, widened when flat so the chart has an extent.
fn bounds(plot: &Plot) -> Option<((f64, f64), (f64, f64))> {
    let points = plot.lines.iter().flat_map(|line| line.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let mut extent: Option<((f64, f64), (f64, f64))> = None;
    for &(x, y) in points {
        extent = Some(match extent {
            None => ((x, x), (y, y)),
            Some(((x_low, x_high), (y_low, y_high))) => ((x_low.min(x), x_high.max(x)), (y_low.min(y), y_high.max(y))),
        });
    }
    extent.map(|((x_low, x_high), (y_low, y_high))| {
        let widen = |low: f64, high: f64| if high > low { (low, high) } else { (low - 1.0, high + 1.0) };
        // Figures here are counts, rates, sizes and latencies: the y axis starts at zero so slopes are not exaggerated.
        (widen(x_low, x_high), widen(y_low.min(0.0), y_high * 1.05))
    })
}

/// Draws `plot` into `<dir>/<plot.file>.svg`.
pub(crate) fn draw(plot: &Plot, dir: &Path) -> anyhow::Result<()> {
    let Some(((x_low, x_high), (y_low, y_high))) = bounds(plot) else {
        bail!("plot {} has no points", plot.file);
    };
    let path = dir.join(format!("{}.svg", plot.file));
    let root = SVGBackend::new(&path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&plot.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(x_low..x_high, y_low..y_high)
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    chart
        .configure_mesh()
        .x_desc(plot.x_label.as_str())
        .y_desc(plot.y_label.as_str())
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    for (index, line) in plot.lines.iter().enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), colour.stroke_width(2)))
            .map_err(|error| anyhow::anyhow!("{error}"))?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    root.present()
        .map_err(|error| anyhow::anyhow!("{error}"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Line;

    fn plot(lines: Vec<Line>) -> Plot {
        Plot { file: "t".into(), title: "t".into(), x_label: "x".into(), y_label: "y".into(), lines }
    }

    #[test]
    fn bounds_cover_every_line_from_zero() {
        let lines = vec![
            Line { label: "a".into(), points: vec![(0.0, 10.0), (5.0, 20.0)] },
            Line { label: "b".into(), points: vec![(1.0, 40.0), (9.0, f64::NAN)] },
        ];
        let ((x_low, x_high), (y_low, y_high)) = bounds(&plot(lines)).expect("points");
        assert_eq!((x_low, x_high), (0.0, 5.0_f64.max(1.0)));
        assert!(y_low.abs() < 1e-12, "{y_low}");
        assert!((y_high - 42.0).abs() < 1e-9);
    }

    #[test]
    fn a_plot_without_points_is_an_error_not_an_empty_chart() {
        let empty = plot(vec![Line { label: "a".into(), points: Vec::new() }]);
        assert!(bounds(&empty).is_none());
        assert!(draw(&empty, Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn an_svg_is_written_with_the_labels() {
        let dir = std::env::temp_dir().join(format!("mesh-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lines = vec![Line { label: "gateway p50".into(), points: vec![(0.0, 1.0), (1.0, 2.0)] }];
        draw(&plot(lines), &dir).unwrap();
        let svg = std::fs::read_to_string(dir.join("t.svg")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("gateway p50"));
        assert!(svg.contains("<polyline"));
    }
}
