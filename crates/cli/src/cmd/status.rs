//! `tessera status`: every GPU of the daemon with its layout drawn on the slice grid and who
//! holds what (names of other users' holders are shown to root only).

use std::process::ExitCode;

use tessera_api::wire::{format_mib, GpuView, StatusView};
use tessera_model::{Catalog, Placed};

use super::daemon_client::{block_on, client_error, SocketArg};
use crate::output::{emit, escape_cell, CliError, Ctx};
use crate::render::draw_layout;

/// Arguments of `tessera status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub socket: SocketArg,
}

fn holder(lease: Option<u64>, user: Option<&str>, busy: bool) -> String {
    match (lease, user) {
        (Some(l), Some(u)) => format!("#{l} {}", escape_cell(u)),
        _ if busy => "busy".into(),
        _ => "idle".into(),
    }
}

/// One GPU, drawn.
pub fn gpu_text(catalog: &Catalog, g: &GpuView) -> String {
    let mut out = format!("GPU {}  {}  {}", g.index, g.model, g.mode);
    if g.drained {
        out.push_str("  DRAINED");
    }
    if let Some(r) = g.reserved_for {
        out.push_str(&format!("  (held for request #{r})"));
    }
    out.push('\n');
    match g.mode.as_str() {
        "mig" => {
            let Some(model) = catalog.get(&g.model) else {
                out.push_str("  (model not in this catalog)\n");
                return out;
            };
            let items: Vec<(Placed, String)> = g
                .instances
                .iter()
                .filter_map(|i| {
                    let p = model.profile_named(&i.profile)?;
                    Some((
                        Placed::new(p, i.start),
                        holder(i.lease, i.user.as_deref(), i.busy),
                    ))
                })
                .collect();
            if items.is_empty() {
                out.push_str("  no MIG instances (the whole GPU is free)\n");
            } else {
                for line in draw_layout(model, &items).lines() {
                    out.push_str("  ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        "mps" => {
            let mem: u64 = g.shares.iter().map(|s| s.memory_mib).sum();
            let sm: u32 = g.shares.iter().map(|s| u32::from(s.sm_percent)).sum();
            out.push_str(&format!(
                "  {} of {} clients, memory {} of {}, SM {}%\n",
                g.shares.len(),
                g.capacity,
                format_mib(mem),
                format_mib(g.memory_mib),
                sm
            ));
            let width = 40usize;
            let filled = if g.memory_mib == 0 {
                0
            } else {
                ((mem as f64 / g.memory_mib as f64) * width as f64).round() as usize
            };
            out.push_str(&format!(
                "  [{}{}]\n",
                "█".repeat(filled.min(width)),
                "·".repeat(width - filled.min(width))
            ));
            for s in &g.shares {
                out.push_str(&format!(
                    "  - {}: {} {}%\n",
                    holder(s.lease, s.user.as_deref(), true),
                    format_mib(s.memory_mib),
                    s.sm_percent
                ));
            }
        }
        _ => {
            out.push_str(&format!(
                "  {} of {} replicas\n",
                g.shares.len(),
                g.capacity
            ));
            let cells: Vec<String> = (0..g.capacity as usize)
                .map(|i| match g.shares.get(i) {
                    Some(s) => format!("[{}]", holder(s.lease, s.user.as_deref(), true)),
                    None => "[free]".to_string(),
                })
                .collect();
            out.push_str(&format!("  {}\n", cells.join(" ")));
        }
    }
    if let Some(e) = &g.last_error {
        out.push_str(&format!("  last error: {}\n", escape_cell(e)));
    }
    out
}

/// The whole status, drawn.
pub fn status_text(catalog: &Catalog, s: &StatusView) -> String {
    let mut out = String::new();
    for g in &s.gpus {
        out.push_str(&gpu_text(catalog, g));
        out.push('\n');
    }
    out.push_str(&format!(
        "{} leased, {} queued, {} re-partitions so far ({})\n",
        s.leased, s.queued, s.repartitions, s.backend
    ));
    out
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let client = args.socket.client();
    let status = block_on(client.status())?.map_err(client_error)?;
    emit(ctx.output, &status, || status_text(&ctx.catalog, &status))?;
    Ok(ExitCode::SUCCESS)
}
