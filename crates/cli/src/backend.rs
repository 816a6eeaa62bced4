//! `--backend`: one syntax for `tessera serve` and `tessera agent`:
//! `auto` (NVML when a driver and a GPU are found, else simulated GPUs), `nvml` (real GPUs
//! only), `sim` (the daemon's simulated GPUs, `<state dir>/sim-gpus.json`) or `sim:STATE`
//! (simulated GPUs in the file STATE, made by `tessera sim-gpu init`).

use std::path::PathBuf;

/// A parsed `--backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// NVML when it finds a GPU, else simulated GPUs.
    Auto,
    /// Real GPUs through NVML only.
    Nvml,
    /// Simulated GPUs: in this state file, or the daemon's default one.
    Sim(Option<PathBuf>),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Auto => f.write_str("auto"),
            Backend::Nvml => f.write_str("nvml"),
            Backend::Sim(None) => f.write_str("sim"),
            Backend::Sim(Some(p)) => write!(f, "sim:{}", p.display()),
        }
    }
}

/// The values, for help texts and errors.
pub const BACKEND_VALUES: &str = "auto, nvml, sim or sim:STATE";

/// A `--backend` value that is none of the forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// `sim:` without a file.
    #[error("`sim:` needs a state file: sim:STATE (`tessera sim-gpu init STATE` makes one), or plain `sim`")]
    NoStateFile,
    /// Not a backend name.
    #[error(
        "unknown backend `{text}`{guess}; use {BACKEND_VALUES} (sim: the daemon's simulated \
         GPUs; sim:STATE: a file made by `tessera sim-gpu init`)"
    )]
    Unknown {
        /// The value as given.
        text: String,
        /// ` (did you mean `nvml`?)` or empty.
        guess: String,
    },
}

/// Parse `auto`, `nvml`, `sim` or `sim:STATE` (a clap value parser).
pub fn parse_backend(text: &str) -> Result<Backend, BackendError> {
    let t = text.trim();
    match t {
        "auto" => return Ok(Backend::Auto),
        "nvml" => return Ok(Backend::Nvml),
        "sim" => return Ok(Backend::Sim(None)),
        _ => {}
    }
    if let Some(p) = t.strip_prefix("sim:") {
        if p.trim().is_empty() {
            return Err(BackendError::NoStateFile);
        }
        return Ok(Backend::Sim(Some(PathBuf::from(p))));
    }
    let head = t.split(':').next().unwrap_or(t);
    let guess = tessera_model::suggest::hint(head, ["auto", "nvml", "sim"]);
    Err(BackendError::Unknown {
        text: text.to_string(),
        guess,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_forms_parse_and_typos_are_named() {
        assert_eq!(parse_backend("auto"), Ok(Backend::Auto));
        assert_eq!(parse_backend(" nvml "), Ok(Backend::Nvml));
        assert_eq!(parse_backend("sim"), Ok(Backend::Sim(None)));
        assert_eq!(
            parse_backend("sim:/tmp/m.json"),
            Ok(Backend::Sim(Some(PathBuf::from("/tmp/m.json"))))
        );
        assert_eq!(parse_backend("sim:"), Err(BackendError::NoStateFile));
        assert!(parse_backend("sim:")
            .unwrap_err()
            .to_string()
            .contains("sim:STATE"));
        let e = parse_backend("nvlm").unwrap_err().to_string();
        assert!(
            e.contains("did you mean `nvml`?") && e.contains(BACKEND_VALUES),
            "{e}"
        );
        let e = parse_backend("simm:/x").unwrap_err().to_string();
        assert!(e.contains("did you mean `sim`?"), "{e}");
    }
}
