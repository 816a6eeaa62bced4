//! The crate graph is the architecture: this test fails, in words, when a crate depends on
//! something its layer may not use, or when a source file lacks its `//!` module doc.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Dependency names of the `[dependencies]` table (not dev- or build-dependencies).
fn normal_deps(manifest: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_deps =
                t == "[dependencies]" || t.starts_with("[target.") && t.ends_with(".dependencies]");
            continue;
        }
        if in_deps && !t.is_empty() && !t.starts_with('#') {
            if let Some((name, _)) = t.split_once('=') {
                // `foo.workspace = true` and `foo = { ... }` both name `foo`.
                let name = name.trim().split('.').next().unwrap_or_default();
                deps.push(name.trim_matches('"').to_string());
            }
        }
    }
    deps
}

const IO_CRATES: &[&str] = &[
    "tokio",
    "rusqlite",
    "redb",
    "nvml-wrapper",
    "nvml-wrapper-sys",
    "kube",
    "tonic",
    "axum",
    "cudarc",
    "hyper",
];

#[test]
fn layers_depend_only_downwards() {
    // crate -> the tessera crates it may use.
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("model", &[][..]),
        ("planner", &["tessera-model"][..]),
        ("gpu", &["tessera-model"][..]),
        ("isolation", &[][..]),
        (
            "agent",
            &["tessera-model", "tessera-gpu", "tessera-planner"][..],
        ),
        ("bench", &["tessera-model", "tessera-gpu"][..]),
        ("api", &[][..]),
        (
            "server",
            &[
                "tessera-model",
                "tessera-planner",
                "tessera-gpu",
                "tessera-agent",
                "tessera-isolation",
                "tessera-api",
            ][..],
        ),
        (
            "kubelet",
            &[
                "tessera-model",
                "tessera-gpu",
                "tessera-agent",
                "tessera-isolation",
            ][..],
        ),
        (
            "k8s",
            &[
                "tessera-model",
                "tessera-planner",
                "tessera-gpu",
                "tessera-agent",
                "tessera-kubelet",
                "tessera-api",
            ][..],
        ),
        (
            "vgpu",
            &[
                "tessera-model",
                "tessera-planner",
                "tessera-gpu",
                "tessera-agent",
            ][..],
        ),
        (
            "sim",
            &[
                "tessera-model",
                "tessera-planner",
                "tessera-gpu",
                "tessera-agent",
            ][..],
        ),
    ]);
    let root = workspace_root();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let deps = normal_deps(&manifest);
        if name == "cli" {
            continue;
        }
        let Some(ok) = allowed.get(name.as_str()) else {
            problems.push(format!("crates/{name} is not in the layer table of this test: add it with the crates it may use"));
            continue;
        };
        for d in &deps {
            if d.starts_with("tessera-") && !ok.contains(&d.as_str()) {
                problems.push(format!(
                    "{name} may not depend on {d}: it is a lower layer than {d}"
                ));
            }
            if name == "api" && IO_CRATES.contains(&d.as_str()) && d != "tokio" {
                problems.push(format!(
                    "api may not depend on {d}: a client needs only serde and a socket (tokio)"
                ));
            }
            if (name == "model" || name == "planner") && IO_CRATES.contains(&d.as_str()) {
                problems.push(format!(
                    "{name} may not depend on {d}: it is the pure core (no I/O, no async)"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "architecture rules broken:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn pure_core_does_no_io() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for krate in ["model", "planner"] {
        for file in rust_files(&root.join("crates").join(krate).join("src")) {
            let text = std::fs::read_to_string(&file).unwrap();
            for forbidden in [
                "std::fs",
                "std::net",
                "SystemTime::now",
                "Instant::now",
                "thread_rng",
            ] {
                if text.contains(forbidden) {
                    problems.push(format!(
                        "{} uses {forbidden}: the pure core may not do I/O or read clocks",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_module_has_a_doc_comment() {
    let root = workspace_root();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        for file in rust_files(&src) {
            let text = std::fs::read_to_string(&file).unwrap();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            if !first.trim_start().starts_with("//!") {
                missing.push(file.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "these files lack a `//!` module doc at the top:\n  {}",
        missing.join("\n  ")
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The daemon's client commands reach it through `tessera-api` only, so their code path needs no
/// SQLite, HTTP server or NVML (and `tessera-api` itself depends on none of them).
#[test]
fn client_commands_use_only_the_api_crate() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for cmd in ["run", "ps", "status", "cancel", "drain", "daemon_client"] {
        let file = root.join("crates/cli/src/cmd").join(format!("{cmd}.rs"));
        let text = std::fs::read_to_string(&file).unwrap();
        if text.contains("tessera_server") {
            problems.push(format!(
                "{} uses tessera_server: a client command talks to the daemon through tessera_api",
                file.display()
            ));
        }
    }
    let api = std::fs::read_to_string(root.join("crates/api/Cargo.toml")).unwrap();
    for d in normal_deps(&api) {
        if d.starts_with("tessera-") || ["rusqlite", "axum", "nvml-wrapper"].contains(&d.as_str()) {
            problems.push(format!("tessera-api may not depend on {d}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `Result<…, String>` types in `text`, as `line: type`: a `Result` whose last generic
/// argument is `String`, however the type is spread over lines (line comments are skipped, and
/// the `->` of an `Fn(..) -> ..` inside the type is not taken for a closing bracket).
fn string_results(text: &str) -> Vec<(usize, String)> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("Result<") {
        let start = from + at;
        from = start + 1;
        // `io::Result<` and `fmt::Result<` are aliases with a fixed error type.
        let before = code[..start].trim_end();
        if before.ends_with("::") && !before.ends_with("result::") {
            continue;
        }
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let open = start + "Result<".len();
        let (mut depth, mut i) = (1usize, open);
        // Start of the last and of the one-before-last top-level argument (a trailing comma
        // leaves the last one empty).
        let (mut prev_arg, mut last_arg) = (open, open);
        while i < bytes.len() && depth > 0 {
            match bytes[i] {
                b'-' | b'=' if bytes.get(i + 1) == Some(&b'>') => i += 1,
                b'<' | b'(' | b'[' => depth += 1,
                b'>' | b')' | b']' => depth -= 1,
                b',' if depth == 1 => (prev_arg, last_arg) = (last_arg, i + 1),
                b';' | b'{' => break,
                _ => {}
            }
            i += 1;
        }
        let error = match code[last_arg..i.saturating_sub(1)].trim() {
            "" => code[prev_arg..last_arg.saturating_sub(1)].trim(),
            e => e,
        };
        if depth == 0 && last_arg > open && error == "String" {
            let line = code[..start].matches('\n').count() + 1;
            let ty: String = code[start..i]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            found.push((line, ty));
        }
    }
    found
}

#[test]
fn the_string_result_scanner_finds_what_it_should() {
    let text = "fn a() -> Result<(), String> {}\n\
                fn b() -> Result<\n    BTreeMap<String, String>,\n    String,\n> {}\n\
                fn c(f: &dyn Fn(u32) -> Result<u32, String>) {}\n\
                fn d() -> Result<BTreeMap<String, String>, MpsError> {}\n\
                fn e() -> io::Result<String> {}\n\
                // fn f() -> Result<(), String>\n\
                fn g() -> Result<String, Error> {}\n";
    let lines: Vec<usize> = string_results(text).into_iter().map(|(l, _)| l).collect();
    assert_eq!(lines, vec![1, 2, 6]);
}

/// Libraries return typed errors (thiserror, causes kept with `#[source]`); a `String` error
/// loses the cause and the kind the CLI chooses its exit code from. Issue 13 item 5.
#[test]
fn no_library_returns_a_string_error() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        for file in rust_files(&src) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (line, ty) in string_results(&text) {
                let rel = file
                    .strip_prefix(&root)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                problems.push(format!("{rel}:{line}: {ty}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "these return a `String` error: give them a thiserror type that names the problem and the \
         fix, with the cause as #[source]:\n  {}",
        problems.join("\n  ")
    );
}
