//! A decoder layer: its parameters, its attention block (RMSNorm'd input, grouped-query
//! attention with RoPE and an optional KV cache) and its SwiGLU MLP, each with its own
//! forward, and the module outputs ("taps") the fitness reads.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{FloatDType, Tensor};

use super::config::ModelConfig;
use super::llama::download;
pub use super::stored::Weight;
use crate::backend::Precision;
use super::weights::{HostTensor, LAYER_TENSORS, LayerParam, LayerTensor};
use crate::error::{Error, Result};

/// A linear projection: weight `[in, out]` (on the device, or as the model file stores it),
/// optional bias `[out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    /// The weight transposed, `[in, out]`, on the device.
    pub fn weight_t(&self) -> Tensor<2> {
        self.weight.dense_t()
    }

    /// `x`: `[batch, seq, in]` -> `[batch, seq, out]`, the product in `precision` where the
    /// weight allows it (see [`Weight::product_in`]); f32 in and out.
    pub fn forward(&self, x: Tensor<3>, precision: Precision) -> Tensor<3> {
        let [b, s, i] = x.dims();
        let out = self.weight.dims()[1];
        let y = self.weight.product_in(x.reshape([b * s, i]), precision);
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze_dim::<2>(0),
            None => y,
        };
        y.reshape([b, s, out])
    }
}

/// `t` as an f16 operand of a product, each slice along `dim` divided by its largest
/// magnitude, and those magnitudes (f32, `dim` of length 1) to multiply the product by in
/// f32: operands then lie within [-1, 1] and a product over `k` terms within `k` times its
/// other operand's largest magnitude, where f16 (largest value 65504) holds activations of
/// any size.
pub(crate) fn f16_scaled<const D: usize>(t: Tensor<D>, dim: usize) -> (Tensor<D>, Tensor<D>) {
    let scale = t.clone().abs().max_dim(dim).clamp_min(f32::MIN_POSITIVE);
    ((t / scale.clone()).cast(FloatDType::F16), scale)
}

/// `x @ w` for `x` `[m, k]` (f32) in `precision`: with f16, `x`'s rows scaled as
/// [`f16_scaled`] does and `w` (f32, f16 or burn's quantised tensor) cast to f16 where it is
/// a float tensor; f32 out.
pub(crate) fn product_in(x: Tensor<2>, w: Tensor<2>, precision: Precision) -> Tensor<2> {
    match precision {
        Precision::F32 => x.matmul(w),
        Precision::F16 => {
            let (x, scale) = f16_scaled(x, 1);
            let w = if matches!(w.dtype(), burn::tensor::DType::QFloat(_)) { w } else { w.cast(FloatDType::F16) };
            x.matmul(w).cast(FloatDType::F32) * scale
        }
    }
}

/// A layer's self-attention: q/k/v/o projections and, for Qwen3, RMSNorms of q and k.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<Tensor<1>>,
    pub k_norm: Option<Tensor<1>>,
}

/// A layer's SwiGLU MLP.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// One decoder layer: RMSNorm, attention, residual; RMSNorm, MLP, residual.
#[derive(Clone, Debug)]
pub struct Layer {
    pub input_norm: Tensor<1>,
    pub attention: Attention,
    pub post_attn_norm: Tensor<1>,
    pub mlp: Mlp,
}

/// The outputs of a layer's attention block: the q/k/v projections (before RoPE) and the
/// output projection, what the block adds to the residual stream.
pub struct AttentionOut {
    pub q: Tensor<3>,
    pub k: Tensor<3>,
    pub v: Tensor<3>,
    pub o: Tensor<3>,
}

/// The outputs of a layer's MLP: gate and up projections, and the down projection that the
/// block adds to the residual stream.
pub struct MlpOut {
    pub gate: Tensor<3>,
    pub up: Tensor<3>,
    pub down: Tensor<3>,
}

impl Attention {
    /// Grouped-query self-attention with RoPE on the normed input `xn` `[batch, seq,
    /// hidden]`; with a cache, the keys and values of earlier positions are prepended and
    /// the cache extended.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        c: &ModelConfig,
        precision: Precision,
        xn: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: Option<&Tensor<4>>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> AttentionOut {
        let [b, s, _] = xn.dims();
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let q_out = self.q.forward(xn.clone(), precision);
        let k_out = self.k.forward(xn.clone(), precision);
        let v_out = self.v.forward(xn, precision);

        let mut q = q_out.clone().reshape([b, s, nh, hd]).swap_dims(1, 2);
        let mut k = k_out.clone().reshape([b, s, nkv, hd]).swap_dims(1, 2);
        let mut v = v_out.clone().reshape([b, s, nkv, hd]).swap_dims(1, 2);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = rms_norm4(q, qn, c.rms_norm_eps);
            k = rms_norm4(k, kn, c.rms_norm_eps);
        }
        q = apply_rope(q, cos, sin);
        k = apply_rope(k, cos, sin);
        if let Some(entry) = cache {
            if let Some((pk, pv)) = entry.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *entry = Some((k.clone(), v.clone()));
        }
        let t = k.dims()[2];
        let rep = nh / nkv;
        if rep > 1 {
            k = k.unsqueeze_dim::<5>(2).repeat_dim(2, rep).reshape([b, nh, t, hd]);
            v = v.unsqueeze_dim::<5>(2).repeat_dim(2, rep).reshape([b, nh, t, hd]);
        }
        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores = match precision {
            Precision::F32 => q.matmul(k.swap_dims(2, 3)).mul_scalar(scale),
            Precision::F16 => {
                // each query's and each key's row scaled into f16's range, the scales applied after
                let (q, sq) = f16_scaled(q, 3);
                let (k, sk) = f16_scaled(k, 3);
                (q.matmul(k.swap_dims(2, 3)).cast(FloatDType::F32) * sq * sk.swap_dims(2, 3)).mul_scalar(scale)
            }
        };
        if let Some(m) = mask {
            scores = scores + m.clone();
        }
        let weights = softmax(scores, 3);
        let attn = match precision {
            Precision::F32 => weights.matmul(v),
            Precision::F16 => {
                // the weights lie in [0, 1]; each feature of the values scaled over the positions
                let (v, sv) = f16_scaled(v, 2);
                weights.cast(FloatDType::F16).matmul(v).cast(FloatDType::F32) * sv
            }
        };
        let attn = attn.swap_dims(1, 2).reshape([b, s, nh * hd]);
        AttentionOut { q: q_out, k: k_out, v: v_out, o: self.o.forward(attn, precision) }
    }
}

impl Mlp {
    /// SwiGLU on the normed input `xn` `[batch, seq, hidden]`.
    pub fn forward(&self, xn: Tensor<3>, precision: Precision) -> MlpOut {
        let gate = self.gate.forward(xn.clone(), precision);
        let up = self.up.forward(xn, precision);
        let down = self.down.forward(silu(gate.clone()) * up.clone(), precision);
        MlpOut { gate, up, down }
    }
}

impl Layer {
    /// The layer on the residual stream `x` `[batch, seq, hidden]`, its matrix products in
    /// `precision`, with the module outputs when `want_taps`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        c: &ModelConfig,
        precision: Precision,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: Option<&Tensor<4>>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
        want_taps: bool,
    ) -> (Tensor<3>, Option<LayerTaps>) {
        let attention = self.attention.forward(c, precision, rms_norm(x.clone(), &self.input_norm, c.rms_norm_eps), cos, sin, mask, cache);
        let x = x + attention.o.clone();
        let mlp = self.mlp.forward(rms_norm(x.clone(), &self.post_attn_norm, c.rms_norm_eps), precision);
        let out = x + mlp.down.clone();
        let taps = want_taps.then(|| LayerTaps {
            q: attention.q,
            k: attention.k,
            v: attention.v,
            o: attention.o,
            gate: mlp.gate,
            up: mlp.up,
            down: mlp.down,
        });
        (out, taps)
    }

    /// One parameter's device tensor (a shared handle); `None` where this layer has no such
    /// parameter (biases, q/k norms).
    pub fn tensor(&self, param: LayerParam) -> Option<ParamTensor> {
        if let Some(l) = self.linear(param) {
            return Some(ParamTensor::Matrix(l.weight_t()));
        }
        let a = &self.attention;
        let optional = |t: &Option<Tensor<1>>| t.clone().map(ParamTensor::Vector);
        match param {
            LayerParam::InputNorm => Some(ParamTensor::Vector(self.input_norm.clone())),
            LayerParam::PostAttnNorm => Some(ParamTensor::Vector(self.post_attn_norm.clone())),
            LayerParam::QBias => optional(&a.q.bias),
            LayerParam::KBias => optional(&a.k.bias),
            LayerParam::VBias => optional(&a.v.bias),
            LayerParam::QNorm => optional(&a.q_norm),
            LayerParam::KNorm => optional(&a.k_norm),
            LayerParam::Q | LayerParam::K | LayerParam::V | LayerParam::O | LayerParam::Gate | LayerParam::Up | LayerParam::Down => None,
        }
    }

    /// One parameter downloaded to the host, in Hugging Face layout; `None` where this
    /// layer has no such parameter (biases, q/k norms).
    pub fn param(&self, param: LayerParam) -> Result<Option<HostTensor>> {
        if let Some(l) = self.linear(param) {
            return l.weight.host().map(Some);
        }
        self.tensor(param)
            .map(|t| match t {
                ParamTensor::Vector(v) => download(v),
                ParamTensor::Matrix(w) => download(w.transpose()),
                ParamTensor::Stored(w) => w.host(),
            })
            .transpose()
    }

    /// The projection a matrix parameter belongs to.
    fn linear(&self, param: LayerParam) -> Option<&Linear> {
        let (a, m) = (&self.attention, &self.mlp);
        Some(match param {
            LayerParam::Q => &a.q,
            LayerParam::K => &a.k,
            LayerParam::V => &a.v,
            LayerParam::O => &a.o,
            LayerParam::Gate => &m.gate,
            LayerParam::Up => &m.up,
            LayerParam::Down => &m.down,
            _ => return None,
        })
    }

    /// A layer made from its parameters, asked for in [`LAYER_TENSORS`] order: `make`
    /// returns each one's device tensor, or `None` where the model has no such parameter.
    /// A missing weight or norm, or a vector where a matrix belongs, is an error naming it.
    pub fn from_params(mut make: impl FnMut(&'static LayerTensor) -> Result<Option<ParamTensor>>) -> Result<Layer> {
        let mut p = Params(Vec::with_capacity(LAYER_TENSORS.len()));
        for t in LAYER_TENSORS {
            p.0.push((t.param, make(t)?));
        }
        use LayerParam as P;
        Ok(Layer {
            input_norm: p.required_vector(P::InputNorm)?,
            attention: Attention {
                q: p.linear(P::Q, Some(P::QBias))?,
                k: p.linear(P::K, Some(P::KBias))?,
                v: p.linear(P::V, Some(P::VBias))?,
                o: p.linear(P::O, None)?,
                q_norm: p.vector(P::QNorm)?,
                k_norm: p.vector(P::KNorm)?,
            },
            post_attn_norm: p.required_vector(P::PostAttnNorm)?,
            mlp: Mlp { gate: p.linear(P::Gate, None)?, up: p.linear(P::Up, None)?, down: p.linear(P::Down, None)? },
        })
    }

    /// A layer of the same structure whose every parameter is mapped: `vector` for norms
    /// and biases, `matrix` for the projections' weights (to device tensors, transposed
    /// `[in, out]`, kept as [`Weight::made`] keeps them).
    pub fn map(
        &self,
        mut vector: impl FnMut(LayerParam, &Tensor<1>) -> Tensor<1>,
        mut matrix: impl FnMut(LayerParam, &Weight) -> Tensor<2>,
    ) -> Layer {
        use LayerParam as P;
        let (a, m) = (&self.attention, &self.mlp);
        let input_norm = vector(P::InputNorm, &self.input_norm);
        let post_attn_norm = vector(P::PostAttnNorm, &self.post_attn_norm);
        let q_norm = a.q_norm.as_ref().map(|t| vector(P::QNorm, t));
        let k_norm = a.k_norm.as_ref().map(|t| vector(P::KNorm, t));
        let mut linear = |w: LayerParam, bias: Option<LayerParam>, l: &Linear| Linear {
            weight: Weight::made(matrix(w, &l.weight), &l.weight),
            bias: bias.and_then(|b| l.bias.as_ref().map(|t| vector(b, t))),
        };
        Layer {
            input_norm,
            attention: Attention {
                q: linear(P::Q, Some(P::QBias), &a.q),
                k: linear(P::K, Some(P::KBias), &a.k),
                v: linear(P::V, Some(P::VBias), &a.v),
                o: linear(P::O, None, &a.o),
                q_norm,
                k_norm,
            },
            post_attn_norm,
            mlp: Mlp { gate: linear(P::Gate, None, &m.gate), up: linear(P::Up, None, &m.up), down: linear(P::Down, None, &m.down) },
        }
    }
}

/// A layer parameter on the device: a vector (a norm or a bias) or a projection's weight,
/// stored transposed `[in, out]`; [`Layer::from_params`] also takes a weight as the model
/// file stores it.
#[derive(Clone, Debug)]
pub enum ParamTensor {
    Vector(Tensor<1>),
    Matrix(Tensor<2>),
    Stored(Weight),
}

/// The parameters given to [`Layer::from_params`], taken out one by one.
struct Params(Vec<(LayerParam, Option<ParamTensor>)>);

impl Params {
    fn take(&mut self, param: LayerParam) -> Option<ParamTensor> {
        self.0.iter_mut().find(|(p, _)| *p == param).and_then(|(_, t)| t.take())
    }

    fn vector(&mut self, param: LayerParam) -> Result<Option<Tensor<1>>> {
        match self.take(param) {
            None => Ok(None),
            Some(ParamTensor::Vector(t)) => Ok(Some(t)),
            Some(ParamTensor::Matrix(_) | ParamTensor::Stored(_)) => {
                Err(Error::Invalid(format!("layer parameter {param:?} is a matrix where a vector belongs")))
            }
        }
    }

    fn required_vector(&mut self, param: LayerParam) -> Result<Tensor<1>> {
        self.vector(param)?.ok_or_else(|| missing(param))
    }

    fn linear(&mut self, weight: LayerParam, bias: Option<LayerParam>) -> Result<Linear> {
        let weight_t = match self.take(weight) {
            Some(ParamTensor::Matrix(t)) => Weight::Dense(t),
            Some(ParamTensor::Stored(w)) => w,
            Some(ParamTensor::Vector(_)) => return Err(Error::Invalid(format!("layer parameter {weight:?} is a vector where a matrix belongs"))),
            None => return Err(missing(weight)),
        };
        let bias = match bias {
            Some(b) => self.vector(b)?,
            None => None,
        };
        Ok(Linear { weight: weight_t, bias })
    }
}

fn missing(param: LayerParam) -> Error {
    Error::Invalid(format!("layer parameter {param:?} is missing"))
}

/// The module outputs of one layer, each `[batch, seq, features]`.
#[derive(Clone, Debug)]
pub struct LayerTaps {
    /// Query projection, before RoPE.
    pub q: Tensor<3>,
    /// Key projection, before RoPE.
    pub k: Tensor<3>,
    pub v: Tensor<3>,
    pub o: Tensor<3>,
    pub gate: Tensor<3>,
    pub up: Tensor<3>,
    pub down: Tensor<3>,
}

impl LayerTaps {
    pub const NAMES: [&'static str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// The taps in [`LayerTaps::NAMES`] order.
    pub fn all(&self) -> [&Tensor<3>; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }
}

pub(crate) fn rms_norm(x: Tensor<3>, weight: &Tensor<1>, eps: f64) -> Tensor<3> {
    let var = x.clone().square().mean_dim(2);
    let x = x * var.add_scalar(eps).sqrt().recip();
    x * weight.clone().unsqueeze_dims::<3>(&[0, 1])
}

fn rms_norm4(x: Tensor<4>, weight: &Tensor<1>, eps: f64) -> Tensor<4> {
    let var = x.clone().square().mean_dim(3);
    let x = x * var.add_scalar(eps).sqrt().recip();
    x * weight.clone().unsqueeze_dims::<4>(&[0, 1, 2])
}

/// `x`: `[b, heads, s, d]`; rotate pairs (i, i + d/2) as transformers' `rotate_half`.
fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().slice_dim(3, 0..d / 2);
    let x2 = x.clone().slice_dim(3, d / 2..d);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}
