//! The operation journal: every op is written as an *intent* before the backend is called and
//! as an *outcome* after. It is a record for recovery and audit, never a script: replay does
//! not re-run anything, it only tells the reconciler which ops were cut short, and the
//! reconciler then observes the GPU and decides from what it sees.
//!
//! **Write order** (per op): append the intent, fsync; call the backend; append the outcome,
//! fsync. A crash can therefore leave an intent without outcome (the op may or may not have
//! taken effect), never an outcome without intent.
//!
//! **File format** ([`FileJournal`], `DIR/journal.jsonl`): one record per line,
//! `CRC32HEX JSON\n`, where the CRC-32 (IEEE) covers the JSON bytes. The first line is the
//! header `{"format":"tessera-journal","version":1}`; every entry carries its own `v`
//! ([`JOURNAL_VERSION`]) and a sequence number. On open:
//! - a final line without its newline is an append cut short by a crash: it is dropped (its
//!   intent never reached fsync, so its op never ran) and reported by [`FileJournal::repaired`];
//! - any other bad line (checksum mismatch, bad JSON) is [`JournalError::Torn`], and an entry of
//!   another version is [`JournalError::UnknownVersion`], each naming the file and byte offset.
//!   Nothing is guessed; the fix is to move the file aside.
//!
//! [`Journal`] is small and object-safe so that the server can implement it on SQLite.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::op::OpRecord;

/// The entry format version this build reads and writes.
pub const JOURNAL_VERSION: u32 = 1;
/// The journal file's name inside its directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";
const FORMAT: &str = "tessera-journal";

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Format version ([`JOURNAL_VERSION`]).
    pub v: u32,
    /// Sequence number, from 1, increasing by one per entry.
    pub seq: u64,
    /// What the entry says.
    #[serde(flatten)]
    pub kind: EntryKind,
}

/// Intent or outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    /// An op about to be performed.
    Intent {
        /// The op.
        op: OpRecord,
    },
    /// How an intent ended.
    Outcome {
        /// Sequence number of the intent.
        intent: u64,
        /// The result.
        outcome: Outcome,
    },
}

/// How an op ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// The backend call succeeded.
    Done,
    /// The backend call failed.
    Failed {
        /// The backend error's kind (`in_use`, `transient`, ...).
        kind: String,
        /// Its message.
        error: String,
    },
    /// The intent had no outcome (a crash); a later run observed the GPU and found the op's
    /// effect present (`applied`) or absent.
    Recovered {
        /// Whether the effect was visible.
        applied: bool,
    },
}

/// Journal errors, naming the file and offset where it matters.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing failed.
    #[error("journal {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A record is cut or corrupt.
    #[error("journal {} is damaged at byte {offset}: {detail}; move the file aside to start a new journal", .path.display())]
    Torn {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad line.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A record of a version this build does not read.
    #[error("journal {} has a version {found} record at byte {offset}; this build reads version {JOURNAL_VERSION} (use a matching tessera, or move the file aside)", .path.display())]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// Its version.
        found: u32,
    },
    /// An outcome names an intent the journal does not hold.
    #[error("journal: outcome for unknown intent {seq}")]
    UnknownIntent {
        /// The sequence number given.
        seq: u64,
    },
}

/// Where ops are recorded. Implementations must make each call durable before returning.
pub trait Journal {
    /// Append the intent to perform `op`; returns its sequence number.
    fn intent(&mut self, op: &OpRecord) -> Result<u64, JournalError>;
    /// Append the outcome of intent `seq`.
    fn outcome(&mut self, seq: u64, outcome: &Outcome) -> Result<(), JournalError>;
    /// Every entry, in write order.
    fn entries(&self) -> Result<Vec<Entry>, JournalError>;
}

/// Intents that have no outcome, in order: the ops a crash cut short.
pub fn dangling(journal: &dyn Journal) -> Result<Vec<(u64, OpRecord)>, JournalError> {
    let entries = journal.entries()?;
    let done: std::collections::BTreeSet<u64> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Outcome { intent, .. } => Some(*intent),
            EntryKind::Intent { .. } => None,
        })
        .collect();
    Ok(entries
        .into_iter()
        .filter_map(|e| match e.kind {
            EntryKind::Intent { op } if !done.contains(&e.seq) => Some((e.seq, op)),
            _ => None,
        })
        .collect())
}

/// A journal in memory (tests; runs without `--journal`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemJournal {
    entries: Vec<Entry>,
}

impl MemJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, kind: EntryKind) -> u64 {
        let seq = self.entries.len() as u64 + 1;
        self.entries.push(Entry {
            v: JOURNAL_VERSION,
            seq,
            kind,
        });
        seq
    }
}

impl Journal for MemJournal {
    fn intent(&mut self, op: &OpRecord) -> Result<u64, JournalError> {
        Ok(self.push(EntryKind::Intent { op: op.clone() }))
    }

    fn outcome(&mut self, seq: u64, outcome: &Outcome) -> Result<(), JournalError> {
        if !self.entries.iter().any(|e| e.seq == seq) {
            return Err(JournalError::UnknownIntent { seq });
        }
        self.push(EntryKind::Outcome {
            intent: seq,
            outcome: outcome.clone(),
        });
        Ok(())
    }

    fn entries(&self) -> Result<Vec<Entry>, JournalError> {
        Ok(self.entries.clone())
    }
}

/// The file journal (`DIR/journal.jsonl`, see the module docs).
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    file: File,
    entries: Vec<Entry>,
    repaired: Option<u64>,
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in bytes {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn line(json: &str) -> String {
    format!("{:08x} {json}\n", crc32(json.as_bytes()))
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

impl FileJournal {
    /// Open (or create) the journal in `dir`, checking every record.
    pub fn open(dir: &Path) -> Result<FileJournal, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let exists = path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        if !exists || fs::metadata(&path).map_err(io)?.len() == 0 {
            let header = serde_json::to_string(&Header {
                format: FORMAT.into(),
                version: JOURNAL_VERSION,
            })
            .expect("serializes");
            file.write_all(line(&header).as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            return Ok(FileJournal {
                path,
                file,
                entries: Vec::new(),
                repaired: None,
            });
        }
        let bytes = fs::read(&path).map_err(io)?;
        let (entries, good_len) = parse(&path, &bytes)?;
        let mut repaired = None;
        if good_len < bytes.len() as u64 {
            file.set_len(good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
            repaired = Some(good_len);
        }
        Ok(FileJournal {
            path,
            file,
            entries,
            repaired,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The byte offset where a cut-short final line was dropped at open, if one was.
    pub fn repaired(&self) -> Option<u64> {
        self.repaired
    }

    fn append(&mut self, kind: EntryKind) -> Result<u64, JournalError> {
        let seq = self.entries.last().map_or(1, |e| e.seq + 1);
        let entry = Entry {
            v: JOURNAL_VERSION,
            seq,
            kind,
        };
        let json = serde_json::to_string(&entry).expect("entries serialize");
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(line(&json).as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.entries.push(entry);
        Ok(seq)
    }
}

/// Parse a journal file: its entries and the length of the well-formed prefix.
fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<Entry>, u64), JournalError> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    let mut first = true;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // A final line without newline: an append cut short.
            return Ok((entries, offset as u64));
        };
        let torn = |detail: String| JournalError::Torn {
            path: path.to_path_buf(),
            offset: offset as u64,
            detail,
        };
        let text = std::str::from_utf8(&rest[..nl]).map_err(|_| torn("not UTF-8".into()))?;
        let (crc, json) = text
            .split_once(' ')
            .ok_or_else(|| torn("no checksum field".into()))?;
        let want = u32::from_str_radix(crc, 16)
            .map_err(|_| torn(format!("bad checksum field `{crc}`")))?;
        let got = crc32(json.as_bytes());
        if want != got {
            return Err(torn(format!(
                "checksum mismatch (recorded {want:08x}, computed {got:08x})"
            )));
        }
        if first {
            let h: Header = serde_json::from_str(json)
                .map_err(|e| torn(format!("not a tessera journal header: {e}")))?;
            if h.format != FORMAT {
                return Err(torn(format!("format `{}` is not `{FORMAT}`", h.format)));
            }
            if h.version != JOURNAL_VERSION {
                return Err(JournalError::UnknownVersion {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                    found: h.version,
                });
            }
            first = false;
        } else {
            let v: serde_json::Value =
                serde_json::from_str(json).map_err(|e| torn(format!("bad JSON: {e}")))?;
            let version = v.get("v").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
            if version != JOURNAL_VERSION {
                return Err(JournalError::UnknownVersion {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                    found: version,
                });
            }
            let e: Entry =
                serde_json::from_value(v).map_err(|e| torn(format!("unknown record: {e}")))?;
            entries.push(e);
        }
        offset += nl + 1;
    }
    Ok((entries, offset as u64))
}

impl Journal for FileJournal {
    fn intent(&mut self, op: &OpRecord) -> Result<u64, JournalError> {
        self.append(EntryKind::Intent { op: op.clone() })
    }

    fn outcome(&mut self, seq: u64, outcome: &Outcome) -> Result<(), JournalError> {
        if !self.entries.iter().any(|e| e.seq == seq) {
            return Err(JournalError::UnknownIntent { seq });
        }
        self.append(EntryKind::Outcome {
            intent: seq,
            outcome: outcome.clone(),
        })
        .map(|_| ())
    }

    fn entries(&self) -> Result<Vec<Entry>, JournalError> {
        Ok(self.entries.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(start: u8) -> OpRecord {
        OpRecord::CreateGi {
            gpu: 0,
            profile: "1g.10gb".into(),
            start,
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn entries_survive_reopen_and_dangling_intents_are_found() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = FileJournal::open(dir.path()).unwrap();
            let a = j.intent(&op(0)).unwrap();
            j.outcome(a, &Outcome::Done).unwrap();
            j.intent(&op(1)).unwrap();
            assert!(matches!(
                j.outcome(99, &Outcome::Done),
                Err(JournalError::UnknownIntent { seq: 99 })
            ));
        }
        let j = FileJournal::open(dir.path()).unwrap();
        assert_eq!(j.entries().unwrap().len(), 3);
        assert_eq!(dangling(&j).unwrap(), vec![(3, op(1))]);
        assert_eq!(j.repaired(), None);
    }

    #[test]
    fn a_cut_short_final_line_is_dropped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = FileJournal::open(dir.path()).unwrap();
            j.intent(&op(0)).unwrap();
        }
        let path = dir.path().join(JOURNAL_FILE);
        let good = fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"1234abcd {\"v\":1,\"seq\":2,\"ty").unwrap();
        drop(f);
        let mut j = FileJournal::open(dir.path()).unwrap();
        assert_eq!(j.repaired(), Some(good));
        assert_eq!(j.intent(&op(2)).unwrap(), 2);
        assert_eq!(
            FileJournal::open(dir.path())
                .unwrap()
                .entries()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn corrupt_and_unknown_records_name_the_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = FileJournal::open(dir.path()).unwrap();
            j.intent(&op(0)).unwrap();
            j.intent(&op(1)).unwrap();
        }
        let path = dir.path().join(JOURNAL_FILE);
        let text = fs::read_to_string(&path).unwrap();
        let second = text.find('\n').unwrap() + 1;
        let flipped = text.replacen("\"start\":0", "\"start\":5", 1);
        fs::write(&path, &flipped).unwrap();
        let e = FileJournal::open(dir.path()).unwrap_err();
        assert!(
            matches!(e, JournalError::Torn { offset, .. } if offset == second as u64),
            "{e}"
        );
        assert!(
            e.to_string().contains("journal.jsonl") && e.to_string().contains("checksum"),
            "{e}"
        );

        let v2 = serde_json::json!({"v": 2, "seq": 1, "type": "intent", "op": {"op": "create_gi", "gpu": 0, "profile": "x", "start": 0}}).to_string();
        let header = text.lines().next().unwrap();
        fs::write(&path, format!("{header}\n{}", line(&v2))).unwrap();
        let e = FileJournal::open(dir.path()).unwrap_err();
        assert!(
            matches!(e, JournalError::UnknownVersion { found: 2, .. }),
            "{e}"
        );

        let weird = serde_json::json!({"v": 1, "seq": 1, "type": "teleport"}).to_string();
        fs::write(&path, format!("{header}\n{}", line(&weird))).unwrap();
        let e = FileJournal::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("unknown record"), "{e}");
    }
}
