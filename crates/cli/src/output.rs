//! What every command shares: the output format, the resolved context, the CLI error type and
//! exit codes, and printing that treats a closed pipe as success.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use clap::ValueEnum;
use serde::Serialize;
use tessera_model::{Catalog, CatalogError, GpuModel};

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned tables and pictures for people, wrapped to fit the terminal (80 columns when
    /// stdout is not a terminal).
    #[default]
    Table,
    /// Like `table`, with extra columns and no wrapping.
    Wide,
    /// Tables without borders or wrapping, one row per line, columns separated by spaces
    /// (for scripts: `awk`, `cut`).
    Plain,
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

/// Errors a command reports. The exit code follows the error's kind: 2 for bad input (a flag,
/// file, value or request the user must fix), 1 for a failure while running (the daemon cannot
/// be reached or failed, a backend or database error). See `docs/cli.md`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: a flag, file or value the user must fix (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A catalog problem (exit 2).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A file could not be read or written (exit 2: a path the user gave).
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
    /// A failure while running, not the input's fault (exit 1).
    #[error("{0}")]
    Failed(String),
    /// A call to the daemon failed: refused as bad (4xx: exit 2), or the daemon is unreachable
    /// or failed (exit 1).
    #[error(transparent)]
    Client(#[from] tessera_api::client::ClientError),
    /// The daemon (`tessera serve`, `tessera demo`) could not start or stopped: a
    /// configuration that does not fit (exit 2) or a failure while running (exit 1).
    #[error(transparent)]
    Server(#[from] tessera_server::ServerError),
}

impl CliError {
    /// Whether the input is at fault (exit 2) rather than the run (exit 1).
    pub fn is_usage(&self) -> bool {
        use tessera_api::client::ClientError;
        match self {
            CliError::Usage(_)
            | CliError::Catalog(_)
            | CliError::Io { .. }
            | CliError::Other(_) => true,
            CliError::Failed(_) => false,
            CliError::Client(ClientError::Api { status, .. }) => (400..500).contains(status),
            CliError::Client(_) => false,
            CliError::Server(e) => e.kind() == tessera_server::error::ErrorKind::Usage,
        }
    }

    /// The process exit code for this error: 2 for bad input, 1 for a failure while running.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(if self.is_usage() { 2 } else { 1 })
    }

    /// An I/O error on a path.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        CliError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An error and its causes as one line, each cause once: a cause whose text the message
/// already holds (many errors quote their cause) is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !t.is_empty() && !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
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
        Format::Table | Format::Wide | Format::Plain => table(),
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

/// The table style every [`table`] uses; set once from `-o` in `main`.
static TABLE_STYLE: OnceLock<Format> = OnceLock::new();

/// Choose the table style for this process (`-o table|wide|plain`; JSON/YAML keep `table`).
pub fn set_table_style(format: Format) {
    let _ = TABLE_STYLE.set(format);
}

/// Columns a default table may use when stdout is not a terminal.
pub const DEFAULT_WIDTH: u16 = 80;

/// A table whose cells are escaped (see [`escape_cell`]) and whose style follows `-o`.
pub struct Table {
    inner: comfy_table::Table,
    plain: bool,
}

impl Table {
    /// Add one row; every cell is escaped.
    pub fn add_row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.inner
            .add_row(cells.into_iter().map(|c| escape_cell(c.as_ref())));
        self
    }
}

impl Table {
    /// Never wrap column `col` (e.g. UUIDs, which must stay whole to be copied); the other
    /// columns wrap instead.
    pub fn keep_whole(&mut self, col: usize) -> &mut Self {
        if let Some(c) = self.inner.column_mut(col) {
            c.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
        }
        self
    }

    /// Never wrap: for wide reports (the simulator's policy comparison) whose every column
    /// matters and which read worse wrapped than wide; `-o json` suits scripts.
    pub fn no_wrap(&mut self) -> &mut Self {
        self.inner
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        self
    }

    /// Make a wrapped table `by` columns narrower, for a table printed indented.
    pub fn narrower(&mut self, by: u16) -> &mut Self {
        if !matches!(
            self.inner.content_arrangement(),
            comfy_table::ContentArrangement::Disabled
        ) {
            if let Some(w) = self.inner.width() {
                self.inner.set_width(w.saturating_sub(by));
            }
        }
        self
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.plain {
            return write!(f, "{}", self.inner);
        }
        // Borderless: comfy-table pads every cell; drop the trailing padding of each line.
        let text = self.inner.to_string();
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// A new table with the project's style: box borders, wrapped to the terminal's width (or
/// [`DEFAULT_WIDTH`] columns when stdout is not a terminal) for `-o table`; unwrapped for
/// `-o wide`; no borders and one space between columns for `-o plain`.
pub fn table(header: &[&str]) -> Table {
    let style = TABLE_STYLE.get().copied().unwrap_or_default();
    let mut t = comfy_table::Table::new();
    let plain = style == Format::Plain;
    if plain {
        t.load_preset(comfy_table::presets::NOTHING);
    } else {
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    }
    t.set_header(header.iter().copied());
    if plain {
        // kubectl-style: no left padding, two spaces between columns.
        for col in t.column_iter_mut() {
            col.set_padding((0, 2));
        }
    }
    if style == Format::Table {
        t.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
        if !std::io::stdout().is_terminal() {
            t.set_width(DEFAULT_WIDTH);
        }
    } else {
        t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    }
    Table { inner: t, plain }
}

/// Make text safe to print in a terminal: control characters (C0, DEL, C1; including newline,
/// tab and ESC) and the Unicode bidirectional overrides are written as escapes (`\n`, `\t`,
/// `\e`, `\x07`, `\u{202e}`), so a cell can neither move the cursor, retitle the terminal nor
/// split a row. Everything else is kept as is.
pub fn escape_cell(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x1b' => out.push_str("\\e"),
            c if (c as u32) < 0x100 && needs_escape(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exit codes by kind: the daemon's 4xx answers and configuration errors are bad input
    /// (2); an unreachable or failing daemon and backend failures are failures (1).
    #[test]
    fn the_exit_code_follows_the_errors_kind() {
        use tessera_api::client::ClientError;
        use tessera_server::ServerError;
        let api = |status| {
            CliError::Client(ClientError::Api {
                status,
                message: "m".into(),
            })
        };
        assert!(api(404).is_usage() && api(409).is_usage() && api(400).is_usage());
        assert!(!api(500).is_usage() && !api(503).is_usage());
        let connect = CliError::Client(ClientError::Connect {
            socket: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert!(!connect.is_usage());
        assert!(CliError::Server(ServerError::Config {
            path: "c.yaml".into(),
            problem: "p".into()
        })
        .is_usage());
        assert!(CliError::Server(ServerError::fleet("GPU 3 is not there")).is_usage());
        let backend = ServerError::backend("open NVML", tessera_gpu::GpuError::DriverNotLoaded);
        assert!(!CliError::Server(backend).is_usage());
        assert!(!CliError::Server(ServerError::NoGpu).is_usage());
        assert!(CliError::Usage("u".into()).is_usage());
        assert!(!CliError::Failed("f".into()).is_usage());
    }

    /// The chain is printed once: a cause the message already quotes is not repeated, one it
    /// does not is appended.
    #[test]
    fn the_error_chain_names_each_cause_once() {
        let quoted = tessera_server::ServerError::backend(
            "open NVML",
            tessera_gpu::GpuError::DriverNotLoaded,
        );
        let text = error_chain(&quoted);
        assert_eq!(text, quoted.to_string());
        let cause = tessera_gpu::GpuError::DriverNotLoaded.to_string();
        assert_eq!(text.matches(&cause).count(), 1, "{text}");
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner cause"));
        assert_eq!(error_chain(&e), "outer: inner cause");
    }

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        assert_eq!(escape_cell("python train.py"), "python train.py");
        assert_eq!(escape_cell("é ü 日本"), "é ü 日本");
        assert_eq!(escape_cell("a\x1b]0;owned\x07b"), "a\\e]0;owned\\x07b");
        assert_eq!(escape_cell("x\ny\tz\r"), "x\\ny\\tz\\r");
        assert_eq!(escape_cell("\u{9b}31m"), "\\x9b31m");
        assert_eq!(escape_cell("\u{7f}"), "\\x7f");
        assert_eq!(escape_cell("\u{202e}txt"), "\\u{202e}txt");
    }

    #[test]
    fn escaped_cells_hold_no_control_characters() {
        // Every char below 0x100 and the bidi range, one cell each.
        for c in (0u32..0x100).chain(0x2060..0x2070).chain(0x2020..0x2030) {
            let Some(c) = char::from_u32(c) else { continue };
            let s = escape_cell(&format!("a{c}b"));
            assert!(!s.chars().any(needs_escape), "{c:?} -> {s:?}");
            assert!(s.starts_with('a') && s.ends_with('b'));
        }
    }

    proptest::proptest! {
        /// Whatever a cell holds, what is printed holds no control character, and text
        /// without one is printed unchanged.
        #[test]
        fn no_control_character_survives(text in "\\PC*|[\\x00-\\x{9f}\\u{202a}-\\u{202e}a-z]{0,40}") {
            let out = escape_cell(&text);
            proptest::prop_assert!(!out.chars().any(needs_escape), "{:?} -> {:?}", text, out);
            if !text.chars().any(needs_escape) {
                proptest::prop_assert_eq!(out, text);
            }
        }
    }

    #[test]
    fn table_cells_are_escaped() {
        let mut t = table(&["A", "B"]);
        t.add_row(["ok", "evil\x1b]0;title\x07"]);
        let text = t.to_string();
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text}");
        assert!(text.contains("evil\\e]0;title\\x07"), "{text}");
    }
}
