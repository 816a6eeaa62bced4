//! The daemon's state in SQLite (`<state dir>/tessera.db`): requests and their leases, each
//! GPU's desired layout, the agent's journal, drained GPUs and counters.
//!
//! # Format
//! `meta.schema_version` is [`SCHEMA_VERSION`]; a database with another version is refused with
//! an error naming the file (no silent migration). The database runs in WAL mode with
//! `synchronous=FULL`, and every change is one transaction, so a `kill -9` at any moment
//! leaves either the state before or the state after each change.
//!
//! # Tables
//! - `requests`: one row per request; its `id` is also its lease's ID and its arrival order.
//!   `state` is `queued`, `leased`, `done`, `cancelled` or `expired`; `slice` and `env` (JSON)
//!   are set when it is leased. `pid`/`pid_start` identify the client process. The `ask` and
//!   `slice` columns hold the store's own row types ([`StoredAsk`], [`StoredSlice`]), not the
//!   API's: their JSON is fixed by the schema version (the one version 1 has always written,
//!   e.g. `{"kind":"mig","profile":"3g.40gb"}`), whatever the API's types become.
//! - `desired`: per GPU, the layout the daemon wants (JSON list of `PROFILE@START`). Written
//!   *before* the agent starts changing the GPU, so a restart knows where it was going.
//! - `journal`: the agent's records, append-only: an *intent* before each operation on a GPU,
//!   an *outcome* after it (the record body is the agent's JSON entry). Each row carries an
//!   FNV-1a checksum of its GPU and body; a row whose checksum does not match is reported by
//!   sequence number, never trusted.
//! - `gpus`: drained flags. `counters`: re-partitions and failed operations.
//!
//! # Write order
//! 1. submit: insert the `queued` row (the client gets its ID only after the commit);
//! 2. re-partition: write `desired`, then per operation an intent record → backend call →
//!    an outcome record;
//! 3. grant: `queued` → `leased` with the slice, only if still `queued` (a cancel may win);
//! 4. end: `leased`/`queued` → `done`/`cancelled`/`expired`, only if still active.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use tessera_planner::GpuMode;

use crate::error::ServerError;
use crate::wire::{RequestState, Slice, SliceAsk};

/// The stored form of what a request asks (column `requests.ask`), converted to and from the
/// API's [`SliceAsk`] at the store's edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredAsk {
    /// A MIG instance of this profile.
    Mig {
        /// Profile name.
        profile: String,
    },
    /// Device memory (MIG or MPS).
    Mem {
        /// MiB.
        memory_mib: u64,
        /// SM percentage for MPS.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sm_percent: Option<u8>,
    },
    /// An MPS client.
    Mps {
        /// MiB.
        memory_mib: u64,
        /// SM percentage.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sm_percent: Option<u8>,
    },
    /// A time-slice replica.
    Share,
}

impl From<&SliceAsk> for StoredAsk {
    fn from(a: &SliceAsk) -> Self {
        match a.clone() {
            SliceAsk::Mig { profile } => StoredAsk::Mig { profile },
            SliceAsk::Mem {
                memory_mib,
                sm_percent,
            } => StoredAsk::Mem {
                memory_mib,
                sm_percent,
            },
            SliceAsk::Mps {
                memory_mib,
                sm_percent,
            } => StoredAsk::Mps {
                memory_mib,
                sm_percent,
            },
            SliceAsk::Share => StoredAsk::Share,
        }
    }
}

impl From<StoredAsk> for SliceAsk {
    fn from(a: StoredAsk) -> Self {
        match a {
            StoredAsk::Mig { profile } => SliceAsk::Mig { profile },
            StoredAsk::Mem {
                memory_mib,
                sm_percent,
            } => SliceAsk::Mem {
                memory_mib,
                sm_percent,
            },
            StoredAsk::Mps {
                memory_mib,
                sm_percent,
            } => SliceAsk::Mps {
                memory_mib,
                sm_percent,
            },
            StoredAsk::Share => SliceAsk::Share,
        }
    }
}

/// The stored form of a granted slice (column `requests.slice`), converted to and from the
/// API's [`Slice`] at the store's edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredSlice {
    /// A MIG GPU instance.
    Mig {
        /// GPU index.
        gpu: u32,
        /// Profile name.
        profile: String,
        /// Placement start.
        start: u8,
        /// `MIG-…` UUID.
        uuid: String,
    },
    /// An MPS client share.
    Mps {
        /// GPU index.
        gpu: u32,
        /// MiB.
        memory_mib: u64,
        /// SM percentage.
        sm_percent: u8,
    },
    /// A time-slice replica.
    Timeslice {
        /// GPU index.
        gpu: u32,
        /// Replica number.
        replica: u32,
    },
}

impl From<&Slice> for StoredSlice {
    fn from(s: &Slice) -> Self {
        match s.clone() {
            Slice::Mig {
                gpu,
                profile,
                start,
                uuid,
            } => StoredSlice::Mig {
                gpu,
                profile,
                start,
                uuid,
            },
            Slice::Mps {
                gpu,
                memory_mib,
                sm_percent,
            } => StoredSlice::Mps {
                gpu,
                memory_mib,
                sm_percent,
            },
            Slice::Timeslice { gpu, replica } => StoredSlice::Timeslice { gpu, replica },
        }
    }
}

impl From<StoredSlice> for Slice {
    fn from(s: StoredSlice) -> Self {
        match s {
            StoredSlice::Mig {
                gpu,
                profile,
                start,
                uuid,
            } => Slice::Mig {
                gpu,
                profile,
                start,
                uuid,
            },
            StoredSlice::Mps {
                gpu,
                memory_mib,
                sm_percent,
            } => Slice::Mps {
                gpu,
                memory_mib,
                sm_percent,
            },
            StoredSlice::Timeslice { gpu, replica } => Slice::Timeslice { gpu, replica },
        }
    }
}

/// The stored spelling of a request's state (column `requests.state`).
fn state_text(s: RequestState) -> &'static str {
    match s {
        RequestState::Queued => "queued",
        RequestState::Leased => "leased",
        RequestState::Done => "done",
        RequestState::Cancelled => "cancelled",
        RequestState::Expired => "expired",
    }
}

/// A stored state's meaning; `None` for a spelling this schema does not have.
fn parse_state(text: &str) -> Option<RequestState> {
    [
        RequestState::Queued,
        RequestState::Leased,
        RequestState::Done,
        RequestState::Cancelled,
        RequestState::Expired,
    ]
    .into_iter()
    .find(|s| state_text(*s) == text)
}

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// One request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    /// ID (arrival order).
    pub id: u64,
    /// Owner uid.
    pub uid: u32,
    /// Owner name.
    pub user: String,
    /// Client PID, when known.
    pub pid: Option<u32>,
    /// Client process start time (clock ticks since boot), when known.
    pub pid_start: Option<u64>,
    /// What is asked.
    pub ask: SliceAsk,
    /// Model restriction.
    pub gpu_model: Option<String>,
    /// Priority.
    pub priority: i32,
    /// Command line (display only).
    pub command: Vec<String>,
    /// State.
    pub state: RequestState,
    /// Submission time (Unix ms).
    pub submitted_ms: u64,
    /// Lease time (Unix ms).
    pub leased_ms: Option<u64>,
    /// End time (Unix ms).
    pub ended_ms: Option<u64>,
    /// The slice, once leased.
    pub slice: Option<Slice>,
    /// CMD's environment, once leased.
    pub env: BTreeMap<String, String>,
    /// CMD's exit code.
    pub exit_code: Option<i32>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// A leased request was cancelled; the client must stop CMD.
    pub cancel_requested: bool,
}

/// A new request before it has an ID.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Owner uid.
    pub uid: u32,
    /// Owner name.
    pub user: String,
    /// Client PID.
    pub pid: Option<u32>,
    /// Client start time.
    pub pid_start: Option<u64>,
    /// Ask.
    pub ask: SliceAsk,
    /// Model restriction.
    pub gpu_model: Option<String>,
    /// Priority.
    pub priority: i32,
    /// Command line.
    pub command: Vec<String>,
    /// Submission time (Unix ms).
    pub submitted_ms: u64,
}

/// A journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    /// Sequence number.
    pub seq: u64,
    /// GPU index.
    pub gpu: u32,
    /// The record (the agent's entry as JSON).
    pub body: String,
    /// When it was written (Unix ms).
    pub at_ms: u64,
}

/// The SQLite state store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid INTEGER NOT NULL,
    user TEXT NOT NULL,
    pid INTEGER,
    pid_start INTEGER,
    ask TEXT NOT NULL,
    gpu_model TEXT,
    priority INTEGER NOT NULL,
    command TEXT NOT NULL,
    state TEXT NOT NULL,
    submitted_ms INTEGER NOT NULL,
    leased_ms INTEGER,
    ended_ms INTEGER,
    slice TEXT,
    env TEXT,
    exit_code INTEGER,
    end_reason TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_state ON requests(state);
CREATE TABLE IF NOT EXISTS desired (gpu INTEGER PRIMARY KEY, layout TEXT NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    gpu INTEGER NOT NULL,
    body TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    checksum INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gpus (gpu INTEGER PRIMARY KEY, drained INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"#;

const COLUMNS: &str = "id, uid, user, pid, pid_start, ask, gpu_model, priority, command, state, \
    submitted_ms, leased_ms, ended_ms, slice, env, exit_code, end_reason, cancel_requested";

/// FNV-1a 64 of a journal record's content (stored as i64).
fn checksum(gpu: u32, body: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(&gpu.to_le_bytes());
    eat(body.as_bytes());
    h as i64
}

/// A [`ServerError::Store`] naming the database file.
fn store_err(path: &Path, e: impl std::fmt::Display) -> ServerError {
    ServerError::Store {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

impl Store {
    /// Open (or create) the database at `path`, check its schema version, and set WAL mode.
    pub fn open(path: &Path) -> Result<Store, ServerError> {
        let conn =
            Connection::open(path).map_err(|e| store_err(path, format!("cannot open: {e}")))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.init()?;
        store.make_private()?;
        Ok(store)
    }

    /// Mode 0600 for the database and its WAL files: they hold every user's command lines
    /// and environments.
    fn make_private(&self) -> Result<(), ServerError> {
        use std::os::unix::fs::PermissionsExt;
        let mut files = vec![self.path.clone()];
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut name = self.path.as_os_str().to_owned();
            name.push(suffix);
            files.push(PathBuf::from(name));
        }
        for f in files.iter() {
            let Ok(meta) = std::fs::metadata(f) else {
                continue;
            };
            if meta.permissions().mode() & 0o077 == 0 {
                continue;
            }
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| self.err(format!("cannot make {} private: {e}", f.display())))?;
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> ServerError {
        store_err(&self.path, e)
    }

    /// A row whose column holds a value tessera never writes: name the table, the row, the
    /// column, the value and what to do.
    fn bad_value(
        &self,
        table: &str,
        row: u64,
        column: &str,
        value: i64,
        allowed: &str,
    ) -> ServerError {
        let key = if table == "journal" { "seq" } else { "id" };
        self.err(format!(
            "table `{table}`, row {row}: `{column}` is {value}, but it must be {allowed}; the row was written outside tessera. Delete that row (`sqlite3 {} \"DELETE FROM {table} WHERE {key} = {row}\"`) or restore the file from a backup, then start again",
            self.path.display()
        ))
    }

    fn init(&mut self) -> Result<(), ServerError> {
        self.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| self.err(e))?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(self.err(format!("cannot switch to WAL mode (got {mode})")));
        }
        self.conn
            .execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(|e| self.err(e))?;
        let path = &self.path;
        let tx = self.conn.transaction().map_err(|e| store_err(path, e))?;
        tx.execute_batch(SCHEMA)
            .map_err(|e| store_err(path, format!("cannot create the schema: {e}")))?;
        let found: Option<String> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| store_err(path, e))?;
        match found {
            None => {
                tx.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )
                .map_err(|e| store_err(path, e))?;
            }
            Some(v) => {
                let found: u32 = v.parse().unwrap_or(0);
                if found != SCHEMA_VERSION {
                    return Err(ServerError::Schema {
                        path: path.clone(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
        }
        tx.commit().map_err(|e| store_err(path, e))
    }

    /// Insert a queued request; returns its ID.
    pub fn insert(&mut self, r: &NewRequest) -> Result<u64, ServerError> {
        let ask = serde_json::to_string(&StoredAsk::from(&r.ask)).map_err(|e| self.err(e))?;
        let command = serde_json::to_string(&r.command).map_err(|e| self.err(e))?;
        self.conn
            .execute(
                "INSERT INTO requests(uid, user, pid, pid_start, ask, gpu_model, priority, command, state, submitted_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9)",
                params![
                    r.uid,
                    r.user,
                    r.pid,
                    r.pid_start.map(|v| v as i64),
                    ask,
                    r.gpu_model,
                    r.priority,
                    command,
                    r.submitted_ms as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            id: r.get::<_, i64>(0)? as u64,
            uid: r.get(1)?,
            user: r.get(2)?,
            pid: r.get(3)?,
            pid_start: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
            ask: r.get(5)?,
            gpu_model: r.get(6)?,
            priority: r.get(7)?,
            command: r.get(8)?,
            state: r.get(9)?,
            submitted_ms: r.get::<_, i64>(10)? as u64,
            leased_ms: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
            ended_ms: r.get::<_, Option<i64>>(12)?.map(|v| v as u64),
            slice: r.get(13)?,
            env: r.get(14)?,
            exit_code: r.get(15)?,
            end_reason: r.get(16)?,
            cancel_requested: r.get::<_, i64>(17)? != 0,
        })
    }

    fn decode(&self, raw: RawRow) -> Result<RequestRow, ServerError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            self.err(format!("request {}: cannot read its {what}: {e}", raw.id))
        };
        let state = parse_state(&raw.state)
            .ok_or_else(|| bad("state", &format!("unknown state `{}`", raw.state)))?;
        let uid = u32::try_from(raw.uid)
            .ok()
            .filter(|u| *u != u32::MAX)
            .ok_or_else(|| {
                self.bad_value(
                    "requests",
                    raw.id,
                    "uid",
                    raw.uid,
                    "a user id, 0 to 4294967294",
                )
            })?;
        let pid = match raw.pid {
            None => None,
            Some(p) => Some(
                u32::try_from(p)
                    .ok()
                    .filter(|p| *p >= 1 && *p <= i32::MAX as u32)
                    .ok_or_else(|| {
                        self.bad_value(
                            "requests",
                            raw.id,
                            "pid",
                            p,
                            "a process id, 1 to 2147483647",
                        )
                    })?,
            ),
        };
        Ok(RequestRow {
            id: raw.id,
            uid,
            user: raw.user.clone(),
            pid,
            pid_start: raw.pid_start,
            ask: serde_json::from_str::<StoredAsk>(&raw.ask)
                .map_err(|e| bad("ask", &e))?
                .into(),
            gpu_model: raw.gpu_model.clone(),
            priority: raw.priority,
            command: serde_json::from_str(&raw.command).map_err(|e| bad("command", &e))?,
            state,
            submitted_ms: raw.submitted_ms,
            leased_ms: raw.leased_ms,
            ended_ms: raw.ended_ms,
            slice: match &raw.slice {
                Some(s) => Some(
                    serde_json::from_str::<StoredSlice>(s)
                        .map_err(|e| bad("slice", &e))?
                        .into(),
                ),
                None => None,
            },
            env: match &raw.env {
                Some(s) => serde_json::from_str(s).map_err(|e| bad("env", &e))?,
                None => BTreeMap::new(),
            },
            exit_code: raw.exit_code,
            end_reason: raw.end_reason.clone(),
            cancel_requested: raw.cancel_requested,
        })
    }

    /// Run `sql` and collect its rows, each read by `read`.
    fn rows<T, C: FromIterator<T>>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<C, ServerError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(p, read)
            .map_err(|e| self.err(e))?
            .collect::<Result<C, _>>()
            .map_err(|e| self.err(e));
        rows
    }

    fn query(&self, sql: &str, p: impl rusqlite::Params) -> Result<Vec<RequestRow>, ServerError> {
        let raws: Vec<RawRow> = self.rows(sql, p, Self::row)?;
        raws.into_iter().map(|r| self.decode(r)).collect()
    }

    /// One request.
    pub fn get(&self, id: u64) -> Result<Option<RequestRow>, ServerError> {
        let sql = format!("SELECT {COLUMNS} FROM requests WHERE id = ?1");
        Ok(self.query(&sql, params![id as i64])?.into_iter().next())
    }

    /// Every queued or leased request, by ID.
    pub fn active(&self) -> Result<Vec<RequestRow>, ServerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM requests WHERE state IN ('queued', 'leased') ORDER BY id"
        );
        self.query(&sql, [])
    }

    /// The `limit` most recently ended requests, newest first.
    pub fn recent_ended(&self, limit: u32) -> Result<Vec<RequestRow>, ServerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM requests WHERE state NOT IN ('queued', 'leased') ORDER BY id DESC LIMIT ?1"
        );
        self.query(&sql, params![limit])
    }

    /// Every request (for tests and audits), by ID.
    pub fn all(&self) -> Result<Vec<RequestRow>, ServerError> {
        let sql = format!("SELECT {COLUMNS} FROM requests ORDER BY id");
        self.query(&sql, [])
    }

    /// `queued` → `leased` with this slice and environment. Returns false (and changes
    /// nothing) when the request is no longer queued.
    pub fn grant(
        &mut self,
        id: u64,
        slice: &Slice,
        env: &BTreeMap<String, String>,
        now_ms: u64,
    ) -> Result<bool, ServerError> {
        let slice = serde_json::to_string(&StoredSlice::from(slice)).map_err(|e| self.err(e))?;
        let env = serde_json::to_string(env).map_err(|e| self.err(e))?;
        let n = self
            .conn
            .execute(
                "UPDATE requests SET state = 'leased', slice = ?2, env = ?3, leased_ms = ?4
                 WHERE id = ?1 AND state = 'queued'",
                params![id as i64, slice, env, now_ms as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// End an active request. Returns false when it was not active.
    pub fn end(
        &mut self,
        id: u64,
        state: RequestState,
        exit_code: Option<i32>,
        reason: &str,
        now_ms: u64,
    ) -> Result<bool, ServerError> {
        debug_assert!(!state.is_active());
        let n = self
            .conn
            .execute(
                "UPDATE requests SET state = ?2, exit_code = ?3, end_reason = ?4, ended_ms = ?5
                 WHERE id = ?1 AND state IN ('queued', 'leased')",
                params![
                    id as i64,
                    state_text(state),
                    exit_code,
                    reason,
                    now_ms as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Mark a leased request as cancelled (its client stops CMD and releases).
    pub fn request_cancel(&mut self, id: u64) -> Result<bool, ServerError> {
        let n = self
            .conn
            .execute(
                "UPDATE requests SET cancel_requested = 1 WHERE id = ?1 AND state = 'leased'",
                params![id as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Record the desired layout of a GPU (before changing it).
    pub fn set_desired(
        &mut self,
        gpu: u32,
        layout: &[String],
        now_ms: u64,
    ) -> Result<(), ServerError> {
        let text = serde_json::to_string(layout).map_err(|e| self.err(e))?;
        self.conn
            .execute(
                "INSERT INTO desired(gpu, layout, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(gpu) DO UPDATE SET layout = excluded.layout, updated_ms = excluded.updated_ms",
                params![gpu, text, now_ms as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every stored desired layout, by GPU.
    pub fn desired(&self) -> Result<BTreeMap<u32, Vec<String>>, ServerError> {
        let rows: Vec<(i64, String)> =
            self.rows("SELECT gpu, layout FROM desired ORDER BY gpu", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let mut out = BTreeMap::new();
        for (gpu, text) in rows {
            let gpu = u32::try_from(gpu).map_err(|_| {
                self.err(format!(
                    "table `desired`: `gpu` is {gpu}, but it must be a GPU index, 0 or more; the row was written outside tessera. Delete it (`sqlite3 {} \"DELETE FROM desired WHERE gpu = {gpu}\"`) and start again",
                    self.path.display()
                ))
            })?;
            let layout: Vec<String> = serde_json::from_str(&text)
                .map_err(|e| self.err(format!("desired layout of GPU {gpu}: {e}")))?;
            out.insert(gpu, layout);
        }
        Ok(out)
    }

    /// Append a journal record (`body` is the agent's entry as JSON); returns its sequence
    /// number. The transaction commits before this returns (durable, `synchronous=FULL`).
    pub fn journal_append(
        &mut self,
        gpu: u32,
        body: &str,
        now_ms: u64,
    ) -> Result<u64, ServerError> {
        let sum = checksum(gpu, body);
        self.conn
            .execute(
                "INSERT INTO journal(gpu, body, at_ms, checksum) VALUES (?1, ?2, ?3, ?4)",
                params![gpu, body, now_ms as i64, sum],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    /// Journal records, oldest first. A record whose checksum does not match is an error
    /// naming its sequence number.
    pub fn journal(&self) -> Result<Vec<JournalRow>, ServerError> {
        type Raw = (u64, i64, String, u64, i64);
        let rows: Vec<Raw> = self.rows(
            "SELECT seq, gpu, body, at_ms, checksum FROM journal ORDER BY seq",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, i64>(3)? as u64,
                    r.get(4)?,
                ))
            },
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, gpu, body, at_ms, sum) in rows {
            let gpu = u32::try_from(gpu).map_err(|_| {
                self.bad_value("journal", seq, "gpu", gpu, "a GPU index, 0 or more")
            })?;
            if checksum(gpu, &body) != sum {
                return Err(self.err(format!(
                    "table `journal`, row {seq} (journal record {seq}, of GPU {gpu}) fails its checksum: the database was changed outside tessera, or the disk damaged it. The journal only records the steps of re-partitions (the GPUs' layouts are read from the GPUs at start), so it can be dropped: start once with `tessera serve --discard-journal`, or restore the file from a backup"
                )));
            }
            out.push(JournalRow {
                seq,
                gpu,
                body,
                at_ms,
            });
        }
        Ok(out)
    }

    /// Delete every journal record (the recovery for a journal that fails its checksums:
    /// `tessera serve --discard-journal`). Returns how many were deleted.
    pub fn discard_journal(&mut self) -> Result<u64, ServerError> {
        let n = self
            .conn
            .execute("DELETE FROM journal", [])
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// How many rows `requests`, `desired` and `journal` hold.
    pub fn counts(&self) -> Result<(u64, u64, u64), ServerError> {
        let count = |table: &str| -> Result<u64, ServerError> {
            self.conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as u64)
                .map_err(|e| self.err(e))
        };
        Ok((count("requests")?, count("desired")?, count("journal")?))
    }

    /// The GPU of journal record `seq`.
    pub fn journal_gpu(&self, seq: u64) -> Result<Option<u32>, ServerError> {
        self.conn
            .query_row(
                "SELECT gpu FROM journal WHERE seq = ?1",
                params![seq as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Keep only the newest `keep` journal records (call when no operation is cut short).
    pub fn prune_journal(&mut self, keep: u64) -> Result<(), ServerError> {
        self.conn
            .execute(
                "DELETE FROM journal WHERE seq <= (SELECT MAX(seq) FROM journal) - ?1",
                params![keep as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Record the mode an `auto` GPU is being switched to, before switching it (like
    /// [`Store::set_desired`] for layouts): a switch cut short is finished at the next start.
    /// Kept in `meta` as `gpu_mode.N` (no schema change).
    pub fn set_mode(&mut self, gpu: u32, mode: GpuMode) -> Result<(), ServerError> {
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![format!("gpu_mode.{gpu}"), mode.as_str()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The recorded modes of `auto` GPUs (see [`Store::set_mode`]), by GPU.
    pub fn modes(&self) -> Result<BTreeMap<u32, GpuMode>, ServerError> {
        let rows: Vec<(String, String)> = self.rows(
            "SELECT key, value FROM meta WHERE substr(key, 1, 9) = 'gpu_mode.' ORDER BY key",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut out = BTreeMap::new();
        for (key, value) in rows {
            let bad = || {
                self.err(format!(
                    "table `meta`: `{key}` = `{value}` is not a GPU index and a mode (mig, mps, timeslice); the row was written outside tessera. Delete it (`sqlite3 {} \"DELETE FROM meta WHERE key = '{key}'\"`) and start again",
                    self.path.display()
                ))
            };
            let gpu: u32 = key["gpu_mode.".len()..].parse().map_err(|_| bad())?;
            let mode: GpuMode = value.parse().map_err(|_| bad())?;
            out.insert(gpu, mode);
        }
        Ok(out)
    }

    /// Drain or undrain a GPU.
    pub fn set_drained(&mut self, gpu: u32, drained: bool) -> Result<(), ServerError> {
        self.conn
            .execute(
                "INSERT INTO gpus(gpu, drained) VALUES (?1, ?2)
                 ON CONFLICT(gpu) DO UPDATE SET drained = excluded.drained",
                params![gpu, drained as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The drained GPUs.
    pub fn drained(&self) -> Result<BTreeSet<u32>, ServerError> {
        self.rows(
            "SELECT gpu FROM gpus WHERE drained != 0 ORDER BY gpu",
            [],
            |r| r.get(0),
        )
    }

    /// Add `by` to a counter.
    pub fn bump(&mut self, name: &str, by: u64) -> Result<(), ServerError> {
        self.conn
            .execute(
                "INSERT INTO counters(name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                params![name, by as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A counter's value (0 when never bumped).
    pub fn counter(&self, name: &str) -> Result<u64, ServerError> {
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM counters WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(v.unwrap_or(0) as u64)
    }
}

struct RawRow {
    id: u64,
    uid: i64,
    user: String,
    pid: Option<i64>,
    pid_start: Option<u64>,
    ask: String,
    gpu_model: Option<String>,
    priority: i32,
    command: String,
    state: String,
    submitted_ms: u64,
    leased_ms: Option<u64>,
    ended_ms: Option<u64>,
    slice: Option<String>,
    env: Option<String>,
    exit_code: Option<i32>,
    end_reason: Option<String>,
    cancel_requested: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(uid: u32, ask: SliceAsk) -> NewRequest {
        NewRequest {
            uid,
            user: format!("u{uid}"),
            pid: Some(42),
            pid_start: Some(7),
            ask,
            gpu_model: None,
            priority: 0,
            command: vec!["sh".into(), "-c".into(), "true".into()],
            submitted_ms: 1000,
        }
    }

    #[test]
    fn a_request_goes_from_queued_to_leased_to_done_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("t.db")).unwrap();
        let id = s.insert(&new(1000, SliceAsk::Share)).unwrap();
        let slice = Slice::Timeslice { gpu: 1, replica: 0 };
        let env = BTreeMap::from([("CUDA_VISIBLE_DEVICES".to_string(), "GPU-x".to_string())]);
        assert!(s.grant(id, &slice, &env, 2000).unwrap());
        assert!(!s.grant(id, &slice, &env, 2001).unwrap(), "granted twice");
        let r = s.get(id).unwrap().unwrap();
        assert_eq!(
            (r.state, r.slice.as_ref(), r.leased_ms),
            (RequestState::Leased, Some(&slice), Some(2000))
        );
        assert_eq!(r.env, env);
        assert!(s
            .end(id, RequestState::Done, Some(3), "exit 3", 3000)
            .unwrap());
        assert!(!s
            .end(id, RequestState::Expired, None, "late", 3001)
            .unwrap());
        let r = s.get(id).unwrap().unwrap();
        assert_eq!((r.state, r.exit_code), (RequestState::Done, Some(3)));
        assert!(s.active().unwrap().is_empty());
        assert_eq!(s.recent_ended(10).unwrap().len(), 1);
    }

    #[test]
    fn state_survives_reopening_and_a_cancelled_request_cannot_be_granted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (a, b) = {
            let mut s = Store::open(&path).unwrap();
            let a = s
                .insert(&new(
                    1,
                    SliceAsk::Mig {
                        profile: "1g.10gb".into(),
                    },
                ))
                .unwrap();
            let b = s.insert(&new(2, SliceAsk::Share)).unwrap();
            s.set_desired(0, &["1g.10gb@0".into()], 5).unwrap();
            s.set_drained(1, true).unwrap();
            s.bump("repartitions", 2).unwrap();
            s.end(b, RequestState::Cancelled, None, "cancelled", 9)
                .unwrap();
            (a, b)
        };
        let mut s = Store::open(&path).unwrap();
        assert_eq!(
            s.active().unwrap().iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![a]
        );
        assert!(!s
            .grant(
                b,
                &Slice::Timeslice { gpu: 0, replica: 0 },
                &BTreeMap::new(),
                10
            )
            .unwrap());
        assert_eq!(s.desired().unwrap()[&0], vec!["1g.10gb@0".to_string()]);
        assert_eq!(s.drained().unwrap(), BTreeSet::from([1]));
        assert_eq!(s.counter("repartitions").unwrap(), 2);
        assert_eq!(s.counter("never").unwrap(), 0);
    }

    #[test]
    fn journal_records_append_in_order_and_carry_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("t.db")).unwrap();
        let a = s.journal_append(0, r#"{"type":"intent"}"#, 1).unwrap();
        let b = s.journal_append(0, r#"{"type":"outcome"}"#, 2).unwrap();
        assert!(b > a);
        let rows = s.journal().unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![a, b]);
        s.conn
            .execute(
                "UPDATE journal SET body = 'tampered' WHERE seq = ?1",
                params![a as i64],
            )
            .unwrap();
        let e = s.journal().unwrap_err().to_string();
        assert!(e.contains(&format!("journal record {a}")), "{e}");
        s.prune_journal(1).unwrap();
        // Pruning dropped the tampered record.
        assert_eq!(s.journal().unwrap().len(), 1);
    }

    #[test]
    fn another_schema_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(conn);
        let e = Store::open(&path).err().unwrap().to_string();
        assert!(e.contains("schema version 99") && e.contains("t.db"), "{e}");
    }
}
