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

/// Parse a desired-state file into `GPU index → PROFILE@START specs`. Errors say what is
/// wrong and show the expected shape.
pub fn parse_desired(text: &str) -> Result<BTreeMap<u32, Vec<String>>, String> {
    const SHAPE: &str = "expected `gpus:` mapping GPU indices to lists of PROFILE@START, e.g. `gpus: {0: [3g.40gb@0, 2g.20gb@4]}`";
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML/JSON: {e}"))?;
    let map = doc.as_mapping().ok_or_else(|| SHAPE.to_string())?;
    for (k, _) in map {
        match k.as_str() {
            Some("version") | Some("gpus") => {}
            _ => return Err(format!("unknown key `{}`; {SHAPE}", show(k))),
        }
    }
    if let Some(v) = map.get("version") {
        let n = v
            .as_u64()
            .ok_or_else(|| "`version` must be a number".to_string())?;
        if n != DESIRED_VERSION {
            return Err(format!(
                "desired-state version {n} is not supported (this build reads version {DESIRED_VERSION})"
            ));
        }
    }
    let gpus = map
        .get("gpus")
        .and_then(Value::as_mapping)
        .ok_or_else(|| SHAPE.to_string())?;
    let mut out = BTreeMap::new();
    for (k, v) in gpus {
        let idx: u32 = match k {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("GPU key `{}` is not a GPU index; {SHAPE}", show(k)))?;
        let list = match v {
            Value::Null => Vec::new(),
            Value::Sequence(items) => items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_string).ok_or_else(|| {
                        format!("GPU {idx}: `{}` is not a PROFILE@START string", show(i))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(format!("GPU {idx}: {SHAPE}")),
        };
        if out.insert(idx, list).is_some() {
            return Err(format!("GPU {idx} is listed twice"));
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
        assert!(parse_desired("gpus: {x: []}").unwrap_err().contains("`x`"));
        assert!(parse_desired("gpu: {0: []}")
            .unwrap_err()
            .contains("unknown key `gpu`"));
        assert!(parse_desired("version: 2\ngpus: {}")
            .unwrap_err()
            .contains("version 2"));
        assert!(parse_desired("gpus: {0: [3]}")
            .unwrap_err()
            .contains("PROFILE@START"));
        assert!(parse_desired("[").is_err());
    }
}
