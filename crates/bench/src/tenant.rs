//! The tenant side: set a workload up, wait for the start signal, run it for a fixed time and
//! report how much work was done. The GPU and the CPU stand-in plug in as [`Kernel`]s and are
//! measured by the same loop, so the stand-in tests exactly the timing code the GPU uses.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::BenchError;
use crate::protocol::{
    parse_go, Backend, Role, TenantMessage, TenantOutcome, TenantSpec, SPEC_ENV,
};
use crate::workload::{Shape, Workload};
use crate::{cpu, cuda};

/// A workload ready to run on some device.
pub trait Kernel {
    /// Work of one iteration in base units (bytes or FLOP).
    fn work_per_iter(&self) -> f64;
    /// Run `iters` iterations and return once all of them have completed (for a GPU: after
    /// synchronizing the stream).
    fn run(&mut self, iters: u64) -> Result<(), BenchError>;
}

/// Build the kernel for a workload on a backend.
pub fn make_kernel(
    backend: Backend,
    workload: Workload,
    shape: Shape,
) -> Result<Box<dyn Kernel>, BenchError> {
    match backend {
        Backend::CpuStandin => Ok(cpu::make_kernel(workload, shape)),
        Backend::Cuda => cuda::make_kernel(workload, shape),
    }
}

/// Seconds per timed batch for a measurement of `duration_s`: short enough that stopping after
/// the batch that crosses the deadline overshoots by at most 5 %, long enough to hide the
/// per-batch synchronisation.
pub fn target_batch_s(duration_s: f64) -> f64 {
    (duration_s / 20.0).clamp(0.002, 0.1)
}

/// Warm the kernel up and choose how many iterations make one batch of about `target_s`.
pub fn calibrate(kernel: &mut dyn Kernel, target_s: f64) -> Result<u64, BenchError> {
    kernel.run(1)?;
    let mut iters: u64 = 1;
    loop {
        let t = Instant::now();
        kernel.run(iters)?;
        let dt = t.elapsed().as_secs_f64();
        if dt >= target_s / 4.0 || iters >= 1 << 20 {
            let per_iter = (dt / iters as f64).max(1e-9);
            return Ok(((target_s / per_iter).round() as u64).clamp(1, 1 << 24));
        }
        iters *= 4;
    }
}

/// Current time in Unix nanoseconds.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Wait until `start_unix_ns`, then run batches until `duration_s` has passed.
pub fn measure(
    kernel: &mut dyn Kernel,
    batch: u64,
    start_unix_ns: u64,
    duration_s: f64,
) -> Result<TenantOutcome, BenchError> {
    let now = unix_ns();
    let late_s = if now > start_unix_ns {
        (now - start_unix_ns) as f64 / 1e9
    } else {
        std::thread::sleep(Duration::from_nanos(start_unix_ns - now));
        0.0
    };
    let begin_ns = unix_ns();
    let t0 = Instant::now();
    let limit = Duration::from_secs_f64(duration_s);
    let mut iterations = 0u64;
    loop {
        kernel.run(batch)?;
        iterations += batch;
        if t0.elapsed() >= limit {
            break;
        }
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    Ok(TenantOutcome {
        iterations,
        work: iterations as f64 * kernel.work_per_iter(),
        elapsed_s,
        start_unix_ns: begin_ns,
        end_unix_ns: begin_ns + (elapsed_s * 1e9) as u64,
        late_s,
        visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
    })
}

fn emit(out: &mut dyn Write, msg: &TenantMessage) -> Result<(), BenchError> {
    writeln!(out, "{}", msg.to_line())
        .and_then(|_| out.flush())
        .map_err(|e| BenchError::Protocol(format!("cannot write to the parent: {e}")))
}

fn run_role(
    spec: &TenantSpec,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), BenchError> {
    match &spec.role {
        Role::Probe => {
            let info = match spec.backend {
                Backend::Cuda => cuda::probe()?,
                Backend::CpuStandin => cpu::probe(),
            };
            emit(out, &TenantMessage::Probe(info))
        }
        Role::Measure {
            workload,
            shape,
            duration_s,
        } => {
            let t = Instant::now();
            let mut kernel = make_kernel(spec.backend, *workload, *shape)?;
            let batch = calibrate(kernel.as_mut(), target_batch_s(*duration_s))?;
            emit(
                out,
                &TenantMessage::Ready {
                    batch,
                    setup_s: t.elapsed().as_secs_f64(),
                },
            )?;
            let mut line = String::new();
            let n = input
                .read_line(&mut line)
                .map_err(|e| BenchError::Protocol(format!("cannot read the start signal: {e}")))?;
            let Some(start) = (n > 0).then(|| parse_go(&line)).flatten() else {
                // The parent gave up on the group (another tenant failed): leave quietly.
                return Ok(());
            };
            let outcome = measure(kernel.as_mut(), batch, start, *duration_s)?;
            emit(out, &TenantMessage::Result(outcome))
        }
    }
}

/// Run a tenant for `spec`, talking to the parent over `input`/`out`. Returns the process exit
/// code: 0 on success (or abort), 3 after reporting an error. Panics inside the workload code
/// (for example a missing CUDA symbol) are reported as errors too.
pub fn run_tenant(spec: &TenantSpec, input: &mut dyn BufRead, out: &mut dyn Write) -> i32 {
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_role(spec, input, out)));
    let err = match result {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e.to_string(),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "tenant panicked".into()),
    };
    let _ = emit(out, &TenantMessage::Error(err));
    3
}

/// Entry point of a tenant process: read the spec from [`SPEC_ENV`] and run with the process's
/// stdin and stdout. Returns the exit code.
pub fn tenant_main() -> i32 {
    let mut out = std::io::stdout().lock();
    let spec = match std::env::var(SPEC_ENV)
        .map_err(|_| BenchError::Protocol(format!("{SPEC_ENV} is not set: this is an internal subcommand started by `tessera bench sharing`")))
        .and_then(|t| TenantSpec::from_json(&t))
    {
        Ok(s) => s,
        Err(e) => {
            let _ = emit(&mut out, &TenantMessage::Error(e.to_string()));
            return 3;
        }
    };
    let mut input = std::io::stdin().lock();
    run_tenant(&spec, &mut input, &mut out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that does nothing but count.
    struct Count {
        runs: u64,
    }

    impl Kernel for Count {
        fn work_per_iter(&self) -> f64 {
            10.0
        }
        fn run(&mut self, iters: u64) -> Result<(), BenchError> {
            self.runs += iters;
            std::hint::black_box(&self.runs);
            Ok(())
        }
    }

    struct Fails;
    impl Kernel for Fails {
        fn work_per_iter(&self) -> f64 {
            1.0
        }
        fn run(&mut self, _: u64) -> Result<(), BenchError> {
            Err(BenchError::Cuda {
                op: "cuMemcpyHtoDAsync".into(),
                detail: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
            })
        }
    }

    #[test]
    fn measure_counts_whole_batches() {
        let mut k = Count { runs: 0 };
        let out = measure(&mut k, 5, 0, 0.0).unwrap();
        // Start in the past: the tenant is late, runs one batch and stops.
        assert!(out.late_s > 0.0);
        assert_eq!(out.iterations, 5);
        assert_eq!(out.work, 50.0);
        assert!(out.end_unix_ns >= out.start_unix_ns);
    }

    #[test]
    fn calibrate_gives_at_least_one() {
        let mut k = Count { runs: 0 };
        assert!(calibrate(&mut k, 0.001).unwrap() >= 1);
        assert!(calibrate(&mut Fails, 0.001).is_err());
    }

    #[test]
    fn tenant_reports_ready_then_aborts_on_eof() {
        let spec = TenantSpec::new(
            0,
            Backend::CpuStandin,
            Role::Measure {
                workload: Workload::GemmSmall,
                shape: Shape::Gemm { m: 8, n: 8, k: 8 },
                duration_s: 0.01,
            },
        );
        let mut out = Vec::new();
        let code = run_tenant(&spec, &mut &b""[..], &mut out);
        assert_eq!(code, 0);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(matches!(
            TenantMessage::parse_line(lines[0]).unwrap().unwrap(),
            TenantMessage::Ready { .. }
        ));
    }

    #[test]
    fn tenant_measures_after_go() {
        let spec = TenantSpec::new(
            1,
            Backend::CpuStandin,
            Role::Measure {
                workload: Workload::Htod,
                shape: Shape::Copy { bytes: 4096 },
                duration_s: 0.01,
            },
        );
        let mut out = Vec::new();
        let go = crate::protocol::go_line(unix_ns());
        let code = run_tenant(&spec, &mut go.as_bytes(), &mut out);
        assert_eq!(code, 0);
        let text = String::from_utf8(out).unwrap();
        let last = text.lines().last().unwrap();
        match TenantMessage::parse_line(last).unwrap().unwrap() {
            TenantMessage::Result(r) => {
                assert!(r.iterations > 0);
                assert_eq!(r.work, r.iterations as f64 * 4096.0);
            }
            other => panic!("expected a result, got {other:?}"),
        }
    }
}
