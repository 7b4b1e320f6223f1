//! Variation operators: simulated binary crossover and polynomial mutation (Deb), in the
//! bounded form pymoo uses, adapted to integers by widening the bounds by half a unit and
//! rounding the result.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Per-variable bounds and whether the variable is an integer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    pub integer: bool,
}

impl Bounds {
    pub fn len(&self) -> usize {
        self.lower.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lower.is_empty()
    }

    /// The range operators work in: integers get half a unit either side so that every
    /// value has an equal share after rounding.
    fn span(&self, i: usize) -> (f64, f64) {
        if self.integer { (self.lower[i] - 0.5 + 1e-9, self.upper[i] + 0.5 - 1e-9) } else { (self.lower[i], self.upper[i]) }
    }

    /// Round (integers) and clamp.
    pub fn repair(&self, x: &mut [f64]) {
        for (i, v) in x.iter_mut().enumerate() {
            if self.integer {
                *v = v.round();
            }
            *v = v.clamp(self.lower[i], self.upper[i]);
        }
    }

    /// A uniform random point.
    pub fn sample(&self, rng: &mut impl Rng) -> Vec<f64> {
        let mut x: Vec<f64> = (0..self.len())
            .map(|i| {
                let (lo, hi) = self.span(i);
                lo + rng.random::<f64>() * (hi - lo)
            })
            .collect();
        self.repair(&mut x);
        x
    }
}

/// Simulated binary crossover.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sbx {
    /// Probability that a pair is crossed at all.
    pub probability: f64,
    /// Distribution index.
    pub eta: f64,
    /// Probability that a variable of a crossed pair is recombined.
    pub variable_probability: f64,
}

impl Default for Sbx {
    fn default() -> Self {
        Sbx { probability: 0.9, eta: 20.0, variable_probability: 0.5 }
    }
}

impl Sbx {
    pub fn cross(&self, a: &[f64], b: &[f64], bounds: &Bounds, rng: &mut impl Rng) -> (Vec<f64>, Vec<f64>) {
        let (mut c1, mut c2) = (a.to_vec(), b.to_vec());
        if rng.random::<f64>() < self.probability {
            for i in 0..a.len() {
                if rng.random::<f64>() >= self.variable_probability || (a[i] - b[i]).abs() <= 1e-14 {
                    continue;
                }
                let (xl, xu) = bounds.span(i);
                let (y1, y2) = if a[i] < b[i] { (a[i], b[i]) } else { (b[i], a[i]) };
                let u = rng.random::<f64>();
                let betaq = |beta: f64| {
                    let alpha = 2.0 - beta.powf(-(self.eta + 1.0));
                    if u <= 1.0 / alpha {
                        (u * alpha).powf(1.0 / (self.eta + 1.0))
                    } else {
                        (1.0 / (2.0 - u * alpha)).powf(1.0 / (self.eta + 1.0))
                    }
                };
                let d = y2 - y1;
                let lo = 0.5 * ((y1 + y2) - betaq(1.0 + 2.0 * (y1 - xl) / d) * d);
                let hi = 0.5 * ((y1 + y2) + betaq(1.0 + 2.0 * (xu - y2) / d) * d);
                let (lo, hi) = (lo.clamp(xl, xu), hi.clamp(xl, xu));
                if rng.random::<f64>() < 0.5 {
                    c1[i] = hi;
                    c2[i] = lo;
                } else {
                    c1[i] = lo;
                    c2[i] = hi;
                }
            }
        }
        bounds.repair(&mut c1);
        bounds.repair(&mut c2);
        (c1, c2)
    }
}

/// Polynomial mutation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolynomialMutation {
    /// Probability per variable; `None` means 1 / number of variables.
    pub probability: Option<f64>,
    pub eta: f64,
}

impl Default for PolynomialMutation {
    fn default() -> Self {
        PolynomialMutation { probability: None, eta: 20.0 }
    }
}

impl PolynomialMutation {
    pub fn mutate(&self, x: &mut [f64], bounds: &Bounds, rng: &mut impl Rng) {
        let p = self.probability.unwrap_or(1.0 / x.len().max(1) as f64);
        for i in 0..x.len() {
            if rng.random::<f64>() >= p {
                continue;
            }
            let (xl, xu) = bounds.span(i);
            if xu <= xl {
                continue;
            }
            let v = x[i].clamp(xl, xu);
            let d1 = (v - xl) / (xu - xl);
            let d2 = (xu - v) / (xu - xl);
            let pow = 1.0 / (self.eta + 1.0);
            let r = rng.random::<f64>();
            let dq = if r < 0.5 {
                let val = 2.0 * r + (1.0 - 2.0 * r) * (1.0 - d1).powf(self.eta + 1.0);
                val.powf(pow) - 1.0
            } else {
                let val = 2.0 * (1.0 - r) + 2.0 * (r - 0.5) * (1.0 - d2).powf(self.eta + 1.0);
                1.0 - val.powf(pow)
            };
            x[i] = (v + dq * (xu - xl)).clamp(xl, xu);
        }
        bounds.repair(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn real(n: usize) -> Bounds {
        Bounds { lower: vec![0.0; n], upper: vec![1.0; n], integer: false }
    }

    #[test]
    fn sbx_children_stay_in_bounds_and_keep_the_mean() {
        let mut rng = StdRng::seed_from_u64(1);
        let b = real(1);
        let sbx = Sbx { probability: 1.0, variable_probability: 1.0, eta: 20.0 };
        let (mut spread, mut sum, mut n) = (0.0, 0.0, 0);
        for _ in 0..2000 {
            let (c1, c2) = sbx.cross(&[0.3], &[0.6], &b, &mut rng);
            assert!((0.0..=1.0).contains(&c1[0]) && (0.0..=1.0).contains(&c2[0]));
            spread += (c1[0] - c2[0]).abs();
            sum += c1[0] + c2[0];
            n += 1;
        }
        // on average the children centre on the parents' mean
        assert!((sum / n as f64 - 0.9).abs() < 0.01, "{}", sum / n as f64);
        // eta 20 keeps children close to the parents (spread about the parents' distance)
        let mean_spread = spread / n as f64;
        assert!(mean_spread > 0.2 && mean_spread < 0.4, "{mean_spread}");
    }

    #[test]
    fn sbx_respects_probability() {
        let mut rng = StdRng::seed_from_u64(2);
        let sbx = Sbx { probability: 0.0, ..Sbx::default() };
        let (c1, c2) = sbx.cross(&[0.1, 0.2], &[0.9, 0.8], &real(2), &mut rng);
        assert_eq!((c1, c2), (vec![0.1, 0.2], vec![0.9, 0.8]));
    }

    #[test]
    fn integer_operators_give_integers_in_bounds() {
        let mut rng = StdRng::seed_from_u64(3);
        let b = Bounds { lower: vec![0.0; 6], upper: vec![29.0, 29.0, 1.0, 29.0, 29.0, 1.0], integer: true };
        let sbx = Sbx::default();
        let pm = PolynomialMutation { probability: Some(0.5), eta: 20.0 };
        let mut seen_flip = false;
        for _ in 0..2000 {
            let a = b.sample(&mut rng);
            let c = b.sample(&mut rng);
            let (mut x, _) = sbx.cross(&a, &c, &b, &mut rng);
            let before = x.clone();
            pm.mutate(&mut x, &b, &mut rng);
            for (i, v) in x.iter().enumerate() {
                assert_eq!(v.fract(), 0.0);
                assert!(*v >= b.lower[i] && *v <= b.upper[i]);
            }
            seen_flip |= before[2] != x[2];
        }
        assert!(seen_flip, "mutation never changed a flag");
    }

    #[test]
    fn mutation_is_local_with_a_high_index() {
        let mut rng = StdRng::seed_from_u64(4);
        let pm = PolynomialMutation { probability: Some(1.0), eta: 20.0 };
        let mut total = 0.0;
        for _ in 0..1000 {
            let mut x = vec![0.5];
            pm.mutate(&mut x, &real(1), &mut rng);
            total += (x[0] - 0.5).abs();
        }
        let mean = total / 1000.0;
        assert!(mean > 0.01 && mean < 0.05, "{mean}");
    }
}
