//! `tessera catalog ...`: import a model from nvidia-smi output; print the catalog.

use std::path::PathBuf;
use std::process::ExitCode;

use tessera_model::Catalog;

use crate::output::{print_out, CliError, Ctx};

/// Catalog subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CatalogCmd {
    /// Print the effective catalog (built-in plus `--catalog` files) in the catalog format.
    Show,
}

/// Run a catalog subcommand.
pub fn run(cmd: &CatalogCmd, ctx: &Ctx) -> Result<ExitCode, CliError> {
    match cmd {
        CatalogCmd::Show => {
            let _ = PathBuf::new();
            let c: &Catalog = &ctx.catalog;
            print_out(&c.to_yaml());
            Ok(ExitCode::SUCCESS)
        }
    }
}
