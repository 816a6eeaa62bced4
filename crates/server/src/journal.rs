//! The agent's journal of GPU operations, kept in the state database (the adaptor between
//! [`tessera_agent::Journal`] and [`crate::store::Store`]'s `journal` table).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use tessera_agent::journal::JOURNAL_VERSION;
use tessera_agent::{Entry, EntryKind, Journal, JournalError, OpRecord, Outcome};

use crate::daemon::lock;
use crate::liveness::Clock;
use crate::metrics::Metrics;
use crate::store::Store;

/// The agent's journal, kept in the state database.
pub struct DbJournal<'a> {
    /// The state database.
    pub store: &'a Mutex<Store>,
    /// The clock of the entries' timestamps.
    pub clock: &'a dyn Clock,
    /// Operation latencies go to `tessera_agent_operation_duration_seconds`.
    pub metrics: &'a Metrics,
    /// Intents without an outcome yet: when each was written, and its operation.
    pub started: BTreeMap<u64, (Instant, &'static str)>,
}

fn journal_err(e: impl std::fmt::Display) -> JournalError {
    JournalError::Io {
        path: PathBuf::from("tessera.db"),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Journal for DbJournal<'_> {
    fn intent(&mut self, op: &OpRecord) -> Result<u64, JournalError> {
        let body =
            serde_json::to_string(&EntryKind::Intent { op: op.clone() }).map_err(journal_err)?;
        let seq = lock(self.store)
            .journal_append(op.gpu(), &body, self.clock.unix_ms())
            .map_err(journal_err)?;
        let name = match op {
            OpRecord::CreateGi { .. } => "create_gi",
            OpRecord::DestroyGi { .. } => "destroy_gi",
            OpRecord::CreateCi { .. } => "create_ci",
        };
        self.started.insert(seq, (Instant::now(), name));
        Ok(seq)
    }

    fn outcome(&mut self, seq: u64, outcome: &Outcome) -> Result<(), JournalError> {
        if let Some((at, name)) = self.started.remove(&seq) {
            self.metrics.operation(name, at.elapsed().as_secs_f64());
        }
        let body = serde_json::to_string(&EntryKind::Outcome {
            intent: seq,
            outcome: outcome.clone(),
        })
        .map_err(journal_err)?;
        let mut s = lock(self.store);
        let gpu = s
            .journal_gpu(seq)
            .map_err(journal_err)?
            .ok_or(JournalError::UnknownIntent { seq })?;
        s.journal_append(gpu, &body, self.clock.unix_ms())
            .map_err(journal_err)?;
        Ok(())
    }

    fn entries(&self) -> Result<Vec<Entry>, JournalError> {
        let rows = lock(self.store).journal().map_err(journal_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let kind: EntryKind =
                serde_json::from_str(&r.body).map_err(|e| JournalError::Torn {
                    path: PathBuf::from("tessera.db (table journal)"),
                    offset: r.seq,
                    detail: e.to_string(),
                })?;
            out.push(Entry {
                v: JOURNAL_VERSION,
                seq: r.seq,
                kind,
            });
        }
        Ok(out)
    }
}
