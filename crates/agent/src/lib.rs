//! The node agent: takes the GPUs of one machine to desired MIG layouts, safely.
//!
//! - [`plan`]: the pure diff ([`plan_ops`]) from an observed GPU to a desired layout: keep what
//!   matches, destroy idle extras, create what is missing; refuse the whole GPU when a busy
//!   instance is in the way.
//! - [`op`]: the closed set of operations ([`Op`]) and their journal form.
//! - [`journal`]: intents and outcomes written durably around each op ([`Journal`],
//!   [`FileJournal`]).
//! - [`reconcile`]: the level-triggered [`Reconciler`] that observes, plans, journals and
//!   acts, retries with backoff, and rolls forward after crashes.
//! - [`desired`]: the `--desired FILE` format; [`counted`]: mig-parted and nos count configs,
//!   placed with the planner.
//!
//! Depends on `tessera-model`, `tessera-planner` (placing counted configs) and
//! `tessera-gpu`; talks to hardware only through [`tessera_gpu::GpuBackend`].

pub mod counted;
pub mod desired;
pub mod journal;
pub mod op;
pub mod plan;
pub mod reconcile;

pub use counted::{read_desired, resolve, DesiredDoc, DesiredError, TargetGpu};
pub use desired::{parse_desired, LayoutsError};
pub use journal::{
    dangling, Entry, EntryKind, FileJournal, Journal, JournalError, MemJournal, Outcome,
};
pub use op::{Op, OpRecord};
pub use plan::{plan_ops, BusyConflict, ObservedGpu, Refusal};
pub use reconcile::{
    AgentError, ApplyResult, GpuReport, Reconciler, RecordingSleeper, RetryPolicy, Sleeper, Step,
    ThreadSleeper,
};
