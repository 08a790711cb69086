//! PNG line charts of a scenario's time series, drawn with `plotters` and
//! an embedded DejaVu font (no system font library needed).

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

const FONT: &str = "sans-serif";

/// One chart: the first column of `rows` is x, each other column a line.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Names of the lines, one per column after the first.
    pub lines: &'a [&'a str],
    pub rows: &'a [Vec<f64>],
    /// Upper bound of the y axis (e.g. the number of nodes), raised to the
    /// largest value when one is above it.
    pub y_max: Option<f64>,
}

fn register_font() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            for (style, bytes) in [
                (FontStyle::Normal, dejavu::sans::regular()),
                (FontStyle::Bold, dejavu::sans::bold()),
            ] {
                plotters::style::register_font(FONT, style, bytes)
                    .map_err(|_| "the embedded font did not load".to_string())?;
            }
            Ok(())
        })
        .clone()
}

/// Writes `chart` to `path` as a 1000×560 PNG.
pub fn write_png(path: &Path, chart: &Chart) -> Result<(), String> {
    register_font()?;
    draw(path, chart).map_err(|e| format!("{}: {e}", path.display()))
}

fn draw(path: &Path, chart: &Chart) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = chart
        .rows
        .iter()
        .filter_map(|r| r.first().copied())
        .fold(0.0f64, f64::max)
        .max(0.1);
    let largest = chart
        .rows
        .iter()
        .flat_map(|r| r.iter().skip(1).copied())
        .fold(0.0, f64::max);
    // The given bound, unless a line goes past it (false failures can
    // outnumber the nodes).
    let y_max = chart.y_max.unwrap_or(0.0).max(largest).max(1.0) * 1.05;
    let mut ctx = ChartBuilder::on(&root)
        .caption(chart.title, (FONT, 22).into_font())
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    ctx.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .label_style((FONT, 15))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .axis_desc_style((FONT, 16))
        .draw()?;
    for (i, name) in chart.lines.iter().enumerate() {
        let color = Palette99::pick(i).stroke_width(2);
        let points = chart
            .rows
            .iter()
            .filter_map(|r| Some((*r.first()?, *r.get(i + 1)?)));
        ctx.draw_series(LineSeries::new(points, color))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
