//! `tessera doctor`: what this machine offers tessera, read-only, one line per check with
//! `ok`, `warn` or `fail` and the fix. Checks: NVML (driver, NVML and CUDA versions), each GPU
//! (catalog model, MIG mode current/pending, compute mode, memory, what this caller may not
//! read), each MIG GPU's profile table against the catalog, the MPS control binary and any
//! running MPS daemon, the CUDA driver library and cuBLAS (the names the loader tries), cgroups
//! (v1 `devices` or v2) writable, and the daemon's socket.
//!
//! Exit code: 0 when nothing failed (warnings allowed); 1 when a check failed, e.g. no GPU or
//! no driver — "a valid request that cannot be met" in `main`'s terms. Nothing is changed: no
//! mode is set, no daemon started, no cgroup created.
//!
//! The probes read their inputs from an [`Env`] (PATH, `/proc`, the cgroup root, the socket,
//! the library names), so tests run them against fixture directories and fakes.

use std::ffi::CString;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use tessera_bench::cuda::{cublas_candidates, driver_candidates, probe_library};
use tessera_gpu::mps::MPS_CONTROL_BINARY;
use tessera_gpu::nvml::NvmlBackend;
use tessera_gpu::{catalog_diff, BackendSpec, GpuBackend, GpuError, SimBackend, SimConfig};
use tessera_model::Catalog;

use crate::output::{emit, table, CliError, Ctx};

/// Arguments of `tessera doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The GPUs to inspect: `nvml` (the driver) or `sim:STATE` (a simulated machine).
    #[arg(long, default_value = "nvml", value_name = "BACKEND")]
    pub backend: String,
    /// The daemon's socket to try. Default: as `tessera ps` ($TESSERA_SOCKET, …).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// Works in part, or something tessera can do without.
    Warn,
    /// Missing: the feature it names cannot work here.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`nvml`, `gpu 0`, `cublas`...).
    pub check: String,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a warning or failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn line(check: &str, status: Status, detail: String, fix: Option<&str>) -> Check {
    Check {
        check: check.into(),
        status,
        detail,
        fix: fix.map(str::to_string),
    }
}

/// Where the probes look. [`Env::system`] is this machine; tests point it at fixtures.
#[derive(Debug, Clone)]
pub struct Env {
    /// The backend to inspect.
    pub backend: BackendSpec,
    /// `$PATH`, searched for the MPS control binary.
    pub path: String,
    /// The proc filesystem, scanned for running MPS daemons.
    pub proc_root: PathBuf,
    /// The cgroup mount root (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Names tried for the CUDA driver library, in order.
    pub driver_libs: Vec<String>,
    /// Names tried for cuBLAS, in order.
    pub cublas_libs: Vec<String>,
}

impl Env {
    /// This machine.
    pub fn system(backend: BackendSpec, socket: Option<PathBuf>) -> Self {
        Env {
            backend,
            path: std::env::var("PATH").unwrap_or_default(),
            proc_root: PathBuf::from("/proc"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            socket: socket.unwrap_or_else(tessera_api::paths::default_socket),
            driver_libs: driver_candidates(),
            cublas_libs: cublas_candidates(),
        }
    }
}

/// Run every check.
pub fn diagnose(env: &Env, catalog: &Catalog) -> Vec<Check> {
    let mut out = Vec::new();
    gpu_checks(env, catalog, &mut out);
    out.push(mps_binary(env));
    out.push(mps_daemons(env));
    out.push(library(
        "cuda driver",
        &env.driver_libs,
        "install the NVIDIA driver (it ships libcuda.so.1); `bench sharing` needs it",
    ));
    out.push(library("cublas", &env.cublas_libs, "install the cuBLAS runtime of CUDA 13 or 12 (toolkit, or `pip install nvidia-cublas`) and add its lib directory to LD_LIBRARY_PATH; only the GEMM workloads of `bench sharing` need it"));
    out.push(cgroups(&env.cgroup_root));
    out.push(socket(&env.socket));
    out
}

fn gpu_checks(env: &Env, catalog: &Catalog, out: &mut Vec<Check>) {
    let mut nvml_placements = Vec::new();
    let mut backend: Box<dyn GpuBackend> = match &env.backend {
        BackendSpec::Nvml => match NvmlBackend::open(catalog.clone()) {
            Ok(mut b) => {
                let (driver, nvml, cuda) = b.versions();
                let show = |v: Option<String>| v.unwrap_or_else(|| "?".into());
                out.push(line(
                    "nvml",
                    Status::Ok,
                    format!(
                        "driver {}, NVML {}, CUDA driver API {}",
                        show(driver),
                        show(nvml),
                        show(cuda)
                    ),
                    None,
                ));
                // Placements of the catalog's profile IDs: readable with MIG off too.
                for gpu in 0..b.gpus().map(|g| g.len() as u32).unwrap_or(0) {
                    nvml_placements.push(placements_check(gpu, b.probe_placements(gpu)));
                }
                Box::new(b)
            }
            Err(e) => {
                let fix = match e {
                    GpuError::DriverNotLoaded => "load the kernel module (`modprobe nvidia`); or use --backend sim:STATE to try tessera without a GPU",
                    _ => "no NVIDIA GPU or driver here: install the NVIDIA driver (libnvidia-ml.so.1) on a machine with a GPU, or use --backend sim:STATE (`tessera sim-gpu init`) to try tessera without one",
                };
                out.push(line("nvml", Status::Fail, e.to_string(), Some(fix)));
                return;
            }
        },
        BackendSpec::Sim(path) => {
            match SimBackend::open(path, catalog.clone(), SimConfig::default()) {
                Ok(b) => {
                    out.push(line(
                        "backend",
                        Status::Ok,
                        format!("simulated GPUs in {}", path.display()),
                        None,
                    ));
                    Box::new(b)
                }
                Err(e) => {
                    out.push(line(
                        "backend",
                        Status::Fail,
                        e.to_string(),
                        Some("create it with `tessera sim-gpu init`"),
                    ));
                    return;
                }
            }
        }
    };
    let gpus = match backend.gpus() {
        Ok(g) => g,
        Err(e) => {
            out.push(line("gpus", Status::Fail, e.to_string(), None));
            return;
        }
    };
    if gpus.is_empty() {
        out.push(line(
            "gpus",
            Status::Fail,
            "the driver reports no GPU".into(),
            Some("check `nvidia-smi`, and that this container was given the GPU devices"),
        ));
    }
    out.extend(nvml_placements);
    for g in &gpus {
        let name = format!("gpu {}", g.index);
        let mut notes = vec![g.name.clone()];
        let mut status = Status::Ok;
        let mut fixes: Vec<String> = Vec::new();
        match &g.model {
            Some(m) => notes.push(format!("catalog model {m}")),
            None => {
                status = Status::Warn;
                notes.push("not in the catalog".into());
                fixes.push("add the model with `tessera catalog import` (from `nvidia-smi mig -lgip` / `-lgipp` output)".into());
            }
        }
        match g.mig {
            Some(m) => {
                notes.push(format!("MIG {m}"));
                if m.current != m.pending {
                    status = Status::Warn;
                    fixes.push(format!(
                        "reset the GPU (`nvidia-smi -r -i {}`) to apply the pending MIG mode",
                        g.index
                    ));
                }
            }
            None => notes.push("no MIG".into()),
        }
        match g.compute_mode {
            Some(c) => notes.push(format!("compute mode {c}")),
            None if g.mig.is_some_and(|m| m.current) => {
                notes.push("compute mode per MIG device".into())
            }
            None => notes.push("compute mode unknown".into()),
        }
        if g.memory_mib > 0 {
            notes.push(format!("{} MiB", g.memory_mib));
        }
        if !g.unreadable.is_empty() {
            status = Status::Warn;
            notes.push(format!("cannot read: {}", g.unreadable.join("; ")));
            fixes.push("run as root (or with CAP_SYS_ADMIN) to see everything".into());
        }
        out.push(Check {
            check: name.clone(),
            status,
            detail: notes.join(", "),
            fix: (!fixes.is_empty()).then(|| fixes.join("; ")),
        });
        if g.mig.is_some_and(|m| m.current) {
            out.push(match catalog_diff(backend.as_mut(), catalog, g) {
                Ok(None) => line(
                    &format!("{name} profiles"),
                    Status::Warn,
                    "no catalog model to compare with".into(),
                    None,
                ),
                Ok(Some(d)) if d.is_empty() => line(
                    &format!("{name} profiles"),
                    Status::Ok,
                    "the GPU's MIG profile table matches the catalog".into(),
                    None,
                ),
                Ok(Some(d)) => line(
                    &format!("{name} profiles"),
                    Status::Warn,
                    d.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                    Some("the planner trusts the catalog: update it with `tessera catalog import`"),
                ),
                Err(e) => line(
                    &format!("{name} profiles"),
                    Status::Warn,
                    e.to_string(),
                    Some("run as root to read the profile table"),
                ),
            });
        }
    }
}

/// Compare NVML's placements for each catalog profile ID with the catalog's.
#[allow(clippy::type_complexity)]
fn placements_check(
    gpu: u32,
    probe: Result<Option<Vec<(String, Vec<u8>, Result<Vec<u8>, GpuError>)>>, GpuError>,
) -> Check {
    let name = format!("gpu {gpu} placements");
    let rows = match probe {
        Ok(Some(rows)) => rows,
        Ok(None) => {
            return line(
                &name,
                Status::Warn,
                "no catalog model to compare with".into(),
                None,
            )
        }
        Err(e) => return line(&name, Status::Warn, e.to_string(), None),
    };
    let mut differ = Vec::new();
    let mut unreadable = Vec::new();
    for (profile, catalog, got) in &rows {
        match got {
            Ok(v) if v == catalog => {}
            Ok(v) => differ.push(format!("{profile}: catalog {catalog:?}, NVML {v:?}")),
            Err(e) => unreadable.push(format!("{profile}: {e}")),
        }
    }
    if differ.is_empty() && unreadable.is_empty() {
        line(
            &name,
            Status::Ok,
            format!(
                "NVML's placements match the catalog for all {} profiles",
                rows.len()
            ),
            None,
        )
    } else {
        let mut all = differ.clone();
        all.extend(unreadable);
        line(
            &name,
            Status::Warn,
            all.join("; "),
            (!differ.is_empty()).then_some("the planner trusts the catalog: correct its placements (`tessera catalog import` from `nvidia-smi mig -lgipp`)"),
        )
    }
}

/// The first executable `name` on `path`.
fn find_on_path(path: &str, name: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| executable(p))
}

fn executable(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; access(2) only reads it.
    p.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
}

fn writable(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: as in `executable`.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn mps_binary(env: &Env) -> Check {
    match find_on_path(&env.path, MPS_CONTROL_BINARY) {
        Some(p) => line("mps control", Status::Ok, p.display().to_string(), None),
        None => line(
            "mps control",
            Status::Warn,
            format!("{MPS_CONTROL_BINARY} not on PATH"),
            Some("install the NVIDIA driver utilities (they ship it); only MPS slices need it"),
        ),
    }
}

fn mps_daemons(env: &Env) -> Check {
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir(&env.proc_root) {
        for e in dir.flatten() {
            let pid = e.file_name().to_string_lossy().to_string();
            if !pid.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
                let comm = comm.trim();
                // The kernel truncates comm to 15 bytes: nvidia-cuda-mps-control and
                // nvidia-cuda-mps-server both read `nvidia-cuda-mps`.
                if comm.starts_with("nvidia-cuda-mps") {
                    found.push(format!("pid {pid}"));
                }
            }
        }
    }
    found.sort();
    if found.is_empty() {
        line("mps daemon", Status::Ok, "none running".into(), None)
    } else {
        line(
            "mps daemon",
            Status::Warn,
            format!("running: {} (tessera starts its own, on private pipe directories)", found.join(", ")),
            Some("a system-wide daemon captures CUDA programs that use the default pipe directory; stop it (`echo quit | nvidia-cuda-mps-control`) if tessera should own the GPU"),
        )
    }
}

fn library(check: &str, names: &[String], fix: &str) -> Check {
    let p = probe_library(names);
    match p.found {
        Some(name) => line(check, Status::Ok, format!("{name} loads"), None),
        None => line(
            check,
            if check == "cublas" {
                Status::Warn
            } else {
                Status::Fail
            },
            format!(
                "none of {} loads ({})",
                p.tried.join(", "),
                p.error.unwrap_or_default()
            ),
            Some(fix),
        ),
    }
}

fn cgroups(root: &Path) -> Check {
    let v1 = root.join("devices");
    let v2 = if root.join("cgroup.controllers").exists() {
        Some(root.to_path_buf())
    } else if root.join("unified/cgroup.controllers").exists() {
        Some(root.join("unified"))
    } else {
        None
    };
    let mut found = Vec::new();
    if v1.is_dir() {
        found.push((format!("v1 devices at {}", v1.display()), writable(&v1)));
    }
    if let Some(v2) = v2 {
        found.push((format!("v2 at {}", v2.display()), writable(&v2)));
    }
    if found.iter().any(|f| f.1) {
        let names: Vec<String> = found.iter().filter(|f| f.1).map(|f| f.0.clone()).collect();
        line(
            "cgroups",
            Status::Ok,
            format!("writable: {}", names.join(", ")),
            None,
        )
    } else if found.is_empty() {
        line("cgroups", Status::Warn, format!("no devices controller (v1) or cgroup2 under {}", root.display()), Some("mount cgroup2 (or the v1 devices controller); without it leases cannot be fenced to their devices"))
    } else {
        let names: Vec<String> = found.iter().map(|f| f.0.clone()).collect();
        line(
            "cgroups",
            Status::Warn,
            format!("read-only for this user: {}", names.join(", ")),
            Some("run the daemon as root to fence leases to their devices"),
        )
    }
}

fn socket(path: &Path) -> Check {
    match UnixStream::connect(path) {
        Ok(_) => line(
            "daemon",
            Status::Ok,
            format!("{} accepts connections", path.display()),
            None,
        ),
        Err(e) => line(
            "daemon",
            Status::Warn,
            format!("{}: {e}", path.display()),
            Some(
                "start it with `tessera serve` (or pass --socket); needed by `run`, `ps`, `status`",
            ),
        ),
    }
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let spec = BackendSpec::parse(&args.backend).map_err(|e| CliError::Usage(e.to_string()))?;
    let env = Env::system(spec, args.socket.clone());
    let checks = diagnose(&env, &ctx.catalog);
    emit(ctx.output, &checks, || render(&checks))?;
    Ok(exit_code(&checks))
}

/// 1 when any check failed, else 0.
pub fn exit_code(checks: &[Check]) -> ExitCode {
    if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn render(checks: &[Check]) -> String {
    let mut t = table(&["CHECK", "STATUS", "FOUND", "FIX"]);
    for c in checks {
        t.add_row(vec![
            c.check.clone(),
            match c.status {
                Status::Ok => "ok",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            }
            .to_string(),
            c.detail.clone(),
            c.fix.clone().unwrap_or_default(),
        ]);
    }
    format!("{t}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tessera_gpu::SimState;

    fn fixture_env(dir: &Path) -> Env {
        let c = Catalog::builtin().clone();
        let state = dir.join("gpus.json");
        let st =
            SimState::new(&c, &[("h100-80gb".into(), 1), ("a30".into(), 1)], 1, false).unwrap();
        let mut b = SimBackend::create(&state, st, c).unwrap();
        b.set_mig_mode(1, true).unwrap();
        drop(b);
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let mps = bin.join(MPS_CONTROL_BINARY);
        std::fs::write(&mps, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&mps, std::fs::Permissions::from_mode(0o755)).unwrap();
        let proc_root = dir.join("proc");
        std::fs::create_dir_all(proc_root.join("4242")).unwrap();
        std::fs::write(proc_root.join("4242/comm"), "nvidia-cuda-mps\n").unwrap();
        std::fs::create_dir_all(proc_root.join("7")).unwrap();
        std::fs::write(proc_root.join("7/comm"), "bash\n").unwrap();
        let cg = dir.join("cgroup");
        std::fs::create_dir_all(cg.join("devices")).unwrap();
        Env {
            backend: BackendSpec::Sim(state),
            path: format!("/nonexistent:{}", bin.display()),
            proc_root,
            cgroup_root: cg,
            socket: dir.join("no.sock"),
            driver_libs: vec!["libtessera-nodriver.so.1".into()],
            cublas_libs: vec![
                "libtessera-noblas.so.13".into(),
                "libtessera-noblas.so.12".into(),
            ],
        }
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.check == name)
            .unwrap_or_else(|| panic!("no {name} in {checks:?}"))
    }

    #[test]
    fn every_probe_reads_its_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let env = fixture_env(dir.path());
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("d.sock")).unwrap();
        let env = Env {
            socket: dir.path().join("d.sock"),
            ..env
        };
        let checks = diagnose(&env, Catalog::builtin());
        assert_eq!(find(&checks, "backend").status, Status::Ok);
        let g0 = find(&checks, "gpu 0");
        assert!(
            g0.detail.contains("catalog model h100-80gb")
                && g0.detail.contains("compute mode default"),
            "{g0:?}"
        );
        let g1 = find(&checks, "gpu 1");
        assert!(
            g1.detail.contains("MIG enabled") && g1.detail.contains("per MIG device"),
            "{g1:?}"
        );
        assert_eq!(find(&checks, "gpu 1 profiles").status, Status::Ok);
        assert!(find(&checks, "mps control")
            .detail
            .ends_with("bin/nvidia-cuda-mps-control"));
        let d = find(&checks, "mps daemon");
        assert_eq!(
            (d.status, d.detail.contains("pid 4242")),
            (Status::Warn, true),
            "{d:?}"
        );
        let cuda = find(&checks, "cuda driver");
        assert_eq!(cuda.status, Status::Fail);
        assert!(cuda.detail.contains("libtessera-nodriver.so.1"), "{cuda:?}");
        let blas = find(&checks, "cublas");
        assert!(
            blas.detail
                .contains("libtessera-noblas.so.13, libtessera-noblas.so.12"),
            "{blas:?}"
        );
        assert!(blas.fix.as_deref().unwrap().contains("CUDA 13 or 12"));
        assert_eq!(find(&checks, "daemon").status, Status::Ok);
        // As root the fixture's devices directory is writable.
        let cg = find(&checks, "cgroups");
        assert!(cg.detail.contains("v1 devices"), "{cg:?}");
        drop(listener);
        assert_eq!(
            exit_code(&checks),
            ExitCode::from(1),
            "the driver check failed"
        );
    }

    #[test]
    fn placements_are_compared_with_the_catalog() {
        let ok = placements_check(
            0,
            Ok(Some(vec![("1g.18gb".into(), vec![0, 1], Ok(vec![0, 1]))])),
        );
        assert_eq!(ok.status, Status::Ok);
        let rows = vec![
            ("1g.18gb".to_string(), vec![0, 1], Ok(vec![0, 1])),
            ("3g.71gb".to_string(), vec![0, 4], Ok(vec![0, 2, 4])),
            (
                "1g.18gb+me".to_string(),
                vec![0],
                Err(GpuError::NoPermission { op: "x".into() }),
            ),
        ];
        let c = placements_check(1, Ok(Some(rows)));
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail.contains("3g.71gb: catalog [0, 4], NVML [0, 2, 4]"),
            "{c:?}"
        );
        assert!(
            c.detail.contains("1g.18gb+me: x: permission denied"),
            "{c:?}"
        );
        assert!(c.fix.unwrap().contains("catalog import"));
    }

    #[test]
    fn missing_pieces_are_named_with_their_fix() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            path: "/nonexistent".into(),
            cgroup_root: dir.path().join("no-cgroup"),
            ..fixture_env(dir.path())
        };
        let checks = diagnose(&env, Catalog::builtin());
        let m = find(&checks, "mps control");
        assert_eq!(m.status, Status::Warn);
        assert!(m.fix.as_deref().unwrap().contains("driver utilities"));
        assert!(find(&checks, "cgroups")
            .fix
            .as_deref()
            .unwrap()
            .contains("cgroup2"));
        let d = find(&checks, "daemon");
        assert!(d.fix.as_deref().unwrap().contains("tessera serve"), "{d:?}");
        let bad = Env {
            backend: BackendSpec::Sim(dir.path().join("missing.json")),
            ..env
        };
        let checks = diagnose(&bad, Catalog::builtin());
        assert_eq!(find(&checks, "backend").status, Status::Fail);
        assert!(find(&checks, "backend")
            .fix
            .as_deref()
            .unwrap()
            .contains("sim-gpu init"));
    }
}
