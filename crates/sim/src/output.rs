//! Files a simulation writes: CSV tables and plots (PNG and SVG, drawn with plotters).
//!
//! PNG text is drawn with DejaVu Sans, embedded from `assets/fonts/DejaVuSans.ttf` at the repository root (a byte copy of
//! Debian's `fonts-dejavu-core`; its license, `assets/fonts/DejaVuSans-LICENSE.txt`, allows
//! redistribution). SVG text names the `sans-serif` family and is drawn by the viewer.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::frac_report::FracReport;
use crate::fractional::Policy as FracPolicy;
use crate::hybrid::HybridReport;
use crate::policy::PolicyKind;
use crate::report::{ReplayReport, SaturateReport};

const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// One policy's replay line: (day, allocated %, queued pods) points.
type ReplaySeries = (PolicyKind, Vec<(f64, f64, f64)>);

/// Pixel size of every plot.
const SIZE: (u32, u32) = (1400, 600);

/// Errors from writing output files.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("cannot draw {path}: {source}")]
    Plot {
        /// The plot file.
        path: PathBuf,
        /// The drawing backend's error (plotters' `DrawingAreaErrorKind` of the PNG or SVG
        /// backend, which differ in type).
        #[source]
        source: DrawError,
    },
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, OutputError> {
    std::fs::write(&path, text).map_err(|source| OutputError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn ensure_dir(dir: &Path) -> Result<(), OutputError> {
    std::fs::create_dir_all(dir).map_err(|source| OutputError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Draw one plot as `DIR/STEM.png` and `DIR/STEM.svg` (the drawing is generic over the
/// backend, so it is written out once per backend) and push both paths onto `files`.
macro_rules! draw_png_and_svg {
    ($files:expr, $dir:expr, $stem:literal, |$root:ident| $draw:expr) => {{
        register_font();
        let png = $dir.join(concat!($stem, ".png"));
        let $root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        $draw.map_err(|source| plot_error(&png, source))?;
        $files.push(png);
        let svg = $dir.join(concat!($stem, ".svg"));
        let $root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        $draw.map_err(|source| plot_error(&svg, source))?;
        $files.push(svg);
    }};
}

fn register_font() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // The embedded file is a valid TrueType font; if it ever were not, text would be
        // missing from the PNG and the drawing call reports the error.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Line colour of a policy (the same in every plot).
fn colour(p: PolicyKind) -> RGBColor {
    match p {
        PolicyKind::TESSERA => RGBColor(0xd6, 0x27, 0x28),
        PolicyKind::NOS => RGBColor(0x1f, 0x77, 0xb4),
        // Planner policies the simulator does not offer (see `PolicyKind::ALL`).
        PolicyKind::Planned(_) => RGBColor(0xff, 0x7f, 0x0e),
        PolicyKind::BestFit => RGBColor(0x2c, 0xa0, 0x2c),
        PolicyKind::StaticMig => RGBColor(0x94, 0x67, 0xbd),
        PolicyKind::WholeGpu => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// Write the saturate CSVs and plots into `dir`; returns the files written.
pub fn write_saturate(report: &SaturateReport, dir: &Path) -> Result<Vec<PathBuf>, OutputError> {
    ensure_dir(dir)?;
    let mut files = Vec::new();

    let mut s = String::from(
        "policy,allocated_pct_at_100,unallocated_pct_at_100,allocated_pct_at_100_sd,milli_served_pct_at_100,\
allocated_pct_at_130,failed_pods,failed_pods_total,failed_cpu_pods_total,creates,destroys,repartitions,busy_destroyed,\
hole_floor_pct_at_100\n",
    );
    for p in &report.policies {
        let _ = writeln!(
            s,
            "{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{:.3}",
            p.policy,
            p.allocated_pct_at_100,
            p.unallocated_pct_at_100,
            p.allocated_pct_at_100_sd,
            p.milli_served_pct_at_100,
            p.allocated_pct_at_130,
            p.failed_pods,
            p.failed_pods_total,
            p.failed_cpu_pods_total,
            p.creates,
            p.destroys,
            p.repartitions,
            p.busy_destroyed,
            p.hole_floor_pct_at_100
        );
    }
    files.push(write(dir.join("saturate_summary.csv"), &s)?);

    let mut s = String::from(
        "policy,arrived_pct,allocated_pct,allocated_pct_sd,unallocated_pct,milli_served_pct,failed_gpu_pods\n",
    );
    for p in &report.policies {
        for c in &p.curve {
            let _ = writeln!(
                s,
                "{},{},{:.3},{:.3},{:.3},{:.3},{:.3}",
                p.policy,
                c.arrived_pct,
                c.allocated_pct,
                c.allocated_pct_sd,
                100.0 - c.allocated_pct,
                c.milli_served_pct,
                c.failed_gpu_pods
            );
        }
    }
    files.push(write(dir.join("saturate_curve.csv"), &s)?);

    let mut s = String::from(
        "policy,seed,pods,gpu_pods,allocated_pct_at_100,milli_served_pct_at_100,failed_pods_at_100,\
failed_gpu_pods,failed_cpu_pods,creates,destroys,repartitions,busy_destroyed,hole_floor_pct_at_100\n",
    );
    for r in &report.runs {
        let at = r.at(100);
        let _ = writeln!(
            s,
            "{},{},{},{},{:.3},{:.3},{},{},{},{},{},{},{},{:.3}",
            r.policy,
            r.seed,
            r.pods,
            r.gpu_pods,
            at.allocated_pct,
            at.milli_served_pct,
            at.failed_gpu_pods,
            r.failed_gpu_pods,
            r.failed_cpu_pods,
            r.counters.creates,
            r.counters.destroys,
            r.counters.repartitions,
            r.counters.busy_destroyed,
            r.hole_floor_pct
        );
    }
    files.push(write(dir.join("saturate_runs.csv"), &s)?);

    if let Some(mix) = &report.setup.static_mig_partition {
        let mut s = String::from("layout,gpus\n");
        for m in mix {
            let _ = writeln!(s, "{},{}", m.layout, m.gpus);
        }
        files.push(write(dir.join("static_mig_partition.csv"), &s)?);
    }

    let series: Vec<(PolicyKind, Vec<(f64, f64)>)> = report
        .policies
        .iter()
        .map(|p| {
            (
                p.policy,
                p.curve
                    .iter()
                    .map(|c| (f64::from(c.arrived_pct), c.allocated_pct))
                    .collect(),
            )
        })
        .collect();
    let title = format!(
        "{} GPUs as {} ({} seeds)",
        report.setup.gpus,
        report.setup.gpu_model,
        report.seeds.len()
    );
    draw_png_and_svg!(files, dir, "saturate_allocation", |root| saturate_plot(
        root, &series, &title
    ));
    Ok(files)
}

/// Write the replay CSVs and plots into `dir`; returns the files written.
pub fn write_replay(report: &ReplayReport, dir: &Path) -> Result<Vec<PathBuf>, OutputError> {
    ensure_dir(dir)?;
    let mut files = Vec::new();
    let mut s = String::from(
        "policy,delay_mean_s,delay_p95_s,delay_max_s,delayed_gpu_pods,started_gpu_pods,never_started,rejected_pods,\
allocated_mean_pct,allocated_peak_pct,repartitions,creates,destroys,busy_destroyed\n",
    );
    for p in &report.policies {
        let _ = writeln!(
            s,
            "{},{:.3},{:.3},{},{},{},{},{},{:.3},{:.3},{},{},{},{}",
            p.policy,
            p.delay_mean_s,
            p.delay_p95_s,
            p.delay_max_s,
            p.delayed_gpu_pods,
            p.started_gpu_pods,
            p.never_started,
            p.rejected_pods,
            p.allocated_mean_pct,
            p.allocated_peak_pct,
            p.repartitions,
            p.creates,
            p.destroys,
            p.busy_destroyed
        );
    }
    files.push(write(dir.join("replay_summary.csv"), &s)?);

    let mut s = String::from("policy,class,started,delayed,delay_mean_s,delay_p95_s,delay_max_s\n");
    for p in &report.policies {
        for c in &p.delay_by_class {
            let _ = writeln!(
                s,
                "{},{},{},{},{:.3},{:.3},{}",
                p.policy, c.class, c.started, c.delayed, c.mean_s, c.p95_s, c.max_s
            );
        }
    }
    files.push(write(dir.join("replay_delay_by_class.csv"), &s)?);

    let mut s = String::from("policy,time_s,time_days,allocated_pct,queued\n");
    for r in &report.runs {
        for t in &r.timeline {
            let _ = writeln!(
                s,
                "{},{},{:.4},{:.3},{}",
                r.policy,
                t.time_s,
                t.time_s as f64 / 86400.0,
                t.allocated_pct,
                t.queued
            );
        }
    }
    files.push(write(dir.join("replay_timeline.csv"), &s)?);

    let series: Vec<ReplaySeries> = report
        .runs
        .iter()
        .map(|r| {
            (
                r.policy,
                r.timeline
                    .iter()
                    .map(|t| (t.time_s as f64 / 86400.0, t.allocated_pct, t.queued as f64))
                    .collect(),
            )
        })
        .collect();
    let title = format!("{} GPUs as {}", report.setup.gpus, report.setup.gpu_model);
    draw_png_and_svg!(files, dir, "replay_allocation", |root| replay_plot(
        root, &series, &title
    ));
    Ok(files)
}

fn plot_error(path: &Path, source: DrawError) -> OutputError {
    OutputError::Plot {
        path: path.to_path_buf(),
        source,
    }
}

/// A drawing error of either backend, kept whole as the cause of [`OutputError::Plot`].
pub type DrawError = Box<dyn std::error::Error + Send + Sync>;

/// Box a drawing error.
fn drawing<E: std::error::Error + Send + Sync + 'static>(e: DrawingAreaErrorKind<E>) -> DrawError {
    Box::new(e)
}

/// The axes of one panel of a plot.
struct Axes<'t> {
    caption: &'t str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    x_desc: &'t str,
    y_desc: &'t str,
    /// Decimals of the y labels.
    y_decimals: usize,
    /// Width of the y label area in pixels.
    y_area: u32,
}

/// A panel with the project's style: caption, light grid, axis labels.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    axes: Axes<'_>,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, DrawError>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(axes.y_area)
        .caption(axes.caption, ("sans-serif", 20))
        .build_cartesian_2d(axes.x, axes.y)
        .map_err(drawing)?;
    let decimals = axes.y_decimals;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.decimals$}"))
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(drawing)?;
    Ok(chart)
}

/// Draw the legend of a panel's labelled series.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    position: SeriesLabelPosition,
) -> Result<(), DrawError>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(drawing)
}

/// Left: allocated share against arrived workload (with the ideal line); right: the
/// unallocated share from 70 % arrived on, where the policies part.
fn saturate_plot<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[(PolicyKind, Vec<(f64, f64)>)],
    title: &str,
) -> Result<(), DrawError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(drawing)?;
    let root = root
        .titled(
            &format!("Saturate (FGD protocol): {title}"),
            ("sans-serif", 24),
        )
        .map_err(drawing)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);

    let mut chart = panel(
        &left,
        Axes {
            caption: "Allocated GPU compute",
            x: 0f64..130f64,
            y: 0f64..100f64,
            x_desc: "Arrived workload (% of GPU compute slices)",
            y_desc: "Allocated (% of slices)",
            y_decimals: 0,
            y_area: 56,
        },
    )?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (100.0, 100.0), (130.0, 100.0)],
            ShapeStyle::from(&BLACK.mix(0.35)).stroke_width(1),
        ))
        .map_err(drawing)?
        .label("ideal")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.35)));
    for (p, pts) in series {
        let c = colour(*p);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(drawing)?
            .label(p.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;

    // Zoom on 95-130 % arrived; the scale follows the policies that stay close to the ideal,
    // and a policy far above it is drawn along the top edge and named in a note.
    const X0: f64 = 95.0;
    let zoom: Vec<(PolicyKind, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(p, pts)| {
            let z = pts
                .iter()
                .filter(|(x, _)| *x >= X0)
                .map(|&(x, y)| (x, 100.0 - y))
                .collect();
            (*p, z)
        })
        .collect();
    let at100 = |pts: &[(f64, f64)]| pts.iter().find(|(x, _)| *x >= 100.0).map_or(0.0, |p| p.1);
    let mut levels: Vec<f64> = zoom.iter().map(|(_, pts)| at100(pts)).collect();
    levels.sort_by(f64::total_cmp);
    let median = levels.get(levels.len() / 2).copied().unwrap_or(1.0);
    let near: f64 = zoom
        .iter()
        .filter(|(_, pts)| at100(pts) <= 3.0 * median.max(0.5))
        .flat_map(|(_, pts)| pts.iter().filter(|p| p.0 >= 100.0).map(|p| p.1))
        .fold(1.0f64, f64::max);
    let ymax = ((near * 1.5) / 0.5).ceil() * 0.5;
    let mut chart = panel(
        &right,
        Axes {
            caption: "Unallocated GPU compute (zoom, lower is better)",
            x: X0..130f64,
            y: 0f64..ymax,
            x_desc: "Arrived workload (% of GPU compute slices)",
            y_desc: "Unallocated (% of slices)",
            y_decimals: 1,
            y_area: 56,
        },
    )?;
    let x0 = (100.0 - ymax).max(X0);
    chart
        .draw_series(LineSeries::new(
            [(x0, 100.0 - x0), (100.0, 0.0), (130.0, 0.0)],
            ShapeStyle::from(&BLACK.mix(0.35)).stroke_width(1),
        ))
        .map_err(drawing)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            [(100.0, 0.0), (100.0, ymax)],
            ShapeStyle::from(&BLACK.mix(0.2)).stroke_width(1),
        )))
        .map_err(drawing)?;
    let mut off = Vec::new();
    for (p, pts) in &zoom {
        if at100(pts) > ymax {
            off.push(format!("{p}: {:.1} % at 100 % (off scale)", at100(pts)));
        }
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(x, y)| (x, y.min(ymax))),
                colour(*p).stroke_width(2),
            ))
            .map_err(drawing)?;
        // The value at 100 % arrived, as a dot.
        let y = at100(pts);
        if y <= ymax {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (100.0, y),
                    4,
                    colour(*p).filled(),
                )))
                .map_err(drawing)?;
        }
    }
    for (i, note) in off.iter().enumerate() {
        chart
            .draw_series(std::iter::once(Text::new(
                note.clone(),
                (X0 + 12.0, ymax * (0.93 - 0.07 * i as f64)),
                ("sans-serif", 16),
            )))
            .map_err(drawing)?;
    }
    root.present().map_err(drawing)?;
    Ok(())
}

/// Left: allocated share over time; right: pods waiting over time.
fn replay_plot<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[ReplaySeries],
    title: &str,
) -> Result<(), DrawError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(drawing)?;
    let root = root
        .titled(&format!("Replay: {title}"), ("sans-serif", 24))
        .map_err(drawing)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let all = || series.iter().flat_map(|(_, pts)| pts.iter());
    let t0 = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let t1 = all().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (t0, t1) = if t0.is_finite() && t1 > t0 {
        (t0, t1)
    } else {
        (0.0, 1.0)
    };
    let qmax = all().map(|p| p.2).fold(1.0f64, f64::max) * 1.05;

    let mut chart = panel(
        &left,
        Axes {
            caption: "Allocated GPU compute",
            x: t0..t1,
            y: 0f64..100f64,
            x_desc: "Time (days since the trace start)",
            y_desc: "Allocated (% of slices)",
            y_decimals: 0,
            y_area: 56,
        },
    )?;
    for (p, pts) in series {
        let c = colour(*p);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|q| (q.0, q.1)),
                c.stroke_width(2),
            ))
            .map_err(drawing)?
            .label(p.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;

    let mut chart = panel(
        &right,
        Axes {
            caption: "Pods waiting",
            x: t0..t1,
            y: 0f64..qmax,
            x_desc: "Time (days since the trace start)",
            y_desc: "Queued pods",
            y_decimals: 0,
            y_area: 64,
        },
    )?;
    for (p, pts) in series {
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|q| (q.0, q.2)),
                colour(*p).stroke_width(2),
            ))
            .map_err(drawing)?;
    }
    root.present().map_err(drawing)?;
    Ok(())
}

/// Line colour of a fractional-mode policy.
fn frac_colour(p: FracPolicy) -> RGBColor {
    match p {
        FracPolicy::Tessera => RGBColor(0xd6, 0x27, 0x28),
        FracPolicy::Fgd => RGBColor(0x1f, 0x77, 0xb4),
        FracPolicy::BestFit => RGBColor(0x2c, 0xa0, 0x2c),
        FracPolicy::GpuPacking => RGBColor(0x94, 0x67, 0xbd),
        FracPolicy::GpuClustering => RGBColor(0x8c, 0x56, 0x4b),
        FracPolicy::DotProduct => RGBColor(0xff, 0x7f, 0x0e),
        FracPolicy::Random => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// Write the fractional-mode CSVs and plot into `dir`; returns the files written.
pub fn write_fractional(report: &FracReport, dir: &Path) -> Result<Vec<PathBuf>, OutputError> {
    ensure_dir(dir)?;
    let mut files = Vec::new();
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
    let mut s = String::from(
        "policy,allocated_pct_at_100,paper_allocated_pct_at_100,unallocated_pct_at_100,allocated_pct_at_100_sd,\
allocated_pct_at_130,paper_allocated_pct_at_130,failed_pods,failed_pods_total,unallocated_vs_fgd_pct,seeds_better_than_fgd\n",
    );
    for p in &report.policies {
        let _ = writeln!(
            s,
            "{},{:.3},{},{:.3},{:.3},{:.3},{},{:.3},{:.3},{},{}",
            p.policy,
            p.allocated_pct_at_100,
            opt(p.paper_allocated_pct_at_100),
            p.unallocated_pct_at_100,
            p.allocated_pct_at_100_sd,
            p.allocated_pct_at_130,
            opt(p.paper_allocated_pct_at_130),
            p.failed_pods,
            p.failed_pods_total,
            p.unallocated_vs_fgd_pct
                .map_or(String::new(), |v| format!("{v:.3}")),
            p.seeds_better_than_fgd
                .map_or(String::new(), |v| v.to_string()),
        );
    }
    files.push(write(dir.join("fractional_summary.csv"), &s)?);

    let mut s = String::from("policy,arrived_pct,allocated_pct,allocated_pct_sd,failed_gpu_pods\n");
    for p in &report.policies {
        for c in &p.curve {
            let _ = writeln!(
                s,
                "{},{},{:.3},{:.3},{:.3}",
                p.policy, c.arrived_pct, c.allocated_pct, c.allocated_pct_sd, c.failed_gpu_pods
            );
        }
    }
    files.push(write(dir.join("fractional_curve.csv"), &s)?);

    let mut s = String::from(
        "policy,seed,pods,allocated_pct_at_100,allocated_pct_at_130,failed_gpu_pods_at_100\n",
    );
    for r in &report.runs {
        let _ = writeln!(
            s,
            "{},{},{},{:.3},{:.3},{}",
            r.policy,
            r.seed,
            r.pods,
            r.allocated_pct_at_100,
            r.allocated_pct_at_130,
            r.failed_gpu_pods_at_100
        );
    }
    files.push(write(dir.join("fractional_runs.csv"), &s)?);

    let title = format!(
        "{} GPUs, {} ({} seeds)",
        report.setup.gpus,
        report.setup.pod_list,
        report.seeds.len()
    );
    // The paper's points only belong on its own pod list.
    let paper = report.setup.pod_list.ends_with(crate::trace::POD_FILE);
    draw_png_and_svg!(files, dir, "fractional_allocation", |root| fractional_plot(
        root, report, &title, paper
    ));
    Ok(files)
}

/// Left: allocated GPU share against arrived workload; right: a zoom on 80–130 % arrived,
/// with the paper's published values at 100 % and 130 % as crosses.
fn fractional_plot<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    report: &FracReport,
    title: &str,
    paper: bool,
) -> Result<(), DrawError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(drawing)?;
    let root = root
        .titled(
            &format!("Fractional sharing (FGD model): {title}"),
            ("sans-serif", 24),
        )
        .map_err(drawing)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let mut chart = panel(
        &left,
        Axes {
            caption: "GPU allocation ratio",
            x: 0f64..130f64,
            y: 0f64..100f64,
            x_desc: "Arrived workload (% of GPU capacity)",
            y_desc: "Allocated (% of GPU capacity)",
            y_decimals: 0,
            y_area: 56,
        },
    )?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (100.0, 100.0), (130.0, 100.0)],
            ShapeStyle::from(&BLACK.mix(0.35)).stroke_width(1),
        ))
        .map_err(drawing)?
        .label("ideal")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.35)));
    for p in &report.policies {
        let c = frac_colour(p.policy);
        chart
            .draw_series(LineSeries::new(
                p.curve
                    .iter()
                    .map(|c| (f64::from(c.arrived_pct), c.allocated_pct)),
                c.stroke_width(2),
            ))
            .map_err(drawing)?
            .label(p.policy.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;

    const X0: f64 = 80.0;
    let lo = report
        .policies
        .iter()
        .flat_map(|p| {
            p.curve
                .iter()
                .filter(|c| f64::from(c.arrived_pct) >= 100.0)
                .map(|c| c.allocated_pct)
                .chain(p.paper_allocated_pct_at_100.into_iter().filter(|_| paper))
        })
        .fold(100.0f64, f64::min);
    let y0 = ((lo - 2.0) / 2.0).floor() * 2.0;
    let y0 = y0.clamp(0.0, 98.0);
    let caption = if paper {
        "Zoom (lines: ours; crosses: the paper's values at 100 % and 130 %)"
    } else {
        "Zoom"
    };
    let mut chart = panel(
        &right,
        Axes {
            caption,
            x: X0..131f64,
            y: y0..100f64,
            x_desc: "Arrived workload (% of GPU capacity)",
            y_desc: "Allocated (% of GPU capacity)",
            y_decimals: 0,
            y_area: 56,
        },
    )?;
    chart
        .draw_series(LineSeries::new(
            [(X0.max(y0), X0.max(y0)), (100.0, 100.0), (131.0, 100.0)],
            ShapeStyle::from(&BLACK.mix(0.35)).stroke_width(1),
        ))
        .map_err(drawing)?;
    for p in &report.policies {
        let c = frac_colour(p.policy);
        chart
            .draw_series(LineSeries::new(
                p.curve
                    .iter()
                    .filter(|c| f64::from(c.arrived_pct) >= X0)
                    .map(|c| (f64::from(c.arrived_pct), c.allocated_pct.max(y0))),
                c.stroke_width(2),
            ))
            .map_err(drawing)?;
        if let (true, Some(a), Some(b)) = (
            paper,
            p.paper_allocated_pct_at_100,
            p.paper_allocated_pct_at_130,
        ) {
            chart
                .draw_series(
                    [(100.0, a), (130.0, b)].map(|pt| Cross::new(pt, 7, c.stroke_width(3))),
                )
                .map_err(drawing)?;
        }
    }
    root.present().map_err(drawing)?;
    Ok(())
}

/// Write the hybrid summary CSV into `dir`; returns the files written.
pub fn write_hybrid(report: &HybridReport, dir: &Path) -> Result<Vec<PathBuf>, OutputError> {
    ensure_dir(dir)?;
    let mut s = String::from(
        "policy,isolation_share,allocated_pct_at_100,unallocated_pct_at_100,allocated_pct_at_100_sd,\
allocated_pct_at_130,failed_pods,mig_gpus,mps_gpus\n",
    );
    for p in &report.policies {
        let _ = writeln!(
            s,
            "{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.1},{:.1}",
            p.policy,
            report.isolation_share,
            p.allocated_pct_at_100,
            p.unallocated_pct_at_100,
            p.allocated_pct_at_100_sd,
            p.allocated_pct_at_130,
            p.failed_pods,
            p.mig_gpus,
            p.mps_gpus
        );
    }
    Ok(vec![write(dir.join("hybrid_summary.csv"), &s)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Setup;

    /// A plot that cannot be written is an `OutputError::Plot` naming the file, with the
    /// drawing backend's error kept as its cause (not flattened into text).
    #[test]
    fn a_plot_that_cannot_be_written_keeps_the_drawing_error_as_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the PNG goes: the bitmap backend cannot save it.
        std::fs::create_dir(dir.path().join("saturate_allocation.png")).unwrap();
        let report = SaturateReport {
            setup: Setup {
                mode: "saturate",
                gpu_model: "h100-80gb".into(),
                nodes: 1,
                gpus: 1,
                capacity_slices: 7,
                trace_pods: 0,
                static_mig_partition: None,
            },
            seeds: vec![1],
            policies: Vec::new(),
            runs: Vec::new(),
        };
        let e = write_saturate(&report, dir.path()).unwrap_err();
        assert!(
            matches!(&e, OutputError::Plot { path, .. } if path.ends_with("saturate_allocation.png")),
            "{e}"
        );
        let cause = std::error::Error::source(&e).expect("the drawing error is kept");
        assert!(e.to_string().ends_with(&cause.to_string()), "{e}");
    }
}
