//! What the machine has, read without changing anything: `nvidia-smi -L` for GPUs and their MIG
//! devices, and `nvidia-smi --query-gpu` for MIG mode and compute mode. Parsers take `&str`;
//! only [`read_listing`] and [`read_states`] run the tool.

use std::collections::BTreeMap;
use std::process::Command;

use serde::Serialize;

/// A GPU as `nvidia-smi -L` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuListing {
    /// nvidia-smi index (PCI bus order).
    pub index: u32,
    /// Product name.
    pub name: String,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// Its MIG devices, in listing order (empty when MIG is off or no instance exists).
    pub mig_devices: Vec<MigDevice>,
}

/// A MIG device (one compute instance of one GPU instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigDevice {
    /// GPU-instance profile name, e.g. `1g.10gb`.
    pub profile: String,
    /// MIG device index on its GPU.
    pub device: u32,
    /// `MIG-…` UUID (or the older `MIG-GPU-…/gi/ci` form), as `CUDA_VISIBLE_DEVICES` takes it.
    pub uuid: String,
}

/// Mode settings of a GPU from `nvidia-smi --query-gpu`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct GpuState {
    /// `Some(true)` when MIG mode is enabled, `None` when not reported (`[N/A]`: no MIG support).
    pub mig_enabled: Option<bool>,
    /// `Default`, `Exclusive_Process` or `Prohibited`.
    pub compute_mode: Option<String>,
}

fn uuid_in(line: &str) -> Option<String> {
    let start = line.find("(UUID: ")? + "(UUID: ".len();
    let end = line[start..].find(')')? + start;
    Some(line[start..end].trim().to_string())
}

/// Parse `nvidia-smi -L`. Lines starting with `# ` (fixture headers) and unknown lines are skipped.
pub fn parse_listing(text: &str) -> Vec<GpuListing> {
    let mut gpus: Vec<GpuListing> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("GPU ") {
            // GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-…)
            let Some((idx, tail)) = rest.split_once(':') else {
                continue;
            };
            let Ok(index) = idx.trim().parse() else {
                continue;
            };
            let name = tail
                .split(" (UUID:")
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            gpus.push(GpuListing {
                index,
                name,
                uuid: uuid_in(t).unwrap_or_default(),
                mig_devices: Vec::new(),
            });
        } else if let Some(rest) = t.strip_prefix("MIG ") {
            // MIG 1g.10gb     Device  0: (UUID: MIG-…)
            let Some(gpu) = gpus.last_mut() else {
                continue;
            };
            let mut words = rest.split_whitespace();
            let profile = words.next().unwrap_or("").to_string();
            let device = words
                .skip_while(|w| *w != "Device")
                .nth(1)
                .and_then(|d| d.trim_end_matches(':').parse().ok());
            if let (Some(device), Some(uuid)) = (device, uuid_in(t)) {
                gpu.mig_devices.push(MigDevice {
                    profile,
                    device,
                    uuid,
                });
            }
        }
    }
    gpus
}

/// Parse `nvidia-smi --query-gpu=index,mig.mode.current,compute_mode --format=csv,noheader`.
pub fn parse_states(text: &str) -> BTreeMap<u32, GpuState> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() < 3 {
            continue;
        }
        let Ok(index) = cols[0].parse() else {
            continue;
        };
        let mig_enabled = match cols[1] {
            "Enabled" => Some(true),
            "Disabled" => Some(false),
            _ => None,
        };
        let compute_mode =
            (!cols[2].starts_with('[') && !cols[2].is_empty()).then(|| cols[2].to_string());
        out.insert(
            index,
            GpuState {
                mig_enabled,
                compute_mode,
            },
        );
    }
    out
}

/// Why `nvidia-smi` could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum SmiError {
    /// The program could not be started (not installed, not on `PATH`).
    #[error("cannot run nvidia-smi: {0}")]
    Spawn(#[source] std::io::Error),
    /// It ran and failed.
    #[error("nvidia-smi {args} failed: {stderr}")]
    Failed {
        /// The arguments, joined by spaces.
        args: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

fn nvidia_smi(args: &[&str]) -> Result<String, SmiError> {
    let out = Command::new("nvidia-smi")
        .args(args)
        .output()
        .map_err(SmiError::Spawn)?;
    if !out.status.success() {
        return Err(SmiError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run `nvidia-smi -L` and parse it.
pub fn read_listing() -> Result<Vec<GpuListing>, SmiError> {
    nvidia_smi(&["-L"]).map(|t| parse_listing(&t))
}

/// Run the MIG-mode/compute-mode query and parse it.
pub fn read_states() -> Result<BTreeMap<u32, GpuState>, SmiError> {
    nvidia_smi(&[
        "--query-gpu=index,mig.mode.current,compute_mode",
        "--format=csv,noheader",
    ])
    .map(|t| parse_states(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a100_with_seven_mig_devices() {
        let gpus = parse_listing(&fixture("a100-80gb_L_2.txt"));
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].name, "NVIDIA A100-SXM4-80GB");
        assert_eq!(gpus[0].uuid, "GPU-7fdaf0a5-179b-f636-d15d-daf243e3ff16");
        assert_eq!(gpus[0].mig_devices.len(), 7);
        assert_eq!(gpus[0].mig_devices[6].device, 6);
        assert_eq!(
            gpus[0].mig_devices[0].uuid,
            "MIG-feb88891-0321-5fef-9c87-d4af3b54259e"
        );
        assert!(gpus[0].mig_devices.iter().all(|m| m.profile == "1g.10gb"));
    }

    #[test]
    fn mixed_profiles_and_several_gpus() {
        let h100 = parse_listing(&fixture("h100-80gb_L_1.txt"));
        let profiles: Vec<_> = h100[0]
            .mig_devices
            .iter()
            .map(|m| m.profile.as_str())
            .collect();
        assert_eq!(profiles, ["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb"]);
        let h200 = parse_listing(&fixture("h200_L_1.txt"));
        assert_eq!(h200.len(), 8);
        assert_eq!(h200[0].mig_devices.len(), 6);
        assert!(h200[1..].iter().all(|g| g.mig_devices.is_empty()));
        assert_eq!(h200[7].index, 7);
        let a30 = parse_listing(&fixture("a30_L_1.txt"));
        assert_eq!(a30[0].name, "NVIDIA A30");
        assert_eq!(a30[0].mig_devices.len(), 3);
    }

    #[test]
    fn states_parse_and_tolerate_na() {
        let s = parse_states("0, Enabled, Default\n1, [N/A], Exclusive_Process\ngarbage\n");
        assert_eq!(s[&0].mig_enabled, Some(true));
        assert_eq!(s[&0].compute_mode.as_deref(), Some("Default"));
        assert_eq!(s[&1].mig_enabled, None);
        assert_eq!(s[&1].compute_mode.as_deref(), Some("Exclusive_Process"));
        assert_eq!(s.len(), 2);
    }
}
