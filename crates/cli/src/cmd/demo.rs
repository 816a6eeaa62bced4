//! `tessera demo`: the daemon in-process on a simulated fleet with a scripted mix of users and
//! requests; a live view of the layouts, the queue and a progress bar (plain lines when stdout
//! is not a terminal), then a summary.

use std::io::IsTerminal;
use std::process::ExitCode;

use super::demo_run::{run_demo, DemoError, DemoOptions, Frame, Summary};
use tessera_server::wire::RequestState;

use super::ps::slice_text;
use super::status::gpu_text;
use crate::output::{emit, table, CliError, Ctx, Format};

/// Arguments of `tessera demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run this many times faster than real time (waits are reported in scenario seconds).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Length of the scenario's arrivals, in scenario seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Seed of the scripted requests.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Plain periodic lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The summary as printed: times and shares rounded to two decimals.
fn rounded(mut s: Summary) -> Summary {
    for x in [
        &mut s.mean_wait_s,
        &mut s.p95_wait_s,
        &mut s.max_wait_s,
        &mut s.makespan_s,
    ] {
        *x = round2(*x);
    }
    for g in &mut s.gpus {
        g.utilisation = round2(g.utilisation);
    }
    s
}

fn summary_text(s: &Summary) -> String {
    let mut t = table(&["SUMMARY", ""]);
    t.add_row(vec![
        "requests served".to_string(),
        format!("{} of {}", s.served, s.requests),
    ]);
    t.add_row(vec![
        "mean wait".to_string(),
        format!("{:.1}s", s.mean_wait_s),
    ]);
    t.add_row(vec![
        "p95 wait".to_string(),
        format!("{:.1}s", s.p95_wait_s),
    ]);
    t.add_row(vec![
        "longest wait".to_string(),
        format!("{:.1}s", s.max_wait_s),
    ]);
    t.add_row(vec![
        "MIG re-partitions".to_string(),
        s.repartitions.to_string(),
    ]);
    let by: Vec<String> = s
        .leases_by_type
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    t.add_row(vec!["leases".to_string(), by.join(", ")]);
    for g in &s.gpus {
        let unit = match g.mode.as_str() {
            "mig" => "of compute slices",
            "mps" => "of SMs",
            _ => "of replicas",
        };
        t.add_row(vec![
            format!("GPU {} ({}) utilisation", g.gpu, g.mode),
            format!("{:.0}% {unit}", g.utilisation * 100.0),
        ]);
    }
    t.add_row(vec![
        "all done after".to_string(),
        format!("{:.1}s", s.makespan_s),
    ]);
    format!("{t}\n")
}

/// The live view of one frame (multi-line).
pub fn frame_text(ctx: &Ctx, f: &Frame) -> String {
    let mut out = String::new();
    for g in &f.status.gpus {
        out.push_str(&gpu_text(&ctx.catalog, g));
    }
    let queued: Vec<String> = f
        .active
        .iter()
        .filter(|v| v.state == RequestState::Queued)
        .map(|v| format!("#{} {} {}", v.id, v.user, slice_text(v)))
        .collect();
    let shown: Vec<String> = queued.iter().take(6).cloned().collect();
    out.push_str(&format!(
        "queue ({}): {}{}\n",
        queued.len(),
        if shown.is_empty() {
            "empty".to_string()
        } else {
            shown.join(", ")
        },
        if queued.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    ));
    out
}

fn plain_line(f: &Frame) -> String {
    let running = f
        .active
        .iter()
        .filter(|v| v.state == RequestState::Leased)
        .count();
    let queued = f.active.len() - running;
    let mut gpus = Vec::new();
    for g in &f.status.gpus {
        let desc = match g.mode.as_str() {
            "mig" => {
                let items: Vec<String> = g
                    .instances
                    .iter()
                    .map(|i| {
                        let busy = if i.busy { "(busy)" } else { "" };
                        format!("{}@{}{busy}", i.profile, i.start)
                    })
                    .collect();
                format!("gpu{} mig [{}]", g.index, items.join(" "))
            }
            "mps" => format!("gpu{} mps {} clients", g.index, g.shares.len()),
            _ => format!("gpu{} share {}/{}", g.index, g.busy, g.capacity),
        };
        gpus.push(desc);
    }
    format!(
        "t={:5.1}s done {:>2}/{} running {:>2} queued {:>2} re-partitions {:>2} | {}",
        f.t_s,
        f.finished,
        f.total,
        running,
        queued,
        f.status.repartitions,
        gpus.join(" | ")
    )
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    if !(args.speed > 0.0 && args.speed <= 1000.0) {
        return Err(CliError::Usage(
            "--speed must be above 0 and at most 1000".into(),
        ));
    }
    if !(args.duration >= 1.0 && args.duration <= 3600.0) {
        return Err(CliError::Usage(
            "--duration must be between 1 and 3600 seconds".into(),
        ));
    }
    let live = ctx.output == Format::Table && !args.plain && std::io::stdout().is_terminal();
    let opts = DemoOptions {
        duration_s: args.duration,
        speed: args.speed,
        seed: args.seed,
        frame_ms: if live { 200 } else { 100 },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    let bar = if live {
        let pb = indicatif::ProgressBar::new(1);
        let style = indicatif::ProgressStyle::with_template(
            "{msg}\n[{bar:40.cyan/blue}] {pos}/{len} requests done",
        )
        .map_err(|e| CliError::Other(e.to_string()))?
        .progress_chars("█▉▊▋▌▍▎▏ ");
        pb.set_style(style);
        Some(pb)
    } else {
        None
    };
    let print_plain = ctx.output == Format::Table && !live;
    if print_plain || live {
        crate::output::print_out(&format!(
            "tessera demo: 3 simulated H100 80GB (GPU 0 MIG, GPU 1 MPS, GPU 2 time-sliced ×4), {} scripted requests from 5 users over {}s of scenario time{}\n",
            super::demo_run::script(args.duration, args.seed).len(),
            args.duration,
            if args.speed != 1.0 { format!(", {}× speed", args.speed) } else { String::new() }
        ));
    }
    let mut last_plain = -1.0f64;
    let every = (args.duration / 15.0).max(1.0);
    let summary = rt
        .block_on(run_demo(opts, &ctx.catalog, |f| {
            if let Some(pb) = &bar {
                pb.set_length(f.total as u64);
                pb.set_position(f.finished as u64);
                pb.set_message(format!(
                    "t = {:.1}s of {:.0}s   re-partitions: {}\n{}",
                    f.t_s,
                    f.duration_s,
                    f.status.repartitions,
                    frame_text(ctx, f)
                ));
            } else if print_plain && (f.t_s - last_plain >= every || f.finished == f.total) {
                last_plain = f.t_s;
                crate::output::print_out(&format!("{}\n", plain_line(f)));
            }
        }))
        .map_err(|e| match e {
            DemoError::Usage(m) => CliError::Usage(m),
            DemoError::Server(e) => CliError::Server(e),
            other => CliError::Failed(crate::output::error_chain(&other)),
        })?;
    if let Some(pb) = bar {
        pb.finish();
    }
    let out = rounded(summary);
    emit(ctx.output, &out, || summary_text(&out))?;
    Ok(ExitCode::SUCCESS)
}
