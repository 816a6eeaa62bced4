//! `tessera profiles --gpu KEY`: GPU-instance profiles like `nvidia-smi mig -lgip`, with their
//! placements like `-lgipp`.

use std::process::ExitCode;

use serde::Serialize;
use tessera_model::Engines;

use crate::output::{emit, escape_cell, table, CliError, Ctx, Format};

/// Arguments of `tessera profiles`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// GPU model: key (`h100-80gb`), product name or PCI device ID.
    #[arg(long)]
    pub gpu: String,
}

/// One profile as `profiles` prints it (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct ProfileRow {
    /// Profile name, e.g. `3g.40gb`.
    pub name: String,
    /// `-lgip` profile ID.
    pub id: Option<u32>,
    /// NVML profile index constant.
    pub nvml_index: Option<u32>,
    /// Compute slices.
    pub compute_slices: u8,
    /// Memory slices (placement size).
    pub memory_slices: u8,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// SMs.
    pub sm: Option<u32>,
    /// Engines.
    pub engines: Engines,
    /// Maximum instances per GPU.
    pub max: u8,
    /// Allowed start indices.
    pub placements: Vec<u8>,
    /// Fields that were inferred rather than read from a capture.
    pub inferred: Vec<String>,
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "?".into())
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let m = ctx.model(&args.gpu)?;
    let rows: Vec<ProfileRow> = m
        .profiles
        .iter()
        .map(|p| ProfileRow {
            name: p.name.clone(),
            id: p.id,
            nvml_index: p.nvml_index,
            compute_slices: p.compute_slices,
            memory_slices: p.memory_slices,
            memory_mib: p.memory_mib,
            sm: p.sm,
            engines: p.engines,
            max: p.max,
            placements: p.placements.clone(),
            inferred: p.inferred.clone(),
        })
        .collect();
    emit(ctx.output, &rows, || {
        // The engine counts only with -o wide, so the default table fits 80 columns.
        let wide = ctx.output == Format::Wide;
        let mut header = vec!["PROFILE", "ID", "MAX", "MEMORY", "SM"];
        if wide {
            header.extend(["DEC", "ENC", "CE", "JPEG", "OFA"]);
        }
        header.push("PLACEMENTS");
        let mut t = table(&header);
        for r in &rows {
            let starts: Vec<String> = r.placements.iter().map(|s| s.to_string()).collect();
            let mut name = format!("MIG {}", r.name);
            if !r.inferred.iter().all(|f| f == "nvml_index") {
                name.push_str(" *");
            }
            let mut row = vec![
                name,
                opt(r.id),
                r.max.to_string(),
                r.memory_mib
                    .map(|m| format!("{:.2} GiB", m as f64 / 1024.0))
                    .unwrap_or_else(|| "?".into()),
                opt(r.sm),
            ];
            if wide {
                row.extend([
                    opt(r.engines.dec),
                    opt(r.engines.enc),
                    opt(r.engines.ce),
                    opt(r.engines.jpeg),
                    opt(r.engines.ofa),
                ]);
            }
            row.push(format!("{{{}}}:{}", starts.join(","), r.memory_slices));
            t.add_row(row);
        }
        // The product names one per line: a model can have several long ones.
        let mut s = format!(
            "{}: {} compute slices, {} memory slices\n{}\n{t}\n",
            m.key,
            m.compute_slices,
            m.memory_slices,
            m.names
                .iter()
                .map(|n| escape_cell(n))
                .collect::<Vec<_>>()
                .join("\n")
        );
        if rows
            .iter()
            .any(|r| !r.inferred.iter().all(|f| f == "nvml_index"))
        {
            s.push_str(
                "* some numbers inferred, not read from a capture (see -o json `inferred`)\n",
            );
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}
