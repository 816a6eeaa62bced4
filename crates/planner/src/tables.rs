//! Per-model tables that make layout checks a few bit operations.
//!
//! A *candidate* is one (profile, placement start) pair of a model; a layout is a `u64` set of
//! candidates. Every layout rule of `tessera_model::layout` is either pairwise (overlap, the
//! media-engine rules) or a count (per-profile maximum, instance maximum, compute slices), so
//! `fits(layout, c)` is one AND against a precomputed conflict set plus three counts. The tables
//! are built in microseconds per call; nothing is enumerated up front.

use tessera_model::catalog::MediaKind;
use tessera_model::{GpuModel, Placed};

use crate::PlanError;

/// Iterate the set bits of a `u64`, lowest first.
pub(crate) fn bits(mut set: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if set == 0 {
            None
        } else {
            let i = set.trailing_zeros() as usize;
            set &= set - 1;
            Some(i)
        }
    })
}

/// The packed value of a free profile for the fragmentation score: memory slices first, compute
/// slices as the tie-break (compute slices are at most 15 on any model).
fn free_value(memory_slices: u8, compute_slices: u8) -> u8 {
    memory_slices
        .saturating_mul(16)
        .saturating_add(compute_slices.min(15))
}

/// Whether two (short) names are equal byte for byte; inline, without a library call, since
/// resolving an input compares tens of thousands of names of a few bytes.
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

/// A profile name without surrounding space and without an `MIG ` prefix.
pub(crate) fn bare_name(name: &str) -> &str {
    let n = name.trim();
    match n.get(..4) {
        Some(pre) if pre.eq_ignore_ascii_case("mig ") => n[4..].trim_start(),
        _ => n,
    }
}

/// Precomputed facts about one GPU model's candidates.
#[derive(Debug, Clone)]
pub(crate) struct Tables<'c> {
    /// The model.
    pub model: &'c GpuModel,
    /// Candidates, ordered by profile then start (`GpuModel::candidates`).
    pub cand: Vec<Placed>,
    /// Memory-slice mask of each candidate.
    pub mask: Vec<u32>,
    /// Profile of each candidate.
    pub prof: Vec<u8>,
    /// Compute slices of each candidate.
    pub compute: Vec<u8>,
    /// Memory slices of each candidate.
    pub size: Vec<u8>,
    /// Candidates that cannot share a GPU with each candidate (itself included).
    pub conflict: Vec<u64>,
    /// Candidates of each profile.
    pub by_profile: Vec<u64>,
    /// Per-profile instance maximum.
    pub prof_max: Vec<u8>,
    /// Per profile: whether its maximum is below its number of placements, so that
    /// [`Tables::fits`] must count (otherwise the overlap rule alone keeps the count in bounds).
    prof_capped: Vec<bool>,
    /// Memory slices of each profile.
    pub prof_size: Vec<u8>,
    /// The GPU's instance maximum.
    pub max_instances: u32,
    /// The GPU's compute slices.
    pub compute_total: u32,
    /// Candidate indices by memory size, largest first (ties: catalog order).
    pub by_size_desc: Vec<u8>,
    /// Lowercase profile names.
    pub names_lc: Vec<String>,
    /// Candidate indices sorted by (start, profile), the order layouts are listed in.
    pub by_start: Vec<u8>,
    /// Per candidate: its position in `by_start`.
    start_rank: Vec<u8>,
    /// `largest_free` for every held-slice mask, on grids of up to 12 slices (values fit a `u8`:
    /// at most 32 × 16 + 15 is not needed, since grids over 12 slices skip the table).
    largest_tab: Vec<u8>,
}

impl<'c> Tables<'c> {
    /// Build the tables of a model.
    pub fn new(model: &'c GpuModel) -> Result<Self, PlanError> {
        let cand = model.candidates();
        if cand.len() > 64 {
            return Err(PlanError::ModelTooLarge {
                model: model.key.clone(),
                candidates: cand.len(),
            });
        }
        let n = cand.len();
        let mask: Vec<u32> = cand.iter().map(|&c| model.mask(c)).collect();
        let prof: Vec<u8> = cand.iter().map(|c| c.profile.0).collect();
        let compute: Vec<u8> = cand
            .iter()
            .map(|&c| model.profile(c.profile).compute_slices)
            .collect();
        let size: Vec<u8> = cand
            .iter()
            .map(|&c| model.profile(c.profile).memory_slices)
            .collect();
        let kinds: Vec<MediaKind> = model.profiles.iter().map(|p| p.media_kind()).collect();
        let mut conflict = vec![0u64; n];
        for a in 0..n {
            for b in 0..n {
                let ka = kinds[usize::from(prof[a])];
                let kb = kinds[usize::from(prof[b])];
                let media = matches!((ka, kb), (MediaKind::Me, MediaKind::Me))
                    || (ka == MediaKind::MeAll && kb != MediaKind::NoMe)
                    || (kb == MediaKind::MeAll && ka != MediaKind::NoMe);
                if mask[a] & mask[b] != 0 || media || a == b {
                    conflict[a] |= 1 << b;
                }
            }
        }
        let mut by_profile = vec![0u64; model.profiles.len()];
        for (i, &p) in prof.iter().enumerate() {
            by_profile[usize::from(p)] |= 1 << i;
        }
        let mut by_size_desc: Vec<u8> = (0..n as u8).collect();
        by_size_desc.sort_by_key(|&i| {
            let i = usize::from(i);
            std::cmp::Reverse((size[i], compute[i]))
        });
        let largest = |held: u32| -> u8 {
            by_size_desc
                .iter()
                .find(|&&c| mask[usize::from(c)] & held == 0)
                .map_or(0, |&c| {
                    free_value(size[usize::from(c)], compute[usize::from(c)])
                })
        };
        let largest_tab = if model.memory_slices <= 12 {
            (0..1u32 << model.memory_slices).map(largest).collect()
        } else {
            Vec::new()
        };
        let prof_capped = model
            .profiles
            .iter()
            .zip(&by_profile)
            .map(|(p, set)| set.count_ones() > u32::from(p.max))
            .collect();
        let mut by_start: Vec<u8> = (0..n as u8).collect();
        by_start.sort_by_key(|&i| cand[usize::from(i)]);
        let mut start_rank = vec![0u8; n];
        for (r, &c) in by_start.iter().enumerate() {
            start_rank[usize::from(c)] = r as u8;
        }
        Ok(Tables {
            by_start,
            start_rank,
            largest_tab,
            model,
            mask,
            prof,
            compute,
            size,
            conflict,
            by_profile,
            prof_max: model.profiles.iter().map(|p| p.max).collect(),
            prof_capped,
            prof_size: model.profiles.iter().map(|p| p.memory_slices).collect(),
            max_instances: u32::from(model.max_instances),
            compute_total: u32::from(model.compute_slices),
            by_size_desc,
            names_lc: model
                .profiles
                .iter()
                .map(|p| p.name.to_ascii_lowercase())
                .collect(),
            cand,
        })
    }

    /// The tables of one GPU with held regions (see `holds.rs`): each phantom's region
    /// candidate stands for the region and the instances set aside for it. It conflicts with
    /// everything they conflict with, covers their memory slices, uses the larger of the
    /// region's compute slices and theirs, and the count limits shrink by the instances it
    /// stands for beyond one. Candidate indices are unchanged.
    pub fn with_phantoms(&self, phantoms: &[&crate::problem::Phantom]) -> Tables<'c> {
        let mut t = self.clone();
        for ph in phantoms {
            let Some(r) = self.cand_index(ph.region) else {
                continue;
            };
            let aside: Vec<usize> = ph
                .aside
                .iter()
                .filter_map(|&p| self.cand_index(p))
                .collect();
            let mut conflict = self.conflict[r];
            let mut mask = self.mask[r];
            let mut compute = 0u32;
            for &c in &aside {
                conflict |= self.conflict[c];
                mask |= self.mask[c];
                compute += u32::from(self.compute[c]);
            }
            t.conflict[r] = conflict;
            for c in bits(conflict) {
                t.conflict[c] |= 1 << r;
            }
            t.mask[r] = mask;
            t.compute[r] = compute.max(u32::from(self.compute[r])).min(255) as u8;
            let k = aside.len().max(1) as u32;
            t.max_instances = t.max_instances.saturating_sub(k - 1);
            let rp = usize::from(self.prof[r]);
            for p in 0..t.prof_max.len() {
                let over = aside
                    .iter()
                    .filter(|&&c| usize::from(self.prof[c]) == p)
                    .count() as u8;
                let less = if p == rp { over.max(1) - 1 } else { over };
                t.prof_max[p] = t.prof_max[p].saturating_sub(less);
                t.prof_capped[p] = t.by_profile[p].count_ones() > u32::from(t.prof_max[p]);
            }
        }
        // The memory-grid table of the free score depends on the masks.
        t.largest_tab = Vec::new();
        t
    }

    /// The candidates of a layout in listing order (by start, then profile).
    pub fn in_start_order(&self, layout: u64) -> impl Iterator<Item = usize> + '_ {
        let ranks = bits(layout).fold(0u64, |acc, c| acc | 1 << self.start_rank[c]);
        bits(ranks).map(|r| usize::from(self.by_start[r]))
    }

    /// Number of profiles.
    pub fn profiles(&self) -> usize {
        self.by_profile.len()
    }

    /// The candidate index of a profile at a start, if that start is an allowed placement.
    pub fn cand_index(&self, p: Placed) -> Option<usize> {
        self.cand_of(p.profile.0 as usize, p.start)
    }

    /// The candidate index of profile `p` at `start`, if that start is an allowed placement.
    pub fn cand_of(&self, p: usize, start: u8) -> Option<usize> {
        bits(*self.by_profile.get(p)?).find(|&c| self.cand[c].start == start)
    }

    /// Compute slices used by a layout.
    pub fn compute_of(&self, layout: u64) -> u32 {
        bits(layout).map(|i| u32::from(self.compute[i])).sum()
    }

    /// Memory slices used by a layout.
    pub fn mem_of(&self, layout: u64) -> u32 {
        bits(layout).fold(0, |m, i| m | self.mask[i])
    }

    /// Whether one more instance of profile `p` passes the count rules (per-profile and GPU
    /// instance maximum) and the compute-slice budget on the valid layout `layout` whose compute
    /// slices are `compute`: the part of [`Tables::fits`] that does not depend on the placement.
    pub fn room_for(&self, layout: u64, compute: u32, p: usize) -> bool {
        let Some(c) = self.first_of(p) else {
            return false;
        };
        compute + u32::from(self.compute[c]) <= self.compute_total
            && (!self.prof_capped[p]
                || (layout & self.by_profile[p]).count_ones() < u32::from(self.prof_max[p]))
            && layout.count_ones() < self.max_instances
    }

    /// The first candidate of profile `p`, if it has any placement.
    fn first_of(&self, p: usize) -> Option<usize> {
        let set = self.by_profile[p];
        (set != 0).then(|| set.trailing_zeros() as usize)
    }

    /// [`Tables::fits`] with the layout's compute slices already known.
    pub fn fits_with(&self, layout: u64, compute: u32, c: usize) -> bool {
        let p = usize::from(self.prof[c]);
        layout & self.conflict[c] == 0
            && compute + u32::from(self.compute[c]) <= self.compute_total
            && (!self.prof_capped[p]
                || (layout & self.by_profile[p]).count_ones() < u32::from(self.prof_max[p]))
            && layout.count_ones() < self.max_instances
    }

    /// Whether candidate `c` can join the valid layout `layout`.
    pub fn fits(&self, layout: u64, c: usize) -> bool {
        layout & self.conflict[c] == 0 && self.fits_with(layout, self.compute_of(layout), c)
    }

    /// Whether a set of candidates is a valid layout.
    pub fn valid(&self, layout: u64) -> bool {
        let mut acc = 0u64;
        for c in bits(layout) {
            if !self.fits(acc, c) {
                return false;
            }
            acc |= 1 << c;
        }
        true
    }

    /// `L` of the fragmentation objective: the largest profile with an allowed placement entirely
    /// on slices outside `held_mem`, largest by memory slices and then by compute slices, as
    /// `16 × memory slices + compute slices` (0 when none fits). The compute term breaks ties
    /// between same-size profiles: on an H100, `2g@4` (leaves `4g.40gb@0`) beats `2g@0` (leaves
    /// only `3g.40gb@4`).
    pub fn largest_free(&self, held_mem: u32) -> u32 {
        if let Some(&l) = self.largest_tab.get(held_mem as usize) {
            return u32::from(l);
        }
        for &c in &self.by_size_desc {
            if self.mask[usize::from(c)] & held_mem == 0 {
                let c = usize::from(c);
                return u32::from(free_value(self.size[c], self.compute[c]));
            }
        }
        0
    }

    /// The fragmentation score of a GPU whose busy and assigned instances are `held`: `L²`.
    pub fn free_score(&self, held: u64) -> u64 {
        let l = u64::from(self.largest_free(self.mem_of(held)));
        l * l
    }

    /// Instances of profile `p` in a layout.
    pub fn count(&self, layout: u64, p: usize) -> u32 {
        (layout & self.by_profile[p]).count_ones()
    }

    /// Visit every valid layout that contains `base` and otherwise only candidates of `extra`
    /// (`base` must be valid). The callback returns `false` to stop.
    pub fn for_each_superset(&self, base: u64, extra: u64, visit: &mut dyn FnMut(u64) -> bool) {
        let compute = self.compute_of(base);
        let list: Vec<usize> = bits(extra & !base)
            .filter(|&c| self.fits_with(base, compute, c))
            .collect();
        fn rec(
            t: &Tables<'_>,
            list: &[usize],
            from: usize,
            layout: u64,
            compute: u32,
            visit: &mut dyn FnMut(u64) -> bool,
        ) -> bool {
            if !visit(layout) {
                return false;
            }
            for i in from..list.len() {
                let c = list[i];
                if t.fits_with(layout, compute, c)
                    && !rec(
                        t,
                        list,
                        i + 1,
                        layout | 1 << c,
                        compute + u32::from(t.compute[c]),
                        visit,
                    )
                {
                    return false;
                }
            }
            true
        }
        rec(self, &list, 0, base, compute, visit);
    }

    /// The placed instances of a layout, sorted by (start, profile).
    pub fn placed(&self, layout: u64) -> Vec<Placed> {
        let mut v: Vec<Placed> = bits(layout).map(|i| self.cand[i]).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::Catalog;

    #[test]
    fn bitset_rules_match_the_model_rules_on_every_builtin_model() {
        for m in &Catalog::builtin().models {
            let t = Tables::new(m).unwrap();
            let mut ours = Vec::new();
            t.for_each_superset(0, u64::MAX >> (64 - t.cand.len()), &mut |l| {
                ours.push(t.placed(l));
                true
            });
            let mut theirs: Vec<Vec<Placed>> = m
                .enumerate_layouts()
                .into_iter()
                .map(|l| l.items().to_vec())
                .collect();
            ours.sort();
            theirs.sort();
            assert_eq!(ours.len(), theirs.len(), "{}", m.key);
            assert_eq!(ours, theirs, "{}", m.key);
        }
    }

    #[test]
    fn largest_free_reads_the_memory_grid() {
        let m = Catalog::builtin().lookup("a100-40gb").unwrap();
        let t = Tables::new(m).unwrap();
        // Empty: 7g.40gb (8 memory, 7 compute slices).
        assert_eq!(t.largest_free(0), 8 * 16 + 7);
        // 1g at slice 6 leaves the 4-slice range 0-3, where 4g.20gb (4 compute) fits.
        assert_eq!(t.largest_free(1 << 6), 4 * 16 + 4);
        // Slices 0-5 and 7 held: only 1g@6 fits.
        assert_eq!(t.largest_free(0b1011_1111), 16 + 1);
        assert_eq!(t.largest_free(0b0111_1111), 0);
        // Slices 0-3 held: 3g.20gb@4 is the largest, one compute slice less than 4g.20gb@0.
        assert_eq!(t.largest_free(0b0000_1111), 4 * 16 + 3);
        assert!(t.largest_free(0b0011_0000) > t.largest_free(0b0000_0011));
    }
}
