//! The catalog and layout commands, run as a user runs them: the real binary.

mod common;

use std::collections::BTreeSet;

use common::{tessera, tessera_fails, tessera_json, tessera_ok};
use serde_json::Value;
use tessera_model::{Catalog, GpuModel, Placed};

#[test]
fn h100_nvl_placements_match_nvidia_smi_lgipp() {
    // What `nvidia-smi mig -lgipp` prints on a real H100 NVL (fixture h100-nvl_lgipp_1.txt).
    let v = tessera_json(&["profiles", "--gpu", "h100-nvl", "-o", "json"]);
    let by_id = |id: u64| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("profile id {id} missing"))
            .clone()
    };
    let expect: [(u64, &[u64], u64); 7] = [
        (19, &[0, 1, 2, 3, 4, 5, 6], 1),
        (20, &[0, 1, 2, 3, 4, 5, 6], 1),
        (15, &[0, 2, 4, 6], 2),
        (14, &[0, 2, 4], 2),
        (9, &[0, 4], 4),
        (5, &[0], 4),
        (0, &[0], 8),
    ];
    for (id, starts, size) in expect {
        let p = by_id(id);
        let got: Vec<u64> = p["placements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(got, starts, "profile {id}");
        assert_eq!(p["memory_slices"], size, "profile {id}");
        for field in ["name", "compute_slices", "memory_mib", "sm", "max"] {
            assert!(p.get(field).is_some(), "profile {id} lacks {field}");
        }
    }
}

/// Count valid layouts by include/exclude over every (profile, start), judged only by `validate`.
fn brute_force_count(m: &GpuModel) -> usize {
    fn go(m: &GpuModel, c: &[Placed], i: usize, mask: u32, cur: &mut Vec<Placed>) -> usize {
        if i == c.len() {
            return usize::from(m.validate(cur).is_empty());
        }
        let mut n = go(m, c, i + 1, mask, cur);
        if mask & m.mask(c[i]) == 0 {
            cur.push(c[i]);
            n += go(m, c, i + 1, mask | m.mask(c[i]), cur);
            cur.pop();
        }
        n
    }
    go(m, &m.candidates(), 0, 0, &mut Vec::new())
}

#[test]
fn layout_counts_agree_with_brute_force_for_every_model() {
    for m in &Catalog::builtin().models {
        let v = tessera_json(&["layouts", "--gpu", &m.key, "-o", "json"]);
        assert_eq!(
            v["count"].as_u64().unwrap() as usize,
            brute_force_count(m),
            "{}",
            m.key
        );
        assert_eq!(
            v["layouts"].as_array().unwrap().len(),
            v["count"].as_u64().unwrap() as usize
        );
        let maximal = tessera_json(&["layouts", "--gpu", &m.key, "--maximal", "-o", "json"]);
        assert!(maximal["count"].as_u64().unwrap() < v["count"].as_u64().unwrap());
    }
}

#[test]
fn layouts_are_distinct_and_drawn_in_table_mode() {
    let v = tessera_json(&["layouts", "--gpu", "a30", "-o", "json"]);
    let set: BTreeSet<String> = v["layouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.to_string())
        .collect();
    assert_eq!(set.len(), v["count"].as_u64().unwrap() as usize);
    let out = tessera(&["layouts", "--gpu", "a30", "--maximal"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[4g.24gb"), "{text}");
    assert!(text.contains("maximal layouts of a30-24gb"), "{text}");
}

/// `tessera check --gpu a100-80gb SPECS... -o json`.
fn check_args<'a>(specs: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["check", "--gpu", "a100-80gb"];
    args.extend_from_slice(specs);
    args.extend(["-o", "json"]);
    args
}

#[test]
fn check_reports_valid_invalid_and_unknown() {
    let ok = tessera_ok(&check_args(&["3g.40gb@0", "2g.20gb@4", "1g.10gb@6"]));
    let v: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["errors"].as_array().unwrap().len(), 0);

    let bad = tessera(&check_args(&["3g.40gb@0", "2g.20gb@2"]));
    assert_eq!(bad.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let errs = v["errors"].to_string();
    assert!(
        errs.contains("3g.40gb@0") && errs.contains("2g.20gb@2") && errs.contains("overlap"),
        "{errs}"
    );

    let msg = tessera_fails(&["check", "--gpu", "v100", "1g.5gb@0"], 2);
    assert!(msg.contains("v100") && msg.contains("h100-80gb"), "{msg}");

    let msg = tessera_fails(&["check", "--gpu", "h100-80gb", "3g.20gb@0"], 2);
    assert!(msg.contains("3g.20gb") && msg.contains("3g.40gb"), "{msg}");
}

#[test]
fn gpus_lists_every_model_in_every_format() {
    let v = tessera_json(&["gpus", "-o", "json"]);
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    for k in [
        "a30-24gb",
        "a100-40gb",
        "a100-80gb",
        "h100-80gb",
        "h100-nvl-94gb",
        "gh200-96gb",
        "h200-141gb",
        "b200-180gb",
        "rtx-pro-6000-blackwell-96gb",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    let y = tessera(&["gpus", "-o", "yaml"]);
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&y.stdout).unwrap();
    assert_eq!(parsed.as_sequence().unwrap().len(), keys.len());
    let t = String::from_utf8(tessera(&["gpus"]).stdout).unwrap();
    assert!(
        t.contains("h100-pcie-80gb") && t.contains("h100-pcie"),
        "{t}"
    );
    // Product names (long) only in the wide table.
    let t = String::from_utf8(tessera(&["-o", "wide", "gpus"]).stdout).unwrap();
    assert!(t.contains("NVIDIA H100 80GB HBM3"), "{t}");
}

#[test]
fn a_catalog_file_adds_and_overrides_models() {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = Catalog::builtin().lookup("a30").unwrap().clone();
    extra.key = "my-a30".into();
    extra.aliases.clear();
    extra.names = vec!["My Lab A30".into()];
    let file = Catalog {
        schema_version: 1,
        sources: Default::default(),
        models: vec![extra],
    };
    let path = dir.path().join("extra.yaml");
    std::fs::write(&path, file.to_yaml()).unwrap();
    let p = path.to_str().unwrap();
    let v = tessera_json(&[
        "--catalog",
        p,
        "profiles",
        "--gpu",
        "My Lab A30",
        "-o",
        "json",
    ]);
    assert_eq!(v.as_array().unwrap().len(), 5);

    std::fs::write(&path, "schema_version: 1\nmodels: [{key: x}]").unwrap();
    let err = tessera_fails(&["--catalog", p, "gpus"], 2);
    assert!(err.contains("extra.yaml"), "{err}");
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../model/tests/fixtures/nvidia-smi/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `tessera catalog import --lgip LGIP --lgipp LGIPP --key KEY`.
fn import_args<'a>(lgip: &'a str, lgipp: &'a str, key: &'a str) -> [&'a str; 8] {
    [
        "catalog", "import", "--lgip", lgip, "--lgipp", lgipp, "--key", key,
    ]
}

#[test]
fn catalog_import_reproduces_the_catalog_for_every_fixture_pair() {
    let pairs = [
        (
            "h100-80gb_lgip_2.txt",
            "h100-80gb_lgipp_2.txt",
            "h100-pcie-80gb",
        ),
        (
            "h100-nvl_lgip_1.txt",
            "h100-nvl_lgipp_1.txt",
            "h100-nvl-94gb",
        ),
        (
            "rtx-pro-6000_lgip_1.txt",
            "rtx-pro-6000_lgipp_1.txt",
            "rtx-pro-6000-blackwell-96gb",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (lgip, lgipp, key) in pairs {
        let out = tessera_ok(&import_args(&fixture(lgip), &fixture(lgipp), "imported"));
        // The printed entry is a valid catalog file: load it back and compare with the built-in model.
        let file = dir.path().join(format!("{key}.yaml"));
        std::fs::write(&file, &out.stdout).unwrap();
        // `tessera COMMAND --gpu MODEL -o json` for the imported model and for the built-in one.
        let imported_and_builtin = |command: &str| {
            let catalog = file.to_str().unwrap();
            (
                tessera_json(&[
                    "--catalog",
                    catalog,
                    command,
                    "--gpu",
                    "imported",
                    "-o",
                    "json",
                ]),
                tessera_json(&[command, "--gpu", key, "-o", "json"]),
            )
        };
        let (imported, builtin) = imported_and_builtin("profiles");
        let shape = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    format!(
                        "{} {} {} {} {} {}",
                        p["name"],
                        p["id"],
                        p["compute_slices"],
                        p["memory_slices"],
                        p["max"],
                        p["placements"]
                    )
                })
                .collect()
        };
        assert_eq!(shape(&imported), shape(&builtin), "{key}");
        let (layouts_a, layouts_b) = imported_and_builtin("layouts");
        assert_eq!(layouts_a["count"], layouts_b["count"], "{key}");
    }
}

#[test]
fn catalog_import_rejects_malformed_input_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-lgipp.txt");
    std::fs::write(&bad, "GPU  0 Profile ID 19 Placements: {0,1,2,3,4,5,6}:1\nGPU  0 Profile ID 15 Placements: {0,2,4,6:2\n").unwrap();
    let msg = tessera_fails(
        &import_args(&fixture("h100-nvl_lgip_1.txt"), bad.to_str().unwrap(), "x"),
        2,
    );
    assert!(msg.contains("line 2"), "{msg}");
    let err = tessera_fails(
        &import_args("/nonexistent/lgip", bad.to_str().unwrap(), "x"),
        2,
    );
    assert!(err.contains("/nonexistent/lgip"), "{err}");
}
