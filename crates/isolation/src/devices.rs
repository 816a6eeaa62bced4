//! Which device nodes a slice needs. Every CUDA process opens `nvidiactl`, its GPU's
//! `nvidiaN` and (for managed memory) `nvidia-uvm`; profilers also `nvidia-uvm-tools`. A MIG
//! instance is reached through its GPU's node plus its GPU-instance and compute-instance
//! capability nodes (see [`crate::caps`]). Device numbers come from `stat` of the nodes, so
//! the rules match what the kernel checks on `open`.

use std::fmt;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use crate::caps::{char_majors, MigMinors};
use crate::error::IsolationError;

/// One allowed character device (`c MAJOR:MINOR rwm` in cgroup v1 terms).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceRule {
    /// Major number.
    pub major: u32,
    /// Minor number; `None` for every minor of the major (`c 136:* rwm`).
    pub minor: Option<u32>,
    /// The node it came from (for messages and status).
    pub path: PathBuf,
}

/// The ordinary pseudo-devices every lease may open besides its slice's nodes (the set
/// container runtimes give every container): `null` 1:3, `zero` 1:5, `full` 1:7, `random`
/// 1:8, `urandom` 1:9, `tty` 5:0, `ptmx` 5:2 and the pseudo-terminals 136:*. Fixed numbers
/// of the kernel's `devices.txt`, so no `stat` is needed.
pub fn base_rules() -> Vec<DeviceRule> {
    [
        (1, Some(3), "/dev/null"),
        (1, Some(5), "/dev/zero"),
        (1, Some(7), "/dev/full"),
        (1, Some(8), "/dev/random"),
        (1, Some(9), "/dev/urandom"),
        (5, Some(0), "/dev/tty"),
        (5, Some(2), "/dev/ptmx"),
        (136, None, "/dev/pts/*"),
    ]
    .into_iter()
    .map(|(major, minor, path)| DeviceRule {
        major,
        minor,
        path: PathBuf::from(path),
    })
    .collect()
}

impl DeviceRule {
    /// The rule's line for `devices.allow`.
    pub fn allow_line(&self) -> String {
        match self.minor {
            Some(m) => format!("c {}:{m} rwm", self.major),
            None => format!("c {}:* rwm", self.major),
        }
    }

    /// The rule of an existing character-device node (`stat`, not following a symlink's
    /// target name but its device numbers).
    pub fn of_node(path: &Path) -> Result<DeviceRule, IsolationError> {
        let st = rustix::fs::stat(path).map_err(|e| IsolationError::Device {
            path: path.to_path_buf(),
            why: format!("cannot stat it ({e})"),
        })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::CharacterDevice {
            return Err(IsolationError::Device {
                path: path.to_path_buf(),
                why: "not a character device".into(),
            });
        }
        Ok(DeviceRule {
            major: rustix::fs::major(st.st_rdev),
            minor: Some(rustix::fs::minor(st.st_rdev)),
            path: path.to_path_buf(),
        })
    }
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.minor {
            Some(m) => write!(f, "{} ({}:{m})", self.path.display(), self.major),
            None => write!(f, "{} ({}:*)", self.path.display(), self.major),
        }
    }
}

/// What a slice reaches on the device side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceDevices {
    /// A whole GPU (MPS client or time-slice replica): `/dev/nvidia{minor}`.
    Gpu {
        /// The GPU's device minor (`/dev/nvidiaN`'s N; NVML's index on ordinary hosts).
        minor: u32,
    },
    /// A MIG instance: the GPU's node plus two capability nodes.
    Mig {
        /// The parent GPU's device minor.
        minor: u32,
        /// GPU instance ID.
        gi: u32,
        /// Compute instance ID.
        ci: u32,
    },
}

/// Where the device and driver files live: `/dev` and `/proc` on a host, a fixture tree in
/// tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevRoots {
    /// `/dev`.
    pub dev: PathBuf,
    /// `/proc`.
    pub proc: PathBuf,
}

impl Default for DevRoots {
    fn default() -> Self {
        DevRoots {
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
        }
    }
}

impl DevRoots {
    /// A tree laid out like `/` (with `dev/` and `proc/` under `root`).
    pub fn under(root: &Path) -> DevRoots {
        DevRoots {
            dev: root.join("dev"),
            proc: root.join("proc"),
        }
    }

    /// The `mig-minors` file.
    pub fn mig_minors_path(&self) -> PathBuf {
        self.proc.join("driver/nvidia-caps/mig-minors")
    }

    /// The allow-list for a slice: required nodes are errors when missing; `nvidia-uvm` and
    /// `nvidia-uvm-tools` are added when present (the driver creates them on first use).
    pub fn rules_for(&self, slice: SliceDevices) -> Result<Vec<DeviceRule>, IsolationError> {
        let minor = match slice {
            SliceDevices::Gpu { minor } | SliceDevices::Mig { minor, .. } => minor,
        };
        let mut out = vec![
            DeviceRule::of_node(&self.dev.join("nvidiactl"))?,
            DeviceRule::of_node(&self.dev.join(format!("nvidia{minor}")))?,
        ];
        for optional in ["nvidia-uvm", "nvidia-uvm-tools"] {
            let p = self.dev.join(optional);
            if p.exists() {
                out.push(DeviceRule::of_node(&p)?);
            }
        }
        if let SliceDevices::Mig { minor, gi, ci } = slice {
            let minors = MigMinors::read(&self.mig_minors_path())?;
            let (gi_minor, ci_minor) = minors.instance(minor, gi, ci)?;
            for m in [gi_minor, ci_minor] {
                out.push(self.cap_rule(m)?);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The rule for capability minor `m`: from its node when the node exists (it is created on
    /// first use by nvidia-modprobe), else with the `nvidia-caps` major of `/proc/devices`, so
    /// a node made later is covered too.
    fn cap_rule(&self, m: u32) -> Result<DeviceRule, IsolationError> {
        let node = self.dev.join(format!("nvidia-caps/nvidia-cap{m}"));
        if node.exists() {
            let r = DeviceRule::of_node(&node)?;
            if r.minor != Some(m) {
                return Err(IsolationError::Device {
                    path: node,
                    why: format!(
                        "its minor is {} but {} says {m}",
                        r.minor.unwrap_or_default(),
                        self.mig_minors_path().display()
                    ),
                });
            }
            return Ok(r);
        }
        let devices = self.proc.join("devices");
        let text =
            std::fs::read_to_string(&devices).map_err(|e| IsolationError::io(&devices, e))?;
        let major =
            *char_majors(&text)
                .get("nvidia-caps")
                .ok_or_else(|| IsolationError::Device {
                    path: devices.clone(),
                    why: "no `nvidia-caps` character device is registered".into(),
                })?;
        Ok(DeviceRule {
            major,
            minor: Some(m),
            path: node,
        })
    }
}
