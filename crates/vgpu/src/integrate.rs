//! What hypervisors need from tessera: Proxmox VE resource mappings, VM `hostpci` lines and a
//! hookscript, and libvirt `<hostdev>` XML, for an mdev or a VF.
//!
//! - Proxmox: `/etc/pve/mapping/pci.cfg` is a section config: a line with the mapping ID, then
//!   tab-indented properties; `map` (one per device) is a property string of `id` (vendor:device),
//!   `iommugroup`, `node`, `path` (PCI address) and `subsystem-id`, and `mdev 1` marks a mapping
//!   whose devices take mediated devices (PVE `PVE/Mapping/PCI.pm`). VMs name a device as
//!   `hostpciN: <VF>[,mdev=nvidia-<id>]`. Hookscripts run as `SCRIPT VMID PHASE` at
//!   `pre-start`, `post-start`, `pre-stop` and `post-stop`; a non-zero exit at `pre-start`
//!   stops the start. qemu-server names mdevs `%08d-0000-0000-0000-%012d` (hostpci index, VMID).
//! - libvirt: an mdev is `<hostdev mode='subsystem' type='mdev' model='vfio-pci'>` with
//!   `<source><address uuid='...'/></source>`; a VF holding a vGPU (vendor VFIO) is a PCI
//!   `<hostdev mode='subsystem' type='pci' managed='no'>` with its domain/bus/slot/function.
//!
//! [`Owners`] records which VM (or user) a vGPU was created for, so that a release by one
//! owner never removes another's vGPU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::{Framework, Handle};
use crate::sysfs::{Sysfs, SysfsError};

/// What a Proxmox mapping records of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfIdent {
    /// PCI address.
    pub bdf: String,
    /// `vendor:device`, e.g. `10de:20b7`.
    pub id: String,
    /// IOMMU group.
    pub iommu_group: Option<u32>,
    /// `subsystem_vendor:subsystem_device`.
    pub subsystem_id: Option<String>,
}

fn hex4(s: &str) -> String {
    format!("{:0>4}", s.trim().trim_start_matches("0x").to_lowercase())
}

/// Read a device's identity from sysfs.
pub fn vf_ident(fs: &dyn Sysfs, bdf: &str) -> Result<VfIdent, SysfsError> {
    let dir = format!("/sys/bus/pci/devices/{bdf}");
    let vendor = fs.read(&format!("{dir}/vendor"))?;
    let device = fs.read(&format!("{dir}/device"))?;
    let subsystem_id = match (
        fs.read(&format!("{dir}/subsystem_vendor")),
        fs.read(&format!("{dir}/subsystem_device")),
    ) {
        (Ok(v), Ok(d)) => Some(format!("{}:{}", hex4(&v), hex4(&d))),
        _ => None,
    };
    Ok(VfIdent {
        bdf: bdf.to_string(),
        id: format!("{}:{}", hex4(&vendor), hex4(&device)),
        iommu_group: fs
            .link_name(&format!("{dir}/iommu_group"))
            .ok()
            .and_then(|g| g.parse().ok()),
        subsystem_id,
    })
}

/// A `pci.cfg` mapping `id` for the VFs `vfs` on node `node` (`mdev 1` for both frameworks:
/// qemu-server then takes `mdev=nvidia-<id>` on the VM's line).
pub fn pve_mapping(id: &str, description: &str, node: &str, vfs: &[VfIdent]) -> String {
    let mut s = format!("{id}\n");
    if !description.is_empty() {
        s.push_str(&format!(
            "\tdescription {}\n",
            description.replace('\n', " ")
        ));
    }
    for v in vfs {
        // Keys in the order PVE writes property strings (sorted).
        let mut parts = vec![format!("id={}", v.id)];
        if let Some(g) = v.iommu_group {
            parts.push(format!("iommugroup={g}"));
        }
        parts.push(format!("node={node}"));
        parts.push(format!("path={}", v.bdf));
        if let Some(sub) = &v.subsystem_id {
            parts.push(format!("subsystem-id={sub}"));
        }
        s.push_str(&format!("\tmap {}\n", parts.join(",")));
    }
    s.push_str("\tmdev 1\n");
    s
}

/// The mdev UUID qemu-server gives `hostpci<index>` of VM `vmid`.
pub fn pve_uuid(index: u32, vmid: u32) -> String {
    format!("{index:08}-0000-0000-0000-{vmid:012}")
}

/// The VM config line for a vGPU at `vf`: with `mdev=nvidia-<type_id>` on an mdev host (the
/// mdev tessera created under [`pve_uuid`] is the one qemu-server attaches), a plain VF on a
/// vendor-VFIO host (the VF already holds its vGPU when the VM starts).
pub fn pve_hostpci(index: u32, vf: &str, framework: Framework, type_id: u32) -> String {
    match framework {
        Framework::Mdev => format!("hostpci{index}: {vf},mdev=nvidia-{type_id},pcie=1"),
        Framework::VendorVfio => format!("hostpci{index}: {vf},pcie=1"),
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A Proxmox hookscript: at `pre-start` it asks tessera for a `type_name` vGPU on `gpu` (at
/// `vf`, and on mdev hosts under the UUID qemu-server will look for), owned by `pve:VMID`;
/// at `post-stop` it releases that VM's vGPUs. Other phases do nothing. `tessera` is the
/// binary's path and `state_dir` tessera's state directory (journal, owners); `mig_backend`
/// (`nvml`) is passed for MIG-backed types, whose GPU instance tessera may have to create.
#[allow(clippy::too_many_arguments)]
pub fn pve_hookscript(
    tessera: &str,
    state_dir: &Path,
    gpu: &str,
    type_name: &str,
    vf: &str,
    framework: Framework,
    hostpci_index: u32,
    mig_backend: Option<&str>,
) -> String {
    let mig = mig_backend
        .map(|m| format!(" --mig-backend {}", sh_quote(m)))
        .unwrap_or_default();
    let uuid = match framework {
        Framework::Mdev => {
            format!(" --uuid \"$(printf '%08d-0000-0000-0000-%012d' {hostpci_index} \"$vmid\")\"")
        }
        Framework::VendorVfio => String::new(),
    };
    format!(
        r#"#!/bin/bash
# tessera vGPU hookscript for Proxmox VE, generated by `tessera vgpu proxmox hookscript`.
# Proxmox runs it as: SCRIPT VMID PHASE (pre-start, post-start, pre-stop, post-stop).
# Install: copy it to a snippets storage (e.g. /var/lib/vz/snippets/tessera-vgpu.sh), make it
# executable, and `qm set VMID --hookscript local:snippets/tessera-vgpu.sh`.
# A failure at pre-start stops the VM from starting: no vGPU, no VM.
set -u
vmid="$1"
phase="$2"
TESSERA="${{TESSERA:-{tessera}}}"
STATE={state}
GPU={gpu}
TYPE={ty}
VF={vf}
case "$phase" in
pre-start)
    exec "$TESSERA" vgpu --sysfs-root /{mig} --state-dir "$STATE" create --gpu "$GPU" --type "$TYPE" --vf "$VF"{uuid} --owner "pve:$vmid"
    ;;
post-stop)
    exec "$TESSERA" vgpu --sysfs-root / --state-dir "$STATE" release --owner "pve:$vmid"
    ;;
*)
    exit 0
    ;;
esac
"#,
        tessera = tessera.replace(['"', '$', '`', '\\'], ""),
        state = sh_quote(&state_dir.display().to_string()),
        gpu = sh_quote(gpu),
        ty = sh_quote(type_name),
        vf = sh_quote(vf),
        mig = mig,
    )
}

fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A VF handle whose address is not `DOMAIN:BUS:SLOT.FUNCTION`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{bdf}` is not a PCI address; expected DOMAIN:BUS:SLOT.FUNCTION, e.g. 0000:41:00.5")]
pub struct BadPciAddress {
    /// The address as given.
    pub bdf: String,
}

/// The libvirt `<hostdev>` element for a vGPU.
pub fn libvirt_hostdev(handle: &Handle) -> Result<String, BadPciAddress> {
    match handle {
        Handle::Mdev { uuid, .. } => Ok(format!(
            "<hostdev mode='subsystem' type='mdev' model='vfio-pci' managed='no'>\n  <source>\n    <address uuid='{}'/>\n  </source>\n</hostdev>\n",
            xml_attr(uuid)
        )),
        Handle::Vf { bdf } => {
            let bad = || BadPciAddress { bdf: bdf.clone() };
            let (dom, rest) = bdf.split_once(':').ok_or_else(bad)?;
            let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
            let (slot, func) = rest.split_once('.').ok_or_else(bad)?;
            Ok(format!(
                "<hostdev mode='subsystem' type='pci' managed='no'>\n  <source>\n    <address domain='0x{}' bus='0x{}' slot='0x{}' function='0x{}'/>\n  </source>\n</hostdev>\n",
                xml_attr(dom),
                xml_attr(bus),
                xml_attr(slot),
                xml_attr(func)
            ))
        }
    }
}

/// Who each vGPU was created for (handle key -> owner), kept in `DIR/vgpu-owners.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owners {
    /// mdev UUID or VF address -> owner (`pve:101`, a user name).
    pub owners: BTreeMap<String, String>,
    #[serde(skip)]
    path: PathBuf,
}

/// The key [`Owners`] uses for a handle.
pub fn handle_key(h: &Handle) -> String {
    match h {
        Handle::Mdev { uuid, .. } => uuid.clone(),
        Handle::Vf { bdf } => bdf.clone(),
    }
}

impl Owners {
    /// Load (or start) the owners file in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Owners> {
        let path = dir.join("vgpu-owners.json");
        let mut o: Owners = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Owners::default(),
            Err(e) => return Err(e),
        };
        o.path = path;
        Ok(o)
    }

    /// Save.
    pub fn save(&self) -> std::io::Result<()> {
        if let Some(d) = self.path.parent() {
            std::fs::create_dir_all(d)?;
        }
        tessera_gpu::sim::write_atomic(
            &self.path,
            serde_json::to_string_pretty(self)
                .expect("serializes")
                .as_bytes(),
        )
    }

    /// Forget vGPUs that no longer exist (`present`: the handle keys there are now).
    pub fn retain_present(&mut self, present: &[String]) {
        self.owners.retain(|k, _| present.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parser that follows PVE's section-config rules for `pci.cfg`: a section header is a
    /// line `^(\S+)\s*$`, properties are `^\t(\S+)\s+(.*)$`.
    fn parse_pve(text: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('\t') {
                let (k, v) = rest
                    .split_once(char::is_whitespace)
                    .expect("property line has a value");
                out.last_mut()
                    .expect("property inside a section")
                    .1
                    .push((k.to_string(), v.trim().to_string()));
            } else {
                assert!(
                    !line.contains(char::is_whitespace),
                    "section header is one word: {line:?}"
                );
                out.push((line.to_string(), Vec::new()));
            }
        }
        out
    }

    #[test]
    fn the_pve_mapping_follows_the_section_config_format() {
        let vfs = vec![
            VfIdent {
                bdf: "0000:41:00.4".into(),
                id: "10de:20b7".into(),
                iommu_group: Some(52),
                subsystem_id: Some("10de:1532".into()),
            },
            VfIdent {
                bdf: "0000:41:00.5".into(),
                id: "10de:20b7".into(),
                iommu_group: None,
                subsystem_id: None,
            },
        ];
        let text = pve_mapping(
            "tessera-a30-0",
            "tessera: A30 at 0000:41:00.0",
            "pve1",
            &vfs,
        );
        let parsed = parse_pve(&text);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, "tessera-a30-0");
        let maps: Vec<&String> = parsed[0]
            .1
            .iter()
            .filter(|(k, _)| k == "map")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(maps.len(), 2);
        for m in maps {
            let kv: BTreeMap<&str, &str> =
                m.split(',').map(|p| p.split_once('=').unwrap()).collect();
            assert_eq!(kv["node"], "pve1");
            let path = kv["path"];
            assert!(
                path.len() == 12
                    && path.as_bytes()[4] == b':'
                    && path.as_bytes()[7] == b':'
                    && path.as_bytes()[10] == b'.',
                "{path}"
            );
            let id = kv["id"];
            assert!(
                id.len() == 9
                    && id
                        .split(':')
                        .all(|h| h.len() == 4 && u16::from_str_radix(h, 16).is_ok()),
                "{id}"
            );
            let keys: Vec<&str> = kv.keys().copied().collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted);
        }
        assert!(parsed[0].1.contains(&("mdev".into(), "1".into())));
    }

    #[test]
    fn pve_uuids_and_hostpci_lines() {
        assert_eq!(pve_uuid(0, 101), "00000000-0000-0000-0000-000000000101");
        assert!(uuid::Uuid::parse_str(&pve_uuid(3, 4242)).is_ok());
        assert_eq!(
            pve_hostpci(0, "0000:41:00.4", Framework::Mdev, 1003),
            "hostpci0: 0000:41:00.4,mdev=nvidia-1003,pcie=1"
        );
        assert_eq!(
            pve_hostpci(1, "0000:41:00.5", Framework::VendorVfio, 1003),
            "hostpci1: 0000:41:00.5,pcie=1"
        );
    }

    #[test]
    fn the_hookscript_asks_tessera_at_pre_start_and_releases_at_post_stop() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let stub = dir.path().join("tessera");
        std::fs::write(
            &stub,
            format!("#!/bin/bash\necho \"$*\" >> {}\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for (fw, want_uuid) in [(Framework::Mdev, true), (Framework::VendorVfio, false)] {
            let _ = std::fs::remove_file(&log);
            let script = dir.path().join("hook.sh");
            std::fs::write(
                &script,
                pve_hookscript(
                    "/usr/local/bin/tessera",
                    Path::new("/var/lib/tessera/vgpu"),
                    "0000:41:00.0",
                    "A30-1-6C",
                    "0000:41:00.4",
                    fw,
                    0,
                    Some("nvml"),
                ),
            )
            .unwrap();
            let run = |phase: &str| {
                std::process::Command::new("bash")
                    .arg(&script)
                    .args(["101", phase])
                    .env("TESSERA", &stub)
                    .status()
                    .unwrap()
            };
            assert!(std::process::Command::new("bash")
                .arg("-n")
                .arg(&script)
                .status()
                .unwrap()
                .success());
            for phase in ["pre-start", "post-start", "pre-stop", "post-stop"] {
                assert!(run(phase).success(), "{phase}");
            }
            let calls = std::fs::read_to_string(&log).unwrap();
            let lines: Vec<&str> = calls.lines().collect();
            assert_eq!(
                lines.len(),
                2,
                "only pre-start and post-stop call tessera: {calls}"
            );
            assert!(lines[0].starts_with("vgpu --sysfs-root / --mig-backend nvml --state-dir /var/lib/tessera/vgpu create --gpu 0000:41:00.0 --type A30-1-6C --vf 0000:41:00.4"), "{}", lines[0]);
            assert!(lines[0].ends_with("--owner pve:101"), "{}", lines[0]);
            assert_eq!(
                lines[0].contains("--uuid 00000000-0000-0000-0000-000000000101"),
                want_uuid,
                "{}",
                lines[0]
            );
            assert_eq!(
                lines[1],
                "vgpu --sysfs-root / --state-dir /var/lib/tessera/vgpu release --owner pve:101"
            );
        }
        // A failing tessera at pre-start fails the hook (Proxmox then does not start the VM).
        std::fs::write(&stub, "#!/bin/bash\nexit 1\n").unwrap();
        let script = dir.path().join("hook.sh");
        let st = std::process::Command::new("bash")
            .arg(&script)
            .args(["101", "pre-start"])
            .env("TESSERA", &stub)
            .status()
            .unwrap();
        assert!(!st.success());
    }

    #[test]
    fn libvirt_hostdev_xml_matches_the_domain_format() {
        let xml = libvirt_hostdev(&Handle::Mdev {
            uuid: "7e55e1a0-0000-4000-8000-000000410004".into(),
            parent: "0000:41:00.4".into(),
        })
        .unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let h = doc.root_element();
        assert_eq!(h.tag_name().name(), "hostdev");
        assert_eq!(
            (
                h.attribute("mode"),
                h.attribute("type"),
                h.attribute("model")
            ),
            (Some("subsystem"), Some("mdev"), Some("vfio-pci"))
        );
        let addr = h.descendants().find(|n| n.has_tag_name("address")).unwrap();
        assert_eq!(addr.parent().unwrap().tag_name().name(), "source");
        assert!(uuid::Uuid::parse_str(addr.attribute("uuid").unwrap()).is_ok());

        let xml = libvirt_hostdev(&Handle::Vf {
            bdf: "0000:41:00.5".into(),
        })
        .unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let h = doc.root_element();
        assert_eq!(
            (
                h.attribute("mode"),
                h.attribute("type"),
                h.attribute("managed")
            ),
            (Some("subsystem"), Some("pci"), Some("no"))
        );
        let addr = h.descendants().find(|n| n.has_tag_name("address")).unwrap();
        let num = |a: &str| {
            u32::from_str_radix(addr.attribute(a).unwrap().trim_start_matches("0x"), 16).unwrap()
        };
        assert_eq!(
            (num("domain"), num("bus"), num("slot"), num("function")),
            (0, 0x41, 0, 5)
        );
        assert_eq!(
            libvirt_hostdev(&Handle::Vf {
                bdf: "nonsense".into()
            }),
            Err(BadPciAddress {
                bdf: "nonsense".into()
            })
        );
    }
}
