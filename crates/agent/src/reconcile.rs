//! The reconciler: takes GPUs to their desired layouts through a [`GpuBackend`], journaling
//! every op, retrying what may pass, and stopping on what will not.
//!
//! # Contract of [`Reconciler::step`]
//!
//! **Expected flow** of one step on one GPU:
//! 1. Observe the GPU (MIG mode, instances, processes). The hardware is the truth; nothing
//!    the agent remembers overrides it.
//! 2. Plan with [`plan_ops`]. A refusal (busy instance in the way, invalid layout, MIG off)
//!    ends the step with nothing changed; an empty plan means converged.
//! 3. For each op in order: write the intent to the journal (durable), call the backend,
//!    write the outcome.
//! 4. On the first retryable failure (transient, `InUse`, `InsufficientResources`,
//!    `NotFound`), stop and report it; the caller backs off and steps again, which observes
//!    anew. A permanent failure ends the apply with an error.
//!
//! **Guarantees**: no busy instance is ever the target of a destroy (the plan refuses, and
//! `DestroyGi` needs an [`tessera_gpu::IdleInstance`] from this step's observation; the backend
//! re-checks); a refused GPU is left exactly as it was; applying a layout the GPU already has
//! performs no op; an intent is on disk before its op starts.
//!
//! **Assumptions**: every op is safe to attempt again after observing (create at a free
//! placement, destroy of an idle instance); NVML reports instances and processes truthfully.
//!
//! **Caveats**: a process can start on an instance between observation and destroy; the
//! backend then answers `InUse` and the next step refuses. Another actor changing the GPU at
//! the same time is seen at the next observation, not prevented.
//!
//! # Recovery
//! Before the first step, [`Reconciler::recover`] reads the journal's intents without outcome
//! for the GPU (a crash cut them short), observes the GPU, and writes for each a `Recovered`
//! outcome saying whether its effect is visible. It re-runs nothing: the steps that follow
//! roll forward from what is observed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tessera_gpu::{GpuBackend, GpuError, GpuInstance};
use tessera_model::{Catalog, GpuModel, Placed};

use crate::journal::{dangling, Journal, JournalError, Outcome};
use crate::op::{Op, OpRecord};
use crate::plan::{plan_ops, ObservedGpu, Refusal};

/// How long to wait between attempts, and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Consecutive failed attempts (without progress) before giving up.
    pub max_failures: u32,
    /// Delay after the first failure; doubled after each further one.
    pub base_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Most observe-plan-act rounds in one apply (a bound against livelock).
    pub max_rounds: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_failures: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(3),
            max_rounds: 64,
        }
    }
}

impl RetryPolicy {
    /// The delay after the `failures`-th consecutive failure (from 1): exponential, capped.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay)
    }
}

/// Waits between retries; injected so that tests do not sleep.
pub trait Sleeper {
    /// Wait `d`.
    fn sleep(&mut self, d: Duration);
}

/// Sleeps the thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadSleeper;

impl Sleeper for ThreadSleeper {
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Records the delays instead of sleeping.
#[derive(Debug, Default, Clone)]
pub struct RecordingSleeper {
    /// Every delay asked for, in order.
    pub slept: Vec<Duration>,
}

impl Sleeper for RecordingSleeper {
    fn sleep(&mut self, d: Duration) {
        self.slept.push(d);
    }
}

/// Why an apply stopped without converging or refusing.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A backend call failed permanently (or the simulated backend crashed).
    #[error("{source}")]
    Backend {
        /// The GPU.
        gpu: u32,
        /// The backend's error (it names the call).
        source: GpuError,
    },
    /// Retryable failures went on past the retry policy.
    #[error("GPU {gpu}: gave up after {failures} failed attempts in a row; last error: {last}")]
    GaveUp {
        /// The GPU.
        gpu: u32,
        /// Consecutive failures.
        failures: u32,
        /// The last error.
        last: GpuError,
    },
    /// The journal could not be written or read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The GPU's product matches no catalog model.
    #[error("GPU {gpu} ({name}) matches no catalog model; add one with --catalog FILE (see `tessera catalog import`)")]
    UnknownModel {
        /// The GPU.
        gpu: u32,
        /// Its product name.
        name: String,
    },
    /// A desired instance spec does not parse for the GPU's model.
    #[error("GPU {gpu}: {detail}")]
    BadSpec {
        /// The GPU.
        gpu: u32,
        /// The parse error.
        detail: String,
    },
    /// Rounds ran out (ops kept succeeding but the GPU never matched).
    #[error("GPU {gpu}: no convergence after {rounds} rounds; something else is changing the GPU")]
    NoConvergence {
        /// The GPU.
        gpu: u32,
        /// Rounds run.
        rounds: u32,
    },
    /// `--crash-after N` was reached (test hook): the caller must exit abruptly.
    #[error("crash injected after {ops} op(s)")]
    CrashInjected {
        /// Ops run.
        ops: u32,
    },
}

impl AgentError {
    /// Whether this stops the process as a crash would (injected, or the sim crashed).
    pub fn is_crash(&self) -> bool {
        matches!(
            self,
            AgentError::CrashInjected { .. }
                | AgentError::Backend {
                    source: GpuError::Crashed { .. },
                    ..
                }
        )
    }
}

/// How an apply on one GPU ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ApplyResult {
    /// The GPU matches the desired layout.
    Converged,
    /// The GPU was left unchanged.
    Refused {
        /// Why.
        refusal: Refusal,
    },
}

/// An intent found without outcome and what observation showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveredOp {
    /// Its sequence number.
    pub seq: u64,
    /// The op.
    pub op: OpRecord,
    /// Whether its effect was visible.
    pub applied: bool,
}

/// What an apply on one GPU did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuReport {
    /// The GPU.
    pub gpu: u32,
    /// Its catalog model.
    pub model: String,
    /// Converged or refused.
    #[serde(flatten)]
    pub result: ApplyResult,
    /// Ops that succeeded, in order.
    pub applied: Vec<OpRecord>,
    /// Retryable errors met on the way, in order.
    pub retried: Vec<String>,
    /// Ops a previous run left without outcome.
    pub recovered: Vec<RecoveredOp>,
    /// The last observation of the GPU's instances.
    pub instances: Vec<GpuInstance>,
}

/// The result of one [`Reconciler::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The GPU matches; nothing done.
    Converged {
        /// The observation.
        instances: Vec<GpuInstance>,
    },
    /// The plan was refused; nothing done.
    Refused {
        /// Why.
        refusal: Refusal,
        /// The observation.
        instances: Vec<GpuInstance>,
    },
    /// Every planned op succeeded.
    Applied {
        /// The ops.
        ops: Vec<OpRecord>,
    },
    /// A retryable failure stopped the step.
    Failed {
        /// The op that failed (`None`: the observation failed).
        op: Option<OpRecord>,
        /// The error.
        error: GpuError,
        /// Ops that succeeded before it.
        applied: Vec<OpRecord>,
    },
}

fn retryable(e: &GpuError) -> bool {
    e.is_transient()
        || matches!(
            e,
            GpuError::InUse { .. }
                | GpuError::InsufficientResources { .. }
                | GpuError::NotFound { .. }
        )
}

/// Applies desired layouts through a backend. See the module docs for the contract.
pub struct Reconciler<'a> {
    backend: &'a mut dyn GpuBackend,
    journal: &'a mut dyn Journal,
    catalog: &'a Catalog,
    sleeper: &'a mut dyn Sleeper,
    policy: RetryPolicy,
    crash_after: Option<u32>,
    ops_run: u32,
}

impl<'a> Reconciler<'a> {
    /// A reconciler with the default retry policy.
    pub fn new(
        backend: &'a mut dyn GpuBackend,
        journal: &'a mut dyn Journal,
        catalog: &'a Catalog,
        sleeper: &'a mut dyn Sleeper,
    ) -> Self {
        Reconciler {
            backend,
            journal,
            catalog,
            sleeper,
            policy: RetryPolicy::default(),
            crash_after: None,
            ops_run: 0,
        }
    }

    /// Use this retry policy.
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Stop with [`AgentError::CrashInjected`] right after the `n`-th op call returns, before
    /// its outcome is journaled (test hook behind the CLI's hidden `--crash-after`).
    pub fn crash_after(mut self, n: Option<u32>) -> Self {
        self.crash_after = n;
        self
    }

    /// Op calls made so far.
    pub fn ops_run(&self) -> u32 {
        self.ops_run
    }

    /// Call `f` on the backend, retrying retryable failures with backoff.
    fn retry<T>(
        &mut self,
        gpu: u32,
        mut f: impl FnMut(&mut dyn GpuBackend) -> Result<T, GpuError>,
    ) -> Result<T, AgentError> {
        let mut failures = 0;
        loop {
            match f(&mut *self.backend) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => self.back_off(gpu, &mut failures, e)?,
                Err(source) => return Err(AgentError::Backend { gpu, source }),
            }
        }
    }

    /// One more retryable failure in a row: give up with `last` past the policy's limit,
    /// otherwise sleep the policy's delay for this many failures.
    fn back_off(&mut self, gpu: u32, failures: &mut u32, last: GpuError) -> Result<(), AgentError> {
        *failures += 1;
        if *failures > self.policy.max_failures {
            return Err(AgentError::GaveUp {
                gpu,
                failures: *failures,
                last,
            });
        }
        self.sleeper.sleep(self.policy.delay(*failures));
        Ok(())
    }

    /// The catalog model of a GPU.
    pub fn model_of(&mut self, gpu: u32) -> Result<GpuModel, AgentError> {
        let gpus = self.retry(gpu, |b| b.gpus())?;
        let Some(info) = gpus.into_iter().find(|g| g.index == gpu) else {
            return Err(AgentError::Backend {
                gpu,
                source: GpuError::NotFound {
                    op: format!("GPU {gpu}"),
                    detail: "no GPU has this index".into(),
                },
            });
        };
        info.model
            .as_deref()
            .and_then(|k| self.catalog.get(k))
            .cloned()
            .ok_or(AgentError::UnknownModel {
                gpu,
                name: info.name,
            })
    }

    /// Observe one GPU: MIG mode, then (when on) its instances.
    pub fn observe(&mut self, gpu: u32) -> Result<ObservedGpu, GpuError> {
        let mig = self.backend.mig_mode(gpu)?;
        let instances = if mig.current {
            self.backend.instances(gpu)?
        } else {
            Vec::new()
        };
        Ok(ObservedGpu {
            gpu,
            mig_enabled: mig.current,
            instances,
        })
    }

    /// Close the intents a crash left without outcome on `gpu`: observe, then record for each
    /// whether its effect is visible. Nothing is re-run.
    pub fn recover(&mut self, gpu: u32) -> Result<Vec<RecoveredOp>, AgentError> {
        let open: Vec<(u64, OpRecord)> = dangling(&*self.journal)?
            .into_iter()
            .filter(|(_, op)| op.gpu() == gpu)
            .collect();
        if open.is_empty() {
            return Ok(Vec::new());
        }
        let obs = self.retry(gpu, |b| {
            let mig = b.mig_mode(gpu)?;
            if mig.current {
                b.instances(gpu)
            } else {
                Ok(Vec::new())
            }
        })?;
        let mut out = Vec::new();
        for (seq, op) in open {
            let applied = op.visible_in(&obs);
            self.journal.outcome(seq, &Outcome::Recovered { applied })?;
            out.push(RecoveredOp { seq, op, applied });
        }
        Ok(out)
    }

    fn execute(&mut self, op: &Op) -> Result<(), GpuError> {
        match op {
            Op::DestroyGi { instance } => self.backend.destroy_gi(instance),
            Op::CreateCi { gpu, gi_id, .. } => {
                self.backend.create_default_ci(*gpu, *gi_id).map(|_| ())
            }
            Op::CreateGi {
                gpu,
                profile,
                start,
            } => self.backend.create_gi(*gpu, profile, *start).map(|_| ()),
        }
    }

    /// One observe-plan-act round on one GPU (see the module docs for the contract).
    pub fn step(
        &mut self,
        gpu: u32,
        model: &GpuModel,
        desired: &[Placed],
    ) -> Result<Step, AgentError> {
        let obs = match self.observe(gpu) {
            Ok(o) => o,
            Err(e) if retryable(&e) => {
                return Ok(Step::Failed {
                    op: None,
                    error: e,
                    applied: vec![],
                })
            }
            Err(source) => return Err(AgentError::Backend { gpu, source }),
        };
        let ops = match plan_ops(model, desired, &obs) {
            Ok(ops) => ops,
            Err(refusal) => {
                return Ok(Step::Refused {
                    refusal,
                    instances: obs.instances,
                })
            }
        };
        if ops.is_empty() {
            return Ok(Step::Converged {
                instances: obs.instances,
            });
        }
        let mut applied = Vec::new();
        for op in &ops {
            let rec = op.record();
            let seq = self.journal.intent(&rec)?;
            let result = self.execute(op);
            self.ops_run += 1;
            if self.crash_after == Some(self.ops_run) {
                return Err(AgentError::CrashInjected { ops: self.ops_run });
            }
            match result {
                Ok(()) => {
                    self.journal.outcome(seq, &Outcome::Done)?;
                    applied.push(rec);
                }
                Err(source @ GpuError::Crashed { .. }) => {
                    // The machine "died" inside the call: no outcome is written.
                    return Err(AgentError::Backend { gpu, source });
                }
                Err(e) => {
                    self.journal.outcome(
                        seq,
                        &Outcome::Failed {
                            kind: e.kind().into(),
                            error: e.to_string(),
                        },
                    )?;
                    if retryable(&e) {
                        return Ok(Step::Failed {
                            op: Some(rec),
                            error: e,
                            applied,
                        });
                    }
                    return Err(AgentError::Backend { gpu, source: e });
                }
            }
        }
        Ok(Step::Applied { ops: applied })
    }

    /// Take one GPU to `desired`: recover, then step until converged or refused, backing off
    /// after each retryable failure.
    pub fn apply_gpu(&mut self, gpu: u32, desired: &[Placed]) -> Result<GpuReport, AgentError> {
        let model = self.model_of(gpu)?;
        self.apply_model(gpu, &model, desired)
    }

    /// Like [`Reconciler::apply_gpu`], with the desired layout as `PROFILE@START` specs.
    pub fn apply_specs(&mut self, gpu: u32, specs: &[String]) -> Result<GpuReport, AgentError> {
        let model = self.model_of(gpu)?;
        let desired = specs
            .iter()
            .map(|s| model.parse_spec(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AgentError::BadSpec {
                gpu,
                detail: e.to_string(),
            })?;
        self.apply_model(gpu, &model, &desired)
    }

    fn apply_model(
        &mut self,
        gpu: u32,
        model: &GpuModel,
        desired: &[Placed],
    ) -> Result<GpuReport, AgentError> {
        let recovered = self.recover(gpu)?;
        let mut report = GpuReport {
            gpu,
            model: model.key.clone(),
            result: ApplyResult::Converged,
            applied: Vec::new(),
            retried: Vec::new(),
            recovered,
            instances: Vec::new(),
        };
        let mut failures = 0;
        for _ in 0..self.policy.max_rounds {
            match self.step(gpu, model, desired)? {
                Step::Converged { instances } => {
                    report.instances = instances;
                    return Ok(report);
                }
                Step::Refused { refusal, instances } => {
                    report.result = ApplyResult::Refused { refusal };
                    report.instances = instances;
                    return Ok(report);
                }
                Step::Applied { ops } => {
                    report.applied.extend(ops);
                    failures = 0;
                }
                Step::Failed { error, applied, .. } => {
                    if !applied.is_empty() {
                        failures = 0;
                    }
                    report.applied.extend(applied);
                    report.retried.push(error.to_string());
                    self.back_off(gpu, &mut failures, error)?;
                }
            }
        }
        Err(AgentError::NoConvergence {
            gpu,
            rounds: self.policy.max_rounds,
        })
    }

    /// Apply many GPUs (`GPU index → PROFILE@START specs`), in index order. A GPU's error does
    /// not stop the others, except a crash, which stops everything.
    pub fn apply_all(
        &mut self,
        desired: &BTreeMap<u32, Vec<String>>,
    ) -> Vec<(u32, Result<GpuReport, AgentError>)> {
        let mut out = Vec::new();
        for (&gpu, specs) in desired {
            let r = self.apply_specs(gpu, specs);
            let crash = matches!(&r, Err(e) if e.is_crash());
            out.push((gpu, r));
            if crash {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{EntryKind, MemJournal};
    use tessera_gpu::sim::parse_gpu_list;
    use tessera_gpu::{CrashPlan, CrashPoint, FaultTiming, SimBackend, SimConfig, SimState};

    fn sim(spec: &str) -> SimBackend {
        let c = Catalog::builtin().clone();
        let st = SimState::new(&c, &parse_gpu_list(spec).unwrap(), 11, true).unwrap();
        SimBackend::new(st, c, SimConfig::default()).unwrap()
    }

    fn specs(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn apply(
        b: &mut SimBackend,
        j: &mut MemJournal,
        gpu: u32,
        s: &str,
    ) -> Result<GpuReport, AgentError> {
        let c = Catalog::builtin();
        let mut sl = RecordingSleeper::default();
        Reconciler::new(b, j, c, &mut sl).apply_specs(gpu, &specs(s))
    }

    #[test]
    fn apply_converges_and_the_second_apply_does_nothing() {
        let mut b = sim("h100-80gb:1");
        let mut j = MemJournal::new();
        let r = apply(&mut b, &mut j, 0, "3g.40gb@4 2g.20gb@0 1g.10gb@2").unwrap();
        assert_eq!(r.result, ApplyResult::Converged);
        assert_eq!(r.applied.len(), 3);
        let n = j.entries().unwrap().len();
        let r2 = apply(&mut b, &mut j, 0, "3g.40gb@4 2g.20gb@0 1g.10gb@2").unwrap();
        assert!(r2.applied.is_empty());
        assert_eq!(
            j.entries().unwrap().len(),
            n,
            "no journal entries for a no-op"
        );
        assert_eq!(r2.instances, r.instances);
    }

    #[test]
    fn transient_faults_are_retried_with_growing_delays() {
        let mut b = sim("a100-40gb:1");
        b.set_config(SimConfig {
            faults: 0.5,
            fault_seed: 5,
            fault_timing: FaultTiming::Mixed,
            crash: None,
        });
        let mut j = MemJournal::new();
        let c = Catalog::builtin();
        let mut sl = RecordingSleeper::default();
        let policy = RetryPolicy {
            max_failures: 30,
            ..RetryPolicy::default()
        };
        let r = Reconciler::new(&mut b, &mut j, c, &mut sl)
            .with_policy(policy)
            .apply_specs(0, &specs("3g.20gb@0 2g.10gb@4 1g.5gb@6"))
            .unwrap();
        assert_eq!(r.result, ApplyResult::Converged);
        assert!(!r.retried.is_empty());
        assert!(!sl.slept.is_empty());
        assert!(sl.slept.iter().all(|d| *d <= policy.max_delay));
        b.set_config(SimConfig::default());
        let got: Vec<String> = b.instances(0).unwrap().iter().map(|i| i.spec()).collect();
        assert_eq!(got, vec!["3g.20gb@0", "2g.10gb@4", "1g.5gb@6"]);
    }

    #[test]
    fn permanent_errors_stop_with_the_backend_message() {
        let c = Catalog::builtin().clone();
        let st = SimState::new(&c, &[("a30".into(), 1)], 1, true).unwrap();
        let mut b = SimBackend::new(st, c, SimConfig::default()).unwrap();
        let mut j = MemJournal::new();
        let e = apply(&mut b, &mut j, 3, "4g.24gb@0").unwrap_err();
        assert!(e.to_string().contains("GPU 3"), "{e}");
        let e = apply(&mut b, &mut j, 0, "9g.99gb@0").unwrap_err();
        assert!(matches!(e, AgentError::BadSpec { .. }), "{e}");
    }

    #[test]
    fn giving_up_names_the_last_error() {
        let mut b = sim("a30:1");
        b.set_config(SimConfig {
            faults: 1.0,
            ..SimConfig::default()
        });
        let mut j = MemJournal::new();
        let e = apply(&mut b, &mut j, 0, "4g.24gb@0").unwrap_err();
        assert!(matches!(e, AgentError::GaveUp { .. }), "{e}");
        assert!(e.to_string().contains("transient"), "{e}");
    }

    #[test]
    fn after_a_crash_recovery_closes_the_intent_and_the_next_run_rolls_forward() {
        let mut b = sim("a100-40gb:1");
        b.set_config(SimConfig {
            crash: Some(CrashPlan {
                point: Some(CrashPoint::CreateGiAfterGi),
                nth: 2,
            }),
            ..SimConfig::default()
        });
        let mut j = MemJournal::new();
        let e = apply(&mut b, &mut j, 0, "4g.20gb@0 3g.20gb@4").unwrap_err();
        assert!(e.is_crash(), "{e}");
        // Restart: a new backend on the same state.
        let st = b.state().clone();
        let mut b = SimBackend::new(st, Catalog::builtin().clone(), SimConfig::default()).unwrap();
        let r = apply(&mut b, &mut j, 0, "4g.20gb@0 3g.20gb@4").unwrap();
        assert_eq!(r.recovered.len(), 1);
        assert!(r.recovered[0].applied, "the GI was made before the crash");
        assert_eq!(
            r.applied.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
            vec!["GPU 0: create the compute instance of 3g.20gb@4 (GI 2)"]
        );
        assert!(j.entries().unwrap().iter().any(|e| matches!(
            &e.kind,
            EntryKind::Outcome {
                outcome: Outcome::Recovered { applied: true },
                ..
            }
        )));
    }

    #[test]
    fn crash_after_stops_before_the_outcome_is_written() {
        let mut b = sim("h100-80gb:1");
        let mut j = MemJournal::new();
        let c = Catalog::builtin();
        let mut sl = RecordingSleeper::default();
        let e = Reconciler::new(&mut b, &mut j, c, &mut sl)
            .crash_after(Some(2))
            .apply_specs(0, &specs("1g.10gb@0 1g.10gb@1 1g.10gb@2"))
            .unwrap_err();
        assert!(matches!(e, AgentError::CrashInjected { ops: 2 }));
        assert_eq!(dangling(&j).unwrap().len(), 1);
        assert_eq!(b.instances(0).unwrap().len(), 2);
    }

    #[test]
    fn a_refused_gpu_is_unchanged_and_reported() {
        let mut b = sim("h100-80gb:1");
        let mut j = MemJournal::new();
        apply(&mut b, &mut j, 0, "3g.40gb@0 3g.40gb@4").unwrap();
        b.set_busy(0, 4, Some(777)).unwrap();
        let before = b.state().clone();
        let r = apply(&mut b, &mut j, 0, "7g.80gb@0").unwrap();
        let ApplyResult::Refused { refusal } = &r.result else {
            panic!("{r:?}")
        };
        assert!(refusal.to_string().contains("777"));
        assert_eq!(b.state(), &before);
    }
}
