//! `tessera layouts --gpu KEY [--maximal]`: every valid MIG layout of a model.

use std::process::ExitCode;

use serde::Serialize;

use crate::output::{emit, CliError, Ctx};
use crate::render::draw_layout;

/// Arguments of `tessera layouts`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// GPU model: key, product name or PCI device ID.
    #[arg(long)]
    pub gpu: String,
    /// Only the maximal layouts (no instance can be added).
    #[arg(long)]
    pub maximal: bool,
    /// Leave out layouts with `+me`, `+me.all`, `-me` or `+gfx` profiles.
    #[arg(long)]
    pub standard_only: bool,
}

/// One instance of a layout (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct InstanceOut {
    /// Profile name.
    pub profile: String,
    /// Placement start.
    pub start: u8,
}

/// The `layouts` result (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct LayoutsOut {
    /// The GPU model key.
    pub gpu: String,
    /// Whether only maximal layouts are listed.
    pub maximal: bool,
    /// Number of layouts.
    pub count: usize,
    /// The layouts, each a list of instances sorted by start.
    pub layouts: Vec<Vec<InstanceOut>>,
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let m = ctx.model(&args.gpu)?;
    let mut all = if args.maximal {
        m.maximal_layouts()
    } else {
        m.enumerate_layouts()
    };
    if args.standard_only {
        all.retain(|l| {
            l.items()
                .iter()
                .all(|p| !m.profile(p.profile).name.contains(['+', '-']))
        });
    }
    let out = LayoutsOut {
        gpu: m.key.clone(),
        maximal: args.maximal,
        count: all.len(),
        layouts: all
            .iter()
            .map(|l| {
                l.items()
                    .iter()
                    .map(|p| InstanceOut {
                        profile: m.profile(p.profile).name.clone(),
                        start: p.start,
                    })
                    .collect()
            })
            .collect(),
    };
    emit(ctx.output, &out, || {
        let mut s = String::new();
        for (i, l) in all.iter().enumerate() {
            let specs: Vec<String> = l.items().iter().map(|&p| m.spec(p)).collect();
            let title = if specs.is_empty() {
                "(empty)".to_string()
            } else {
                specs.join(" ")
            };
            s.push_str(&format!("#{:<4} {title}\n", i + 1));
            let items: Vec<_> = l.items().iter().map(|&p| (p, String::new())).collect();
            for line in draw_layout(m, &items).lines() {
                s.push_str(&format!("      {line}\n"));
            }
        }
        s.push_str(&format!(
            "{} {} layout{} of {}\n",
            all.len(),
            if args.maximal { "maximal" } else { "valid" },
            if all.len() == 1 { "" } else { "s" },
            m.key
        ));
        s
    })?;
    Ok(ExitCode::SUCCESS)
}
