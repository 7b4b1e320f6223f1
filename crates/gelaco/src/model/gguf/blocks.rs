//! The GGUF block formats: dequantisation of every type the tool reads (F32, F16, BF16,
//! Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) and ggml's reference quantisers for the
//! types it writes.

use std::io::Write;

use half::{bf16, f16};

use super::GgmlType;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantise `n` elements of type `kind` from `data` to f32.
pub fn dequantize(kind: GgmlType, data: &[u8], n: usize) -> std::result::Result<Vec<f32>, String> {
    let (block, bytes) = kind
        .block_layout()
        .ok_or_else(|| format!("unknown type {}", kind.name()))?;
    if n % block != 0 || data.len() != n / block * bytes {
        return Err(format!(
            "{} bytes do not hold {n} {} elements",
            data.len(),
            kind.name()
        ));
    }
    let mut out = vec![0f32; n];
    match kind {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            for (o, b) in out.chunks_exact_mut(block).zip(data.chunks_exact(bytes)) {
                dequantize_block(kind, b, o)?;
            }
        }
    }
    Ok(out)
}

/// K-quant 6-bit scale and min of sub-block `j` (Q4_K and Q5_K).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as f32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32,
        )
    }
}

fn dequantize_block(kind: GgmlType, b: &[u8], y: &mut [f32]) -> std::result::Result<(), String> {
    match kind {
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for (i, o) in y.iter_mut().enumerate() {
                *o = (b[2 + i] as i8) as f32 * d;
            }
        }
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qs = &b[4..20];
            for j in 0..16 {
                y[j] = (qs[j] & 0xF) as f32 * d + m;
                y[j + 16] = (qs[j] >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = (((qs[j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
                y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
            }
        }
        GgmlType::Q5_1 => {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = ((qs[j] & 0xF) as u32 | h0) as f32 * d + m;
                y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
            }
        }
        GgmlType::Q4K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qs = &b[16..144];
            for (chunk, n) in (0..256).step_by(64).enumerate() {
                let is = chunk * 2;
                let (sc1, m1) = scale_min_k4(is, scales);
                let (sc2, m2) = scale_min_k4(is + 1, scales);
                let (d1, m1) = (d * sc1, dmin * m1);
                let (d2, m2) = (d * sc2, dmin * m2);
                let q = &qs[chunk * 32..chunk * 32 + 32];
                for l in 0..32 {
                    y[n + l] = d1 * (q[l] & 0xF) as f32 - m1;
                    y[n + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
        GgmlType::Q5K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            let (mut u1, mut u2) = (1u8, 2u8);
            for (chunk, n) in (0..256).step_by(64).enumerate() {
                let is = chunk * 2;
                let (sc1, m1) = scale_min_k4(is, scales);
                let (sc2, m2) = scale_min_k4(is + 1, scales);
                let (d1, m1) = (d * sc1, dmin * m1);
                let (d2, m2) = (d * sc2, dmin * m2);
                let ql = &qs[chunk * 32..chunk * 32 + 32];
                for l in 0..32 {
                    let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    y[n + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                    y[n + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
                }
                u1 <<= 2;
                u2 <<= 2;
            }
        }
        GgmlType::Q6K => {
            let ql_all = &b[0..128];
            let qh_all = &b[128..192];
            let sc_all = &b[192..208];
            let d = f16_at(b, 208);
            for half in 0..2 {
                let ql = &ql_all[half * 64..half * 64 + 64];
                let qh = &qh_all[half * 32..half * 32 + 32];
                let sc = &sc_all[half * 8..half * 8 + 8];
                let y = &mut y[half * 128..half * 128 + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
        other => return Err(format!("type {} cannot be dequantised", other.name())),
    }
    Ok(())
}

/// A block-quantised matrix as integer codes and per-group affine parameters: element `i`
/// is `(codes[i] - zero) as f32 * scales[i / group] (+ offsets[i / group])`, computed in
/// that order, which is exactly what [`dequantize`] computes for the same type. This is the
/// form the weights keep on a compute device (codes packed `bits` to a byte or nibble).
#[derive(Debug, Clone, PartialEq)]
pub struct Codes {
    /// Bits each code needs: 4 (Q4_0, Q4_1, Q4_K) or 8 (Q8_0 and the 5- and 6-bit types).
    pub bits: u32,
    /// Elements sharing one scale (and offset).
    pub group: usize,
    /// Subtracted from every code before the scale: 128 for Q8_0 (stored offset binary),
    /// 8 for Q4_0, 16 for Q5_0, 32 for Q6_K, 0 otherwise.
    pub zero: i32,
    /// One code per element, in the matrix's element order.
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    /// Added after the scale (Q4_1, Q5_1: the block minimum; Q4_K, Q5_K: minus the
    /// sub-block minimum); `None` for the symmetric types.
    pub offsets: Option<Vec<f32>>,
}

impl Codes {
    /// The f32 values, as [`dequantize`] gives them.
    pub fn values(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.codes.len());
        for (g, codes) in self.codes.chunks_exact(self.group).enumerate() {
            let s = self.scales[g];
            for &c in codes {
                let v = (c as i32 - self.zero) as f32 * s;
                out.push(match &self.offsets {
                    Some(o) => v + o[g],
                    None => v,
                });
            }
        }
        out
    }
}

/// How a block-quantised type's elements are kept as [`Codes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLayout {
    /// Bits each code needs: 4 or 8.
    pub bits: u32,
    /// Elements sharing one scale (and offset).
    pub group: usize,
    /// Subtracted from every code before the scale.
    pub zero: i32,
    /// Whether an offset is added after the scale.
    pub offsets: bool,
}

/// The codes' layout of a block-quantised type; `None` for the others (F32, F16, BF16).
pub fn code_layout(kind: GgmlType) -> Option<CodeLayout> {
    let (bits, group, zero, offsets) = match kind {
        GgmlType::Q8_0 => (8, 32, 128, false),
        GgmlType::Q4_0 => (4, 32, 8, false),
        GgmlType::Q4_1 => (4, 32, 0, true),
        GgmlType::Q5_0 => (8, 32, 16, false),
        GgmlType::Q5_1 => (8, 32, 0, true),
        GgmlType::Q4K => (4, 32, 0, true),
        GgmlType::Q5K => (8, 32, 0, true),
        GgmlType::Q6K => (8, 16, 32, false),
        _ => return None,
    };
    Some(CodeLayout { bits, group, zero, offsets })
}

/// `n` elements of a block-quantised type as [`Codes`]; `None` for F32, F16 and BF16,
/// which are not block-quantised.
pub fn codes(kind: GgmlType, data: &[u8], n: usize) -> std::result::Result<Option<Codes>, String> {
    let (block, bytes) = kind.block_layout().ok_or_else(|| format!("unknown type {}", kind.name()))?;
    if n % block != 0 || data.len() != n / block * bytes {
        return Err(format!("{} bytes do not hold {n} {} elements", data.len(), kind.name()));
    }
    let Some(CodeLayout { bits, group, zero, offsets }) = code_layout(kind) else {
        return match kind {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Ok(None),
            other => Err(format!("type {} cannot be dequantised", other.name())),
        };
    };
    let mut out = Codes {
        bits,
        group,
        zero,
        codes: Vec::with_capacity(n),
        scales: Vec::with_capacity(n / group),
        offsets: offsets.then(|| Vec::with_capacity(n / group)),
    };
    for b in data.chunks_exact(bytes) {
        let (codes, scales, offsets) = (&mut out.codes, &mut out.scales, &mut out.offsets);
        let mut offset = |v: f32| {
            if let Some(o) = offsets.as_mut() {
                o.push(v);
            }
        };
        match kind {
            GgmlType::Q8_0 => {
                scales.push(f16_at(b, 0));
                codes.extend(b[2..34].iter().map(|&q| q ^ 0x80));
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                scales.push(f16_at(b, 0));
                let qs = if kind == GgmlType::Q4_1 {
                    offset(f16_at(b, 2));
                    &b[4..20]
                } else {
                    &b[2..18]
                };
                codes.extend(qs.iter().map(|q| q & 0xF));
                codes.extend(qs.iter().map(|q| q >> 4));
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                scales.push(f16_at(b, 0));
                let at = if kind == GgmlType::Q5_1 {
                    offset(f16_at(b, 2));
                    4
                } else {
                    2
                };
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let qs = &b[at + 4..at + 20];
                codes.extend((0..16).map(|j| (qs[j] & 0xF) | ((((qh >> j) << 4) & 0x10) as u8)));
                codes.extend((0..16).map(|j| (qs[j] >> 4) | (((qh >> (j + 12)) & 0x10) as u8)));
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let sm = &b[4..16];
                let (qh, qs) = if kind == GgmlType::Q5K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
                for chunk in 0..4 {
                    let q = &qs[chunk * 32..chunk * 32 + 32];
                    for half in 0..2 {
                        let (sc, m) = scale_min_k4(chunk * 2 + half, sm);
                        scales.push(d * sc);
                        offset(-(dmin * m));
                        let bit = 1u8 << (chunk * 2 + half);
                        codes.extend(q.iter().enumerate().map(|(l, &byte)| {
                            let low = if half == 0 { byte & 0xF } else { byte >> 4 };
                            low + qh.map_or(0, |h| if h[l] & bit != 0 { 16 } else { 0 })
                        }));
                    }
                }
            }
            GgmlType::Q6K => {
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let ql = &b[half * 64..half * 64 + 64];
                    let qh = &b[128 + half * 32..128 + half * 32 + 32];
                    let sc = &b[192 + half * 8..192 + half * 8 + 8];
                    // four runs of 32 elements, each two groups of 16 with their own scale
                    for run in 0..4 {
                        for is in 0..2 {
                            scales.push(d * (sc[is + 2 * run] as i8) as f32);
                        }
                        codes.extend((0..32).map(|l| {
                            let low = match run {
                                0 => ql[l] & 0xF,
                                1 => ql[l + 32] & 0xF,
                                2 => ql[l] >> 4,
                                _ => ql[l + 32] >> 4,
                            };
                            low | (((qh[l] >> (2 * run)) & 3) << 4)
                        }));
                    }
                }
            }
            _ => unreachable!("checked above"),
        }
    }
    Ok(Some(out))
}

/// Quantise f32 values to Q8_0 (round to nearest, as ggml's reference quantiser).
pub fn quantize_q8_0(x: &[f32]) -> std::result::Result<Vec<u8>, String> {
    if x.len() % 32 != 0 {
        return Err(format!("{} values are not a whole number of Q8_0 blocks", x.len()));
    }
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        for v in block {
            out.push(((v * id).round() as i32).clamp(-128, 127) as i8 as u8);
        }
    }
    Ok(out)
}

/// Quantise f32 values to `kind` with ggml's reference quantisers. Supported targets:
/// F32, F16, BF16, Q8_0, Q4_0, Q4_1.
pub fn quantize(kind: GgmlType, x: &[f32]) -> std::result::Result<Vec<u8>, String> {
    match kind {
        GgmlType::F32 => Ok(f32_bytes(x)),
        GgmlType::F16 => Ok(x.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()),
        GgmlType::BF16 => Ok(x.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect()),
        GgmlType::Q8_0 => quantize_q8_0(x),
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            if x.len() % 32 != 0 {
                return Err(format!("{} values are not a whole number of {} blocks", x.len(), kind.name()));
            }
            let mut out = Vec::with_capacity(x.len() / 32 * 20);
            for block in x.chunks_exact(32) {
                let (lo, hi) = block.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
                let (scale, min, offset) = if kind == GgmlType::Q4_0 {
                    // the value of largest magnitude, sign kept, maps to -8
                    let max = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    (max / -8.0, 0.0, 8.5)
                } else {
                    ((hi - lo) / 15.0, lo, 0.5)
                };
                let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(scale).to_le_bytes());
                if kind == GgmlType::Q4_1 {
                    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                }
                let q = |v: f32| (((v - min) * id + offset) as i8).clamp(0, 15) as u8;
                for j in 0..16 {
                    out.push(q(block[j]) | (q(block[j + 16]) << 4));
                }
            }
            Ok(out)
        }
        other => Err(format!("quantising to {} is not supported", other.name())),
    }
}

/// Whether [`quantize`] can produce this type.
pub fn can_quantize(kind: GgmlType) -> bool {
    matches!(kind, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1)
}

/// Convenience for writers: f32 values as little-endian bytes.
pub fn f32_bytes(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() * 4);
    for v in x {
        out.write_all(&v.to_le_bytes()).unwrap_or_default();
    }
    out
}

/// `blocks` blocks of `kind` made of pseudo-random bytes (from `seed`), with every f16 scale
/// and minimum replaced by a finite value: a stand-in for real weights in tests and benchmarks.
pub(crate) fn random_blocks(kind: GgmlType, blocks: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut byte = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    };
    let bytes = kind.block_layout().map_or(1, |(_, b)| b);
    let mut data: Vec<u8> = (0..blocks * bytes).map(|_| byte()).collect();
    for b in data.chunks_exact_mut(bytes) {
        let mut finite = |at: usize, size: f32| {
            let x = byte();
            b[at..at + 2].copy_from_slice(&f16::from_f32((x as f32 - 128.0) / 97.0 * size).to_le_bytes())
        };
        match kind {
            // finite 16-bit values: the exponent's top bit cleared (subnormals kept)
            GgmlType::F16 | GgmlType::BF16 => b[1] &= 0xBF,
            GgmlType::F32 => b[3] &= 0xBF,
            // Q6_K's scale multiplies 8-bit sub-scales and 6-bit codes (up to 4,096 together):
            // weights within about 1.3, as a model's are, not thousands
            GgmlType::Q6K => finite(208, 1.0 / 4096.0),
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => finite(0, 1.0),
            _ => {
                finite(0, 1.0);
                finite(2, 1.0);
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn quantisers_roundtrip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 30.0) * 0.013).collect();
        for kind in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
            let q = quantize(kind, &x).unwrap();
            assert_eq!(q.len() as u64, kind.bytes_for(64).unwrap(), "{}", kind.name());
            let y = dequantize(kind, &q, 64).unwrap();
            let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let levels = match kind {
                GgmlType::Q4_0 | GgmlType::Q4_1 => 15.0,
                GgmlType::Q8_0 => 254.0,
                _ => 1000.0,
            };
            let step = (hi - lo) / levels;
            let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 0.5 * step * 1.1 + 1e-3, "{}: error {worst} vs step {step}", kind.name());
        }
        // re-quantising what was dequantised gives the same Q4_1 bytes back
        let q = quantize(GgmlType::Q4_1, &x).unwrap();
        let y = dequantize(GgmlType::Q4_1, &q, 64).unwrap();
        assert_eq!(dequantize(GgmlType::Q4_1, &quantize(GgmlType::Q4_1, &y).unwrap(), 64).unwrap(), y);
    }

    #[test]
    fn q8_0_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(0.5));
        for i in 0..32 {
            b.push((i as i8 - 16) as u8);
        }
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(y[0], -8.0);
        assert_eq!(y[16], 0.0);
        assert_eq!(y[31], 7.5);
    }

    #[test]
    fn q4_0_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(2.0));
        // low nibbles 0..15, high nibbles 15..0
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(y[0], -16.0); // (0 - 8) * 2
        assert_eq!(y[15], 14.0); // (15 - 8) * 2
        assert_eq!(y[16], 14.0); // high nibble of byte 0 = 15
        assert_eq!(y[31], -16.0);
    }

    #[test]
    fn q4_1_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(0.25));
        b.extend_from_slice(&h(-1.0));
        for j in 0..16u8 {
            b.push(j | (3 << 4));
        }
        let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(y[0], -1.0);
        assert_eq!(y[8], 1.0); // 8 * 0.25 - 1
        assert_eq!(y[20], -0.25); // 3 * 0.25 - 1
    }

    #[test]
    fn q5_0_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(1.0));
        // the fifth bit set for element 1 (bit 1) and element 16 (element 16 + j takes bit 16 + j)
        let qh: u32 = (1 << 1) | (1 << 16);
        b.extend_from_slice(&qh.to_le_bytes());
        for _ in 0..16 {
            b.push(0x21); // low nibble 1, high nibble 2
        }
        let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!(y[0], 1.0 - 16.0);
        assert_eq!(y[1], (1 + 16) as f32 - 16.0);
        assert_eq!(y[16], (2 + 16) as f32 - 16.0);
        assert_eq!(y[17], 2.0 - 16.0);
    }

    #[test]
    fn q5_1_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(0.5));
        b.extend_from_slice(&h(10.0));
        let qh: u32 = 1 << 31; // element 31 gets the high bit
        b.extend_from_slice(&qh.to_le_bytes());
        for _ in 0..16 {
            b.push(0xF0);
        }
        let y = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
        assert_eq!(y[0], 10.0);
        assert_eq!(y[16], 15.0 * 0.5 + 10.0);
        assert_eq!(y[31], 31.0 * 0.5 + 10.0);
    }

    #[test]
    fn f16_bf16_f32() {
        let y = dequantize(GgmlType::F16, &[0x00, 0x3c, 0x00, 0xc0], 2).unwrap();
        assert_eq!(y, vec![1.0, -2.0]);
        let y = dequantize(GgmlType::BF16, &[0x80, 0x3f, 0x40, 0x40], 2).unwrap();
        assert_eq!(y, vec![1.0, 3.0]);
        let y = dequantize(GgmlType::F32, &f32_bytes(&[1.5, -0.25]), 2).unwrap();
        assert_eq!(y, vec![1.5, -0.25]);
    }

    fn k_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        // inverse of scale_min_k4 for 6-bit values
        let mut q = [0u8; 12];
        for j in 0..4 {
            q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
            q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
            q[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
        }
        q
    }

    #[test]
    fn scale_min_roundtrip() {
        let sc = [1, 2, 3, 4, 50, 60, 33, 17];
        let m = [5, 6, 7, 8, 63, 40, 20, 1];
        let q = k_scales(sc, m);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (sc[j] as f32, m[j] as f32));
        }
    }

    #[test]
    fn q4_k_block() {
        let sc = [1, 2, 3, 4, 5, 6, 7, 8];
        let m = [0, 1, 0, 1, 0, 1, 0, 40];
        let mut b = Vec::new();
        b.extend_from_slice(&h(0.5)); // d
        b.extend_from_slice(&h(0.25)); // dmin
        b.extend_from_slice(&k_scales(sc, m));
        for i in 0..128 {
            b.push(((i % 16) as u8) | (((15 - i % 16) as u8) << 4));
        }
        let y = dequantize(GgmlType::Q4K, &b, 256).unwrap();
        // element 0: sub-block 0, scale 1, min 0, q = 0
        assert_eq!(y[0], 0.0);
        // element 5: q = 5 -> 0.5*1*5 - 0
        assert_eq!(y[5], 2.5);
        // element 32: sub-block 1 (high nibbles of bytes 0..32), q = 15, scale 2, min 1
        assert_eq!(y[32], 0.5 * 2.0 * 15.0 - 0.25);
        // element 255: sub-block 7, byte 127 high nibble = 15 - 127 % 16 = 0, scale 8, min 40
        assert_eq!(y[255], -0.25 * 40.0);
        // element 200: sub-block 6 (bytes 96..128 low nibble), byte 104 -> q = 8, scale 7, min 0
        assert_eq!(y[200], 0.5 * 7.0 * 8.0);
    }

    #[test]
    fn q5_k_block() {
        let sc = [1, 1, 1, 1, 1, 1, 2, 2];
        let m = [0, 0, 0, 0, 0, 0, 0, 3];
        let mut b = Vec::new();
        b.extend_from_slice(&h(1.0));
        b.extend_from_slice(&h(1.0));
        b.extend_from_slice(&k_scales(sc, m));
        // qh: element l of sub-block s uses bit s of qh[l]
        let mut qh = [0u8; 32];
        qh[0] = 0b0000_0001; // element 0 (sub-block 0)
        qh[1] = 0b1000_0000; // element 224+1 (sub-block 7)
        b.extend_from_slice(&qh);
        for _ in 0..128 {
            b.push(0x32); // low 2, high 3
        }
        let y = dequantize(GgmlType::Q5K, &b, 256).unwrap();
        assert_eq!(y[0], 2.0 + 16.0);
        assert_eq!(y[1], 2.0);
        assert_eq!(y[32], 3.0);
        assert_eq!(y[225], 2.0 * (3.0 + 16.0) - 3.0);
        assert_eq!(y[224], 2.0 * 3.0 - 3.0);
        assert_eq!(y[192], 2.0 * 2.0);
    }

    #[test]
    fn q6_k_block() {
        let mut b = vec![0u8; 210];
        // ql: element 0 low nibble 1; element 64 (high nibble of ql[0]) 2
        b[0] = 0x21;
        // qh[0] bits 0-1 -> element 0 high bits = 1 (adds 16); bits 4-5 -> element 64 high = 2 (adds 32)
        b[128] = 0b0010_0001;
        // ql[32] low nibble -> element 32; ql[64 + 0] -> element 128
        b[32] = 0x0F;
        b[64] = 0x05;
        // scales (i8) for first half: is 0..8
        let scales: [i8; 16] = [1, 2, 3, 4, -1, 6, 7, 8, 2, 2, 2, 2, 2, 2, 2, 2];
        for (i, s) in scales.iter().enumerate() {
            b[192 + i] = *s as u8;
        }
        b[208..210].copy_from_slice(&h(0.5));
        let y = dequantize(GgmlType::Q6K, &b, 256).unwrap();
        assert_eq!(y[0], 0.5 * 1.0 * ((1 + 16) as f32 - 32.0));
        assert_eq!(y[1], 0.5 * 1.0 * -32.0);
        assert_eq!(y[16], 0.5 * 2.0 * -32.0); // is = 1
        assert_eq!(y[32], 0.5 * 3.0 * (15.0 - 32.0)); // sc[is+2]
        assert_eq!(y[64], 0.5 * -1.0 * ((2 + 32) as f32 - 32.0)); // sc[is+4] = -1
        assert_eq!(y[128], 0.5 * 2.0 * (5.0 - 32.0)); // second half, sc = 2
    }

    #[test]
    fn codes_give_the_dequantised_values_bit_for_bit_for_every_block_type() {
        for (i, kind) in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K]
            .into_iter()
            .enumerate()
        {
            let (block, _) = kind.block_layout().unwrap();
            let blocks = 5;
            let data = random_blocks(kind, blocks, i as u64);
            let n = blocks * block;
            let c = codes(kind, &data, n).unwrap().unwrap();
            assert_eq!(c.codes.len(), n, "{}", kind.name());
            assert!(c.codes.iter().all(|&q| (q as u32) < 1 << c.bits), "{}: a code wider than {} bits", kind.name(), c.bits);
            assert_eq!(c.scales.len(), n / c.group);
            let want = dequantize(kind, &data, n).unwrap();
            let got = c.values();
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{} element {i} (block {}): {a} vs {b}", kind.name(), i / block);
            }
        }
        assert_eq!(codes(GgmlType::F16, &[0, 0], 1).unwrap(), None);
        assert!(codes(GgmlType::Q4_0, &[0; 17], 32).is_err());
    }

    #[test]
    fn q8_0_roundtrip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.37).sin()).collect();
        let q = quantize_q8_0(&x).unwrap();
        let y = dequantize(GgmlType::Q8_0, &q, 64).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 0.01, "{a} vs {b}");
        }
    }
}
