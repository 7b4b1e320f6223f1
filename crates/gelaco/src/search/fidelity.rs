//! Multi-fidelity selection (EvoPress's multi-step selection, generalised): a generation's
//! offspring are first scored on a few calibration tokens; only the most promising share
//! goes on to more tokens, and only scores on the full calibration set enter survival and
//! the front.
//!
//! A schedule is written `TOKENS:KEEP,...,full:1` (or with the last step's tokens at least
//! the calibration's): each step scores the candidates left on that many tokens (whole
//! calibration chunks, the longest samples first) and keeps the share `KEEP` of them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One step of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FidelityStep {
    /// Calibration tokens of the step (`None`: all of them).
    pub tokens: Option<usize>,
    /// Share of the step's candidates that go on to the next step.
    pub keep: f64,
}

/// A checked schedule: tokens increasing, the last step the full set with keep 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    pub steps: Vec<FidelityStep>,
}

impl Fidelity {
    /// Parse `TOKENS:KEEP,...` (`full` for every token); `calibration_tokens` is the size of
    /// the full set, which the last step must reach.
    pub fn parse(text: &str, calibration_tokens: usize) -> Result<Self> {
        let bad = |why: &str| Error::setting("fidelity", format!("'{text}' {why} (e.g. 256:0.25,full:1)"));
        let mut steps = Vec::new();
        let parts: Vec<&str> = text.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let (t, k) = part.split_once(':').ok_or_else(|| bad("is not TOKENS:KEEP,..."))?;
            let tokens = match t.trim() {
                "full" | "all" => None,
                n => {
                    let n: usize = n.parse().map_err(|_| bad("has a token count that is not a number"))?;
                    if n == 0 {
                        return Err(bad("has a step of 0 tokens"));
                    }
                    (n < calibration_tokens).then_some(n)
                }
            };
            let keep: f64 = k.trim().parse().map_err(|_| bad("has a share that is not a number"))?;
            if !(keep > 0.0 && keep <= 1.0) {
                return Err(bad("has a share outside (0, 1]"));
            }
            // a screening step as large as the calibration set screens nothing: left out
            if tokens.is_none() && i + 1 < parts.len() && t.trim().parse::<usize>().is_ok() {
                continue;
            }
            steps.push(FidelityStep { tokens, keep });
        }
        Fidelity::new(steps).map_err(|e| match e {
            Error::Setting { message, .. } => bad(&message),
            other => other,
        })
    }

    /// Check a schedule.
    pub fn new(steps: Vec<FidelityStep>) -> Result<Self> {
        let why = |m: &str| Err(Error::setting("fidelity", m));
        let Some(last) = steps.last() else { return why("has no step") };
        if last.tokens.is_some() {
            return why("does not end at the full calibration set");
        }
        if last.keep != 1.0 {
            return why("must keep every candidate of its last, full step");
        }
        let mut previous = 0usize;
        for s in &steps[..steps.len() - 1] {
            match s.tokens {
                Some(t) if t > previous => previous = t,
                _ => return why("is not increasing"),
            }
        }
        Ok(Fidelity { steps })
    }

    /// The steps before the full one, with their token counts.
    pub fn screening_steps(&self) -> impl Iterator<Item = ScreeningStep> + '_ {
        self.steps.iter().filter_map(|s| s.tokens.map(|tokens| ScreeningStep { tokens, keep: s.keep }))
    }

    /// The schedule as it is written.
    pub fn text(&self) -> String {
        self.steps
            .iter()
            .map(|s| match s.tokens {
                Some(t) => format!("{t}:{}", s.keep),
                None => format!("full:{}", s.keep),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A cheap step of a schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScreeningStep {
    pub tokens: usize,
    pub keep: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_bad_ones_are_refused() {
        let f = Fidelity::parse("256:0.25,1024:1", 1024).unwrap();
        assert_eq!(f.steps, vec![FidelityStep { tokens: Some(256), keep: 0.25 }, FidelityStep { tokens: None, keep: 1.0 }]);
        assert_eq!(f.text(), "256:0.25,full:1");
        assert_eq!(Fidelity::parse("full:1", 8192).unwrap().screening_steps().count(), 0);
        // a calibration set smaller than a screening step: every offspring on the full set
        assert_eq!(Fidelity::parse("512:0.25,full:1", 300).unwrap().steps, vec![FidelityStep { tokens: None, keep: 1.0 }]);
        for (text, why) in [
            ("1024:0.5,256:0.5,full:1", "not increasing"),
            ("256:0.25,1024:0.5", "full calibration set"),
            ("256:0.25", "full calibration set"),
            ("256:0.25,full:0.5", "last, full step"),
            ("256:1.5,full:1", "outside"),
            ("0:0.5,full:1", "0 tokens"),
            ("abc", "TOKENS:KEEP"),
            ("", "no step"),
        ] {
            let e = Fidelity::parse(text, 8192).unwrap_err();
            assert!(matches!(e, Error::Setting { setting: "fidelity", .. }) && e.to_string().contains(why), "{text}: {e}");
        }
    }
}
