//! The vGPU agent's journal: an intent written (and synced) before each write to the host,
//! an outcome after, as the MIG agent's journal does. Replay never re-runs anything: it tells
//! the agent which ops a crash cut short, and the agent observes the host to see whether they
//! took effect.
//!
//! File format (`DIR/vgpu-journal.jsonl`): one record per line, `CRC32HEX JSON\n`, the CRC-32
//! (IEEE, `tessera_agent::journal::crc32`) over the JSON bytes; the first line is the header
//! `{"format":"tessera-vgpu-journal","version":1}`. A final line without its newline is an
//! append cut short by a crash: it is dropped. Any other bad line is an error that names the
//! byte offset; nothing is guessed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_agent::journal::crc32;

use crate::agent::VOp;

/// The journal file's name inside its directory.
pub const JOURNAL_FILE: &str = "vgpu-journal.jsonl";
const FORMAT: &str = "tessera-vgpu-journal";

/// One record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// An op about to be performed.
    Intent {
        /// Sequence number.
        seq: u64,
        /// The op.
        op: VOp,
    },
    /// How an intent ended.
    Outcome {
        /// The intent's sequence number.
        intent: u64,
        /// `done`, `failed: ...`, or `recovered: applied|not applied`.
        result: String,
    },
}

/// Journal errors.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing failed.
    #[error("vGPU journal {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A damaged record.
    #[error("vGPU journal {} is damaged at byte {offset}: {detail}; move the file aside to start a new journal", .path.display())]
    Torn {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad line.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
}

/// Where the agent records its ops; each call is durable when it returns.
pub trait Journal {
    /// Record the intent to perform `op`; its sequence number.
    fn intent(&mut self, op: &VOp) -> Result<u64, JournalError>;
    /// Record how intent `seq` ended.
    fn outcome(&mut self, seq: u64, result: &str) -> Result<(), JournalError>;
    /// Every record, in order.
    fn records(&self) -> Vec<Record>;
}

/// Intents without an outcome: the ops a crash cut short.
pub fn dangling(j: &dyn Journal) -> Vec<(u64, VOp)> {
    let recs = j.records();
    let done: std::collections::BTreeSet<u64> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Outcome { intent, .. } => Some(*intent),
            Record::Intent { .. } => None,
        })
        .collect();
    recs.into_iter()
        .filter_map(|r| match r {
            Record::Intent { seq, op } if !done.contains(&seq) => Some((seq, op)),
            _ => None,
        })
        .collect()
}

/// A journal in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemJournal {
    records: Vec<Record>,
}

impl MemJournal {
    /// An empty journal.
    pub fn new() -> MemJournal {
        MemJournal::default()
    }
}

impl Journal for MemJournal {
    fn intent(&mut self, op: &VOp) -> Result<u64, JournalError> {
        let seq = self.records.len() as u64 + 1;
        self.records.push(Record::Intent {
            seq,
            op: op.clone(),
        });
        Ok(seq)
    }
    fn outcome(&mut self, seq: u64, result: &str) -> Result<(), JournalError> {
        self.records.push(Record::Outcome {
            intent: seq,
            result: result.to_string(),
        });
        Ok(())
    }
    fn records(&self) -> Vec<Record> {
        self.records.clone()
    }
}

/// The journal file (see the module docs).
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    file: File,
    records: Vec<Record>,
    next: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

fn line(json: &str) -> String {
    format!("{:08x} {json}\n", crc32(json.as_bytes()))
}

impl FileJournal {
    /// Open (or create) the journal in `dir`.
    pub fn open(dir: &Path) -> Result<FileJournal, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut records = Vec::new();
        let mut good = 0usize;
        if bytes.is_empty() {
            let h = serde_json::to_string(&Header {
                format: FORMAT.into(),
                version: 1,
            })
            .expect("header serializes");
            file.write_all(line(&h).as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        } else {
            let mut first = true;
            while good < bytes.len() {
                let rest = &bytes[good..];
                let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                    break; // an append cut short: dropped below
                };
                let torn = |detail: String| JournalError::Torn {
                    path: path.clone(),
                    offset: good as u64,
                    detail,
                };
                let text =
                    std::str::from_utf8(&rest[..nl]).map_err(|_| torn("not UTF-8".into()))?;
                let (crc, json) = text
                    .split_once(' ')
                    .ok_or_else(|| torn("no checksum".into()))?;
                if u32::from_str_radix(crc, 16).ok() != Some(crc32(json.as_bytes())) {
                    return Err(torn("checksum mismatch".into()));
                }
                if first {
                    let h: Header =
                        serde_json::from_str(json).map_err(|e| torn(format!("bad header: {e}")))?;
                    if h.format != FORMAT || h.version != 1 {
                        return Err(torn(format!(
                            "format {} version {} is not {FORMAT} 1",
                            h.format, h.version
                        )));
                    }
                    first = false;
                } else {
                    records.push(
                        serde_json::from_str(json).map_err(|e| torn(format!("bad record: {e}")))?,
                    );
                }
                good += nl + 1;
            }
            if good < bytes.len() {
                file.set_len(good as u64).map_err(io)?;
                file.sync_all().map_err(io)?;
            }
        }
        let next = records
            .iter()
            .filter_map(|r| match r {
                Record::Intent { seq, .. } => Some(*seq),
                Record::Outcome { .. } => None,
            })
            .max()
            .unwrap_or(0)
            + 1;
        Ok(FileJournal {
            path,
            file,
            records,
            next,
        })
    }

    fn append(&mut self, r: Record) -> Result<(), JournalError> {
        let json = serde_json::to_string(&r).expect("records serialize");
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(line(&json).as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.records.push(r);
        Ok(())
    }
}

impl Journal for FileJournal {
    fn intent(&mut self, op: &VOp) -> Result<u64, JournalError> {
        let seq = self.next;
        self.next += 1;
        self.append(Record::Intent {
            seq,
            op: op.clone(),
        })?;
        Ok(seq)
    }
    fn outcome(&mut self, seq: u64, result: &str) -> Result<(), JournalError> {
        self.append(Record::Outcome {
            intent: seq,
            result: result.to_string(),
        })
    }
    fn records(&self) -> Vec<Record> {
        self.records.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_cut_final_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let op = VOp::SetVfs {
            gpu: "0000:41:00.0".into(),
            count: 4,
        };
        {
            let mut j = FileJournal::open(dir.path()).unwrap();
            let s = j.intent(&op).unwrap();
            j.outcome(s, "done").unwrap();
            j.intent(&op).unwrap();
        }
        let path = dir.path().join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"0badc0de {\"type\":\"inte").unwrap();
        drop(f);
        let j = FileJournal::open(dir.path()).unwrap();
        assert_eq!(j.records().len(), 3);
        assert_eq!(dangling(&j), vec![(2, op.clone())]);
        // A damaged middle line is an error naming its offset.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replacen("done", "dune", 1);
        std::fs::write(&path, text).unwrap();
        let e = FileJournal::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
    }
}
