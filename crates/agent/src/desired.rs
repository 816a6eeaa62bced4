//! The desired-state file of `tessera agent apply --desired FILE`: the layout of each GPU
//! to reconcile, by index. GPUs not listed are left alone; an empty list empties the GPU
//! (of idle instances).
//!
//! ```yaml
//! version: 1
//! gpus:
//!   0: [3g.40gb@0, 2g.20gb@4, 1g.10gb@6]
//!   1: []
//! ```
//! JSON works too (`{"gpus": {"0": ["7g.80gb@0"]}}`).

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

/// The desired-file format version this build reads.
pub const DESIRED_VERSION: u64 = 1;

/// The shape a desired-state file must have, for messages.
const SHAPE: &str = "expected `gpus:` mapping GPU indices to lists of PROFILE@START, e.g. `gpus: {0: [3g.40gb@0, 2g.20gb@4]}`";

/// Why a desired-state file (`gpus:` layouts) cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutsError {
    /// The text is not YAML or JSON.
    #[error("not YAML/JSON: {0}")]
    NotYaml(#[source] serde_yaml_ng::Error),
    /// The document or its `gpus` entry is not a mapping.
    #[error("{SHAPE}")]
    Shape,
    /// A top-level key other than `version` and `gpus`.
    #[error("unknown key `{key}`; {SHAPE}")]
    UnknownKey {
        /// The key, as YAML.
        key: String,
    },
    /// `version` is not a number.
    #[error("`version` must be a number")]
    VersionNotNumber,
    /// `version` names a format this build does not read.
    #[error("desired-state version {found} is not supported (this build reads version {DESIRED_VERSION})")]
    Version {
        /// The version in the file.
        found: u64,
    },
    /// A key of `gpus` is not a GPU index.
    #[error("GPU key `{key}` is not a GPU index; {SHAPE}")]
    GpuKey {
        /// The key, as YAML.
        key: String,
    },
    /// A GPU's entry is neither a list nor empty.
    #[error("GPU {gpu}: {SHAPE}")]
    GpuShape {
        /// The GPU index.
        gpu: u32,
    },
    /// An item of a GPU's list is not a string.
    #[error("GPU {gpu}: `{item}` is not a PROFILE@START string")]
    NotSpec {
        /// The GPU index.
        gpu: u32,
        /// The item, as YAML.
        item: String,
    },
    /// The same GPU index appears twice (e.g. `0` and `"0"`).
    #[error("GPU {gpu} is listed twice")]
    Twice {
        /// The GPU index.
        gpu: u32,
    },
}

/// Parse a desired-state file into `GPU index → PROFILE@START specs`. Errors say what is
/// wrong and show the expected shape.
pub fn parse_desired(text: &str) -> Result<BTreeMap<u32, Vec<String>>, LayoutsError> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(LayoutsError::NotYaml)?;
    let map = doc.as_mapping().ok_or(LayoutsError::Shape)?;
    for (k, _) in map {
        match k.as_str() {
            Some("version") | Some("gpus") => {}
            _ => return Err(LayoutsError::UnknownKey { key: show(k) }),
        }
    }
    if let Some(v) = map.get("version") {
        let n = v.as_u64().ok_or(LayoutsError::VersionNotNumber)?;
        if n != DESIRED_VERSION {
            return Err(LayoutsError::Version { found: n });
        }
    }
    let gpus = map
        .get("gpus")
        .and_then(Value::as_mapping)
        .ok_or(LayoutsError::Shape)?;
    let mut out = BTreeMap::new();
    for (k, v) in gpus {
        let idx: u32 = match k {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| LayoutsError::GpuKey { key: show(k) })?;
        let list = match v {
            Value::Null => Vec::new(),
            Value::Sequence(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| LayoutsError::NotSpec {
                            gpu: idx,
                            item: show(i),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(LayoutsError::GpuShape { gpu: idx }),
        };
        if out.insert(idx, list).is_some() {
            return Err(LayoutsError::Twice { gpu: idx });
        }
    }
    Ok(out)
}

fn show(v: &Value) -> String {
    serde_yaml_ng::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_forms_parse() {
        let y = parse_desired("version: 1\ngpus:\n  0: [3g.40gb@0, 2g.20gb@4]\n  2: []\n  1:\n")
            .unwrap();
        assert_eq!(y[&0], vec!["3g.40gb@0", "2g.20gb@4"]);
        assert!(y[&1].is_empty() && y[&2].is_empty());
        let j = parse_desired(r#"{"gpus": {"0": ["7g.80gb@0"]}}"#).unwrap();
        assert_eq!(j[&0], vec!["7g.80gb@0"]);
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| parse_desired(text).unwrap_err();
        assert!(err("gpus: {x: []}").to_string().contains("`x`"));
        assert!(err("gpu: {0: []}")
            .to_string()
            .contains("unknown key `gpu`"));
        assert!(matches!(
            err("version: 2\ngpus: {}"),
            LayoutsError::Version { found: 2 }
        ));
        assert!(err("version: 2\ngpus: {}")
            .to_string()
            .contains("version 2"));
        assert!(err("gpus: {0: [3]}").to_string().contains("PROFILE@START"));
        assert!(matches!(
            err("gpus: {0: [3]}"),
            LayoutsError::NotSpec { gpu: 0, .. }
        ));
        // The YAML parser's error is kept as the cause.
        let e = err("[");
        assert!(matches!(e, LayoutsError::NotYaml(_)));
        assert!(std::error::Error::source(&e).is_some());
    }
}
