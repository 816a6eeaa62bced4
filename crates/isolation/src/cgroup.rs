//! One cgroup per lease. On cgroup v1 the `devices` controller enforces the allow-list: a
//! lease's cgroup gets `devices.deny a` (nothing) and then one `devices.allow c MAJ:MIN rwm`
//! per node of its slice, and the kernel refuses `open` of any other device node with
//! `EPERM` to every process in it (checked at `open`: a descriptor opened *before* entering
//! keeps working, which is why the daemon moves the client in before it learns the lease).
//! Children inherit the cgroup and an unprivileged process cannot leave it (moving a process
//! means writing another cgroup's root-owned `cgroup.procs`), so the cgroup also lists the
//! lease's whole process tree for [`LeaseCgroups::kill_all`].
//!
//! cgroup v2 has no device files: there [`DevicesV2`] attaches a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program built from the same allow-list to each lease's cgroup (see [`crate::bpf`]); the
//! kernel checks it at `open` just like the v1 controller. [`probe`] prefers v1 where it is
//! writable and falls back to v2 where the unified hierarchy is writable and the program
//! loads and attaches.

use std::io::Write;
use std::path::{Path, PathBuf};

use rustix::process::{kill_process, Pid, Signal};

use crate::devices::DeviceRule;
use crate::error::IsolationError;

/// Per-lease cgroups (the I/O behind a trait, as the server sees it).
pub trait LeaseCgroups: Send + std::fmt::Debug {
    /// What enforces the rules, for logs and status (`cgroup v1 devices at PATH`).
    fn describe(&self) -> String;
    /// The lease's cgroup directory.
    fn path(&self, lease: u64) -> PathBuf;
    /// Create the lease's cgroup allowing only `allow` (a leftover empty one is reused).
    fn create(&mut self, lease: u64, allow: &[DeviceRule]) -> Result<(), IsolationError>;
    /// Move a process (all its threads) into the lease's cgroup.
    fn enter(&mut self, lease: u64, pid: u32) -> Result<(), IsolationError>;
    /// Move a process back to the cgroup the lease cgroups live in (undo [`Self::enter`]).
    fn leave(&mut self, pid: u32) -> Result<(), IsolationError>;
    /// The processes in the lease's cgroup (none when it does not exist).
    fn pids(&self, lease: u64) -> Result<Vec<u32>, IsolationError>;
    /// SIGKILL every process in the lease's cgroup but `except`; returns those signalled.
    fn kill_all(&mut self, lease: u64, except: Option<u32>) -> Result<Vec<u32>, IsolationError>;
    /// Remove the lease's cgroup once it is empty: `Ok(true)` when gone (or never made),
    /// `Ok(false)` while processes remain.
    fn remove(&mut self, lease: u64) -> Result<bool, IsolationError>;
    /// Leases that have a cgroup now (after a restart: leftovers to adopt or to clean up).
    fn leases(&self) -> Result<Vec<u64>, IsolationError>;
    /// Remove the directory of lease cgroups if no lease cgroup is left in it (daemon stop).
    fn close(&mut self);
}

/// What [`probe`] found.
#[derive(Debug)]
pub enum Availability {
    /// The v1 `devices` controller is writable: lease cgroups go under `root`.
    V1 {
        /// `<devices mount>/<daemon's cgroup>/<parent name>`.
        root: PathBuf,
    },
    /// No writable v1 `devices` controller, but the unified (v2) hierarchy is writable and a
    /// cgroup device program loads and attaches: lease cgroups go under `root`.
    V2 {
        /// `<cgroup2 mount>/<daemon's cgroup>/<parent name>`.
        root: PathBuf,
    },
    /// Only cgroup v2 is mounted and a device program cannot be used there.
    V2Only {
        /// Where cgroup2 is mounted.
        mount: PathBuf,
        /// Why not (the failed step and its cause).
        why: String,
    },
    /// The controller exists but this process cannot create cgroups in it (not root, or a
    /// container without the privilege).
    NotWritable {
        /// The directory that could not be created or written.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No cgroup file system is mounted.
    Absent,
}

/// Why lease cgroups cannot be made on this host: an [`Availability`] other than `V1` and
/// `V2`, as an error (its cause, for `NotWritable`, is the OS error).
#[derive(Debug)]
pub struct Unavailable(Availability);

impl Unavailable {
    /// What the probe found.
    pub fn availability(&self) -> &Availability {
        &self.0
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.explain())
    }
}

impl std::error::Error for Unavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            Availability::NotWritable { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Availability {
    /// The probe's result as an error when it found no usable controller (`None` for `V1`
    /// and `V2`).
    pub fn into_unavailable(self) -> Option<Unavailable> {
        match self {
            Availability::V1 { .. } | Availability::V2 { .. } => None,
            other => Some(Unavailable(other)),
        }
    }

    /// One line for the log and for errors: what was found and what it means.
    pub fn explain(&self) -> String {
        match self {
            Availability::V1 { root } => format!("cgroup v1 devices controller at {}", root.display()),
            Availability::V2 { root } => {
                format!("cgroup v2 with a BPF device program at {}", root.display())
            }
            Availability::V2Only { mount, why } => format!(
                "this host has only cgroup v2 ({}) and its device program cannot be used: {why}",
                mount.display()
            ),
            Availability::NotWritable { path, source } => format!(
                "cannot create cgroups in {} ({source}); the daemon must run as root with the cgroup v1 devices controller or the cgroup2 hierarchy mounted read-write",
                path.display()
            ),
            Availability::Absent => "no cgroup file system is mounted".to_string(),
        }
    }
}

/// A v1 mount from `/proc/self/mountinfo`: (mount root, mount point, super options).
fn v1_mounts(mountinfo: &str) -> Vec<(String, PathBuf, String)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split_whitespace().collect();
        let post: Vec<&str> = post.split_whitespace().collect();
        if pre.len() >= 5 && post.len() >= 3 && post[0] == "cgroup" {
            out.push((
                pre[3].to_string(),
                PathBuf::from(pre[4]),
                post[2].to_string(),
            ));
        }
    }
    out
}

fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// This process's path in the v1 hierarchy holding `controller` (`/proc/self/cgroup`).
fn own_path(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

/// Find where lease cgroups can live: under this process's own `devices` cgroup (v1), in a
/// directory named `parent` (created if missing); where no v1 `devices` controller is
/// writable, the same in the unified hierarchy ([`probe_v2`]). Never panics; every failure is
/// a variant.
pub fn probe(parent: &str) -> Availability {
    let v1 = probe_v1(parent);
    if matches!(v1, Availability::V1 { .. }) {
        return v1;
    }
    match (probe_v2(parent), v1) {
        (v2 @ Availability::V2 { .. }, _) => v2,
        // A v1 controller that is there but not writable says more than v2's failure.
        (_, v1 @ Availability::NotWritable { .. }) => v1,
        (v2, _) => v2,
    }
}

/// A probe directory's name, distinct per call: two threads probing the same parent at once
/// must not see each other's directory as "cannot write here".
fn probe_name() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("probe-{}-{n}", std::process::id())
}

/// Create `root` (and parents) and prove this process can make cgroups in it.
fn writable(root: &Path) -> Result<(), std::io::Error> {
    std::fs::create_dir_all(root)?;
    // The directory may exist already (made by root earlier): prove we can write it.
    let probe_dir = root.join(probe_name());
    std::fs::create_dir(&probe_dir).and_then(|_| std::fs::remove_dir(&probe_dir))
}

/// The v1 half of [`probe`], on its own (a configuration that asks for v1 only).
pub fn probe_v1(parent: &str) -> Availability {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some((mroot, mpoint, _)) = v1_mounts(&mountinfo)
        .into_iter()
        .find(|(_, _, opts)| opts.split(',').any(|o| o == "devices"))
    else {
        return Availability::Absent;
    };
    let mine = own_path(&own, "devices").unwrap_or_else(|| "/".into());
    let rel = mine
        .strip_prefix(&mroot)
        .unwrap_or(&mine)
        .trim_start_matches('/')
        .to_string();
    let root = mpoint.join(rel).join(parent);
    match writable(&root) {
        Ok(()) => Availability::V1 { root },
        Err(source) => Availability::NotWritable { path: root, source },
    }
}

/// This process's path in the unified hierarchy (`0::PATH` of `/proc/self/cgroup`).
fn own_v2_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// The v2 half of [`probe`], on its own (tests and hosts that want v2 even where v1 is
/// there): lease cgroups under this process's own cgroup2 cgroup, in `parent`, after
/// proving that a device program loads and attaches there.
pub fn probe_v2(parent: &str) -> Availability {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(mount) = cgroup2_mount(&mountinfo) else {
        return Availability::Absent;
    };
    let mine = own_v2_path(&own).unwrap_or_else(|| "/".into());
    let root = mount.join(mine.trim_start_matches('/')).join(parent);
    if let Err(source) = std::fs::create_dir_all(&root) {
        return Availability::NotWritable { path: root, source };
    }
    let probe_dir = root.join(probe_name());
    if let Err(source) = std::fs::create_dir(&probe_dir) {
        return Availability::NotWritable { path: root, source };
    }
    let bpf = crate::bpf::install(&probe_dir, &crate::devices::base_rules());
    let _ = std::fs::remove_dir(&probe_dir);
    match bpf {
        Ok(()) => Availability::V2 { root },
        Err(e) => {
            // Leave nothing behind that a later probe would trip over.
            let _ = std::fs::remove_dir(&root);
            Availability::V2Only {
                mount,
                why: e.to_string(),
            }
        }
    }
}

/// Lease cgroups in the v1 `devices` hierarchy, named `lease-<ID>` under one directory.
#[derive(Debug, Clone)]
pub struct DevicesV1 {
    root: PathBuf,
}

fn write_file(path: &Path, text: &str) -> Result<(), IsolationError> {
    // One write per value: cgroup files take one rule per write(2).
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| IsolationError::io(path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| IsolationError::io(path, e))
}

impl DevicesV1 {
    /// Lease cgroups under `root` (a directory in the devices hierarchy, see [`probe`]).
    pub fn new(root: PathBuf) -> DevicesV1 {
        DevicesV1 { root }
    }

    /// The directory holding the lease cgroups.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Make the lease's cgroup directory (reusing an empty leftover, refusing one that still
    /// holds processes), then apply its rules with `install`; on failure the new directory is
    /// removed again, so a lease never runs in a cgroup with half its rules.
    fn make_lease_dir(
        &self,
        lease: u64,
        install: impl FnOnce(&Path) -> Result<(), IsolationError>,
    ) -> Result<(), IsolationError> {
        let dir = self.root.join(format!("lease-{lease}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let left = LeaseCgroups::pids(self, lease)?;
                if !left.is_empty() {
                    return Err(IsolationError::Busy {
                        path: dir,
                        pids: left,
                    });
                }
            }
            Err(e) => return Err(IsolationError::io(&dir, e)),
        }
        let done = install(&dir);
        if done.is_err() {
            let _ = std::fs::remove_dir(&dir);
        }
        done
    }
}

impl LeaseCgroups for DevicesV1 {
    fn describe(&self) -> String {
        format!("cgroup v1 devices at {}", self.root.display())
    }

    fn path(&self, lease: u64) -> PathBuf {
        self.root.join(format!("lease-{lease}"))
    }

    fn create(&mut self, lease: u64, allow: &[DeviceRule]) -> Result<(), IsolationError> {
        self.make_lease_dir(lease, |dir| {
            write_file(&dir.join("devices.deny"), "a")?;
            for r in allow {
                write_file(&dir.join("devices.allow"), &r.allow_line())?;
            }
            Ok(())
        })
    }

    fn enter(&mut self, lease: u64, pid: u32) -> Result<(), IsolationError> {
        write_file(&self.path(lease).join("cgroup.procs"), &pid.to_string())
    }

    fn leave(&mut self, pid: u32) -> Result<(), IsolationError> {
        let base = self.root.parent().unwrap_or(&self.root);
        write_file(&base.join("cgroup.procs"), &pid.to_string())
    }

    fn pids(&self, lease: u64) -> Result<Vec<u32>, IsolationError> {
        let file = self.path(lease).join("cgroup.procs");
        match std::fs::read_to_string(&file) {
            Ok(t) => {
                let mut v: Vec<u32> = t.lines().filter_map(|l| l.trim().parse().ok()).collect();
                v.sort_unstable();
                v.dedup();
                Ok(v)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(IsolationError::io(file, e)),
        }
    }

    fn kill_all(&mut self, lease: u64, except: Option<u32>) -> Result<Vec<u32>, IsolationError> {
        // A process forked between reading the list and the kill is in the cgroup too (children
        // inherit it): a few rounds catch it; callers check `pids` again on their next pass.
        let mut signalled = Vec::new();
        for _ in 0..8 {
            let targets: Vec<u32> = self
                .pids(lease)?
                .into_iter()
                .filter(|p| Some(*p) != except && !signalled.contains(p))
                .collect();
            if targets.is_empty() {
                break;
            }
            for p in targets {
                if let Some(pid) = Pid::from_raw(p as i32) {
                    if kill_process(pid, Signal::KILL).is_ok() {
                        signalled.push(p);
                    }
                }
            }
        }
        Ok(signalled)
    }

    fn remove(&mut self, lease: u64) -> Result<bool, IsolationError> {
        let dir = self.path(lease);
        if !dir.exists() {
            return Ok(true);
        }
        if !self.pids(lease)?.is_empty() {
            return Ok(false);
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => Ok(true),
            // EBUSY: a process entered or was still exiting; the next pass retries.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(IsolationError::io(&dir, e)),
        }
    }

    fn leases(&self) -> Result<Vec<u64>, IsolationError> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(IsolationError::io(&self.root, e)),
        };
        let mut out: Vec<u64> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("lease-")?.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn close(&mut self) {
        // rmdir refuses while a lease cgroup is inside: leases outlive a daemon restart.
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// Lease cgroups in the unified (v2) hierarchy, named `lease-<ID>` under one directory, each
/// with a cgroup device program ([`crate::bpf`]) built from its allow-list. Membership,
/// killing and removal work as in v1 (`cgroup.procs`); removing the directory releases the
/// attached program.
#[derive(Debug, Clone)]
pub struct DevicesV2 {
    tree: DevicesV1,
}

impl DevicesV2 {
    /// Lease cgroups under `root` (a directory in the cgroup2 hierarchy, see [`probe_v2`]).
    pub fn new(root: PathBuf) -> DevicesV2 {
        DevicesV2 {
            tree: DevicesV1::new(root),
        }
    }

    /// The directory holding the lease cgroups.
    pub fn root(&self) -> &Path {
        self.tree.root()
    }
}

impl LeaseCgroups for DevicesV2 {
    fn describe(&self) -> String {
        format!("cgroup v2 device program at {}", self.root().display())
    }

    fn path(&self, lease: u64) -> PathBuf {
        self.tree.path(lease)
    }

    fn create(&mut self, lease: u64, allow: &[DeviceRule]) -> Result<(), IsolationError> {
        // A reused (leftover) cgroup's program is replaced: the attachment is not multi.
        self.tree
            .make_lease_dir(lease, |dir| crate::bpf::install(dir, allow))
    }

    fn enter(&mut self, lease: u64, pid: u32) -> Result<(), IsolationError> {
        self.tree.enter(lease, pid)
    }

    fn leave(&mut self, pid: u32) -> Result<(), IsolationError> {
        self.tree.leave(pid)
    }

    fn pids(&self, lease: u64) -> Result<Vec<u32>, IsolationError> {
        self.tree.pids(lease)
    }

    fn kill_all(&mut self, lease: u64, except: Option<u32>) -> Result<Vec<u32>, IsolationError> {
        self.tree.kill_all(lease, except)
    }

    fn remove(&mut self, lease: u64) -> Result<bool, IsolationError> {
        // No explicit detach: it would leave a window in which a process entering late runs
        // unrestricted; rmdir of the (empty) cgroup releases its program.
        self.tree.remove(lease)
    }

    fn leases(&self) -> Result<Vec<u64>, IsolationError> {
        self.tree.leases()
    }

    fn close(&mut self) {
        self.tree.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_the_devices_hierarchy_and_cgroup2() {
        let mi = "30 25 0:26 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices\n\
                  31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                  32 25 0:28 /kubepods /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let m = v1_mounts(mi);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].1, PathBuf::from("/sys/fs/cgroup/devices"));
        assert!(m[0].2.split(',').any(|o| o == "devices"));
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let own = "9:name=systemd:/\n5:devices:/user.slice\n0::/\n";
        assert_eq!(own_path(own, "devices").as_deref(), Some("/user.slice"));
        assert_eq!(own_path(own, "memory"), None);
        assert_eq!(own_v2_path(own).as_deref(), Some("/"));
    }
}
