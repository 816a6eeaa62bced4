//! What every command shares: the output format, the resolved context, the CLI error type and
//! exit codes, and printing that treats a closed pipe as success.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;
use serde::Serialize;
use tessera_model::{Catalog, CatalogError, GpuModel};

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned tables and pictures for people.
    #[default]
    Table,
    /// JSON, one document.
    Json,
    /// YAML, one document.
    Yaml,
}

/// Everything a command needs that was resolved from global flags.
pub struct Ctx {
    /// The built-in catalog plus any `--catalog` files.
    pub catalog: Catalog,
    /// The requested output format.
    pub output: Format,
}

impl Ctx {
    /// Look up a GPU model by key, alias, product name or PCI ID.
    pub fn model(&self, query: &str) -> Result<&GpuModel, CliError> {
        Ok(self.catalog.lookup(query)?)
    }
}

/// Errors a command reports; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: a flag, file or value the user must fix (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A catalog problem (exit 2).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A file could not be read or written (exit 2).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Anything else from a library, with context (exit 2).
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(2)
    }

    /// An I/O error on a path.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        CliError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Read a text file, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::io(path, e))
}

/// The built-in catalog merged with each `--catalog` file in order.
pub fn load_catalog(files: &[PathBuf]) -> Result<Catalog, CliError> {
    let mut catalog = Catalog::builtin().clone();
    for f in files {
        let text = read_file(f)?;
        let extra = Catalog::from_yaml(&text)
            .map_err(|e| CliError::Usage(format!("{}: {e}", f.display())))?;
        catalog.merge(extra);
    }
    Ok(catalog)
}

/// Print `value` as JSON or YAML, or the table text from `table` in table mode.
pub fn emit<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let text = match format {
        Format::Table => table(),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(value)
                .map_err(|e| CliError::Other(format!("cannot encode JSON: {e}")))?;
            s.push('\n');
            s
        }
        Format::Yaml => serde_yaml_ng::to_string(value)
            .map_err(|e| CliError::Other(format!("cannot encode YAML: {e}")))?,
    };
    print_out(&text);
    Ok(())
}

/// Write to stdout; a closed pipe (e.g. `| head`) ends the process quietly with success.
pub fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let r = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(2);
    }
}

/// A new table with the project's style.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    t
}
