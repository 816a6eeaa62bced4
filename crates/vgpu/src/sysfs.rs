//! The file layer under the host backend: read, write, list and follow links in sysfs, with
//! the kernel's errno kept, behind the [`Sysfs`] trait.
//!
//! [`RealFs`] is the real thing, rooted at `--sysfs-root DIR` (default `/`): every path the
//! backend uses is absolute (`/sys/bus/pci/devices/...`) and is joined under the root. Writes
//! open the file without `O_CREAT`, so a missing sysfs file is `ENOENT`, never a new file.
//! [`crate::twin::Twin`] is the behaviour model that answers the same calls with the driver's
//! errno, and [`crate::twin::RenderedTwin`] serves reads from a rendered directory tree
//! through [`RealFs`] while the twin models the writes.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use tessera_gpu::GpuBackend;

/// The errno values the vGPU paths of the kernel and NVIDIA's driver return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Errno {
    /// No such file or directory.
    ENOENT,
    /// I/O error (the driver failed the request).
    EIO,
    /// No such device or address (a VF file read before it has a vGPU).
    ENXIO,
    /// Try again.
    EAGAIN,
    /// Permission denied (a read-only file, or not root).
    EACCES,
    /// Operation not permitted (NVIDIA: VF occupied, or removing from an empty VF).
    EPERM,
    /// Device or resource busy.
    EBUSY,
    /// File exists (a duplicate mdev UUID).
    EEXIST,
    /// Invalid argument.
    EINVAL,
    /// Result out of range (`sriov_numvfs` above the total).
    ERANGE,
    /// Too many users (mdev: no instance of the type is available).
    EUSERS,
    /// Any other code.
    Other(i32),
}

impl Errno {
    /// From the raw OS error code.
    pub fn from_raw(code: i32) -> Errno {
        match code {
            libc::ENOENT => Errno::ENOENT,
            libc::EIO => Errno::EIO,
            libc::ENXIO => Errno::ENXIO,
            libc::EAGAIN => Errno::EAGAIN,
            libc::EACCES => Errno::EACCES,
            libc::EPERM => Errno::EPERM,
            libc::EBUSY => Errno::EBUSY,
            libc::EEXIST => Errno::EEXIST,
            libc::EINVAL => Errno::EINVAL,
            libc::ERANGE => Errno::ERANGE,
            libc::EUSERS => Errno::EUSERS,
            other => Errno::Other(other),
        }
    }

    /// The raw OS error code.
    pub fn raw(self) -> i32 {
        match self {
            Errno::ENOENT => libc::ENOENT,
            Errno::EIO => libc::EIO,
            Errno::ENXIO => libc::ENXIO,
            Errno::EAGAIN => libc::EAGAIN,
            Errno::EACCES => libc::EACCES,
            Errno::EPERM => libc::EPERM,
            Errno::EBUSY => libc::EBUSY,
            Errno::EEXIST => libc::EEXIST,
            Errno::EINVAL => libc::EINVAL,
            Errno::ERANGE => libc::ERANGE,
            Errno::EUSERS => libc::EUSERS,
            Errno::Other(c) => c,
        }
    }

    /// From an I/O error (`EIO` when it carries no OS code).
    pub fn from_io(e: &std::io::Error) -> Errno {
        e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Errno::Other(c) => write!(f, "errno {c}"),
            e => write!(f, "{e:?}"),
        }
    }
}

/// What was being done when a [`SysfsError`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading a file.
    Read,
    /// Writing a file.
    Write,
    /// Listing a directory.
    List,
    /// Following a link.
    Link,
}

/// One failed sysfs call, with the errno the kernel returned.
#[derive(Debug, thiserror::Error)]
#[error("{} {path}{}: {errno}", match .access { Access::Read => "read", Access::Write => "write", Access::List => "list", Access::Link => "follow link" }, .value.as_deref().map(|v| format!(" <- `{v}`")).unwrap_or_default())]
pub struct SysfsError {
    /// Read, write, list or link.
    pub access: Access,
    /// The path under the sysfs root.
    pub path: String,
    /// The value written, for writes.
    pub value: Option<String>,
    /// The errno.
    pub errno: Errno,
}

impl SysfsError {
    /// An error of `access` on `path`.
    pub fn new(access: Access, path: &str, errno: Errno) -> SysfsError {
        SysfsError {
            access,
            path: path.to_string(),
            value: None,
            errno,
        }
    }
}

/// The sysfs calls the host backend makes. Paths are absolute (`/sys/...`).
pub trait Sysfs: Send {
    /// A short description (`sysfs:/`, `twin`, `twin rendered at DIR`).
    fn describe(&self) -> String;
    /// A file's contents.
    fn read(&self, path: &str) -> Result<String, SysfsError>;
    /// Write `value` to a file (one `write(2)`).
    fn write(&mut self, path: &str, value: &str) -> Result<(), SysfsError>;
    /// A directory's entry names, sorted.
    fn list(&self, dir: &str) -> Result<Vec<String>, SysfsError>;
    /// The last component of a link's target (`virtfn0` -> `0000:41:00.4`).
    fn link_name(&self, path: &str) -> Result<String, SysfsError>;
    /// Whether the path exists.
    fn exists(&self, path: &str) -> bool {
        self.read(path).is_ok() || self.list(path).is_ok()
    }
    /// Whether a process holds the device at `dev_dir` open (its VFIO group or cdev, or its
    /// DRM nodes): a vGPU attached to a running VM, or an AMD GPU with work on it.
    fn is_open(&self, dev_dir: &str) -> Result<bool, SysfsError>;
    /// The MIG backend of this host, for MIG-backed vGPUs' GPU instances.
    fn mig(&mut self) -> Option<&mut dyn GpuBackend> {
        None
    }
    /// The MIG backend's index of the GPU whose physical function is `pf`. The default
    /// assumes NVML's order, which is PCI bus order: the position of `pf` among the NVIDIA
    /// functions that are not VFs.
    fn mig_index(&self, pf: &str) -> Option<u32> {
        let mut pfs: Vec<String> = self
            .list("/sys/bus/pci/devices")
            .ok()?
            .into_iter()
            .filter(|d| {
                self.read(&format!("/sys/bus/pci/devices/{d}/vendor"))
                    .is_ok_and(|v| v.trim() == "0x10de")
                    && !self.exists(&format!("/sys/bus/pci/devices/{d}/physfn"))
            })
            .collect();
        pfs.sort();
        pfs.iter().position(|d| d == pf).map(|i| i as u32)
    }
}

/// The real sysfs (or any directory tree shaped like it), rooted at `root`.
pub struct RealFs {
    root: PathBuf,
    proc_root: PathBuf,
    mig: Option<Box<dyn GpuBackend>>,
}

impl fmt::Debug for RealFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RealFs")
            .field("root", &self.root)
            .field("proc_root", &self.proc_root)
            .field("mig", &self.mig.as_ref().map(|m| m.describe()))
            .finish()
    }
}

impl RealFs {
    /// Sysfs under `root` (`/` on a real host); open devices are found in `root/proc`.
    pub fn new(root: &Path) -> RealFs {
        RealFs {
            root: root.to_path_buf(),
            proc_root: root.join("proc"),
            mig: None,
        }
    }

    /// With a MIG backend (NVML on a real host) for MIG-backed types.
    pub fn with_mig(mut self, mig: Box<dyn GpuBackend>) -> RealFs {
        self.mig = Some(mig);
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` under the root.
    pub fn full(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The device nodes (`/dev/vfio/N`, `/dev/vfio/devices/vfioX`, `/dev/dri/renderDN`, ...)
    /// that belong to the device at `dev_dir`.
    fn device_nodes(&self, dev_dir: &str) -> Vec<String> {
        let mut nodes = Vec::new();
        if let Ok(g) = self.link_name(&format!("{dev_dir}/iommu_group")) {
            nodes.push(format!("/dev/vfio/{g}"));
        }
        for (sub, dev) in [("vfio-dev", "/dev/vfio/devices"), ("drm", "/dev/dri")] {
            if let Ok(names) = self.list(&format!("{dev_dir}/{sub}")) {
                nodes.extend(names.into_iter().map(|n| format!("{dev}/{n}")));
            }
        }
        nodes
    }
}

impl Sysfs for RealFs {
    fn describe(&self) -> String {
        format!("sysfs:{}", self.root.display())
    }

    fn read(&self, path: &str) -> Result<String, SysfsError> {
        std::fs::read_to_string(self.full(path))
            .map_err(|e| SysfsError::new(Access::Read, path, Errno::from_io(&e)))
    }

    fn write(&mut self, path: &str, value: &str) -> Result<(), SysfsError> {
        let err = |e: std::io::Error| SysfsError {
            access: Access::Write,
            path: path.to_string(),
            value: Some(value.to_string()),
            errno: Errno::from_io(&e),
        };
        let mut f = OpenOptions::new()
            .write(true)
            .open(self.full(path))
            .map_err(err)?;
        f.write_all(value.as_bytes()).map_err(err)
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, SysfsError> {
        let rd = std::fs::read_dir(self.full(dir))
            .map_err(|e| SysfsError::new(Access::List, dir, Errno::from_io(&e)))?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    fn link_name(&self, path: &str) -> Result<String, SysfsError> {
        let target = std::fs::read_link(self.full(path))
            .map_err(|e| SysfsError::new(Access::Link, path, Errno::from_io(&e)))?;
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| SysfsError::new(Access::Link, path, Errno::EINVAL))
    }

    fn exists(&self, path: &str) -> bool {
        self.full(path).exists()
    }

    fn is_open(&self, dev_dir: &str) -> Result<bool, SysfsError> {
        let nodes = self.device_nodes(dev_dir);
        if nodes.is_empty() {
            return Ok(false);
        }
        let procs = match std::fs::read_dir(&self.proc_root) {
            Ok(rd) => rd,
            // No /proc under the root (a rendered tree): nothing can hold the device.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(SysfsError::new(
                    Access::List,
                    &self.proc_root.display().to_string(),
                    Errno::from_io(&e),
                ))
            }
        };
        for p in procs.filter_map(|e| e.ok()) {
            if !p
                .file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
            {
                continue;
            }
            // A process may exit while we look, and other users' fds are unreadable without
            // root: both are skipped (the backend runs as root on a real host).
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.filter_map(|e| e.ok()) {
                if let Ok(t) = std::fs::read_link(fd.path()) {
                    let t = t.to_string_lossy();
                    if nodes.iter().any(|n| *n == t) {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    fn mig(&mut self) -> Option<&mut dyn GpuBackend> {
        match &mut self.mig {
            Some(b) => Some(b.as_mut()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_round_trips_and_real_writes_keep_the_kernels_errno() {
        for e in [
            Errno::ENOENT,
            Errno::EIO,
            Errno::ENXIO,
            Errno::EPERM,
            Errno::EBUSY,
            Errno::EEXIST,
            Errno::EINVAL,
            Errno::ERANGE,
            Errno::EUSERS,
        ] {
            assert_eq!(Errno::from_raw(e.raw()), e);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut fs = RealFs::new(dir.path());
        // A missing file is ENOENT on write too: nothing is created.
        let e = fs
            .write("/sys/bus/pci/devices/x/sriov_numvfs", "4")
            .unwrap_err();
        assert_eq!(e.errno, Errno::ENOENT);
        assert!(!dir
            .path()
            .join("sys/bus/pci/devices/x/sriov_numvfs")
            .exists());
        assert!(e.to_string().contains("<- `4`"), "{e}");
    }

    #[test]
    fn an_open_vfio_group_is_found_through_proc() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("sys/bus/mdev/devices/u1");
        std::fs::create_dir_all(&dev).unwrap();
        std::os::unix::fs::symlink("../../../kernel/iommu_groups/77", dev.join("iommu_group"))
            .unwrap();
        let fs = RealFs::new(dir.path());
        assert!(!fs.is_open("/sys/bus/mdev/devices/u1").unwrap());
        let fd = dir.path().join("proc/4242/fd");
        std::fs::create_dir_all(&fd).unwrap();
        std::os::unix::fs::symlink("/dev/vfio/7", fd.join("3")).unwrap();
        assert!(
            !fs.is_open("/sys/bus/mdev/devices/u1").unwrap(),
            "group 7 is not 77"
        );
        std::os::unix::fs::symlink("/dev/vfio/77", fd.join("4")).unwrap();
        assert!(fs.is_open("/sys/bus/mdev/devices/u1").unwrap());
    }
}
