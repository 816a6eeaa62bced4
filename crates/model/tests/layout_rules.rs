//! Layout rules checked against independent implementations: a brute-force enumeration that
//! uses only the pairwise `validate`, and property tests over random instance sets.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tessera_model::{Catalog, GpuModel, LayoutState, Placed};

/// Every valid layout by include/exclude over all candidates, pruning only on overlap, and
/// judged by `validate` alone (not by `LayoutState`, which enumeration uses).
fn brute_force(m: &GpuModel) -> BTreeSet<Vec<Placed>> {
    fn go(
        m: &GpuModel,
        c: &[Placed],
        i: usize,
        mask: u32,
        cur: &mut Vec<Placed>,
        out: &mut BTreeSet<Vec<Placed>>,
    ) {
        if i == c.len() {
            if m.validate(cur).is_empty() {
                let mut v = cur.clone();
                v.sort();
                out.insert(v);
            }
            return;
        }
        go(m, c, i + 1, mask, cur, out);
        let bits = m.mask(c[i]);
        if mask & bits == 0 {
            cur.push(c[i]);
            go(m, c, i + 1, mask | bits, cur, out);
            cur.pop();
        }
    }
    let cands = m.candidates();
    let mut out = BTreeSet::new();
    go(m, &cands, 0, 0, &mut Vec::new(), &mut out);
    out
}

#[test]
fn enumeration_equals_brute_force_for_every_model() {
    for m in &Catalog::builtin().models {
        let listed = m.enumerate_layouts();
        let fast: BTreeSet<Vec<Placed>> = listed.iter().map(|l| l.items().to_vec()).collect();
        assert_eq!(fast.len(), listed.len(), "{}: duplicates", m.key);
        let slow = brute_force(m);
        assert_eq!(
            fast, slow,
            "{}: enumeration differs from brute force",
            m.key
        );
    }
}

#[test]
fn maximal_layouts_are_valid_and_admit_no_instance() {
    for m in &Catalog::builtin().models {
        let cands = m.candidates();
        let maximal = m.maximal_layouts();
        assert!(!maximal.is_empty(), "{}", m.key);
        for l in &maximal {
            assert!(m.validate(l.items()).is_empty(), "{}: {:?}", m.key, l);
            for &c in &cands {
                let mut more = l.items().to_vec();
                more.push(c);
                assert!(
                    !m.validate(&more).is_empty(),
                    "{}: {} fits into a maximal layout",
                    m.key,
                    m.spec(c)
                );
            }
        }
        // Every valid layout that is not listed as maximal can take one more instance.
        let listed: BTreeSet<_> = maximal.iter().map(|l| l.items().to_vec()).collect();
        for l in m.enumerate_layouts() {
            if !listed.contains(l.items()) {
                assert!(cands.iter().any(|&c| {
                    let mut more = l.items().to_vec();
                    more.push(c);
                    m.validate(&more).is_empty()
                }));
            }
        }
    }
}

#[test]
fn the_hardware_facts_hold() {
    let c = Catalog::builtin();
    // The full-GPU profile fills the grid: a layout with it admits nothing else.
    let h = c.lookup("h100-80gb").unwrap();
    let full = h.parse_spec("7g.80gb@0").unwrap();
    assert!(h.is_maximal(&[full]));
    // 3g + 4g fill the memory of an 8-slice GPU and leave one compute slice idle.
    let a = c.lookup("a100-40gb").unwrap();
    let items = vec![
        a.parse_spec("4g.20gb@0").unwrap(),
        a.parse_spec("3g.20gb@4").unwrap(),
    ];
    assert!(a.validate(&items).is_empty());
    assert!(a.is_maximal(&items));
    // Seven 1g instances take every compute slice although memory slice 7 is free.
    let sevens: Vec<Placed> = (0..7)
        .map(|s| a.parse_spec(&format!("1g.5gb@{s}")).unwrap())
        .collect();
    assert!(a.validate(&sevens).is_empty());
    assert!(a.is_maximal(&sevens));
}

fn model_strategy() -> impl Strategy<Value = &'static GpuModel> {
    let models = &Catalog::builtin().models;
    (0..models.len()).prop_map(move |i| &models[i])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `validate` and the incremental `LayoutState` agree on every random instance set.
    #[test]
    fn incremental_checker_agrees_with_validate(
        m in model_strategy(),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..9),
    ) {
        let cands = m.candidates();
        let mut items: Vec<Placed> = picks.iter().map(|i| cands[i.index(cands.len())]).collect();
        items.sort();
        items.dedup();
        let valid = m.validate(&items).is_empty();
        let mut st = LayoutState::new();
        let mut ok = true;
        for &p in &items {
            if st.fits(m, p) {
                st.add(m, p)
            } else {
                ok = false;
                break;
            }
        }
        prop_assert_eq!(valid, ok, "{}: {:?}", m.key, items.iter().map(|&p| m.spec(p)).collect::<Vec<_>>());
    }

    /// A valid layout never overlaps, stays on the grid and within the compute slices.
    #[test]
    fn valid_layouts_never_overlap(m in model_strategy(), seed in any::<u64>()) {
        let all = m.enumerate_layouts();
        let l = &all[(seed % all.len() as u64) as usize];
        let mut mask = 0u32;
        let mut compute = 0u32;
        for &p in l.items() {
            prop_assert_eq!(mask & m.mask(p), 0);
            mask |= m.mask(p);
            compute += u32::from(m.profile(p.profile).compute_slices);
            prop_assert!(m.profile(p.profile).placements.contains(&p.start));
        }
        prop_assert!(compute <= u32::from(m.compute_slices));
        prop_assert!(mask < (1u32 << m.memory_slices));
    }
}
