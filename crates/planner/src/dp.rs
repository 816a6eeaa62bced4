//! Exact MIG planning of a set of GPUs for a set of candidate requests, by dynamic programming.
//! The `exact` policy runs it on the whole cluster; `tessera` runs it on pairs of GPUs to
//! improve its greedy plan.
//!
//! Requests of one profile differ only in priority, so which requests are served is described by
//! how many of each profile are served (always the highest priorities of that profile). For each
//! GPU every *option* is enumerated: a valid final layout that keeps the busy instances, and
//! which of its free instances serve requests (every created instance serves one; any subset of
//! the kept idle ones may). Options with the same served counts keep only the best (fewest
//! operations, then highest free score); operations and free scores add up over GPUs, so this
//! loses nothing. The program walks the GPUs with one state per vector of served counts and
//! keeps, per state, the fewest operations and then the highest free score; the best final state
//! by (priority, operations, free score) is the optimum.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::problem::{Problem, ReqKind};
use crate::tables::bits;

/// One option of one GPU.
#[derive(Debug, Clone)]
struct GpuOption {
    digits: Vec<u32>,
    offset: usize,
    ops: u32,
    score: u64,
    layout: u64,
    assigned: u64,
}

/// The search, prepared: options enumerated and the step count known.
pub(crate) struct Search {
    gpus: Vec<usize>,
    /// Per dimension: the global profile and its candidate requests, best first.
    dims: Vec<(usize, Vec<usize>)>,
    stride: Vec<usize>,
    states: usize,
    options: Vec<Vec<GpuOption>>,
    /// Steps spent enumerating plus the transitions the program will take.
    pub steps: u64,
}

/// What the search decided.
pub(crate) struct Outcome {
    /// Per GPU of the search (same order): final layout.
    pub layouts: Vec<u64>,
    /// (request, GPU position in the search, candidate) for each served request.
    pub assign: Vec<(usize, usize, usize)>,
    /// Served priority of the candidates.
    pub value: u64,
    /// Operations on these GPUs.
    pub ops: u32,
}

/// Why a search was not prepared.
#[derive(Debug)]
pub(crate) enum TooLarge {
    /// More served-count combinations than the limit.
    States(u64),
    /// More steps than the limit.
    Steps(u64),
}

impl Search {
    /// Enumerate the options of `gpus` (MIG GPU indices) for the MIG requests `cands`, giving up
    /// once more than `max_steps` steps would be needed.
    pub fn prepare(
        p: &Problem<'_>,
        gpus: &[usize],
        cands: &[usize],
        max_steps: u64,
    ) -> Result<Self, TooLarge> {
        let mut per: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &i in cands {
            if let ReqKind::Mig(gp) = p.reqs[i].kind {
                per.entry(gp).or_default().push(i);
            }
        }
        let mut dims: Vec<(usize, Vec<usize>)> = per.into_iter().collect();
        for (_, v) in &mut dims {
            v.sort_by_key(|&i| (Reverse(p.reqs[i].prio), i));
        }
        let mut stride = Vec::with_capacity(dims.len());
        let mut states: u64 = 1;
        for (_, v) in &dims {
            stride.push(states as usize);
            states = states.saturating_mul(v.len() as u64 + 1);
        }
        if states > max_steps {
            return Err(TooLarge::States(states));
        }
        let mut options = Vec::with_capacity(gpus.len());
        let mut steps: u64 = 0;
        for &m in gpus {
            let g = &p.mig[m];
            let t = p.t(m);
            let loc = &p.local[g.t];
            let dim_lp: Vec<Option<usize>> = dims.iter().map(|(gp, _)| loc[*gp]).collect();
            let mut wanted = 0u64;
            for lp in dim_lp.iter().flatten() {
                wanted |= t.by_profile[*lp];
            }
            let idle = g.existing & !g.busy;
            let mut best: BTreeMap<usize, GpuOption> = BTreeMap::new();
            let mut enumerated: u64 = 0;
            let budget = max_steps.saturating_sub(steps);
            t.for_each_superset(g.busy, idle | wanted, &mut |l| {
                let created = l & !g.existing;
                let reusable = l & idle & wanted;
                let ops = (l ^ g.existing).count_ones();
                let mut sub = reusable;
                loop {
                    enumerated += 1;
                    let a = created | sub;
                    let mut ok = true;
                    let mut offset = 0usize;
                    for (k, lp) in dim_lp.iter().enumerate() {
                        let n = lp.map_or(0, |lp| t.count(a, lp));
                        if n as usize > dims[k].1.len() {
                            ok = false;
                            break;
                        }
                        offset += n as usize * stride[k];
                    }
                    if ok {
                        let score = t.free_score(g.busy | a);
                        let better = best
                            .get(&offset)
                            .is_none_or(|b| (Reverse(ops), score) > (Reverse(b.ops), b.score));
                        if better {
                            let digits = dim_lp
                                .iter()
                                .map(|lp| lp.map_or(0, |lp| t.count(a, lp)))
                                .collect();
                            best.insert(
                                offset,
                                GpuOption {
                                    digits,
                                    offset,
                                    ops,
                                    score,
                                    layout: l,
                                    assigned: a,
                                },
                            );
                        }
                    }
                    if sub == 0 {
                        break;
                    }
                    sub = (sub - 1) & reusable;
                }
                enumerated <= budget
            });
            let opts: Vec<GpuOption> = best.into_values().collect();
            steps = steps
                .saturating_add(enumerated)
                .saturating_add((opts.len() as u64).saturating_mul(states));
            if steps > max_steps {
                return Err(TooLarge::Steps(steps));
            }
            options.push(opts);
        }
        Ok(Search {
            gpus: gpus.to_vec(),
            dims,
            stride,
            states: states as usize,
            options,
            steps,
        })
    }

    /// Run the program and return the optimum (ties: the lowest state, the first option).
    pub fn run(&self, p: &Problem<'_>) -> Outcome {
        let n = self.states;
        const UNSET: (u32, u64) = (u32::MAX, 0);
        let mut best = vec![UNSET; n];
        best[0] = (0, 0);
        let mut choice: Vec<Vec<u32>> = Vec::with_capacity(self.options.len());
        let decode = |s: usize| -> Vec<u32> {
            self.dims
                .iter()
                .zip(&self.stride)
                .map(|((_, v), &st)| ((s / st) % (v.len() + 1)) as u32)
                .collect()
        };
        for opts in &self.options {
            let mut next = vec![UNSET; n];
            let mut ch = vec![u32::MAX; n];
            for (s, &here) in best.iter().enumerate() {
                if here.0 == u32::MAX {
                    continue;
                }
                let digits = decode(s);
                for (oi, o) in opts.iter().enumerate() {
                    if o.digits
                        .iter()
                        .zip(&digits)
                        .zip(&self.dims)
                        .any(|((a, b), d)| (a + b) as usize > d.1.len())
                    {
                        continue;
                    }
                    let s2 = s + o.offset;
                    let cand = (here.0 + o.ops, here.1 + o.score);
                    let cur = next[s2];
                    if cur.0 == u32::MAX || (Reverse(cand.0), cand.1) > (Reverse(cur.0), cur.1) {
                        next[s2] = cand;
                        ch[s2] = oi as u32;
                    }
                }
            }
            best = next;
            choice.push(ch);
        }
        let prefix: Vec<Vec<u64>> = self
            .dims
            .iter()
            .map(|(_, v)| {
                let mut acc = vec![0u64];
                for &i in v {
                    acc.push(acc.last().copied().unwrap_or(0) + p.reqs[i].prio);
                }
                acc
            })
            .collect();
        let mut top: Option<(u64, u32, u64, usize)> = None;
        for (s, &(ops, score)) in best.iter().enumerate() {
            if ops == u32::MAX {
                continue;
            }
            let value: u64 = decode(s)
                .iter()
                .zip(&prefix)
                .map(|(&k, pre)| pre[k as usize])
                .sum();
            if top.is_none_or(|(v, o, sc, _)| (value, Reverse(ops), score) > (v, Reverse(o), sc)) {
                top = Some((value, ops, score, s));
            }
        }
        let (value, ops, _, mut s) = top.expect("the empty option is always reachable");
        let mut picks = vec![0usize; self.options.len()];
        for k in (0..self.options.len()).rev() {
            let oi = choice[k][s] as usize;
            picks[k] = oi;
            s -= self.options[k][oi].offset;
        }
        // Hand out requests: per profile best first, GPUs and instances in order.
        let mut next_req = vec![0usize; self.dims.len()];
        let mut layouts = Vec::with_capacity(self.gpus.len());
        let mut assign = Vec::new();
        for (k, &oi) in picks.iter().enumerate() {
            let m = self.gpus[k];
            let o = &self.options[k][oi];
            layouts.push(o.layout);
            let t = p.t(m);
            let loc = &p.local[p.mig[m].t];
            for c in bits(o.assigned) {
                let lp = usize::from(t.prof[c]);
                let d = self
                    .dims
                    .iter()
                    .position(|(gp, _)| loc[*gp] == Some(lp))
                    .expect("assigned instances have a candidate profile");
                let i = self.dims[d].1[next_req[d]];
                next_req[d] += 1;
                assign.push((i, k, c));
            }
        }
        Outcome {
            layouts,
            assign,
            value,
            ops,
        }
    }
}
