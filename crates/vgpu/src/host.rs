//! The host backend: NVIDIA vGPUs on a KVM host, through sysfs, for both host frameworks.
//!
//! - **mdev** (Ampere on kernels before 6.8): the VFs of a GPU are mdev parents, each with
//!   `mdev_supported_types/nvidia-N/{name,available_instances,create}`; a vGPU is created by
//!   writing a UUID to `create` and removed by writing `1` to
//!   `/sys/bus/mdev/devices/<uuid>/remove`.
//! - **vendor VFIO** (vGPU 17+, kernel 6.8+): each VF has `nvidia/creatable_vgpu_types` and
//!   `nvidia/current_vgpu_type`; a vGPU is created by writing a type ID and removed by
//!   writing `0`.
//!
//! VFs are enabled through `sriov_numvfs`. Every write is read back; a write that did not take
//! effect is [`HostError::ReadBack`], and errno is mapped to [`HostError::Driver`] with what it
//! means there and what to do. A vGPU whose device is open (attached to a running VM) is never
//! written to: [`HostError::InUse`]. AMD Instinct partition modes (`current_compute_partition`,
//! `current_memory_partition` and their `available_*` lists) are read and set, the latter only
//! while no process holds the GPU.
//!
//! [`VgpuHost`] is the seam; [`SysfsHost`] implements it over any [`Sysfs`] (the real one, the
//! twin, or the twin's rendered tree).

use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_gpu::{GpuBackend, GpuError};

use crate::catalog::{strip_vendor, CatalogError, VgpuCatalog};
use crate::sysfs::{Errno, Sysfs, SysfsError};

/// Where a GPU's vGPUs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framework {
    /// Mediated devices on the VFs.
    Mdev,
    /// NVIDIA's vendor-specific VFIO (`nvidia/current_vgpu_type` per VF).
    VendorVfio,
}

impl fmt::Display for Framework {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framework::Mdev => "mdev",
            Framework::VendorVfio => "vendor-vfio",
        })
    }
}

/// One NVIDIA GPU (physical function) of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGpu {
    /// PCI address of the physical function.
    pub bdf: String,
    /// PCI device ID (`0x20b7`).
    pub pci_device_id: String,
    /// vGPU catalog board key, when known.
    pub board: Option<String>,
    /// The framework its VFs show; `None` while no VF is enabled.
    pub framework: Option<Framework>,
    /// `sriov_totalvfs`.
    pub total_vfs: u32,
    /// The enabled VFs, by `virtfnN` order.
    pub vfs: Vec<String>,
}

/// How a vGPU is addressed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Handle {
    /// A mediated device.
    Mdev {
        /// Its UUID.
        uuid: String,
        /// The VF it was created on.
        parent: String,
    },
    /// A VF holding a vGPU (vendor VFIO).
    Vf {
        /// The VF's PCI address.
        bdf: String,
    },
}

impl Handle {
    /// The VF the vGPU lives on.
    pub fn vf(&self) -> &str {
        match self {
            Handle::Mdev { parent, .. } => parent,
            Handle::Vf { bdf } => bdf,
        }
    }

    /// The sysfs device directory whose openness tells whether a VM holds the vGPU.
    pub fn dev_dir(&self) -> String {
        match self {
            Handle::Mdev { uuid, .. } => format!("/sys/bus/mdev/devices/{uuid}"),
            Handle::Vf { bdf } => format!("/sys/bus/pci/devices/{bdf}"),
        }
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handle::Mdev { uuid, .. } => write!(f, "mdev {uuid}"),
            Handle::Vf { bdf } => write!(f, "VF {bdf}"),
        }
    }
}

/// One vGPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vgpu {
    /// The physical function.
    pub gpu: String,
    /// How it is addressed.
    pub handle: Handle,
    /// Type ID (`nvidia-N` for mdev, the `current_vgpu_type` value for vendor VFIO).
    pub type_id: u32,
    /// Type name without `NVIDIA `, when the host shows it.
    pub type_name: Option<String>,
    /// Its device is open: a VM uses it.
    pub open: bool,
    /// The GPU instance behind a MIG-backed vGPU, where the host shows it.
    pub gi_id: Option<u32>,
}

/// A type a VF can take now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The VF.
    pub vf: String,
    /// Type ID on this card.
    pub type_id: u32,
    /// Type name without `NVIDIA `.
    pub type_name: String,
}

/// Where to create a vGPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// This VF (else the first VF that offers the type).
    pub vf: Option<String>,
    /// This mdev UUID (mdev only; else one derived from the VF's address).
    pub uuid: Option<String>,
}

/// An AMD Instinct GPU's partition modes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmdGpu {
    /// DRM card name (`card0`).
    pub card: String,
    /// `current_compute_partition` (SPX, DPX, QPX, CPX).
    pub compute: String,
    /// `current_memory_partition` (NPS1, NPS4).
    pub memory: String,
    /// `available_compute_partition`.
    pub available_compute: Vec<String>,
    /// `available_memory_partition`.
    pub available_memory: Vec<String>,
    /// A process holds the GPU.
    pub busy: bool,
}

/// Host backend errors: each says what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A sysfs call failed where no driver rule explains it.
    #[error("sysfs: {0}")]
    Sysfs(#[from] Box<SysfsError>),
    /// The driver refused a write; `meaning` is what that errno means for this write.
    #[error("{op}: the driver answered {errno}: {meaning}; {fix}")]
    Driver {
        /// What was being done.
        op: String,
        /// The errno.
        errno: Errno,
        /// What it means here.
        meaning: String,
        /// What to do.
        fix: String,
        /// The sysfs call.
        #[source]
        source: Box<SysfsError>,
    },
    /// The vGPU is attached to a running VM.
    #[error("{handle} is attached to a running VM (its device is open): it is not destroyed; stop or detach the VM first")]
    InUse {
        /// The vGPU.
        handle: String,
    },
    /// No VF can take the type now.
    #[error("GPU {gpu}: no VF can take a {type_name} now: {why}")]
    NoRoom {
        /// The GPU.
        gpu: String,
        /// The type.
        type_name: String,
        /// Why, and what to do.
        why: String,
    },
    /// Not a GPU of this host.
    #[error("no NVIDIA GPU {bdf} with SR-IOV on this host; GPUs: {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownGpu {
        /// What was asked for.
        bdf: String,
        /// The GPUs there are.
        known: Vec<String>,
    },
    /// Not a vGPU of this host.
    #[error("no vGPU {handle} on this host; see `tessera vgpu status`")]
    UnknownVgpu {
        /// What was asked for.
        handle: String,
    },
    /// A catalog lookup failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A write returned success but reading back shows something else.
    #[error("wrote `{wrote}` to {path} but read back `{read}`: the write did not take effect; run `tessera vgpu status` and retry")]
    ReadBack {
        /// The file.
        path: String,
        /// What was written.
        wrote: String,
        /// What was read.
        read: String,
    },
    /// The host cannot do this.
    #[error("{what}: {why}")]
    Unsupported {
        /// What was asked.
        what: String,
        /// Why not, and what to do.
        why: String,
    },
    /// The MIG backend failed (GPU instances of MIG-backed types).
    #[error("GPU {gpu}: {source}")]
    Mig {
        /// The GPU.
        gpu: String,
        /// The MIG backend's error.
        #[source]
        source: Box<GpuError>,
    },
}

impl HostError {
    /// The errno behind the error, if a sysfs call returned one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            HostError::Sysfs(e) => Some(e.errno),
            HostError::Driver { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A host's vGPUs: the seam the agent and the CLI use.
pub trait VgpuHost {
    /// A short description.
    fn describe(&self) -> String;
    /// The NVIDIA GPUs with SR-IOV, by PCI address.
    fn gpus(&mut self) -> Result<Vec<HostGpu>, HostError>;
    /// The vGPUs of a GPU, by VF order.
    fn vgpus(&mut self, gpu: &HostGpu) -> Result<Vec<Vgpu>, HostError>;
    /// What each VF of a GPU can take now.
    fn offers(&mut self, gpu: &HostGpu) -> Result<Vec<Offer>, HostError>;
    /// Create a vGPU of `type_name` (catalog name, `NVIDIA ` optional); read back.
    fn create(&mut self, gpu: &HostGpu, type_name: &str, at: &Target) -> Result<Vgpu, HostError>;
    /// Destroy a vGPU that no VM holds; read back. [`HostError::InUse`] when one does.
    fn destroy(&mut self, vgpu: &Vgpu) -> Result<(), HostError>;
    /// Set the number of VFs of a GPU (`sriov_numvfs`); read back.
    fn set_vfs(&mut self, gpu: &str, count: u32) -> Result<(), HostError>;
    /// AMD Instinct GPUs with partition modes.
    fn amd_gpus(&mut self) -> Result<Vec<AmdGpu>, HostError>;
    /// Set an AMD GPU's compute and/or memory partition, only while nothing holds it.
    fn set_amd_partition(
        &mut self,
        card: &str,
        compute: Option<&str>,
        memory: Option<&str>,
    ) -> Result<AmdGpu, HostError>;
    /// The MIG backend and its index of `gpu`, for MIG-backed types.
    fn mig(&mut self, gpu: &str) -> Option<(&mut dyn GpuBackend, u32)>;
}

/// The UUID tessera gives an mdev on a VF when none is asked for: derived from the VF's PCI
/// address, so it is the same on every run and unique on the host (one vGPU per VF).
pub fn uuid_for_vf(vf: &str) -> String {
    let digits: String = vf.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let n = u64::from_str_radix(&digits, 16).unwrap_or(0) & 0xffff_ffff_ffff;
    format!("7e55e1a0-0000-4000-8000-{n:012x}")
}

/// Parse `creatable_vgpu_types`: a header line, then `ID : NVIDIA NAME` lines.
pub fn parse_creatable(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .filter_map(|l| {
            let (id, name) = l.split_once(':')?;
            let id: u32 = id.trim().parse().ok()?;
            Some((id, strip_vendor(name).to_string()))
        })
        .collect()
}

/// [`VgpuHost`] over sysfs.
pub struct SysfsHost<F: Sysfs> {
    fs: F,
    catalog: VgpuCatalog,
    /// Type ID -> name per GPU, learned from every `creatable_vgpu_types` read: the lists
    /// shrink as VFs fill (to the header alone on a full card), so an ID seen once is kept.
    names: std::sync::Mutex<
        std::collections::BTreeMap<String, std::collections::BTreeMap<u32, String>>,
    >,
}

impl<F: Sysfs> fmt::Debug for SysfsHost<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SysfsHost")
            .field("fs", &self.fs.describe())
            .finish()
    }
}

const PCI: &str = "/sys/bus/pci/devices";
const MDEV_BUS: &str = "/sys/class/mdev_bus";
const DRM: &str = "/sys/class/drm";

fn trimmed(s: String) -> String {
    s.trim().to_string()
}

impl<F: Sysfs> SysfsHost<F> {
    /// A host over `fs`, naming types with `catalog`.
    pub fn new(fs: F, catalog: VgpuCatalog) -> SysfsHost<F> {
        SysfsHost {
            fs,
            catalog,
            names: Default::default(),
        }
    }

    /// The type names learned so far (per GPU: type ID -> name), to keep across runs.
    pub fn names(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeMap<u32, String>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Start with type names learned by an earlier run.
    pub fn with_names(
        self,
        names: std::collections::BTreeMap<String, std::collections::BTreeMap<u32, String>>,
    ) -> Self {
        *self.names.lock().unwrap_or_else(|e| e.into_inner()) = names;
        self
    }

    /// The file layer back.
    pub fn into_inner(self) -> F {
        self.fs
    }

    /// The file layer.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// The file layer, mutably (tests drive the twin through it).
    pub fn fs_mut(&mut self) -> &mut F {
        &mut self.fs
    }

    /// The catalog.
    pub fn catalog(&self) -> &VgpuCatalog {
        &self.catalog
    }

    fn gpu(&mut self, bdf: &str) -> Result<HostGpu, HostError> {
        let gpus = self.gpus()?;
        gpus.iter()
            .find(|g| g.bdf == bdf)
            .cloned()
            .ok_or_else(|| HostError::UnknownGpu {
                bdf: bdf.to_string(),
                known: gpus.iter().map(|g| g.bdf.clone()).collect(),
            })
    }

    /// Check a type name against the board's catalog entry (typos get a suggestion).
    fn canonical_type(&self, gpu: &HostGpu, name: &str) -> Result<String, HostError> {
        match &gpu.board {
            Some(b) => Ok(self.catalog.board(b)?.vgpu_type(name)?.name.clone()),
            None => Ok(strip_vendor(name).to_string()),
        }
    }

    fn mdev_types(&self, vf: &str) -> Result<Vec<(u32, String, u32)>, HostError> {
        let dir = format!("{MDEV_BUS}/{vf}/mdev_supported_types");
        let mut out = Vec::new();
        for t in self.fs.list(&dir)? {
            let Some(id) = t.strip_prefix("nvidia-").and_then(|n| n.parse().ok()) else {
                continue;
            };
            let name = strip_vendor(&self.fs.read(&format!("{dir}/{t}/name"))?).to_string();
            let avail = trimmed(self.fs.read(&format!("{dir}/{t}/available_instances"))?)
                .parse()
                .unwrap_or(0);
            out.push((id, name, avail));
        }
        Ok(out)
    }

    /// Type ID -> name on this card, from every VF's creatable list now and from the lists
    /// read before (vendor VFIO). A type no list has shown in this process stays nameless:
    /// NVML's supported-types call, which does not shrink, would name it (not used here).
    fn vfio_names(&self, gpu: &HostGpu) -> Vec<(u32, String)> {
        for vf in &gpu.vfs {
            if let Ok(t) = self
                .fs
                .read(&format!("{PCI}/{vf}/nvidia/creatable_vgpu_types"))
            {
                self.learn(&gpu.bdf, &parse_creatable(&t));
            }
        }
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names
            .get(&gpu.bdf)
            .map(|m| m.iter().map(|(i, n)| (*i, n.clone())).collect())
            .unwrap_or_default()
    }

    fn learn(&self, gpu: &str, seen: &[(u32, String)]) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let m = names.entry(gpu.to_string()).or_default();
        for (id, n) in seen {
            m.insert(*id, n.clone());
        }
    }

    fn vgpu_on(&self, gpu: &HostGpu, handle: Handle) -> Result<Option<Vgpu>, HostError> {
        Ok(self.vgpus_of(gpu)?.into_iter().find(|v| v.handle == handle))
    }

    fn vgpus_of(&self, gpu: &HostGpu) -> Result<Vec<Vgpu>, HostError> {
        let mut out = Vec::new();
        match gpu.framework {
            None => {}
            Some(Framework::Mdev) => {
                for vf in &gpu.vfs {
                    let Ok(entries) = self.fs.list(&format!("{MDEV_BUS}/{vf}")) else {
                        continue;
                    };
                    for e in entries {
                        if uuid::Uuid::parse_str(&e).is_err() {
                            continue;
                        }
                        let dir = format!("{MDEV_BUS}/{vf}/{e}");
                        let type_dir = self.fs.link_name(&format!("{dir}/mdev_type"))?;
                        let type_id = type_dir
                            .strip_prefix("nvidia-")
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        let name = self
                            .fs
                            .read(&format!("{dir}/mdev_type/name"))
                            .ok()
                            .map(|n| strip_vendor(&n).to_string());
                        let handle = Handle::Mdev {
                            uuid: e.clone(),
                            parent: vf.clone(),
                        };
                        let open = self.fs.is_open(&handle.dev_dir())?;
                        out.push(Vgpu {
                            gpu: gpu.bdf.clone(),
                            handle,
                            type_id,
                            type_name: name,
                            open,
                            gi_id: None,
                        });
                    }
                }
            }
            Some(Framework::VendorVfio) => {
                let names = self.vfio_names(gpu);
                for vf in &gpu.vfs {
                    let cur: u32 = trimmed(
                        self.fs
                            .read(&format!("{PCI}/{vf}/nvidia/current_vgpu_type"))?,
                    )
                    .parse()
                    .unwrap_or(0);
                    if cur == 0 {
                        continue;
                    }
                    // ENXIO (or a missing file in a rendered tree) until a vGPU exists, and
                    // for time-sliced types.
                    let gi_id = self
                        .fs
                        .read(&format!("{PCI}/{vf}/nvidia/gpu_instance_id"))
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    let handle = Handle::Vf { bdf: vf.clone() };
                    let open = self.fs.is_open(&handle.dev_dir())?;
                    out.push(Vgpu {
                        gpu: gpu.bdf.clone(),
                        handle,
                        type_id: cur,
                        type_name: names
                            .iter()
                            .find(|(i, _)| *i == cur)
                            .map(|(_, n)| n.clone()),
                        open,
                        gi_id,
                    });
                }
            }
        }
        Ok(out)
    }

    fn driver(op: String, e: SysfsError, table: &[(Errno, &str, &str)]) -> HostError {
        let generic: &[(Errno, &str, &str)] = &[
            (
                Errno::EACCES,
                "the file is not writable by this user",
                "run as root",
            ),
            (
                Errno::ENOENT,
                "the file is gone (the VF or device was removed meanwhile)",
                "run `tessera vgpu status` and retry",
            ),
            (Errno::EAGAIN, "the driver is busy", "retry"),
        ];
        match table.iter().chain(generic).find(|(n, _, _)| *n == e.errno) {
            Some((errno, meaning, fix)) => HostError::Driver {
                op,
                errno: *errno,
                meaning: meaning.to_string(),
                fix: fix.to_string(),
                source: Box::new(e),
            },
            None => HostError::Driver {
                op,
                errno: e.errno,
                meaning: "not an answer this write is documented to give".into(),
                fix: "check `dmesg` for NVRM messages".into(),
                source: Box::new(e),
            },
        }
    }

    fn amd(&self, card: &str) -> Result<AmdGpu, HostError> {
        let dev = format!("{DRM}/{card}/device");
        let list = |f: &str| -> Result<Vec<String>, HostError> {
            Ok(self
                .fs
                .read(&format!("{dev}/{f}"))?
                .split([',', ' ', '\n'])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect())
        };
        Ok(AmdGpu {
            card: card.to_string(),
            compute: trimmed(self.fs.read(&format!("{dev}/current_compute_partition"))?),
            memory: trimmed(self.fs.read(&format!("{dev}/current_memory_partition"))?),
            available_compute: list("available_compute_partition")?,
            available_memory: list("available_memory_partition")?,
            busy: self.fs.is_open(&dev)?,
        })
    }
}

impl<F: Sysfs> VgpuHost for SysfsHost<F> {
    fn describe(&self) -> String {
        self.fs.describe()
    }

    fn gpus(&mut self) -> Result<Vec<HostGpu>, HostError> {
        let mut out = Vec::new();
        let devices = match self.fs.list(PCI) {
            Ok(d) => d,
            Err(e) if e.errno == Errno::ENOENT => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for d in devices {
            let dir = format!("{PCI}/{d}");
            if self
                .fs
                .read(&format!("{dir}/vendor"))
                .map(trimmed)
                .ok()
                .as_deref()
                != Some("0x10de")
                || self.fs.exists(&format!("{dir}/physfn"))
            {
                continue;
            }
            let Ok(total) = self.fs.read(&format!("{dir}/sriov_totalvfs")) else {
                continue;
            };
            let pci_device_id = trimmed(self.fs.read(&format!("{dir}/device"))?);
            let mut virtfns: Vec<(u32, String)> = Vec::new();
            for e in self.fs.list(&dir)? {
                if let Some(i) = e.strip_prefix("virtfn").and_then(|n| n.parse().ok()) {
                    virtfns.push((i, self.fs.link_name(&format!("{dir}/{e}"))?));
                }
            }
            virtfns.sort();
            let vfs: Vec<String> = virtfns.into_iter().map(|(_, v)| v).collect();
            let framework = if vfs
                .iter()
                .any(|v| self.fs.exists(&format!("{MDEV_BUS}/{v}")))
            {
                Some(Framework::Mdev)
            } else if vfs.iter().any(|v| {
                self.fs
                    .exists(&format!("{PCI}/{v}/nvidia/current_vgpu_type"))
            }) {
                Some(Framework::VendorVfio)
            } else {
                None
            };
            out.push(HostGpu {
                board: self
                    .catalog
                    .board_by_pci_id(&pci_device_id)
                    .map(|b| b.key.clone()),
                bdf: d,
                pci_device_id,
                framework,
                total_vfs: trimmed(total).parse().unwrap_or(0),
                vfs,
            });
        }
        Ok(out)
    }

    fn vgpus(&mut self, gpu: &HostGpu) -> Result<Vec<Vgpu>, HostError> {
        let mut out = self.vgpus_of(gpu)?;
        // A MIG-backed vGPU no list names any more is named by its GPU instance's profile:
        // the catalog has one type per profile and board.
        if out
            .iter()
            .any(|v| v.type_name.is_none() && v.gi_id.is_some())
        {
            let board = gpu
                .board
                .as_deref()
                .and_then(|b| self.catalog.board(b).ok())
                .cloned();
            let idx = self.fs.mig_index(&gpu.bdf);
            let gis = match (idx, self.fs.mig()) {
                (Some(i), Some(m)) => m.instances(i).unwrap_or_default(),
                _ => Vec::new(),
            };
            for v in out.iter_mut().filter(|v| v.type_name.is_none()) {
                let profile = gis
                    .iter()
                    .find(|g| Some(g.gi_id) == v.gi_id)
                    .map(|g| g.profile.clone());
                let name = board.as_ref().zip(profile).and_then(|(b, p)| {
                    b.types
                        .iter()
                        .find(|t| t.mig.as_deref() == Some(p.as_str()))
                        .map(|t| t.name.clone())
                });
                if let Some(n) = name {
                    self.learn(&gpu.bdf, &[(v.type_id, n.clone())]);
                    v.type_name = Some(n);
                }
            }
        }
        Ok(out)
    }

    fn offers(&mut self, gpu: &HostGpu) -> Result<Vec<Offer>, HostError> {
        let mut out = Vec::new();
        match gpu.framework {
            None => {}
            Some(Framework::Mdev) => {
                for vf in &gpu.vfs {
                    for (id, name, avail) in self.mdev_types(vf)? {
                        if avail > 0 {
                            out.push(Offer {
                                vf: vf.clone(),
                                type_id: id,
                                type_name: name,
                            });
                        }
                    }
                }
            }
            Some(Framework::VendorVfio) => {
                for vf in &gpu.vfs {
                    let text = self
                        .fs
                        .read(&format!("{PCI}/{vf}/nvidia/creatable_vgpu_types"))?;
                    let list = parse_creatable(&text);
                    self.learn(&gpu.bdf, &list);
                    for (id, name) in list {
                        out.push(Offer {
                            vf: vf.clone(),
                            type_id: id,
                            type_name: name,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    fn create(&mut self, gpu: &HostGpu, type_name: &str, at: &Target) -> Result<Vgpu, HostError> {
        let name = self.canonical_type(gpu, type_name)?;
        let Some(fw) = gpu.framework else {
            return Err(HostError::NoRoom {
                gpu: gpu.bdf.clone(),
                type_name: name,
                why: format!(
                    "no VF is enabled; enable them first (`tessera vgpu vfs --gpu {} --count N`, or NVIDIA's `sriov-manage -e {}`)",
                    gpu.bdf, gpu.bdf
                ),
            });
        };
        if let Some(vf) = &at.vf {
            if !gpu.vfs.contains(vf) {
                return Err(HostError::NoRoom {
                    gpu: gpu.bdf.clone(),
                    type_name: name,
                    why: format!("{vf} is not one of its VFs ({})", gpu.vfs.join(", ")),
                });
            }
        }
        let offers = self.offers(gpu)?;
        let pick = offers
            .iter()
            .filter(|o| o.type_name.eq_ignore_ascii_case(&name))
            .find(|o| at.vf.as_ref().is_none_or(|v| *v == o.vf))
            .cloned();
        let existing = self.vgpus_of(gpu)?;
        match fw {
            Framework::Mdev => {
                let Some(offer) = pick else {
                    return Err(HostError::NoRoom {
                        gpu: gpu.bdf.clone(),
                        type_name: name.clone(),
                        why: no_room_why(&name, &existing, at.vf.as_deref()),
                    });
                };
                let uuid = match &at.uuid {
                    Some(u) => uuid::Uuid::parse_str(u)
                        .map_err(|e| HostError::Unsupported {
                            what: format!("mdev UUID `{u}`"),
                            why: format!("not a UUID ({e}); give one like 7e55e1a0-0000-4000-8000-000000410004"),
                        })?
                        .hyphenated()
                        .to_string(),
                    None => uuid_for_vf(&offer.vf),
                };
                let path = format!(
                    "{MDEV_BUS}/{}/mdev_supported_types/nvidia-{}/create",
                    offer.vf, offer.type_id
                );
                let op = format!("create {name} as mdev {uuid} on VF {}", offer.vf);
                if let Err(e) = self.fs.write(&path, &uuid) {
                    return Err(Self::driver(op, e, &[
                        (Errno::EEXIST, "an mdev with this UUID already exists", "pick another UUID, or use the existing vGPU"),
                        (Errno::EUSERS, "no instance of the type is available on this VF (another vGPU is there, or the GPU's maximum is reached)", "pick another VF or type; see `tessera vgpu status`"),
                        (Errno::EINVAL, "the driver refused the type here (same-size rule, a missing GPU instance for a MIG-backed type, or a bad UUID)", "see `tessera vgpu status` for what is creatable"),
                        (Errno::EIO, "the driver failed to create it", "for a MIG-backed type create its GPU instance first; else check `dmesg` for NVRM messages"),
                    ]));
                }
                let handle = Handle::Mdev {
                    uuid: uuid.clone(),
                    parent: offer.vf.clone(),
                };
                match self.vgpu_on(gpu, handle)? {
                    Some(v) if v.type_id == offer.type_id => Ok(v),
                    other => Err(HostError::ReadBack {
                        path,
                        wrote: uuid,
                        read: match other {
                            Some(v) => format!("mdev of type nvidia-{}", v.type_id),
                            None => "no such mdev".into(),
                        },
                    }),
                }
            }
            Framework::VendorVfio => {
                let (vf, id) = match (pick, &at.vf) {
                    (Some(o), _) => (o.vf, o.type_id),
                    (None, Some(vf)) => {
                        // Not offered on that VF: still write it, so the driver says why
                        // (EPERM occupied, EIO missing GPU instance, EINVAL same-size rule).
                        let names = self.vfio_names(gpu);
                        match names.iter().find(|(_, n)| n.eq_ignore_ascii_case(&name)) {
                            Some((id, _)) => (vf.clone(), *id),
                            None => {
                                return Err(HostError::NoRoom {
                                    gpu: gpu.bdf.clone(),
                                    type_name: name.clone(),
                                    why: no_room_why(&name, &existing, Some(vf)),
                                })
                            }
                        }
                    }
                    (None, None) => {
                        return Err(HostError::NoRoom {
                            gpu: gpu.bdf.clone(),
                            type_name: name.clone(),
                            why: no_room_why(&name, &existing, None),
                        })
                    }
                };
                let path = format!("{PCI}/{vf}/nvidia/current_vgpu_type");
                let op = format!("create {name} (type {id}) on VF {vf}");
                if let Err(e) = self.fs.write(&path, &id.to_string()) {
                    return Err(Self::driver(op, e, &[
                        (Errno::EPERM, "the VF already holds a vGPU", "pick a free VF; see `tessera vgpu status`"),
                        (Errno::EIO, "the driver failed to create it (for a MIG-backed type: no free GPU instance of its profile)", "create the GPU instance first (`tessera vgpu apply` does), else check `dmesg`"),
                        (Errno::EINVAL, "the type is not creatable on this VF now (same-size rule: once one vGPU exists only types of its frame buffer size fit, unless mixed-size mode is on)", "see `tessera vgpu status` for what is creatable"),
                        (Errno::EBUSY, "the VF is in use", "stop the VM using it"),
                    ]));
                }
                let read = trimmed(self.fs.read(&path)?);
                if read != id.to_string() {
                    return Err(HostError::ReadBack {
                        path,
                        wrote: id.to_string(),
                        read,
                    });
                }
                self.vgpu_on(gpu, Handle::Vf { bdf: vf.clone() })?
                    .ok_or_else(|| HostError::ReadBack {
                        path,
                        wrote: id.to_string(),
                        read: "no vGPU on the VF".into(),
                    })
            }
        }
    }

    fn destroy(&mut self, vgpu: &Vgpu) -> Result<(), HostError> {
        if self.fs.is_open(&vgpu.handle.dev_dir())? {
            return Err(HostError::InUse {
                handle: vgpu.handle.to_string(),
            });
        }
        match &vgpu.handle {
            Handle::Mdev { uuid, parent } => {
                let path = format!("/sys/bus/mdev/devices/{uuid}/remove");
                if let Err(e) = self.fs.write(&path, "1") {
                    return Err(Self::driver(
                        format!("remove mdev {uuid}"),
                        e,
                        &[
                            (Errno::EBUSY, "a VM holds it", "stop or detach the VM first"),
                            (
                                Errno::ENOENT,
                                "no such mdev (already removed)",
                                "nothing to do; run `tessera vgpu status`",
                            ),
                        ],
                    ));
                }
                if self.fs.exists(&format!("{MDEV_BUS}/{parent}/{uuid}")) {
                    return Err(HostError::ReadBack {
                        path,
                        wrote: "1".into(),
                        read: "the mdev is still there".into(),
                    });
                }
            }
            Handle::Vf { bdf } => {
                let path = format!("{PCI}/{bdf}/nvidia/current_vgpu_type");
                if let Err(e) = self.fs.write(&path, "0") {
                    return Err(Self::driver(
                        format!("remove the vGPU of VF {bdf}"),
                        e,
                        &[
                            (
                                Errno::EPERM,
                                "the VF holds no vGPU",
                                "nothing to do; run `tessera vgpu status`",
                            ),
                            (Errno::EBUSY, "a VM holds it", "stop or detach the VM first"),
                        ],
                    ));
                }
                let read = trimmed(self.fs.read(&path)?);
                if read != "0" {
                    return Err(HostError::ReadBack {
                        path,
                        wrote: "0".into(),
                        read,
                    });
                }
            }
        }
        Ok(())
    }

    fn set_vfs(&mut self, gpu: &str, count: u32) -> Result<(), HostError> {
        let g = self.gpu(gpu)?;
        let path = format!("{PCI}/{gpu}/sriov_numvfs");
        if let Err(e) = self.fs.write(&path, &count.to_string()) {
            let cur = g.vfs.len();
            let total = g.total_vfs;
            return Err(Self::driver(format!("set {count} VFs on {gpu}"), e, &[
                (Errno::ERANGE, &format!("{count} is above sriov_totalvfs ({total})"), &format!("ask for at most {total}")),
                (Errno::EBUSY, &format!("{cur} VFs are enabled (one non-zero count cannot become another), or a vGPU on them is in use"), "set 0 first, which removes every VF and its vGPU, once no VM uses them"),
                (Errno::ENOENT, "the driver cannot configure SR-IOV on this GPU", "load the NVIDIA vGPU manager, or use NVIDIA's `sriov-manage -e`"),
                (Errno::EINVAL, "not a count, or the driver refuses raw writes here", "give a number; on NVIDIA vGPU hosts that refuse raw writes, run `/usr/lib/nvidia/sriov-manage -e BDF` (tessera then finds the VFs and does not write the count)"),
                    (Errno::EPERM, "the driver refuses raw writes here", "run `/usr/lib/nvidia/sriov-manage -e BDF` instead; tessera then finds the VFs and does not write the count"),
                    (Errno::EIO, "the driver failed to change the VFs", "retry; NVIDIA's `sriov-manage` retries a transient 'Cannot obtain unbindLock'"),
            ]));
        }
        let read = trimmed(self.fs.read(&path)?);
        if read != count.to_string() {
            return Err(HostError::ReadBack {
                path,
                wrote: count.to_string(),
                read,
            });
        }
        Ok(())
    }

    fn amd_gpus(&mut self) -> Result<Vec<AmdGpu>, HostError> {
        let mut out = Vec::new();
        let cards = match self.fs.list(DRM) {
            Ok(c) => c,
            Err(e) if e.errno == Errno::ENOENT => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for c in cards {
            let dev = format!("{DRM}/{c}/device");
            if c.starts_with("card")
                && !c.contains('-')
                && self
                    .fs
                    .read(&format!("{dev}/vendor"))
                    .map(trimmed)
                    .ok()
                    .as_deref()
                    == Some("0x1002")
                && self.fs.exists(&format!("{dev}/current_compute_partition"))
            {
                out.push(self.amd(&c)?);
            }
        }
        Ok(out)
    }

    fn set_amd_partition(
        &mut self,
        card: &str,
        compute: Option<&str>,
        memory: Option<&str>,
    ) -> Result<AmdGpu, HostError> {
        let before = self.amd(card)?;
        if before.busy {
            return Err(HostError::Unsupported {
                what: format!("change the partition mode of {card}"),
                why: "a process holds the GPU; partition modes change only while no work runs: stop it first".into(),
            });
        }
        for (kind, want, avail) in [
            ("compute", compute, &before.available_compute),
            ("memory", memory, &before.available_memory),
        ] {
            let Some(want) = want else { continue };
            let want = want.to_uppercase();
            if !avail.contains(&want) {
                return Err(HostError::Unsupported {
                    what: format!("{kind} partition {want} on {card}"),
                    why: format!("the GPU offers {}", avail.join(", ")),
                });
            }
            let path = format!("{DRM}/{card}/device/current_{kind}_partition");
            if let Err(e) = self.fs.write(&path, &want) {
                return Err(Self::driver(
                    format!("set {card} {kind} partition {want}"),
                    e,
                    &[
                        (
                            Errno::EBUSY,
                            "the GPU is in use",
                            "stop the work on it first",
                        ),
                        (
                            Errno::EINVAL,
                            "the mode is not valid with the other partition setting",
                            "see the available modes",
                        ),
                    ],
                ));
            }
            let read = trimmed(self.fs.read(&path)?);
            if read != want {
                return Err(HostError::ReadBack {
                    path,
                    wrote: want,
                    read,
                });
            }
        }
        self.amd(card)
    }

    fn mig(&mut self, gpu: &str) -> Option<(&mut dyn GpuBackend, u32)> {
        let idx = self.fs.mig_index(gpu)?;
        self.fs.mig().map(|m| (m, idx))
    }
}

/// Why nothing offers `name`, in words: the same-size rule when another size is there.
pub fn no_room_why(name: &str, existing: &[Vgpu], vf: Option<&str>) -> String {
    let mut why = match vf {
        Some(vf) => format!("VF {vf} does not offer it now"),
        None => "no VF offers it now".to_string(),
    };
    if let Some(other) = existing
        .iter()
        .find_map(|v| v.type_name.clone())
        .filter(|t| t != name)
    {
        why.push_str(&format!(
            " ({other} already exists there; without mixed-size mode every time-sliced vGPU of a GPU must have the same frame buffer size, and MIG-backed types need a free GPU instance of their profile)"
        ));
    } else {
        why.push_str(" (all VFs hold vGPUs, the type's maximum is reached, or a MIG-backed type has no free GPU instance)");
    }
    why
}

impl From<SysfsError> for HostError {
    fn from(e: SysfsError) -> Self {
        HostError::Sysfs(Box::new(e))
    }
}
