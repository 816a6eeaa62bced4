//! The GPU workloads, on the CUDA driver API and cuBLAS through `cudarc`, loaded at run time
//! (`dynamic-loading`): the crate builds and the binary starts on machines without CUDA, and
//! [`preflight`] turns a missing driver into a clear error before any tenant starts.
//!
//! Each tenant uses device ordinal 0 of what `CUDA_VISIBLE_DEVICES` shows it (the parent sets it
//! to the GPU or MIG device of the tenant's slot), on the context's default stream, with cudarc's
//! per-slice event tracking switched off (one stream, so nothing to track). A timed batch
//! enqueues `iters` operations and then synchronizes the stream:
//! - HtoD / DtoH: `cuMemcpyHtoDAsync` / `cuMemcpyDtoHAsync` between a page-locked host buffer
//!   (`cuMemHostAlloc`, not write-combined) and device memory, like `bandwidthTest --htod/--dtoh`.
//! - DtoD: `cuMemcpyDtoDAsync` between two device buffers (bytes counted twice).
//! - GEMM: `cublasGemmEx` on FP32 matrices with `CUBLAS_COMPUTE_32F_FAST_TF32` (TF32 tensor
//!   cores), column-major, no transposes, α = 1, β = 0, operands filled with pseudo-random values
//!   (power draw depends on the data; zeros would flatter a power-limited GPU).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    result as drv, CudaContext, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice,
};

use crate::error::BenchError;
use crate::protocol::DeviceInfo;
use crate::tenant::Kernel;
use crate::workload::{Shape, Workload};

/// The driver library as NVIDIA installs it (the loader also tries the names of
/// [`driver_candidates`]).
pub const DRIVER_LIB: &str = "libcuda.so.1";

fn cuda_err(op: &str) -> impl Fn(cudarc::driver::DriverError) -> BenchError + '_ {
    move |e| BenchError::Cuda {
        op: op.to_string(),
        detail: e.to_string(),
    }
}

fn blas_err(op: &str) -> impl Fn(cudarc::cublas::result::CublasError) -> BenchError + '_ {
    move |e| BenchError::Cuda {
        op: op.to_string(),
        detail: e.to_string(),
    }
}

/// The loader's message with its cause (libloading puts the `dlerror` text in `source()`).
fn load_error(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => cause.to_string(),
        None => e.to_string(),
    }
}

/// The file names cudarc's loader tries for the CUDA driver, in its order. The first that loads
/// is the one the tenants use, so [`preflight`] tries the same list (a machine may have only
/// `libcuda.so.1`, or a development `libcuda.so` link that wins).
pub fn driver_candidates() -> Vec<String> {
    linux_names("cuda", cudarc::get_lib_name_candidates("cuda"))
}

/// Of the loader's candidates, the names a Linux dynamic loader can find (`libX.so`,
/// `libX.so.N`): cudarc's list also holds Windows-style names (`libcuda64_12.so`) that never exist
/// here, and listing them in messages would only hide the ones that matter. The order is kept, so
/// the first name that loads is still the one the tenants get.
fn linux_names(lib: &str, names: Vec<String>) -> Vec<String> {
    let plain = format!("lib{lib}.so");
    let versioned = format!("lib{lib}.so.");
    names
        .into_iter()
        .filter(|n| *n == plain || n.starts_with(&versioned))
        .collect()
}

/// The file names cudarc's loader tries for cuBLAS, in its order. cudarc is built for CUDA 13
/// (`cuda-13000`), so after the unversioned names the list holds `libcublas.so.13` and then
/// `libcublas.so.12`: a CUDA 13 machine finds its library, and a CUDA 12 one falls back.
pub fn cublas_candidates() -> Vec<String> {
    linux_names("cublas", cudarc::get_lib_name_candidates("cublas"))
}

/// Which library loaded and which names were tried before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibProbe {
    /// The name that loaded, if any.
    pub found: Option<String>,
    /// Every distinct name tried, in order (up to and including the one that loaded).
    pub tried: Vec<String>,
    /// The loader's message for the most telling failure (the first versioned name's, else the
    /// last), when none loaded.
    pub error: Option<String>,
}

/// Try to load each name in order, as cudarc does, and stop at the first that loads.
pub fn probe_library(names: &[String]) -> LibProbe {
    let mut tried = Vec::new();
    let mut error: Option<String> = None;
    for name in names {
        // cudarc's list repeats some names; try each once.
        if tried.contains(name) {
            continue;
        }
        tried.push(name.clone());
        // SAFETY: loading the NVIDIA driver or cuBLAS runs only their initialisers, which have
        // no preconditions and do not call into CUDA; the handle is dropped (dlclose) right away.
        match unsafe { libloading::Library::new(name) } {
            Ok(_) => {
                return LibProbe {
                    found: Some(name.clone()),
                    tried,
                    error: None,
                }
            }
            Err(e) => {
                // A missing versioned name says more than a missing development link.
                if error.is_none() || name.contains(".so.") {
                    error = Some(load_error(&e));
                }
            }
        }
    }
    LibProbe {
        found: None,
        tried,
        error,
    }
}

/// Check, without initialising CUDA, that the driver (and, when `need_cublas`, cuBLAS) can be
/// loaded under one of the names cudarc's loader tries. Run in the parent before any tenant
/// starts. Returns what loaded.
pub fn preflight(need_cublas: bool) -> Result<Vec<String>, BenchError> {
    let mut found = Vec::new();
    let driver = probe_library(&driver_candidates());
    match driver.found {
        Some(name) => found.push(name),
        None => {
            return Err(BenchError::NoDriver {
                lib: format!("tried {}", driver.tried.join(", ")),
                detail: driver.error.unwrap_or_default(),
            })
        }
    }
    if need_cublas {
        let blas = probe_library(&cublas_candidates());
        match blas.found {
            Some(name) => found.push(name),
            None => {
                return Err(BenchError::NoCublas {
                    tried: blas.tried.join(", "),
                    detail: blas.error.unwrap_or_default(),
                })
            }
        }
    }
    Ok(found)
}

/// Name, memory, SM count and compute capability of device 0, without creating a context.
pub fn probe() -> Result<DeviceInfo, BenchError> {
    drv::init().map_err(cuda_err("cuInit"))?;
    let count = drv::device::get_count().map_err(cuda_err("cuDeviceGetCount"))?;
    if count < 1 {
        return Err(BenchError::Cuda {
            op: "cuDeviceGetCount".into(),
            detail: format!(
                "no CUDA device visible (CUDA_VISIBLE_DEVICES={})",
                std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "<unset>".into())
            ),
        });
    }
    let dev = drv::device::get(0).map_err(cuda_err("cuDeviceGet"))?;
    let name = drv::device::get_name(dev).map_err(cuda_err("cuDeviceGetName"))?;
    // SAFETY: `dev` was returned by cuDeviceGet.
    let mem = unsafe { drv::device::total_mem(dev) }.map_err(cuda_err("cuDeviceTotalMem"))?;
    let attr = |a: CUdevice_attribute| {
        // SAFETY: `dev` was returned by cuDeviceGet.
        unsafe { drv::device::get_attribute(dev, a) }.map_err(cuda_err("cuDeviceGetAttribute"))
    };
    let sms = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    let major = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    Ok(DeviceInfo {
        name,
        memory_mib: Some(mem as u64 / (1024 * 1024)),
        sm_count: Some(sms as u32),
        compute_capability: Some(format!("{major}.{minor}")),
    })
}

/// A context on device 0 with its default stream, event tracking off.
fn open() -> Result<(Arc<CudaContext>, Arc<CudaStream>), BenchError> {
    let ctx = CudaContext::new(0).map_err(cuda_err("cuDevicePrimaryCtxRetain"))?;
    // SAFETY: this tenant uses one stream only, so there is no cross-stream use to track.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.default_stream();
    Ok((ctx, stream))
}

fn alloc_hint(what: &str, bytes: u64) -> impl Fn(cudarc::driver::DriverError) -> BenchError + '_ {
    move |e| BenchError::Cuda {
        op: format!("allocating {what} ({:.0} MB)", bytes as f64 / 1e6),
        detail: format!(
            "{e}; on a small GPU or slice, scale the large GEMM down with --gemm-large-scale"
        ),
    }
}

/// The GPU kernel for a workload.
pub fn make_kernel(workload: Workload, shape: Shape) -> Result<Box<dyn Kernel>, BenchError> {
    let (ctx, stream) = open()?;
    let work = shape.work_per_iter(workload);
    match shape {
        Shape::Copy { bytes } => {
            let n = bytes as usize;
            let dev = stream
                .alloc_zeros::<u8>(n)
                .map_err(alloc_hint("device buffer", bytes))?;
            let kind = match workload {
                Workload::Htod => CopyKind::HtoD,
                Workload::Dtoh => CopyKind::DtoH,
                _ => CopyKind::DtoD,
            };
            let (host, dev2) = if kind == CopyKind::DtoD {
                let d2 = stream
                    .alloc_zeros::<u8>(n)
                    .map_err(alloc_hint("second device buffer", bytes))?;
                (None, Some(d2))
            } else {
                // SAFETY: the buffer is only a DMA source/target; its contents never matter.
                // Flags 0: plain page-locked memory, as bandwidthTest uses.
                let h = unsafe { ctx.alloc_pinned_with_flags::<u8>(n, 0) }
                    .map_err(alloc_hint("pinned host buffer", bytes))?;
                (Some(h), None)
            };
            let src_ptr = {
                let (p, _sync) = dev.device_ptr(&stream);
                p
            };
            let dst_ptr = dev2.as_ref().map(|d| {
                let (p, _sync) = d.device_ptr(&stream);
                p
            });
            let host_ptr = match &host {
                // The pointer stays valid while `host` lives in the kernel.
                Some(h) => Some(h.as_ptr().map_err(cuda_err("cuEventSynchronize"))? as *mut u8),
                None => None,
            };
            stream
                .synchronize()
                .map_err(cuda_err("cuStreamSynchronize"))?;
            Ok(Box::new(CudaCopy {
                kind,
                bytes: n,
                dev_ptr: src_ptr,
                dev2_ptr: dst_ptr.unwrap_or(0),
                host_ptr: host_ptr.unwrap_or(std::ptr::null_mut()),
                work,
                _dev: dev,
                _dev2: dev2,
                _host: host,
                stream,
                _ctx: ctx,
            }))
        }
        Shape::Gemm { m, n, k } => {
            let blas = CudaBlas::new(stream.clone()).map_err(blas_err("cublasCreate"))?;
            let mut a = stream
                .alloc_zeros::<f32>((m * k) as usize)
                .map_err(alloc_hint("GEMM operand A", 4 * m * k))?;
            let mut b = stream
                .alloc_zeros::<f32>((k * n) as usize)
                .map_err(alloc_hint("GEMM operand B", 4 * k * n))?;
            let c = stream
                .alloc_zeros::<f32>((m * n) as usize)
                .map_err(alloc_hint("GEMM result C", 4 * m * n))?;
            fill_random(&stream, &mut a, 1)?;
            fill_random(&stream, &mut b, 2)?;
            let a_ptr = a.device_ptr(&stream).0;
            let b_ptr = b.device_ptr(&stream).0;
            let c_ptr = c.device_ptr(&stream).0;
            stream
                .synchronize()
                .map_err(cuda_err("cuStreamSynchronize"))?;
            let dim = |d: u64| {
                i32::try_from(d).map_err(|_| BenchError::Invalid {
                    what: "GEMM dimension",
                    value: d.to_string(),
                    reason: "must fit in a 32-bit int".into(),
                })
            };
            Ok(Box::new(CudaGemm {
                m: dim(m)?,
                n: dim(n)?,
                k: dim(k)?,
                a_ptr,
                b_ptr,
                c_ptr,
                work,
                blas,
                _a: a,
                _b: b,
                _c: c,
                stream,
                _ctx: ctx,
            }))
        }
    }
}

/// Fill a device buffer with values in [-1, 1) from a fixed-seed xorshift, 4 Mi floats at a time.
fn fill_random(
    stream: &Arc<CudaStream>,
    buf: &mut CudaSlice<f32>,
    seed: u64,
) -> Result<(), BenchError> {
    const CHUNK: usize = 4 << 20;
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    let mut host = vec![0f32; CHUNK.min(buf.len())];
    let mut off = 0;
    while off < buf.len() {
        let len = CHUNK.min(buf.len() - off);
        for x in host[..len].iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *x = ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        }
        let mut view = buf.slice_mut(off..off + len);
        stream
            .memcpy_htod(&host[..len], &mut view)
            .map_err(cuda_err("cuMemcpyHtoDAsync (fill)"))?;
        // The pageable source is reused for the next chunk: wait for this copy.
        stream
            .synchronize()
            .map_err(cuda_err("cuStreamSynchronize"))?;
        off += len;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyKind {
    HtoD,
    DtoH,
    DtoD,
}

struct CudaCopy {
    kind: CopyKind,
    bytes: usize,
    dev_ptr: cudarc::driver::sys::CUdeviceptr,
    dev2_ptr: cudarc::driver::sys::CUdeviceptr,
    host_ptr: *mut u8,
    work: f64,
    // Owners of the memory the raw pointers above point into; dropped after the stream.
    _dev: CudaSlice<u8>,
    _dev2: Option<CudaSlice<u8>>,
    _host: Option<PinnedHostSlice<u8>>,
    stream: Arc<CudaStream>,
    _ctx: Arc<CudaContext>,
}

impl Kernel for CudaCopy {
    fn work_per_iter(&self) -> f64 {
        self.work
    }

    fn run(&mut self, iters: u64) -> Result<(), BenchError> {
        let s = self.stream.cu_stream();
        for _ in 0..iters {
            // SAFETY: all pointers come from live allocations of exactly `bytes` bytes owned by
            // `self`; only this stream uses them, and `run` synchronizes before returning, so no
            // copy outlives a borrow.
            let r = unsafe {
                match self.kind {
                    CopyKind::HtoD => {
                        let src =
                            std::slice::from_raw_parts(self.host_ptr as *const u8, self.bytes);
                        drv::memcpy_htod_async(self.dev_ptr, src, s)
                    }
                    CopyKind::DtoH => {
                        let dst = std::slice::from_raw_parts_mut(self.host_ptr, self.bytes);
                        drv::memcpy_dtoh_async(dst, self.dev_ptr, s)
                    }
                    CopyKind::DtoD => {
                        drv::memcpy_dtod_async(self.dev2_ptr, self.dev_ptr, self.bytes, s)
                    }
                }
            };
            r.map_err(cuda_err("cuMemcpyAsync"))?;
        }
        self.stream
            .synchronize()
            .map_err(cuda_err("cuStreamSynchronize"))
    }
}

struct CudaGemm {
    m: i32,
    n: i32,
    k: i32,
    a_ptr: cudarc::driver::sys::CUdeviceptr,
    b_ptr: cudarc::driver::sys::CUdeviceptr,
    c_ptr: cudarc::driver::sys::CUdeviceptr,
    work: f64,
    blas: CudaBlas,
    _a: CudaSlice<f32>,
    _b: CudaSlice<f32>,
    _c: CudaSlice<f32>,
    stream: Arc<CudaStream>,
    _ctx: Arc<CudaContext>,
}

impl Kernel for CudaGemm {
    fn work_per_iter(&self) -> f64 {
        self.work
    }

    fn run(&mut self, iters: u64) -> Result<(), BenchError> {
        let alpha: f32 = 1.0;
        let beta: f32 = 0.0;
        for _ in 0..iters {
            // SAFETY: A is m×k (lda = m), B is k×n (ldb = k), C is m×n (ldc = m), column-major
            // f32, all live device allocations of exactly those sizes owned by `self`; alpha and
            // beta are host scalars (the handle's default pointer mode).
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *self.blas.handle(),
                    cublasOperation_t::CUBLAS_OP_N,
                    cublasOperation_t::CUBLAS_OP_N,
                    self.m,
                    self.n,
                    self.k,
                    (&alpha as *const f32).cast::<c_void>(),
                    self.a_ptr as *const c_void,
                    cudaDataType_t::CUDA_R_32F,
                    self.m,
                    self.b_ptr as *const c_void,
                    cudaDataType_t::CUDA_R_32F,
                    self.k,
                    (&beta as *const f32).cast::<c_void>(),
                    self.c_ptr as *mut c_void,
                    cudaDataType_t::CUDA_R_32F,
                    self.m,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(blas_err("cublasGemmEx"))?;
        }
        self.stream
            .synchronize()
            .map_err(cuda_err("cuStreamSynchronize"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_names_the_driver_when_missing() {
        // On a machine with a driver this passes through; without one it must list the names.
        match preflight(false) {
            Ok(found) => assert_eq!(found.len(), 1),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("no CUDA driver found (tried "), "{msg}");
                assert!(msg.contains("libcuda.so.1"), "{msg}");
                assert!(msg.contains("libcuda.so,"), "{msg}");
            }
        }
    }

    #[test]
    fn cublas_is_looked_for_as_cuda_13_then_cuda_12() {
        let names = cublas_candidates();
        let at = |n: &str| names.iter().position(|x| x == n);
        let (v13, v12) = (at("libcublas.so.13"), at("libcublas.so.12"));
        assert!(v13.is_some() && v12.is_some(), "{names:?}");
        assert!(v13 < v12, "CUDA 13 must be tried before 12: {names:?}");
        // The driver search ends with the name NVIDIA installs.
        assert!(driver_candidates().contains(&DRIVER_LIB.to_string()));
        // Only names a Linux loader can find are listed, in the loader's order.
        for n in names.iter().chain(&driver_candidates()) {
            assert!(n.starts_with("libcu") && !n.contains("64"), "{n}");
        }
        assert_eq!(
            linux_names(
                "cuda",
                [
                    "libcuda.so",
                    "libcuda64_12.so",
                    "libcuda.so.13",
                    "libcuda.so.1"
                ]
                .map(String::from)
                .to_vec()
            ),
            ["libcuda.so", "libcuda.so.13", "libcuda.so.1"]
        );
    }

    #[test]
    fn a_missing_library_lists_every_name_tried() {
        let names = vec![
            "libtessera-none.so".to_string(),
            "libtessera-none.so.13".to_string(),
        ];
        let p = probe_library(&names);
        assert_eq!(p.found, None);
        assert_eq!(p.tried, names);
        assert!(p
            .error
            .as_deref()
            .is_some_and(|e| e.contains("libtessera-none.so.13")));
    }
}
