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
    /// Minor number.
    pub minor: u32,
    /// The node it came from (for messages and status).
    pub path: PathBuf,
}

impl DeviceRule {
    /// The rule's line for `devices.allow`.
    pub fn allow_line(&self) -> String {
        format!("c {}:{} rwm", self.major, self.minor)
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
            minor: rustix::fs::minor(st.st_rdev),
            path: path.to_path_buf(),
        })
    }
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}:{})", self.path.display(), self.major, self.minor)
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
            if r.minor != m {
                return Err(IsolationError::Device {
                    path: node,
                    why: format!(
                        "its minor is {} but {} says {m}",
                        r.minor,
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
            minor: m,
            path: node,
        })
    }
}
