//! The real backend: NVML through `nvml-wrapper` (library loading and `nvmlInit`) and the raw
//! function table of `nvml-wrapper-sys` for the MIG calls the safe crate lacks.
//!
//! The library is loaded at run time, so the binary builds and runs without a driver; without
//! `libnvidia-ml.so.1`, [`NvmlBackend::open`] fails with [`GpuError::LibraryNotFound`]. A
//! function the installed driver lacks is [`GpuError::NotSupported`] naming the symbol, never a
//! panic (the sys crate's convenience methods would panic; we read its symbol table instead).
//!
//! NVML calls used: `nvmlDeviceGetCount_v2`, `nvmlDeviceGetHandleByIndex_v2`, `nvmlDeviceGetName`,
//! `nvmlDeviceGetUUID`, `nvmlDeviceGetMemoryInfo`, `nvmlDeviceGetPciInfo_v3`,
//! `nvmlDeviceGetMigMode`, `nvmlDeviceSetMigMode`, `nvmlDeviceGetComputeMode`,
//! `nvmlDeviceSetComputeMode`, `nvmlDeviceGetGpuInstanceProfileInfoV`,
//! `nvmlDeviceGetGpuInstancePossiblePlacements_v2`, `nvmlDeviceGetGpuInstances`,
//! `nvmlGpuInstanceGetInfo`, `nvmlDeviceCreateGpuInstanceWithPlacement`,
//! `nvmlDeviceGetGpuInstanceById`, `nvmlGpuInstanceDestroy`,
//! `nvmlGpuInstanceGetComputeInstanceProfileInfo`, `nvmlGpuInstanceGetComputeInstances`,
//! `nvmlComputeInstanceGetInfo_v2`, `nvmlGpuInstanceCreateComputeInstance`,
//! `nvmlComputeInstanceDestroy`, `nvmlDeviceGetMaxMigDeviceCount`,
//! `nvmlDeviceGetMigDeviceHandleByIndex`, `nvmlDeviceGetGpuInstanceId`,
//! `nvmlDeviceGetComputeInstanceId`, `nvmlDeviceGetComputeRunningProcesses_v3`,
//! `nvmlEventSetCreate`, `nvmlDeviceRegisterEvents`, `nvmlEventSetWait_v2`, `nvmlEventSetFree`,
//! `nvmlDeviceGetIndex`.
//!
//! Processes: in MIG mode the parent handle lists every process with its GPU-instance ID when
//! the caller is privileged; otherwise each MIG device handle lists its own. If neither can be
//! read, [`GpuBackend::instances`] fails rather than report an instance as idle.

// The bindings keep NVML's C names, also for the constants matched on below.
#![allow(non_upper_case_globals)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_char;
use std::ptr;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings::*;
use tessera_model::Catalog;

use crate::backend::{
    ComputeInstance, ComputeMode, GpuBackend, GpuEvent, GpuInfo, GpuInstance, IdleInstance, MigMode,
};
use crate::checks;
use crate::error::GpuError;
use crate::profiles::ProfileInfo;

/// NVML's "no value" for GI/CI IDs in process and event records.
const NO_ID: u32 = 0xFFFF_FFFF;
/// Most profile placements we ask for (the largest grid has 32 slices).
const MAX_PLACEMENTS: usize = 32;
/// Most GIs/CIs we ask for per profile.
const MAX_INSTANCES: usize = 64;

/// The real NVML backend.
pub struct NvmlBackend {
    nvml: Nvml,
    catalog: Catalog,
    tables: BTreeMap<u32, Vec<ProfileInfo>>,
    events: Option<EventSet>,
}

/// An NVML event set handle, with the device handles registered in it and their indices (so
/// that an event's GPU is known without asking NVML again).
struct EventSet(nvmlEventSet_t, Vec<(nvmlDevice_t, u32)>);

// SAFETY: NVML is thread-safe, and the handle stays valid until `nvmlEventSetFree`, which
// only `NvmlBackend::drop` calls, before NVML shuts down.
unsafe impl Send for EventSet {}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlBackend").finish_non_exhaustive()
    }
}

/// Look up a symbol in the sys crate's table, or say which one the driver lacks.
macro_rules! sym {
    ($self:expr, $name:ident) => {
        $self
            .nvml
            .lib()
            .$name
            .as_ref()
            .map_err(|_| GpuError::NotSupported {
                op: format!("NVML {}", stringify!($name)),
                reason: "the installed driver's NVML lacks this function; update the NVIDIA driver"
                    .into(),
            })
    };
}

/// The name of an NVML return code.
fn code_name(code: nvmlReturn_t) -> &'static str {
    match code {
        nvmlReturn_enum_NVML_ERROR_UNINITIALIZED => "NVML_ERROR_UNINITIALIZED",
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT => "NVML_ERROR_INVALID_ARGUMENT",
        nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => "NVML_ERROR_NOT_SUPPORTED",
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => "NVML_ERROR_NO_PERMISSION",
        nvmlReturn_enum_NVML_ERROR_NOT_FOUND => "NVML_ERROR_NOT_FOUND",
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE => "NVML_ERROR_INSUFFICIENT_SIZE",
        nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => "NVML_ERROR_DRIVER_NOT_LOADED",
        nvmlReturn_enum_NVML_ERROR_TIMEOUT => "NVML_ERROR_TIMEOUT",
        nvmlReturn_enum_NVML_ERROR_IRQ_ISSUE => "NVML_ERROR_IRQ_ISSUE",
        nvmlReturn_enum_NVML_ERROR_LIBRARY_NOT_FOUND => "NVML_ERROR_LIBRARY_NOT_FOUND",
        nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND => "NVML_ERROR_FUNCTION_NOT_FOUND",
        nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => "NVML_ERROR_GPU_IS_LOST",
        nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED => "NVML_ERROR_RESET_REQUIRED",
        nvmlReturn_enum_NVML_ERROR_IN_USE => "NVML_ERROR_IN_USE",
        nvmlReturn_enum_NVML_ERROR_MEMORY => "NVML_ERROR_MEMORY",
        nvmlReturn_enum_NVML_ERROR_NO_DATA => "NVML_ERROR_NO_DATA",
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES => "NVML_ERROR_INSUFFICIENT_RESOURCES",
        nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH => {
            "NVML_ERROR_ARGUMENT_VERSION_MISMATCH"
        }
        nvmlReturn_enum_NVML_ERROR_NOT_READY => "NVML_ERROR_NOT_READY",
        nvmlReturn_enum_NVML_ERROR_INVALID_STATE => "NVML_ERROR_INVALID_STATE",
        nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH => "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
        nvmlReturn_enum_NVML_ERROR_UNKNOWN => "NVML_ERROR_UNKNOWN",
        _ => "an unexpected NVML code",
    }
}

/// Map an NVML return code to our error, naming the call.
pub fn error_from_code(code: nvmlReturn_t, op: String) -> GpuError {
    let name = code_name(code);
    match code {
        nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES => GpuError::InsufficientResources {
            op,
            detail: name.into(),
        },
        nvmlReturn_enum_NVML_ERROR_IN_USE => GpuError::InUse { op, pids: vec![] },
        nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => GpuError::NotSupported {
            op,
            reason: format!("{name} (MIG mode off, profile not offered, or a vGPU guest)"),
        },
        nvmlReturn_enum_NVML_ERROR_NOT_FOUND => GpuError::NotFound {
            op,
            detail: name.into(),
        },
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => GpuError::NoPermission { op },
        nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        | nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH => GpuError::InvalidArgument {
            op,
            detail: name.into(),
        },
        nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED => GpuError::ResetRequired { op },
        nvmlReturn_enum_NVML_ERROR_TIMEOUT
        | nvmlReturn_enum_NVML_ERROR_NOT_READY
        | nvmlReturn_enum_NVML_ERROR_IRQ_ISSUE
        | nvmlReturn_enum_NVML_ERROR_MEMORY => GpuError::Transient {
            op,
            detail: name.into(),
        },
        nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST => GpuError::GpuLost { op },
        nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH => GpuError::DriverMismatch { op },
        nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => GpuError::DriverNotLoaded,
        nvmlReturn_enum_NVML_ERROR_LIBRARY_NOT_FOUND => GpuError::LibraryNotFound {
            detail: name.into(),
        },
        _ => GpuError::Unknown {
            op,
            detail: format!("{name}, code {code}"),
        },
    }
}

fn check(code: nvmlReturn_t, op: impl FnOnce() -> String) -> Result<(), GpuError> {
    if code == nvmlReturn_enum_NVML_SUCCESS {
        Ok(())
    } else {
        Err(error_from_code(code, op()))
    }
}

/// Whether a code means "this profile index does not exist on this GPU".
fn profile_absent(code: nvmlReturn_t) -> bool {
    code == nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED
        || code == nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
        || code == nvmlReturn_enum_NVML_ERROR_NOT_FOUND
}

/// Profile indices are probed past the bindings' `*_PROFILE_COUNT` (which predates newer
/// profiles such as `3_SLICE_GFX` and `7_SLICE_NVL`) until NVML answers INVALID_ARGUMENT, as
/// nvml.h describes; this bounds the scan should a driver never answer so.
const MAX_PROFILE_INDEX: u32 = 64;

/// Scan profile indices `0, 1, …`: `probe(idx)` returns NVML's code for that index. Indices
/// whose code is "absent" (NOT_SUPPORTED, NOT_FOUND; INVALID_ARGUMENT below `known_count`,
/// where old drivers use it for gaps) are skipped; the scan stops at the first INVALID_ARGUMENT
/// at or past `known_count` (the end of the driver's table) or at [`MAX_PROFILE_INDEX`]. Returns
/// the indices that answered, with their code (success or an error to report).
fn scan_profiles(
    known_count: u32,
    mut probe: impl FnMut(u32) -> nvmlReturn_t,
) -> Vec<(u32, nvmlReturn_t)> {
    let mut out = Vec::new();
    for idx in 0..MAX_PROFILE_INDEX {
        let rc = probe(idx);
        if rc == nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT && idx >= known_count {
            break;
        }
        if profile_absent(rc) {
            continue;
        }
        out.push((idx, rc));
    }
    out
}

/// The compute-instance profile `nvidia-smi mig -cgi … -C` creates (the one it marks `*` in
/// `-lcip`): among the profiles that span the whole GPU instance (`slices` compute slices), the
/// one of highest profile index, e.g. `3_SLICE` on a 3g.40gb and `1_SLICE_REV1` rather than
/// `1_SLICE` on a 1g.20gb / 1g.35gb. `profiles` holds (index, profile ID, slice count).
fn default_ci_profile(profiles: &[(u32, u32, u32)], slices: u32) -> Option<(u32, u32)> {
    let whole = profiles
        .iter()
        .filter(|p| p.2 == slices)
        .max_by_key(|p| p.0);
    // A GI whose slice count no CI profile matches: the largest profile, as before.
    whole
        .or_else(|| profiles.iter().max_by_key(|p| (p.2, p.0)))
        .map(|p| (p.0, p.1))
}

/// What `nvmlDeviceSetMigMode`'s `activationStatus` means for the caller: success or
/// RESET_REQUIRED leave the new mode applied or pending (the mode read back says which);
/// IN_USE means the change could not take effect because something holds the GPU.
fn mig_activation(activation: nvmlReturn_t, op: &str) -> Result<(), GpuError> {
    match activation {
        nvmlReturn_enum_NVML_SUCCESS | nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED => Ok(()),
        nvmlReturn_enum_NVML_ERROR_IN_USE => Err(GpuError::InUse {
            op: format!(
                "{op}: requested, but the change cannot take effect while the GPU is in use (it \
                 stays pending until every process and service using the GPU has stopped and \
                 the GPU is reset)"
            ),
            pids: vec![],
        }),
        other => Err(error_from_code(
            other,
            format!("{op}: the driver did not activate the change"),
        )),
    }
}

/// A NUL-terminated C string in a fixed buffer.
fn cstr(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// `NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2)`.
fn profile_info_v2_version() -> u32 {
    (std::mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>() as u32) | (2 << 24)
}

fn compute_mode_from(raw: nvmlComputeMode_t) -> ComputeMode {
    match raw {
        nvmlComputeMode_enum_NVML_COMPUTEMODE_EXCLUSIVE_THREAD => ComputeMode::ExclusiveThread,
        nvmlComputeMode_enum_NVML_COMPUTEMODE_PROHIBITED => ComputeMode::Prohibited,
        nvmlComputeMode_enum_NVML_COMPUTEMODE_EXCLUSIVE_PROCESS => ComputeMode::ExclusiveProcess,
        _ => ComputeMode::Default,
    }
}

fn compute_mode_to(mode: ComputeMode) -> nvmlComputeMode_t {
    match mode {
        ComputeMode::Default => nvmlComputeMode_enum_NVML_COMPUTEMODE_DEFAULT,
        ComputeMode::ExclusiveThread => nvmlComputeMode_enum_NVML_COMPUTEMODE_EXCLUSIVE_THREAD,
        ComputeMode::Prohibited => nvmlComputeMode_enum_NVML_COMPUTEMODE_PROHIBITED,
        ComputeMode::ExclusiveProcess => nvmlComputeMode_enum_NVML_COMPUTEMODE_EXCLUSIVE_PROCESS,
    }
}

/// `nvmlGpuInstanceGetInfo`.
type GiInfoFn = unsafe extern "C" fn(nvmlGpuInstance_t, *mut nvmlGpuInstanceInfo_t) -> nvmlReturn_t;

/// `nvmlGpuInstanceGetComputeInstanceProfileInfo`.
type CiProfileInfoFn = unsafe extern "C" fn(
    nvmlGpuInstance_t,
    u32,
    u32,
    *mut nvmlComputeInstanceProfileInfo_t,
) -> nvmlReturn_t;

/// A GI handle with what NVML says about it.
struct GiHandle {
    handle: nvmlGpuInstance_t,
    id: u32,
    profile_id: u32,
    start: u32,
    size: u32,
}

impl GiHandle {
    /// Ask NVML (`get_info`) about a GI handle it returned; `op` names the call in errors.
    fn read(
        get_info: GiInfoFn,
        handle: nvmlGpuInstance_t,
        op: impl FnOnce() -> String,
    ) -> Result<GiHandle, GpuError> {
        // SAFETY: plain C struct; zero is valid.
        let mut info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a GI handle NVML returned; valid out pointer.
        check(unsafe { get_info(handle, &mut info) }, op)?;
        Ok(GiHandle {
            handle,
            id: info.id,
            profile_id: info.profileId,
            start: info.placement.start,
            size: info.placement.size,
        })
    }
}

/// Compute-instance profile `idx` (shared engines) of a GI, read with `prof`, and NVML's return
/// code; the info stays zeroed unless the code is success.
fn ci_profile_info(
    prof: CiProfileInfoFn,
    gi: &GiHandle,
    idx: u32,
) -> (nvmlReturn_t, nvmlComputeInstanceProfileInfo_t) {
    // SAFETY: plain C struct; zero is valid.
    let mut info: nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid GI handle and out pointer.
    let rc = unsafe {
        prof(
            gi.handle,
            idx,
            NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
            &mut info,
        )
    };
    (rc, info)
}

impl NvmlBackend {
    /// Load libnvidia-ml.so.1 and initialize NVML. The catalog names the models and fills in
    /// profile names when an old driver reports none.
    pub fn open(catalog: Catalog) -> Result<Self, GpuError> {
        let nvml = Nvml::init().map_err(|e| match e {
            NvmlError::LibloadingError(e) => GpuError::LibraryNotFound {
                detail: e.to_string(),
            },
            NvmlError::DriverNotLoaded => GpuError::DriverNotLoaded,
            NvmlError::NoPermission => GpuError::NoPermission {
                op: "initialize NVML".into(),
            },
            NvmlError::LibraryNotFound => GpuError::LibraryNotFound {
                detail: "NVML_ERROR_LIBRARY_NOT_FOUND".into(),
            },
            other => GpuError::Unknown {
                op: "initialize NVML".into(),
                detail: other.to_string(),
            },
        })?;
        Ok(NvmlBackend {
            nvml,
            catalog,
            tables: BTreeMap::new(),
            events: None,
        })
    }

    /// The driver version, NVML version and CUDA driver API version (`13.0`), each when NVML
    /// answers.
    pub fn versions(&self) -> (Option<String>, Option<String>, Option<String>) {
        let cuda = self
            .nvml
            .sys_cuda_driver_version()
            .ok()
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
        (
            self.nvml.sys_driver_version().ok(),
            self.nvml.sys_nvml_version().ok(),
            cuda,
        )
    }

    /// Read-only: NVML's possible placements for each GPU-instance profile ID of the GPU's
    /// catalog model. nvml.h answers `nvmlDeviceGetGpuInstancePossiblePlacements_v2` for a
    /// profile ID with MIG mode off too, so a catalog's placements (inferred ones included) can
    /// be checked on a GPU that stays out of MIG mode. Returns (profile name, catalog
    /// placements, NVML's placements or the error); `Ok(None)` when the GPU matches no
    /// catalog model.
    #[allow(clippy::type_complexity)]
    pub fn probe_placements(
        &self,
        gpu: u32,
    ) -> Result<Option<Vec<(String, Vec<u8>, Result<Vec<u8>, GpuError>)>>, GpuError> {
        let Some(model) = self
            .info(gpu)?
            .model
            .and_then(|k| self.catalog.get(&k).cloned())
        else {
            return Ok(None);
        };
        let dev = self.device(gpu)?;
        let places = sym!(self, nvmlDeviceGetGpuInstancePossiblePlacements_v2)?;
        let mut out = Vec::new();
        for p in model.profiles.iter() {
            let Some(id) = p.id else { continue };
            let mut buf = [nvmlGpuInstancePlacement_t { start: 0, size: 0 }; MAX_PLACEMENTS];
            let mut count = MAX_PLACEMENTS as u32;
            // SAFETY: the buffer holds `count` placements.
            let rc = unsafe { places(dev, id, buf.as_mut_ptr(), &mut count) };
            let got = check(rc, || {
                format!("GPU {gpu}: placements of {} (profile ID {id})", p.name)
            })
            .map(|()| {
                let mut v: Vec<u8> = buf[..(count as usize).min(MAX_PLACEMENTS)]
                    .iter()
                    .map(|x| x.start as u8)
                    .collect();
                v.sort_unstable();
                v
            });
            out.push((p.name.clone(), p.placements.clone(), got));
        }
        Ok(Some(out))
    }

    fn count(&self) -> Result<u32, GpuError> {
        let f = sym!(self, nvmlDeviceGetCount_v2)?;
        let mut n = 0;
        // SAFETY: valid out pointer.
        check(unsafe { f(&mut n) }, || "count GPUs".into())?;
        Ok(n)
    }

    fn device(&self, gpu: u32) -> Result<nvmlDevice_t, GpuError> {
        let n = self.count()?;
        if gpu >= n {
            return Err(GpuError::NotFound {
                op: format!("GPU {gpu}"),
                detail: format!("this machine has {n} GPU(s), indices 0..{}", n.max(1) - 1),
            });
        }
        let f = sym!(self, nvmlDeviceGetHandleByIndex_v2)?;
        let mut dev: nvmlDevice_t = ptr::null_mut();
        // SAFETY: index checked, valid out pointer.
        check(unsafe { f(gpu, &mut dev) }, || {
            format!("GPU {gpu}: get handle")
        })?;
        Ok(dev)
    }

    fn string(
        &self,
        f: unsafe extern "C" fn(nvmlDevice_t, *mut c_char, u32) -> nvmlReturn_t,
        dev: nvmlDevice_t,
        op: impl FnOnce() -> String,
    ) -> Result<String, GpuError> {
        let mut buf = [0 as c_char; 128];
        // SAFETY: the buffer is larger than NVML's largest name/UUID buffer size (96).
        check(unsafe { f(dev, buf.as_mut_ptr(), buf.len() as u32) }, op)?;
        Ok(cstr(&buf))
    }

    fn uuid_of(&self, dev: nvmlDevice_t, op: impl FnOnce() -> String) -> Result<String, GpuError> {
        let f = sym!(self, nvmlDeviceGetUUID)?;
        self.string(*f, dev, op)
    }

    fn mig_mode_of(&self, gpu: u32, dev: nvmlDevice_t) -> Result<MigMode, GpuError> {
        let f = sym!(self, nvmlDeviceGetMigMode)?;
        let (mut cur, mut pend) = (0u32, 0u32);
        // SAFETY: valid handle and out pointers.
        check(unsafe { f(dev, &mut cur, &mut pend) }, || {
            format!("GPU {gpu}: read MIG mode")
        })?;
        Ok(MigMode {
            current: cur == NVML_DEVICE_MIG_ENABLE,
            pending: pend == NVML_DEVICE_MIG_ENABLE,
        })
    }

    fn info(&self, gpu: u32) -> Result<GpuInfo, GpuError> {
        let dev = self.device(gpu)?;
        let name = self.string(*sym!(self, nvmlDeviceGetName)?, dev, || {
            format!("GPU {gpu}: read name")
        })?;
        let uuid = self.uuid_of(dev, || format!("GPU {gpu}: read UUID"))?;
        let mut mem: nvmlMemory_t = nvmlMemory_t {
            total: 0,
            free: 0,
            used: 0,
        };
        let mut unreadable = Vec::new();
        let f = sym!(self, nvmlDeviceGetMemoryInfo)?;
        // SAFETY: valid handle and out pointer.
        let rc = unsafe { f(dev, &mut mem) };
        // On a MIG-enabled GPU an unprivileged caller may not read the whole GPU's memory
        // (nvidia-smi shows N/A): report what else can be read, and say what could not.
        if rc == nvmlReturn_enum_NVML_ERROR_NO_PERMISSION
            || rc == nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED
        {
            unreadable.push(format!(
                "memory: {} (on a MIG-enabled GPU the whole GPU's memory needs root)",
                code_name(rc)
            ));
            mem.total = 0;
        } else {
            check(rc, || format!("GPU {gpu}: read memory"))?;
        }
        let mut model = self.catalog.get(&name).map(|m| m.key.clone());
        if model.is_none() {
            if let Ok(f) = sym!(self, nvmlDeviceGetPciInfo_v3) {
                // SAFETY: plain C struct of integers and char arrays; zero is a valid value.
                let mut pci: nvmlPciInfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: valid handle and out pointer.
                if unsafe { f(dev, &mut pci) } == nvmlReturn_enum_NVML_SUCCESS {
                    let id = format!("0x{:08X}", pci.pciDeviceId);
                    model = self.catalog.get(&id).map(|m| m.key.clone());
                }
            }
        }
        let mig = match self.mig_mode_of(gpu, dev) {
            Ok(m) => Some(m),
            Err(GpuError::NotSupported { .. }) => None,
            Err(e) => return Err(e),
        };
        // With MIG on, the compute mode belongs to each MIG device, not the parent.
        let compute_mode = if mig.is_some_and(|m| m.current) {
            None
        } else {
            match self.compute_mode_of(gpu, dev) {
                Ok(m) => Some(m),
                Err(e) => {
                    unreadable.push(format!("compute mode: {e}"));
                    None
                }
            }
        };
        Ok(GpuInfo {
            index: gpu,
            uuid,
            name,
            model,
            memory_mib: mem.total / (1024 * 1024),
            mig,
            compute_mode,
            unreadable,
        })
    }

    fn compute_mode_of(&self, gpu: u32, dev: nvmlDevice_t) -> Result<ComputeMode, GpuError> {
        let f = sym!(self, nvmlDeviceGetComputeMode)?;
        let mut mode: nvmlComputeMode_t = 0;
        // SAFETY: valid handle and out pointer.
        check(unsafe { f(dev, &mut mode) }, || {
            format!("GPU {gpu}: read compute mode")
        })?;
        Ok(compute_mode_from(mode))
    }

    /// Read the GPU-instance profile table from NVML (every profile index, its info and its
    /// possible placements).
    fn read_table(&self, gpu: u32, dev: nvmlDevice_t) -> Result<Vec<ProfileInfo>, GpuError> {
        let info_v = sym!(self, nvmlDeviceGetGpuInstanceProfileInfoV)?;
        let places = sym!(self, nvmlDeviceGetGpuInstancePossiblePlacements_v2)?;
        let model = self
            .info(gpu)
            .ok()
            .and_then(|i| i.model)
            .and_then(|k| self.catalog.get(&k).cloned());
        let mut out = Vec::new();
        let read = |idx: u32| {
            // SAFETY: plain C struct; zero is valid; the version field is set below.
            let mut info: nvmlGpuInstanceProfileInfo_v2_t = unsafe { std::mem::zeroed() };
            info.version = profile_info_v2_version();
            // SAFETY: valid handle, versioned out struct.
            let rc = unsafe { info_v(dev, idx, &mut info) };
            (rc, info)
        };
        for (idx, rc) in scan_profiles(NVML_GPU_INSTANCE_PROFILE_COUNT, |i| read(i).0) {
            check(rc, || format!("GPU {gpu}: read GPU-instance profile {idx}"))?;
            let (_, info) = read(idx);
            let mut buf = [nvmlGpuInstancePlacement_t { start: 0, size: 0 }; MAX_PLACEMENTS];
            let mut count = MAX_PLACEMENTS as u32;
            // SAFETY: the buffer holds `count` placements.
            let rc = unsafe { places(dev, info.id, buf.as_mut_ptr(), &mut count) };
            check(rc, || {
                format!("GPU {gpu}: read placements of profile ID {}", info.id)
            })?;
            let used = &buf[..(count as usize).min(MAX_PLACEMENTS)];
            let mut placements: Vec<u8> = used.iter().map(|p| p.start as u8).collect();
            placements.sort_unstable();
            let size = used.first().map(|p| p.size as u8).unwrap_or(0);
            let mut name = cstr(&info.name);
            if let Some(rest) = name.strip_prefix("MIG ") {
                name = rest.to_string();
            }
            if name.is_empty() {
                name = model
                    .as_ref()
                    .and_then(|m| m.profile_by_id(info.id).map(|i| m.profile(i).name.clone()))
                    .unwrap_or_else(|| format!("profile-id-{}", info.id));
            }
            out.push(ProfileInfo {
                nvml_index: idx,
                id: info.id,
                name,
                compute_slices: info.sliceCount as u8,
                memory_slices: size,
                memory_mib: info.memorySizeMB,
                max: info.instanceCount.min(255) as u8,
                sm: info.multiprocessorCount,
                ce: info.copyEngineCount,
                dec: info.decoderCount,
                enc: info.encoderCount,
                jpeg: info.jpegCount,
                ofa: info.ofaCount,
                placements,
            });
        }
        Ok(out)
    }

    fn table(&mut self, gpu: u32) -> Result<Vec<ProfileInfo>, GpuError> {
        if let Some(t) = self.tables.get(&gpu) {
            return Ok(t.clone());
        }
        let dev = self.device(gpu)?;
        let mig = self.mig_mode_of(gpu, dev)?;
        if !mig.current {
            return Err(GpuError::NotSupported {
                op: format!("GPU {gpu}: read the profile table"),
                reason: "MIG mode is disabled; NVML lists profiles only while it is enabled".into(),
            });
        }
        let t = self.read_table(gpu, dev)?;
        self.tables.insert(gpu, t.clone());
        Ok(t)
    }

    /// Every GPU instance of a device, with its info.
    fn gi_handles(
        &self,
        gpu: u32,
        dev: nvmlDevice_t,
        table: &[ProfileInfo],
    ) -> Result<Vec<GiHandle>, GpuError> {
        let list = sym!(self, nvmlDeviceGetGpuInstances)?;
        let get_info = sym!(self, nvmlGpuInstanceGetInfo)?;
        let mut out = Vec::new();
        for p in table {
            let mut buf: Vec<nvmlGpuInstance_t> = vec![ptr::null_mut(); MAX_INSTANCES];
            let mut count = 0u32;
            // SAFETY: the buffer holds MAX_INSTANCES handles, more than any profile's count.
            let rc = unsafe { list(dev, p.id, buf.as_mut_ptr(), &mut count) };
            check(rc, || {
                format!("GPU {gpu}: list GPU instances of {}", p.name)
            })?;
            for &h in &buf[..(count as usize).min(MAX_INSTANCES)] {
                out.push(GiHandle::read(*get_info, h, || {
                    format!("GPU {gpu}: read GPU-instance info")
                })?);
            }
        }
        out.sort_by_key(|g| (g.start, g.id));
        Ok(out)
    }

    /// The compute instances of a GI: (handle, id, profile id).
    fn ci_handles(
        &self,
        gpu: u32,
        gi: &GiHandle,
    ) -> Result<Vec<(nvmlComputeInstance_t, u32, u32)>, GpuError> {
        let prof = sym!(self, nvmlGpuInstanceGetComputeInstanceProfileInfo)?;
        let list = sym!(self, nvmlGpuInstanceGetComputeInstances)?;
        let get_info = sym!(self, nvmlComputeInstanceGetInfo_v2)?;
        let mut out: Vec<(nvmlComputeInstance_t, u32, u32)> = Vec::new();
        let scan = scan_profiles(NVML_COMPUTE_INSTANCE_PROFILE_COUNT, |i| {
            ci_profile_info(*prof, gi, i).0
        });
        for (idx, rc) in scan {
            let (_, info) = ci_profile_info(*prof, gi, idx);
            check(rc, || {
                format!(
                    "GPU {gpu}: read compute-instance profile {idx} of GI {}",
                    gi.id
                )
            })?;
            let mut buf: Vec<nvmlComputeInstance_t> = vec![ptr::null_mut(); MAX_INSTANCES];
            let mut count = 0u32;
            // SAFETY: the buffer holds MAX_INSTANCES handles.
            let rc = unsafe { list(gi.handle, info.id, buf.as_mut_ptr(), &mut count) };
            check(rc, || {
                format!("GPU {gpu}: list compute instances of GI {}", gi.id)
            })?;
            for &h in &buf[..(count as usize).min(MAX_INSTANCES)] {
                // SAFETY: plain C struct; zero is valid.
                let mut ci: nvmlComputeInstanceInfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: a handle NVML just returned; valid out pointer.
                check(unsafe { get_info(h, &mut ci) }, || {
                    format!("GPU {gpu}: read compute-instance info of GI {}", gi.id)
                })?;
                if !out.iter().any(|(_, id, _)| *id == ci.id) {
                    out.push((h, ci.id, ci.profileId));
                }
            }
        }
        out.sort_by_key(|c| c.1);
        Ok(out)
    }

    /// Compute processes on a handle (parent GPU or MIG device).
    fn processes(&self, dev: nvmlDevice_t) -> Result<Vec<nvmlProcessInfo_t>, nvmlReturn_t> {
        let Ok(f) = self
            .nvml
            .lib()
            .nvmlDeviceGetComputeRunningProcesses_v3
            .as_ref()
        else {
            return Err(nvmlReturn_enum_NVML_ERROR_FUNCTION_NOT_FOUND);
        };
        let mut count = 0u32;
        // SAFETY: a null buffer with count 0 asks for the count.
        let rc = unsafe { f(dev, &mut count, ptr::null_mut()) };
        if rc == nvmlReturn_enum_NVML_SUCCESS {
            return Ok(vec![]);
        }
        if rc != nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE {
            return Err(rc);
        }
        for _ in 0..4 {
            let mut n = count + 16;
            let zero = nvmlProcessInfo_t {
                pid: 0,
                usedGpuMemory: 0,
                gpuInstanceId: NO_ID,
                computeInstanceId: NO_ID,
            };
            let mut buf = vec![zero; n as usize];
            // SAFETY: the buffer holds `n` records.
            let rc = unsafe { f(dev, &mut n, buf.as_mut_ptr()) };
            if rc == nvmlReturn_enum_NVML_SUCCESS {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            if rc != nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE {
                return Err(rc);
            }
            count = n;
        }
        Err(nvmlReturn_enum_NVML_ERROR_TIMEOUT)
    }

    /// PIDs per GI ID and MIG UUIDs per (GI, CI), from the parent and each MIG device handle.
    #[allow(clippy::type_complexity)]
    fn mig_devices(
        &self,
        gpu: u32,
        dev: nvmlDevice_t,
    ) -> Result<(BTreeMap<u32, BTreeSet<u32>>, BTreeMap<(u32, u32), String>), GpuError> {
        let mut pids: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        let mut uuids = BTreeMap::new();
        let parent = self.processes(dev);
        if let Ok(list) = &parent {
            for p in list {
                if p.gpuInstanceId != NO_ID {
                    pids.entry(p.gpuInstanceId).or_default().insert(p.pid);
                }
            }
        }
        let max_f = sym!(self, nvmlDeviceGetMaxMigDeviceCount)?;
        let by_index = sym!(self, nvmlDeviceGetMigDeviceHandleByIndex)?;
        let gi_of = sym!(self, nvmlDeviceGetGpuInstanceId)?;
        let ci_of = sym!(self, nvmlDeviceGetComputeInstanceId)?;
        let mut max = 0u32;
        // SAFETY: valid handle and out pointer.
        check(unsafe { max_f(dev, &mut max) }, || {
            format!("GPU {gpu}: count MIG devices")
        })?;
        for i in 0..max {
            let mut mig: nvmlDevice_t = ptr::null_mut();
            // SAFETY: valid handle and out pointer.
            let rc = unsafe { by_index(dev, i, &mut mig) };
            if rc == nvmlReturn_enum_NVML_ERROR_NOT_FOUND
                || rc == nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
            {
                continue;
            }
            check(rc, || format!("GPU {gpu}: get MIG device {i}"))?;
            let (mut gi, mut ci) = (0u32, 0u32);
            // SAFETY: a MIG handle NVML just returned; valid out pointers.
            check(unsafe { gi_of(mig, &mut gi) }, || {
                format!("GPU {gpu}: GI of MIG device {i}")
            })?;
            // SAFETY: as above.
            check(unsafe { ci_of(mig, &mut ci) }, || {
                format!("GPU {gpu}: CI of MIG device {i}")
            })?;
            let uuid = self.uuid_of(mig, || format!("GPU {gpu}: UUID of MIG device {i}"))?;
            uuids.insert((gi, ci), uuid);
            match self.processes(mig) {
                Ok(list) => {
                    for p in list {
                        pids.entry(gi).or_default().insert(p.pid);
                    }
                }
                Err(rc) if parent.is_err() => {
                    return Err(error_from_code(
                        rc,
                        format!("GPU {gpu}: list the processes of MIG device GI {gi} CI {ci} (an instance is never assumed idle)"),
                    ))
                }
                Err(_) => {}
            }
        }
        Ok((pids, uuids))
    }

    fn observe(
        &mut self,
        gpu: u32,
    ) -> Result<(nvmlDevice_t, Vec<GpuInstance>, Vec<GiHandle>), GpuError> {
        let op = format!("GPU {gpu}: list GPU instances");
        let dev = self.device(gpu)?;
        if !self.mig_mode_of(gpu, dev)?.current {
            return Err(checks::mig_off_for_list(op));
        }
        let table = self.table(gpu)?;
        let gis = self.gi_handles(gpu, dev, &table)?;
        let (pids, uuids) = self.mig_devices(gpu, dev)?;
        let mut out = Vec::new();
        for gi in &gis {
            let cis = self.ci_handles(gpu, gi)?;
            let prof = table.iter().find(|p| p.id == gi.profile_id);
            let compute_instances: Vec<ComputeInstance> = cis
                .iter()
                .map(|&(_, id, profile_id)| ComputeInstance {
                    ci_id: id,
                    profile_id,
                    uuid: uuids.get(&(gi.id, id)).cloned(),
                })
                .collect();
            out.push(GpuInstance {
                gpu,
                gi_id: gi.id,
                profile: prof
                    .map(|p| p.name.clone())
                    .unwrap_or_else(|| format!("profile-id-{}", gi.profile_id)),
                profile_id: gi.profile_id,
                start: gi.start as u8,
                size: gi.size as u8,
                uuid: compute_instances.iter().find_map(|c| c.uuid.clone()),
                compute_instances,
                pids: pids
                    .get(&gi.id)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default(),
            });
        }
        Ok((dev, out, gis))
    }

    fn gi_by_id(&self, gpu: u32, dev: nvmlDevice_t, gi_id: u32) -> Result<GiHandle, GpuError> {
        let by_id = sym!(self, nvmlDeviceGetGpuInstanceById)?;
        let get_info = sym!(self, nvmlGpuInstanceGetInfo)?;
        let mut h: nvmlGpuInstance_t = ptr::null_mut();
        // SAFETY: valid handle and out pointer.
        check(unsafe { by_id(dev, gi_id, &mut h) }, || {
            format!("GPU {gpu}: find GPU instance {gi_id}")
        })?;
        GiHandle::read(*get_info, h, || {
            format!("GPU {gpu}: read GPU instance {gi_id}")
        })
    }

    /// Create the default (whole-GI) compute instance of a GI.
    fn create_ci(&self, gpu: u32, gi: &GiHandle) -> Result<(), GpuError> {
        let prof = sym!(self, nvmlGpuInstanceGetComputeInstanceProfileInfo)?;
        let create = sym!(self, nvmlGpuInstanceCreateComputeInstance)?;
        let mut offered = Vec::new();
        let scan = scan_profiles(NVML_COMPUTE_INSTANCE_PROFILE_COUNT, |i| {
            ci_profile_info(*prof, gi, i).0
        });
        for (idx, rc) in scan {
            if rc == nvmlReturn_enum_NVML_SUCCESS {
                let (_, info) = ci_profile_info(*prof, gi, idx);
                offered.push((idx, info.id, info.sliceCount));
            }
        }
        let gi_slices = self
            .tables
            .get(&gpu)
            .and_then(|t| t.iter().find(|p| p.id == gi.profile_id))
            .map(|p| u32::from(p.compute_slices))
            .unwrap_or(0);
        let (_, profile_id) =
            default_ci_profile(&offered, gi_slices).ok_or_else(|| GpuError::NotSupported {
                op: format!("GPU {gpu}: create the compute instance of GI {}", gi.id),
                reason: "NVML reports no compute-instance profile for this GPU instance".into(),
            })?;
        let mut ci: nvmlComputeInstance_t = ptr::null_mut();
        // SAFETY: valid GI handle and out pointer.
        check(unsafe { create(gi.handle, profile_id, &mut ci) }, || {
            format!("GPU {gpu}: create the compute instance of GI {}", gi.id)
        })
    }

    fn find(&mut self, gpu: u32, gi_id: u32) -> Result<GpuInstance, GpuError> {
        let (_, obs, _) = self.observe(gpu)?;
        obs.into_iter()
            .find(|i| i.gi_id == gi_id)
            .ok_or_else(|| GpuError::NotFound {
                op: format!("GPU {gpu}: read back GPU instance {gi_id}"),
                detail: "it vanished right after it was made".into(),
            })
    }

    /// The event set, registered for XID events on every GPU. It is kept only once every
    /// registration succeeded: a failed one frees the set, so the next poll starts afresh
    /// rather than reusing a half-registered set.
    fn ensure_events(&mut self) -> Result<nvmlEventSet_t, GpuError> {
        if let Some(s) = &self.events {
            return Ok(s.0);
        }
        let create = sym!(self, nvmlEventSetCreate)?;
        let register = sym!(self, nvmlDeviceRegisterEvents)?;
        let mut set: nvmlEventSet_t = ptr::null_mut();
        // SAFETY: valid out pointer.
        check(unsafe { create(&mut set) }, || {
            "create an NVML event set".into()
        })?;
        let mut devices = Vec::new();
        let registered = (|| {
            for gpu in 0..self.count()? {
                let dev = self.device(gpu)?;
                // SAFETY: valid device and set handles.
                let rc = unsafe { register(dev, u64::from(nvmlEventTypeXidCriticalError), set) };
                if rc != nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED {
                    check(rc, || format!("GPU {gpu}: subscribe to XID events"))?;
                }
                devices.push((dev, gpu));
            }
            Ok::<(), GpuError>(())
        })();
        if let Err(e) = registered {
            self.free_events(set);
            return Err(e);
        }
        self.events = Some(EventSet(set, devices));
        Ok(set)
    }

    fn free_events(&self, set: nvmlEventSet_t) {
        if let Ok(f) = self.nvml.lib().nvmlEventSetFree.as_ref() {
            // SAFETY: the set was created by nvmlEventSetCreate, is no longer stored, and is
            // freed once.
            unsafe {
                f(set);
            }
        }
    }

    /// The MIG device handles of GPU instance `gi_id`, sorted by compute-instance ID.
    fn mig_handles_of(
        &self,
        gpu: u32,
        dev: nvmlDevice_t,
        gi_id: u32,
        op: &str,
    ) -> Result<Vec<nvmlDevice_t>, GpuError> {
        if !self.mig_mode_of(gpu, dev)?.current {
            return Err(GpuError::NotSupported {
                op: op.to_string(),
                reason: "MIG mode is disabled: there are no MIG devices; use the GPU's own \
                         compute mode"
                    .into(),
            });
        }
        let max_f = sym!(self, nvmlDeviceGetMaxMigDeviceCount)?;
        let by_index = sym!(self, nvmlDeviceGetMigDeviceHandleByIndex)?;
        let gi_of = sym!(self, nvmlDeviceGetGpuInstanceId)?;
        let ci_of = sym!(self, nvmlDeviceGetComputeInstanceId)?;
        let mut max = 0u32;
        // SAFETY: valid handle and out pointer.
        check(unsafe { max_f(dev, &mut max) }, || {
            format!("{op}: count MIG devices")
        })?;
        let mut found = Vec::new();
        for i in 0..max {
            let mut mig: nvmlDevice_t = ptr::null_mut();
            // SAFETY: valid handle and out pointer.
            let rc = unsafe { by_index(dev, i, &mut mig) };
            if rc == nvmlReturn_enum_NVML_ERROR_NOT_FOUND
                || rc == nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
            {
                continue;
            }
            check(rc, || format!("{op}: get MIG device {i}"))?;
            let (mut gi, mut ci) = (0u32, 0u32);
            // SAFETY: a MIG handle NVML just returned; valid out pointers.
            check(unsafe { gi_of(mig, &mut gi) }, || {
                format!("{op}: GI of MIG device {i}")
            })?;
            if gi != gi_id {
                continue;
            }
            // SAFETY: as above.
            check(unsafe { ci_of(mig, &mut ci) }, || {
                format!("{op}: CI of MIG device {i}")
            })?;
            found.push((ci, mig));
        }
        if found.is_empty() {
            return Err(GpuError::NotFound {
                op: op.to_string(),
                detail: format!(
                    "no MIG device belongs to GPU instance {gi_id} (no such GI, or it has no \
                     compute instance yet)"
                ),
            });
        }
        found.sort_by_key(|f| f.0);
        Ok(found.into_iter().map(|f| f.1).collect())
    }
}

impl Drop for NvmlBackend {
    fn drop(&mut self) {
        if let Some(set) = self.events.take() {
            self.free_events(set.0);
        }
    }
}

impl GpuBackend for NvmlBackend {
    fn describe(&self) -> String {
        "nvml".into()
    }

    fn capabilities(&self) -> crate::backend::Capabilities {
        crate::backend::Capabilities::HARDWARE
    }

    /// Nothing to record: NVML lists the work's processes itself once its CUDA context exists.
    fn attach_work(&mut self, _gpu: u32, _start: u8, _pid: Option<u32>) -> Result<(), GpuError> {
        Ok(())
    }

    /// Nothing to record: [`GpuBackend::instances`] reports the processes NVML sees.
    fn sync_work(
        &mut self,
        _gpu: u32,
        _held: &[crate::backend::HeldInstance],
    ) -> Result<bool, GpuError> {
        Ok(false)
    }

    fn gpus(&mut self) -> Result<Vec<GpuInfo>, GpuError> {
        (0..self.count()?).map(|i| self.info(i)).collect()
    }

    fn profiles(&mut self, gpu: u32) -> Result<Vec<ProfileInfo>, GpuError> {
        self.table(gpu)
    }

    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError> {
        Ok(self.observe(gpu)?.1)
    }

    fn create_gi(&mut self, gpu: u32, profile: &str, start: u8) -> Result<GpuInstance, GpuError> {
        let op = format!("GPU {gpu}: create GPU instance {profile}@{start}");
        let dev = self.device(gpu)?;
        if !self.mig_mode_of(gpu, dev)?.current {
            return Err(checks::mig_off_for_create(op));
        }
        let table = self.table(gpu)?;
        let Some(p) = table.iter().find(|p| p.name.eq_ignore_ascii_case(profile)) else {
            let names: Vec<&str> = table.iter().map(|p| p.name.as_str()).collect();
            return Err(GpuError::NotSupported {
                op,
                reason: format!(
                    "the GPU offers no profile `{profile}`; it offers {}",
                    names.join(", ")
                ),
            });
        };
        checks::check_placement(&op, &p.name, &p.placements, start)?;
        let create = sym!(self, nvmlDeviceCreateGpuInstanceWithPlacement)?;
        let get_info = sym!(self, nvmlGpuInstanceGetInfo)?;
        let destroy = sym!(self, nvmlGpuInstanceDestroy)?;
        let placement = nvmlGpuInstancePlacement_t {
            start: u32::from(start),
            size: u32::from(p.memory_slices),
        };
        let mut h: nvmlGpuInstance_t = ptr::null_mut();
        // SAFETY: valid device handle, placement and out pointer.
        check(unsafe { create(dev, p.id, &placement, &mut h) }, || {
            op.clone()
        })?;
        let gi = GiHandle::read(*get_info, h, || format!("{op}: read the new GPU instance"))?;
        if let Err(e) = self.create_ci(gpu, &gi) {
            // Roll back so that a failed create leaves nothing behind (best effort).
            // SAFETY: the GI handle is valid and has no compute instance.
            unsafe {
                destroy(h);
            }
            return Err(e);
        }
        self.find(gpu, gi.id)
    }

    fn create_default_ci(&mut self, gpu: u32, gi_id: u32) -> Result<GpuInstance, GpuError> {
        let dev = self.device(gpu)?;
        let gi = self.gi_by_id(gpu, dev, gi_id)?;
        // The GI's slice count (for the default CI profile) comes from the profile table.
        self.table(gpu)?;
        if !self.ci_handles(gpu, &gi)?.is_empty() {
            return Err(GpuError::InsufficientResources {
                op: format!("GPU {gpu}: create the compute instance of GI {gi_id}"),
                detail: "the GPU instance already has compute instances".into(),
            });
        }
        self.create_ci(gpu, &gi)?;
        self.find(gpu, gi_id)
    }

    fn destroy_gi(&mut self, instance: &IdleInstance) -> Result<(), GpuError> {
        let gpu = instance.gpu();
        let op = checks::destroy_op(instance);
        let (dev, obs, _) = self.observe(gpu)?;
        let now = obs
            .iter()
            .find(|i| i.gi_id == instance.gi_id())
            .map(|i| (i.profile.as_str(), i.start, i.pids.as_slice()));
        checks::check_destroyable(&op, instance, now)?;
        let gi = self.gi_by_id(gpu, dev, instance.gi_id())?;
        let destroy_ci = sym!(self, nvmlComputeInstanceDestroy)?;
        for (h, ci_id, _) in self.ci_handles(gpu, &gi)? {
            // SAFETY: a CI handle NVML just returned.
            check(unsafe { destroy_ci(h) }, || {
                format!("{op}: destroy compute instance {ci_id}")
            })?;
        }
        let destroy = sym!(self, nvmlGpuInstanceDestroy)?;
        // SAFETY: a GI handle NVML just returned; its CIs are gone.
        check(unsafe { destroy(gi.handle) }, || op.clone())
    }

    fn mig_mode(&mut self, gpu: u32) -> Result<MigMode, GpuError> {
        let dev = self.device(gpu)?;
        self.mig_mode_of(gpu, dev)
    }

    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigMode, GpuError> {
        let dev = self.device(gpu)?;
        let f = sym!(self, nvmlDeviceSetMigMode)?;
        let mode = if enabled {
            NVML_DEVICE_MIG_ENABLE
        } else {
            NVML_DEVICE_MIG_DISABLE
        };
        let op = format!(
            "GPU {gpu}: {} MIG mode",
            if enabled { "enable" } else { "disable" }
        );
        let mut activation: nvmlReturn_t = nvmlReturn_enum_NVML_SUCCESS;
        // SAFETY: valid handle and out pointer.
        check(unsafe { f(dev, mode, &mut activation) }, || op.clone())?;
        self.tables.remove(&gpu);
        mig_activation(activation, &op)?;
        self.mig_mode_of(gpu, dev)
    }

    fn compute_mode(&mut self, gpu: u32) -> Result<ComputeMode, GpuError> {
        let dev = self.device(gpu)?;
        if self.mig_mode_of(gpu, dev).is_ok_and(|m| m.current) {
            return Err(checks::compute_mode_is_per_mig_device(format!(
                "GPU {gpu}: read compute mode"
            )));
        }
        self.compute_mode_of(gpu, dev)
    }

    fn set_compute_mode(&mut self, gpu: u32, mode: ComputeMode) -> Result<(), GpuError> {
        let dev = self.device(gpu)?;
        if self.mig_mode_of(gpu, dev).is_ok_and(|m| m.current) {
            return Err(checks::compute_mode_is_per_mig_device(format!(
                "GPU {gpu}: set compute mode {mode}"
            )));
        }
        let f = sym!(self, nvmlDeviceSetComputeMode)?;
        // SAFETY: valid handle.
        check(unsafe { f(dev, compute_mode_to(mode)) }, || {
            format!("GPU {gpu}: set compute mode {mode}")
        })
    }

    fn instance_compute_mode(&mut self, gpu: u32, gi_id: u32) -> Result<ComputeMode, GpuError> {
        let op = format!("GPU {gpu}: read the compute mode of GPU instance {gi_id}");
        let dev = self.device(gpu)?;
        let migs = self.mig_handles_of(gpu, dev, gi_id, &op)?;
        self.compute_mode_of(gpu, migs[0])
    }

    fn set_instance_compute_mode(
        &mut self,
        gpu: u32,
        gi_id: u32,
        mode: ComputeMode,
    ) -> Result<(), GpuError> {
        let op = format!("GPU {gpu}: set the compute mode of GPU instance {gi_id} to {mode}");
        let dev = self.device(gpu)?;
        let f = sym!(self, nvmlDeviceSetComputeMode)?;
        for mig in self.mig_handles_of(gpu, dev, gi_id, &op)? {
            // SAFETY: a MIG device handle NVML just returned.
            check(unsafe { f(mig, compute_mode_to(mode)) }, || op.clone())?;
        }
        Ok(())
    }

    fn poll_events(&mut self, timeout_ms: u32) -> Result<Vec<GpuEvent>, GpuError> {
        let set = self.ensure_events()?;
        let wait = sym!(self, nvmlEventSetWait_v2)?;
        let index = sym!(self, nvmlDeviceGetIndex)?;
        let mut out = Vec::new();
        let mut timeout = timeout_ms;
        // Bounded by events read, not kept: skipped events must not make this loop endless.
        for _ in 0..1024 {
            // SAFETY: plain C struct; zero is valid.
            let mut data: nvmlEventData_t = unsafe { std::mem::zeroed() };
            // SAFETY: a live event set and a valid out pointer.
            let rc = unsafe { wait(set, &mut data, timeout) };
            if rc == nvmlReturn_enum_NVML_ERROR_TIMEOUT {
                break;
            }
            if rc != nvmlReturn_enum_NVML_SUCCESS {
                // The set may be unusable now (driver reloaded, GPU lost): drop it, so the
                // next poll registers a fresh one, and keep what was read so far.
                if let Some(s) = self.events.take() {
                    self.free_events(s.0);
                }
                if out.is_empty() {
                    return Err(error_from_code(rc, "wait for XID events".into()));
                }
                break;
            }
            // The GPU of the event: from the handles registered, else NVML. An event whose
            // GPU cannot be found is skipped; the rest of the batch is kept.
            let known = self
                .events
                .as_ref()
                .and_then(|s| s.1.iter().find(|(d, _)| *d == data.device).map(|(_, i)| *i));
            let mut gpu = 0u32;
            let gpu = match known {
                Some(i) => i,
                // SAFETY: the device handle of the event; valid out pointer.
                None if unsafe { index(data.device, &mut gpu) } == nvmlReturn_enum_NVML_SUCCESS => {
                    gpu
                }
                None => {
                    timeout = 0;
                    continue;
                }
            };
            let id = |v: u32| (v != NO_ID).then_some(v);
            out.push(GpuEvent {
                gpu,
                xid: data.eventData,
                gi_id: id(data.gpuInstanceId),
                ci_id: id(data.computeInstanceId),
            });
            timeout = 0;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_codes_map_to_the_matching_variants() {
        let op = || "GPU 0: x".to_string();
        assert!(matches!(
            error_from_code(nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES, op()),
            GpuError::InsufficientResources { .. }
        ));
        assert!(matches!(
            error_from_code(nvmlReturn_enum_NVML_ERROR_IN_USE, op()),
            GpuError::InUse { .. }
        ));
        assert!(error_from_code(nvmlReturn_enum_NVML_ERROR_TIMEOUT, op()).is_transient());
        assert!(error_from_code(12345, op()).is_transient());
        assert!(!error_from_code(nvmlReturn_enum_NVML_ERROR_NO_PERMISSION, op()).is_transient());
    }

    #[test]
    fn profile_scans_go_past_the_bindings_count_until_invalid_argument() {
        // A driver whose table has 20 GI profiles (newer than the bindings' 17), with 3 and 6
        // not offered on this GPU and 11 reported as a gap with INVALID_ARGUMENT.
        let driver = |idx: u32| match idx {
            3 | 6 => nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED,
            11 => nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
            0..=19 => nvmlReturn_enum_NVML_SUCCESS,
            _ => nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
        };
        let seen: Vec<u32> = scan_profiles(NVML_GPU_INSTANCE_PROFILE_COUNT, driver)
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        let want: Vec<u32> = (0..20).filter(|i| ![3, 6, 11].contains(i)).collect();
        assert_eq!(seen, want);
        assert!(
            seen.contains(&17) && seen.contains(&19),
            "past the old count"
        );
        // A driver that never says INVALID_ARGUMENT is cut off, not looped on forever.
        let endless = scan_profiles(8, |_| nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED);
        assert!(endless.is_empty());
        // Other errors are kept for the caller to report.
        let odd = scan_profiles(1, |i| {
            if i == 0 {
                nvmlReturn_enum_NVML_ERROR_NO_PERMISSION
            } else {
                nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
            }
        });
        assert_eq!(odd, vec![(0, nvmlReturn_enum_NVML_ERROR_NO_PERMISSION)]);
    }

    #[test]
    fn the_default_compute_instance_matches_nvidia_smi() {
        // 3g.40gb (a100-80gb_lcip_1.txt): 1c (idx 0), 2c (idx 1), 3g (idx 2, marked *).
        let a100 = [(0, 0, 1), (1, 1, 2), (2, 2, 3)];
        assert_eq!(default_ci_profile(&a100, 3), Some((2, 2)));
        // 2g.12gb (a30_lcip_1.txt): 1c (0), 2g (1, marked *).
        assert_eq!(default_ci_profile(&[(0, 0, 1), (1, 1, 2)], 2), Some((1, 1)));
        // 1g.20gb: 1_SLICE (idx 0) and 1_SLICE_REV1 (idx 7) both span the GI; nvidia-smi's
        // default is REV1. The old rule (first with most slices) took 1_SLICE.
        let double_mem = [(0, 0, 1), (7, 7, 1)];
        assert_eq!(default_ci_profile(&double_mem, 1), Some((7, 7)));
        // Unknown GI size: the largest profile.
        assert_eq!(default_ci_profile(&a100, 0), Some((2, 2)));
        assert_eq!(default_ci_profile(&[], 1), None);
    }

    #[test]
    fn mig_activation_status_is_not_ignored() {
        assert!(mig_activation(nvmlReturn_enum_NVML_SUCCESS, "GPU 0: enable MIG mode").is_ok());
        // Pending until a reset: the mode read back shows it.
        assert!(mig_activation(nvmlReturn_enum_NVML_ERROR_RESET_REQUIRED, "x").is_ok());
        let e = mig_activation(nvmlReturn_enum_NVML_ERROR_IN_USE, "GPU 0: enable MIG mode")
            .unwrap_err();
        assert!(matches!(e, GpuError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("stays pending"), "{e}");
        assert!(mig_activation(nvmlReturn_enum_NVML_ERROR_NO_PERMISSION, "x").is_err());
    }

    #[test]
    fn a_driver_version_mismatch_is_not_retried() {
        let e = error_from_code(
            nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH,
            "wait for XID events".into(),
        );
        assert!(matches!(e, GpuError::DriverMismatch { .. }), "{e}");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("reboot"), "{e}");
    }

    #[test]
    fn the_profile_info_struct_version_matches_nvml_h() {
        // nvml.h: sizeof(nvmlGpuInstanceProfileInfo_v2_t) | (2 << 24); the struct is 152 bytes.
        assert_eq!(profile_info_v2_version(), 0x0200_0098);
    }

    #[test]
    fn c_strings_stop_at_nul() {
        let mut buf = [0 as c_char; 16];
        for (i, b) in b"MIG 1g.10gb".iter().enumerate() {
            buf[i] = *b as c_char;
        }
        assert_eq!(cstr(&buf), "MIG 1g.10gb");
    }

    #[test]
    fn without_a_driver_open_says_so_plainly() {
        // On machines with a driver this opens; that is fine too.
        if let Err(e) = NvmlBackend::open(Catalog::builtin().clone()) {
            let text = e.to_string();
            assert!(
                matches!(
                    e,
                    GpuError::LibraryNotFound { .. } | GpuError::DriverNotLoaded
                ),
                "{text}"
            );
            assert!(text.contains("--backend sim:STATE"), "{text}");
        }
    }
}
