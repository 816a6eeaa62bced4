//! `tessera check --gpu KEY SPEC...`: is this MIG layout valid, and if not, which rules break?

use std::process::ExitCode;

use serde::Serialize;

use crate::output::{emit, CliError, Ctx};
use crate::render::draw_layout;

/// Arguments of `tessera check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// GPU model: key, product name or PCI device ID.
    #[arg(long)]
    pub gpu: String,
    /// Instances as PROFILE@START, e.g. `3g.40gb@0 2g.20gb@4 1g.10gb@6`.
    #[arg(value_name = "SPEC")]
    pub specs: Vec<String>,
}

/// The `check` result (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct CheckOut {
    /// Whether the layout obeys every rule.
    pub valid: bool,
    /// One message per broken rule, naming the instances involved.
    pub errors: Vec<String>,
}

/// Run the command: exit 0 when valid, 1 when a rule breaks, 2 on unknown GPU or profile.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let m = ctx.model(&args.gpu)?;
    let mut items = Vec::new();
    for s in &args.specs {
        items.push(
            m.parse_spec(s)
                .map_err(|e| CliError::Usage(e.to_string()))?,
        );
    }
    let errors: Vec<String> = m.validate(&items).iter().map(|v| v.to_string()).collect();
    let out = CheckOut {
        valid: errors.is_empty(),
        errors,
    };
    emit(ctx.output, &out, || {
        let mut s = String::new();
        if out.valid {
            let drawn: Vec<_> = items.iter().map(|&p| (p, String::new())).collect();
            s.push_str(&draw_layout(m, &drawn));
            s.push_str(&format!("valid layout for {}\n", m.key));
        } else {
            s.push_str(&format!("invalid layout for {}:\n", m.key));
            for e in &out.errors {
                s.push_str(&format!("  - {e}\n"));
            }
        }
        s
    })?;
    Ok(if out.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
