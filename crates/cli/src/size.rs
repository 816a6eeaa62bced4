//! `--mem` sizes: a number with a unit, decimal (`MB`, `GB`, `TB`: powers of 1000) or binary
//! (`MiB`, `GiB`, `TiB`, or Kubernetes' `Mi`, `Gi`, `Ti`: powers of 1024), converted with
//! bytesize and rounded up to whole MiB. A bare number or a one-letter unit (`12`, `12G`) is
//! refused: tools disagree on what it means.

use bytesize::ByteSize;

/// A parsed `--mem` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemSize {
    /// The size in MiB, rounded up.
    pub mib: u64,
    /// How the text was understood, e.g. `80 GB (decimal: 80 × 10^9 bytes) = 76294 MiB`.
    pub understood: String,
}

/// Why a `--mem` value was refused; the message names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No unit after the number.
    #[error("`{0}` has no unit; write it with one, e.g. {0}GiB (binary, 1024^3 bytes) or {0}GB (decimal, 10^9 bytes)")]
    NoUnit(String),
    /// A one-letter unit, which tools read differently.
    #[error("`{text}`: `{unit}` is ambiguous; write {number}{unit}iB (binary) or {number}{unit}B (decimal)")]
    Ambiguous {
        /// The whole value.
        text: String,
        /// The number part.
        number: String,
        /// The letter.
        unit: String,
    },
    /// A unit that is not one of the accepted ones.
    #[error("`{text}`: unknown unit `{unit}`; use MB, MiB, GB, GiB, TB or TiB (e.g. 12GiB)")]
    UnknownUnit {
        /// The whole value.
        text: String,
        /// The unit given.
        unit: String,
    },
    /// Not a number followed by a unit.
    #[error("`{text}` is not a size ({reason}); write e.g. 12GiB or 512MiB")]
    Invalid {
        /// The whole value.
        text: String,
        /// What bytesize said.
        reason: String,
    },
    /// Zero or absurdly large.
    #[error("`{0}` is out of range; give at least 1MiB and at most 1024TiB")]
    Range(String),
}

/// Parse a `--mem` value.
pub fn parse_mem(text: &str) -> Result<MemSize, SizeError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    if number.is_empty() {
        return Err(SizeError::Invalid {
            text: text.into(),
            reason: "it does not start with a number".into(),
        });
    }
    if unit.is_empty() {
        return Err(SizeError::NoUnit(number.into()));
    }
    let decimal = match unit.to_ascii_lowercase().as_str() {
        "mb" | "gb" | "tb" => true,
        "mib" | "gib" | "tib" | "mi" | "gi" | "ti" => false,
        "m" | "g" | "t" => {
            return Err(SizeError::Ambiguous {
                text: text.into(),
                number: number.into(),
                unit: unit.to_ascii_uppercase(),
            })
        }
        _ => {
            return Err(SizeError::UnknownUnit {
                text: text.into(),
                unit: unit.into(),
            })
        }
    };
    // bytesize reads `Gi` as GiB already; spell the unit in full for it.
    let full = if unit.len() == 2 && !decimal {
        format!("{number}{unit}B")
    } else {
        format!("{number}{unit}")
    };
    let bytes: ByteSize = full.parse().map_err(|e: String| SizeError::Invalid {
        text: text.into(),
        reason: e,
    })?;
    let mib = bytes.as_u64().div_ceil(1 << 20);
    if mib == 0 || mib > 1 << 30 {
        return Err(SizeError::Range(text.into()));
    }
    let letter = unit[..1].to_ascii_uppercase();
    let power = match letter.as_str() {
        "M" => 2,
        "G" => 3,
        _ => 4,
    };
    let understood = if decimal {
        format!(
            "{number} {letter}B (decimal: {number} × 10^{} bytes) = {mib} MiB",
            power * 3
        )
    } else {
        format!("{number} {letter}iB (binary: {number} × 1024^{power} bytes) = {mib} MiB")
    };
    Ok(MemSize { mib, understood })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_and_binary_units_are_told_apart() {
        let s = parse_mem("80GB").unwrap();
        assert_eq!(s.mib, 76_294); // 80e9 / 2^20 = 76293.95
        assert!(s.understood.contains("decimal"), "{}", s.understood);
        assert_eq!(parse_mem("80GiB").unwrap().mib, 80 * 1024);
        assert_eq!(parse_mem("80gib").unwrap().mib, 80 * 1024);
        assert_eq!(parse_mem("80Gi").unwrap().mib, 80 * 1024);
        assert!(parse_mem("12GiB").unwrap().understood.contains("binary"));
        assert_eq!(parse_mem("512MiB").unwrap().mib, 512);
        assert_eq!(parse_mem("512MB").unwrap().mib, 489); // 512e6 / 2^20 = 488.3
        assert_eq!(parse_mem("1.5GiB").unwrap().mib, 1536);
        assert_eq!(parse_mem("1TiB").unwrap().mib, 1 << 20);
        assert_eq!(parse_mem("1TB").unwrap().mib, 953_675);
        assert_eq!(parse_mem(" 12 GiB ").unwrap().mib, 12 * 1024);
    }

    #[test]
    fn a_unit_is_required_and_ambiguous_ones_are_refused() {
        let e = parse_mem("12").unwrap_err().to_string();
        assert!(e.contains("no unit") && e.contains("12GiB"), "{e}");
        let e = parse_mem("12G").unwrap_err().to_string();
        assert!(e.contains("12GiB") && e.contains("12GB"), "{e}");
        let e = parse_mem("12parsecs").unwrap_err().to_string();
        assert!(e.contains("unknown unit `parsecs`"), "{e}");
        assert!(parse_mem("GiB").is_err());
        assert!(parse_mem("0GiB").is_err());
        assert!(parse_mem("1.2.3GiB").is_err());
        assert!(matches!(parse_mem("99999999TiB"), Err(SizeError::Range(_))));
    }
}
