//! The cgroup v2 device program: a `BPF_PROG_TYPE_CGROUP_DEVICE` program built from a
//! [`DeviceRule`] allow-list, loaded with `bpf(BPF_PROG_LOAD)` and attached to a lease's
//! cgroup directory with `bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE)`.
//!
//! The kernel runs the program on every device access check (`open`, `mknod`) of a process
//! in the cgroup, with `r1` pointing at `struct bpf_cgroup_dev_ctx { u32 access_type; u32
//! major; u32 minor; }` (`access_type`: low 16 bits the device type, `BPF_DEVCG_DEV_BLOCK`
//! 1 / `CHAR` 2; high 16 bits the access, `ACC_MKNOD` 1 / `READ` 2 / `WRITE` 4); it returns
//! 1 to allow and 0 to deny (`EPERM`).
//!
//! Why hand-assembled: the crates that load BPF need either an ELF object made by a
//! build-time BPF toolchain (aya) or the libbpf C library (libbpf-rs); this program is a
//! dozen instructions per rule, so a small encoder ([`program`], unit-tested instruction by
//! instruction) and two `bpf(2)` calls through `libc::syscall` do the job with no toolchain
//! or C dependency. The unsafe is limited to those two calls.
//!
//! Lifetime: the attachment holds the program; the loaded program's descriptor is closed
//! right after attaching. The kernel releases the program when the cgroup directory is
//! removed, so a lease's rules stay in force across a daemon restart and end with its cgroup
//! (no window in which a lease's processes run without them).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::devices::DeviceRule;
use crate::error::IsolationError;

/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` attach type.
const ATTACH_CGROUP_DEVICE: u32 = 6;
/// `bpf(2)` commands.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
/// `BPF_DEVCG_DEV_CHAR`.
pub const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_DEV_BLOCK`.
pub const DEV_BLOCK: u32 = 1;
/// `BPF_DEVCG_ACC_MKNOD`, `_READ`, `_WRITE`.
pub const ACC_MKNOD: u32 = 1;
/// Read access.
pub const ACC_READ: u32 = 2;
/// Write access.
pub const ACC_WRITE: u32 = 4;
/// `rwm`.
pub const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    pub regs: u8,
    /// Signed offset (jumps: instructions to skip; loads: byte offset).
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

// Opcodes (class | op | source) from the kernel's `bpf.h`/`bpf_common.h`.
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ALU64_MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const ALU64_AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const ALU64_RSH_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// One allow rule as the program checks it: device type, major, minor (`None`: any), and
/// the accesses it permits (a subset of [`ACC_ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfRule {
    /// [`DEV_CHAR`] or [`DEV_BLOCK`].
    pub dev_type: u32,
    /// Major number; `None` for any.
    pub major: Option<u32>,
    /// Minor number; `None` for any.
    pub minor: Option<u32>,
    /// Allowed accesses (`ACC_*` bits).
    pub access: u32,
}

impl From<&DeviceRule> for BpfRule {
    /// A [`DeviceRule`] is a character device with `rwm`, like its v1 `allow_line`.
    fn from(r: &DeviceRule) -> BpfRule {
        BpfRule {
            dev_type: DEV_CHAR,
            major: Some(r.major),
            minor: r.minor,
            access: ACC_ALL,
        }
    }
}

/// Device numbers as jump immediates: majors are 12 bits and minors 20 bits in the kernel's
/// `dev_t`, so every real number fits an `i32` immediate (compared after sign extension).
fn imm(v: u32) -> i32 {
    v as i32
}

/// The program for an allow-list: allow (return 1) when any rule matches, else deny.
///
/// Registers: `r2` = access bits, `r3` = device type, `r4` = major, `r5` = minor, `r6`
/// scratch. Per rule, each `if … goto next` skips to the following rule's first instruction.
pub fn program(rules: &[BpfRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0), // r2 = ctx->access_type
        insn(ALU64_MOV_X, 3, 2, 0, 0),
        insn(ALU64_AND_K, 3, 0, 0, 0xffff), // r3 = type
        insn(ALU64_RSH_K, 2, 0, 0, 16),     // r2 = access
        insn(LDX_MEM_W, 4, 1, 4, 0),        // r4 = ctx->major
        insn(LDX_MEM_W, 5, 1, 8, 0),        // r5 = ctx->minor
    ];
    for r in rules {
        // Each check is a jump whose target is the end of this rule's block: build the block
        // with placeholder offsets, then fix them once its length is known.
        let mut block: Vec<Insn> = vec![insn(JMP_JNE_K, 3, 0, 0, imm(r.dev_type))];
        if let Some(major) = r.major {
            block.push(insn(JMP_JNE_K, 4, 0, 0, imm(major)));
        }
        if let Some(minor) = r.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, imm(minor)));
        }
        let extra = ACC_ALL & !r.access;
        if extra != 0 {
            // Deny (for this rule) when any requested access is outside the rule's.
            block.push(insn(ALU64_MOV_X, 6, 2, 0, 0));
            block.push(insn(ALU64_AND_K, 6, 0, 0, imm(extra)));
            block.push(insn(JMP_JNE_K, 6, 0, 0, 0));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

/// The prefix of `union bpf_attr` that `BPF_PROG_LOAD` reads (the kernel accepts a shorter
/// attr than its own and treats the rest as zero).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The part of `union bpf_attr` that `BPF_PROG_ATTACH` reads.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf_error(path: &Path, what: &str, err: std::io::Error, log: &str) -> IsolationError {
    let log = log.trim();
    IsolationError::Bpf {
        path: path.to_path_buf(),
        what: if log.is_empty() {
            what.to_string()
        } else {
            format!("{what}; verifier log:\n{log}")
        },
        source: err,
    }
}

/// Load `insns` as a cgroup device program; on failure, retry with the verifier log on and
/// return it in the error. `path` names the cgroup the program is for (messages only).
pub fn load(insns: &[Insn], path: &Path) -> Result<OwnedFd, IsolationError> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"tessera_devs");
    let attempt = |log: &mut [u8]| -> Result<OwnedFd, std::io::Error> {
        let attr = ProgLoadAttr {
            prog_type: PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the pointers in it
        // (instructions, license, log buffer) outlive the call and their lengths are the ones
        // given; the kernel writes only into `log` (at most `log_size` bytes).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a non-negative return of BPF_PROG_LOAD is a new descriptor owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    match attempt(&mut []) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            let mut log = vec![0u8; 64 * 1024];
            match attempt(&mut log) {
                Ok(fd) => Ok(fd),
                Err(_) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    Err(bpf_error(
                        path,
                        "cannot load the cgroup device program (bpf BPF_PROG_LOAD; needs root or CAP_BPF+CAP_SYS_ADMIN)",
                        first,
                        &String::from_utf8_lossy(&log[..end]),
                    ))
                }
            }
        }
    }
}

/// Attach a loaded device program to the cgroup directory `dir`, replacing the one there (a
/// non-multi attachment: one program per cgroup).
pub fn attach(prog: &OwnedFd, dir: &Path) -> Result<(), IsolationError> {
    let cg = std::fs::File::open(dir).map_err(|e| IsolationError::io(dir, e))?;
    let attr = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: ATTACH_CGROUP_DEVICE,
        attach_flags: 0,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed, holding two descriptors
    // that stay open for the call; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(bpf_error(
            dir,
            "cannot attach the device program to the cgroup (bpf BPF_PROG_ATTACH BPF_CGROUP_DEVICE)",
            std::io::Error::last_os_error(),
            "",
        ));
    }
    Ok(())
}

/// Build, load and attach the program for `allow` to `dir`; the descriptor is closed after
/// attaching (the attachment keeps the program).
pub fn install(dir: &Path, allow: &[DeviceRule]) -> Result<(), IsolationError> {
    let rules: Vec<BpfRule> = allow.iter().map(BpfRule::from).collect();
    let fd = load(&program(&rules), dir)?;
    attach(&fd, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter of exactly the opcodes [`program`] emits, so the encoded stream is
    /// checked for what it decides, not only for its bytes.
    fn run(p: &[Insn], dev_type: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | dev_type, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                ALU64_MOV_X => r[dst] = r[src],
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                ALU64_AND_K => r[dst] &= i.imm as i64 as u64,
                ALU64_RSH_K => r[dst] >>= i.imm,
                JMP_JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                JMP_EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn the_instruction_stream_for_one_exact_rule() {
        let p = program(&[BpfRule {
            dev_type: DEV_CHAR,
            major: Some(195),
            minor: Some(255),
            access: ACC_ALL,
        }]);
        let want = [
            (0x61, 0x12, 0, 0),
            (0xbf, 0x23, 0, 0),
            (0x57, 0x03, 0, 0xffff),
            (0x77, 0x02, 0, 16),
            (0x61, 0x14, 4, 0),
            (0x61, 0x15, 8, 0),
            (0x55, 0x03, 4, 2),   // type != char: skip the 4 left of the block
            (0x55, 0x04, 3, 195), // major
            (0x55, 0x05, 2, 255), // minor
            (0xb7, 0x00, 0, 1),
            (0x95, 0x00, 0, 0),
            (0xb7, 0x00, 0, 0),
            (0x95, 0x00, 0, 0),
        ];
        let got: Vec<(u8, u8, i16, i32)> =
            p.iter().map(|i| (i.code, i.regs, i.off, i.imm)).collect();
        assert_eq!(got, want);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn wildcards_and_access_subsets_decide_as_the_rules_say() {
        let rules = [
            BpfRule {
                dev_type: DEV_CHAR,
                major: Some(1),
                minor: Some(3),
                access: ACC_ALL,
            },
            BpfRule {
                dev_type: DEV_CHAR,
                major: Some(136),
                minor: None,
                access: ACC_ALL,
            },
            BpfRule {
                dev_type: DEV_CHAR,
                major: Some(10),
                minor: Some(200),
                access: ACC_READ,
            },
            BpfRule {
                dev_type: DEV_BLOCK,
                major: None,
                minor: None,
                access: ACC_MKNOD,
            },
        ];
        let p = program(&rules);
        let rw = ACC_READ | ACC_WRITE;
        // Exact rule.
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 5), 0);
        assert_eq!(
            run(&p, DEV_BLOCK, rw, 1, 3),
            0,
            "a block device 1:3 is not /dev/null"
        );
        // Any minor of 136.
        assert_eq!(run(&p, DEV_CHAR, ACC_ALL, 136, 0), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_ALL, 136, 9999), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_ALL, 137, 0), 0);
        // Read-only rule: read yes, write or mknod no.
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 10, 200), 1);
        assert_eq!(run(&p, DEV_CHAR, rw, 10, 200), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 10, 200), 0);
        // Any block device, mknod only.
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 0);
        // No rules: deny everything.
        assert_eq!(run(&program(&[]), DEV_CHAR, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn a_device_rule_becomes_a_char_rwm_rule() {
        let d = DeviceRule {
            major: 136,
            minor: None,
            path: "/dev/pts/*".into(),
        };
        assert_eq!(
            BpfRule::from(&d),
            BpfRule {
                dev_type: DEV_CHAR,
                major: Some(136),
                minor: None,
                access: ACC_ALL
            }
        );
    }
}
