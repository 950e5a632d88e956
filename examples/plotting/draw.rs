//! Drawing: one chart per PNG, the legend in a panel of its own.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::PlotError;

/// Image size in pixels.
const SIZE: (u32, u32) = (1600, 800);

/// Width of the legend panel on the right of the chart, in pixels.
const LEGEND_WIDTH: u32 = 520;

/// Tableau's ten colours: distinct, and readable on white.
pub(super) const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of a chart.
pub(super) struct Line {
    pub(super) label: String,
    pub(super) color: RGBColor,
    pub(super) dashed: bool,
    pub(super) points: Vec<(f64, f64)>,
}

/// A chart's axes and lines.
pub(super) struct Chart<'a> {
    pub(super) title: &'a str,
    pub(super) x_desc: &'a str,
    pub(super) y_desc: &'a str,
    pub(super) y_range: Option<(f64, f64)>,
    pub(super) log_y: bool,
    /// How many labels the x axis gets at most.
    pub(super) x_labels: usize,
    pub(super) lines: Vec<Line>,
}

fn draw_error(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |reason| PlotError::Draw {
        path: path.to_path_buf(),
        reason,
    }
}

/// Registers the embedded font once, under the family plotters asks for.
fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // DejaVu's own files: registration cannot fail on them.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// The smallest and largest finite values, padded by 5%, or `fallback` when there are none.
fn bounds(values: impl Iterator<Item = f64>, fallback: (f64, f64)) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return fallback;
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs().max(1e-12) * 1e-3);
    (lo - pad, hi + pad)
}

/// An axis label: integers without decimals, others with at most two.
fn tidy(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round())
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// The legend, in its own panel so that it never hides a line: a sample of each line's
/// stroke (dashed where the line is) and its label.
fn draw_legend(area: &Area<'_>, lines: &[Line]) -> Result<(), String> {
    let font = ("sans-serif", 19).into_font().color(&BLACK);
    let row = 30;
    for (k, l) in lines.iter().enumerate() {
        let y = 90 + row * k as i32;
        let stroke = l.color.stroke_width(3);
        let segments: &[(i32, i32)] = if l.dashed {
            &[(8, 20), (28, 40), (48, 56)]
        } else {
            &[(8, 56)]
        };
        for &(a, b) in segments {
            area.draw(&PathElement::new(vec![(a, y), (b, y)], stroke))
                .map_err(|e| e.to_string())?;
        }
        area.draw_text(
            &l.label,
            &font.pos(Pos::new(HPos::Left, VPos::Center)),
            (66, y),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A shaded band between two curves, drawn under the lines: `(x, low, high)` per point.
pub(super) struct Band {
    pub(super) color: RGBColor,
    pub(super) points: Vec<(f64, f64, f64)>,
}

pub(super) fn draw(path: &Path, chart: &Chart<'_>) -> Result<(), PlotError> {
    draw_with_bands(path, chart, &[])
}

/// Draws `chart` with `bands` shaded under its lines (on a linear y axis).
pub(super) fn draw_with_bands(
    path: &Path,
    chart: &Chart<'_>,
    bands: &[Band],
) -> Result<(), PlotError> {
    register_fonts();
    let err = draw_error(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (plot_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    draw_legend(&legend_area, &chart.lines).map_err(&err)?;
    let points = || chart.lines.iter().flat_map(|l| l.points.iter());
    let (x0, x1) = bounds(points().map(|p| p.0), (0.0, 1.0));
    let (x0, x1) = (x0.max(0.0), x1);
    let mut builder = ChartBuilder::on(&plot_area);
    builder
        .caption(chart.title, ("sans-serif", 34).into_font())
        .margin(24)
        .x_label_area_size(70)
        .y_label_area_size(100);
    let style = |l: &Line| {
        let stroke = l.color.stroke_width(3);
        (stroke, l.dashed)
    };
    if chart.log_y {
        let (y0, y1) = bounds(
            points().map(|p| p.1).filter(|v| *v > 0.0).map(f64::log10),
            (0.0, 1.0),
        );
        let range = (10f64.powf(y0.floor()))..(10f64.powf(y1.ceil()));
        let mut ctx = builder
            .build_cartesian_2d(x0..x1, range.log_scale())
            .map_err(|e| err(e.to_string()))?;
        configure(&mut ctx, chart, |v| format!("{v:.0e}")).map_err(&err)?;
        for l in &chart.lines {
            let pts = l
                .points
                .iter()
                .copied()
                .filter(|p| p.1 > 0.0 && p.1.is_finite());
            series(&mut ctx, pts, style(l)).map_err(&err)?;
        }
    } else {
        let band_ys = bands
            .iter()
            .flat_map(|b| b.points.iter().flat_map(|p| [p.1, p.2]));
        let (y0, y1) = chart
            .y_range
            .unwrap_or_else(|| bounds(points().map(|p| p.1).chain(band_ys), (0.0, 1.0)));
        let mut ctx = builder
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(e.to_string()))?;
        configure(&mut ctx, chart, |v| format!("{v:.2}")).map_err(&err)?;
        for b in bands {
            // The upper edge left to right, then the lower edge back: one closed polygon.
            let pts: Vec<(f64, f64)> = b
                .points
                .iter()
                .filter(|p| p.1.is_finite() && p.2.is_finite())
                .map(|p| (p.0, p.2))
                .chain(
                    b.points
                        .iter()
                        .rev()
                        .filter(|p| p.1.is_finite() && p.2.is_finite())
                        .map(|p| (p.0, p.1)),
                )
                .collect();
            ctx.draw_series(std::iter::once(Polygon::new(
                pts,
                b.color.mix(0.2).filled(),
            )))
            .map_err(|e| err(e.to_string()))?;
        }
        for l in &chart.lines {
            let pts = l.points.iter().copied().filter(|p| p.1.is_finite());
            series(&mut ctx, pts, style(l)).map_err(&err)?;
        }
    }
    root.present().map_err(|e| err(e.to_string()))
}

type Ctx<'a, Y> =
    ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn configure<Y>(
    ctx: &mut Ctx<'_, Y>,
    chart: &Chart<'_>,
    y_format: impl Fn(&Y::ValueType) -> String,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    ctx.configure_mesh()
        .x_desc(chart.x_desc)
        .y_desc(chart.y_desc)
        .axis_desc_style(("sans-serif", 26))
        .label_style(("sans-serif", 22))
        .y_label_formatter(&y_format)
        .x_label_formatter(&|v| tidy(*v))
        .x_labels(chart.x_labels)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| e.to_string())
}

fn series<Y>(
    ctx: &mut Ctx<'_, Y>,
    points: impl Iterator<Item = (f64, f64)> + Clone,
    (stroke, dashed): (ShapeStyle, bool),
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    if dashed {
        ctx.draw_series(DashedLineSeries::new(points.clone(), 12, 8, stroke))
            .map_err(|e| e.to_string())?;
    } else {
        ctx.draw_series(LineSeries::new(points.clone(), stroke))
            .map_err(|e| e.to_string())?;
    }
    // Markers, so that runs with a single epoch still show.
    ctx.draw_series(points.map(|p| Circle::new(p, 4, stroke.color.filled())))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The `j`-th layer's shade of a run's colour: darker for deeper layers.
pub(super) fn layer_shade(c: RGBColor, j: usize) -> RGBColor {
    let f = 1.0 - 0.3 * (j.min(2) as f64);
    RGBColor(
        (c.0 as f64 * f) as u8,
        (c.1 as f64 * f) as u8,
        (c.2 as f64 * f) as u8,
    )
}
