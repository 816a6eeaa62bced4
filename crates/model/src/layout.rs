//! MIG layouts: which GPU instances sit where on one GPU, and the rules that make a layout valid.
//!
//! A layout is a set of (profile, placement start) pairs on one GPU. It is valid when
//! 1. every start is an allowed placement of its profile,
//! 2. no two instances overlap on the memory-slice grid,
//! 3. no profile exceeds its maximum count, and the GPU's instance maximum holds,
//! 4. the compute slices add up to no more than the GPU has,
//! 5. at most one `+me` instance exists, and a `+me.all` instance shares the GPU only with
//!    `-me` instances.
//!
//! Every rule is monotone: adding an instance never repairs a broken rule. [`LayoutState`] checks
//! them incrementally, which is what enumeration and the planner use.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::{GpuModel, MediaKind, ProfileIdx};

/// Most profiles a model may have for incremental layout checks.
pub const MAX_PROFILES: usize = 32;

/// One GPU instance of a layout: a profile at a placement start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Placed {
    /// Start index on the memory-slice grid. Ordered first so layouts sort by position.
    pub start: u8,
    /// The profile, as an index into the model's profile list.
    pub profile: ProfileIdx,
}

impl Placed {
    /// A profile at a start.
    pub fn new(profile: ProfileIdx, start: u8) -> Self {
        Placed { start, profile }
    }
}

/// A set of instances on one GPU, kept sorted by (start, profile). It may be invalid;
/// [`GpuModel::validate`] says why.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Layout {
    items: Vec<Placed>,
}

impl Layout {
    /// A layout of these instances (order does not matter).
    pub fn new(mut items: Vec<Placed>) -> Self {
        items.sort_unstable();
        Layout { items }
    }

    /// The instances, sorted by (start, profile).
    pub fn items(&self) -> &[Placed] {
        &self.items
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the layout holds no instance.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Add an instance, keeping the order.
    pub fn insert(&mut self, p: Placed) {
        let pos = self.items.binary_search(&p).unwrap_or_else(|e| e);
        self.items.insert(pos, p);
    }

    /// Remove an instance; returns whether it was there.
    pub fn remove(&mut self, p: Placed) -> bool {
        match self.items.binary_search(&p) {
            Ok(i) => {
                self.items.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether the layout holds this exact instance.
    pub fn contains(&self, p: Placed) -> bool {
        self.items.binary_search(&p).is_ok()
    }
}

/// A broken layout rule, naming the instances involved (`PROFILE@START`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Violation {
    /// The start is not one of the profile's placements.
    BadPlacement {
        /// The instance.
        instance: String,
        /// The profile's allowed starts.
        allowed: Vec<u8>,
    },
    /// Two instances share memory slices.
    Overlap {
        /// First instance.
        a: String,
        /// Second instance.
        b: String,
        /// First shared slice.
        from: u8,
        /// Last shared slice.
        to: u8,
    },
    /// More instances of a profile than its maximum.
    TooManyOfProfile {
        /// Profile name.
        profile: String,
        /// Instances in the layout.
        count: usize,
        /// The profile's maximum.
        max: u8,
    },
    /// More instances than the GPU can hold.
    TooManyInstances {
        /// Instances in the layout.
        count: usize,
        /// The GPU's maximum.
        max: u8,
    },
    /// Compute slices add up to more than the GPU has.
    ComputeExceeded {
        /// Sum of the instances' compute slices.
        used: u32,
        /// The GPU's compute slices.
        total: u8,
    },
    /// More than one `+me` instance.
    MultipleMe {
        /// The `+me` instances.
        instances: Vec<String>,
    },
    /// A `+me.all` instance shares the GPU with an instance that is not `-me`.
    MeAllExcludes {
        /// The `+me.all` instance.
        me_all: String,
        /// The instance it excludes.
        other: String,
    },
}

impl std::error::Error for Violation {}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::BadPlacement { instance, allowed } => {
                let list: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
                let (profile, start) = instance.split_once('@').unwrap_or((instance, "?"));
                write!(
                    f,
                    "{instance}: start {start} is not an allowed placement of {profile} (allowed starts: {})",
                    list.join(", ")
                )
            }
            Violation::Overlap { a, b, from, to } => {
                if from == to {
                    write!(f, "{a} and {b} overlap on memory slice {from}")
                } else {
                    write!(f, "{a} and {b} overlap on memory slices {from}-{to}")
                }
            }
            Violation::TooManyOfProfile {
                profile,
                count,
                max,
            } => write!(
                f,
                "{count} instances of {profile} exceed its maximum of {max} per GPU"
            ),
            Violation::TooManyInstances { count, max } => {
                write!(f, "{count} instances exceed the GPU's maximum of {max}")
            }
            Violation::ComputeExceeded { used, total } => write!(
                f,
                "compute slices add up to {used}, more than the GPU's {total}"
            ),
            Violation::MultipleMe { instances } => write!(
                f,
                "at most one +me instance per GPU, found {}: {}",
                instances.len(),
                instances.join(", ")
            ),
            Violation::MeAllExcludes { me_all, other } => write!(
                f,
                "{me_all} takes every media engine, so it excludes {other} (only -me profiles may share its GPU)"
            ),
        }
    }
}

/// Errors from reading a `PROFILE@START` instance spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The spec is not `PROFILE@START`.
    #[error("`{spec}` is not an instance spec; write PROFILE@START, e.g. 3g.40gb@0")]
    BadSpec {
        /// What was given.
        spec: String,
    },
    /// The profile does not exist on this GPU model.
    #[error("unknown profile `{profile}` for {model}; known profiles: {}", known.join(", "))]
    UnknownProfile {
        /// The profile asked for.
        profile: String,
        /// The model key.
        model: String,
        /// The model's profiles.
        known: Vec<String>,
    },
}

/// Incremental checker of the layout rules: add instances one at a time and ask whether the
/// next one would keep the layout valid. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct LayoutState {
    /// Occupied memory slices, bit `i` = slice `i`.
    pub mask: u32,
    /// Compute slices in use.
    pub compute: u8,
    /// Instances in the layout.
    pub count: u8,
    per_profile: [u8; MAX_PROFILES],
    me: u8,
    me_all: bool,
    /// Instances that are not `-me` (a `+me.all` instance cannot join when this is non-zero).
    not_no_me: u8,
}

impl Default for LayoutState {
    fn default() -> Self {
        LayoutState {
            mask: 0,
            compute: 0,
            count: 0,
            per_profile: [0; MAX_PROFILES],
            me: 0,
            me_all: false,
            not_no_me: 0,
        }
    }
}

impl LayoutState {
    /// The state of an empty GPU.
    pub fn new() -> Self {
        Self::default()
    }

    /// Instances of a profile in the layout.
    pub fn count_of(&self, p: ProfileIdx) -> u8 {
        self.per_profile[usize::from(p.0)]
    }

    /// Whether adding `p` keeps every rule; `p`'s start must be one of its placements.
    pub fn fits(&self, model: &GpuModel, p: Placed) -> bool {
        let prof = model.profile(p.profile);
        if self.mask & model.mask(p) != 0
            || self.count >= model.max_instances
            || self.compute + prof.compute_slices > model.compute_slices
            || self.per_profile[usize::from(p.profile.0)] >= prof.max
        {
            return false;
        }
        match prof.media_kind() {
            MediaKind::Me => self.me == 0 && !self.me_all,
            MediaKind::MeAll => !self.me_all && self.not_no_me == 0,
            MediaKind::NoMe => true,
            MediaKind::Standard => !self.me_all,
        }
    }

    /// Add `p` (no check; call [`LayoutState::fits`] first).
    pub fn add(&mut self, model: &GpuModel, p: Placed) {
        let prof = model.profile(p.profile);
        self.mask |= model.mask(p);
        self.compute += prof.compute_slices;
        self.count += 1;
        self.per_profile[usize::from(p.profile.0)] += 1;
        match prof.media_kind() {
            MediaKind::Me => {
                self.me += 1;
                self.not_no_me += 1;
            }
            MediaKind::MeAll => {
                self.me_all = true;
                self.not_no_me += 1;
            }
            MediaKind::NoMe => {}
            MediaKind::Standard => self.not_no_me += 1,
        }
    }

    /// The state of a layout that is known to be valid.
    pub fn of(model: &GpuModel, items: &[Placed]) -> Self {
        let mut s = LayoutState::new();
        for &p in items {
            s.add(model, p);
        }
        s
    }
}

impl GpuModel {
    /// Memory-slice bit mask of an instance.
    pub fn mask(&self, p: Placed) -> u32 {
        let size = u32::from(self.profile(p.profile).memory_slices);
        let bits = if size >= 32 {
            u32::MAX
        } else {
            (1u32 << size) - 1
        };
        bits.checked_shl(u32::from(p.start)).unwrap_or(0)
    }

    /// Every (profile, allowed start) pair, ordered by profile then start.
    pub fn candidates(&self) -> Vec<Placed> {
        self.profile_indices()
            .flat_map(|(i, p)| p.placements.iter().map(move |&s| Placed::new(i, s)))
            .collect()
    }

    /// `PROFILE@START` text of an instance.
    pub fn spec(&self, p: Placed) -> String {
        format!("{}@{}", self.profile(p.profile).name, p.start)
    }

    /// Read a `PROFILE@START` spec. The start is not checked against the placements here:
    /// [`GpuModel::validate`] reports a bad start as a broken rule.
    pub fn parse_spec(&self, spec: &str) -> Result<Placed, LayoutError> {
        let bad = || LayoutError::BadSpec {
            spec: spec.to_string(),
        };
        let (name, start) = spec.trim().rsplit_once('@').ok_or_else(bad)?;
        let start: u8 = start.trim().parse().map_err(|_| bad())?;
        let profile = self
            .profile_named(name)
            .ok_or_else(|| LayoutError::UnknownProfile {
                profile: name.trim().to_string(),
                model: self.key.clone(),
                known: self.profile_names(),
            })?;
        Ok(Placed::new(profile, start))
    }

    /// Every broken rule of a layout, in a stable order; empty when the layout is valid.
    pub fn validate(&self, items: &[Placed]) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut items = items.to_vec();
        items.sort_unstable();
        let grid = u16::from(self.memory_slices);
        for &p in &items {
            let prof = self.profile(p.profile);
            let in_grid = u16::from(p.start) + u16::from(prof.memory_slices) <= grid;
            if !prof.placements.contains(&p.start) || !in_grid {
                out.push(Violation::BadPlacement {
                    instance: self.spec(p),
                    allowed: prof.placements.clone(),
                });
            }
        }
        for (i, &a) in items.iter().enumerate() {
            for &b in &items[i + 1..] {
                let (a0, a1) = self.span(a);
                let (b0, b1) = self.span(b);
                let from = a0.max(b0);
                let to = a1.min(b1);
                if from <= to {
                    out.push(Violation::Overlap {
                        a: self.spec(a),
                        b: self.spec(b),
                        from: from as u8,
                        to: to as u8,
                    });
                }
            }
        }
        for (idx, prof) in self.profile_indices() {
            let count = items.iter().filter(|p| p.profile == idx).count();
            if count > usize::from(prof.max) {
                out.push(Violation::TooManyOfProfile {
                    profile: prof.name.clone(),
                    count,
                    max: prof.max,
                });
            }
        }
        if items.len() > usize::from(self.max_instances) {
            out.push(Violation::TooManyInstances {
                count: items.len(),
                max: self.max_instances,
            });
        }
        let used: u32 = items
            .iter()
            .map(|p| u32::from(self.profile(p.profile).compute_slices))
            .sum();
        if used > u32::from(self.compute_slices) {
            out.push(Violation::ComputeExceeded {
                used,
                total: self.compute_slices,
            });
        }
        let kind = |p: &Placed| self.profile(p.profile).media_kind();
        let me: Vec<String> = items
            .iter()
            .filter(|p| kind(p) == MediaKind::Me)
            .map(|&p| self.spec(p))
            .collect();
        if me.len() > 1 {
            out.push(Violation::MultipleMe { instances: me });
        }
        for a in items.iter().filter(|p| kind(p) == MediaKind::MeAll) {
            for b in items
                .iter()
                .filter(|b| *b != a && kind(b) != MediaKind::NoMe)
            {
                out.push(Violation::MeAllExcludes {
                    me_all: self.spec(*a),
                    other: self.spec(*b),
                });
            }
        }
        out
    }

    /// First and last memory slice of an instance (the last may run past the grid).
    fn span(&self, p: Placed) -> (u16, u16) {
        let size = u16::from(self.profile(p.profile).memory_slices);
        (u16::from(p.start), u16::from(p.start) + size - 1)
    }

    /// A valid layout of these instances, or every broken rule.
    pub fn layout(&self, items: Vec<Placed>) -> Result<Layout, Vec<Violation>> {
        let v = self.validate(&items);
        if v.is_empty() {
            Ok(Layout::new(items))
        } else {
            Err(v)
        }
    }

    /// Whether `p` can join the valid layout `items` without breaking a rule.
    pub fn can_add(&self, items: &[Placed], p: Placed) -> bool {
        self.profile(p.profile).placements.contains(&p.start)
            && LayoutState::of(self, items).fits(self, p)
    }

    /// Whether no instance can be added to the valid layout `items`.
    pub fn is_maximal(&self, items: &[Placed]) -> bool {
        let state = LayoutState::of(self, items);
        self.candidates().into_iter().all(|c| !state.fits(self, c))
    }

    /// Every valid layout of this model, the empty one included, in a stable order.
    pub fn enumerate_layouts(&self) -> Vec<Layout> {
        let cands = self.candidates();
        let mut out = Vec::new();
        let mut stack = Vec::new();
        self.enumerate_from(&cands, 0, LayoutState::new(), &mut stack, &mut |items| {
            out.push(Layout::new(items.to_vec()))
        });
        out
    }

    /// The valid layouts to which no instance can be added.
    pub fn maximal_layouts(&self) -> Vec<Layout> {
        let cands = self.candidates();
        self.enumerate_layouts()
            .into_iter()
            .filter(|l| {
                let st = LayoutState::of(self, l.items());
                cands.iter().all(|&c| !st.fits(self, c))
            })
            .collect()
    }

    fn enumerate_from(
        &self,
        cands: &[Placed],
        from: usize,
        state: LayoutState,
        stack: &mut Vec<Placed>,
        visit: &mut dyn FnMut(&[Placed]),
    ) {
        visit(stack);
        for (i, &c) in cands.iter().enumerate().skip(from) {
            if state.fits(self, c) {
                let mut next = state;
                next.add(self, c);
                stack.push(c);
                self.enumerate_from(cands, i + 1, next, stack, visit);
                stack.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn model(key: &str) -> &'static GpuModel {
        Catalog::builtin().lookup(key).unwrap()
    }

    fn specs(m: &GpuModel, s: &str) -> Vec<Placed> {
        s.split_whitespace()
            .map(|x| m.parse_spec(x).unwrap())
            .collect()
    }

    #[test]
    fn a_known_good_a100_layout_is_valid() {
        let m = model("a100-80gb");
        assert_eq!(
            m.validate(&specs(m, "3g.40gb@0 2g.20gb@4 1g.10gb@6")),
            vec![]
        );
        assert_eq!(m.validate(&specs(m, "4g.40gb@0 3g.40gb@4")), vec![]);
    }

    #[test]
    fn each_rule_is_reported_with_the_instances_involved() {
        let m = model("h100-80gb");
        let v = m.validate(&specs(m, "3g.40gb@1"));
        assert!(matches!(&v[..], [Violation::BadPlacement { .. }]), "{v:?}");
        assert!(v[0].to_string().contains("allowed starts: 0, 4"));

        let v = m.validate(&specs(m, "3g.40gb@0 2g.20gb@2"));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            v[0].to_string(),
            "3g.40gb@0 and 2g.20gb@2 overlap on memory slices 2-3"
        );

        let v = m.validate(&specs(m, "1g.10gb+me@0 1g.10gb+me@1"));
        assert!(
            v.iter().any(|x| matches!(x, Violation::MultipleMe { .. })),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|x| matches!(x, Violation::TooManyOfProfile { .. })),
            "{v:?}"
        );

        // One +me instance beside an ordinary one of the same size is fine.
        let m = model("a30");
        assert_eq!(m.validate(&specs(m, "2g.12gb@0 2g.12gb+me@2")), vec![]);
    }

    #[test]
    fn compute_slices_are_capped_even_when_memory_fits() {
        // On 8-slice GPUs 4g and 3g take 4 memory slices each; seven 1g would also fit memory.
        let m = model("a100-40gb");
        let v = m.validate(&specs(m, "4g.20gb@0 1g.5gb@4 1g.5gb@5 1g.5gb@6 1g.5gb@7"));
        assert!(v
            .iter()
            .any(|x| matches!(x, Violation::BadPlacement { .. })));
        let v = m.validate(&specs(m, "4g.20gb@0 1g.5gb@4 1g.5gb@5 1g.5gb@6"));
        assert_eq!(v, vec![]);
        let v = m.validate(&specs(m, "4g.20gb@0 3g.20gb@4"));
        assert_eq!(v, vec![]);
    }

    #[test]
    fn me_all_excludes_everything_but_no_me() {
        let m = model("rtx-pro-6000");
        assert_eq!(
            m.validate(&specs(m, "1g.24gb+me.all@0 1g.24gb-me@3 2g.48gb-me@6")),
            vec![]
        );
        let v = m.validate(&specs(m, "1g.24gb+me.all@0 1g.24gb@3"));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].to_string().contains("1g.24gb+me.all@0"));
        let v = m.validate(&specs(m, "1g.24gb+me.all@0 1g.24gb+me@3"));
        assert!(!v.is_empty());
    }

    #[test]
    fn spec_parsing_names_the_problem() {
        let m = model("h100-80gb");
        assert!(matches!(
            m.parse_spec("3g.40gb"),
            Err(LayoutError::BadSpec { .. })
        ));
        let e = m.parse_spec("3g.41gb@0").unwrap_err().to_string();
        assert!(e.contains("3g.41gb") && e.contains("3g.40gb"), "{e}");
        assert_eq!(m.spec(m.parse_spec("MIG 3g.40gb@4").unwrap()), "3g.40gb@4");
    }

    #[test]
    fn enumeration_counts_include_the_empty_layout_and_full_gpu() {
        let m = model("a30");
        let all = m.enumerate_layouts();
        assert!(all.iter().any(|l| l.is_empty()));
        let full = m.profile_named("4g.24gb").unwrap();
        assert!(all.iter().any(|l| l.items() == [Placed::new(full, 0)]));
        let max = m.maximal_layouts();
        assert!(max
            .iter()
            .all(|l| m.is_maximal(l.items()) && m.validate(l.items()).is_empty()));
    }
}
