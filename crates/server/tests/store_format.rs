//! The state database's format: the store keeps its own row types (`StoredAsk`,
//! `StoredSlice`) rather than the API's JSON types, and a database written before that change
//! (`fixtures/tessera-v1.db`, written by the store as it was, schema version 1) opens and
//! reads the same, and new rows are written in the same JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_server::store::{NewRequest, Store, StoredAsk};
use tessera_server::wire::{RequestState, Slice, SliceAsk};

fn fixture_copy(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tessera-v1.db");
    let dst = dir.join("tessera.db");
    std::fs::copy(src, &dst).unwrap();
    dst
}

/// `(ask, slice)` column texts of every request, by ID.
fn raw_columns(path: &Path) -> Vec<(u64, String, Option<String>)> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut st = c
        .prepare("SELECT id, ask, slice FROM requests ORDER BY id")
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn a_database_written_by_the_previous_store_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_copy(dir.path());
    let s = Store::open(&path).unwrap();
    let rows = s.all().unwrap();
    let asks: Vec<SliceAsk> = rows.iter().map(|r| r.ask.clone()).collect();
    assert_eq!(
        asks,
        vec![
            SliceAsk::Mig {
                profile: "3g.40gb".into()
            },
            SliceAsk::Mem {
                memory_mib: 12288,
                sm_percent: None
            },
            SliceAsk::Mem {
                memory_mib: 8192,
                sm_percent: Some(25)
            },
            SliceAsk::Mps {
                memory_mib: 4096,
                sm_percent: Some(10)
            },
            SliceAsk::Share,
            SliceAsk::Mig {
                profile: "1g.10gb".into()
            },
        ]
    );
    let states: Vec<RequestState> = rows.iter().map(|r| r.state).collect();
    use RequestState::*;
    assert_eq!(
        states,
        vec![Leased, Done, Queued, Cancelled, Leased, Queued]
    );
    assert_eq!(
        rows[0].slice,
        Some(Slice::Mig {
            gpu: 0,
            profile: "3g.40gb".into(),
            start: 4,
            uuid: "MIG-aaaa".into()
        })
    );
    assert_eq!(
        rows[1].slice,
        Some(Slice::Mps {
            gpu: 1,
            memory_mib: 12288,
            sm_percent: 15
        })
    );
    assert_eq!(rows[4].slice, Some(Slice::Timeslice { gpu: 2, replica: 3 }));
    assert_eq!(rows[2].slice, None);
    assert_eq!(rows[0].env["CUDA_VISIBLE_DEVICES"], "MIG-aaaa");
    assert_eq!(rows[0].gpu_model.as_deref(), Some("h100-80gb"));
    assert_eq!((rows[0].pid, rows[0].pid_start), (Some(4000), Some(123456)));
    assert_eq!(rows[0].priority, -2);
    assert_eq!(rows[0].command, vec!["python", "train0.py"]);
    assert_eq!(
        (rows[1].exit_code, rows[1].end_reason.as_deref()),
        (Some(0), Some("exit 0"))
    );
    assert!(rows[4].cancel_requested);
    assert_eq!(
        s.desired().unwrap()[&0],
        vec!["3g.40gb@4".to_string(), "1g.10gb@0".to_string()]
    );
    assert_eq!(s.journal().unwrap().len(), 1);
    assert!(s.drained().unwrap().contains(&3));
    assert_eq!(s.counter("repartitions").unwrap(), 2);
}

/// New rows are written in the same JSON as the previous store wrote: a database keeps one
/// format across the change.
#[test]
fn new_rows_are_written_in_the_format_the_previous_store_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let old = raw_columns(&fixture_copy(dir.path()));
    let fresh = dir.path().join("fresh.db");
    let mut s = Store::open(&fresh).unwrap();
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    let rows = Store::open(&fixture_copy(&again)).unwrap().all().unwrap();
    for r in &rows {
        let id = s
            .insert(&NewRequest {
                uid: r.uid,
                user: r.user.clone(),
                pid: r.pid,
                pid_start: r.pid_start,
                ask: r.ask.clone(),
                gpu_model: r.gpu_model.clone(),
                priority: r.priority,
                command: r.command.clone(),
                submitted_ms: r.submitted_ms,
            })
            .unwrap();
        assert_eq!(id, r.id);
        if let Some(slice) = &r.slice {
            let env: BTreeMap<String, String> = r.env.clone();
            assert!(s.grant(id, slice, &env, 1).unwrap());
        }
    }
    drop(s);
    assert_eq!(raw_columns(&fresh), old);
    // The stored ask is the store's own type, with the same JSON.
    let text = &old[0].1;
    let stored: StoredAsk = serde_json::from_str(text).unwrap();
    assert_eq!(serde_json::to_string(&stored).unwrap(), *text);
}
