//! Perplexity over non-overlapping windows, each scored independently with no BOS:
//! exp of the mean negative log-likelihood of every token after a window's first.
//! Reductions run on the device; one scalar per window comes back.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::llama::Llama;

/// Positions sent through the LM head at once (bounds the logits buffer).
const HEAD_CHUNK: usize = 128;

#[derive(Debug, Clone, Serialize)]
pub struct PerplexityReport {
    pub perplexity: f64,
    pub windows: usize,
    pub tokens_scored: usize,
    pub window: usize,
    /// Sum of negative log-likelihoods (nats).
    pub nll: f64,
    pub seconds: f64,
}

/// Summed NLL of `ids[1..]` given the prefix, for one window, on the device.
pub fn window_nll(model: &Llama, ids: &[u32]) -> Result<f64> {
    let n = ids.len();
    if n < 2 {
        return Err(Error::Invalid("a perplexity window needs at least 2 tokens".into()));
    }
    let normed = model.forward(&[ids.to_vec()], None)?;
    head_nll(model, normed, ids)
}

/// Summed NLL of `ids[1..]` from the final-normed hidden states of one window
/// (`[1, ids.len(), hidden]`), through `model`'s LM head in chunks.
pub fn head_nll(model: &Llama, normed: Tensor<3>, ids: &[u32]) -> Result<f64> {
    let n = ids.len();
    if n < 2 {
        return Err(Error::Invalid("a perplexity window needs at least 2 tokens".into()));
    }
    let device = &model.device;
    let mut total: Option<Tensor<1>> = None;
    let mut start = 0;
    while start < n - 1 {
        let len = HEAD_CHUNK.min(n - 1 - start);
        let logits = model.logits(normed.clone().slice_dim(1, start..start + len));
        let lp = log_softmax(logits, 2);
        let targets: Vec<i32> = ids[start + 1..start + 1 + len].iter().map(|&t| t as i32).collect();
        let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [1, len, 1]), device);
        let picked = lp.gather(2, targets).sum();
        total = Some(match total {
            Some(t) => t + picked,
            None => picked,
        });
        start += len;
    }
    let sum: f32 = total
        .map(|t| t.into_scalar::<f32>())
        .ok_or_else(|| Error::Invalid("empty window".into()))?;
    let nll = -(sum as f64);
    if !nll.is_finite() {
        return Err(Error::Numerical("the model produced a non-finite log-likelihood".into()));
    }
    Ok(nll)
}

/// Perplexity of `ids` over full windows of `window` tokens (a shorter tail is not scored).
/// `progress(done, total)` is called before the first window and after each; returning
/// false stops with [`Error::Cancelled`].
pub fn perplexity(
    model: &Llama,
    ids: &[u32],
    window: usize,
    max_windows: Option<usize>,
    mut progress: impl FnMut(usize, usize) -> bool,
) -> Result<PerplexityReport> {
    if window < 2 {
        return Err(Error::setting("window", "must be at least 2"));
    }
    let mut windows = ids.len() / window;
    if let Some(m) = max_windows {
        windows = windows.min(m);
    }
    if windows == 0 {
        return Err(Error::Invalid(format!(
            "the text has {} tokens, fewer than one window of {window}",
            ids.len()
        )));
    }
    let start = std::time::Instant::now();
    let mut nll = 0.0;
    if !progress(0, windows) {
        return Err(Error::Cancelled);
    }
    for w in 0..windows {
        nll += window_nll(model, &ids[w * window..(w + 1) * window])?;
        if !progress(w + 1, windows) {
            return Err(Error::Cancelled);
        }
    }
    let tokens_scored = windows * (window - 1);
    Ok(PerplexityReport {
        perplexity: (nll / tokens_scored as f64).exp(),
        windows,
        tokens_scored,
        window,
        nll,
        seconds: start.elapsed().as_secs_f64(),
    })
}
