//! Ctrl-C and SIGTERM during a benchmark: the signal only sets a flag; the parent notices it
//! within a fraction of a second, stops its tenant processes, stops the MPS daemon and restores
//! the compute mode (through the usual drop guards), and returns [`BenchError::Interrupted`].
//! Without this, an interrupted `mps` run would leave the daemon running and the GPU in
//! `EXCLUSIVE_PROCESS` mode.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::BenchError;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Route SIGINT and SIGTERM to the flag (call once, in the process that runs the benchmark).
pub fn install() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only performs an atomic store, which is async-signal-safe; the
    // sigaction struct is fully initialised (zeroed, then handler and empty mask set).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// Whether an interrupt arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once an interrupt arrived.
pub fn check() -> Result<(), BenchError> {
    if interrupted() {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}
