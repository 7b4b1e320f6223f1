//! Text generation with a KV cache: greedy by default, seeded temperature sampling.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::llama::{KvCache, Llama, download};
use crate::model::tokenizer::Tokenizer;

/// How to pick tokens.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    pub seed: u64,
    /// Stop at an end-of-sequence token.
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 32,
            temperature: 0.0,
            seed: 0,
            stop_at_eos: true,
        }
    }
}

/// One of the highest logits at a position.
#[derive(Debug, Clone, Serialize)]
pub struct TopLogit {
    pub id: u32,
    pub token: String,
    pub logit: f32,
}

/// The result of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    /// The 10 highest logits at the first generated position.
    pub top_logits: Vec<TopLogit>,
    /// Seconds for the prompt (prefill) and for the generated tokens.
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

/// Indices of the `k` largest values, largest first (ties: lower id first).
pub fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let k = k.min(idx.len());
    let cmp = |a: &u32, b: &u32| {
        values[*b as usize]
            .total_cmp(&values[*a as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, values[i as usize])).collect()
}

fn pick(logits: &[f32], temperature: f32, rng: &mut StdRng) -> Result<u32> {
    if logits.iter().any(|v| v.is_nan()) {
        return Err(Error::Numerical("the model produced NaN logits".into()));
    }
    if temperature <= 0.0 {
        return Ok(top_k(logits, 1)[0].0);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| (((l - max) / temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        r -= w;
        if r <= 0.0 {
            return Ok(i as u32);
        }
    }
    Ok((weights.len() - 1) as u32)
}

/// Generate from `prompt_ids`; `on_token` sees each new id as it comes.
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    if prompt_ids.is_empty() {
        return Err(Error::Invalid("the prompt is empty after tokenisation".into()));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = KvCache::new(model.num_layers());
    let mut state = model.state(prompt_ids.len() + opts.max_new_tokens + 1);
    let mut generated = Vec::new();
    let mut top_logits = Vec::new();
    let start = std::time::Instant::now();
    let mut input = prompt_ids.to_vec();
    let mut prefill_seconds = 0.0;
    for step in 0..opts.max_new_tokens {
        let ids = model.ids_tensor(&[input.clone()])?;
        let h = model.embed(ids);
        let h = model.run_layers(h, 0..model.num_layers(), &mut state, Some(&mut cache), None);
        let s = h.dims()[1];
        let last = model.final_norm(h.slice_dim(1, s - 1..s));
        let logits = download(model.logits(last))?.data;
        if step == 0 {
            prefill_seconds = start.elapsed().as_secs_f64();
            top_logits = top_k(&logits, 10)
                .into_iter()
                .map(|(id, logit)| TopLogit {
                    id,
                    token: tokenizer.token(id),
                    logit,
                })
                .collect();
        }
        let next = pick(&logits, opts.temperature, &mut rng)?;
        generated.push(next);
        on_token(next);
        if opts.stop_at_eos && tokenizer.is_eos(next) {
            break;
        }
        input = vec![next];
    }
    let text = tokenizer.decode(&generated)?;
    Ok(Generation {
        prompt_ids: prompt_ids.to_vec(),
        generated_ids: generated,
        text,
        top_logits,
        prefill_seconds,
        decode_seconds: start.elapsed().as_secs_f64() - prefill_seconds,
    })
}

/// Continue `prompts` (all of one length) by `new_tokens` tokens each, in one batch with a
/// KV cache; returns the new tokens of each row. Temperature 0 is greedy.
pub fn sample_batch(model: &Llama, prompts: &[Vec<u32>], new_tokens: usize, temperature: f32, seed: u64) -> Result<Vec<Vec<u32>>> {
    let b = prompts.len();
    if b == 0 {
        return Ok(Vec::new());
    }
    let len = prompts[0].len();
    if len == 0 || prompts.iter().any(|p| p.len() != len) {
        return Err(Error::Invalid("batched generation needs non-empty prompts of one length".into()));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cache = KvCache::new(model.num_layers());
    let mut state = model.state(len + new_tokens + 1);
    let mut out = vec![Vec::with_capacity(new_tokens); b];
    let mut input = prompts.to_vec();
    let vocab = model.config.vocab_size;
    for _ in 0..new_tokens {
        let ids = model.ids_tensor(&input)?;
        let h = model.run_layers(model.embed(ids), 0..model.num_layers(), &mut state, Some(&mut cache), None);
        let s = h.dims()[1];
        let logits = download(model.logits(model.final_norm(h.slice_dim(1, s - 1..s))))?.data;
        input = Vec::with_capacity(b);
        for (row, o) in logits.chunks_exact(vocab).zip(out.iter_mut()) {
            let next = pick(row, temperature, &mut rng)?;
            o.push(next);
            input.push(vec![next]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_id() {
        let v = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(top_k(&v, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(top_k(&v, 10).len(), 5);
    }

    #[test]
    fn sampling_is_seeded() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.1).sin()).collect();
        let a: Vec<u32> = {
            let mut r = StdRng::seed_from_u64(7);
            (0..20).map(|_| pick(&logits, 1.0, &mut r).unwrap()).collect()
        };
        let b: Vec<u32> = {
            let mut r = StdRng::seed_from_u64(7);
            (0..20).map(|_| pick(&logits, 1.0, &mut r).unwrap()).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&x| x != a[0]));
    }

    #[test]
    fn nan_logits_are_an_error() {
        let mut r = StdRng::seed_from_u64(0);
        assert!(pick(&[0.0, f32::NAN], 0.0, &mut r).is_err());
    }
}
