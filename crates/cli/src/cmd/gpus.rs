//! `tessera gpus`: the catalog's models, one line each.

use std::process::ExitCode;

use serde::Serialize;

use crate::output::{emit, table, CliError, Ctx, Format};

/// Arguments of `tessera gpus`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// One model as `gpus` prints it (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct GpuRow {
    /// Catalog key.
    pub key: String,
    /// Other accepted keys.
    pub aliases: Vec<String>,
    /// NVML product names.
    pub names: Vec<String>,
    /// PCI device IDs.
    pub pci_device_ids: Vec<String>,
    /// Compute slices.
    pub compute_slices: u8,
    /// Memory slices of the placement grid.
    pub memory_slices: u8,
    /// Device memory (MiB), when known.
    pub memory_mib: Option<u64>,
    /// Number of GPU-instance profiles.
    pub profiles: usize,
    /// How much of the entry was read from real captures.
    pub confidence: Option<String>,
}

/// Run the command.
pub fn run(_args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let rows: Vec<GpuRow> = ctx
        .catalog
        .models
        .iter()
        .map(|m| GpuRow {
            key: m.key.clone(),
            aliases: m.aliases.clone(),
            names: m.names.clone(),
            pci_device_ids: m.pci_device_ids.clone(),
            compute_slices: m.compute_slices,
            memory_slices: m.memory_slices,
            memory_mib: m.memory_mib(),
            profiles: m.profiles.len(),
            confidence: m.confidence.clone(),
        })
        .collect();
    emit(ctx.output, &rows, || {
        // Product names and PCI IDs only with -o wide: a few long names would not fit 80
        // columns.
        let wide = ctx.output == Format::Wide;
        let mut header = vec![
            "KEY",
            "ALIASES",
            "COMPUTE",
            "MEM SLICES",
            "MEMORY",
            "PROFILES",
        ];
        if wide {
            header.extend(["PCI IDS", "NAMES"]);
        }
        let mut t = table(&header);
        for r in &rows {
            let mut row = vec![
                r.key.clone(),
                if r.aliases.is_empty() {
                    "-".into()
                } else {
                    r.aliases.join(",")
                },
                r.compute_slices.to_string(),
                r.memory_slices.to_string(),
                r.memory_mib
                    .map(|m| format!("{:.0} GiB", m as f64 / 1024.0))
                    .unwrap_or_else(|| "?".into()),
                r.profiles.to_string(),
            ];
            if wide {
                row.push(r.pci_device_ids.join(","));
                row.push(r.names.join(", "));
            }
            t.add_row(row);
        }
        format!("{t}\n")
    })?;
    Ok(ExitCode::SUCCESS)
}
