//! Fuzzing the nvidia-smi parsers and the importer with proptest: arbitrary text and mutated
//! real captures (deleted, duplicated and swapped lines, truncation, replaced characters) must
//! give `Ok` or `Err`, never a panic; and whatever they accept must be self-consistent.

use proptest::prelude::*;
use tessera_model::import::{import_model, parse_lcip, parse_lgip, parse_lgipp};

const LGIP: &[&str] = &[
    include_str!("fixtures/nvidia-smi/a100-40gb_lgip_1.txt"),
    include_str!("fixtures/nvidia-smi/a100-40gb_lgip_2.txt"),
    include_str!("fixtures/nvidia-smi/a100-80gb_lgip_1.txt"),
    include_str!("fixtures/nvidia-smi/a30_lgip_1.txt"),
    include_str!("fixtures/nvidia-smi/gh200_lgip_1.txt"),
    include_str!("fixtures/nvidia-smi/h100-80gb_lgip_2.txt"),
    include_str!("fixtures/nvidia-smi/h100-nvl_lgip_1.txt"),
    include_str!("fixtures/nvidia-smi/h100-nvl_lgip_2.txt"),
    include_str!("fixtures/nvidia-smi/rtx-pro-6000_lgip_1.txt"),
];
const LGIPP: &[&str] = &[
    include_str!("fixtures/nvidia-smi/h100-80gb_lgipp_2.txt"),
    include_str!("fixtures/nvidia-smi/h100-nvl_lgipp_1.txt"),
    include_str!("fixtures/nvidia-smi/rtx-pro-6000_lgipp_1.txt"),
];
const LCIP: &[&str] = &[
    include_str!("fixtures/nvidia-smi/a100-40gb_lcip_1.txt"),
    include_str!("fixtures/nvidia-smi/a100-80gb_lcip_1.txt"),
    include_str!("fixtures/nvidia-smi/a30_lcip_1.txt"),
];
/// (lgip, lgipp) pairs of the same GPU.
const PAIRS: &[(usize, usize)] = &[(5, 0), (6, 1), (8, 2)];

/// One edit of a text.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Truncate(usize),
    ReplaceChar(usize, char),
    InsertChar(usize, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let ch = prop_oneof![
        prop::sample::select(vec![
            ' ',
            '|',
            '+',
            '-',
            '=',
            '/',
            '.',
            ':',
            ',',
            '{',
            '}',
            '*',
            '#',
            '\n',
            '0',
            '1',
            '9',
            'g',
            'M',
            'x',
            '\t',
            '\r',
            '\u{2502}',
            '\u{e9}',
            '\u{1f600}'
        ]),
        any::<char>(),
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), ch.clone()).prop_map(|(i, c)| Mutation::ReplaceChar(i, c)),
        (any::<usize>(), ch).prop_map(|(i, c)| Mutation::InsertChar(i, c)),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut s = text.to_string();
    for m in muts {
        let mut lines: Vec<String> = s.split('\n').map(str::to_string).collect();
        let n = lines.len().max(1);
        match *m {
            Mutation::DeleteLine(i) => {
                if !lines.is_empty() {
                    lines.remove(i % n);
                }
                s = lines.join("\n");
            }
            Mutation::DuplicateLine(i) => {
                if !lines.is_empty() {
                    let l = lines[i % n].clone();
                    lines.insert(i % n, l);
                }
                s = lines.join("\n");
            }
            Mutation::SwapLines(a, b) => {
                if !lines.is_empty() {
                    lines.swap(a % n, b % n);
                }
                s = lines.join("\n");
            }
            Mutation::Truncate(i) => {
                let chars: Vec<char> = s.chars().collect();
                let keep = i % (chars.len() + 1);
                s = chars[..keep].iter().collect();
            }
            Mutation::ReplaceChar(i, c) => {
                let mut chars: Vec<char> = s.chars().collect();
                if !chars.is_empty() {
                    let k = i % chars.len();
                    chars[k] = c;
                }
                s = chars.into_iter().collect();
            }
            Mutation::InsertChar(i, c) => {
                let mut chars: Vec<char> = s.chars().collect();
                let k = i % (chars.len() + 1);
                chars.insert(k, c);
                s = chars.into_iter().collect();
            }
        }
    }
    s
}

/// Text made of the characters tables are made of, so the parsers get past the first token.
fn table_text() -> impl Strategy<Value = String> {
    "([ 0-9|+=/.:,{}*#\\-]|MIG |GPU |Profile |ID |Placements|1g\\.10gb|c\\.|\n){0,200}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_arbitrary_text(s in any::<String>()) {
        let _ = parse_lgip(&s);
        let _ = parse_lgipp(&s);
        let _ = parse_lcip(&s);
        let _ = import_model("x", &s, &s, Some(&s));
    }

    #[test]
    fn parsers_never_panic_on_table_like_text(s in table_text()) {
        let _ = parse_lgip(&s);
        let _ = parse_lgipp(&s);
        let _ = parse_lcip(&s);
        let _ = import_model("x", &s, &s, Some(&s));
    }

    #[test]
    fn parsers_never_panic_on_mutated_fixtures(
        which in 0usize..64,
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let lgip = LGIP[which % LGIP.len()];
        let lgipp = LGIPP[which % LGIPP.len()];
        let lcip = LCIP[which % LCIP.len()];
        for (text, rows) in [
            (apply(lgip, &muts), parse_lgip(&apply(lgip, &muts)).map(|r| r.len())),
            (apply(lgipp, &muts), parse_lgipp(&apply(lgipp, &muts)).map(|r| r.len())),
            (apply(lcip, &muts), parse_lcip(&apply(lcip, &muts)).map(|r| r.len())),
        ] {
            match rows {
                // Whatever parses has at least one row; errors name a line or the input.
                Ok(n) => prop_assert!(n > 0),
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(e.input().is_some(), "{msg}");
                    if let Some(line) = e.line() {
                        prop_assert!(line >= 1 && line <= text.lines().count().max(1), "{msg}");
                        prop_assert!(msg.contains(&format!("line {line}")), "{msg}");
                    }
                }
            }
        }
    }

    #[test]
    fn importer_never_panics_on_mutated_pairs(
        which in 0usize..3,
        muts in prop::collection::vec(mutation(), 1..4),
        mutate_lgip in any::<bool>(),
    ) {
        let (gi, pp) = PAIRS[which];
        let (lgip, lgipp) = if mutate_lgip {
            (apply(LGIP[gi], &muts), LGIPP[pp].to_string())
        } else {
            (LGIP[gi].to_string(), apply(LGIPP[pp], &muts))
        };
        if let Ok(imp) = import_model("fuzz", &lgip, &lgipp, Some(LCIP[which])) {
            // Anything accepted is a valid catalog model that round-trips.
            prop_assert!(imp.model.check().is_ok());
            let back = tessera_model::Catalog::from_yaml(&imp.to_yaml());
            prop_assert!(back.is_ok(), "{:?}", back.err());
        }
    }
}
