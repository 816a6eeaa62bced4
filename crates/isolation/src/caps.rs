//! The NVIDIA driver's capability minors. A MIG instance is reached through two capability
//! device nodes besides the GPU's own: its GPU instance's (`gpuN/giG/access`) and its compute
//! instance's (`gpuN/giG/ciC/access`). The driver lists every possible capability with its
//! device minor in `/proc/driver/nvidia-caps/mig-minors`, one `NAME MINOR` per line
//! (`config 1`, `monitor 2`, `gpu0/gi1/access 12`, `gpu0/gi1/ci0/access 13`, ...); the nodes
//! are `/dev/nvidia-caps/nvidia-cap<MINOR>` with the major of `nvidia-caps` in `/proc/devices`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::IsolationError;

/// The parsed `mig-minors` file: capability name → device minor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigMinors {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// `gpu0/gi1/access` → 12.
    pub minors: BTreeMap<String, u32>,
}

/// The capability name of a GPU instance: `gpu{gpu}/gi{gi}/access`.
pub fn gi_cap(gpu: u32, gi: u32) -> String {
    format!("gpu{gpu}/gi{gi}/access")
}

/// The capability name of a compute instance: `gpu{gpu}/gi{gi}/ci{ci}/access`.
pub fn ci_cap(gpu: u32, gi: u32, ci: u32) -> String {
    format!("gpu{gpu}/gi{gi}/ci{ci}/access")
}

impl MigMinors {
    /// Parse the text of a `mig-minors` file; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<MigMinors, IsolationError> {
        let mut minors = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            let bad = |why: &str| IsolationError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                text: t.to_string(),
                why: why.to_string(),
            };
            let mut parts = t.split_whitespace();
            let (Some(name), Some(minor), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected `NAME MINOR`"));
            };
            let minor: u32 = minor
                .parse()
                .map_err(|_| bad("the minor is not a number"))?;
            minors.insert(name.to_string(), minor);
        }
        Ok(MigMinors {
            path: path.to_path_buf(),
            minors,
        })
    }

    /// Read and parse a `mig-minors` file.
    pub fn read(path: &Path) -> Result<MigMinors, IsolationError> {
        let text = std::fs::read_to_string(path).map_err(|e| IsolationError::io(path, e))?;
        Self::parse(path, &text)
    }

    /// The minors of a MIG instance's two capabilities: (GPU instance, compute instance).
    pub fn instance(&self, gpu: u32, gi: u32, ci: u32) -> Result<(u32, u32), IsolationError> {
        let missing = |cap: String, ci: String| IsolationError::NoCapability {
            path: self.path.clone(),
            cap,
            gpu,
            gi,
            ci,
        };
        let g = gi_cap(gpu, gi);
        let gi_minor = *self
            .minors
            .get(&g)
            .ok_or_else(|| missing(g, String::new()))?;
        let c = ci_cap(gpu, gi, ci);
        let ci_minor = *self
            .minors
            .get(&c)
            .ok_or_else(|| missing(c, format!(" CI {ci}")))?;
        Ok((gi_minor, ci_minor))
    }
}

/// Character-device majors by driver name, from the text of `/proc/devices` (only the
/// `Character devices:` section).
pub fn char_majors(text: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let mut in_char = false;
    for line in text.lines() {
        let t = line.trim();
        if t.ends_with(':') {
            in_char = t == "Character devices:";
            continue;
        }
        if !in_char {
            continue;
        }
        if let Some((num, name)) = t.split_once(char::is_whitespace) {
            if let Ok(n) = num.parse() {
                out.insert(name.trim().to_string(), n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_bad_lines_name_file_and_line() {
        let p = Path::new("mig-minors");
        let m = MigMinors::parse(
            p,
            "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n",
        )
        .unwrap();
        assert_eq!(m.instance(0, 1, 0).unwrap(), (12, 13));
        let e = m.instance(0, 2, 0).unwrap_err().to_string();
        assert!(e.contains("gpu0/gi2/access"), "{e}");
        let e = MigMinors::parse(p, "config 1\ngpu0/gi1/access x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("not a number"), "{e}");
        let e = MigMinors::parse(p, "gpu0/gi1/access 3 4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NAME MINOR"), "{e}");
    }

    #[test]
    fn only_character_majors_count() {
        let text = "Character devices:\n  1 mem\n195 nvidia-frontend\n237 nvidia-caps\n\nBlock devices:\n  7 loop\n259 nvidia-caps\n";
        let m = char_majors(text);
        assert_eq!(m.get("nvidia-caps"), Some(&237));
        assert_eq!(m.get("mem"), Some(&1));
        assert_eq!(m.get("loop"), None);
    }
}
