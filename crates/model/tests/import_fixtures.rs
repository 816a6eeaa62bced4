//! The nvidia-smi importer against the real captures in `tests/fixtures/nvidia-smi/`
//! (copied unchanged from the project's shared fixtures): every capture parses, exact values
//! per file, fixture pairs import to the built-in catalog's entry, malformed input names its line.

use std::collections::BTreeMap;

use tessera_model::catalog::{CiProfile, Engines};
use tessera_model::import::{
    compute_profiles_from_lcip, import_model, import_model_for_gpu, parse_lcip, parse_lgip,
    parse_lgipp, ImportError, Input, LgipRow, LineProblem,
};
use tessera_model::{Catalog, GpuModel};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("fixtures/nvidia-smi/", $name))
    };
}

const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nvidia-smi");

fn engines(dec: u32, enc: u32, ce: u32, jpeg: u32, ofa: u32) -> Engines {
    Engines {
        dec: Some(dec),
        enc: Some(enc),
        ce: Some(ce),
        jpeg: Some(jpeg),
        ofa: Some(ofa),
    }
}

fn row<'a>(rows: &'a [LgipRow], name: &str) -> &'a LgipRow {
    rows.iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no row `{name}`"))
}

#[test]
fn every_lgip_lgipp_and_lcip_fixture_parses() {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut names: Vec<_> = std::fs::read_dir(FIXTURE_DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in &names {
        let text = std::fs::read_to_string(format!("{FIXTURE_DIR}/{name}")).unwrap();
        let kind = if name.contains("_lgipp_") {
            let rows = parse_lgipp(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                rows.iter().all(|r| r.gpu == 0 && !r.placements.is_empty()),
                "{name}"
            );
            "lgipp"
        } else if name.contains("_lgip_") {
            let rows = parse_lgip(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            for r in &rows {
                assert_eq!(r.gpu, 0, "{name}");
                assert!(r.sm.is_some(), "{name}: {} has no SM count", r.name);
                assert!(
                    r.engines.ce.is_some() && r.engines.ofa.is_some(),
                    "{name}: {r:?}"
                );
                assert!(r.instances_free <= r.instances_total, "{name}: {r:?}");
            }
            "lgip"
        } else if name.contains("_lcip_") {
            let rows = parse_lcip(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                rows.iter()
                    .all(|r| r.sm.is_some() && r.engines.jpeg.is_some()),
                "{name}"
            );
            "lcip"
        } else {
            continue;
        };
        *counts.entry(kind).or_default() += 1;
    }
    // Guard against a fixture silently not being looked at.
    assert_eq!(counts.get("lgip"), Some(&9), "{counts:?}");
    assert_eq!(counts.get("lgipp"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("lcip"), Some(&3), "{counts:?}");
}

#[test]
fn fixtures_are_copied_unchanged_with_their_readme() {
    let readme = fixture!("README.md");
    assert!(readme.starts_with("# nvidia-smi MIG output fixtures"));
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let file = line[3..].split('`').next().unwrap();
        assert!(
            std::path::Path::new(&format!("{FIXTURE_DIR}/{file}")).exists(),
            "README lists {file}, which is missing"
        );
    }
}

#[test]
fn lgip_a100_40gb_older_driver() {
    let rows = parse_lgip(fixture!("a100-40gb_lgip_1.txt")).unwrap();
    assert_eq!(rows.len(), 6);
    let r = &rows[0];
    assert_eq!(
        (
            r.line,
            r.gpu,
            r.name.as_str(),
            r.id,
            r.instances_free,
            r.instances_total
        ),
        (10, 0, "1g.5gb", 19, 0, 7)
    );
    assert_eq!(
        (r.memory_gib, r.memory_mib, r.p2p, r.sm),
        (4.75, 4864, Some(false), Some(14))
    );
    assert_eq!(r.engines, engines(0, 0, 1, 0, 0));
    let r = row(&rows, "7g.40gb");
    assert_eq!(
        (r.id, r.instances_total, r.memory_gib, r.sm),
        (0, 1, 39.5, Some(98))
    );
    assert_eq!(r.engines, engines(5, 0, 7, 1, 1));
    assert_eq!(row(&rows, "1g.5gb+me").engines, engines(1, 0, 1, 1, 1));
    assert!(rows.iter().all(|r| r.instances_free == 0));
}

#[test]
fn lgip_a100_40gb_newer_driver_has_1g_10gb() {
    let rows = parse_lgip(fixture!("a100-40gb_lgip_2.txt")).unwrap();
    assert_eq!(rows.len(), 7);
    let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "1g.5gb",
            "1g.5gb+me",
            "1g.10gb",
            "2g.10gb",
            "3g.20gb",
            "4g.20gb",
            "7g.40gb"
        ]
    );
    let r = row(&rows, "1g.10gb");
    assert_eq!(
        (r.line, r.id, r.instances_free, r.instances_total),
        (16, 15, 4, 4)
    );
    assert_eq!((r.memory_gib, r.memory_mib), (9.75, 9984));
}

#[test]
fn lgip_a100_80gb_and_a30() {
    let rows = parse_lgip(fixture!("a100-80gb_lgip_1.txt")).unwrap();
    assert_eq!(rows.len(), 6);
    let r = row(&rows, "7g.80gb");
    assert_eq!(
        (r.id, r.memory_gib, r.memory_mib, r.sm),
        (0, 79.0, 80896, Some(98))
    );
    assert_eq!(row(&rows, "1g.10gb").memory_mib, 9728);

    let rows = parse_lgip(fixture!("a30_lgip_1.txt")).unwrap();
    assert_eq!(rows.len(), 5);
    let r = row(&rows, "2g.12gb+me");
    assert_eq!(
        (r.id, r.instances_total, r.memory_gib, r.memory_mib),
        (6, 1, 11.69, 11968)
    );
    assert_eq!(r.engines, engines(2, 0, 2, 1, 1));
    assert_eq!(row(&rows, "4g.24gb").memory_mib, 24000);
}

#[test]
fn lgip_hopper_captures() {
    let rows = parse_lgip(fixture!("gh200_lgip_1.txt")).unwrap();
    assert_eq!(rows.len(), 7);
    let r = row(&rows, "7g.96gb");
    assert_eq!((r.id, r.memory_gib, r.sm), (0, 93.0, Some(132)));
    assert_eq!(r.engines, engines(7, 0, 8, 7, 1));

    let rows = parse_lgip(fixture!("h100-80gb_lgip_2.txt")).unwrap();
    assert_eq!(rows.len(), 7);
    let sms: Vec<_> = rows.iter().map(|r| r.sm.unwrap()).collect();
    assert_eq!(sms, [14, 14, 14, 30, 46, 62, 114]);
    assert_eq!(row(&rows, "1g.10gb").memory_mib, 9856);

    let rows = parse_lgip(fixture!("h100-nvl_lgip_1.txt")).unwrap();
    assert_eq!(rows.len(), 7);
    assert_eq!(row(&rows, "7g.94gb").memory_mib, 95360);
    assert_eq!(row(&rows, "3g.47gb").memory_mib, 47488);

    // Captured while two 3g.47gb instances existed: every free count is 0, totals intact.
    let rows = parse_lgip(fixture!("h100-nvl_lgip_2.txt")).unwrap();
    assert_eq!(rows.len(), 7);
    assert!(rows.iter().all(|r| r.instances_free == 0));
    let totals: Vec<_> = rows.iter().map(|r| r.instances_total).collect();
    assert_eq!(totals, [7, 1, 4, 3, 2, 1, 1]);
    assert_eq!(row(&rows, "7g.94gb").memory_gib, 92.62);
}

#[test]
fn lgip_rtx_pro_6000_wide_table() {
    let rows = parse_lgip(fixture!("rtx-pro-6000_lgip_1.txt")).unwrap();
    assert_eq!(rows.len(), 11);
    let r = row(&rows, "1g.24gb+me.all");
    assert_eq!(
        (r.line, r.id, r.instances_total, r.sm),
        (19, 65, 1, Some(46))
    );
    assert_eq!(r.engines, engines(4, 4, 1, 4, 1));
    let r = row(&rows, "4g.96gb+gfx");
    assert_eq!(
        (r.id, r.memory_gib, r.memory_mib, r.sm),
        (32, 95.12, 97408, Some(188))
    );
    assert_eq!(row(&rows, "2g.48gb-me").engines, engines(0, 0, 2, 0, 0));
}

#[test]
fn lgipp_fixtures() {
    let rows = parse_lgipp(fixture!("h100-80gb_lgipp_2.txt")).unwrap();
    assert_eq!(rows.len(), 7);
    assert_eq!(
        (
            rows[0].line,
            rows[0].id,
            rows[0].placements.clone(),
            rows[0].size
        ),
        (5, 19, vec![0, 1, 2, 3, 4, 5, 6], 1)
    );
    // The singular `Placement :` form.
    assert_eq!(
        (
            rows[5].line,
            rows[5].id,
            rows[5].placements.clone(),
            rows[5].size
        ),
        (10, 5, vec![0], 4)
    );

    let rows = parse_lgipp(fixture!("h100-nvl_lgipp_1.txt")).unwrap();
    let by_id: BTreeMap<u32, (Vec<u32>, u32)> = rows
        .iter()
        .map(|r| (r.id, (r.placements.clone(), r.size)))
        .collect();
    assert_eq!(by_id[&15], (vec![0, 2, 4, 6], 2));
    assert_eq!(by_id[&14], (vec![0, 2, 4], 2));
    assert_eq!(by_id[&9], (vec![0, 4], 4));
    assert_eq!(by_id[&0], (vec![0], 8));

    let rows = parse_lgipp(fixture!("rtx-pro-6000_lgipp_1.txt")).unwrap();
    assert_eq!(rows.len(), 11);
    let r = rows.iter().find(|r| r.id == 65).unwrap();
    assert_eq!((r.placements.clone(), r.size), (vec![0, 3, 6, 9], 3));
    let r = rows.last().unwrap();
    assert_eq!(
        (r.line, r.id, r.placements.clone(), r.size),
        (15, 32, vec![0], 12)
    );
}

#[test]
fn lcip_fixtures() {
    let rows = parse_lcip(fixture!("a100-40gb_lcip_1.txt")).unwrap();
    assert_eq!(rows.len(), 3);
    let r = &rows[0];
    assert_eq!(
        (
            r.line,
            r.gpu,
            r.gpu_instance,
            r.name.as_str(),
            r.id,
            r.default
        ),
        (11, 0, 9, "1g.5gb", 0, true)
    );
    assert_eq!(
        (r.instances_free, r.instances_total, r.sm),
        (0, 1, Some(14))
    );
    assert_eq!(r.engines, engines(0, 0, 1, 0, 0));
    assert_eq!(
        (rows[1].gpu_instance, rows[1].name.as_str(), rows[1].default),
        (3, "1c.2g.10gb", false)
    );

    let rows = parse_lcip(fixture!("a100-80gb_lcip_1.txt")).unwrap();
    assert_eq!(rows.len(), 3);
    let r = &rows[0];
    assert_eq!(
        (
            r.name.as_str(),
            r.id,
            r.instances_free,
            r.instances_total,
            r.sm
        ),
        ("1c.3g.40gb", 0, 3, 3, Some(14))
    );
    assert_eq!(r.engines, engines(2, 0, 3, 0, 0));
    assert_eq!(
        (
            rows[2].name.as_str(),
            rows[2].id,
            rows[2].default,
            rows[2].sm
        ),
        ("3g.40gb", 2, true, Some(42))
    );

    let rows = parse_lcip(fixture!("a30_lcip_1.txt")).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[1].gpu_instance,
            rows[1].name.as_str(),
            rows[1].id,
            rows[1].default
        ),
        (2, "2g.12gb", 1, true)
    );
    assert_eq!(rows[0].instances_total, 2);
}

/// The fields an import must reproduce exactly.
fn assert_same_structure(imported: &GpuModel, cat: &GpuModel) {
    assert_eq!(imported.compute_slices, cat.compute_slices, "{}", cat.key);
    assert_eq!(imported.memory_slices, cat.memory_slices, "{}", cat.key);
    assert_eq!(imported.max_instances, cat.max_instances, "{}", cat.key);
    assert_eq!(imported.profile_names(), cat.profile_names(), "{}", cat.key);
    for (a, b) in imported.profiles.iter().zip(&cat.profiles) {
        let ctx = format!("{} {}", cat.key, b.name);
        assert_eq!(a.id, b.id, "{ctx}");
        assert_eq!(a.compute_slices, b.compute_slices, "{ctx}");
        assert_eq!(a.memory_slices, b.memory_slices, "{ctx}");
        assert_eq!(a.max, b.max, "{ctx}");
        assert_eq!(a.placements, b.placements, "{ctx}");
    }
}

#[test]
fn fixture_pairs_import_to_the_catalog_entries() {
    let pairs = [
        (
            fixture!("h100-80gb_lgip_2.txt"),
            fixture!("h100-80gb_lgipp_2.txt"),
            "h100-pcie-80gb",
        ),
        (
            fixture!("h100-nvl_lgip_1.txt"),
            fixture!("h100-nvl_lgipp_1.txt"),
            "h100-nvl-94gb",
        ),
        (
            fixture!("rtx-pro-6000_lgip_1.txt"),
            fixture!("rtx-pro-6000_lgipp_1.txt"),
            "rtx-pro-6000-blackwell-96gb",
        ),
    ];
    for (lgip, lgipp, key) in pairs {
        let cat = Catalog::builtin().lookup(key).unwrap();
        let imp = import_model(key, lgip, lgipp, None).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(imp.gpu, 0);
        assert!(imp.warnings.is_empty(), "{key}: {:?}", imp.warnings);
        let m = &imp.model;
        m.check().unwrap();
        assert_same_structure(m, cat);
        // These captures are the catalog's own source for these models (same driver), so the
        // measured numbers agree too.
        for (a, b) in m.profiles.iter().zip(&cat.profiles) {
            let ctx = format!("{key} {}", b.name);
            assert_eq!(a.sm, b.sm, "{ctx}");
            assert_eq!(a.engines, b.engines, "{ctx}");
            assert_eq!(a.memory_gib, b.memory_gib, "{ctx}");
            assert_eq!(a.memory_mib, b.memory_mib, "{ctx}");
            assert_eq!(a.sources, ["nvidia-smi"], "{ctx}");
            assert_eq!(a.inferred, ["memory_mib"], "{ctx}");
        }
        assert_eq!(m.key, key);
        assert!(m.names.is_empty() && m.pci_device_ids.is_empty());
        // Same layout space as the catalog entry.
        assert_eq!(
            m.enumerate_layouts().len(),
            cat.enumerate_layouts().len(),
            "{key}"
        );
    }
}

#[test]
fn lgip_only_fixtures_agree_with_the_catalog() {
    // (fixture, catalog key, whether this capture's GiB values are the catalog's or listed in
    // its memory_gib_other; older/other drivers print different memory).
    let cases = [
        (fixture!("a100-40gb_lgip_1.txt"), "a100-40gb", true),
        (fixture!("a100-40gb_lgip_2.txt"), "a100-40gb", true),
        (fixture!("a100-80gb_lgip_1.txt"), "a100-80gb", true),
        (fixture!("a30_lgip_1.txt"), "a30-24gb", true),
        (fixture!("gh200_lgip_1.txt"), "gh200-96gb", true),
        (fixture!("h100-80gb_lgip_2.txt"), "h100-pcie-80gb", true),
        (fixture!("h100-nvl_lgip_1.txt"), "h100-nvl-94gb", true),
        (fixture!("h100-nvl_lgip_2.txt"), "h100-nvl-94gb", false),
        (
            fixture!("rtx-pro-6000_lgip_1.txt"),
            "rtx-pro-6000-blackwell-96gb",
            true,
        ),
    ];
    for (text, key, same_memory) in cases {
        let cat = Catalog::builtin().lookup(key).unwrap();
        let rows = parse_lgip(text).unwrap();
        for r in &rows {
            let ctx = format!("{key} {}", r.name);
            let p = cat.profile(
                cat.profile_named(&r.name)
                    .unwrap_or_else(|| panic!("{ctx}: not in catalog")),
            );
            assert_eq!(p.id, Some(r.id), "{ctx}");
            assert_eq!(u32::from(p.max), r.instances_total, "{ctx}");
            assert_eq!(p.sm, r.sm, "{ctx}");
            assert_eq!(p.engines, r.engines, "{ctx}");
            if same_memory {
                let gib = p.memory_gib.unwrap();
                assert!(
                    gib == r.memory_gib || p.memory_gib_other.contains(&r.memory_gib),
                    "{ctx}: {} not among {gib} {:?}",
                    r.memory_gib,
                    p.memory_gib_other
                );
            }
        }
        // Catalog order is -lgip order.
        let order: Vec<_> = rows
            .iter()
            .map(|r| cat.profile_named(&r.name).unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{key}: order differs"
        );
    }
}

/// (name, id, sm, max, default) of a compute-instance profile.
type CiFacts = (String, Option<u32>, Option<u32>, Option<u32>, bool);

fn strip_meta(list: &[CiProfile]) -> Vec<CiFacts> {
    list.iter()
        .map(|c| (c.name.clone(), c.id, c.sm, c.max, c.default))
        .collect()
}

#[test]
fn lcip_fixtures_match_the_catalog_compute_profiles() {
    let cases = [
        (
            fixture!("a100-40gb_lcip_1.txt"),
            "a100-40gb",
            vec!["1g.5gb", "2g.10gb"],
        ),
        (
            fixture!("a100-80gb_lcip_1.txt"),
            "a100-80gb",
            vec!["3g.40gb"],
        ),
        (fixture!("a30_lcip_1.txt"), "a30-24gb", vec!["2g.12gb"]),
    ];
    for (text, key, parents) in cases {
        let cat = Catalog::builtin().lookup(key).unwrap();
        let rows = parse_lcip(text).unwrap();
        let (map, warnings) = compute_profiles_from_lcip(&rows, 0, &cat.profile_names());
        assert!(warnings.is_empty(), "{key}: {warnings:?}");
        assert_eq!(
            map.keys().map(String::as_str).collect::<Vec<_>>(),
            parents,
            "{key}"
        );
        for (parent, list) in &map {
            assert_eq!(
                strip_meta(list),
                strip_meta(&cat.compute_profiles[parent]),
                "{key} {parent}"
            );
        }
    }
}

/// `-lgipp` text for a catalog model, in nvidia-smi's format (for inputs that have no capture).
fn lgipp_of(m: &GpuModel) -> String {
    m.profiles
        .iter()
        .map(|p| {
            let starts: Vec<_> = p.placements.iter().map(u8::to_string).collect();
            format!(
                "GPU  0 Profile ID {:2} Placements: {{{}}}:{}\n",
                p.id.unwrap(),
                starts.join(","),
                p.memory_slices
            )
        })
        .collect()
}

#[test]
fn import_with_lcip_fills_compute_profiles() {
    let cat = Catalog::builtin().lookup("a30-24gb").unwrap();
    let imp = import_model(
        "a30",
        fixture!("a30_lgip_1.txt"),
        &lgipp_of(cat),
        Some(fixture!("a30_lcip_1.txt")),
    )
    .unwrap();
    assert!(imp.warnings.is_empty(), "{:?}", imp.warnings);
    assert_same_structure(&imp.model, cat);
    assert_eq!(imp.model.compute_profiles.len(), 1);
    assert_eq!(
        strip_meta(&imp.model.compute_profiles["2g.12gb"]),
        strip_meta(&cat.compute_profiles["2g.12gb"])
    );
    assert!(imp.model.notes[0].contains("-lcip"));
}

#[test]
fn catalog_output_round_trips_and_is_deterministic() {
    let imp = import_model(
        "my-h100",
        fixture!("h100-80gb_lgip_2.txt"),
        fixture!("h100-80gb_lgipp_2.txt"),
        None,
    )
    .unwrap();
    let yaml = imp.to_yaml();
    let again = import_model(
        "my-h100",
        fixture!("h100-80gb_lgip_2.txt"),
        fixture!("h100-80gb_lgipp_2.txt"),
        None,
    )
    .unwrap();
    assert_eq!(yaml, again.to_yaml());
    let back = Catalog::from_yaml(&yaml).unwrap();
    assert_eq!(back, imp.catalog());
    assert!(back.sources.contains_key("nvidia-smi"));
    // A user catalog made of the import overrides nothing and adds a lookup-able model.
    let mut merged = Catalog::builtin().clone();
    merged.merge(back);
    assert_eq!(merged.lookup("my-h100").unwrap(), &imp.model);
}

/// Rewrite a capture as if it came from GPU `to` instead of GPU 0.
fn on_gpu(text: &str, to: u32) -> String {
    text.lines()
        .filter(|l| !l.starts_with("# "))
        .map(|l| {
            l.replacen("|   0  MIG", &format!("|   {to}  MIG"), 1)
                .replacen("GPU  0 Profile", &format!("GPU  {to} Profile"), 1)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn several_gpus_keep_their_index_and_import_one() {
    let lgip = fixture!("h100-nvl_lgip_1.txt");
    let lgipp = fixture!("h100-nvl_lgipp_1.txt");
    let both_lgip = format!("{lgip}\n{}", on_gpu(lgip, 1));
    let both_lgipp = format!("{lgipp}{}", on_gpu(lgipp, 1));
    let rows = parse_lgip(&both_lgip).unwrap();
    assert_eq!(rows.len(), 14);
    assert_eq!(rows.iter().filter(|r| r.gpu == 1).count(), 7);
    assert_eq!(
        parse_lgipp(&both_lgipp)
            .unwrap()
            .iter()
            .filter(|r| r.gpu == 1)
            .count(),
        7
    );

    let single = import_model("h100-nvl-94gb", lgip, lgipp, None).unwrap();
    let imp = import_model("h100-nvl-94gb", &both_lgip, &both_lgipp, None).unwrap();
    assert_eq!(imp.gpu, 0);
    assert_eq!(imp.model.profiles, single.model.profiles);
    assert_eq!(imp.warnings.len(), 1);
    assert!(
        imp.warnings[0].to_string().contains("GPU 1 ignored"),
        "{}",
        imp.warnings[0]
    );

    let one =
        import_model_for_gpu("h100-nvl-94gb", Some(1), &both_lgip, &both_lgipp, None).unwrap();
    assert_eq!(one.gpu, 1);
    assert_eq!(one.model.profiles, single.model.profiles);
    // Only GPU 1 captured (`nvidia-smi mig -i 1 -lgip`): the lowest index present is used.
    let only1 = import_model("h100-nvl-94gb", &on_gpu(lgip, 1), &on_gpu(lgipp, 1), None).unwrap();
    assert_eq!(only1.gpu, 1);
    let err = import_model_for_gpu("x", Some(3), &both_lgip, &both_lgipp, None).unwrap_err();
    assert!(err.to_string().contains("no rows for GPU 3"), "{err}");
    let err = import_model("x", lgip, &on_gpu(lgipp, 1), None).unwrap_err();
    assert!(
        err.to_string().contains("-lgipp") && err.to_string().contains("GPU 0"),
        "{err}"
    );
}

/// The same table printed differently: the parsed rows must not change (apart from line numbers).
#[test]
fn layout_variations_parse_to_the_same_rows() {
    let strip = |rows: Vec<LgipRow>| -> Vec<LgipRow> {
        rows.into_iter().map(|r| LgipRow { line: 0, ..r }).collect()
    };
    for text in [
        fixture!("rtx-pro-6000_lgip_1.txt"),
        fixture!("a30_lgip_1.txt"),
        fixture!("h100-nvl_lgip_2.txt"),
    ] {
        let want = strip(parse_lgip(text).unwrap());
        let crlf = text.replace('\n', "\r\n");
        let trailing = text
            .lines()
            .map(|l| format!("{l}   \t"))
            .collect::<Vec<_>>()
            .join("\n");
        let no_box = text
            .lines()
            .map(|l| l.trim_matches('|').to_string())
            .filter(|l| !l.starts_with('+') && !l.starts_with('='))
            .collect::<Vec<_>>()
            .join("\n");
        let wide = text.replace("  ", "    ");
        let blank_lines = text.replace('\n', "\n\n");
        let unicode = text
            .lines()
            .map(|l| {
                if l.starts_with('+') {
                    l.replace('-', "\u{2500}")
                } else {
                    l.to_string()
                }
            })
            .map(|l| l.replace('|', "\u{2502}"))
            .collect::<Vec<_>>()
            .join("\n");
        for (what, variant) in [
            ("crlf", crlf),
            ("trailing", trailing),
            ("no box", no_box),
            ("wide", wide),
            ("blank lines", blank_lines),
            ("unicode", unicode),
        ] {
            let got = parse_lgip(&variant).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(strip(got), want, "{what}");
        }
    }
}

#[test]
fn one_line_rows_and_other_column_orders_parse() {
    // All six value columns on one line, in a different order, with a JPG spelling and an
    // extra column the importer does not know.
    let text = "\
GPU instance profiles:
GPU  Name          ID  Instances  Memory  P2P  SM  CE  DEC  ENC  JPG  OFA  GFX
                       Free/Total GiB
==============================================================================
  0  MIG 1g.10gb   19  7/7        9.62    No   14  1   1    0    1    0    7
  0  MIG 7g.80gb    0  1/1        79.00   No   114 8   7    0    7    1    -
";
    let rows = parse_lgip(text).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].line, rows[0].sm), (5, Some(14)));
    assert_eq!(rows[0].engines, engines(1, 0, 1, 1, 0));
    assert_eq!(rows[1].engines, engines(7, 0, 8, 7, 1));
    // No header at all: the usual column order is assumed; no P2P column.
    let rows = parse_lgip("0 MIG 1g.10gb 19 7/7 9.62 14 1 0\n 1 1 0\n").unwrap();
    assert_eq!((rows[0].p2p, rows[0].sm), (None, Some(14)));
    assert_eq!(rows[0].engines, engines(1, 0, 1, 1, 0));
    // P2P may read N/A.
    let rows = parse_lgip("0 MIG 1g.10gb 19 7/7 9.62 N/A 14 1 0\n 1 1 0\n").unwrap();
    assert_eq!((rows[0].p2p, rows[0].sm), (None, Some(14)));
    // `-` and N/A cells are "unknown".
    let rows = parse_lgip("0 MIG 1g.10gb 19 7/7 9.62 No 14 - N/A\n 1 1 0\n").unwrap();
    assert_eq!((rows[0].engines.dec, rows[0].engines.enc), (None, None));
}

fn line_of(e: &ImportError) -> usize {
    e.line().unwrap_or_else(|| panic!("no line in {e}"))
}

#[test]
fn malformed_lgip_names_the_line() {
    let good = fixture!("h100-80gb_lgip_2.txt");
    // Line 16 is the 1g.20gb row.
    let bad = good.replace("MIG 1g.20gb       15", "MIG 1g.20gb       x5");
    let e = parse_lgip(&bad).unwrap_err();
    assert_eq!((line_of(&e), e.input()), (16, Some(Input::Lgip)));
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "-lgip line 16: expected a profile ID after the name `1g.20gb`, found `x5`"
        ),
        "{msg}"
    );

    let cases = [
        (good.replace("7/7", "7-7"), 10, "free/total"),
        (
            good.replace("39.25      No     46", "39,25      No     46"),
            22,
            "memory in GiB",
        ),
        (
            good.replace("MIG 2g.20gb", "MIG twenty"),
            19,
            "profile name",
        ),
        (
            good.replace(
                "                                                             2     2     0   |",
                "                                                             2     x     0   |",
            ),
            20,
            "expected a number",
        ),
        (
            good.replace(
                "|                                                             3     3     0   |\n",
                "",
            ),
            22,
            "3 of the 6 value columns",
        ),
        (
            good.replace(
                "No     14     1     0",
                "No     14     1     0   5   6   7   8",
            ),
            10,
            "7 values",
        ),
        (
            good.replace("| GPU instance profiles:", "Failed to list profiles"),
            6,
            "unexpected text",
        ),
        (
            format!("{good}  1 1 1\n"),
            31,
            "an extra line of numbers after profile `7g.80gb` (row on line 28)",
        ),
    ];
    for (text, line, needle) in cases {
        let e = parse_lgip(&text).unwrap_err();
        let msg = e.to_string();
        assert_eq!(line_of(&e), line, "{msg}");
        assert!(
            msg.contains(&format!("line {line}:")) && msg.contains(needle),
            "{needle}: {msg}"
        );
    }
    let e = parse_lgip("# only a header\n\n+---+\n").unwrap_err();
    assert!(
        matches!(e, ImportError::NoRows { .. }) && e.to_string().contains("nvidia-smi mig -lgip"),
        "{e}"
    );
}

#[test]
fn malformed_lgipp_names_the_line() {
    let good = fixture!("h100-nvl_lgipp_1.txt");
    let cases = [
        (
            good.replace("ID  9 Placements", "ID  x Placements"),
            9,
            "expected a profile ID after `Profile ID`, found `x`",
        ),
        (good.replace("{0,4}:4", "{0,4:4"), 9, "placements like"),
        (
            good.replace("{0,2,4}:2", "{0,two,4}:2"),
            8,
            "placements like",
        ),
        (
            good.replace("GPU  0 Profile ID 15", "GPU  0 Profle ID 15"),
            7,
            "`Profile ID <id>`",
        ),
        (
            good.replace("ID  5 Placement :", "ID  5 Positions :"),
            10,
            "`Placements:` after profile ID 5",
        ),
        (good.replace("ID 19", "ID 99999999999"), 5, "too large"),
        (format!("{good}hello\n"), 12, "expected `GPU <index>"),
    ];
    for (text, line, needle) in cases {
        let e = parse_lgipp(&text).unwrap_err();
        let msg = e.to_string();
        assert_eq!(
            (line_of(&e), e.input()),
            (line, Some(Input::Lgipp)),
            "{msg}"
        );
        assert!(
            msg.starts_with(&format!("-lgipp line {line}: ")) && msg.contains(needle),
            "{needle}: {msg}"
        );
    }
    assert!(matches!(
        parse_lgipp("").unwrap_err(),
        ImportError::NoRows { .. }
    ));
}

#[test]
fn a_bad_token_is_a_typed_problem_on_its_line() {
    let e = parse_lgipp("GPU  0 Profile ID 99999999999 Placements: {0}:1\n").unwrap_err();
    match &e {
        ImportError::Token {
            input: Input::Lgipp,
            line: 1,
            problem: LineProblem::TooLarge { what, value },
        } => assert_eq!(
            (what.as_str(), value.as_str()),
            ("a profile ID after `Profile ID`", "99999999999")
        ),
        other => panic!("{other:?}"),
    }
    // The problem is the error's cause, and its text is part of the message.
    let cause = std::error::Error::source(&e).expect("a cause");
    assert!(e.to_string().ends_with(&cause.to_string()), "{e}");
    let e = parse_lgipp("GPU 0 Profile ID 9 Placements: {0,x}:4\n").unwrap_err();
    assert!(
        matches!(
            &e,
            ImportError::Token {
                problem: LineProblem::Expected { found, .. },
                ..
            } if found == "`{0,x}:4`"
        ),
        "{e:?}"
    );
}

#[test]
fn malformed_lcip_names_the_line() {
    let good = fixture!("a100-80gb_lcip_1.txt");
    let cases = [
        (
            good.replace("1c.3g.40gb       0 ", "1c.3g.40gb       ? "),
            11,
            "expected a profile ID (optionally with `*`) after the name `1c.3g.40gb`, found `?`",
        ),
        (good.replace("2*     1/1", "2*     1of1"), 17, "free/total"),
        (
            good.replace("|   0      1       MIG 2c", "|   0      x       MIG 2c"),
            14,
            "expected the GPU instance ID after the GPU index, found `x`",
        ),
        (
            good.replace("| Compute instance profiles:", "Unable to query profiles"),
            6,
            "unexpected text",
        ),
        (
            good.replace("|   0      1       MIG 2c", "|   0      1       MIG banana"),
            14,
            "compute-instance profile name",
        ),
    ];
    for (text, line, needle) in cases {
        let e = parse_lcip(&text).unwrap_err();
        let msg = e.to_string();
        assert_eq!((line_of(&e), e.input()), (line, Some(Input::Lcip)), "{msg}");
        assert!(
            msg.starts_with(&format!("-lcip line {line}: ")) && msg.contains(needle),
            "{needle}: {msg}"
        );
    }
}

#[test]
fn import_errors_name_the_profile_or_line() {
    let lgip = fixture!("h100-80gb_lgip_2.txt");
    let lgipp = fixture!("h100-80gb_lgipp_2.txt");
    // A profile with no placements.
    let no9 = lgipp.replace("GPU  0 Profile ID  9 Placements: {0,4}:4\n", "");
    let e = import_model("h", lgip, &no9, None).unwrap_err();
    assert!(
        matches!(&e, ImportError::MissingPlacements { name, id: 9, line: 22 } if name == "3g.40gb"),
        "{e}"
    );
    assert!(
        e.to_string().contains("`3g.40gb`") && e.to_string().contains("-lgipp"),
        "{e}"
    );
    // A placement line twice.
    let e = import_model(
        "h",
        lgip,
        &format!("{lgipp}GPU  0 Profile ID  9 Placements: {{0,4}}:4\n"),
        None,
    )
    .unwrap_err();
    assert_eq!((e.input(), line_of(&e)), (Some(Input::Lgipp), 12), "{e}");
    // A size past the 32-slice limit.
    let e = import_model("h", lgip, &lgipp.replace("{0}:8", "{0}:40"), None).unwrap_err();
    assert!(e.to_string().contains("size 40"), "{e}");
    // A profile row twice.
    let dup = lgip.replace("MIG 1g.10gb+me    20", "MIG 1g.10gb       20");
    let e = import_model("h", &dup, lgipp, None).unwrap_err();
    assert_eq!(line_of(&e), 13, "{e}");
    // Keys must be usable for lookup.
    assert!(matches!(
        import_model("H100 PCIe", lgip, lgipp, None),
        Err(ImportError::BadKey(_))
    ));
    assert!(matches!(
        import_model("", lgip, lgipp, None),
        Err(ImportError::BadKey(_))
    ));
    // Parse errors come through with their input.
    let e = import_model("h", lgip, lgipp, Some("0 1 MIG 1c.x 0 1/1 14 1 0 0\n")).unwrap_err();
    assert_eq!(e.input(), Some(Input::Lcip), "{e}");
}

#[test]
fn import_warnings_keep_going() {
    let lgip = fixture!("h100-80gb_lgip_2.txt");
    let lgipp = fixture!("h100-80gb_lgipp_2.txt");
    // Extra -lgipp profile, duplicate placement, zero-total profile.
    let extra = format!("{lgipp}GPU  0 Profile ID 42 Placements: {{0}}:8\n")
        .replace("{0,4}:4", "{0,4,4}:4");
    let zero = lgip.replace("20     1/1", "20     0/0");
    let imp = import_model("h", &zero, &extra, None).unwrap();
    let w: Vec<String> = imp.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].starts_with("-lgipp line 9:") && w[0].contains("twice"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("-lgip line 13:") && w[1].contains("1g.10gb+me"),
        "{w:?}"
    );
    assert!(
        w[2].starts_with("-lgipp line 12:") && w[2].contains("ID 42"),
        "{w:?}"
    );
    assert_eq!(imp.model.profiles.len(), 6);
    assert!(imp.model.profile_named("1g.10gb+me").is_none());
    // -lcip rows of an unknown profile are skipped with a warning.
    let imp = import_model("h", lgip, lgipp, Some(fixture!("a30_lcip_1.txt"))).unwrap();
    assert!(imp.model.compute_profiles.is_empty());
    assert_eq!(imp.warnings.len(), 2, "{:?}", imp.warnings);
    assert!(imp.warnings[0].to_string().contains("1c.2g.12gb"));
}
