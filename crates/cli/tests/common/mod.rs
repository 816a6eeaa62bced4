//! Helpers for the CLI tests that run the real `tessera` binary once per command and read what
//! it printed. (The daemon tests have theirs in `server_common`.)

#![allow(dead_code)]

use std::process::{Command, Output};

/// Run `tessera ARGS...` to its end.
pub fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera")
}

/// Run `tessera ARGS...` and assert that it exited 0; if not, the message names the command and
/// shows its stderr.
#[track_caller]
pub fn tessera_ok(args: &[&str]) -> Output {
    let out = tessera(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "tessera {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run `tessera ARGS...`, assert that it exited 0 and read its stdout as JSON.
#[track_caller]
pub fn tessera_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&tessera_ok(args).stdout).expect("stdout is JSON")
}

/// Run `tessera ARGS...`, assert that it exited with `code` (1: a valid request that cannot be
/// satisfied, 2: bad input), and return its stderr.
#[track_caller]
pub fn tessera_fails(args: &[&str], code: i32) -> String {
    let out = tessera(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "tessera {args:?}: {stderr}");
    stderr
}
