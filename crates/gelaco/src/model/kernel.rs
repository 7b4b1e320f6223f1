//! The product's own GPU kernel: a matrix product that reads a weight matrix as the codes it
//! is kept in on the device and dequantises each value inside the product, so that no f32
//! copy of the matrix is ever made. It serves the block-quantised types burn's own quantised
//! tensors cannot hold exactly (those with an offset: Q4_1, Q5_1, Q4_K, Q5_K) and the 16-bit
//! types (F16, BF16). Each value is computed as the host's dequantiser computes it; only the
//! order in which the products are summed differs from an f32 matrix product.
//!
//! In `--precision f16` the same decoding writes the matrix once as f16 (each value the
//! host's, rounded to f16) for burn's f16 matrix product, which a GPU runs on its f16 units;
//! that copy is made for one product and let go, and takes half the bytes of an f32 one.
//!
//! The kernels are written in CubeCL and reach burn's tensors through a backend extension, so
//! they run on every CubeCL runtime burn's WGPU backend uses (Vulkan, Metal, DX12), fused or
//! not.

use burn::backend::backend_extension;
use burn::tensor::{Device, Int, Shape, Tensor};
use burn_cubecl::cubecl;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;
use half::f16;

/// Outputs a cube computes along each side of its tile.
const TILE: usize = 64;
/// Units along each side of a cube; each computes `TILE / UNITS` squared outputs.
const UNITS: usize = 16;
/// Elements of the inner dimension read into shared memory per step.
const STEP: usize = 16;

/// How a matrix's values are read from its 32-bit words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decode {
    /// Block-quantised codes of `bits` bits (4 or 8), `32 / bits` to a word, the first in the
    /// lowest bits; `group` elements share a scale (and an offset):
    /// `(code - zero) * scale (+ offset)`.
    Codes { bits: u32, group: u32, zero: i32, offsets: bool },
    /// 16-bit floats two to a word, the first in the lower half: F16 (5 exponent bits, 10 of
    /// significand) or BF16 (8 and 7), as sign x 2^exponent x significand, the powers of two
    /// read from a table indexed by the exponent.
    Halves { exponent_bits: u32, mantissa_bits: u32 },
}

impl Decode {
    /// The kernel's compile-time form: bits a value takes (4, 8 or 16), elements per group,
    /// the zero, whether there are offsets, and, for halves, the exponent and significand bits.
    fn comptime(self) -> (u32, u32, i32, bool, u32, u32) {
        match self {
            Decode::Codes { bits, group, zero, offsets } => (bits, group, zero, offsets, 0, 0),
            Decode::Halves { exponent_bits, mantissa_bits } => (16, 1, 0, false, exponent_bits, mantissa_bits),
        }
    }
}

/// The value at row `row`, column `col` of a matrix `cols` wide kept as `words`, read as
/// `decode` says (see [`Decode::comptime`]), computed as the host computes it.
#[cube]
fn weight_at(
    words: &[u32],
    scales: &[f32],
    offsets: &[f32],
    row: usize,
    col: usize,
    cols: usize,
    #[comptime] decode: Decode,
) -> f32 {
    let bits = comptime!(decode.comptime().0);
    let group = comptime!(decode.comptime().1);
    let zero = comptime!(decode.comptime().2);
    let has_offsets = comptime!(decode.comptime().3);
    let exponent_bits = comptime!(decode.comptime().4);
    let mantissa_bits = comptime!(decode.comptime().5);
    let per_word = comptime!((32 / bits) as usize);
    let at = row * cols + col;
    let shift = ((col % per_word) as u32) * bits;
    let word = words[at / per_word];
    if comptime!(bits == 16) {
        let h = (word >> shift) & 0xFFFF;
        let e = (h >> mantissa_bits) & comptime!((1u32 << exponent_bits) - 1);
        let mut significand = h & comptime!((1u32 << mantissa_bits) - 1);
        if e > 0 {
            significand += comptime!(1u32 << mantissa_bits);
        }
        let sign = 1.0 - 2.0 * f32::cast_from(h >> 15);
        let power = scales[e as usize];
        sign * power * f32::cast_from(significand) * comptime!(2f32.powi(-(mantissa_bits as i32)))
    } else {
        let code = (word >> shift) & comptime!(((1u64 << bits) - 1) as u32);
        let g = at / comptime!(group as usize);
        let value = f32::cast_from(i32::cast_from(code) - zero) * scales[g];
        if comptime!(has_offsets) { value + offsets[g] } else { value }
    }
}

/// `out[m, n] = x[m, k] @ W[n, k]^T`, W read through [`weight_at`]. Each cube computes a
/// `TILE x TILE` tile of the output, staging `STEP` columns of x and of W (dequantised) in
/// shared memory per step, each unit a 4 x 4 block of outputs strided by `UNITS`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn codes_matmul_kernel(
    x: &[f32],
    words: &[u32],
    scales: &[f32],
    offsets: &[f32],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] decode: Decode,
) {
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let unit = ty * UNITS + tx;
    let n0 = CUBE_POS_X as usize * TILE;
    let m0 = CUBE_POS_Y as usize * TILE;
    let per_unit = comptime!(TILE / UNITS);
    let loads = comptime!(TILE * STEP / (UNITS * UNITS));
    // staged transposed, [STEP, TILE]: the units of a row of the cube read neighbouring values
    let mut xs = Shared::<[f32]>::new_slice(comptime!(TILE * STEP));
    let mut ws = Shared::<[f32]>::new_slice(comptime!(TILE * STEP));
    let mut acc = Array::<f32>::new(comptime!(per_unit * per_unit));
    #[unroll]
    for i in 0..comptime!(per_unit * per_unit) {
        acc[i] = 0.0;
    }
    let mut k0 = 0usize;
    while k0 < k {
        #[unroll]
        for p in 0..loads {
            let e = unit + p * comptime!(UNITS * UNITS);
            let r = e / STEP;
            let c = e % STEP;
            let col = k0 + c;
            let mut xv = 0.0;
            if m0 + r < m && col < k {
                xv = x[(m0 + r) * k + col];
            }
            xs[c * TILE + r] = xv;
            let mut wv = 0.0;
            if n0 + r < n && col < k {
                wv = weight_at(words, scales, offsets, n0 + r, col, k, decode);
            }
            ws[c * TILE + r] = wv;
        }
        sync_cube();
        #[unroll]
        for c in 0..STEP {
            let mut a = Array::<f32>::new(per_unit);
            let mut b = Array::<f32>::new(per_unit);
            #[unroll]
            for i in 0..per_unit {
                a[i] = xs[c * TILE + ty + i * UNITS];
                b[i] = ws[c * TILE + tx + i * UNITS];
            }
            #[unroll]
            for i in 0..per_unit {
                #[unroll]
                for j in 0..per_unit {
                    acc[i * per_unit + j] += a[i] * b[j];
                }
            }
        }
        sync_cube();
        k0 += STEP;
    }
    #[unroll]
    for i in 0..per_unit {
        #[unroll]
        for j in 0..per_unit {
            let row = m0 + ty + i * UNITS;
            let col = n0 + tx + j * UNITS;
            if row < m && col < n {
                out[row * n + col] = acc[i * per_unit + j];
            }
        }
    }
}

/// Units of a cube of [`codes_to_f16_kernel`], along a row.
const ROW_UNITS: usize = 256;
/// The most cubes a grid holds along one dimension (WebGPU's least limit).
const MAX_CUBES: usize = 65_535;

/// `out[row, col]` = W's value there (read through [`weight_at`]) rounded to f16, for W
/// `[rows, cols]`: a cube for each `ROW_UNITS` values of a row, the rows numbered along the
/// grid's y and z (a grid holds at most [`MAX_CUBES`] cubes along each).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn codes_to_f16_kernel(
    words: &[u32],
    scales: &[f32],
    offsets: &[f32],
    out: &mut [f16],
    rows: u32,
    cols: u32,
    #[comptime] decode: Decode,
) {
    let (rows, cols) = (rows as usize, cols as usize);
    let row = CUBE_POS_Z as usize * CUBE_COUNT_Y as usize + CUBE_POS_Y as usize;
    let col = CUBE_POS_X as usize * ROW_UNITS + UNIT_POS_X as usize;
    if row < rows && col < cols {
        let value = weight_at(words, scales, offsets, row, col, cols, decode);
        out[row * cols + col] = f16::cast_from(value);
    }
}

/// The shape of `x @ W^T` for `x` `[m, k]` and W kept as `words` `[n, ..]`.
fn product_shape(x: &Shape, words: &Shape) -> Shape {
    Shape::new([x[0], words[0]])
}

/// The product as a backend operation, so that it runs on the tensors burn holds (through its
/// fusion layer too).
#[backend_extension(Cube, Fusion)]
pub trait CodesMatmul: burn::backend::Backend {
    #[fusion(dtype = x, shape = product_shape(x, words))]
    fn codes_matmul(
        x: burn::backend::tensor::FloatTensor<Self>,
        words: burn::backend::tensor::IntTensor<Self>,
        scales: burn::backend::tensor::FloatTensor<Self>,
        offsets: burn::backend::tensor::FloatTensor<Self>,
        cols: usize,
        decode: Decode,
    ) -> burn::backend::tensor::FloatTensor<Self>;

    #[fusion(dtype = burn::tensor::DType::F16, shape = matrix_shape(words, cols))]
    fn codes_to_f16(
        words: burn::backend::tensor::IntTensor<Self>,
        scales: burn::backend::tensor::FloatTensor<Self>,
        offsets: burn::backend::tensor::FloatTensor<Self>,
        cols: usize,
        decode: Decode,
    ) -> burn::backend::tensor::FloatTensor<Self>;
}

/// The shape `[rows, cols]` of W kept as `words` `[rows, ..]`.
fn matrix_shape(words: &Shape, cols: &usize) -> Shape {
    Shape::new([words[0], *cols])
}

impl CodesMatmul for CubeBackend {
    fn codes_matmul(x: CubeTensor, words: CubeTensor, scales: CubeTensor, offsets: CubeTensor, cols: usize, decode: Decode) -> CubeTensor {
        use burn_cubecl::kernel::into_contiguous;
        let x = into_contiguous(x);
        let (words, scales, offsets) = (into_contiguous(words), into_contiguous(scales), into_contiguous(offsets));
        let (m, n) = (x.meta.shape()[0], words.meta.shape()[0]);
        let out = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([m, n]), x.dtype);
        let count = CubeCount::Static(n.div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, 1);
        let dim = CubeDim::new_2d(UNITS as u32, UNITS as u32);
        // SAFETY: every index the kernel reads is bounded by the shapes checked in
        // [`codes_matmul`]: x `[m, cols]`, W `[n, cols]` in its words, its scales and offsets
        // one per group; it writes only within `[m, n]`.
        unsafe {
            codes_matmul_kernel::launch_unchecked(
                &out.client,
                count,
                dim,
                x.into_buffer_arg(),
                words.into_buffer_arg(),
                scales.into_buffer_arg(),
                offsets.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                m as u32,
                n as u32,
                cols as u32,
                decode,
            );
        }
        out
    }

    fn codes_to_f16(words: CubeTensor, scales: CubeTensor, offsets: CubeTensor, cols: usize, decode: Decode) -> CubeTensor {
        use burn_cubecl::kernel::into_contiguous;
        let (words, scales, offsets) = (into_contiguous(words), into_contiguous(scales), into_contiguous(offsets));
        let rows = words.meta.shape()[0];
        let out = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
            words.client.clone(),
            words.device.clone(),
            Shape::new([rows, cols]),
            burn::tensor::DType::F16,
        );
        let (y, z) = (rows.min(MAX_CUBES), rows.div_ceil(MAX_CUBES));
        let count = CubeCount::Static(cols.div_ceil(ROW_UNITS) as u32, y as u32, z as u32);
        // SAFETY: every index the kernel reads is within W `[rows, cols]` in its words, its
        // scales and offsets one per group (see [`codes_to_f16`]); it writes only within
        // `[rows, cols]`.
        unsafe {
            codes_to_f16_kernel::launch_unchecked(
                &out.client,
                count,
                CubeDim::new_1d(ROW_UNITS as u32),
                words.into_buffer_arg(),
                scales.into_buffer_arg(),
                offsets.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                rows as u32,
                cols as u32,
                decode,
            );
        }
        out
    }
}

/// `x @ W^T` for `x` `[m, cols]` and W `[rows, cols]` kept on the device as `words`
/// (`[rows, cols / (32 / bits)]`, 32-bit) with `scales` (and `offsets`) per group, or as 16-bit
/// halves with the powers-of-two table in `scales`; `[m, rows]`.
pub fn codes_matmul(x: Tensor<2>, words: &Tensor<2, Int>, scales: &Tensor<2>, offsets: Option<&Tensor<2>>, rows: usize, cols: usize, decode: Decode) -> Tensor<2> {
    debug_assert_eq!(x.dims()[1], cols);
    debug_assert_eq!(words.dims()[0], rows);
    if x.dims()[0] == 0 || rows == 0 {
        return Tensor::<2>::zeros([x.dims()[0], rows], &x.device());
    }
    let (words, scales, offsets) = dispatched(words, scales, offsets);
    let y = <burn::backend::Dispatch as CodesMatmul>::codes_matmul(x.into_dispatch(), words, scales, offsets, cols, decode);
    Tensor::<2>::from_dispatch(y)
}

/// W `[rows, cols]` kept as in [`codes_matmul`], as an f16 tensor `[rows, cols]` on its
/// device: each value as the host dequantises it, rounded to f16 (to the nearest, ties to
/// even; beyond f16's range, infinite).
pub fn codes_to_f16(words: &Tensor<2, Int>, scales: &Tensor<2>, offsets: Option<&Tensor<2>>, rows: usize, cols: usize, decode: Decode) -> Tensor<2> {
    debug_assert_eq!(words.dims()[0], rows);
    if rows == 0 || cols == 0 {
        return Tensor::<2>::zeros([rows, cols], &words.device()).cast(burn::tensor::FloatDType::F16);
    }
    let (words, scales, offsets) = dispatched(words, scales, offsets);
    Tensor::<2>::from_dispatch(<burn::backend::Dispatch as CodesMatmul>::codes_to_f16(words, scales, offsets, cols, decode))
}

/// W's words, scales and offsets as the operations take them (without offsets, the scales in
/// their place, which the kernels then never read).
fn dispatched(
    words: &Tensor<2, Int>,
    scales: &Tensor<2>,
    offsets: Option<&Tensor<2>>,
) -> (
    burn::backend::tensor::IntTensor<burn::backend::Dispatch>,
    burn::backend::tensor::FloatTensor<burn::backend::Dispatch>,
    burn::backend::tensor::FloatTensor<burn::backend::Dispatch>,
) {
    let offsets = offsets.unwrap_or(scales).clone();
    (words.clone().into_dispatch(), scales.clone().into_dispatch(), offsets.into_dispatch())
}

/// Whether `device` runs the kernel: a CubeCL device (the WGPU backend), not the CPU backend.
pub fn runs_on(device: &Device) -> bool {
    !crate::backend::is_cpu(device)
}
