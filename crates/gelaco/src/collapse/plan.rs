//! What is searched: a genotype of `L` triples `(b, e, a)` decoded through
//! `psi` into a collapse plan, whose list of effective `(cb, ce)` pairs is its canonical form.

use serde::{Deserialize, Serialize};

use super::merge::MergeOp;
use crate::error::{Error, Result};
use crate::util::Choice;

/// One gene triple: merge original layers `b..=e` when `active` (and `e > b`).
/// `op` is the per-span merge operator gene, used when the search chooses operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Triple {
    pub b: usize,
    pub e: usize,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<MergeOp>,
}

/// An effective merge: current layers `cb..=ce` collapse into `cb` with operator `op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Span {
    pub cb: usize,
    pub ce: usize,
    pub op: MergeOp,
}

/// A decoded genotype.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Plan {
    /// Layers of the original model.
    pub num_layers: usize,
    /// The canonical form: effective merges in the order they apply, in the indices of
    /// the model compressed so far.
    pub canonical: Vec<Span>,
    /// `psi[j]`: the compressed layer that original layer `j` became.
    pub psi: Vec<usize>,
}

impl Plan {
    /// The uncompressed model.
    pub fn identity(num_layers: usize) -> Self {
        Plan {
            num_layers,
            canonical: Vec::new(),
            psi: (0..num_layers).collect(),
        }
    }

    /// Decode a genotype. Triples without an operator gene use `default_op`.
    /// Indices beyond the model are clamped to the last layer.
    pub fn decode(triples: &[Triple], num_layers: usize, default_op: MergeOp) -> Self {
        let mut plan = Plan::identity(num_layers);
        if num_layers == 0 {
            return plan;
        }
        for t in triples {
            let (b, e) = (t.b.min(num_layers - 1), t.e.min(num_layers - 1));
            if !t.active || e <= b {
                continue;
            }
            let (cb, ce) = (plan.psi[b], plan.psi[e]);
            if ce > cb {
                plan.push(cb, ce, t.op.unwrap_or(default_op));
            }
        }
        plan
    }

    /// Check a plan read from a file against a model of `layers` layers: every merge of the
    /// canonical form in range of the model compressed so far, and `psi` what they give.
    pub fn check(&self, layers: usize) -> crate::limits::Check {
        if self.num_layers != layers {
            return Err(format!("num_layers: {} but the model has {layers} layers", self.num_layers));
        }
        Self::check_parts(layers, &self.canonical, &self.psi)
    }

    /// [`Plan::check`] of a canonical form and its `psi`.
    pub fn check_parts(layers: usize, canonical: &[Span], psi: &[usize]) -> crate::limits::Check {
        if psi.len() != layers {
            return Err(format!("psi: {} entries for a model of {layers} layers", psi.len()));
        }
        if canonical.len() >= layers.max(1) {
            return Err(format!("canonical: {} merges for a model of {layers} layers", canonical.len()));
        }
        let mut plan = Plan::identity(layers);
        for (i, s) in canonical.iter().enumerate() {
            if !(s.cb < s.ce && s.ce < plan.remaining()) {
                return Err(format!("canonical[{i}]: merge {}:{} is not inside the {} layers left", s.cb, s.ce, plan.remaining()));
            }
            plan.push(s.cb, s.ce, s.op);
        }
        if plan.psi != psi {
            return Err("psi: does not follow from the canonical merges".into());
        }
        Ok(())
    }

    /// Apply one more merge, in the indices of the model compressed so far.
    pub fn push(&mut self, cb: usize, ce: usize, op: MergeOp) {
        debug_assert!(cb < ce && ce < self.remaining());
        for p in self.psi.iter_mut() {
            if *p > cb && *p <= ce {
                *p = cb;
            } else if *p > ce {
                *p -= ce - cb;
            }
        }
        self.canonical.push(Span { cb, ce, op });
    }

    /// A plan from merge ranges: active triples in genotype order, inclusive,
    /// original 0-based indices. Every range must lie in the model and have `b < e`.
    pub fn from_ranges(ranges: &[(usize, usize)], num_layers: usize, op: MergeOp) -> Result<Self> {
        let triples: Vec<Triple> = ranges
            .iter()
            .map(|&(b, e)| Triple { b, e, active: true, op: None })
            .collect();
        Self::from_triples(&triples, num_layers, op)
    }

    /// Like [`Plan::decode`], after checking that every triple is in range with `b < e`.
    pub fn from_triples(triples: &[Triple], num_layers: usize, op: MergeOp) -> Result<Self> {
        for t in triples {
            if t.e >= num_layers {
                return Err(Error::Invalid(format!(
                    "merge {}:{} is out of range: the model has layers 0..={}",
                    t.b,
                    t.e,
                    num_layers.saturating_sub(1)
                )));
            }
            if t.b >= t.e {
                return Err(Error::Invalid(format!("merge {}:{} needs B < E", t.b, t.e)));
            }
        }
        Ok(Self::decode(triples, num_layers, op))
    }

    /// Parse `"B:E,B:E:op,..."` into active triples; an operator after a second colon
    /// overrides the default for that merge. An empty string is the identity.
    pub fn parse_merges(text: &str) -> Result<Vec<Triple>> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let bad = || Error::Invalid(format!("merge '{s}' is not of the form B:E or B:E:op (e.g. 20:23 or 20:23:mean)"));
                let mut parts = s.split(':').map(str::trim);
                let b = parts.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
                let e = parts.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
                let op = match parts.next() {
                    Some(name) => Some(MergeOp::from_name(name).ok_or_else(|| {
                        Error::Invalid(format!("merge '{s}': unknown operator '{name}' (rdsc, mean, keep-first, keep-last)"))
                    })?),
                    None => None,
                };
                if parts.next().is_some() {
                    return Err(bad());
                }
                Ok(Triple { b, e, active: true, op })
            })
            .collect()
    }

    /// Parse `"B:E,B:E,..."` into ranges.
    pub fn parse_ranges(text: &str) -> Result<Vec<(usize, usize)>> {
        Ok(Self::parse_merges(text)?.into_iter().map(|t| (t.b, t.e)).collect())
    }

    /// Layers removed.
    pub fn removed(&self) -> usize {
        self.canonical.iter().map(|s| s.ce - s.cb).sum()
    }

    /// Layers left.
    pub fn remaining(&self) -> usize {
        self.num_layers - self.removed()
    }

    /// Removed layers / original layers.
    pub fn compression(&self) -> f64 {
        if self.num_layers == 0 { 0.0 } else { self.removed() as f64 / self.num_layers as f64 }
    }

    /// The first original layer whose output differs from the original model's: every
    /// layer before it is untouched and sees untouched inputs.
    pub fn first_changed_layer(&self) -> usize {
        self.canonical
            .iter()
            .map(|s| s.cb)
            .min()
            .map(|cb| self.psi.iter().position(|&p| p == cb).unwrap_or(cb))
            .unwrap_or(self.num_layers)
    }

    /// For each compressed layer, the original layers it stands for (a contiguous range).
    pub fn groups(&self) -> Vec<std::ops::RangeInclusive<usize>> {
        let mut groups: Vec<std::ops::RangeInclusive<usize>> = Vec::with_capacity(self.remaining());
        for (j, &p) in self.psi.iter().enumerate() {
            if p == groups.len() {
                groups.push(j..=j);
            } else if let Some(g) = groups.last_mut() {
                *g = *g.start()..=j;
            }
        }
        groups
    }

    /// A genotype in original indices that decodes to exactly this plan: the effective
    /// merges, all active, each with its operator, followed by inactive triples up to `L`.
    pub fn to_genotype(&self) -> Vec<Triple> {
        let mut psi: Vec<usize> = (0..self.num_layers).collect();
        let mut out = Vec::with_capacity(self.num_layers);
        for s in &self.canonical {
            let b = psi.iter().position(|&p| p == s.cb).unwrap_or(0);
            let e = psi.iter().rposition(|&p| p == s.ce).unwrap_or(0);
            out.push(Triple { b, e, active: true, op: Some(s.op) });
            for (j, p) in psi.iter_mut().enumerate() {
                if (b..=e).contains(&j) {
                    *p = s.cb;
                } else if j > e {
                    *p -= s.ce - s.cb;
                }
            }
        }
        while out.len() < self.num_layers {
            out.push(Triple { b: 0, e: 0, active: false, op: None });
        }
        out
    }

    /// Per compressed layer, the original layer whose weights it holds unchanged (`None`
    /// where a merge blended several layers' weights).
    pub fn kept_layers(&self) -> Vec<Option<usize>> {
        let mut current: Vec<Option<usize>> = (0..self.num_layers).map(Some).collect();
        for s in &self.canonical {
            if s.cb > s.ce || s.ce >= current.len() {
                continue;
            }
            let merged = match s.op {
                MergeOp::KeepFirst => current[s.cb],
                MergeOp::KeepLast => current[s.ce],
                MergeOp::Mean | MergeOp::Rdsc => None,
            };
            current.splice(s.cb..=s.ce, [merged]);
        }
        current
    }

    /// Original layers whose weights the compressed model no longer holds on their own,
    /// ascending: every layer of a merged group but the one kept (the group's first where
    /// weights were blended).
    pub fn removed_layers(&self) -> Vec<usize> {
        let kept = self.kept_layers();
        let mut removed = Vec::with_capacity(self.removed());
        for (i, g) in self.groups().into_iter().enumerate() {
            let survivor = kept.get(i).copied().flatten().filter(|k| g.contains(k)).unwrap_or(*g.start());
            removed.extend(g.filter(|&j| j != survivor));
        }
        removed
    }

    /// [`Plan::removed_layers`] as ranges in original indices, e.g. `14-19, 25`; `none` for
    /// the original model.
    pub fn removed_text(&self) -> String {
        let layers = self.removed_layers();
        let mut parts = Vec::new();
        let mut i = 0;
        while i < layers.len() {
            let start = layers[i];
            while i + 1 < layers.len() && layers[i + 1] == layers[i] + 1 {
                i += 1;
            }
            parts.push(if layers[i] == start { start.to_string() } else { format!("{start}-{}", layers[i]) });
            i += 1;
        }
        if parts.is_empty() { "none".into() } else { parts.join(", ") }
    }

    /// The ranges of [`Plan::to_genotype`]'s active triples, as merges text (`B:E,...`), with the
    /// operator of every merge whose operator is not `default` (`B:E:op`).
    pub fn merges_text_with_ops(&self, default: MergeOp) -> String {
        self.to_genotype()
            .iter()
            .filter(|t| t.active)
            .map(|t| match t.op {
                Some(op) if op != default => format!("{}:{}:{op}", t.b, t.e),
                _ => format!("{}:{}", t.b, t.e),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ranges of [`Plan::to_genotype`]'s active triples, as merges text (`B:E,...`).
    pub fn merges_text(&self) -> String {
        self.to_genotype()
            .iter()
            .filter(|t| t.active)
            .map(|t| format!("{}:{}", t.b, t.e))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A key that identifies the compressed model this plan builds. When every merged group
    /// was formed with one operator whose result depends only on which original layers
    /// end up together (keep-first, keep-last), plans that group layers alike build the
    /// same model and share a key; otherwise the sequence of merges is the key, as it
    /// changes the weights.
    pub fn model_key(&self) -> String {
        let mut ops: Vec<Vec<MergeOp>> = vec![Vec::new(); self.num_layers];
        let mut by_grouping = true;
        for s in &self.canonical {
            by_grouping &= !s.op.depends_on_order();
            let mut merged: Vec<MergeOp> = ops.drain(s.cb..=s.ce).flatten().collect();
            merged.push(s.op);
            ops.insert(s.cb, merged);
        }
        if by_grouping && ops.iter().all(|o| o.windows(2).all(|w| w[0] == w[1])) {
            let mut key = String::from("g|");
            for (g, o) in self.groups().iter().zip(&ops) {
                if let Some(op) = o.first() {
                    key.push_str(&format!("{}-{}:{};", g.start(), g.end(), op.name()));
                }
            }
            key
        } else {
            let mut key = String::from("s|");
            for s in &self.canonical {
                key.push_str(&format!("{}:{}:{};", s.cb, s.ce, s.op.name()));
            }
            key
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn t(b: usize, e: usize) -> Triple {
        Triple { b, e, active: true, op: None }
    }

    #[test]
    fn worked_example_of_the_method() {
        let p = Plan::decode(&[t(5, 7), t(6, 9)], 30, MergeOp::Rdsc);
        assert_eq!(p.canonical.iter().map(|s| (s.cb, s.ce)).collect::<Vec<_>>(), vec![(5, 7), (5, 7)]);
        assert_eq!(p.removed(), 4);
        assert!((5..=9).all(|j| p.psi[j] == 5));
        assert_eq!(p.psi[10], 6);
        assert_eq!(p.psi[29], 25);
        assert_eq!(p.groups()[5], 5..=9);
        assert_eq!(p.first_changed_layer(), 5);
    }

    #[test]
    fn skipped_and_inactive_triples_do_nothing() {
        let mut off = t(2, 8);
        off.active = false;
        let p = Plan::decode(&[off, t(4, 4), t(9, 3), t(3, 6), t(4, 5)], 12, MergeOp::Mean);
        assert_eq!(p.canonical.len(), 1);
        assert_eq!(p.removed(), 3);
    }

    fn random_genotype(rng: &mut StdRng, l: usize) -> Vec<Triple> {
        (0..l)
            .map(|_| {
                let b = rng.random_range(0..l);
                let e = if rng.random_bool(0.7) { (b + rng.random_range(0..4)).min(l - 1) } else { rng.random_range(0..l) };
                Triple { b, e, active: rng.random_bool(0.3), op: None }
            })
            .collect()
    }

    #[test]
    fn properties_over_random_genotypes() {
        let mut rng = StdRng::seed_from_u64(11);
        for n in 0..5000 {
            let l = [4, 7, 30, 32][n % 4];
            let g = random_genotype(&mut rng, l);
            let p = Plan::decode(&g, l, MergeOp::Rdsc);
            // psi is non-decreasing and onto 0..remaining
            assert!(p.psi.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= 1), "{g:?}");
            assert_eq!(p.psi[0], 0);
            assert_eq!(p.psi[l - 1] + 1, p.remaining());
            assert_eq!(p.removed() + p.remaining(), l);
            assert_eq!(p.groups().len(), p.remaining());
            // decoding the canonical form again gives itself
            let again = Plan::decode(&p.to_genotype(), l, MergeOp::KeepFirst);
            assert_eq!(again, p, "{g:?}");
            // layers before the first change are untouched
            let f = p.first_changed_layer();
            assert!((0..f.min(l)).all(|j| p.psi[j] == j));
        }
    }

    #[test]
    fn parses_and_checks_ranges() {
        assert_eq!(Plan::parse_ranges("20:23, 5:7").unwrap(), vec![(20, 23), (5, 7)]);
        assert!(Plan::parse_ranges("").unwrap().is_empty());
        assert!(Plan::parse_ranges("5-7").is_err());
        assert!(Plan::parse_merges("5:7:average").unwrap_err().to_string().contains("average"));
        assert_eq!(Plan::parse_merges("5:7:mean").unwrap()[0].op, Some(MergeOp::Mean));
        assert!(Plan::from_ranges(&[(5, 30)], 30, MergeOp::Rdsc).unwrap_err().to_string().contains("out of range"));
        assert!(Plan::from_ranges(&[(7, 7)], 30, MergeOp::Rdsc).unwrap_err().to_string().contains("B < E"));
        let p = Plan::from_ranges(&[(5, 7), (6, 9)], 30, MergeOp::Rdsc).unwrap();
        assert_eq!(p.merges_text(), "5:7,5:9");
    }

    #[test]
    fn model_key_merges_equivalent_plans_only_when_order_is_irrelevant() {
        let a = Plan::from_ranges(&[(5, 6), (5, 7)], 12, MergeOp::KeepFirst).unwrap();
        let b = Plan::from_ranges(&[(5, 7)], 12, MergeOp::KeepFirst).unwrap();
        assert_ne!(a.canonical, b.canonical);
        assert_eq!(a.model_key(), b.model_key());
        let a = Plan::from_ranges(&[(5, 6), (5, 7)], 12, MergeOp::Rdsc).unwrap();
        let b = Plan::from_ranges(&[(5, 7)], 12, MergeOp::Rdsc).unwrap();
        assert_ne!(a.model_key(), b.model_key());
        // mixed operators in one group: the order matters again
        let seq = |ops: [MergeOp; 2]| {
            let g: Vec<Triple> = ops.iter().enumerate().map(|(i, op)| Triple { b: 5, e: 6 + i, active: true, op: Some(*op) }).collect();
            Plan::decode(&g, 12, MergeOp::Rdsc).model_key()
        };
        assert_ne!(seq([MergeOp::KeepLast, MergeOp::KeepFirst]), seq([MergeOp::KeepFirst, MergeOp::KeepFirst]));
    }

    #[test]
    fn removed_layers_are_named_in_original_indices() {
        // (5,7) then (6,9): original layers 5..=9 become one layer
        let plan = Plan::from_ranges(&[(5, 7), (6, 9), (20, 21)], 30, MergeOp::KeepFirst).unwrap();
        assert_eq!(plan.removed_layers(), vec![6, 7, 8, 9, 21]);
        assert_eq!(plan.removed_text(), "6-9, 21");
        assert_eq!(Plan::identity(30).removed_text(), "none");
        // a run at the bottom is dropped by keeping the layer after it
        let bottom = Plan::from_ranges(&[(0, 2)], 30, MergeOp::KeepLast).unwrap();
        assert_eq!(bottom.removed_text(), "0-1");
    }
}
