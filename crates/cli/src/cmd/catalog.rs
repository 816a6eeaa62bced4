//! `tessera catalog ...`: import a model from `nvidia-smi mig` output; print the catalog.

use std::path::PathBuf;
use std::process::ExitCode;

use tessera_model::import::import_model_for_gpu;

use crate::output::{print_out, read_file, CliError, Ctx, Format};

/// Catalog subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CatalogCmd {
    /// Build a catalog entry from real `nvidia-smi mig -lgip`/`-lgipp`/`-lcip` output and print
    /// it in the catalog's format (save it and pass it with `--catalog FILE`).
    Import(ImportArgs),
    /// Print the effective catalog (built-in plus `--catalog` files) in the catalog's format.
    Show,
}

/// Arguments of `tessera catalog import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// File with the output of `nvidia-smi mig -lgip`.
    #[arg(long, value_name = "FILE")]
    pub lgip: PathBuf,
    /// File with the output of `nvidia-smi mig -lgipp`.
    #[arg(long, value_name = "FILE")]
    pub lgipp: PathBuf,
    /// File with the output of `nvidia-smi mig -lcip` (optional: compute-instance profiles).
    #[arg(long, value_name = "FILE")]
    pub lcip: Option<PathBuf>,
    /// Key of the new model, e.g. `h100-nvl-94gb` (lowercase letters, digits, `-`, `.`, `_`).
    #[arg(long)]
    pub key: String,
    /// GPU index whose rows to use when the output lists several GPUs (default: the lowest).
    #[arg(long)]
    pub gpu: Option<u32>,
    /// Product name as NVML reports it (`nvidia-smi --query-gpu=name`), for lookups by name.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// PCI device ID (`nvidia-smi --query-gpu=pci.device_id`), for lookups by ID.
    #[arg(long = "pci-id", value_name = "ID")]
    pub pci_ids: Vec<String>,
}

/// Run a catalog subcommand.
pub fn run(cmd: &CatalogCmd, ctx: &Ctx) -> Result<ExitCode, CliError> {
    match cmd {
        CatalogCmd::Import(a) => import(a, ctx),
        CatalogCmd::Show => {
            print_catalog(ctx.output, &ctx.catalog)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn import(a: &ImportArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let lgip = read_file(&a.lgip)?;
    let lgipp = read_file(&a.lgipp)?;
    let lcip = a.lcip.as_deref().map(read_file).transpose()?;
    let mut imported = import_model_for_gpu(&a.key, a.gpu, &lgip, &lgipp, lcip.as_deref())
        .map_err(|e| {
            CliError::Usage(format!(
                "cannot import ({} / {}): {e}",
                a.lgip.display(),
                a.lgipp.display()
            ))
        })?;
    imported.model.names.extend(a.names.iter().cloned());
    imported
        .model
        .pci_device_ids
        .extend(a.pci_ids.iter().cloned());
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(known) = ctx
        .catalog
        .models
        .iter()
        .find(|m| m.key == imported.model.key)
    {
        eprintln!(
            "note: `{}` is already in the catalog; loading this file with --catalog replaces it",
            known.key
        );
    }
    print_catalog(ctx.output, &imported.catalog())?;
    Ok(ExitCode::SUCCESS)
}

fn print_catalog(format: Format, c: &tessera_model::Catalog) -> Result<(), CliError> {
    let text = match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(c)
                .map_err(|e| CliError::Other(format!("cannot encode JSON: {e}")))?;
            s.push('\n');
            s
        }
        // The catalog format is YAML; table mode prints it too.
        Format::Table | Format::Wide | Format::Plain | Format::Yaml => c.to_yaml(),
    };
    print_out(&text);
    Ok(())
}
