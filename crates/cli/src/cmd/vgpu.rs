//! `tessera vgpu`: NVIDIA vGPUs (time-sliced and MIG-backed) for virtual machines on a KVM
//! host, and AMD Instinct partition modes.
//!
//! The host is the twin by default (`STATE/twin.json`, made by `tessera vgpu twin init`);
//! `--sysfs-root DIR` uses the real sysfs under DIR (`/` on a vGPU host), and
//! `--rendered DIR` a twin rendered under DIR: reads through the real file code, writes to the
//! twin. `STATE` (`--state-dir`, default `./tessera-vgpu`) also keeps the journal, the type
//! names learned from the host, and who each vGPU was created for.
//!
//! Exit codes (docs/cli.md): 0 done; 1 a valid request the host cannot meet now (a GPU refused
//! by `apply` or `plan`, a vGPU a VM holds, a driver refusal, no room); 2 bad input (an unknown
//! board, type, GPU or vGPU, a bad desired file).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use tessera_agent::ThreadSleeper;
use tessera_vgpu::agent::{
    observe, parse_desired, plan, Agent, ApplyResult, Observed, Refusal, VOp,
};
use tessera_vgpu::host::{Framework, HostGpu, SysfsHost, Target, Vgpu, VgpuHost};
use tessera_vgpu::integrate::{
    handle_key, libvirt_hostdev, pve_hookscript, pve_hostpci, pve_mapping, vf_ident, Owners,
};
use tessera_vgpu::journal::FileJournal;
use tessera_vgpu::sysfs::{RealFs, Sysfs};
use tessera_vgpu::twin::{RenderedTwin, Twin, TwinGpuSpec};
use tessera_vgpu::{Backing, VgpuCatalog};

use crate::output::{emit, print_out, read_file, table, CliError, Ctx};

/// `tessera vgpu` and where its host is.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Use the real sysfs under DIR (`/` on a vGPU host) instead of the twin.
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "rendered")]
    pub sysfs_root: Option<PathBuf>,
    /// Use the twin rendered under DIR: reads through the real file code, writes to the twin.
    #[arg(long, global = true, value_name = "DIR")]
    pub rendered: Option<PathBuf>,
    /// With `--sysfs-root`: the MIG backend for MIG-backed types' GPU instances (`nvml`, or
    /// `sim:STATE`); NVML indexes GPUs in PCI order, which tessera assumes.
    #[arg(long, global = true, value_name = "BACKEND", requires = "sysfs_root")]
    pub mig_backend: Option<String>,
    /// tessera's vGPU state: the twin, the journal, learned type names, owners.
    #[arg(
        long,
        global = true,
        env = "TESSERA_VGPU_STATE",
        default_value = "tessera-vgpu",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub cmd: VgpuCmd,
}

/// `tessera vgpu` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VgpuCmd {
    /// The vGPU types of a board (frame buffer, how many per GPU, time-sliced or MIG-backed),
    /// or the boards tessera knows.
    Types(TypesArgs),
    /// Each GPU: framework, VFs, MIG mode, its vGPUs (open = a VM holds it), what is
    /// creatable now; AMD partition modes.
    Status,
    /// What `apply` would do (nothing is changed); exit 1 when a GPU would be refused.
    Plan(DesiredArgs),
    /// Place new vGPUs on the host's GPUs (best fit, same-size rule, MIG-backed beside the
    /// instances there) and write the desired state for `apply`; exit 1 if some do not fit.
    Place(PlaceArgs),
    /// Take GPUs to the desired vGPUs: keep what matches, destroy what is not wanted (never a
    /// vGPU a VM holds), create what is missing, GPU instances first for MIG-backed types.
    Apply(DesiredArgs),
    /// Create one vGPU beside the others (VFs enabled and a GPU instance made if needed).
    Create(CreateArgs),
    /// Destroy vGPUs: one by handle, or every vGPU of an owner. A vGPU a VM holds is kept.
    Release(ReleaseArgs),
    /// Set the number of VFs of a GPU (`sriov_numvfs`).
    Vfs(VfsArgs),
    /// Show or set AMD Instinct compute/memory partition modes (only while no work runs).
    Amd(AmdArgs),
    /// Proxmox VE: resource mapping, VM `hostpci` line, hookscript.
    #[command(subcommand)]
    Proxmox(ProxmoxCmd),
    /// The libvirt `<hostdev>` element of a vGPU.
    Libvirt(LibvirtArgs),
    /// The twin: create it, attach/detach VMs, reboot it, render it as a tree.
    #[command(subcommand)]
    Twin(TwinCmd),
}

/// Arguments of `vgpu types`.
#[derive(Debug, clap::Args)]
pub struct TypesArgs {
    /// Board key (`a30-24gb`, `h100-80gb`, `l40s-48gb`, ...); none: list the boards.
    #[arg(long)]
    pub gpu: Option<String>,
}

/// A desired file.
#[derive(Debug, clap::Args)]
pub struct DesiredArgs {
    /// YAML/JSON: `version: 1`, `gpus: [{gpu: BDF, vgpus: [{type: A30-1-6C, count: 2}, {type: A30-2-12C, vf: BDF}]}]`.
    #[arg(long, value_name = "FILE")]
    pub desired: PathBuf,
}

/// Arguments of `vgpu place`.
#[derive(Debug, clap::Args)]
pub struct PlaceArgs {
    /// `TYPE[:COUNT]` (`A30-1-6C:2`) or `SIZE/guaranteed|burstable[:COUNT]` (`10GiB/guaranteed`:
    /// the smallest MIG-backed type of at least 10 GiB; `burstable`: time-sliced).
    #[arg(long = "request", required = true, value_name = "REQUEST")]
    pub requests: Vec<String>,
    /// Write the desired state (every GPU that gets a vGPU: what it holds plus the new ones).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

fn parse_request(text: &str) -> Result<tessera_vgpu::placer::VgpuRequest, CliError> {
    use tessera_vgpu::placer::{Ask, Isolation, VgpuRequest};
    let (what, count) = match text.rsplit_once(':') {
        Some((w, n)) => (
            w,
            n.parse::<u32>().map_err(|_| {
                CliError::Usage(format!("`{text}`: the count after `:` must be a number"))
            })?,
        ),
        None => (text, 1),
    };
    let ask = match what.split_once('/') {
        Some((size, class)) => Ask::Size {
            fb_mib: crate::size::parse_mem(size).map_err(|e| CliError::Usage(e.to_string()))?.mib,
            isolation: match class {
                "guaranteed" => Isolation::Guaranteed,
                "burstable" => Isolation::Burstable,
                other => {
                    return Err(CliError::Usage(format!(
                        "`{other}` is not an isolation class: use guaranteed (MIG-backed) or burstable (time-sliced)"
                    )))
                }
            },
        },
        None => Ask::Type { name: what.to_string() },
    };
    Ok(VgpuRequest { ask, count })
}

/// Arguments of `vgpu create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The GPU (physical function's PCI address).
    #[arg(long)]
    pub gpu: String,
    /// vGPU type, e.g. `A30-1-6C`.
    #[arg(long = "type", value_name = "TYPE")]
    pub type_name: String,
    /// On this VF.
    #[arg(long)]
    pub vf: Option<String>,
    /// With this mdev UUID (mdev hosts).
    #[arg(long)]
    pub uuid: Option<String>,
    /// Record this owner (`pve:101`, a user); `release --owner` removes only its vGPUs.
    #[arg(long)]
    pub owner: Option<String>,
}

/// Arguments of `vgpu release`.
#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The vGPU: mdev UUID or VF address.
    #[arg(long, required_unless_present = "owner")]
    pub handle: Option<String>,
    /// Every vGPU of this owner (with --handle: it must be this owner's).
    #[arg(long)]
    pub owner: Option<String>,
}

/// Arguments of `vgpu vfs`.
#[derive(Debug, clap::Args)]
pub struct VfsArgs {
    /// The GPU.
    #[arg(long)]
    pub gpu: String,
    /// VF count (0 removes every VF, refused while a VM holds a vGPU).
    #[arg(long)]
    pub count: u32,
}

/// Arguments of `vgpu amd`.
#[derive(Debug, clap::Args)]
pub struct AmdArgs {
    /// The card to change (`card0`).
    #[arg(long, requires = "mode")]
    pub card: Option<String>,
    /// Compute partition (SPX, DPX, QPX, CPX).
    #[arg(long, group = "mode")]
    pub compute: Option<String>,
    /// Memory partition (NPS1, NPS4).
    #[arg(long, group = "mode")]
    pub memory: Option<String>,
}

/// `vgpu proxmox` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ProxmoxCmd {
    /// A `/etc/pve/mapping/pci.cfg` entry with the GPU's VFs.
    Mapping(PveMappingArgs),
    /// The VM config line for a vGPU of TYPE at VF.
    Hostpci(PveVmArgs),
    /// A hookscript: pre-start asks tessera for the vGPU, post-stop releases it.
    Hookscript(PveVmArgs),
}

/// Arguments of `vgpu proxmox mapping`.
#[derive(Debug, clap::Args)]
pub struct PveMappingArgs {
    /// The GPU.
    #[arg(long)]
    pub gpu: String,
    /// The Proxmox node name.
    #[arg(long)]
    pub node: String,
    /// Mapping ID (default `tessera-<board>-<bus>`).
    #[arg(long)]
    pub id: Option<String>,
}

/// Arguments of `vgpu proxmox hostpci|hookscript`.
#[derive(Debug, clap::Args)]
pub struct PveVmArgs {
    /// The GPU.
    #[arg(long)]
    pub gpu: String,
    /// vGPU type.
    #[arg(long = "type", value_name = "TYPE")]
    pub type_name: String,
    /// The VF the VM uses.
    #[arg(long)]
    pub vf: String,
    /// The `hostpciN` index.
    #[arg(long, default_value_t = 0)]
    pub index: u32,
    /// tessera's path on the host (hookscript).
    #[arg(long, default_value = "/usr/local/bin/tessera")]
    pub tessera: String,
}

/// Arguments of `vgpu libvirt`.
#[derive(Debug, clap::Args)]
pub struct LibvirtArgs {
    /// The vGPU: mdev UUID or VF address.
    #[arg(long)]
    pub handle: String,
}

/// `vgpu twin` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TwinCmd {
    /// A new twin: `--gpus a30-24gb/mdev/mig,l40s-48gb` (framework `mdev` or `vfio`, `mig`
    /// for MIG mode on); `--amd N` AMD Instinct GPUs.
    Init {
        /// The NVIDIA GPUs.
        #[arg(long, value_delimiter = ',')]
        gpus: Vec<String>,
        /// AMD GPUs with SPX/DPX/QPX/CPX and NPS1/NPS4.
        #[arg(long, default_value_t = 0)]
        amd: u32,
        /// Replace an existing twin.
        #[arg(long)]
        force: bool,
    },
    /// A VM opens a vGPU (mdev UUID or VF address).
    Attach {
        /// The vGPU.
        handle: String,
    },
    /// The VM closes it.
    Detach {
        /// The vGPU.
        handle: String,
    },
    /// Mixed-size mode on a GPU (`nvidia-smi vgpu -shm`).
    MixedSize {
        /// The GPU.
        #[arg(long)]
        gpu: String,
        /// On (else off).
        #[arg(long)]
        on: bool,
    },
    /// A host reboot: VFs, vGPUs and GPU instances are lost (MIG mode too on Hopper+).
    Reboot,
    /// Write the twin as a directory tree under DIR (for `--sysfs-root DIR`).
    Render {
        /// Where.
        dir: PathBuf,
    },
}

/// A failure while running (exit 1); input errors the library names are exit 2.
fn err<E: std::fmt::Display + 'static>(e: E) -> CliError {
    use tessera_vgpu::agent::AgentError;
    use tessera_vgpu::host::HostError;
    let any: &dyn std::any::Any = &e;
    let usage = match (
        any.downcast_ref::<AgentError>(),
        any.downcast_ref::<HostError>(),
    ) {
        (Some(AgentError::UnknownGpu { .. }), _) => true,
        (Some(AgentError::Host(h)), _) | (None, Some(h)) => matches!(
            h,
            HostError::Catalog(_) | HostError::UnknownGpu { .. } | HostError::UnknownVgpu { .. }
        ),
        _ => false,
    };
    if usage {
        CliError::Usage(e.to_string())
    } else {
        CliError::Failed(e.to_string())
    }
}

fn twin_path(state: &Path) -> PathBuf {
    state.join("twin.json")
}

fn load_twin(state: &Path, cat: &VgpuCatalog) -> Result<Twin, CliError> {
    let p = twin_path(state);
    if !p.exists() {
        return Err(CliError::Usage(format!(
            "no vGPU twin at {}: create one with `tessera vgpu twin init --gpus a30-24gb/mig,l40s-48gb`, or use a real host with `--sysfs-root /`",
            p.display()
        )));
    }
    Twin::load(&p, cat).map_err(err)
}

type Names = std::collections::BTreeMap<String, std::collections::BTreeMap<u32, String>>;

fn load_names(state: &Path) -> Names {
    std::fs::read_to_string(state.join("vgpu-type-names.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Keep the learned names when they grew (a read-only command on an unchanged host writes
/// nothing).
fn save_names(state: &Path, names: &Names) -> Result<(), CliError> {
    if *names == load_names(state) {
        return Ok(());
    }
    std::fs::create_dir_all(state).map_err(|e| CliError::io(state, e))?;
    let p = state.join("vgpu-type-names.json");
    tessera_gpu::sim::write_atomic(
        &p,
        serde_json::to_string_pretty(names)
            .expect("serializes")
            .as_bytes(),
    )
    .map_err(|e| CliError::io(&p, e))
}

/// Run `f` on the chosen host; the twin (and learned names) are saved afterwards.
fn with_host<T>(
    a: &Args,
    f: impl FnOnce(&mut dyn VgpuHost) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let cat = VgpuCatalog::builtin().clone();
    let names = load_names(&a.state_dir);
    if let Some(root) = &a.sysfs_root {
        let mut fs = RealFs::new(root);
        if let Some(spec) = &a.mig_backend {
            let spec = tessera_gpu::BackendSpec::parse(spec)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let mig = tessera_gpu::open_backend(
                &spec,
                tessera_model::Catalog::builtin(),
                tessera_gpu::SimConfig::default(),
            )
            .map_err(err)?;
            fs = fs.with_mig(mig);
        }
        let mut h = SysfsHost::new(fs, cat).with_names(names);
        let r = f(&mut h);
        save_names(&a.state_dir, &h.names())?;
        return r;
    }
    let twin = load_twin(&a.state_dir, &cat)?;
    if let Some(dir) = &a.rendered {
        let mut h =
            SysfsHost::new(RenderedTwin::new(twin, dir).map_err(err)?, cat).with_names(names);
        let r = f(&mut h);
        save_names(&a.state_dir, &h.names())?;
        h.fs().twin().save(&twin_path(&a.state_dir)).map_err(err)?;
        return r;
    }
    let mut h = SysfsHost::new(twin, cat).with_names(names);
    let r = f(&mut h);
    save_names(&a.state_dir, &h.names())?;
    h.fs().save(&twin_path(&a.state_dir)).map_err(err)?;
    r
}

/// Run the command.
pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let cat = VgpuCatalog::builtin();
    match &a.cmd {
        VgpuCmd::Types(t) => types(t, ctx, cat),
        VgpuCmd::Status => with_host(a, |h| status(h, ctx)),
        VgpuCmd::Plan(d) => with_host(a, |h| plan_cmd(h, d, ctx, cat)),
        VgpuCmd::Apply(d) => with_host(a, |h| apply(a, h, d, ctx, cat)),
        VgpuCmd::Place(p) => with_host(a, |h| place_cmd(h, p, ctx, cat)),
        VgpuCmd::Create(c) => with_host(a, |h| create(a, h, c, ctx, cat)),
        VgpuCmd::Release(r) => with_host(a, |h| release(a, h, r, ctx, cat)),
        VgpuCmd::Vfs(v) => with_host(a, |h| {
            h.set_vfs(&v.gpu, v.count).map_err(err)?;
            print_out(&format!("GPU {}: {} VFs\n", v.gpu, v.count));
            Ok(ExitCode::SUCCESS)
        }),
        VgpuCmd::Amd(m) => with_host(a, |h| amd(h, m, ctx)),
        VgpuCmd::Proxmox(p) => with_host(a, |h| proxmox(a, h, p)),
        VgpuCmd::Libvirt(l) => with_host(a, |h| {
            let v = find_vgpu(h, &l.handle)?;
            print_out(&libvirt_hostdev(&v.handle).map_err(|e| CliError::Usage(e.to_string()))?);
            Ok(ExitCode::SUCCESS)
        }),
        VgpuCmd::Twin(t) => twin(a, t, cat),
    }
}

fn types(t: &TypesArgs, ctx: &Ctx, cat: &VgpuCatalog) -> Result<ExitCode, CliError> {
    let Some(key) = &t.gpu else {
        #[derive(Serialize)]
        struct Row<'a> {
            key: &'a str,
            name: &'a str,
            arch: &'a str,
            mig_model: Option<&'a str>,
            types: usize,
        }
        let rows: Vec<Row> = cat
            .boards
            .iter()
            .map(|b| Row {
                key: &b.key,
                name: &b.name,
                arch: &b.arch,
                mig_model: b.mig_model.as_deref(),
                types: b.types.len(),
            })
            .collect();
        emit(ctx.output, &rows, || {
            let mut tb = table(&["BOARD", "NAME", "ARCH", "MIG", "TYPES"]);
            for r in &rows {
                tb.add_row([
                    r.key,
                    r.name,
                    r.arch,
                    if r.mig_model.is_some() { "yes" } else { "no" },
                    &r.types.to_string(),
                ]);
            }
            format!("{tb}\n")
        })?;
        return Ok(ExitCode::SUCCESS);
    };
    let b = cat.board(key).map_err(|e| CliError::Usage(e.to_string()))?;
    emit(ctx.output, b, || {
        let mut tb = table(&[
            "TYPE",
            "SERIES",
            "FRAME BUFFER",
            "MAX/GPU",
            "MIXED",
            "BACKING",
        ]);
        for t in &b.types {
            tb.add_row([
                t.name.clone(),
                t.series.to_string(),
                format!("{} MiB", t.fb_mib),
                t.max.to_string(),
                t.max_mixed.map_or("-".into(), |m| m.to_string()),
                match t.backing() {
                    Backing::TimeSliced => "time-sliced".to_string(),
                    Backing::MigBacked { profile } => format!("MIG {profile}"),
                },
            ]);
        }
        let mut s = format!(
            "{} ({}), sources: {}\n{tb}\n",
            b.name,
            b.key,
            b.sources.join("; ")
        );
        for e in cat
            .excluded
            .iter()
            .filter(|e| e.board == b.key || e.board == "*")
        {
            s.push_str(&format!("left out: {}: {}\n", e.vgpu_type, e.why));
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct GpuStatus {
    #[serde(flatten)]
    gpu: HostGpu,
    mig_on: bool,
    /// Whether MIG mode could be read (a MIG backend is there).
    mig_known: bool,
    vgpus: Vec<Vgpu>,
    creatable: Vec<(String, usize)>,
}

fn status(h: &mut dyn VgpuHost, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let mut rows = Vec::new();
    for g in h.gpus().map_err(err)? {
        let obs = observe(h, &g.bdf).map_err(err)?;
        let mut creatable: Vec<(String, usize)> = Vec::new();
        for o in h.offers(&g).map_err(err)? {
            match creatable.iter_mut().find(|(n, _)| *n == o.type_name) {
                Some(c) => c.1 += 1,
                None => creatable.push((o.type_name, 1)),
            }
        }
        let mig_known = h.mig(&g.bdf).is_some();
        rows.push(GpuStatus {
            gpu: g,
            mig_known,
            mig_on: obs.mig_on,
            vgpus: obs.vgpus,
            creatable,
        });
    }
    let amd = h.amd_gpus().map_err(err)?;
    #[derive(Serialize)]
    struct All<'a> {
        host: String,
        gpus: &'a [GpuStatus],
        amd: &'a [tessera_vgpu::host::AmdGpu],
    }
    let all = All {
        host: h.describe(),
        gpus: &rows,
        amd: &amd,
    };
    emit(ctx.output, &all, || {
        let mut s = format!("host: {}\n", all.host);
        if rows.is_empty() && amd.is_empty() {
            s.push_str("no NVIDIA GPU with SR-IOV and no AMD partitionable GPU found\n");
        }
        for r in &rows {
            s.push_str(&format!(
                "GPU {} {} ({}), {}, VFs {}/{}, MIG {}\n",
                r.gpu.bdf,
                r.gpu.board.as_deref().unwrap_or("unknown board"),
                r.gpu.pci_device_id,
                r.gpu
                    .framework
                    .map_or("no VFs enabled".into(), |f| f.to_string()),
                r.gpu.vfs.len(),
                r.gpu.total_vfs,
                if !r.mig_known {
                    "unknown (no MIG backend: --mig-backend nvml)"
                } else if r.mig_on {
                    "on"
                } else {
                    "off"
                }
            ));
            if !r.vgpus.is_empty() {
                let mut tb = table(&["VGPU", "TYPE", "VF", "VM", "GI"]);
                for v in &r.vgpus {
                    tb.add_row([
                        handle_key(&v.handle),
                        v.type_name
                            .clone()
                            .unwrap_or_else(|| format!("#{}", v.type_id)),
                        v.handle.vf().to_string(),
                        if v.open {
                            "attached".into()
                        } else {
                            "-".into()
                        },
                        v.gi_id.map_or("-".into(), |g| g.to_string()),
                    ]);
                }
                tb.keep_whole(0);
                s.push_str(&format!("{tb}\n"));
            }
            s.push_str(&format!(
                "  creatable now: {}\n",
                if r.creatable.is_empty() {
                    "nothing".to_string()
                } else {
                    r.creatable
                        .iter()
                        .map(|(n, c)| format!("{n} (on {c} VF{})", if *c == 1 { "" } else { "s" }))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        for a in &amd {
            s.push_str(&format!(
                "AMD {}: compute {} (of {}), memory {} (of {}){}\n",
                a.card,
                a.compute,
                a.available_compute.join("/"),
                a.memory,
                a.available_memory.join("/"),
                if a.busy { ", in use" } else { "" }
            ));
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct GpuPlan {
    gpu: String,
    ops: Vec<VOp>,
    refusal: Option<Refusal>,
}

fn plan_cmd(
    h: &mut dyn VgpuHost,
    d: &DesiredArgs,
    ctx: &Ctx,
    cat: &VgpuCatalog,
) -> Result<ExitCode, CliError> {
    let doc = parse_desired(&read_file(&d.desired)?)
        .map_err(|e| CliError::Usage(format!("{}: {e}", d.desired.display())))?;
    let mut out = Vec::new();
    for g in &doc.gpus {
        let obs: Observed = observe(h, &g.gpu).map_err(err)?;
        let board = obs.gpu.board.as_deref().ok_or_else(|| {
            CliError::Other(format!(
                "GPU {}: PCI device {} is not in the vGPU catalog",
                g.gpu, obs.gpu.pci_device_id
            ))
        })?;
        let board = cat.board(board).map_err(err)?;
        let model = board
            .mig_model
            .as_deref()
            .and_then(|m| tessera_model::Catalog::builtin().get(m));
        match plan(board, model, g, &obs) {
            Ok(ops) => out.push(GpuPlan {
                gpu: g.gpu.clone(),
                ops,
                refusal: None,
            }),
            Err(r) => out.push(GpuPlan {
                gpu: g.gpu.clone(),
                ops: Vec::new(),
                refusal: Some(r),
            }),
        }
    }
    emit(ctx.output, &out, || {
        let mut s = String::new();
        for p in &out {
            match &p.refusal {
                Some(r) => s.push_str(&format!("{r}\n")),
                None if p.ops.is_empty() => s.push_str(&format!("GPU {}: nothing to do\n", p.gpu)),
                None => {
                    for op in &p.ops {
                        s.push_str(&format!("{op}\n"));
                    }
                }
            }
        }
        s
    })?;
    Ok(if out.iter().any(|p| p.refusal.is_some()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn place_cmd(
    h: &mut dyn VgpuHost,
    p: &PlaceArgs,
    ctx: &Ctx,
    cat: &VgpuCatalog,
) -> Result<ExitCode, CliError> {
    let reqs = p
        .requests
        .iter()
        .map(|r| parse_request(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut obs = Vec::new();
    for g in h.gpus().map_err(err)? {
        obs.push(observe(h, &g.bdf).map_err(err)?);
    }
    let placement = tessera_vgpu::placer::place(cat, &obs, &reqs);
    if let Some(out) = &p.out {
        let doc = tessera_vgpu::agent::DesiredDoc {
            version: 1,
            gpus: placement.gpus.clone(),
        };
        let text = serde_yaml_ng::to_string(&doc).map_err(err)?;
        std::fs::write(out, text).map_err(|e| CliError::io(out, e))?;
    }
    emit(ctx.output, &placement, || {
        let mut s = String::new();
        for (i, gpu, t) in &placement.placed {
            s.push_str(&format!("{}: {t} on GPU {gpu}\n", p.requests[*i]));
        }
        for u in &placement.unplaced {
            s.push_str(&format!(
                "{}: {} not placed: {}\n",
                p.requests[u.request], u.count, u.why
            ));
        }
        match &p.out {
            Some(f) => s.push_str(&format!(
                "desired state written to {}; `tessera vgpu apply --desired {}` makes it so\n",
                f.display(),
                f.display()
            )),
            None => s.push_str("(--out FILE writes the desired state for `tessera vgpu apply`)\n"),
        }
        s
    })?;
    Ok(if placement.unplaced.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn apply(
    a: &Args,
    h: &mut dyn VgpuHost,
    d: &DesiredArgs,
    ctx: &Ctx,
    cat: &VgpuCatalog,
) -> Result<ExitCode, CliError> {
    let doc = parse_desired(&read_file(&d.desired)?)
        .map_err(|e| CliError::Usage(format!("{}: {e}", d.desired.display())))?;
    let mut journal = FileJournal::open(&a.state_dir).map_err(err)?;
    let mut sleeper = ThreadSleeper;
    let mut reports = Vec::new();
    for g in &doc.gpus {
        let mut agent = Agent::new(h, &mut journal, cat, &mut sleeper);
        reports.push(agent.apply_gpu(g).map_err(err)?);
    }
    emit(ctx.output, &reports, || {
        let mut s = String::new();
        for r in &reports {
            for (op, applied) in &r.recovered {
                s.push_str(&format!(
                    "recovered after a crash: {op} ({})\n",
                    if *applied {
                        "had taken effect"
                    } else {
                        "had not taken effect"
                    }
                ));
            }
            for op in &r.applied {
                s.push_str(&format!("{op}\n"));
            }
            match &r.result {
                ApplyResult::Converged => {
                    s.push_str(&format!("GPU {}: holds the desired vGPUs\n", r.gpu))
                }
                ApplyResult::Refused { refusal } => s.push_str(&format!("{refusal}\n")),
            }
        }
        s
    })?;
    Ok(
        if reports
            .iter()
            .any(|r| matches!(r.result, ApplyResult::Refused { .. }))
        {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn all_vgpus(h: &mut dyn VgpuHost) -> Result<Vec<Vgpu>, CliError> {
    let mut out = Vec::new();
    for g in h.gpus().map_err(err)? {
        out.extend(h.vgpus(&g).map_err(err)?);
    }
    Ok(out)
}

fn find_vgpu(h: &mut dyn VgpuHost, handle: &str) -> Result<Vgpu, CliError> {
    let all = all_vgpus(h)?;
    all.iter()
        .find(|v| handle_key(&v.handle) == handle)
        .cloned()
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no vGPU `{handle}` (mdev UUID or VF address); there are: {}",
                if all.is_empty() {
                    "none".into()
                } else {
                    all.iter()
                        .map(|v| handle_key(&v.handle))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))
        })
}

fn create(
    a: &Args,
    h: &mut dyn VgpuHost,
    c: &CreateArgs,
    ctx: &Ctx,
    cat: &VgpuCatalog,
) -> Result<ExitCode, CliError> {
    let mut owners = Owners::open(&a.state_dir).map_err(|e| CliError::io(&a.state_dir, e))?;
    let mut journal = FileJournal::open(&a.state_dir).map_err(err)?;
    let mut sleeper = ThreadSleeper;
    let v = Agent::new(h, &mut journal, cat, &mut sleeper)
        .create_one(
            &c.gpu,
            &c.type_name,
            &Target {
                vf: c.vf.clone(),
                uuid: c.uuid.clone(),
            },
        )
        .map_err(err)?;
    let present: Vec<String> = all_vgpus(h)?
        .iter()
        .map(|v| handle_key(&v.handle))
        .collect();
    owners.retain_present(&present);
    if let Some(o) = &c.owner {
        owners.owners.insert(handle_key(&v.handle), o.clone());
    }
    owners.save().map_err(|e| CliError::io(&a.state_dir, e))?;
    emit(ctx.output, &v, || {
        format!(
            "created {} as {} on GPU {}{}\n",
            v.type_name.as_deref().unwrap_or("vGPU"),
            v.handle,
            v.gpu,
            c.owner
                .as_deref()
                .map(|o| format!(" for {o}"))
                .unwrap_or_default()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

fn release(
    a: &Args,
    h: &mut dyn VgpuHost,
    r: &ReleaseArgs,
    ctx: &Ctx,
    cat: &VgpuCatalog,
) -> Result<ExitCode, CliError> {
    let mut owners = Owners::open(&a.state_dir).map_err(|e| CliError::io(&a.state_dir, e))?;
    let all = all_vgpus(h)?;
    let targets: Vec<Vgpu> = match (&r.handle, &r.owner) {
        (Some(hd), owner) => {
            let v = find_vgpu(h, hd)?;
            if let Some(rec) = owners.owners.get(hd) {
                if owner.as_deref() != Some(rec.as_str()) {
                    return Err(CliError::Usage(format!(
                        "vGPU {hd} belongs to {rec}; release it as that owner (`--owner {rec}`)"
                    )));
                }
            }
            vec![v]
        }
        (None, Some(o)) => all
            .iter()
            .filter(|v| owners.owners.get(&handle_key(&v.handle)) == Some(o))
            .cloned()
            .collect(),
        (None, None) => return Err(CliError::Usage("give --handle or --owner".into())),
    };
    let mut journal = FileJournal::open(&a.state_dir).map_err(err)?;
    let mut sleeper = ThreadSleeper;
    let mut done = Vec::new();
    let mut kept = Vec::new();
    for v in &targets {
        if v.open {
            kept.push(format!(
                "{} is attached to a running VM: kept; stop the VM first",
                v.handle
            ));
            continue;
        }
        Agent::new(h, &mut journal, cat, &mut sleeper)
            .destroy_one(v)
            .map_err(err)?;
        owners.owners.remove(&handle_key(&v.handle));
        done.push(handle_key(&v.handle));
    }
    owners.save().map_err(|e| CliError::io(&a.state_dir, e))?;
    #[derive(Serialize)]
    struct Out<'a> {
        released: &'a [String],
        kept: &'a [String],
    }
    emit(
        ctx.output,
        &Out {
            released: &done,
            kept: &kept,
        },
        || {
            let mut s = String::new();
            if done.is_empty() && kept.is_empty() {
                s.push_str("nothing to release\n");
            }
            for d in &done {
                s.push_str(&format!("released {d}\n"));
            }
            for k in &kept {
                s.push_str(&format!("{k}\n"));
            }
            s
        },
    )?;
    Ok(if kept.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn amd(h: &mut dyn VgpuHost, m: &AmdArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    if let Some(card) = &m.card {
        let a = h
            .set_amd_partition(card, m.compute.as_deref(), m.memory.as_deref())
            .map_err(err)?;
        emit(ctx.output, &a, || {
            format!("{}: compute {}, memory {}\n", a.card, a.compute, a.memory)
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let all = h.amd_gpus().map_err(err)?;
    emit(ctx.output, &all, || {
        let mut tb = table(&[
            "CARD",
            "COMPUTE",
            "AVAILABLE",
            "MEMORY",
            "AVAILABLE",
            "IN USE",
        ]);
        for a in &all {
            tb.add_row([
                a.card.clone(),
                a.compute.clone(),
                a.available_compute.join(","),
                a.memory.clone(),
                a.available_memory.join(","),
                if a.busy { "yes".into() } else { "no".into() },
            ]);
        }
        format!("{tb}\n")
    })?;
    Ok(ExitCode::SUCCESS)
}

fn host_gpu(h: &mut dyn VgpuHost, bdf: &str) -> Result<HostGpu, CliError> {
    let gpus = h.gpus().map_err(err)?;
    gpus.iter().find(|g| g.bdf == bdf).cloned().ok_or_else(|| {
        CliError::Usage(format!(
            "no GPU {bdf}; GPUs: {}",
            gpus.iter()
                .map(|g| g.bdf.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn proxmox(a: &Args, h: &mut dyn VgpuHost, p: &ProxmoxCmd) -> Result<ExitCode, CliError> {
    match p {
        ProxmoxCmd::Mapping(m) => {
            let g = host_gpu(h, &m.gpu)?;
            if g.vfs.is_empty() {
                return Err(CliError::Usage(format!(
                    "GPU {} has no VFs enabled: `tessera vgpu vfs --gpu {} --count {}` first (a mapping lists VFs)",
                    g.bdf, g.bdf, g.total_vfs
                )));
            }
            let fs = ident_fs(a)?;
            let vfs = g
                .vfs
                .iter()
                .map(|v| vf_ident(fs.as_ref(), v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            let id = m.id.clone().unwrap_or_else(|| {
                format!(
                    "tessera-{}-{}",
                    g.board.as_deref().unwrap_or("gpu"),
                    g.bdf.split(':').nth(1).unwrap_or("0")
                )
            });
            print_out(&pve_mapping(
                &id,
                &format!(
                    "tessera vGPUs of {} ({})",
                    g.bdf,
                    g.board.as_deref().unwrap_or("?")
                ),
                &m.node,
                &vfs,
            ));
        }
        ProxmoxCmd::Hostpci(v) | ProxmoxCmd::Hookscript(v) => {
            let g = host_gpu(h, &v.gpu)?;
            let fw = g
                .framework
                .ok_or_else(|| CliError::Usage(format!("GPU {} has no VFs enabled yet", g.bdf)))?;
            if !g.vfs.contains(&v.vf) {
                return Err(CliError::Usage(format!(
                    "{} is not a VF of {} ({})",
                    v.vf,
                    g.bdf,
                    g.vfs.join(", ")
                )));
            }
            let cat = VgpuCatalog::builtin();
            let (ty, mig_backed) = match &g.board {
                Some(b) => {
                    let t = cat
                        .board(b)
                        .map_err(err)?
                        .vgpu_type(&v.type_name)
                        .map_err(|e| CliError::Usage(e.to_string()))?;
                    (t.name.clone(), t.is_mig_backed())
                }
                None => (v.type_name.clone(), false),
            };
            if matches!(p, ProxmoxCmd::Hookscript(_)) {
                let state =
                    std::path::absolute(&a.state_dir).unwrap_or_else(|_| a.state_dir.clone());
                print_out(&pve_hookscript(
                    &v.tessera,
                    &state,
                    &g.bdf,
                    &ty,
                    &v.vf,
                    fw,
                    v.index,
                    mig_backed.then_some("nvml"),
                ));
            } else {
                let id = match fw {
                    Framework::Mdev => {
                        let offers = h.offers(&g).map_err(err)?;
                        let all = all_vgpus(h)?;
                        offers
                            .iter()
                            .find(|o| o.type_name == ty)
                            .map(|o| o.type_id)
                            .or_else(|| {
                                all.iter()
                                    .find(|x| x.type_name.as_deref() == Some(ty.as_str()))
                                    .map(|x| x.type_id)
                            })
                            .ok_or_else(|| {
                                CliError::Other(format!(
                                    "no VF of {} shows the ID of {ty} now",
                                    g.bdf
                                ))
                            })?
                    }
                    Framework::VendorVfio => 0,
                };
                print_out(&format!("{}\n", pve_hostpci(v.index, &v.vf, fw, id)));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A read-only file view for device identities (`vf_ident` reads files the host trait does
/// not expose).
fn ident_fs(a: &Args) -> Result<Box<dyn Sysfs>, CliError> {
    if let Some(r) = &a.sysfs_root {
        return Ok(Box::new(RealFs::new(r)));
    }
    if let Some(r) = &a.rendered {
        return Ok(Box::new(RealFs::new(r)));
    }
    Ok(Box::new(load_twin(&a.state_dir, VgpuCatalog::builtin())?))
}

fn twin(a: &Args, t: &TwinCmd, cat: &VgpuCatalog) -> Result<ExitCode, CliError> {
    let path = twin_path(&a.state_dir);
    match t {
        TwinCmd::Init { gpus, amd, force } => {
            if path.exists() && !force {
                return Err(CliError::Usage(format!(
                    "a twin exists at {}; add --force to replace it",
                    path.display()
                )));
            }
            let specs = gpus
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| TwinGpuSpec::parse(s.trim(), cat))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let mut tw = Twin::new(&specs, cat, 1).map_err(err)?;
            for _ in 0..*amd {
                tw.add_amd(&["SPX", "DPX", "QPX", "CPX"], &["NPS1", "NPS4"]);
            }
            std::fs::create_dir_all(&a.state_dir).map_err(|e| CliError::io(&a.state_dir, e))?;
            tw.save(&path).map_err(err)?;
            let mut s = format!("twin at {}:\n", path.display());
            for g in &tw.state().gpus {
                s.push_str(&format!(
                    "  GPU {} {} ({}), up to {} VFs\n",
                    g.bdf, g.board, g.framework, g.total_vfs
                ));
            }
            for c in &tw.state().amd {
                s.push_str(&format!(
                    "  AMD {} ({} / {})\n",
                    c.card, c.compute, c.memory
                ));
            }
            print_out(&s);
        }
        TwinCmd::Attach { handle } | TwinCmd::Detach { handle } => {
            let mut tw = load_twin(&a.state_dir, cat)?;
            tw.set_open(handle, matches!(t, TwinCmd::Attach { .. }))
                .map_err(|e| CliError::Usage(e.to_string()))?;
            tw.save(&path).map_err(err)?;
        }
        TwinCmd::MixedSize { gpu, on } => {
            let mut tw = load_twin(&a.state_dir, cat)?;
            tw.set_mixed_size(gpu, *on)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            tw.save(&path).map_err(err)?;
        }
        TwinCmd::Reboot => {
            let mut tw = load_twin(&a.state_dir, cat)?;
            tw.reboot().map_err(err)?;
            tw.save(&path).map_err(err)?;
        }
        TwinCmd::Render { dir } => {
            let tw = load_twin(&a.state_dir, cat)?;
            tw.render(dir).map_err(err)?;
            print_out(&format!(
                "rendered under {}; read it with `tessera vgpu --sysfs-root {} status`\n",
                dir.display(),
                dir.display()
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}
