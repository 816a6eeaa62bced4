//! Parsers for `nvidia-smi mig -lgip`, `-lgipp` and `-lcip` output, and the importer that turns
//! them into a catalog entry ([`import_model`]).
//!
//! Everything here is a pure function over `&str`: the caller reads the files.
//!
//! # What the parsers accept
//! - The `-lgip` and `-lcip` tables in every layout seen in real captures: any table width, box
//!   borders (`+---+`, `|===|`, Unicode box drawing), trailing spaces, CRLF line ends, blank lines,
//!   rows split over two lines (`SM DEC ENC` on the first, `CE JPEG OFA` on the second) or kept on
//!   one. The value columns after the fixed ones are mapped by the header's column names, so a
//!   driver that reorders, adds or drops columns still parses; without a header the usual order is
//!   assumed. Columns with unknown names are read and ignored.
//! - Lines starting with `# ` (the header lines of the fixture files) are skipped.
//! - Several GPUs: every row keeps its GPU index; [`import_model`] uses one GPU.
//! - A line that is neither a border, a header nor a well-formed row is an error naming the line
//!   number (counted from 1 over the whole text, `# ` lines included) and the problem.
//!
//! The parsers never panic, whatever the input (fuzzed with proptest).
//!
//! # What the importer derives
//! See [`import_model`]: profile names, IDs, SMs, engines and maximum counts are read from `-lgip`;
//! placements and memory-slice sizes from `-lgipp`; compute-instance profiles from `-lcip`.
//! `memory_mib` is the printed GiB × 1024 snapped to the 64 MiB grid (round half to even), and
//! every profile lists it under `inferred`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::catalog::{
    Catalog, CatalogError, CiProfile, Engines, GiProfile, GpuModel, MAX_GRID, SCHEMA_VERSION,
};

/// The source key the importer writes into `sources` fields.
pub const SOURCE_KEY: &str = "nvidia-smi";

/// Which `nvidia-smi mig` output a message refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    /// `nvidia-smi mig -lgip` (GPU-instance profiles).
    Lgip,
    /// `nvidia-smi mig -lgipp` (GPU-instance placements).
    Lgipp,
    /// `nvidia-smi mig -lcip` (compute-instance profiles).
    Lcip,
}

impl Input {
    /// The `nvidia-smi mig` flag that prints this output, e.g. `-lgip`.
    pub fn flag(self) -> &'static str {
        match self {
            Input::Lgip => "-lgip",
            Input::Lgipp => "-lgipp",
            Input::Lcip => "-lcip",
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag())
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A line of the input is malformed or contradicts another line.
    #[error("{input} line {line}: {problem}")]
    Line {
        /// Which output the line belongs to.
        input: Input,
        /// Line number, counted from 1 over the whole text.
        line: usize,
        /// What is wrong, and what was expected.
        problem: String,
    },
    /// A token of a line is missing, malformed or too large.
    #[error("{input} line {line}: {problem}")]
    Token {
        /// Which output the line belongs to.
        input: Input,
        /// Line number, counted from 1 over the whole text.
        line: usize,
        /// Which token, what was expected and what was found.
        #[source]
        problem: LineProblem,
    },
    /// The input holds no rows at all (or none for the chosen GPU).
    #[error("{input}: {problem}")]
    NoRows {
        /// Which output is empty.
        input: Input,
        /// What is missing and what to pass instead.
        problem: String,
    },
    /// A `-lgip` profile has no `-lgipp` placements.
    #[error(
        "profile `{name}` (ID {id}, -lgip line {line}) has no placements in the -lgipp output; \
         pass `nvidia-smi mig -lgipp` output of the same GPU and driver"
    )]
    MissingPlacements {
        /// Profile name.
        name: String,
        /// Profile ID.
        id: u32,
        /// The `-lgip` line of the profile.
        line: usize,
    },
    /// The key cannot be used as a catalog key.
    #[error(
        "model key `{0}` is not usable: use lowercase letters, digits, `-`, `.` and `_` \
         (e.g. `h100-80gb`), since lookups lowercase the query"
    )]
    BadKey(String),
    /// The assembled model breaks a catalog rule.
    #[error("the imported model breaks a catalog rule: {0}")]
    Invalid(CatalogError),
}

impl ImportError {
    /// The output the error refers to, when it is about one.
    pub fn input(&self) -> Option<Input> {
        match self {
            ImportError::Line { input, .. }
            | ImportError::Token { input, .. }
            | ImportError::NoRows { input, .. } => Some(*input),
            ImportError::MissingPlacements { .. } => Some(Input::Lgip),
            ImportError::BadKey(_) | ImportError::Invalid(_) => None,
        }
    }

    /// The line number the error refers to, when it is about one line.
    pub fn line(&self) -> Option<usize> {
        match self {
            ImportError::Line { line, .. }
            | ImportError::Token { line, .. }
            | ImportError::MissingPlacements { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// What is wrong with a token of one line (the `problem` of [`ImportError::Token`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    /// A token is missing or is not what the format has there.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the format has there, with an example.
        expected: String,
        /// The token found, quoted and shortened (or `the end of the line`).
        found: String,
    },
    /// A number does not fit 32 bits.
    #[error("{what} `{value}` is too large")]
    TooLarge {
        /// Which number (`GPU index`, `the number`).
        what: String,
        /// The digits.
        value: String,
    },
    /// A value cell of a table row.
    #[error("column {column} of {row}: {problem}")]
    Column {
        /// The column's name (`SM`, `DEC`, …).
        column: String,
        /// The row (`profile `1g.10gb``).
        row: String,
        /// What is wrong with the cell.
        #[source]
        problem: Box<LineProblem>,
    },
}

impl LineProblem {
    fn expected(expected: impl Into<String>, found: Option<&str>) -> Self {
        LineProblem::Expected {
            expected: expected.into(),
            found: show(found),
        }
    }

    fn too_large(what: impl Into<String>, value: &str) -> Self {
        LineProblem::TooLarge {
            what: what.into(),
            value: value.to_string(),
        }
    }
}

/// A non-fatal finding of the importer (something ignored or worth checking).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The output the warning is about, if one.
    pub input: Option<Input>,
    /// The line it is about, if one (counted from 1).
    pub line: Option<usize>,
    /// What was found and what the importer did.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.input, self.line) {
            (Some(i), Some(l)) => write!(f, "{i} line {l}: {}", self.message),
            (Some(i), None) => write!(f, "{i}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// One row of `nvidia-smi mig -lgip`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LgipRow {
    /// Line of the row's first line (counted from 1).
    pub line: usize,
    /// GPU index.
    pub gpu: u32,
    /// Profile name without the `MIG ` prefix, e.g. `1g.10gb+me`.
    pub name: String,
    /// Profile ID.
    pub id: u32,
    /// Instances that can still be created (0 when instances exist).
    pub instances_free: u32,
    /// Most instances of the profile on the GPU.
    pub instances_total: u32,
    /// Memory in GiB as printed.
    pub memory_gib: f64,
    /// `memory_gib` × 1024 snapped to the 64 MiB grid (round half to even).
    pub memory_mib: u64,
    /// The P2P column (`Yes`/`No`); `None` when absent or `N/A`.
    pub p2p: Option<bool>,
    /// Streaming multiprocessors.
    pub sm: Option<u32>,
    /// DEC/ENC/CE/JPEG/OFA columns (absent or `-` columns are `None`).
    pub engines: Engines,
}

/// One line of `nvidia-smi mig -lgipp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LgippRow {
    /// Line number (counted from 1).
    pub line: usize,
    /// GPU index.
    pub gpu: u32,
    /// Profile ID.
    pub id: u32,
    /// Allowed start indices on the memory-slice grid, as printed.
    pub placements: Vec<u32>,
    /// Memory slices an instance occupies (the number after `}:`).
    pub size: u32,
}

/// One row of `nvidia-smi mig -lcip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LcipRow {
    /// Line of the row's first line (counted from 1).
    pub line: usize,
    /// GPU index.
    pub gpu: u32,
    /// ID of the GPU instance the profile belongs to.
    pub gpu_instance: u32,
    /// Compute-instance profile name without `MIG `, e.g. `1c.3g.40gb` or `3g.40gb`.
    pub name: String,
    /// Compute-instance profile ID.
    pub id: u32,
    /// Whether the ID carried a `*` (the default compute instance of the GPU instance).
    pub default: bool,
    /// Instances that can still be created.
    pub instances_free: u32,
    /// Most instances of this profile in the GPU instance.
    pub instances_total: u32,
    /// Streaming multiprocessors.
    pub sm: Option<u32>,
    /// Shared engine columns (absent or `-` columns are `None`).
    pub engines: Engines,
}

/// The result of [`import_model`]: a checked model plus what the importer noticed.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// The model, in catalog form; it passes [`GpuModel::check`].
    pub model: GpuModel,
    /// The GPU index whose rows were used.
    pub gpu: u32,
    /// Non-fatal findings, in input order.
    pub warnings: Vec<Warning>,
}

impl Import {
    /// A catalog holding just this model, with the `nvidia-smi` source in its legend.
    pub fn catalog(&self) -> Catalog {
        let mut sources = BTreeMap::new();
        sources.insert(
            SOURCE_KEY.to_string(),
            "`nvidia-smi mig -lgip`/`-lgipp`/`-lcip` output read by `tessera catalog import`"
                .to_string(),
        );
        Catalog {
            schema_version: SCHEMA_VERSION,
            sources,
            models: vec![self.model.clone()],
        }
    }

    /// The catalog of [`Import::catalog`] in the catalog file format (loadable with `--catalog`).
    pub fn to_yaml(&self) -> String {
        self.catalog().to_yaml()
    }
}

// ---------------------------------------------------------------------------------------------
// Line handling shared by the parsers.

/// The lines worth looking at: (1-based number, text), skipping `# ` lines, blank lines and
/// table borders.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.starts_with("# "))
        .filter(|(_, l)| !is_border(l))
}

fn is_box_char(c: char) -> bool {
    matches!(c, '|' | '+' | '-' | '=') || ('\u{2500}'..='\u{257f}').contains(&c)
}

/// Blank lines and lines made only of box-drawing characters.
fn is_border(line: &str) -> bool {
    line.chars().all(|c| c.is_whitespace() || is_box_char(c))
}

/// Whitespace-separated tokens of a table line, with the vertical bars removed.
fn table_tokens(line: &str) -> Vec<&str> {
    line.split(|c: char| c.is_whitespace() || matches!(c, '|' | '\u{2502}' | '\u{2503}'))
        .filter(|t| !t.is_empty())
        .collect()
}

/// A token for an error message: quoted, shortened, or "the end of the line".
fn show(tok: Option<&str>) -> String {
    match tok {
        None => "the end of the line".to_string(),
        Some(t) => {
            let short: String = t.chars().take(24).collect();
            if short.len() < t.len() {
                format!("`{short}...`")
            } else {
                format!("`{short}`")
            }
        }
    }
}

fn is_digits(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
}

/// A value cell: digits, or `-` / `N/A` for "none".
fn is_value(t: &str) -> bool {
    is_digits(t) || t == "-" || t.eq_ignore_ascii_case("n/a")
}

fn parse_u32(t: &str) -> Option<u32> {
    if is_digits(t) {
        t.parse().ok()
    } else {
        None
    }
}

/// `7/7` -> (7, 7).
fn parse_free_total(t: &str) -> Option<(u32, u32)> {
    let (a, b) = t.split_once('/')?;
    Some((parse_u32(a)?, parse_u32(b)?))
}

/// A GPU-instance profile name: `<N>g.<rest>`.
fn is_gi_name(t: &str) -> bool {
    gi_compute_slices(t).is_some()
}

/// The `N` of a name starting with `Ng.`.
fn gi_compute_slices(name: &str) -> Option<u32> {
    let g = name.find('g')?;
    let (n, rest) = name.split_at(g);
    if !is_digits(n) || !rest.starts_with("g.") || rest.len() < 3 {
        return None;
    }
    n.parse().ok()
}

/// A compute-instance profile name: `<N>c.<gi name>` or a GI name.
fn ci_parent(name: &str) -> Option<&str> {
    if is_gi_name(name) {
        return Some(name);
    }
    let dot = name.find("c.")?;
    let (n, rest) = name.split_at(dot);
    let parent = &rest[2..];
    (is_digits(n) && is_gi_name(parent)).then_some(parent)
}

/// Parse a decimal GiB value (`9.62`, `79`, `9.62GiB`) into (GiB as f64, MiB on the 64 MiB grid).
///
/// The MiB value is computed exactly from the decimal digits: GiB × 1024 / 64 rounded half to
/// even, times 64.
fn parse_gib(t: &str) -> Option<(f64, u64)> {
    let t = t
        .strip_suffix("GiB")
        .or_else(|| t.strip_suffix("GB"))
        .unwrap_or(t);
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if !is_digits(int) || !(frac.is_empty() || is_digits(frac)) || int.len() > 9 || frac.len() > 9 {
        return None;
    }
    let scale = 10u128.pow(frac.len() as u32);
    let int_v: u128 = int.parse().ok()?;
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    // value = num / scale GiB; 64 MiB units = value * 1024 / 64 = num * 16 / scale.
    let num = (int_v * scale + frac_v) * 16;
    let (q, r) = (num / scale, num % scale);
    let units = match (2 * r).cmp(&scale) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
        std::cmp::Ordering::Less => q,
    };
    let mib = u64::try_from(units * 64).ok()?;
    let gib: f64 = t.parse().ok()?;
    Some((gib, mib))
}

fn upper_column(name: &str) -> String {
    let u = name.to_ascii_uppercase();
    if u == "JPG" {
        "JPEG".to_string()
    } else {
        u
    }
}

fn is_engine_column(upper: &str) -> bool {
    matches!(upper, "SM" | "DEC" | "ENC" | "CE" | "JPEG" | "OFA")
}

// ---------------------------------------------------------------------------------------------
// The table reader shared by -lgip and -lcip.

/// How one table kind differs from the other.
struct TableSpec {
    input: Input,
    /// Header words that caption the fixed columns (uppercase); the other words name value columns.
    fixed_words: &'static [&'static str],
    /// Value columns when no header is present.
    default_columns: &'static [&'static str],
    /// What the row should look like, for messages.
    example: &'static str,
}

/// A row: its fixed cells parsed into `H`, then its value cells by column name.
struct Record<H> {
    line: usize,
    head: H,
    label: String,
    columns: Vec<String>,
    values: Vec<Option<u32>>,
}

impl<H> Record<H> {
    fn value(&self, column: &str) -> Option<u32> {
        self.columns
            .iter()
            .position(|c| c == column)
            .and_then(|i| self.values.get(i).copied().flatten())
    }

    fn engines(&self) -> Engines {
        Engines {
            dec: self.value("DEC"),
            enc: self.value("ENC"),
            ce: self.value("CE"),
            jpeg: self.value("JPEG"),
            ofa: self.value("OFA"),
        }
    }
}

/// Read a two-level table. `head` parses the fixed cells of a row and returns them, a label for
/// messages, and how many tokens it used.
fn read_table<H>(
    text: &str,
    spec: &TableSpec,
    head: impl Fn(&[&str]) -> Result<(H, String, usize), LineProblem>,
) -> Result<Vec<Record<H>>, ImportError> {
    let err = |line: usize, problem: String| ImportError::Line {
        input: spec.input,
        line,
        problem,
    };
    let token = |line: usize, problem: LineProblem| ImportError::Token {
        input: spec.input,
        line,
        problem,
    };
    let defaults: Vec<String> = spec.default_columns.iter().map(|s| s.to_string()).collect();
    let mut columns: Vec<String> = Vec::new();
    let mut header_open = false;
    let mut records: Vec<Record<H>> = Vec::new();
    let mut pending: Option<Record<H>> = None;

    let finish = |pending: &mut Option<Record<H>>,
                  records: &mut Vec<Record<H>>|
     -> Result<(), ImportError> {
        if let Some(r) = pending.take() {
            if r.values.len() != r.columns.len() {
                return Err(err(
                    r.line,
                    format!(
                        "{} has {} of the {} value columns ({}); the rest of the row is missing",
                        r.label,
                        r.values.len(),
                        r.columns.len(),
                        r.columns.join(" ")
                    ),
                ));
            }
            records.push(r);
        }
        Ok(())
    };

    for (n, line) in content_lines(text) {
        let toks = table_tokens(line);
        if toks.is_empty() {
            continue;
        }
        // A line of numbers continues the pending row. While that row is short, a line without
        // a name or free/total cell is read as its continuation too, so a bad cell is reported
        // where it is.
        let short = pending
            .as_ref()
            .is_some_and(|r| r.values.len() < r.columns.len());
        let continuation = toks.iter().all(|t| is_value(t))
            || (short && is_digits(toks[0]) && !toks.iter().any(|t| t.contains(['.', '/'])));
        if continuation {
            // The continuation of a two-line row.
            let Some(r) = pending.as_mut() else {
                return Err(err(
                    n,
                    format!(
                        "a line of numbers without a profile row before it; expected a row like `{}`",
                        spec.example
                    ),
                ));
            };
            if r.values.len() == r.columns.len() {
                return Err(err(
                    n,
                    format!(
                        "an extra line of numbers after {} (row on line {}), which already has \
                         all {} value columns ({})",
                        r.label,
                        r.line,
                        r.columns.len(),
                        r.columns.join(" ")
                    ),
                ));
            }
            if r.values.len() + toks.len() > r.columns.len() {
                return Err(err(
                    n,
                    format!(
                        "{} values for {} (row on line {}), but the header names {} value columns ({})",
                        r.values.len() + toks.len(),
                        r.label,
                        r.line,
                        r.columns.len(),
                        r.columns.join(" ")
                    ),
                ));
            }
            for t in toks {
                r.values.push(cell(t).map_err(|p| token(n, p))?);
            }
            continue;
        }
        if is_digits(toks[0]) {
            finish(&mut pending, &mut records)?;
            header_open = false;
            let (h, label, used) = head(&toks).map_err(|p| token(n, p))?;
            let cols = if columns.is_empty() {
                defaults.clone()
            } else {
                columns.clone()
            };
            let rest = toks.get(used..).unwrap_or(&[]);
            if rest.len() > cols.len() {
                return Err(err(
                    n,
                    format!(
                        "{} values for {label}, but the header names {} value columns ({})",
                        rest.len(),
                        cols.len(),
                        cols.join(" ")
                    ),
                ));
            }
            let mut values = Vec::with_capacity(cols.len());
            for (t, c) in rest.iter().zip(&cols) {
                values.push(cell(t).map_err(|p| {
                    token(
                        n,
                        LineProblem::Column {
                            column: c.clone(),
                            row: label.clone(),
                            problem: Box::new(p),
                        },
                    )
                })?);
            }
            pending = Some(Record {
                line: n,
                head: h,
                label,
                columns: cols,
                values,
            });
            continue;
        }
        // A header or title line.
        let is_title = line
            .trim_end()
            .trim_end_matches(['|', '\u{2502}'])
            .trim_end()
            .ends_with(':');
        let upper: Vec<String> = toks.iter().map(|t| upper_column(t)).collect();
        let known = upper
            .iter()
            .any(|u| is_engine_column(u) || spec.fixed_words.contains(&u.as_str()));
        if !is_title && !known {
            return Err(err(
                n,
                format!(
                    "unexpected text {}; expected a table header or a row like `{}`",
                    show(Some(line.trim())),
                    spec.example
                ),
            ));
        }
        finish(&mut pending, &mut records)?;
        if !header_open {
            columns.clear();
            header_open = true;
        }
        if !is_title {
            // Column names are upper-case abbreviations (SM, DEC, JPEG); other unknown words
            // are caption wording and are ignored.
            columns.extend(
                toks.iter()
                    .zip(upper)
                    .filter(|(t, u)| {
                        !spec.fixed_words.contains(&u.as_str())
                            && t.bytes()
                                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    })
                    .map(|(_, u)| u),
            );
        }
    }
    finish(&mut pending, &mut records)?;
    Ok(records)
}

fn cell(t: &str) -> Result<Option<u32>, LineProblem> {
    if is_digits(t) {
        t.parse()
            .map(Some)
            .map_err(|_| LineProblem::too_large("the number", t))
    } else if is_value(t) {
        Ok(None)
    } else {
        Err(LineProblem::expected("a number", Some(t)))
    }
}

// ---------------------------------------------------------------------------------------------
// -lgip

struct LgipHead {
    gpu: u32,
    name: String,
    id: u32,
    free: u32,
    total: u32,
    gib: f64,
    mib: u64,
    p2p: Option<bool>,
}

const LGIP_SPEC: TableSpec = TableSpec {
    input: Input::Lgip,
    fixed_words: &[
        "GPU",
        "NAME",
        "ID",
        "PROFILE",
        "INSTANCES",
        "FREE/TOTAL",
        "FREE",
        "TOTAL",
        "/",
        "MEMORY",
        "GIB",
        "MIB",
        "P2P",
    ],
    default_columns: &["SM", "DEC", "ENC", "CE", "JPEG", "OFA"],
    example: "0  MIG 1g.10gb  19  7/7  9.62  No  14  1  0",
};

fn lgip_head(t: &[&str]) -> Result<(LgipHead, String, usize), LineProblem> {
    let gpu = parse_u32(t[0]).ok_or_else(|| LineProblem::too_large("GPU index", t[0]))?;
    let mut i = 1;
    if t.get(i).is_some_and(|s| s.eq_ignore_ascii_case("MIG")) {
        i += 1;
    }
    let name = match t.get(i) {
        Some(s) if is_gi_name(s) => s.to_string(),
        other => {
            return Err(LineProblem::expected(
                "a profile name like `MIG 1g.10gb` after the GPU index",
                other.copied(),
            ))
        }
    };
    i += 1;
    let label = format!("profile `{name}`");
    let id = t.get(i).and_then(|s| parse_u32(s)).ok_or_else(|| {
        LineProblem::expected(
            format!("a profile ID after the name `{name}`"),
            t.get(i).copied(),
        )
    })?;
    i += 1;
    let (free, total) = t.get(i).and_then(|s| parse_free_total(s)).ok_or_else(|| {
        LineProblem::expected(
            format!("instances free/total like `7/7` after the ID of `{name}`"),
            t.get(i).copied(),
        )
    })?;
    i += 1;
    let (gib, mib) = t.get(i).and_then(|s| parse_gib(s)).ok_or_else(|| {
        LineProblem::expected(
            format!("the memory in GiB like `9.62` for `{name}`"),
            t.get(i).copied(),
        )
    })?;
    i += 1;
    if t.get(i).is_some_and(|s| s.eq_ignore_ascii_case("GiB")) {
        i += 1;
    }
    // The P2P cell, when the table has one (SM, the next column, is never `N/A`).
    let p2p = match t.get(i).map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("yes") => Some(Some(true)),
        Some("no") => Some(Some(false)),
        Some("n/a") => Some(None),
        _ => None,
    };
    if p2p.is_some() {
        i += 1;
    }
    let p2p = p2p.flatten();
    Ok((
        LgipHead {
            gpu,
            name,
            id,
            free,
            total,
            gib,
            mib,
            p2p,
        },
        label,
        i,
    ))
}

/// Parse `nvidia-smi mig -lgip` output into its rows, in input order.
///
/// An input without any profile row is an error ([`ImportError::NoRows`]).
pub fn parse_lgip(text: &str) -> Result<Vec<LgipRow>, ImportError> {
    let records = read_table(text, &LGIP_SPEC, lgip_head)?;
    if records.is_empty() {
        return Err(ImportError::NoRows {
            input: Input::Lgip,
            problem:
                "no GPU-instance profile rows found; pass the output of `nvidia-smi mig -lgip` \
                      on a GPU with MIG mode enabled"
                    .into(),
        });
    }
    Ok(records
        .into_iter()
        .map(|r| LgipRow {
            line: r.line,
            gpu: r.head.gpu,
            name: r.head.name.clone(),
            id: r.head.id,
            instances_free: r.head.free,
            instances_total: r.head.total,
            memory_gib: r.head.gib,
            memory_mib: r.head.mib,
            p2p: r.head.p2p,
            sm: r.value("SM"),
            engines: r.engines(),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// -lcip

struct LcipHead {
    gpu: u32,
    gi: u32,
    name: String,
    id: u32,
    default: bool,
    free: u32,
    total: u32,
}

const LCIP_SPEC: TableSpec = TableSpec {
    input: Input::Lcip,
    fixed_words: &[
        "GPU",
        "INSTANCE",
        "INSTANCES",
        "ID",
        "NAME",
        "PROFILE",
        "FREE/TOTAL",
        "FREE",
        "TOTAL",
        "/",
        "EXCLUSIVE",
        "SHARED",
    ],
    default_columns: &["SM", "DEC", "ENC", "OFA", "CE", "JPEG"],
    example: "0  1  MIG 1c.3g.40gb  0  3/3  14  2  0  0",
};

fn lcip_head(t: &[&str]) -> Result<(LcipHead, String, usize), LineProblem> {
    let gpu = parse_u32(t[0]).ok_or_else(|| LineProblem::too_large("GPU index", t[0]))?;
    let gi = t.get(1).and_then(|s| parse_u32(s)).ok_or_else(|| {
        LineProblem::expected("the GPU instance ID after the GPU index", t.get(1).copied())
    })?;
    let mut i = 2;
    if t.get(i).is_some_and(|s| s.eq_ignore_ascii_case("MIG")) {
        i += 1;
    }
    let name =
        match t.get(i) {
            Some(s) if ci_parent(s).is_some() => s.to_string(),
            other => return Err(LineProblem::expected(
                "a compute-instance profile name like `MIG 1c.3g.40gb` after the GPU instance ID",
                other.copied(),
            )),
        };
    i += 1;
    let label = format!("compute-instance profile `{name}`");
    let (id, default) = t
        .get(i)
        .and_then(|s| {
            let (digits, star) = match s.strip_suffix('*') {
                Some(d) => (d, true),
                None => (*s, false),
            };
            parse_u32(digits).map(|id| (id, star))
        })
        .ok_or_else(|| {
            LineProblem::expected(
                format!("a profile ID (optionally with `*`) after the name `{name}`"),
                t.get(i).copied(),
            )
        })?;
    i += 1;
    let (free, total) = t.get(i).and_then(|s| parse_free_total(s)).ok_or_else(|| {
        LineProblem::expected(
            format!("instances free/total like `3/3` after the ID of `{name}`"),
            t.get(i).copied(),
        )
    })?;
    i += 1;
    Ok((
        LcipHead {
            gpu,
            gi,
            name,
            id,
            default,
            free,
            total,
        },
        label,
        i,
    ))
}

/// Parse `nvidia-smi mig -lcip` output into its rows, in input order.
///
/// An input without any profile row is an error ([`ImportError::NoRows`]).
pub fn parse_lcip(text: &str) -> Result<Vec<LcipRow>, ImportError> {
    let records = read_table(text, &LCIP_SPEC, lcip_head)?;
    if records.is_empty() {
        return Err(ImportError::NoRows {
            input: Input::Lcip,
            problem: "no compute-instance profile rows found; pass the output of \
                      `nvidia-smi mig -lcip` taken while GPU instances exist"
                .into(),
        });
    }
    Ok(records
        .into_iter()
        .map(|r| LcipRow {
            line: r.line,
            gpu: r.head.gpu,
            gpu_instance: r.head.gi,
            name: r.head.name.clone(),
            id: r.head.id,
            default: r.head.default,
            instances_free: r.head.free,
            instances_total: r.head.total,
            sm: r.value("SM"),
            engines: r.engines(),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// -lgipp

/// A cursor over one `-lgipp` line.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn next_token(&self) -> Option<&'a str> {
        self.rest.split_whitespace().next()
    }

    fn word(&mut self, words: &[&str], what: &str) -> Result<(), LineProblem> {
        let r = self.rest.trim_start();
        for w in words {
            if r.len() >= w.len()
                && r.is_char_boundary(w.len())
                && r[..w.len()].eq_ignore_ascii_case(w)
            {
                self.rest = &r[w.len()..];
                return Ok(());
            }
        }
        Err(LineProblem::expected(what, self.next_token()))
    }

    fn number(&mut self, what: &str) -> Result<u32, LineProblem> {
        let r = self.rest.trim_start();
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        match parse_u32(&r[..end]) {
            Some(v) => {
                self.rest = &r[end..];
                Ok(v)
            }
            None if end > 0 => Err(LineProblem::too_large(what, &r[..end])),
            None => Err(LineProblem::expected(what, self.next_token())),
        }
    }
}

fn lgipp_line(n: usize, line: &str) -> Result<LgippRow, LineProblem> {
    let mut c = Cursor {
        rest: line.trim_matches(|ch: char| ch.is_whitespace() || ch == '|'),
    };
    c.word(
        &["GPU"],
        "`GPU <index> Profile ID <id> Placements: {<starts>}:<size>`",
    )?;
    let gpu = c.number("the GPU index after `GPU`")?;
    c.word(&["Profile"], "`Profile ID <id>` after the GPU index")?;
    c.word(&["ID"], "`ID` after `Profile`")?;
    let id = c.number("a profile ID after `Profile ID`")?;
    c.word(
        &["Placements", "Placement"],
        &format!("`Placements:` after profile ID {id}"),
    )?;
    c.word(
        &[":"],
        &format!("`:` after `Placements` of profile ID {id}"),
    )?;
    let compact: String = c.rest.chars().filter(|ch| !ch.is_whitespace()).collect();
    let bad = || {
        LineProblem::expected(
            format!("placements like `{{0,2,4}}:2` for profile ID {id}"),
            Some(compact.as_str()).filter(|s| !s.is_empty()),
        )
    };
    let inner = compact.strip_prefix('{').ok_or_else(bad)?;
    let (list, size) = inner.split_once("}:").ok_or_else(bad)?;
    let size = parse_u32(size).ok_or_else(bad)?;
    let mut placements = Vec::new();
    if !list.is_empty() {
        for p in list.split(',') {
            placements.push(parse_u32(p).ok_or_else(bad)?);
        }
    }
    Ok(LgippRow {
        line: n,
        gpu,
        id,
        placements,
        size,
    })
}

/// Parse `nvidia-smi mig -lgipp` output (`GPU  0 Profile ID  9 Placements: {0,4}:4`, also the
/// singular `Placement :` form) into its rows, in input order.
///
/// An input without any placement line is an error ([`ImportError::NoRows`]).
pub fn parse_lgipp(text: &str) -> Result<Vec<LgippRow>, ImportError> {
    let mut rows = Vec::new();
    for (n, line) in content_lines(text) {
        rows.push(lgipp_line(n, line).map_err(|problem| ImportError::Token {
            input: Input::Lgipp,
            line: n,
            problem,
        })?);
    }
    if rows.is_empty() {
        return Err(ImportError::NoRows {
            input: Input::Lgipp,
            problem: "no placement lines found; pass the output of `nvidia-smi mig -lgipp`".into(),
        });
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// The importer.

/// Build a catalog model from `nvidia-smi mig -lgip`, `-lgipp` and optionally `-lcip` output.
///
/// Uses the lowest GPU index found in the `-lgip` text (GPU 0 on a normal capture); see
/// [`import_model_for_gpu`] to pick another. Equivalent to
/// `import_model_for_gpu(key, None, lgip, lgipp, lcip)`.
pub fn import_model(
    key: &str,
    lgip: &str,
    lgipp: &str,
    lcip: Option<&str>,
) -> Result<Import, ImportError> {
    import_model_for_gpu(key, None, lgip, lgipp, lcip)
}

/// Build a catalog model from the rows of one GPU (`gpu`, or the lowest index when `None`).
///
/// Per profile (in `-lgip` order): `name`, `id`, `sm`, `engines` and `max` (= Instances Total;
/// the free count is ignored, since existing instances lower it) come from `-lgip`;
/// `compute_slices` is the `N` of the name's `Ng`; `memory_slices` and `placements` come from the
/// `-lgipp` line with the same profile ID; `memory_gib` is the printed value and `memory_mib` is
/// GiB × 1024 on the 64 MiB grid (round half to even), listed under `inferred`. Every profile
/// has `sources: [nvidia-smi]`.
///
/// The model: `compute_slices` = the largest `N`; `memory_slices` = the largest placement end
/// (start + size); `max_instances` = the larger of the compute slices and the largest total of a
/// 1-compute-slice profile; `names`, `pci_device_ids`, `arch` are empty (fill them in if known).
/// With `-lcip`, compute-instance profiles are grouped under the GPU-instance profile their name
/// ends with (`1c.3g.40gb` -> `3g.40gb`), sorted by ID.
///
/// Errors: any parse error; no rows for the GPU; a `-lgip` profile without `-lgipp` placements
/// ([`ImportError::MissingPlacements`]); a profile name or ID listed twice; a placement past the
/// 32-slice limit; a model failing [`GpuModel::check`]. Warnings (not errors): rows of other
/// GPUs, profiles with 0 instances in total (left out), `-lgipp` lines whose ID is not in
/// `-lgip` (ignored), duplicate placements, `-lcip` rows that match no profile or contradict
/// each other.
pub fn import_model_for_gpu(
    key: &str,
    gpu: Option<u32>,
    lgip: &str,
    lgipp: &str,
    lcip: Option<&str>,
) -> Result<Import, ImportError> {
    if key.is_empty()
        || !key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
        })
    {
        return Err(ImportError::BadKey(key.to_string()));
    }
    let gi_rows = parse_lgip(lgip)?;
    let pp_rows = parse_lgipp(lgipp)?;
    let ci_rows = lcip.map(parse_lcip).transpose()?;
    let mut warnings = Vec::new();

    let gpu = gpu.unwrap_or_else(|| gi_rows.iter().map(|r| r.gpu).min().unwrap_or(0));
    let mut other: Vec<u32> = gi_rows
        .iter()
        .map(|r| r.gpu)
        .filter(|&g| g != gpu)
        .collect();
    other.sort_unstable();
    other.dedup();
    if !other.is_empty() {
        warnings.push(Warning {
            input: Some(Input::Lgip),
            line: None,
            message: format!(
                "rows of GPU {} ignored; imported GPU {gpu} only",
                other
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let gi_rows: Vec<&LgipRow> = gi_rows.iter().filter(|r| r.gpu == gpu).collect();
    if gi_rows.is_empty() {
        return Err(ImportError::NoRows {
            input: Input::Lgip,
            problem: format!("no rows for GPU {gpu}; it lists GPUs {}", gpu_list(&other)),
        });
    }
    let pp_gpus: Vec<u32> = pp_rows.iter().map(|r| r.gpu).collect();
    let pp_rows: Vec<&LgippRow> = pp_rows.iter().filter(|r| r.gpu == gpu).collect();
    if pp_rows.is_empty() {
        let mut g = pp_gpus;
        g.sort_unstable();
        g.dedup();
        return Err(ImportError::NoRows {
            input: Input::Lgipp,
            problem: format!(
                "no placement lines for GPU {gpu}; it lists GPUs {}; pass -lgipp output of the \
                 same GPU as -lgip",
                gpu_list(&g)
            ),
        });
    }

    // Placements by profile ID.
    let mut placements: BTreeMap<u32, (&LgippRow, Vec<u8>, u8)> = BTreeMap::new();
    for r in &pp_rows {
        let line_err = |problem: String| ImportError::Line {
            input: Input::Lgipp,
            line: r.line,
            problem,
        };
        if let Some((first, _, _)) = placements.get(&r.id) {
            return Err(line_err(format!(
                "profile ID {} is listed twice (first on line {}); keep one line per profile",
                r.id, first.line
            )));
        }
        let size = u8::try_from(r.size)
            .ok()
            .filter(|s| (1..=MAX_GRID).contains(s))
            .ok_or_else(|| {
                line_err(format!(
                    "profile ID {} has size {}; a placement size must be between 1 and {MAX_GRID}",
                    r.id, r.size
                ))
            })?;
        let mut starts = Vec::with_capacity(r.placements.len());
        for &p in &r.placements {
            match u8::try_from(p)
                .ok()
                .filter(|s| u16::from(*s) + u16::from(size) <= u16::from(MAX_GRID))
            {
                Some(s) => starts.push(s),
                None => {
                    return Err(line_err(format!(
                        "profile ID {} placement {p} of size {size} ends past slice {MAX_GRID}, \
                         the largest grid tessera supports",
                        r.id
                    )))
                }
            }
        }
        let n = starts.len();
        starts.sort_unstable();
        starts.dedup();
        if starts.len() != n {
            warnings.push(Warning {
                input: Some(Input::Lgipp),
                line: Some(r.line),
                message: format!("profile ID {} lists a placement twice; kept it once", r.id),
            });
        }
        placements.insert(r.id, (r, starts, size));
    }

    let mut profiles: Vec<GiProfile> = Vec::new();
    for r in &gi_rows {
        let line_err = |problem: String| ImportError::Line {
            input: Input::Lgip,
            line: r.line,
            problem,
        };
        if let Some(first) = gi_rows
            .iter()
            .find(|q| q.line < r.line && (q.name == r.name || q.id == r.id))
        {
            return Err(line_err(format!(
                "profile `{}` (ID {}) repeats the name or ID of the row on line {}; \
                 pass the output for one GPU",
                r.name, r.id, first.line
            )));
        }
        let compute = gi_compute_slices(&r.name)
            .and_then(|g| u8::try_from(g).ok())
            .filter(|&g| g > 0)
            .ok_or_else(|| {
                line_err(format!(
                    "profile `{}` must start with `<N>g.` where N is 1 to 255 compute slices",
                    r.name
                ))
            })?;
        if r.instances_total == 0 {
            warnings.push(Warning {
                input: Some(Input::Lgip),
                line: Some(r.line),
                message: format!(
                    "profile `{}` has 0 instances in total, so it can never be created; left out",
                    r.name
                ),
            });
            continue;
        }
        let max = u8::try_from(r.instances_total).map_err(|_| {
            line_err(format!(
                "profile `{}` has {} instances in total; at most 255 are supported",
                r.name, r.instances_total
            ))
        })?;
        let Some((pp, starts, size)) = placements.get(&r.id) else {
            return Err(ImportError::MissingPlacements {
                name: r.name.clone(),
                id: r.id,
                line: r.line,
            });
        };
        if starts.is_empty() {
            return Err(ImportError::Line {
                input: Input::Lgipp,
                line: pp.line,
                problem: format!(
                    "profile ID {} (`{}`) has an empty placement list; pass -lgipp output \
                     taken with MIG mode enabled",
                    r.id, r.name
                ),
            });
        }
        if usize::from(max) > starts.len() {
            warnings.push(Warning {
                input: Some(Input::Lgip),
                line: Some(r.line),
                message: format!(
                    "profile `{}` allows {max} instances but has only {} placements",
                    r.name,
                    starts.len()
                ),
            });
        }
        profiles.push(GiProfile {
            name: r.name.clone(),
            id: Some(r.id),
            nvml_index: None,
            compute_slices: compute,
            memory_slices: *size,
            memory_mib: Some(r.memory_mib),
            memory_gib: Some(r.memory_gib),
            memory_gib_other: Vec::new(),
            memory_mib_verified: false,
            sm: r.sm,
            engines: r.engines,
            max,
            placements: starts.clone(),
            sources: vec![SOURCE_KEY.to_string()],
            inferred: vec!["memory_mib".to_string()],
        });
    }
    for (id, (pp, _, _)) in &placements {
        if !gi_rows.iter().any(|r| r.id == *id) {
            warnings.push(Warning {
                input: Some(Input::Lgipp),
                line: Some(pp.line),
                message: format!("profile ID {id} has no -lgip row; its placements are ignored"),
            });
        }
    }
    if profiles.is_empty() {
        return Err(ImportError::NoRows {
            input: Input::Lgip,
            problem: format!("GPU {gpu} has no profile that can be created (every total is 0)"),
        });
    }

    let compute_slices = profiles.iter().map(|p| p.compute_slices).max().unwrap_or(0);
    let memory_slices = profiles
        .iter()
        .flat_map(|p| p.placements.iter().map(move |s| s + p.memory_slices))
        .max()
        .unwrap_or(0);
    let max_instances = profiles
        .iter()
        .filter(|p| p.compute_slices == 1)
        .map(|p| p.max)
        .max()
        .unwrap_or(0)
        .max(compute_slices);

    let names: Vec<String> = profiles.iter().map(|p| p.name.clone()).collect();
    let compute_profiles = match &ci_rows {
        Some(rows) => {
            let (map, w) = compute_profiles_from_lcip(rows, gpu, &names);
            warnings.extend(w);
            map
        }
        None => BTreeMap::new(),
    };

    let model = GpuModel {
        key: key.to_string(),
        aliases: Vec::new(),
        names: Vec::new(),
        pci_device_ids: Vec::new(),
        arch: String::new(),
        compute_capability: None,
        compute_slices,
        memory_slices,
        max_instances,
        total_memory_mib: None,
        min_driver: None,
        confidence: None,
        notes: vec![format!(
            "Imported from `nvidia-smi mig -lgip`/`-lgipp`{} output of GPU {gpu}; memory_mib is \
             the printed GiB x 1024 on the 64 MiB grid, not read from NVML.",
            if lcip.is_some() { "/`-lcip`" } else { "" }
        )],
        profiles,
        compute_profiles,
    };
    model.check().map_err(ImportError::Invalid)?;
    Ok(Import {
        model,
        gpu,
        warnings,
    })
}

fn gpu_list(g: &[u32]) -> String {
    if g.is_empty() {
        "none".to_string()
    } else {
        g.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// Group `-lcip` rows of GPU `gpu` into compute-instance profiles per GPU-instance profile.
///
/// A row belongs to the GPU-instance profile its name ends with (`1c.3g.40gb` -> `3g.40gb`;
/// the default CI shares the GI's name). Rows of the same profile from several GPU instances are
/// merged; rows naming a profile not in `gi_profiles`, or contradicting an earlier row of the same
/// name, are skipped with a warning. Each list is sorted by ID, then name.
pub fn compute_profiles_from_lcip(
    rows: &[LcipRow],
    gpu: u32,
    gi_profiles: &[String],
) -> (BTreeMap<String, Vec<CiProfile>>, Vec<Warning>) {
    let mut map: BTreeMap<String, Vec<CiProfile>> = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut used = 0usize;
    for r in rows.iter().filter(|r| r.gpu == gpu) {
        used += 1;
        let warn = |message: String| Warning {
            input: Some(Input::Lcip),
            line: Some(r.line),
            message,
        };
        let Some(parent) = ci_parent(&r.name).filter(|p| gi_profiles.iter().any(|g| g == p)) else {
            warnings.push(warn(format!(
                "compute-instance profile `{}` matches no GPU-instance profile of -lgip; skipped",
                r.name
            )));
            continue;
        };
        let ci = CiProfile {
            name: r.name.clone(),
            id: Some(r.id),
            sm: r.sm,
            max: Some(r.instances_total),
            default: r.default,
            sources: vec![SOURCE_KEY.to_string()],
            inferred: Vec::new(),
        };
        let list = map.entry(parent.to_string()).or_default();
        match list.iter().find(|c| c.name == ci.name) {
            Some(prev) if *prev == ci => {}
            Some(_) => warnings.push(warn(format!(
                "compute-instance profile `{}` differs from an earlier row of the same name \
                 (ID, SMs, total or default mark); kept the first",
                r.name
            ))),
            None => list.push(ci),
        }
    }
    if used == 0 && !rows.is_empty() {
        warnings.push(Warning {
            input: Some(Input::Lcip),
            line: None,
            message: format!("no rows for GPU {gpu}; compute-instance profiles left empty"),
        });
    }
    for list in map.values_mut() {
        list.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| a.name.cmp(&b.name)));
    }
    (map, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gib_snaps_to_the_64_mib_grid_half_to_even() {
        assert_eq!(parse_gib("9.62").unwrap().1, 9856);
        assert_eq!(parse_gib("19.50").unwrap().1, 19968);
        assert_eq!(parse_gib("93.12").unwrap().1, 95360);
        assert_eq!(parse_gib("79").unwrap().1, 80896);
        // 0.03125 GiB = 32 MiB: exactly half of a 64 MiB unit -> rounds to even (0).
        assert_eq!(parse_gib("0.03125").unwrap().1, 0);
        // 0.09375 GiB = 96 MiB = 1.5 units -> 2 units.
        assert_eq!(parse_gib("0.09375").unwrap().1, 128);
        assert_eq!(parse_gib("9.62GiB").unwrap().0, 9.62);
        assert!(parse_gib("9,62").is_none());
        assert!(parse_gib("").is_none());
        assert!(parse_gib(".5").is_none());
    }

    #[test]
    fn names_give_compute_slices_and_ci_parents() {
        assert_eq!(gi_compute_slices("1g.10gb+me"), Some(1));
        assert_eq!(gi_compute_slices("7g.80gb"), Some(7));
        assert_eq!(gi_compute_slices("g.80gb"), None);
        assert_eq!(gi_compute_slices("1c.3g.40gb"), None);
        assert_eq!(ci_parent("1c.3g.40gb"), Some("3g.40gb"));
        assert_eq!(ci_parent("3g.40gb"), Some("3g.40gb"));
        assert_eq!(ci_parent("xc.3g.40gb"), None);
    }
}
