//! Sharing modes and the slot each tenant runs on: the environment that puts a tenant process on
//! the whole GPU (time-slicing), on an MPS client share, or on its own MIG device. Planning only
//! reads the [`Target`]; a mode that cannot run here is skipped with a reason, never forced (this
//! crate never changes MIG mode or creates instances).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::inventory::MigDevice;
use tessera_gpu::mps::MpsError;

/// How the tenants share the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// N processes on the whole GPU, taking turns.
    Timeslice,
    /// N MPS clients of one daemon, each limited to 100/N % of the SMs and 1/N of the memory.
    Mps,
    /// One existing MIG device per tenant.
    Mig,
}

impl Mode {
    /// All modes, in report order.
    pub const ALL: [Mode; 3] = [Mode::Timeslice, Mode::Mps, Mode::Mig];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Timeslice => "timeslice",
            Mode::Mps => "mps",
            Mode::Mig => "mig",
        }
    }

    /// The column title.
    pub fn title(self) -> &'static str {
        match self {
            Mode::Timeslice => "Time-sliced",
            Mode::Mps => "MPS",
            Mode::Mig => "MIG-backed",
        }
    }

    /// Parse a comma-separated list, in report order, without repeats.
    pub fn parse_list(s: &str) -> Result<Vec<Mode>, BenchError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let m = Mode::ALL
                .into_iter()
                .find(|m| m.name() == part.to_ascii_lowercase())
                .ok_or_else(|| BenchError::Invalid {
                    what: "mode",
                    value: part.to_string(),
                    reason: "expected one of timeslice, mps, mig".into(),
                })?;
            out.push(m);
        }
        if out.is_empty() {
            return Err(BenchError::Invalid {
                what: "--modes",
                value: s.to_string(),
                reason: "name at least one mode".into(),
            });
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// The GPU under test, as observed before the run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Target {
    /// nvidia-smi index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// `GPU-…` UUID, if known.
    pub uuid: Option<String>,
    /// Total memory in MiB, if known.
    pub memory_mib: Option<u64>,
    /// MIG mode (`None`: unknown or not supported).
    pub mig_enabled: Option<bool>,
    /// Compute mode as nvidia-smi prints it.
    pub compute_mode: Option<String>,
    /// Existing MIG devices.
    pub mig_devices: Vec<MigDevice>,
}

impl Target {
    /// The value for `CUDA_VISIBLE_DEVICES` that selects the whole GPU.
    pub fn visible_devices(&self) -> String {
        self.uuid.clone().unwrap_or_else(|| self.index.to_string())
    }
}

/// Why a sharing mode cannot run on the GPU (the mode is skipped with this reason).
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Time-slicing on a GPU in MIG mode.
    #[error(
        "GPU {gpu} is in MIG mode, so no process can use the whole GPU; time-slicing needs MIG \
         off (this command never changes MIG mode)"
    )]
    MigOnForTimeslice {
        /// GPU index.
        gpu: u32,
    },
    /// Several tenants on a GPU whose compute mode lets one process in.
    #[error(
        "GPU {gpu} is in {mode} compute mode, so processes cannot share it; time-slicing \
         needs the Default compute mode (`nvidia-smi -i {gpu} -c DEFAULT`, not done by this \
         command)"
    )]
    ComputeMode {
        /// GPU index.
        gpu: u32,
        /// The compute mode as `nvidia-smi` names it.
        mode: String,
    },
    /// MPS on the whole GPU while MIG is on.
    #[error(
        "GPU {gpu} is in MIG mode; MPS on the whole GPU needs MIG off (this command never \
         changes MIG mode)"
    )]
    MigOnForMps {
        /// GPU index.
        gpu: u32,
    },
    /// The MIG mode on a GPU with MIG off.
    #[error(
        "GPU {gpu} ({name}) is not in MIG mode; this command never enables MIG or creates \
         instances: an administrator can (`nvidia-smi -i {gpu} -mig 1`, then \
         `nvidia-smi mig -i {gpu} -cgi <profile>,... -C`)"
    )]
    MigOff {
        /// GPU index.
        gpu: u32,
        /// GPU name.
        name: String,
    },
    /// The MIG mode on a GPU without MIG devices.
    #[error(
        "GPU {gpu} ({name}) has no MIG devices to use; this command never creates instances \
         (create {tenants} with `nvidia-smi mig -i {gpu} -cgi <profile>,... -C`)"
    )]
    NoMigDevices {
        /// GPU index.
        gpu: u32,
        /// GPU name.
        name: String,
        /// Tenants asked for.
        tenants: u32,
    },
    /// Fewer MIG devices than tenants.
    #[error(
        "GPU {gpu} has {} MIG device(s) ({}) but {tenants} tenants need one each; create more \
         instances or pass --tenants {}",
        have.len(),
        have.join(", "),
        have.len()
    )]
    TooFewMigDevices {
        /// GPU index.
        gpu: u32,
        /// The profiles of the MIG devices there are.
        have: Vec<String>,
        /// Tenants asked for.
        tenants: u32,
    },
    /// The MPS daemon could not be started.
    #[error("cannot start the MPS daemon: {0}")]
    MpsDaemon(#[source] Box<BenchError>),
    /// The MPS client environment could not be built.
    #[error("MPS client environment: {0}")]
    ClientEnv(#[source] MpsError),
}

/// Where one tenant runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// Human-readable description (`whole GPU 0`, `MPS 25% SMs, 20480 MiB`, `MIG 1g.10gb MIG-…`).
    pub label: String,
    /// Environment variables set for the tenant process.
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
}

/// `CUDA_*` variables a tenant must not inherit from the user's shell: each slot sets its own.
pub const CLEARED_ENV: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_LOG_DIRECTORY",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
];

fn base_env(visible: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("CUDA_VISIBLE_DEVICES".into(), visible.to_string());
    env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
    env
}

/// Time-slicing: every tenant on the whole GPU. `no_mps_dir` is an empty directory given as the
/// MPS pipe directory, so that a system-wide MPS daemon (if one runs) does not capture the tenants.
pub fn plan_timeslice(t: &Target, tenants: u32, no_mps_dir: &Path) -> Result<Vec<Slot>, SlotError> {
    if t.mig_enabled == Some(true) {
        return Err(SlotError::MigOnForTimeslice { gpu: t.index });
    }
    if let Some(mode) = &t.compute_mode {
        if !mode.eq_ignore_ascii_case("default") && tenants > 1 {
            return Err(SlotError::ComputeMode {
                gpu: t.index,
                mode: mode.clone(),
            });
        }
    }
    let mut env = base_env(&t.visible_devices());
    env.insert(
        "CUDA_MPS_PIPE_DIRECTORY".into(),
        no_mps_dir.display().to_string(),
    );
    Ok((0..tenants)
        .map(|_| Slot {
            label: format!("whole GPU {}", t.index),
            env: env.clone(),
        })
        .collect())
}

/// The per-client limits for `tenants` MPS clients: `(SM percentage, memory MiB)`.
pub fn mps_share(tenants: u32, memory_mib: Option<u64>) -> (u32, Option<u64>) {
    let n = tenants.max(1);
    ((100 / n).max(1), memory_mib.map(|m| m / u64::from(n)))
}

/// Why MPS on the whole GPU cannot run here, if it cannot (checked before starting a daemon).
pub fn mps_precheck(t: &Target) -> Result<(), SlotError> {
    if t.mig_enabled == Some(true) {
        return Err(SlotError::MigOnForMps { gpu: t.index });
    }
    Ok(())
}

/// MPS: every tenant a client of one daemon, limited to its share. `client_env(percentage,
/// memory_mib)` gives the environment of such a client (pipe directory, limits, device).
pub fn plan_mps(
    t: &Target,
    tenants: u32,
    client_env: &dyn Fn(u32, Option<u64>) -> Result<BTreeMap<String, String>, MpsError>,
    note: &str,
) -> Result<Vec<Slot>, SlotError> {
    mps_precheck(t)?;
    let (pct, mem) = mps_share(tenants, t.memory_mib);
    let mut env = base_env(&t.visible_devices());
    // The MPS guide: the server remaps devices for its clients, so a client given the GPU's
    // index could see the wrong device or none. Only a UUID is passed on; the control's client
    // environment decides (it leaves the variable out without one).
    env.remove("CUDA_VISIBLE_DEVICES");
    env.extend(client_env(pct, mem).map_err(SlotError::ClientEnv)?);
    let mut label = format!("MPS client {pct}% SMs");
    if let Some(m) = mem {
        label.push_str(&format!(", {m} MiB"));
    }
    label.push_str(note);
    Ok((0..tenants)
        .map(|_| Slot {
            label: label.clone(),
            env: env.clone(),
        })
        .collect())
}

/// MIG: one existing MIG device per tenant. Prefers `tenants` devices of one profile (like the
/// seed's four equal instances); otherwise takes the first `tenants` in listing order. Like
/// time-slicing, each slot gets the empty `no_mps_dir` as its MPS pipe directory, so that a
/// system-wide MPS daemon does not capture the tenants.
pub fn plan_mig(t: &Target, tenants: u32, no_mps_dir: &Path) -> Result<Vec<Slot>, SlotError> {
    let n = tenants as usize;
    if t.mig_devices.is_empty() {
        return Err(match t.mig_enabled {
            Some(false) => SlotError::MigOff {
                gpu: t.index,
                name: t.name.clone(),
            },
            _ => SlotError::NoMigDevices {
                gpu: t.index,
                name: t.name.clone(),
                tenants,
            },
        });
    }
    if t.mig_devices.len() < n {
        return Err(SlotError::TooFewMigDevices {
            gpu: t.index,
            have: t.mig_devices.iter().map(|m| m.profile.clone()).collect(),
            tenants,
        });
    }
    let mut by_profile: BTreeMap<&str, Vec<&MigDevice>> = BTreeMap::new();
    for d in &t.mig_devices {
        by_profile.entry(d.profile.as_str()).or_default().push(d);
    }
    let chosen: Vec<&MigDevice> = by_profile
        .values()
        .find(|v| v.len() >= n)
        .map(|v| v[..n].to_vec())
        .unwrap_or_else(|| t.mig_devices.iter().take(n).collect());
    Ok(chosen
        .into_iter()
        .map(|d| {
            let mut env = base_env(&d.uuid);
            env.insert(
                "CUDA_MPS_PIPE_DIRECTORY".into(),
                no_mps_dir.display().to_string(),
            );
            Slot {
                label: format!("MIG {} {}", d.profile, d.uuid),
                env,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::parse_listing;

    fn target(fixture: &str) -> Target {
        let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
        let g = parse_listing(&std::fs::read_to_string(path).unwrap()).remove(0);
        Target {
            index: g.index,
            name: g.name,
            uuid: Some(g.uuid),
            memory_mib: Some(81920),
            mig_enabled: Some(!g.mig_devices.is_empty()),
            compute_mode: Some("Default".into()),
            mig_devices: g.mig_devices,
        }
    }

    #[test]
    fn mig_slots_are_kept_away_from_a_system_mps_daemon() {
        let t = target("h100-80gb_L_1.txt");
        for s in plan_mig(&t, 2, Path::new("/tmp/no-mps")).unwrap() {
            assert_eq!(s.env["CUDA_MPS_PIPE_DIRECTORY"], "/tmp/no-mps");
        }
    }

    #[test]
    fn mps_clients_get_a_uuid_or_no_device_at_all() {
        let env_of = |t: &Target| {
            let uuid = t.uuid.clone();
            let client = move |_: u32, _: Option<u64>| {
                let mut e = BTreeMap::new();
                e.insert("CUDA_MPS_PIPE_DIRECTORY".to_string(), "/tmp/p".to_string());
                if let Some(u) = &uuid {
                    e.insert("CUDA_VISIBLE_DEVICES".to_string(), u.clone());
                }
                Ok(e)
            };
            plan_mps(t, 2, &client, "").unwrap()[0].env.clone()
        };
        let mut t = target("h100-80gb_L_1.txt");
        t.mig_enabled = Some(false);
        t.mig_devices.clear();
        let uuid = t.uuid.clone().unwrap();
        assert_eq!(env_of(&t)["CUDA_VISIBLE_DEVICES"], uuid);
        // Without a UUID the bench used to fall back to the index, which breaks MPS clients.
        t.uuid = None;
        t.index = 3;
        assert!(!env_of(&t).contains_key("CUDA_VISIBLE_DEVICES"));
    }

    #[test]
    fn modes_parse() {
        assert_eq!(
            Mode::parse_list("mig,timeslice,mig").unwrap(),
            vec![Mode::Timeslice, Mode::Mig]
        );
        assert!(Mode::parse_list("vgpu").is_err());
        assert!(Mode::parse_list("").is_err());
    }

    #[test]
    fn mig_prefers_equal_instances() {
        // H100 PCIe: one 3g.40gb and three 1g.10gb; three tenants get the three 1g.10gb.
        let t = target("h100-80gb_L_1.txt");
        let slots = plan_mig(&t, 3, Path::new("/tmp/x")).unwrap();
        assert!(slots
            .iter()
            .all(|s| s.label.starts_with("MIG 1g.10gb MIG-")));
        let uuids: Vec<_> = slots
            .iter()
            .map(|s| s.env["CUDA_VISIBLE_DEVICES"].clone())
            .collect();
        let mut dedup = uuids.clone();
        dedup.dedup();
        assert_eq!(uuids.len(), dedup.len(), "each tenant its own device");
        // Four tenants: mixed profiles, listing order.
        let four = plan_mig(&t, 4, Path::new("/tmp/x")).unwrap();
        assert!(four[0].label.starts_with("MIG 3g.40gb"));
        // Five: not enough, and the reason says how many there are.
        let err = plan_mig(&t, 5, Path::new("/tmp/x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("has 4 MIG device(s)"), "{err}");
    }

    #[test]
    fn mig_off_is_a_skip_with_the_fix() {
        let mut t = target("a30_L_1.txt");
        t.mig_devices.clear();
        t.mig_enabled = Some(false);
        let err = plan_mig(&t, 2, Path::new("/tmp/x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not in MIG mode") && err.contains("never enables MIG"),
            "{err}"
        );
    }

    #[test]
    fn timeslice_needs_the_default_compute_mode() {
        let mut t = target("a30_L_1.txt");
        t.mig_enabled = Some(false);
        t.compute_mode = Some("Exclusive_Process".into());
        let err = plan_timeslice(&t, 2, Path::new("/tmp/x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Exclusive_Process compute mode"), "{err}");
        assert!(plan_timeslice(&t, 1, Path::new("/tmp/x")).is_ok());
        t.compute_mode = Some("Default".into());
        let slots = plan_timeslice(&t, 3, Path::new("/tmp/x")).unwrap();
        assert_eq!(slots.len(), 3);
        assert_eq!(slots[2].env["CUDA_MPS_PIPE_DIRECTORY"], "/tmp/x");
        assert_eq!(
            slots[0].env["CUDA_VISIBLE_DEVICES"],
            "GPU-1e44b340-5807-0dbe-62e6-343a6b8b8bcd"
        );
    }

    #[test]
    fn timeslice_and_mps_refuse_a_mig_gpu() {
        let t = target("a100-80gb_L_2.txt");
        assert!(plan_timeslice(&t, 2, Path::new("/tmp/x")).is_err());
        assert!(plan_mps(&t, 2, &|_, _| Ok(BTreeMap::new()), "").is_err());
    }

    #[test]
    fn mps_limits_split_the_gpu() {
        let mut t = target("a30_L_1.txt");
        t.mig_enabled = Some(false);
        t.memory_mib = Some(24576);
        let client = |pct: u32, mem: Option<u64>| {
            let mut e = BTreeMap::new();
            e.insert("CUDA_MPS_PIPE_DIRECTORY".to_string(), "/tmp/p".to_string());
            e.insert("PCT".to_string(), pct.to_string());
            e.insert("MEM".to_string(), format!("{mem:?}"));
            Ok(e)
        };
        let slots = plan_mps(&t, 4, &client, "").unwrap();
        assert_eq!(slots.len(), 4);
        let env = &slots[0].env;
        assert_eq!(env["PCT"], "25");
        assert_eq!(env["MEM"], "Some(6144)");
        assert_eq!(env["CUDA_MPS_PIPE_DIRECTORY"], "/tmp/p");
        assert_eq!(env["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
        assert_eq!(slots[0].label, "MPS client 25% SMs, 6144 MiB");
        assert_eq!(mps_share(3, None), (33, None));
        assert_eq!(mps_share(200, Some(100)), (1, Some(0)));
    }
}
