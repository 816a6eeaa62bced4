//! Values computed once per distinct GPU state. A MIG GPU's state is its model's tables, its
//! layout and its held (busy or assigned) instances; everything a policy asks about one GPU
//! (which profiles it can serve, its best option per profile) depends on that state alone. A
//! busy cluster has far fewer distinct states than GPUs (the 1,000 × 8 benchmark's 6,421 MIG
//! GPUs come with about 2,300 distinct model + layout + busy-set combinations), so the
//! policies compute per state and look the answer up per GPU.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for keys made of small integers and bit sets (never for untrusted strings):
/// multiply-rotate mixing, finished so that the low bits the table indexes by depend on every
/// input bit. Only lookups use it, never iteration, so results stay deterministic.
#[derive(Default)]
pub(crate) struct BitsHasher(u64);

impl Hasher for BitsHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

/// Distinct states, each with a row of values (its length set by the caller, per state).
pub(crate) struct StateMemo<V> {
    /// State id of each (tables, layout, held) met so far.
    ids: HashMap<(usize, u64, u64), u32, BuildHasherDefault<BitsHasher>>,
    /// Per state: offset of its row in `values`.
    base: Vec<usize>,
    values: Vec<V>,
}

impl<V: Copy> StateMemo<V> {
    /// An empty memo, sized for about `states` states.
    pub fn with_capacity(states: usize) -> Self {
        StateMemo {
            ids: HashMap::with_capacity_and_hasher(states, BuildHasherDefault::default()),
            base: Vec::with_capacity(states),
            values: Vec::new(),
        }
    }

    /// The id of state (tables `t`, `layout`, `held`); on first sight `row` appends its values.
    pub fn id(&mut self, t: usize, layout: u64, held: u64, row: impl FnOnce(&mut Vec<V>)) -> u32 {
        let next = self.base.len() as u32;
        let id = *self.ids.entry((t, layout, held)).or_insert(next);
        if id == next {
            self.base.push(self.values.len());
            row(&mut self.values);
        }
        id
    }

    /// Value `i` of state `id`'s row.
    pub fn get(&self, id: u32, i: usize) -> V {
        self.values[self.base[id as usize] + i]
    }

    /// Value `i` of state `id`'s row, to change.
    pub fn get_mut(&mut self, id: u32, i: usize) -> &mut V {
        &mut self.values[self.base[id as usize] + i]
    }
}
