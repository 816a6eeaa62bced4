//! One PNG bar chart per workload: for each mode that ran, the idle figure, the loaded figure
//! per tenant (mean) and the loaded total, with the spec-sheet peak as a dashed line and each
//! bar's efficiency against it, like the seed's plots.
//!
//! Text needs a font and the bitmap backend has none, so the crate embeds DejaVu Sans
//! (`assets/fonts/DejaVuSans.ttf` at the repository root, Bitstream Vera licence with DejaVu's public-domain changes, full
//! text in `assets/fonts/DejaVuSans-LICENSE.txt`) and registers it as plotters' `sans-serif`.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::BenchError;
use crate::report::{sig3, Report};
use crate::workload::Workload;

const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
static FONT_ONCE: Once = Once::new();

fn ensure_font() {
    FONT_ONCE.call_once(|| {
        // The embedded file is a valid TrueType font; a failure would only lose the labels.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const IDLE: RGBColor = RGBColor(66, 133, 244);
const LOADED: RGBColor = RGBColor(251, 140, 0);
const TOTAL: RGBColor = RGBColor(52, 168, 83);
const PEAK: RGBColor = RGBColor(200, 40, 40);

/// Draw the chart of `workload` into `path` (PNG, 1000×560).
pub fn draw(report: &Report, workload: Workload, path: &Path) -> Result<(), BenchError> {
    ensure_font();
    let err = |source: Box<dyn std::error::Error + Send + Sync>| BenchError::Chart {
        path: path.to_path_buf(),
        source,
    };
    let cells: Vec<_> = report
        .modes
        .iter()
        .filter_map(|m| report.cell(workload, m.mode))
        .collect();
    let unit = workload.unit().label();
    let peak = report.peaks.as_ref().map(|p| p.for_workload(workload));
    let top = cells
        .iter()
        .flat_map(|c| [c.idle.mean, c.loaded.mean, c.loaded.total])
        .flatten()
        .chain(peak)
        .fold(0.0f64, f64::max);
    // Head room above the tallest bar or the peak line for the legend.
    let y_max = if top > 0.0 { top * 1.4 } else { 1.0 };
    let groups = cells.len().max(1) as f64;

    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(Box::new(e)))?;
    let title = format!(
        "{} ({}) on {}, {} tenants",
        workload.title(),
        cells.first().map(|c| c.size.as_str()).unwrap_or(""),
        report.gpu.name,
        report.tenants
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(36)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..groups, 0f64..y_max)
        .map_err(|e| err(Box::new(e)))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .max_light_lines(1)
        .light_line_style(RGBColor(240, 240, 240))
        .y_desc(unit)
        .y_label_formatter(&|v| sig3(*v))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(Box::new(e)))?;

    let series: [(&str, RGBColor, usize); 3] = [
        ("idle (one tenant alone)", IDLE, 0),
        ("loaded, per tenant (mean)", LOADED, 1),
        ("loaded, total of all tenants", TOTAL, 2),
    ];
    let bar_w = 0.22;
    for (label, color, k) in series {
        let bars: Vec<(f64, f64)> = cells
            .iter()
            .enumerate()
            .filter_map(|(g, c)| {
                let v = [c.idle.mean, c.loaded.mean, c.loaded.total][k]?;
                Some((g as f64 + 0.17 + k as f64 * (bar_w + 0.02), v))
            })
            .collect();
        chart
            .draw_series(
                bars.iter()
                    .map(|&(x, v)| Rectangle::new([(x, 0.0), (x + bar_w, v)], color.filled())),
            )
            .map_err(|e| err(Box::new(e)))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart
            .draw_series(bars.iter().map(|&(x, v)| {
                let text = match peak {
                    Some(p) if p > 0.0 => format!("{} · {:.0}%", sig3(v), v / p * 100.0),
                    _ => sig3(v),
                };
                Text::new(
                    text,
                    (x + bar_w / 2.0, v),
                    ("sans-serif", 14).into_font().color(&BLACK).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Bottom,
                        ),
                    ),
                )
            }))
            .map_err(|e| err(Box::new(e)))?;
    }
    if let Some(p) = peak {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, p), (groups, p)],
                8,
                5,
                PEAK.stroke_width(2),
            ))
            .map_err(|e| err(Box::new(e)))?
            .label(format!("spec-sheet peak {} {unit}", sig3(p)))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], PEAK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(Box::new(e)))?;
    // Mode names under each group, in pixel space below the x axis.
    for (g, c) in cells.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            c.mode.title().to_string(),
            (px, py + 10),
            ("sans-serif", 16).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                ),
            ),
        ))
        .map_err(|e| err(Box::new(e)))?;
    }
    root.present().map_err(|e| err(Box::new(e)))?;
    Ok(())
}
