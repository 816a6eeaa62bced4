//! The errno-faithful twin: a behaviour model of a vGPU host's sysfs, driver rules included.
//!
//! A plain fake sysfs tree is enough for reads and layout only: writes to ordinary files always
//! succeed and change nothing else. The [`Twin`] is a state machine per GPU that answers the
//! same [`Sysfs`] calls as the kernel and NVIDIA's driver would:
//!
//! - `sriov_numvfs`: `ERANGE` above `sriov_totalvfs`, `EBUSY` when one non-zero count would
//!   become another (kernel `iov.c`), `ENOENT` where SR-IOV cannot be configured; enabling VFs
//!   wipes the GPU's MIG instances (as `sriov-manage` does); disabling them removes every VF and
//!   its vGPU (`EBUSY` while a VM holds one: a twin choice, the kernel would wait).
//! - mdev: one vGPU per VF (`available_instances` 0/1), `EEXIST` for a duplicate UUID, `EUSERS`
//!   when the type is not available there, `EINVAL` for a malformed UUID; `remove` of an open
//!   mdev is `EBUSY`.
//! - vendor VFIO: `creatable_vgpu_types` lists what the VF can take now (header only when
//!   full); writing an ID to `current_vgpu_type` on an occupied VF, or `0` on an empty one, is
//!   `EPERM`; a MIG-backed type without a free GPU instance is `EIO`; a type the rules forbid
//!   is `EINVAL`; `gpu_instance_id` and `placement_id` are `ENXIO` until a vGPU exists.
//! - the same-size rule: once a time-sliced vGPU exists only types of its frame buffer stay
//!   creatable, up to the type's maximum, unless mixed-size mode is on (then the frame buffers
//!   must fit and `max_mixed` holds). MIG mode on offers only MIG-backed types, one per free
//!   GPU instance of their profile; MIG mode off only time-sliced ones.
//! - [`Twin::reboot`]: VFs, vGPUs and GPU instances are gone, and MIG mode too on Hopper and
//!   later; [`Twin::set_open`] models a VM holding a vGPU; injected faults
//!   ([`TwinFaults`]) fail a write with `EIO` before or after it takes effect.
//!
//! MIG GPU instances live in a [`SimBackend`] (the MIG twin of `tessera-gpu`), reachable
//! through [`Sysfs::mig`] so that MIG-backed vGPUs get their instances through the same
//! `GpuBackend` calls as on NVML. A vGPU's instance is marked busy there (a pseudo process),
//! so MIG tools do not destroy it under the VM.
//!
//! **Rendered trees.** [`Twin::render`] writes the model as a real directory tree (files,
//! directories, symlinks for `virtfnN`, `physfn`, `mdev_type` and `/sys/bus/mdev/devices`).
//! [`RenderedTwin`] is the split the tests use: every read, list and link goes through
//! [`RealFs`] on the rendered tree (the real code path), every write goes to the twin (for the
//! driver's semantics), after which the tree is rendered again. Files that only error on read
//! (`gpu_instance_id` before a vGPU exists) are left out of the tree, so a read there is
//! `ENOENT` rather than `ENXIO`; write-only files (`create`, `remove`) are empty files. Not
//! modelled: placement IDs, schedulers, `sriov-manage`'s unbindLock retries, delayed teardown
//! after QEMU closes, Blackwell's several vGPUs per GPU instance, and AMD VF counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_gpu::sim::SplitMix64;
use tessera_gpu::{GpuBackend, GpuError, MigMode, SimBackend, SimConfig, SimState};

use crate::catalog::{Board, CatalogError, VgpuCatalog};
use crate::host::Framework;
use crate::sysfs::{Access, Errno, RealFs, Sysfs, SysfsError};

/// Errors building, loading or driving the twin (not the modelled errno, which are
/// [`SysfsError`]s).
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// An unknown board.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The MIG twin refused.
    #[error("MIG twin: {0}")]
    Mig(#[from] GpuError),
    /// A request the model refuses, in words.
    #[error("{0}")]
    Rule(String),
    /// Reading or writing the state file or the rendered tree.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not a twin state.
    #[error("{}: not a vGPU twin state file ({source}); create one with `tessera vgpu twin init`", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

/// One GPU to put in a twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinGpuSpec {
    /// vGPU catalog board key.
    pub board: String,
    /// Host framework.
    pub framework: Framework,
    /// MIG mode on at start (boards with MIG only).
    pub mig: bool,
}

impl TwinGpuSpec {
    /// Parse `BOARD[/mdev|/vfio][/mig]`, e.g. `a30-24gb/mdev/mig`, `l40s-48gb`. The framework
    /// defaults to mdev on Ampere and vendor VFIO on later GPUs.
    pub fn parse(text: &str, catalog: &VgpuCatalog) -> Result<TwinGpuSpec, TwinError> {
        let mut parts = text.split('/');
        let board = catalog.board(parts.next().unwrap_or_default())?;
        let mut framework = if board.arch == "ampere" {
            Framework::Mdev
        } else {
            Framework::VendorVfio
        };
        let mut mig = false;
        for p in parts {
            match p {
                "mdev" => framework = Framework::Mdev,
                "vfio" | "vendor-vfio" => framework = Framework::VendorVfio,
                "mig" if board.mig_model.is_some() => mig = true,
                "mig" => {
                    return Err(TwinError::Rule(format!(
                        "{} has no MIG; drop `/mig`",
                        board.key
                    )))
                }
                other => {
                    return Err(TwinError::Rule(format!(
                        "`{other}` in `{text}`: expected `mdev`, `vfio` or `mig` after the board"
                    )))
                }
            }
        }
        Ok(TwinGpuSpec {
            board: board.key.clone(),
            framework,
            mig,
        })
    }
}

/// A vGPU in the twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinVgpu {
    /// Index of the type in the board's catalog entry.
    pub type_idx: usize,
    /// mdev UUID (mdev framework).
    pub uuid: Option<String>,
    /// A VM holds it.
    pub open: bool,
    /// The MIG GPU instance behind it: (GI ID, start, the pseudo PID marking it busy).
    pub gi: Option<(u32, u8, u32)>,
}

/// A VF in the twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinVf {
    /// PCI address.
    pub bdf: String,
    /// Its vGPU.
    pub vgpu: Option<TwinVgpu>,
}

/// A GPU in the twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinGpu {
    /// PCI address of the physical function.
    pub bdf: String,
    /// Board key.
    pub board: String,
    /// Host framework.
    pub framework: Framework,
    /// `sriov_totalvfs` (the twin uses the board's largest per-GPU vGPU count).
    pub total_vfs: u32,
    /// Enabled VFs.
    pub vfs: Vec<TwinVf>,
    /// Mixed-size mode (`nvidia-smi vgpu -shm 1`).
    pub mixed_size: bool,
    /// Whether SR-IOV can be configured (else `sriov_numvfs` writes are `ENOENT`).
    pub sriov_capable: bool,
    /// Index in the MIG twin, for boards with MIG.
    pub mig_index: Option<u32>,
}

/// An AMD Instinct GPU in the twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinAmd {
    /// DRM card name.
    pub card: String,
    /// Current compute partition.
    pub compute: String,
    /// Current memory partition.
    pub memory: String,
    /// Available compute partitions.
    pub available_compute: Vec<String>,
    /// Available memory partitions.
    pub available_memory: Vec<String>,
    /// A process holds the GPU.
    pub busy: bool,
}

/// Everything the twin remembers (what the state file holds, with the MIG twin's state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinState {
    /// NVIDIA GPUs.
    pub gpus: Vec<TwinGpu>,
    /// AMD GPUs.
    #[serde(default)]
    pub amd: Vec<TwinAmd>,
    /// Next pseudo PID for GPU instances held by vGPUs.
    pub next_pid: u32,
}

/// Injected faults: each modelled write fails with `EIO` with probability `rate`, before it
/// takes effect, after, or either.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TwinFaults {
    /// Probability per write.
    pub rate: f64,
    /// Seed of the fault generator.
    pub seed: u64,
    /// When the fault strikes.
    pub timing: tessera_gpu::FaultTiming,
}

/// Counters the tests read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinStats {
    /// Writes that changed state.
    pub mutations: u64,
    /// Writes that tried to destroy a vGPU a VM holds (always refused).
    pub open_destroy_attempts: u64,
    /// Faults injected.
    pub faults: u64,
}

/// The behaviour model (see the module docs).
pub struct Twin {
    state: TwinState,
    mig: SimBackend,
    catalog: VgpuCatalog,
    faults: TwinFaults,
    rng: SplitMix64,
    stats: TwinStats,
}

impl std::fmt::Debug for Twin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Twin").field("state", &self.state).finish()
    }
}

const FORMAT: &str = "tessera-vgpu-twin";
const PID_BASE: u32 = 900_000;

#[derive(Serialize, Deserialize)]
struct TwinFile {
    format: String,
    version: u32,
    state: TwinState,
    mig: SimState,
}

/// A node of the twin's sysfs namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir(Vec<String>),
    /// Readable content, or the errno a read returns.
    File(Result<String, Errno>),
    /// Write-only file (read is `EACCES`).
    WriteOnly,
    /// Symlink to an absolute path.
    Link(String),
}

fn pf_bdf(i: usize) -> String {
    format!("0000:{:02x}:00.0", 0x41 + 0x20 * i)
}

fn vf_bdf(i: usize, j: usize) -> String {
    let devfn = 4 + j;
    format!(
        "0000:{:02x}:{:02x}.{}",
        0x41 + 0x20 * i,
        devfn / 8,
        devfn % 8
    )
}

/// The twin's type ID of type `t` on board `b` (IDs only mean something on their own card).
pub fn type_id(board_idx: usize, type_idx: usize) -> u32 {
    (1000 + board_idx * 50 + type_idx) as u32
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Why a type cannot be created on a VF now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refuse {
    Occupied,
    NoGi,
    Rules,
}

impl Twin {
    /// A host with these NVIDIA GPUs (VFs disabled, no vGPUs).
    pub fn new(specs: &[TwinGpuSpec], catalog: &VgpuCatalog, seed: u64) -> Result<Twin, TwinError> {
        let mig_catalog = tessera_model::Catalog::builtin().clone();
        let mut mig_models = Vec::new();
        let mut gpus = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let b = catalog.board(&s.board)?;
            let mig_index = match &b.mig_model {
                Some(m) => {
                    mig_models.push((m.clone(), s.mig));
                    Some(mig_models.len() as u32 - 1)
                }
                None => None,
            };
            gpus.push(TwinGpu {
                bdf: pf_bdf(i),
                board: b.key.clone(),
                framework: s.framework,
                total_vfs: b.types.iter().map(|t| t.max).max().unwrap_or(1),
                vfs: Vec::new(),
                mixed_size: false,
                sriov_capable: true,
                mig_index,
            });
        }
        let list: Vec<(String, u32)> = mig_models.iter().map(|(m, _)| (m.clone(), 1)).collect();
        let mut st = SimState::new(&mig_catalog, &list, seed, false)?;
        for (g, (_, on)) in st.gpus.iter_mut().zip(&mig_models) {
            g.mig = MigMode::steady(*on);
        }
        Ok(Twin {
            state: TwinState {
                gpus,
                amd: Vec::new(),
                next_pid: PID_BASE,
            },
            mig: SimBackend::new(st, mig_catalog, SimConfig::default())?,
            catalog: catalog.clone(),
            faults: TwinFaults::default(),
            rng: SplitMix64::new(0),
            stats: TwinStats::default(),
        })
    }

    /// Add an AMD Instinct GPU with these partition modes (the first of each list current).
    pub fn add_amd(&mut self, compute: &[&str], memory: &[&str]) {
        let card = format!("card{}", self.state.amd.len());
        self.state.amd.push(TwinAmd {
            card,
            compute: compute.first().unwrap_or(&"SPX").to_string(),
            memory: memory.first().unwrap_or(&"NPS1").to_string(),
            available_compute: compute.iter().map(|s| s.to_string()).collect(),
            available_memory: memory.iter().map(|s| s.to_string()).collect(),
            busy: false,
        });
    }

    /// An independent copy (same state, no faults, counters zero).
    pub fn fork(&self) -> Twin {
        Twin {
            state: self.state.clone(),
            mig: SimBackend::new(
                self.mig.state().clone(),
                self.mig_catalog().clone(),
                SimConfig::default(),
            )
            .expect("a running twin's MIG state is valid"),
            catalog: self.catalog.clone(),
            faults: TwinFaults::default(),
            rng: SplitMix64::new(0),
            stats: TwinStats::default(),
        }
    }

    /// The model's state.
    pub fn state(&self) -> &TwinState {
        &self.state
    }

    /// The MIG twin's state.
    pub fn mig_state(&self) -> &SimState {
        self.mig.state()
    }

    /// The MIG twin, to start processes on instances (tests: containers beside vGPUs).
    pub fn mig_sim_mut(&mut self) -> &mut SimBackend {
        &mut self.mig
    }

    /// The counters.
    pub fn stats(&self) -> TwinStats {
        self.stats
    }

    /// Inject faults from now on.
    pub fn set_faults(&mut self, faults: TwinFaults) {
        self.faults = faults;
        self.rng = SplitMix64::new(faults.seed);
    }

    /// Whether SR-IOV can be configured on GPU `gpu` (index).
    pub fn set_sriov_capable(&mut self, gpu: usize, capable: bool) {
        if let Some(g) = self.state.gpus.get_mut(gpu) {
            g.sriov_capable = capable;
        }
    }

    /// A VM opens (or closes) the vGPU `handle` (mdev UUID or VF address).
    pub fn set_open(&mut self, handle: &str, open: bool) -> Result<(), TwinError> {
        for g in &mut self.state.gpus {
            for vf in &mut g.vfs {
                if let Some(v) = &mut vf.vgpu {
                    if vf.bdf == handle || v.uuid.as_deref() == Some(handle) {
                        v.open = open;
                        return Ok(());
                    }
                }
            }
        }
        Err(TwinError::Rule(format!("no vGPU `{handle}` in the twin")))
    }

    /// A process starts (or stops) using AMD card `card`.
    pub fn set_amd_busy(&mut self, card: &str, busy: bool) -> Result<(), TwinError> {
        let a = self
            .state
            .amd
            .iter_mut()
            .find(|a| a.card == card)
            .ok_or_else(|| TwinError::Rule(format!("no AMD card `{card}` in the twin")))?;
        a.busy = busy;
        Ok(())
    }

    /// `nvidia-smi vgpu -shm 1|0` on GPU `bdf`: only after VFs are enabled and before any
    /// vGPU exists.
    pub fn set_mixed_size(&mut self, bdf: &str, on: bool) -> Result<(), TwinError> {
        let g = self
            .state
            .gpus
            .iter_mut()
            .find(|g| g.bdf == bdf)
            .ok_or_else(|| TwinError::Rule(format!("no GPU {bdf} in the twin")))?;
        if g.vfs.is_empty() {
            return Err(TwinError::Rule(format!(
                "GPU {bdf}: mixed-size mode is set after VFs are enabled"
            )));
        }
        if g.vfs.iter().any(|v| v.vgpu.is_some()) {
            return Err(TwinError::Rule(format!(
                "GPU {bdf}: mixed-size mode cannot change while vGPUs exist (nvidia-smi rc=19); remove them first"
            )));
        }
        g.mixed_size = on;
        Ok(())
    }

    /// A host reboot: VFs, vGPUs, mixed-size mode and GPU instances are lost; MIG mode too on
    /// Hopper and later (Ampere keeps it).
    pub fn reboot(&mut self) -> Result<(), TwinError> {
        for g in &mut self.state.gpus {
            g.vfs.clear();
            g.mixed_size = false;
        }
        let hopper: Vec<bool> = {
            let mut v = vec![false; self.mig.state().gpus.len()];
            for g in &self.state.gpus {
                if let Some(i) = g.mig_index {
                    v[i as usize] = self
                        .catalog
                        .board(&g.board)
                        .map(|b| b.arch != "ampere")
                        .unwrap_or(true);
                }
            }
            v
        };
        self.edit_mig(|st| {
            for (g, h) in st.gpus.iter_mut().zip(&hopper) {
                g.instances.clear();
                if *h {
                    g.mig = MigMode::steady(false);
                }
            }
            Ok(())
        })
        .map_err(|e| TwinError::Rule(format!("reboot: MIG twin: {e}")))?;
        for a in &mut self.state.amd {
            a.busy = false;
        }
        Ok(())
    }

    fn edit_mig(
        &mut self,
        f: impl FnOnce(&mut SimState) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let mut st = self.mig.state().clone();
        f(&mut st)?;
        self.mig = SimBackend::new(st, self.mig_catalog().clone(), SimConfig::default())
            .map_err(|_| Errno::EIO)?;
        Ok(())
    }

    fn mig_catalog(&self) -> &tessera_model::Catalog {
        tessera_model::Catalog::builtin()
    }

    fn board_of(&self, g: &TwinGpu) -> (usize, &Board) {
        let idx = self
            .catalog
            .boards
            .iter()
            .position(|b| b.key == g.board)
            .expect("twin GPUs have catalog boards");
        (idx, &self.catalog.boards[idx])
    }

    fn mig_on(&self, g: &TwinGpu) -> bool {
        g.mig_index
            .and_then(|i| self.mig.state().gpus.get(i as usize))
            .is_some_and(|m| m.mig.current)
    }

    /// A GPU instance of `profile` on `g` that no vGPU holds and no process uses.
    fn free_gi(&self, g: &TwinGpu, profile: &str) -> Option<(u32, u8)> {
        let m = self.mig.state().gpus.get(g.mig_index? as usize)?;
        m.instances
            .iter()
            .find(|gi| gi.profile == profile && gi.pids.is_empty() && !gi.held_unlisted)
            .map(|gi| (gi.gi_id, gi.start))
    }

    fn check_create(&self, gi: usize, vf: usize, t: usize) -> Result<Option<(u32, u8)>, Refuse> {
        let g = &self.state.gpus[gi];
        if g.vfs[vf].vgpu.is_some() {
            return Err(Refuse::Occupied);
        }
        let (_, b) = self.board_of(g);
        let ty = &b.types[t];
        let existing: Vec<usize> = g
            .vfs
            .iter()
            .filter_map(|v| v.vgpu.as_ref().map(|x| x.type_idx))
            .collect();
        let mig_on = self.mig_on(g);
        match &ty.mig {
            Some(profile) => {
                if !mig_on || existing.iter().filter(|&&x| x == t).count() >= ty.max as usize {
                    return Err(Refuse::Rules);
                }
                self.free_gi(g, profile).map(Some).ok_or(Refuse::NoGi)
            }
            None => {
                if mig_on {
                    return Err(Refuse::Rules);
                }
                let fbs: Vec<u64> = existing.iter().map(|&x| b.types[x].fb_mib).collect();
                if g.mixed_size {
                    let used: u64 = fbs.iter().sum();
                    let same = existing.iter().filter(|&&x| x == t).count();
                    if used + ty.fb_mib > b.framebuffer_mib
                        || same >= ty.max_mixed.unwrap_or(ty.max) as usize
                    {
                        return Err(Refuse::Rules);
                    }
                } else if fbs.iter().any(|&f| f != ty.fb_mib) || fbs.len() >= ty.max as usize {
                    return Err(Refuse::Rules);
                }
                Ok(None)
            }
        }
    }

    fn creatable(&self, gi: usize, vf: usize) -> Vec<usize> {
        let (_, b) = self.board_of(&self.state.gpus[gi]);
        (0..b.types.len())
            .filter(|&t| self.check_create(gi, vf, t).is_ok())
            .collect()
    }

    fn find_vf(&self, bdf: &str) -> Option<(usize, usize)> {
        self.state
            .gpus
            .iter()
            .enumerate()
            .find_map(|(i, g)| g.vfs.iter().position(|v| v.bdf == bdf).map(|j| (i, j)))
    }

    fn find_mdev(&self, uuid: &str) -> Option<(usize, usize)> {
        self.state.gpus.iter().enumerate().find_map(|(i, g)| {
            g.vfs
                .iter()
                .position(|v| v.vgpu.as_ref().and_then(|x| x.uuid.as_deref()) == Some(uuid))
                .map(|j| (i, j))
        })
    }

    /// The namespace, without following links (`lstat`'s view).
    fn node(&self, path: &str) -> Option<Node> {
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        let d = |v: &[&str]| Some(Node::Dir(sorted(v.iter().map(|s| s.to_string()).collect())));
        let f = |s: String| Some(Node::File(Ok(s)));
        match parts.as_slice() {
            [] => d(&["sys"]),
            ["sys"] => d(&["bus", "class"]),
            ["sys", "bus"] => d(&["mdev", "pci"]),
            ["sys", "bus", "pci"] => d(&["devices"]),
            ["sys", "bus", "mdev"] => d(&["devices"]),
            ["sys", "class"] => d(&["drm", "mdev_bus"]),
            ["sys", "bus", "pci", "devices"] => {
                let mut v = Vec::new();
                for g in &self.state.gpus {
                    v.push(g.bdf.clone());
                    v.extend(g.vfs.iter().map(|x| x.bdf.clone()));
                }
                Some(Node::Dir(sorted(v)))
            }
            ["sys", "bus", "pci", "devices", dev, rest @ ..] => {
                if let Some(gi) = self.state.gpus.iter().position(|g| g.bdf == *dev) {
                    let g = &self.state.gpus[gi];
                    let (_, b) = self.board_of(g);
                    return match rest {
                        [] => {
                            let mut v: Vec<String> =
                                ["device", "sriov_numvfs", "sriov_totalvfs", "vendor"]
                                    .iter()
                                    .map(|s| s.to_string())
                                    .collect();
                            v.extend((0..g.vfs.len()).map(|j| format!("virtfn{j}")));
                            Some(Node::Dir(sorted(v)))
                        }
                        ["vendor"] => f("0x10de\n".into()),
                        ["device"] => f(format!("{}\n", b.pci_device_ids[0].to_lowercase())),
                        ["sriov_totalvfs"] => f(format!("{}\n", g.total_vfs)),
                        ["sriov_numvfs"] => f(format!("{}\n", g.vfs.len())),
                        [l] if l.starts_with("virtfn") => {
                            let j: usize = l["virtfn".len()..].parse().ok()?;
                            g.vfs
                                .get(j)
                                .map(|v| Node::Link(format!("/sys/bus/pci/devices/{}", v.bdf)))
                        }
                        _ => None,
                    };
                }
                let (gi, j) = self.find_vf(dev)?;
                let g = &self.state.gpus[gi];
                let (bidx, b) = self.board_of(g);
                let vf = &g.vfs[j];
                let vfio = g.framework == Framework::VendorVfio;
                match rest {
                    [] => {
                        let mut v = vec![
                            "device",
                            "iommu_group",
                            "physfn",
                            "subsystem_device",
                            "subsystem_vendor",
                            "vendor",
                        ];
                        if vfio {
                            v.push("nvidia");
                        }
                        d(&v)
                    }
                    ["iommu_group"] => Some(Node::Link(format!(
                        "/sys/kernel/iommu_groups/{}",
                        100 + 32 * gi + j
                    ))),
                    // A placeholder: real VFs show their board's subsystem ID here.
                    ["subsystem_vendor"] => f("0x10de\n".into()),
                    ["subsystem_device"] => f("0x0000\n".into()),
                    ["vendor"] => f("0x10de\n".into()),
                    ["device"] => f(format!("{}\n", b.pci_device_ids[0].to_lowercase())),
                    ["physfn"] => Some(Node::Link(format!("/sys/bus/pci/devices/{}", g.bdf))),
                    ["nvidia"] if vfio => d(&[
                        "creatable_vgpu_types",
                        "current_vgpu_type",
                        "gpu_instance_id",
                        "placement_id",
                    ]),
                    ["nvidia", "creatable_vgpu_types"] if vfio => {
                        let mut s = String::from("ID    : vGPU Name\n");
                        for t in self.creatable(gi, j) {
                            s.push_str(&format!(
                                "{:<6}: NVIDIA {}\n",
                                type_id(bidx, t),
                                b.types[t].name
                            ));
                        }
                        f(s)
                    }
                    ["nvidia", "current_vgpu_type"] if vfio => f(format!(
                        "{}\n",
                        vf.vgpu.as_ref().map_or(0, |v| type_id(bidx, v.type_idx))
                    )),
                    ["nvidia", "gpu_instance_id"] if vfio => {
                        Some(Node::File(match vf.vgpu.as_ref().and_then(|v| v.gi) {
                            Some((id, _, _)) => Ok(format!("{id}\n")),
                            None => Err(Errno::ENXIO),
                        }))
                    }
                    ["nvidia", "placement_id"] if vfio => Some(Node::File(match &vf.vgpu {
                        Some(_) => Ok("0\n".into()),
                        None => Err(Errno::ENXIO),
                    })),
                    _ => None,
                }
            }
            ["sys", "class", "mdev_bus"] => Some(Node::Dir(sorted(
                self.state
                    .gpus
                    .iter()
                    .filter(|g| g.framework == Framework::Mdev)
                    .flat_map(|g| g.vfs.iter().map(|v| v.bdf.clone()))
                    .collect(),
            ))),
            ["sys", "class", "mdev_bus", vfb, rest @ ..] => {
                let (gi, j) = self.find_vf(vfb)?;
                let g = &self.state.gpus[gi];
                if g.framework != Framework::Mdev {
                    return None;
                }
                let (bidx, b) = self.board_of(g);
                let vf = &g.vfs[j];
                let type_dir = |t: usize| {
                    format!(
                        "/sys/class/mdev_bus/{vfb}/mdev_supported_types/nvidia-{}",
                        type_id(bidx, t)
                    )
                };
                let by_id = |name: &str| -> Option<usize> {
                    let id: u32 = name.strip_prefix("nvidia-")?.parse().ok()?;
                    (0..b.types.len()).find(|&t| type_id(bidx, t) == id)
                };
                match rest {
                    [] => {
                        let mut v = vec!["mdev_supported_types".to_string()];
                        if let Some(u) = vf.vgpu.as_ref().and_then(|x| x.uuid.clone()) {
                            v.push(u);
                        }
                        Some(Node::Dir(sorted(v)))
                    }
                    ["mdev_supported_types"] => Some(Node::Dir(sorted(
                        (0..b.types.len())
                            .map(|t| format!("nvidia-{}", type_id(bidx, t)))
                            .collect(),
                    ))),
                    ["mdev_supported_types", tn, file @ ..] => {
                        let t = by_id(tn)?;
                        let ty = &b.types[t];
                        match file {
                            [] => d(&["available_instances", "create", "description", "device_api", "name"]),
                            ["name"] => f(format!("NVIDIA {}\n", ty.name)),
                            ["description"] => f(format!(
                                "num_heads=1, frl_config=60, framebuffer={}M, max_resolution=4096x2160, max_instance={}\n",
                                ty.fb_mib, ty.max
                            )),
                            ["device_api"] => f("vfio-pci\n".into()),
                            ["available_instances"] => f(format!(
                                "{}\n",
                                u32::from(self.check_create(gi, j, t).is_ok())
                            )),
                            ["create"] => Some(Node::WriteOnly),
                            _ => None,
                        }
                    }
                    [u, rest2 @ ..] => {
                        let v = vf.vgpu.as_ref()?;
                        if v.uuid.as_deref() != Some(*u) {
                            return None;
                        }
                        match rest2 {
                            [] => d(&["mdev_type", "remove"]),
                            ["mdev_type"] => Some(Node::Link(type_dir(v.type_idx))),
                            ["remove"] => Some(Node::WriteOnly),
                            _ => None,
                        }
                    }
                }
            }
            ["sys", "bus", "mdev", "devices"] => Some(Node::Dir(sorted(
                self.state
                    .gpus
                    .iter()
                    .flat_map(|g| {
                        g.vfs
                            .iter()
                            .filter_map(|v| v.vgpu.as_ref().and_then(|x| x.uuid.clone()))
                    })
                    .collect(),
            ))),
            ["sys", "bus", "mdev", "devices", u] => {
                let (gi, j) = self.find_mdev(u)?;
                Some(Node::Link(format!(
                    "/sys/class/mdev_bus/{}/{u}",
                    self.state.gpus[gi].vfs[j].bdf
                )))
            }
            ["sys", "class", "drm"] => Some(Node::Dir(sorted(
                self.state.amd.iter().map(|a| a.card.clone()).collect(),
            ))),
            ["sys", "class", "drm", card, rest @ ..] => {
                let a = self.state.amd.iter().find(|a| a.card == *card)?;
                match rest {
                    [] => d(&["device"]),
                    ["device"] => d(&[
                        "available_compute_partition",
                        "available_memory_partition",
                        "current_compute_partition",
                        "current_memory_partition",
                        "vendor",
                    ]),
                    ["device", "vendor"] => f("0x1002\n".into()),
                    ["device", "current_compute_partition"] => f(format!("{}\n", a.compute)),
                    ["device", "current_memory_partition"] => f(format!("{}\n", a.memory)),
                    ["device", "available_compute_partition"] => {
                        f(format!("{}\n", a.available_compute.join(",")))
                    }
                    ["device", "available_memory_partition"] => {
                        f(format!("{}\n", a.available_memory.join(",")))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Follow links in every component (and the last one when `last` is set).
    fn resolve(&self, path: &str, last: bool) -> Option<String> {
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        let mut cur = String::new();
        for (i, p) in parts.iter().enumerate() {
            cur.push('/');
            cur.push_str(p);
            if i + 1 < parts.len() || last {
                let mut hops = 0;
                while let Some(Node::Link(t)) = self.node(&cur) {
                    cur = t;
                    hops += 1;
                    if hops > 8 {
                        return None;
                    }
                }
            }
        }
        Some(if cur.is_empty() { "/".into() } else { cur })
    }

    fn lookup(&self, path: &str, last: bool) -> Option<(String, Node)> {
        let p = self.resolve(path, last)?;
        let n = self.node(&p)?;
        Some((p, n))
    }

    fn fault(&mut self) -> Option<bool> {
        if self.faults.rate <= 0.0 || self.rng.next_f64() >= self.faults.rate {
            return None;
        }
        self.stats.faults += 1;
        Some(match self.faults.timing {
            tessera_gpu::FaultTiming::Before => false,
            tessera_gpu::FaultTiming::After => true,
            tessera_gpu::FaultTiming::Mixed => self.rng.next_u64() & 1 == 1,
        })
    }

    /// Apply a modelled write to the canonical path `p`.
    fn apply(&mut self, p: &str, value: &str) -> Result<(), Errno> {
        let parts: Vec<String> = p.trim_matches('/').split('/').map(str::to_string).collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let v = value.trim();
        match parts.as_slice() {
            ["sys", "bus", "pci", "devices", dev, "sriov_numvfs"] => {
                let gi = self
                    .state
                    .gpus
                    .iter()
                    .position(|g| g.bdf == *dev)
                    .ok_or(Errno::ENOENT)?;
                let n: u32 = v.parse().map_err(|_| Errno::EINVAL)?;
                let g = &self.state.gpus[gi];
                if !g.sriov_capable {
                    return Err(Errno::ENOENT);
                }
                if n > g.total_vfs {
                    return Err(Errno::ERANGE);
                }
                let cur = g.vfs.len() as u32;
                if n == cur {
                    return Ok(());
                }
                if cur != 0 && n != 0 {
                    return Err(Errno::EBUSY);
                }
                if n == 0 {
                    if g.vfs
                        .iter()
                        .any(|x| x.vgpu.as_ref().is_some_and(|y| y.open))
                    {
                        self.stats.open_destroy_attempts += 1;
                        return Err(Errno::EBUSY);
                    }
                    let held: Vec<u32> = g
                        .vfs
                        .iter()
                        .filter_map(|x| x.vgpu.as_ref()?.gi.map(|(_, _, pid)| pid))
                        .collect();
                    let mi = g.mig_index;
                    self.release_pids(mi, &held)?;
                    let g = &mut self.state.gpus[gi];
                    g.vfs.clear();
                    g.mixed_size = false;
                } else {
                    // sriov-manage wipes the GPU's MIG instances; refused while work runs on one.
                    if let Some(mi) = g.mig_index {
                        self.edit_mig(|st| {
                            let m = &mut st.gpus[mi as usize];
                            if m.instances.iter().any(|x| !x.pids.is_empty()) {
                                return Err(Errno::EBUSY);
                            }
                            m.instances.clear();
                            Ok(())
                        })?;
                    }
                    let g = &mut self.state.gpus[gi];
                    g.vfs = (0..n as usize)
                        .map(|j| TwinVf {
                            bdf: vf_bdf(gi, j),
                            vgpu: None,
                        })
                        .collect();
                }
                Ok(())
            }
            ["sys", "class", "mdev_bus", vfb, "mdev_supported_types", tn, "create"] => {
                let (gi, j) = self.find_vf(vfb).ok_or(Errno::ENOENT)?;
                let uuid = uuid::Uuid::parse_str(v)
                    .map_err(|_| Errno::EINVAL)?
                    .hyphenated()
                    .to_string();
                if self.find_mdev(&uuid).is_some() {
                    return Err(Errno::EEXIST);
                }
                let (bidx, b) = self.board_of(&self.state.gpus[gi]);
                let t = (0..b.types.len())
                    .find(|&t| format!("nvidia-{}", type_id(bidx, t)) == *tn)
                    .ok_or(Errno::ENOENT)?;
                let gi_slot = self.check_create(gi, j, t).map_err(|_| Errno::EUSERS)?;
                self.install(gi, j, t, Some(uuid), gi_slot)
            }
            ["sys", "class", "mdev_bus", vfb, u, "remove"] => {
                if v != "1" {
                    return Err(Errno::EINVAL);
                }
                let (gi, j) = self.find_vf(vfb).ok_or(Errno::ENOENT)?;
                if self.state.gpus[gi].vfs[j]
                    .vgpu
                    .as_ref()
                    .and_then(|x| x.uuid.as_deref())
                    != Some(*u)
                {
                    return Err(Errno::ENOENT);
                }
                self.uninstall(gi, j)
            }
            ["sys", "bus", "pci", "devices", vfb, "nvidia", "current_vgpu_type"] => {
                let (gi, j) = self.find_vf(vfb).ok_or(Errno::ENOENT)?;
                let id: u32 = v.parse().map_err(|_| Errno::EINVAL)?;
                if id == 0 {
                    if self.state.gpus[gi].vfs[j].vgpu.is_none() {
                        return Err(Errno::EPERM);
                    }
                    return self.uninstall(gi, j);
                }
                if self.state.gpus[gi].vfs[j].vgpu.is_some() {
                    return Err(Errno::EPERM);
                }
                let (bidx, b) = self.board_of(&self.state.gpus[gi]);
                let t = (0..b.types.len())
                    .find(|&t| type_id(bidx, t) == id)
                    .ok_or(Errno::EINVAL)?;
                match self.check_create(gi, j, t) {
                    Ok(slot) => self.install(gi, j, t, None, slot),
                    Err(Refuse::Occupied) => Err(Errno::EPERM),
                    Err(Refuse::NoGi) => Err(Errno::EIO),
                    Err(Refuse::Rules) => Err(Errno::EINVAL),
                }
            }
            ["sys", "class", "drm", card, "device", which] if which.starts_with("current_") => {
                let a = self
                    .state
                    .amd
                    .iter_mut()
                    .find(|a| a.card == *card)
                    .ok_or(Errno::ENOENT)?;
                if a.busy {
                    return Err(Errno::EBUSY);
                }
                let want = v.to_uppercase();
                match *which {
                    "current_compute_partition" if a.available_compute.contains(&want) => {
                        a.compute = want
                    }
                    "current_memory_partition" if a.available_memory.contains(&want) => {
                        a.memory = want
                    }
                    "current_compute_partition" | "current_memory_partition" => {
                        return Err(Errno::EINVAL)
                    }
                    _ => return Err(Errno::EACCES),
                }
                Ok(())
            }
            _ => Err(Errno::EACCES),
        }
    }

    fn release_pids(&mut self, mig_index: Option<u32>, pids: &[u32]) -> Result<(), Errno> {
        let Some(mi) = mig_index else { return Ok(()) };
        if pids.is_empty() {
            return Ok(());
        }
        let pids = pids.to_vec();
        self.edit_mig(|st| {
            for gi in &mut st.gpus[mi as usize].instances {
                gi.pids.retain(|p| !pids.contains(p));
            }
            Ok(())
        })
    }

    fn install(
        &mut self,
        gi: usize,
        j: usize,
        t: usize,
        uuid: Option<String>,
        slot: Option<(u32, u8)>,
    ) -> Result<(), Errno> {
        let held = match slot {
            Some((id, start)) => {
                let pid = self.state.next_pid;
                self.state.next_pid += 1;
                let mi = self.state.gpus[gi].mig_index.ok_or(Errno::EIO)?;
                self.edit_mig(|st| {
                    let g = st.gpus[mi as usize]
                        .instances
                        .iter_mut()
                        .find(|x| x.gi_id == id && x.start == start)
                        .ok_or(Errno::EIO)?;
                    g.pids.push(pid);
                    Ok(())
                })?;
                Some((id, start, pid))
            }
            None => None,
        };
        self.state.gpus[gi].vfs[j].vgpu = Some(TwinVgpu {
            type_idx: t,
            uuid,
            open: false,
            gi: held,
        });
        Ok(())
    }

    fn uninstall(&mut self, gi: usize, j: usize) -> Result<(), Errno> {
        let v = self.state.gpus[gi].vfs[j]
            .vgpu
            .clone()
            .ok_or(Errno::EPERM)?;
        if v.open {
            self.stats.open_destroy_attempts += 1;
            return Err(Errno::EBUSY);
        }
        let mi = self.state.gpus[gi].mig_index;
        if let Some((_, _, pid)) = v.gi {
            self.release_pids(mi, &[pid])?;
        }
        self.state.gpus[gi].vfs[j].vgpu = None;
        Ok(())
    }

    /// Write the model as a directory tree under `dir` (replacing `dir/sys`).
    pub fn render(&self, dir: &Path) -> Result<(), TwinError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TwinError::Io { path, source }
        };
        let sys = dir.join("sys");
        if sys.exists() {
            std::fs::remove_dir_all(&sys).map_err(io(&sys))?;
        }
        let mut stack = vec!["/sys".to_string()];
        while let Some(p) = stack.pop() {
            let target = dir.join(p.trim_start_matches('/'));
            match self.node(&p) {
                Some(Node::Dir(children)) => {
                    std::fs::create_dir_all(&target).map_err(io(&target))?;
                    stack.extend(children.into_iter().map(|c| format!("{p}/{c}")));
                }
                Some(Node::File(Ok(s))) => std::fs::write(&target, s).map_err(io(&target))?,
                Some(Node::File(Err(_))) | None => {}
                Some(Node::WriteOnly) => std::fs::write(&target, "").map_err(io(&target))?,
                Some(Node::Link(to)) => {
                    std::os::unix::fs::symlink(dir.join(to.trim_start_matches('/')), &target)
                        .map_err(io(&target))?
                }
            }
        }
        Ok(())
    }

    /// Save the state (and the MIG twin's) as JSON.
    pub fn save(&self, path: &Path) -> Result<(), TwinError> {
        let file = TwinFile {
            format: FORMAT.into(),
            version: 1,
            state: self.state.clone(),
            mig: self.mig.state().clone(),
        };
        let json = serde_json::to_string_pretty(&file).expect("twin state serializes");
        tessera_gpu::sim::write_atomic(path, json.as_bytes()).map_err(|source| TwinError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Load a saved twin.
    pub fn load(path: &Path, catalog: &VgpuCatalog) -> Result<Twin, TwinError> {
        let text = std::fs::read_to_string(path).map_err(|source| TwinError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: TwinFile = serde_json::from_str(&text).map_err(|source| TwinError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if file.format != FORMAT || file.version != 1 {
            return Err(TwinError::Rule(format!(
                "{}: format `{}` version {} is not `{FORMAT}` version 1",
                path.display(),
                file.format,
                file.version
            )));
        }
        for g in &file.state.gpus {
            catalog.board(&g.board)?;
        }
        Ok(Twin {
            state: file.state,
            mig: SimBackend::new(
                file.mig,
                tessera_model::Catalog::builtin().clone(),
                SimConfig::default(),
            )?,
            catalog: catalog.clone(),
            faults: TwinFaults::default(),
            rng: SplitMix64::new(0),
            stats: TwinStats::default(),
        })
    }

    /// The vGPUs by handle (mdev UUID or VF address) with their type names, for tests.
    pub fn vgpu_types(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for g in &self.state.gpus {
            let (_, b) = self.board_of(g);
            for vf in &g.vfs {
                if let Some(v) = &vf.vgpu {
                    out.insert(
                        v.uuid.clone().unwrap_or_else(|| vf.bdf.clone()),
                        b.types[v.type_idx].name.clone(),
                    );
                }
            }
        }
        out
    }
}

impl Sysfs for Twin {
    fn describe(&self) -> String {
        "twin".into()
    }

    fn read(&self, path: &str) -> Result<String, SysfsError> {
        match self.lookup(path, true) {
            Some((_, Node::File(r))) => r.map_err(|e| SysfsError::new(Access::Read, path, e)),
            Some((_, Node::WriteOnly)) => Err(SysfsError::new(Access::Read, path, Errno::EACCES)),
            Some((_, Node::Dir(_))) => Err(SysfsError::new(Access::Read, path, Errno::EINVAL)),
            Some((_, Node::Link(_))) | None => {
                Err(SysfsError::new(Access::Read, path, Errno::ENOENT))
            }
        }
    }

    fn write(&mut self, path: &str, value: &str) -> Result<(), SysfsError> {
        let err = |errno| SysfsError {
            access: Access::Write,
            path: path.to_string(),
            value: Some(value.to_string()),
            errno,
        };
        let canonical = match self.lookup(path, true) {
            Some((p, Node::File(_) | Node::WriteOnly)) => p,
            Some(_) => return Err(err(Errno::EINVAL)),
            None => return Err(err(Errno::ENOENT)),
        };
        let fault = self.fault();
        if fault == Some(false) {
            return Err(err(Errno::EIO));
        }
        let before = self.state.clone();
        let mig_before = self.mig.state().clone();
        match self.apply(&canonical, value) {
            Ok(()) => {
                if self.state != before || *self.mig.state() != mig_before {
                    self.stats.mutations += 1;
                }
                if fault == Some(true) {
                    return Err(err(Errno::EIO));
                }
                Ok(())
            }
            Err(e) => {
                // A refused write changes nothing.
                self.state = before;
                if *self.mig.state() != mig_before {
                    self.mig = SimBackend::new(
                        mig_before,
                        self.mig_catalog().clone(),
                        SimConfig::default(),
                    )
                    .map_err(|_| err(Errno::EIO))?;
                }
                Err(err(e))
            }
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, SysfsError> {
        match self.lookup(dir, true) {
            Some((_, Node::Dir(v))) => Ok(v),
            Some(_) => Err(SysfsError::new(Access::List, dir, Errno::EINVAL)),
            None => Err(SysfsError::new(Access::List, dir, Errno::ENOENT)),
        }
    }

    fn link_name(&self, path: &str) -> Result<String, SysfsError> {
        match self.lookup(path, false) {
            Some((_, Node::Link(t))) => Ok(t.rsplit('/').next().unwrap_or_default().to_string()),
            Some(_) => Err(SysfsError::new(Access::Link, path, Errno::EINVAL)),
            None => Err(SysfsError::new(Access::Link, path, Errno::ENOENT)),
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.lookup(path, true).is_some()
    }

    fn is_open(&self, dev_dir: &str) -> Result<bool, SysfsError> {
        let parts: Vec<&str> = dev_dir.trim_matches('/').split('/').collect();
        Ok(match parts.as_slice() {
            ["sys", "bus", "mdev", "devices", u] => self.find_mdev(u).is_some_and(|(g, j)| {
                self.state.gpus[g].vfs[j]
                    .vgpu
                    .as_ref()
                    .is_some_and(|v| v.open)
            }),
            ["sys", "bus", "pci", "devices", vf] => self.find_vf(vf).is_some_and(|(g, j)| {
                self.state.gpus[g].vfs[j]
                    .vgpu
                    .as_ref()
                    .is_some_and(|v| v.open)
            }),
            ["sys", "class", "drm", card, "device"] => {
                self.state.amd.iter().any(|a| a.card == *card && a.busy)
            }
            _ => false,
        })
    }

    fn mig(&mut self) -> Option<&mut dyn GpuBackend> {
        Some(&mut self.mig)
    }

    fn mig_index(&self, pf: &str) -> Option<u32> {
        self.state.gpus.iter().find(|g| g.bdf == pf)?.mig_index
    }
}

/// The twin behind a rendered tree: reads through [`RealFs`] on the tree, writes to the twin,
/// the tree rendered again after each write (see the module docs for the exact split).
#[derive(Debug)]
pub struct RenderedTwin {
    twin: Twin,
    real: RealFs,
    /// The MIG state last rendered: GPU instances change through [`Sysfs::mig`], behind the
    /// tree's back, so reads render again when it differs.
    rendered_mig: std::sync::Mutex<SimState>,
}

impl RenderedTwin {
    /// Render `twin` under `dir` and serve it from there.
    pub fn new(twin: Twin, dir: &Path) -> Result<RenderedTwin, TwinError> {
        twin.render(dir)?;
        Ok(RenderedTwin {
            rendered_mig: std::sync::Mutex::new(twin.mig_state().clone()),
            twin,
            real: RealFs::new(dir),
        })
    }

    /// The twin.
    pub fn twin(&self) -> &Twin {
        &self.twin
    }

    /// The twin, mutably; call [`RenderedTwin::rerender`] after changing it.
    pub fn twin_mut(&mut self) -> &mut Twin {
        &mut self.twin
    }

    /// Render the tree again.
    pub fn rerender(&self) -> Result<(), TwinError> {
        self.twin.render(self.real.root())?;
        *self.rendered_mig.lock().unwrap_or_else(|e| e.into_inner()) =
            self.twin.mig_state().clone();
        Ok(())
    }

    fn fresh(&self) -> Result<(), SysfsError> {
        let stale =
            *self.rendered_mig.lock().unwrap_or_else(|e| e.into_inner()) != *self.twin.mig_state();
        if stale {
            self.rerender()
                .map_err(|_| SysfsError::new(Access::Read, "/sys", Errno::EIO))?;
        }
        Ok(())
    }
}

impl Sysfs for RenderedTwin {
    fn describe(&self) -> String {
        format!("twin rendered at {}", self.real.root().display())
    }
    fn read(&self, path: &str) -> Result<String, SysfsError> {
        self.fresh()?;
        self.real.read(path)
    }
    fn write(&mut self, path: &str, value: &str) -> Result<(), SysfsError> {
        let r = self.twin.write(path, value);
        self.rerender()
            .map_err(|_| SysfsError::new(Access::Write, path, Errno::EIO))?;
        r
    }
    fn list(&self, dir: &str) -> Result<Vec<String>, SysfsError> {
        self.fresh()?;
        self.real.list(dir)
    }
    fn link_name(&self, path: &str) -> Result<String, SysfsError> {
        self.fresh()?;
        self.real.link_name(path)
    }
    fn exists(&self, path: &str) -> bool {
        self.fresh().is_ok() && self.real.exists(path)
    }
    fn is_open(&self, dev_dir: &str) -> Result<bool, SysfsError> {
        self.twin.is_open(dev_dir)
    }
    fn mig(&mut self) -> Option<&mut dyn GpuBackend> {
        self.twin.mig()
    }
    fn mig_index(&self, pf: &str) -> Option<u32> {
        self.twin.mig_index(pf)
    }
}
