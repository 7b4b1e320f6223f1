//! Module-wise similarity, reduced on the device: per sample and per
//! original layer, cosine similarities of module outputs; one small matrix comes back.

use burn::tensor::Tensor;

use super::reference::{Chunk, MaskedTaps, ReferenceActs, per_sample_sum};
use crate::collapse::Plan;
use crate::error::Result;
use crate::model::llama::{Llama, download};

/// Similarities of one chunk, on the host: per original layer from `first` on, the sum of
/// the attention cosines (4 modules) and of the MLP cosines (3 modules) per sample, and
/// the final hidden-state cosine per sample.
#[derive(Debug, Clone)]
pub struct ChunkSimilarity {
    pub first: usize,
    /// `[layer - first][sample]`
    pub attention: Vec<Vec<f32>>,
    pub ffn: Vec<Vec<f32>>,
    pub hidden: Vec<f32>,
}

fn cosine(a: &Tensor<3>, a_sq: &Tensor<1>, c: &Tensor<3>, c_sq: &Tensor<1>) -> Tensor<1> {
    per_sample_sum(a.clone() * c.clone()) / (a_sq.clone() * c_sq.clone()).sqrt()
}

/// Run the compressed model from original layer `first` (untouched before it, so its
/// input is the reference's hidden state there) and compare with the reference.
pub fn chunk_similarity(compressed: &Llama, plan: &Plan, reference: &ReferenceActs, chunk: &Chunk) -> Result<ChunkSimilarity> {
    let first = plan.first_changed_layer();
    let layers = plan.num_layers;
    let b = chunk.batch();
    let mut rows: Vec<Tensor<1>> = Vec::with_capacity(2 * (layers - first) + 1);
    let hidden_cos;
    if first >= layers {
        // nothing changed: identical by construction
        hidden_cos = Tensor::<1>::ones([b], &compressed.device);
    } else {
        let mut state = compressed.state(chunk.seq());
        let mut taps = Vec::with_capacity(compressed.num_layers() - first);
        let h = compressed.run_layers(
            reference.hidden_in(first)?,
            first..compressed.num_layers(),
            &mut state,
            None,
            Some(&mut taps),
        );
        let fin = compressed.final_norm(h) * chunk.mask.clone();
        let fin_sq = per_sample_sum(fin.clone().square());
        hidden_cos = cosine(&reference.final_hidden, &reference.final_sq, &fin, &fin_sq);
        let masked: Vec<MaskedTaps> = taps.iter().map(|t| MaskedTaps::unmasked(t, &chunk.mask)).collect();
        for j in first..layers {
            let c = &masked[plan.psi[j] - first];
            let r = reference.taps(j)?;
            let cos = |m: usize| cosine(&r.outputs[m], &r.sq_norms[m], &c.outputs[m], &c.sq_norms[m]);
            rows.push(cos(0) + cos(1) + cos(2) + cos(3));
            rows.push(cos(4) + cos(5) + cos(6));
        }
    }
    rows.push(hidden_cos);
    let n = rows.len();
    let all = download(Tensor::stack::<2>(rows, 0))?;
    debug_assert_eq!(all.shape, vec![n, b]);
    let row = |i: usize| all.data[i * b..(i + 1) * b].to_vec();
    let per_layer = layers - first;
    Ok(ChunkSimilarity {
        first,
        attention: (0..per_layer).map(|i| row(2 * i)).collect(),
        ffn: (0..per_layer).map(|i| row(2 * i + 1)).collect(),
        hidden: row(n - 1),
    })
}
