//! Projection weights kept as the model file stores them (GGUF blocks, or 16- and 32-bit
//! safetensors), memory-mapped, and dequantised to f32 device tensors only when a forward
//! pass needs them.
//!
//! The dequantised matrices live in one [`Resident`] set per loaded model, bounded by a
//! byte budget: a matrix is dequantised on its first use and kept while the budget allows;
//! when a new one does not fit, it takes the place of matrices used fewer times than it,
//! or is used once and let go. So the most used stay (the top layers, which every
//! compressed forward pass runs), and a pass over more layers than fit keeps a fixed set
//! resident instead of evicting each layer just before it is needed again. A model whose
//! matrices all fit is dequantised once, as if loaded whole; a larger one streams the rest
//! of its layers from the file: when a matrix is read from the file, the next one (in
//! layer order) is read, dequantised and transposed on another thread meanwhile, and the
//! file pages of a dequantised matrix are let go, so the process holds the budget's
//! matrices and not the file besides.
//! Dequantisation is deterministic, so every result is the same bit for bit whatever the
//! budget.
//!
//! On a device with memory of its own (WGPU), a block-quantised matrix is also kept there as
//! its codes ([`DeviceCodes`]: 4 or 8 bits a weight, packed into 32-bit words, with its
//! groups' scales), and its f32 copy is made from them on the device when needed, so the
//! file is read once and the device holds about the file's size of weights. The codes
//! outrank the f32 copies in the budget: an f32 copy is let go to keep codes, never the
//! reverse, since an f32 copy is cheap to make again from the codes.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use burn::tensor::{Device, Int, Tensor, TensorData};
use memmap2::Mmap;

use super::gguf::{code_layout, codes, dequantize, Codes, GgmlType};
use super::weights::{unpermute_rows, HostTensor};
use super::layer::product_in;
use crate::backend::Precision;

/// A byte range of a memory-mapped model file, shared.
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl MappedBytes {
    pub fn new(map: Arc<Mmap>, range: Range<usize>) -> Self {
        debug_assert!(range.end <= map.len());
        MappedBytes { map, range }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Let the process's memory go of these bytes' pages: they stay in the system's page
    /// cache while it has room, and are read from the file again when next used.
    pub fn release(&self) {
        #[cfg(unix)]
        // SAFETY: the map is a read-only mapping of a file, so dropping its pages loses
        // nothing: the next read faults them in from the file again.
        let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, self.range.start, self.range.len()) };
    }
}

/// What the resident set did: dequantisations, reuses, matrices let go, and bytes held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResidentStats {
    /// Matrices dequantised or taken to the device as codes (a first use, or a use after
    /// being let go).
    pub loads: u64,
    /// Uses served by a matrix already resident.
    pub hits: u64,
    /// Matrices let go to make room.
    pub evictions: u64,
    /// Bytes of dequantised matrices and codes held now, and at most so far.
    pub bytes: u64,
    pub peak_bytes: u64,
    /// Of `bytes`, those of matrices kept as codes on the device.
    pub codes_bytes: u64,
    /// Matrices read from the file ahead of their use, on another thread, and then used.
    pub read_ahead: u64,
    /// The budget, in bytes.
    pub budget: u64,
}

/// What the resident set holds of a matrix. The order is the order of eviction: f32 copies
/// go before codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Tier {
    /// The f32 transpose, as the forward pass uses it.
    Dense,
    /// The codes on the device, what an f32 copy is made from without reading the file.
    Codes,
}

#[derive(Clone)]
enum Held {
    Dense(Tensor<2>),
    Codes(Arc<DeviceCodes>),
}

struct Entry {
    held: Held,
    bytes: u64,
    last: u64,
}

/// A matrix read from the file on another thread: its slot and the thread.
struct Ahead {
    slot: (usize, Tier),
    thread: JoinHandle<Prepared>,
}

/// The host's work of reading a matrix from the file (dequantising or decoding its blocks,
/// undoing the row permutation, transposing), which can be done on another thread; what is
/// left, taking it to the device, is [`StoredMatrix::finish`].
enum Prepared {
    /// The f32 matrix transposed, `[cols, rows]`, row-major.
    Transposed(Vec<f32>),
    /// Its codes, rows in Hugging Face order (`None`: unreadable, made NaN).
    Codes(Option<Codes>),
    /// Its 16-bit values (F16 or BF16) as stored, rows in Hugging Face order.
    Halves(Vec<u16>),
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(usize, Tier), Entry>,
    /// Uses of every matrix so far, resident or not.
    uses: HashMap<(usize, Tier), u64>,
    /// Every matrix, by key (keys follow the order of the layers), to read the next one
    /// ahead.
    sources: HashMap<usize, Weak<StoredMatrix>>,
    /// The matrix being read from the file ahead of its use.
    ahead: Option<Ahead>,
    clock: u64,
    next_key: usize,
    stats: ResidentStats,
}

impl Inner {
    /// The resident entries as (tier, uses, key, bytes), in the order they are let go: f32
    /// copies before codes, then the least used first, among equals the most recently used
    /// (so a cycle over more matrices than fit keeps a fixed set).
    fn eviction_order(&self) -> Vec<(Tier, u64, usize, u64)> {
        let mut order: Vec<(Tier, u64, std::cmp::Reverse<u64>, usize, u64)> = self
            .entries
            .iter()
            .map(|(&(k, tier), e)| (tier, self.uses.get(&(k, tier)).copied().unwrap_or(0), std::cmp::Reverse(e.last), k, e.bytes))
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(t, u, _, k, b)| (t, u, k, b)).collect()
    }

    fn remove(&mut self, slot: (usize, Tier)) {
        if let Some(e) = self.entries.remove(&slot) {
            self.stats.bytes -= e.bytes;
            if slot.1 == Tier::Codes {
                self.stats.codes_bytes -= e.bytes;
            }
            self.stats.evictions += 1;
        }
    }
}

/// The dequantised matrices of one model (and, on a device that keeps them, their codes),
/// within a byte budget.
pub struct Resident {
    inner: Mutex<Inner>,
    codes_on_device: bool,
}

impl fmt::Debug for Resident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resident").field("stats", &self.stats()).finish()
    }
}

impl Resident {
    pub fn new(budget: u64) -> Arc<Self> {
        Self::keeping_codes(budget, false)
    }

    /// A resident set that, when `codes_on_device`, keeps block-quantised matrices on the
    /// device as their codes and makes their f32 copies from those.
    pub fn keeping_codes(budget: u64, codes_on_device: bool) -> Arc<Self> {
        let inner = Inner { stats: ResidentStats { budget, ..Default::default() }, ..Default::default() };
        Arc::new(Resident { inner: Mutex::new(inner), codes_on_device })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic elsewhere while holding the lock leaves the map consistent (every update is
        // one insert or remove), so its contents stay usable
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new matrix's key, in the order of the layers, and what reads it ahead.
    fn register(&self, make: impl FnOnce(usize) -> Arc<StoredMatrix>) -> Arc<StoredMatrix> {
        let key = {
            let mut g = self.lock();
            g.next_key += 1;
            g.next_key
        };
        let matrix = make(key);
        self.lock().sources.insert(key, Arc::downgrade(&matrix));
        matrix
    }

    pub fn stats(&self) -> ResidentStats {
        self.lock().stats
    }

    /// The f32 matrix under `key`, made by `make` when it is not resident. A new matrix is
    /// kept when it fits, or when room can be made by letting go of matrices used fewer
    /// times than it (the least used first, among equals the most recent).
    fn get(&self, key: usize, bytes: u64, make: impl FnOnce() -> Tensor<2>) -> Tensor<2> {
        match self.fetch((key, Tier::Dense), bytes, || Held::Dense(make())) {
            Held::Dense(t) => t,
            Held::Codes(c) => c.dense_t(),
        }
    }

    /// The codes under `key` on the device, uploaded by `make` when they are not resident.
    /// They are kept like an f32 matrix, and may also let go of any f32 matrix to fit.
    fn get_codes(&self, key: usize, bytes: u64, make: impl FnOnce() -> Arc<DeviceCodes>) -> Arc<DeviceCodes> {
        match self.fetch((key, Tier::Codes), bytes, || Held::Codes(make())) {
            Held::Codes(c) => c,
            Held::Dense(_) => unreachable!("a codes slot holds codes"),
        }
    }

    fn fetch(&self, slot: (usize, Tier), bytes: u64, make: impl FnOnce() -> Held) -> Held {
        let (key, tier) = slot;
        let uses = {
            let mut g = self.lock();
            g.clock += 1;
            let now = g.clock;
            let uses = {
                let u = g.uses.entry(slot).or_insert(0);
                *u += 1;
                *u
            };
            if let Some(e) = g.entries.get_mut(&slot) {
                e.last = now;
                let held = e.held.clone();
                g.stats.hits += 1;
                return held;
            }
            uses
        };
        // a matrix read from the file: the next matrix of the model (in layer order) is likely
        // the next one needed, so it is read on another thread while this one is used
        let (ahead, this) = {
            let mut g = self.lock();
            let this = g.sources.get(&key).and_then(Weak::upgrade).filter(|m| m.file_tier() == tier);
            let ahead = match g.ahead.take() {
                Some(a) if a.slot == slot => Some(a.thread),
                other => {
                    g.ahead = other;
                    None
                }
            };
            if this.is_some() {
                let next = g.sources.get(&(key + 1)).and_then(Weak::upgrade);
                if let Some(next) = next.filter(|n| !g.entries.contains_key(&(key + 1, n.file_tier()))) {
                    let next_slot = (key + 1, next.file_tier());
                    if g.ahead.as_ref().is_none_or(|a| a.slot != next_slot) {
                        let thread = std::thread::Builder::new().name("gelaco-read-ahead".into()).spawn(move || next.prepare());
                        // no thread to be had: the matrix is read when it is used
                        g.ahead = thread.ok().map(|thread| Ahead { slot: next_slot, thread });
                    }
                }
            }
            (ahead, this)
        };
        // dequantise outside the lock: other threads keep using what is resident
        let read_ahead = match (ahead, this) {
            (Some(thread), Some(this)) => thread.join().ok().map(|p| this.finish(p)),
            _ => None,
        };
        let held = match read_ahead {
            Some(held) => {
                self.lock().stats.read_ahead += 1;
                held
            }
            None => make(),
        };
        let mut g = self.lock();
        g.stats.loads += 1;
        if g.entries.contains_key(&slot) || bytes > g.stats.budget {
            return held;
        }
        let mut victims = Vec::new();
        let mut freed = 0;
        if g.stats.bytes + bytes > g.stats.budget {
            for (t, u, k, b) in g.eviction_order() {
                if g.stats.bytes - freed + bytes <= g.stats.budget || t > tier || (t == tier && u >= uses) {
                    break;
                }
                victims.push((k, t));
                freed += b;
            }
            if g.stats.bytes - freed + bytes > g.stats.budget {
                return held;
            }
        }
        for v in victims {
            g.remove(v);
        }
        let now = g.clock;
        g.entries.insert(slot, Entry { held: held.clone(), bytes, last: now });
        g.stats.bytes += bytes;
        if tier == Tier::Codes {
            g.stats.codes_bytes += bytes;
        }
        g.stats.peak_bytes = g.stats.peak_bytes.max(g.stats.bytes);
        held
    }

    /// The budget left for dequantised matrices, in bytes (`u64::MAX`: unbounded).
    pub fn budget(&self) -> u64 {
        self.lock().stats.budget
    }

    /// Take `bytes` out of the budget for something else that lives beside the matrices
    /// (a fitness engine's cached reference activations), letting go of the least used
    /// matrices until what stays fits; the bytes return to the budget when the
    /// reservation is dropped. An unbounded budget stays unbounded.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Reservation {
        let mut g = self.lock();
        let bytes = if g.stats.budget == u64::MAX { 0 } else { bytes.min(g.stats.budget) };
        g.stats.budget -= bytes;
        if g.stats.bytes > g.stats.budget {
            for (t, _, k, _) in g.eviction_order() {
                if g.stats.bytes <= g.stats.budget {
                    break;
                }
                g.remove((k, t));
            }
        }
        Reservation { resident: self.clone(), bytes }
    }

    /// Let go of everything resident (the next uses dequantise again).
    pub fn clear(&self) {
        let mut g = self.lock();
        g.entries.clear();
        g.ahead = None;
        g.stats.bytes = 0;
        g.stats.codes_bytes = 0;
    }
}

/// Bytes taken out of a [`Resident`] budget ([`Resident::reserve`]), given back on drop.
pub struct Reservation {
    resident: Arc<Resident>,
    bytes: u64,
}

impl Reservation {
    /// The bytes taken (0 where the budget is unbounded).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation").field("bytes", &self.bytes).finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut g = self.resident.lock();
        g.stats.budget = g.stats.budget.saturating_add(self.bytes);
    }
}

/// A projection's weight matrix `[rows, cols]` (Hugging Face layout `[out, in]`) as the
/// file stores it.
pub struct StoredMatrix {
    /// The tensor's name in Hugging Face naming, for messages.
    pub name: String,
    pub kind: GgmlType,
    bytes: MappedBytes,
    pub rows: usize,
    pub cols: usize,
    /// llama.cpp's q/k row permutation over this many heads, undone on dequantisation.
    permuted_heads: Option<usize>,
    key: usize,
    resident: Arc<Resident>,
    device: Device,
}

impl fmt::Debug for StoredMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredMatrix")
            .field("name", &self.name)
            .field("kind", &self.kind.name())
            .field("shape", &[self.rows, self.cols])
            .finish()
    }
}

impl StoredMatrix {
    /// A stored matrix, or a message saying why these bytes cannot be one (a type this tool
    /// cannot dequantise, or a length that does not hold `rows x cols` elements).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        kind: GgmlType,
        bytes: MappedBytes,
        rows: usize,
        cols: usize,
        permuted_heads: Option<usize>,
        resident: &Arc<Resident>,
        device: &Device,
    ) -> std::result::Result<Arc<Self>, String> {
        if !kind.is_supported() {
            return Err(format!("tensor '{name}' is stored as {}, which this tool cannot read", kind.name()));
        }
        let n = rows as u64 * cols as u64;
        if kind.bytes_for(n) != Some(bytes.len() as u64) || kind.block_layout().is_some_and(|(block, _)| cols % block != 0) {
            return Err(format!("tensor '{name}': {} bytes of {} do not hold {rows} rows of {cols}", bytes.len(), kind.name()));
        }
        if permuted_heads.is_some_and(|h| h == 0 || rows % (2 * h) != 0) {
            return Err(format!("tensor '{name}': {rows} rows do not split into its heads"));
        }
        Ok(resident.register(|key| {
            Arc::new(StoredMatrix { name, kind, bytes, rows, cols, permuted_heads, key, resident: resident.clone(), device: device.clone() })
        }))
    }

    /// Bytes the file stores it in.
    pub fn stored_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Bytes it takes dequantised to f32.
    pub fn f32_bytes(&self) -> u64 {
        self.rows as u64 * self.cols as u64 * 4
    }

    /// The matrix as f32 on the host, in Hugging Face layout `[rows, cols]`.
    pub fn host(&self) -> HostTensor {
        let n = self.rows * self.cols;
        // the constructor checked the type and the length, so this does not fail; should the
        // mapped file change underneath, NaN makes the model's output non-finite, which every
        // objective reports
        let mut data = dequantize(self.kind, self.bytes.bytes(), n).unwrap_or_else(|m| {
            tracing::error!(tensor = %self.name, "{m}");
            vec![f32::NAN; n]
        });
        // the dequantised copy is what is used from now on
        self.bytes.release();
        if let Some(heads) = self.permuted_heads {
            data = unpermute_rows(&data, self.rows, self.cols, heads);
        }
        HostTensor::new(vec![self.rows, self.cols], data)
    }

    /// The matrix as codes, rows in Hugging Face order; `None` for a type that is not
    /// block-quantised (F32, F16, BF16).
    pub fn codes(&self) -> Option<Codes> {
        let mut c = match codes(self.kind, self.bytes.bytes(), self.rows * self.cols) {
            Ok(c) => c?,
            Err(m) => {
                tracing::error!(tensor = %self.name, "{m}");
                return None;
            }
        };
        self.bytes.release();
        if let Some(heads) = self.permuted_heads {
            c.codes = unpermute_rows(&c.codes, self.rows, self.cols, heads);
            let groups = self.cols / c.group;
            c.scales = unpermute_rows(&c.scales, self.rows, groups, heads);
            c.offsets = c.offsets.map(|o| unpermute_rows(&o, self.rows, groups, heads));
        }
        Some(c)
    }

    /// Whether the device keeps this matrix as its codes.
    fn keeps_codes(&self) -> bool {
        self.resident.codes_on_device && (self.kind.block_layout().is_some_and(|(block, _)| block > 1) || self.keeps_halves())
    }

    /// Whether the device keeps this matrix as its 16-bit values (two to a 32-bit word).
    fn keeps_halves(&self) -> bool {
        matches!(self.kind, GgmlType::F16 | GgmlType::BF16) && self.cols % 2 == 0
    }

    /// The matrix's 16-bit values as stored, rows in Hugging Face order.
    fn halves(&self) -> Vec<u16> {
        let h: Vec<u16> = self.bytes.bytes().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        self.bytes.release();
        match self.permuted_heads {
            Some(heads) => unpermute_rows(&h, self.rows, self.cols, heads),
            None => h,
        }
    }

    /// What reading this matrix from the file makes: its codes where the device keeps them,
    /// else its f32 transpose.
    fn file_tier(&self) -> Tier {
        if self.keeps_codes() { Tier::Codes } else { Tier::Dense }
    }

    /// The host's part of reading this matrix from the file.
    fn prepare(&self) -> Prepared {
        match self.file_tier() {
            Tier::Codes if self.keeps_halves() => Prepared::Halves(self.halves()),
            Tier::Codes => Prepared::Codes(self.codes()),
            Tier::Dense => Prepared::Transposed(transpose(&self.host().data, self.rows, self.cols)),
        }
    }

    /// Take what [`StoredMatrix::prepare`] made to the device.
    fn finish(&self, prepared: Prepared) -> Held {
        let (rows, cols) = (self.rows, self.cols);
        match prepared {
            Prepared::Transposed(t) => Held::Dense(Tensor::<2>::from_data(TensorData::new(t, [cols, rows]), &self.device)),
            Prepared::Codes(c) => Held::Codes(Arc::new(match (c, self.burn_quantised()) {
                (Some(c), Some(scheme)) => DeviceCodes::upload_quantized(&c, rows, cols, scheme, &self.device),
                (Some(c), None) => DeviceCodes::upload(&c, rows, cols, &self.device),
                (None, _) => DeviceCodes::upload(&nan_codes(rows, cols), rows, cols, &self.device),
            })),
            Prepared::Halves(h) => Held::Codes(Arc::new(DeviceCodes::upload_halves(self.kind, &h, rows, cols, &self.device))),
        }
    }

    /// The codes on the device: resident, or read from the file and taken there now.
    fn device_codes(&self) -> Arc<DeviceCodes> {
        let bytes = DeviceCodes::bytes_for(self.kind, self.rows, self.cols);
        self.resident.get_codes(self.key, bytes, || match self.finish(self.prepare()) {
            Held::Codes(c) => c,
            Held::Dense(_) => unreachable!("a matrix kept as codes is read as codes"),
        })
    }

    /// The matrix transposed, `[cols, rows]` (`[in, out]`), on the device: resident, made
    /// from its codes on the device, or dequantised now from the file.
    pub fn dense_t(&self) -> Tensor<2> {
        self.resident.get(self.key, self.f32_bytes(), || {
            if self.keeps_codes() {
                return self.device_codes().dense_t();
            }
            match self.finish(self.prepare()) {
                Held::Dense(t) => t,
                Held::Codes(c) => c.dense_t(),
            }
        })
    }

    /// `x @ W^T` for `x` `[m, cols]`, `[m, rows]`. Where a GPU keeps the matrix as codes it is
    /// dequantised inside the product and no f32 copy is made: by burn's quantised matrix
    /// product for the types burn's scheme holds exactly, by the product's own kernel
    /// ([`super::kernel`]) for the others and the 16-bit types. Elsewhere, an f32 matrix
    /// product with [`StoredMatrix::dense_t`].
    pub fn product(&self, x: Tensor<2>) -> Tensor<2> {
        self.product_in(x, Precision::F32)
    }

    /// [`StoredMatrix::product`] in `precision`: with `f16`, the product takes f16 operands
    /// (see [`DeviceCodes::product_in`]), and a dequantised matrix is multiplied as f16. f32
    /// in and out.
    pub fn product_in(&self, x: Tensor<2>, precision: Precision) -> Tensor<2> {
        if self.keeps_codes() && super::kernel::runs_on(&self.device) {
            return self.device_codes().product_in(x, precision);
        }
        product_in(x, self.dense_t(), precision)
    }

    /// burn's scheme for this matrix where the device keeps it as burn's block-quantised
    /// tensor: a GPU that keeps codes, and a type the scheme holds exactly (burn's quantised
    /// product on the CPU backend is not exact, so there the host dequantises).
    fn burn_quantised(&self) -> Option<burn::tensor::quantization::QuantScheme> {
        burn_scheme(self.kind).filter(|_| self.keeps_codes() && !crate::backend::is_cpu(&self.device))
    }
}

/// Every type a GPU keeps as codes (block-quantised) or 16 bits: the first four multiply as
/// burn's quantised tensors, the rest through the product's own kernel.
pub const KEPT_TYPES: [GgmlType; 10] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q6K,
    GgmlType::Q4_1,
    GgmlType::Q5_1,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::F16,
    GgmlType::BF16,
];

/// What [`time_product`] measured for one type: `x @ W^T` with W kept as its codes on the
/// device against an f32 matrix product of the same values, each the median of its runs.
#[derive(Clone, Debug)]
pub struct ProductTiming {
    pub kind: GgmlType,
    /// How the product dequantises: burn's quantised matrix product, the product's own
    /// kernel, or an f32 copy (a device that keeps no codes).
    pub path: &'static str,
    pub codes_bytes: u64,
    pub f32_bytes: u64,
    pub codes_seconds: f64,
    pub f32_seconds: f64,
    /// The largest difference between the two products, relative to their largest output.
    pub difference: f32,
}

/// Time `x @ W^T` for `x` `[m, cols]` and a random `[rows, cols]` matrix of `kind` kept as
/// codes on `device` (as a model's layers are), computed in `precision`, against `x.matmul` of
/// its f32 copy in f32: one warm-up, then the median of `repeats` runs each, a read of the
/// result waiting for the device.
#[allow(clippy::too_many_arguments)]
pub fn time_product(kind: GgmlType, m: usize, rows: usize, cols: usize, device: &Device, precision: Precision, repeats: usize, seed: u64) -> crate::Result<ProductTiming> {
    crate::backend::check_precision(device, precision)?;
    let (block, _) = kind.block_layout().ok_or_else(|| crate::Error::Invalid(format!("type {} has no block layout", kind.name())))?;
    if cols % block.max(32) != 0 {
        return Err(crate::Error::Invalid(format!("rows of {cols} are not whole {} blocks (and words of codes)", kind.name())));
    }
    let data = super::gguf::blocks::random_blocks(kind, rows * cols / block, seed);
    // a file, as a model's matrices are: its pages can be let go and read again
    let path = std::env::temp_dir().join(format!("gelaco-product-{}-{seed}-{}.bin", std::process::id(), kind.name()));
    let io = |e: std::io::Error| crate::Error::Invalid(format!("{}: {e}", path.display()));
    std::fs::write(&path, &data).map_err(io)?;
    let file = std::fs::File::open(&path).map_err(io);
    // SAFETY: a file this function alone writes, under a name of its own
    let map = file.and_then(|f| unsafe { Mmap::map(&f) }.map_err(io));
    let _ = std::fs::remove_file(&path);
    let bytes = MappedBytes::new(Arc::new(map?), 0..data.len());
    let host = Resident::new(u64::MAX);
    let codes = Resident::keeping_codes(u64::MAX, !crate::backend::is_cpu(device));
    let dense = StoredMatrix::new("w".into(), kind, bytes.clone(), rows, cols, None, &host, device).map_err(crate::Error::Invalid)?;
    let kept = StoredMatrix::new("w".into(), kind, bytes, rows, cols, None, &codes, device).map_err(crate::Error::Invalid)?;
    let path = if !kept.keeps_codes() {
        "f32 copy"
    } else if kept.device_codes().quantized_t().is_some() {
        "burn's quantised product"
    } else if precision.is_f32() {
        "own kernel"
    } else {
        "f16 copy (own kernel)"
    };
    let x = Tensor::<2>::random([m, cols], burn::tensor::Distribution::Normal(0.0, 1.0), device);
    let f32_matrix = dense.dense_t();
    let time = |f: &dyn Fn() -> Tensor<2>| -> crate::Result<(f64, Vec<f32>)> {
        let mut out = super::llama::download(f())?.data;
        let mut times = Vec::new();
        for _ in 0..repeats.max(1) {
            let t = std::time::Instant::now();
            out = super::llama::download(f())?.data;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok((times[times.len() / 2], out))
    };
    let (codes_seconds, got) = time(&|| kept.product_in(x.clone(), precision))?;
    let (f32_seconds, want) = time(&|| x.clone().matmul(f32_matrix.clone()))?;
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max).max(f32::MIN_POSITIVE);
    let difference = want.iter().zip(&got).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) / scale;
    let codes_bytes = if kept.keeps_codes() { DeviceCodes::bytes_for(kind, rows, cols) } else { (rows * cols * 4) as u64 };
    Ok(ProductTiming { kind, path, codes_bytes, f32_bytes: (rows * cols * 4) as u64, codes_seconds, f32_seconds, difference })
}

/// burn's block-quantised scheme that holds a GGUF type exactly: the symmetric types (no
/// offset), as signed codes of 8 or 4 bits (the zero subtracted), one f32 scale per group
/// along each row; `None` for the types with offsets (Q4_1, Q5_1, Q4_K, Q5_K) and the rest.
fn burn_scheme(kind: GgmlType) -> Option<burn::tensor::quantization::QuantScheme> {
    use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
    let layout = code_layout(kind).filter(|l| !l.offsets)?;
    let value = if layout.bits == 4 { QuantValue::Q4S } else { QuantValue::Q8S };
    let group = u8::try_from(layout.group).ok()?;
    Some(QuantScheme::default().with_value(value).with_store(QuantStore::PackedU32(0)).per_block([1, group], ScaleDtype::F32))
}

/// Codes whose every value is NaN: what a matrix whose file changed underneath becomes, as
/// [`StoredMatrix::host`] does.
fn nan_codes(rows: usize, cols: usize) -> Codes {
    Codes { bits: 8, group: cols, zero: 0, codes: vec![0; rows * cols], scales: vec![f32::NAN; rows], offsets: None }
}

/// `values` of `bits` bits each (already within them), packed into 32-bit words, the first
/// in the lowest bits.
fn pack_words(values: impl Iterator<Item = u32>, bits: u32) -> Vec<u32> {
    let per = (32 / bits) as usize;
    let mut words = Vec::new();
    for (i, v) in values.enumerate() {
        if i % per == 0 {
            words.push(0);
        }
        if let Some(w) = words.last_mut() {
            *w |= v << (bits as usize * (i % per));
        }
    }
    words
}

fn int_tensor(words: Vec<u32>, shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::<2, Int>::from_data(TensorData::new(words.into_iter().map(|w| w as i32).collect::<Vec<i32>>(), shape), device)
}

/// A matrix `[rows, cols]` kept on the device in less memory than f32, in one of three forms;
/// [`DeviceCodes::dense_t`] computes from each the same f32 values as the host.
pub struct DeviceCodes {
    rows: usize,
    cols: usize,
    form: Form,
}

enum Form {
    /// A block-quantised matrix's codes packed into 32-bit words along each row (8 codes of
    /// 4 bits, or 4 of 8 bits, the first in the lowest bits), and its groups' scales and
    /// offsets `[rows, cols / group]` in f32: `(code - zero) * scale (+ offset)`.
    Words { words: Tensor<2, Int>, scales: Tensor<2>, offsets: Option<Tensor<2>>, bits: u32, zero: i32, group: usize },
    /// burn's block-quantised tensor `[rows, cols]`, for the types its scheme holds exactly.
    Quantized(Tensor<2>),
    /// F16 or BF16 values two to a 32-bit word, the first in the lower half, with the power
    /// of two of each exponent.
    Halves { words: Tensor<2, Int>, kind: GgmlType, powers: Tensor<1> },
}

/// How a product reads a matrix kept as codes: burn's quantised tensor, or what the product's
/// own kernel reads (its words, their scales, or for 16-bit values the powers of two of
/// their exponents, and offsets, and how to decode them).
enum Read<'a> {
    Burn(&'a Tensor<2>),
    Kernel { words: &'a Tensor<2, Int>, scales: Tensor<2>, offsets: Option<&'a Tensor<2>>, decode: super::kernel::Decode },
}

impl fmt::Debug for DeviceCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let form = match &self.form {
            Form::Words { bits, group, .. } => format!("{bits}-bit codes, groups of {group}"),
            Form::Quantized(_) => "burn's block-quantised tensor".into(),
            Form::Halves { kind, .. } => kind.name().to_string(),
        };
        f.debug_struct("DeviceCodes").field("shape", &[self.rows, self.cols]).field("form", &form).finish()
    }
}

impl DeviceCodes {
    /// The device bytes a `[rows, cols]` matrix of `kind` takes: the packed codes and the f32
    /// scales (and offsets) of a block-quantised type, two bytes a value of a 16-bit type
    /// with an even row, else f32.
    pub fn bytes_for(kind: GgmlType, rows: usize, cols: usize) -> u64 {
        let n = rows as u64 * cols as u64;
        match code_layout(kind) {
            Some(l) => n * l.bits as u64 / 8 + n / l.group as u64 * 4 * (1 + l.offsets as u64),
            None if matches!(kind, GgmlType::F16 | GgmlType::BF16) && cols % 2 == 0 => n * 2,
            None => n * 4,
        }
    }

    /// Take `c` (a `[rows, cols]` matrix's codes, rows whole words long) to `device`.
    pub fn upload(c: &Codes, rows: usize, cols: usize, device: &Device) -> Self {
        let per_row = c.codes.len() / c.group / rows.max(1);
        let f = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, per_row]), device);
        let words = pack_words(c.codes.iter().map(|&q| q as u32), c.bits);
        let form = Form::Words {
            words: int_tensor(words, [rows, cols * c.bits as usize / 32], device),
            scales: f(&c.scales),
            offsets: c.offsets.as_deref().map(f),
            bits: c.bits,
            zero: c.zero,
            group: c.group,
        };
        DeviceCodes { rows, cols, form }
    }

    /// Take a matrix's 16-bit values (F16 or BF16, `[rows, cols]` with `cols` even) to
    /// `device`, two to a 32-bit word, the first in the lower half.
    fn upload_halves(kind: GgmlType, h: &[u16], rows: usize, cols: usize, device: &Device) -> Self {
        let words = int_tensor(pack_words(h.iter().map(|&v| v as u32), 16), [rows, cols / 2], device);
        // 2^(e - bias) per exponent (subnormals: 2^(1 - bias)), the largest NaN
        let (exponent_bits, _) = half_bits(kind);
        let bias = (1i32 << (exponent_bits - 1)) - 1;
        let top = (1i32 << exponent_bits) - 1;
        let powers: Vec<f32> = (0..=top).map(|e| if e == top { f32::NAN } else { 2f32.powi(e.max(1) - bias) }).collect();
        let powers = Tensor::<1>::from_data(TensorData::new(powers, [(top + 1) as usize]), device);
        DeviceCodes { rows, cols, form: Form::Halves { words, kind, powers } }
    }

    /// Take `c` to `device` as burn's block-quantised tensor in `scheme` (from
    /// [`burn_scheme`]): signed codes packed into 32-bit words along each row, the first in
    /// the lowest bits, then the blocks' f32 scales.
    fn upload_quantized(c: &Codes, rows: usize, cols: usize, scheme: burn::tensor::quantization::QuantScheme, device: &Device) -> Self {
        let mask = (1u32 << c.bits) - 1;
        let signed = c.codes.iter().map(|&q| ((q as i32 - c.zero) as u32) & mask);
        let mut bytes: Vec<u8> = pack_words(signed, c.bits).into_iter().flat_map(u32::to_le_bytes).collect();
        bytes.extend(c.scales.iter().flat_map(|s| s.to_le_bytes()));
        let data = TensorData::from_bytes_vec(bytes, [rows, cols], burn::tensor::DType::QFloat(scheme));
        DeviceCodes { rows, cols, form: Form::Quantized(Tensor::<2>::from_data(data, device)) }
    }

    /// burn's block-quantised tensor transposed, `[cols, rows]`, where the codes are kept so.
    pub fn quantized_t(&self) -> Option<Tensor<2>> {
        match &self.form {
            Form::Quantized(q) => Some(q.clone().transpose()),
            _ => None,
        }
    }

    /// `x @ W^T` for `x` `[m, cols]`, each value dequantised inside the product on a GPU:
    /// burn's quantised matrix product, or the product's own kernel.
    pub fn product(&self, x: Tensor<2>) -> Tensor<2> {
        self.product_in(x, Precision::F32)
    }

    /// [`DeviceCodes::product`] in `precision`: with `f16`, burn's quantised product takes
    /// an f16 `x`, and a matrix the product's own kernel reads is multiplied as its
    /// [`DeviceCodes::f16_copy`] by burn's f16 product. f32 in and out.
    pub fn product_in(&self, x: Tensor<2>, precision: Precision) -> Tensor<2> {
        match self.read() {
            Read::Burn(q) => product_in(x, q.clone().transpose(), precision),
            Read::Kernel { words, scales, offsets, decode } if precision.is_f32() => {
                super::kernel::codes_matmul(x, words, &scales, offsets, self.rows, self.cols, decode)
            }
            Read::Kernel { words, scales, offsets, decode } => {
                let w = super::kernel::codes_to_f16(words, &scales, offsets, self.rows, self.cols, decode);
                product_in(x, w.transpose(), precision)
            }
        }
    }

    /// The matrix `[rows, cols]` as f16, written by the product's own kernel from the codes
    /// it reads (see [`super::kernel::codes_to_f16`]): made for one product and let go, half
    /// the bytes of an f32 copy. `None` for burn's quantised tensor.
    pub fn f16_copy(&self) -> Option<Tensor<2>> {
        match self.read() {
            Read::Kernel { words, scales, offsets, decode } => Some(super::kernel::codes_to_f16(words, &scales, offsets, self.rows, self.cols, decode)),
            Read::Burn(_) => None,
        }
    }

    /// How a product reads the matrix.
    fn read(&self) -> Read<'_> {
        use super::kernel::Decode;
        match &self.form {
            Form::Quantized(q) => Read::Burn(q),
            Form::Words { words, scales, offsets, bits, zero, group } => {
                let decode = Decode::Codes { bits: *bits, group: *group as u32, zero: *zero, offsets: offsets.is_some() };
                Read::Kernel { words, scales: scales.clone(), offsets: offsets.as_ref(), decode }
            }
            Form::Halves { words, kind, powers } => {
                let (exponent_bits, mantissa_bits) = half_bits(*kind);
                let decode = Decode::Halves { exponent_bits, mantissa_bits };
                Read::Kernel { words, scales: powers.clone().unsqueeze_dim::<2>(0), offsets: None, decode }
            }
        }
    }

    /// The f32 matrix transposed, `[cols, rows]`, computed on the device.
    pub fn dense_t(&self) -> Tensor<2> {
        let (rows, cols) = (self.rows, self.cols);
        match &self.form {
            Form::Quantized(q) => q.clone().dequantize().transpose(),
            Form::Halves { words, kind, powers } => halves_dense(words, *kind, powers, rows, cols),
            Form::Words { words, scales, offsets, bits, zero, group } => {
                let parts: Vec<Tensor<2, Int>> = (0..32 / bits)
                    .map(|k| words.clone().bitwise_right_shift_scalar((bits * k) as i32).bitwise_and_scalar((1i32 << bits) - 1))
                    .collect();
                let codes = Tensor::stack::<3>(parts, 2).reshape([rows, cols]);
                let groups = cols / group;
                let values = codes.sub_scalar(*zero).float().reshape([rows, groups, *group]);
                let values = values * scales.clone().unsqueeze_dim::<3>(2);
                let values = match offsets {
                    Some(o) => values + o.clone().unsqueeze_dim::<3>(2),
                    None => values,
                };
                values.reshape([rows, cols]).transpose()
            }
        }
    }
}

/// F16 or BF16 values `[rows, cols]`, two to a word, as f32 transposed, exactly: sign x
/// 2^exponent x significand, each factor exact in f32 (a value BF16 holds below f32's
/// smallest normal number may be flushed to zero on a GPU).
fn halves_dense(words: &Tensor<2, Int>, kind: GgmlType, powers: &Tensor<1>, rows: usize, cols: usize) -> Tensor<2> {
    let parts: Vec<Tensor<2, Int>> = (0..2).map(|k| words.clone().bitwise_right_shift_scalar(16 * k).bitwise_and_scalar(0xFFFF)).collect();
    let h = Tensor::stack::<3>(parts, 2).reshape([rows, cols]);
    let (exponent_bits, mantissa_bits) = half_bits(kind);
    let (exponent_bits, mantissa_bits) = (exponent_bits as i32, mantissa_bits as i32);
    let e = h.clone().bitwise_right_shift_scalar(mantissa_bits).bitwise_and_scalar((1i32 << exponent_bits) - 1);
    let m = h.clone().bitwise_and_scalar((1i32 << mantissa_bits) - 1);
    // the implicit leading one of normal numbers
    let significand = (m + e.clone().greater_elem(0).int().mul_scalar(1i32 << mantissa_bits)).float();
    let power = powers.clone().select(0, e.reshape([rows * cols])).reshape([rows, cols]);
    let sign = h.bitwise_right_shift_scalar(15).mul_scalar(-2).add_scalar(1).float();
    // the significand's scale 2^-mantissa_bits last
    (sign * power * significand).mul_scalar(2f32.powi(-mantissa_bits)).transpose()
}

/// The exponent's and the significand's bits of a 16-bit type: BF16 (8, 7), F16 (5, 10).
fn half_bits(kind: GgmlType) -> (u32, u32) {
    if kind == GgmlType::BF16 { (8, 7) } else { (5, 10) }
}

/// Upload the transpose of a 2-D host matrix `[rows, cols]` as `[cols, rows]`, so that
/// `x.matmul(w)` computes `x @ W^T` as PyTorch's `Linear` does.
pub fn upload_transposed(t: &HostTensor, device: &Device) -> Tensor<2> {
    let (r, c) = (t.shape[0], t.shape[1]);
    Tensor::<2>::from_data(TensorData::new(transpose(&t.data, r, c), [c, r]), device)
}

/// The transpose `[cols, rows]` of a row-major `[rows, cols]` matrix.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = data[i * cols + j];
        }
    }
    out
}

/// A projection's weight: a device tensor (`[in, out]`, what merging and healing make: f32,
/// or f16 where [`Weight::made`] keeps it so), or the stored matrix of the model file.
#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Tensor<2>),
    Stored(Arc<StoredMatrix>),
}

/// `t` as f32 (a no-op for an f32 tensor).
fn as_f32(t: &Tensor<2>) -> Tensor<2> {
    if t.dtype() == burn::tensor::DType::F32 { t.clone() } else { t.clone().cast(burn::tensor::FloatDType::F32) }
}

impl Weight {
    /// A matrix this tool made (`[in, out]`, computed in f32) in place of `source` (a
    /// merge's base weight, a healed projection's own), as it is kept: in f16 where `source`
    /// holds a weight in 16 bits or fewer (a quantised or 16-bit type) and the device
    /// computes in f16 (a WGPU adapter with f16 shaders), which halves its memory and is
    /// the operand an f16 product takes; in f32 where the source is f32, and on the CPU
    /// backend, whose f16 arithmetic is far slower than its f32.
    pub fn made(t: Tensor<2>, source: &Weight) -> Weight {
        let narrow = match source {
            Weight::Stored(s) => s.kind != GgmlType::F32,
            Weight::Dense(_) => source.is_f16(),
        };
        if narrow && crate::backend::computes_f16(&t.device()) {
            Weight::Dense(t.cast(burn::tensor::FloatDType::F16))
        } else {
            Weight::Dense(t)
        }
    }

    /// Whether it is kept as an f16 device tensor.
    pub fn is_f16(&self) -> bool {
        matches!(self, Weight::Dense(t) if t.dtype() == burn::tensor::DType::F16)
    }

    /// The weight transposed, `[in, out]`, on the device, in f32.
    pub fn dense_t(&self) -> Tensor<2> {
        match self {
            Weight::Dense(t) => as_f32(t),
            Weight::Stored(s) => s.dense_t(),
        }
    }

    /// `x @ W^T` for `x` `[m, in]`, `[m, out]` (see [`StoredMatrix::product`]).
    pub fn product(&self, x: Tensor<2>) -> Tensor<2> {
        self.product_in(x, Precision::F32)
    }

    /// [`Weight::product`] in `precision` (a dense weight kept in f32 is cast to f16 for each
    /// product in `f16`, one kept in f16 to f32 for each in `f32`; see
    /// [`StoredMatrix::product_in`] for stored ones); f32 in and out.
    pub fn product_in(&self, x: Tensor<2>, precision: Precision) -> Tensor<2> {
        match self {
            Weight::Dense(t) if precision.is_f32() => product_in(x, as_f32(t), precision),
            Weight::Dense(t) => product_in(x, t.clone(), precision),
            Weight::Stored(s) => s.product_in(x, precision),
        }
    }

    /// The weight on the host in Hugging Face layout `[out, in]`.
    pub fn host(&self) -> crate::Result<HostTensor> {
        match self {
            Weight::Dense(t) => super::llama::download(as_f32(t).transpose()),
            Weight::Stored(s) => Ok(s.host()),
        }
    }

    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Weight::Dense(t) => t.dims(),
            Weight::Stored(s) => [s.cols, s.rows],
        }
    }

    /// Whether both are the same stored matrix of the model file (not a copy, not a merge).
    pub fn same_stored(&self, other: &Weight) -> bool {
        matches!((self, other), (Weight::Stored(a), Weight::Stored(b)) if Arc::ptr_eq(a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(v: f32) -> Tensor<2> {
        Tensor::<2>::from_data(TensorData::new(vec![v; 4], [2, 2]), &Device::flex())
    }

    #[test]
    fn the_resident_set_keeps_the_most_used_within_its_budget() {
        let r = Resident::new(32);
        let made = std::cell::Cell::new(0);
        let get = |k: usize| {
            r.get(k, 16, || {
                made.set(made.get() + 1);
                tensor(k as f32)
            })
        };
        get(1);
        get(1);
        get(2);
        assert_eq!(made.get(), 2);
        // a third matrix, used once, does not displace one used as often
        get(3);
        assert_eq!((made.get(), r.stats().evictions), (3, 0));
        // used twice, it displaces 2 (used once), not 1 (used twice)
        get(3);
        assert_eq!((made.get(), r.stats().evictions), (4, 1));
        get(1);
        assert_eq!(made.get(), 4, "1 stayed resident");
        get(2);
        assert_eq!(made.get(), 5, "2 was let go");
        let s = r.stats();
        assert_eq!((s.loads, s.hits, s.bytes, s.peak_bytes), (5, 2, 32, 32));
        // a matrix larger than the budget is used but never kept
        let big = r.get(9, 64, || tensor(9.0));
        assert_eq!(big.dims(), [2, 2]);
        assert_eq!(r.stats().bytes, 32);
    }

    /// `kind`'s blocks of random bytes with finite scales, as a memory-mapped file.
    fn random_matrix(kind: GgmlType, rows: usize, cols: usize, seed: u64) -> (tempfile::NamedTempFile, MappedBytes) {
        let data = crate::model::gguf::blocks::random_blocks(kind, rows * cols / kind.block_layout().unwrap().0, seed);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &data).unwrap();
        // SAFETY: a temporary file this test alone writes
        let map = Arc::new(unsafe { Mmap::map(f.as_file()) }.unwrap());
        let bytes = MappedBytes::new(map, 0..data.len());
        (f, bytes)
    }

    /// The CPU backend and the best WGPU adapter (software Vulkan is enough);
    /// `GELACO_SKIP_WGPU=1` leaves WGPU out on a machine without any.
    fn devices() -> Vec<Device> {
        let mut d = vec![Device::flex()];
        if std::env::var("GELACO_SKIP_WGPU").is_err() {
            let gpu = crate::backend::select(crate::backend::DeviceChoice::Gpu);
            d.push(gpu.expect("no WGPU adapter: install mesa-vulkan-drivers or set GELACO_SKIP_WGPU=1").device);
        }
        d
    }

    #[test]
    fn codes_kept_on_the_device_give_the_host_dequantised_matrix_bit_for_bit() {
        for device in devices() {
            codes_on(&device);
        }
    }

    fn codes_on(device: &Device) {
        let (rows, cols) = (8, 512);
        let kinds = [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::F16,
            GgmlType::BF16,
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            let (_file, bytes) = random_matrix(kind, rows, cols, i as u64 + 1);
            // q/k rows permuted as llama.cpp stores them, for half of the types
            let heads = (i % 2 == 0).then_some(2);
            let host = Resident::new(u64::MAX);
            let codes = Resident::keeping_codes(u64::MAX, true);
            let a = StoredMatrix::new("m".into(), kind, bytes.clone(), rows, cols, heads, &host, device).unwrap();
            let b = StoredMatrix::new("m".into(), kind, bytes, rows, cols, heads, &codes, device).unwrap();
            let (x, y) = (a.dense_t(), b.dense_t());
            assert_eq!(y.dims(), [cols, rows]);
            let (x, y) = (crate::model::llama::download(x).unwrap().data, crate::model::llama::download(y).unwrap().data);
            for (j, (p, q)) in x.iter().zip(&y).enumerate() {
                // a GPU may flush a value below f32's smallest normal number to zero
                let flushed = *q == 0.0 && p.abs() < f32::MIN_POSITIVE;
                assert!(p.to_bits() == q.to_bits() || flushed, "{device:?} {} element {j}: {p} vs {q}", kind.name());
            }
            let s = codes.stats();
            assert_eq!(s.codes_bytes, DeviceCodes::bytes_for(kind, rows, cols), "{}", kind.name());
            assert_eq!(s.bytes, s.codes_bytes + (rows * cols * 4) as u64);
            assert!(s.codes_bytes * 2 <= (rows * cols * 4) as u64, "{}: codes take {} bytes", kind.name(), s.codes_bytes);
        }
    }

    #[test]
    fn on_a_gpu_every_kept_type_is_dequantised_inside_the_product_without_an_f32_copy() {
        // the WGPU adapter, where burn's quantised matrix product and the product's own kernel run
        for device in devices().into_iter().skip(1) {
            // neither dimension a multiple of the kernel's tile
            let (rows, cols) = (96, 512);
            for (i, kind) in KEPT_TYPES.into_iter().enumerate() {
                let (_file, bytes) = random_matrix(kind, rows, cols, 10 + i as u64);
                let host = Resident::new(u64::MAX);
                let codes = Resident::keeping_codes(u64::MAX, true);
                let a = StoredMatrix::new("m".into(), kind, bytes.clone(), rows, cols, Some(4), &host, &device).unwrap();
                let b = StoredMatrix::new("m".into(), kind, bytes, rows, cols, Some(4), &codes, &device).unwrap();
                let dense = a.dense_t();
                for m in [5, 70] {
                    let x = Tensor::<2>::random([m, cols], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
                    let want = crate::model::llama::download(x.clone().matmul(dense.clone())).unwrap().data;
                    let got = crate::model::llama::download(b.product(x)).unwrap().data;
                    assert_eq!(got.len(), m * rows);
                    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
                    let worst = want.iter().zip(&got).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
                    assert!(worst <= 1e-5 * scale, "{} ({m} rows): the product differs by {worst} (values up to {scale})", kind.name());
                }
                let s = codes.stats();
                assert_eq!((s.bytes, s.codes_bytes), (DeviceCodes::bytes_for(kind, rows, cols), DeviceCodes::bytes_for(kind, rows, cols)), "{}: no f32 copy", kind.name());
                let burns = b.device_codes().quantized_t().is_some();
                assert_eq!(burns, burn_scheme(kind).is_some(), "{}: burn's quantised tensor where its scheme holds the type", kind.name());
                if !burns {
                    // the identity's product reads every value once, as the host dequantises it
                    let eye = Tensor::<2>::eye(cols, &device);
                    let got = crate::model::llama::download(b.product(eye)).unwrap().data;
                    let want = crate::model::llama::download(dense.clone()).unwrap().data;
                    for (j, (p, q)) in want.iter().zip(&got).enumerate() {
                        let flushed = *q == 0.0 && p.abs() < f32::MIN_POSITIVE;
                        let (r, c) = (j % rows, j / rows);
                        let block = (r * cols + c) / kind.block_layout().unwrap().0;
                        assert!(p == q || flushed, "{} row {r} column {c} (block {block}): {p} vs {q}", kind.name());
                    }
                    // the f16 copy an f16 product multiplies: each value the host's, rounded to f16
                    let halves = b.device_codes().f16_copy().unwrap();
                    assert_eq!((halves.dims(), halves.dtype()), ([rows, cols], burn::tensor::DType::F16), "{}", kind.name());
                    let got = crate::model::llama::download(halves.cast(burn::tensor::FloatDType::F32)).unwrap().data;
                    for (j, q) in got.iter().enumerate() {
                        let (r, c) = (j / cols, j % cols);
                        let p = want[c * rows + r];
                        let rounded = half::f16::from_f32(p).to_f32();
                        // a GPU may flush a value below f16's smallest normal number to zero
                        let flushed = *q == 0.0 && rounded.abs() < half::f16::MIN_POSITIVE.to_f32();
                        let block = (r * cols + c) / kind.block_layout().unwrap().0;
                        assert!(rounded == *q || flushed, "{} as f16, row {r} column {c} (block {block}): {p} rounds to {rounded}, got {q}", kind.name());
                    }
                }
                // the f32 copy that merging and healing read is the host's, bit for bit
                let (p, q) = (crate::model::llama::download(a.dense_t()).unwrap().data, crate::model::llama::download(b.dense_t()).unwrap().data);
                assert!(p.iter().zip(&q).all(|(p, q)| p.to_bits() == q.to_bits() || (*q == 0.0 && p.abs() < f32::MIN_POSITIVE)), "{}", kind.name());
            }
        }
    }

    #[test]
    fn on_an_adapter_with_f16_shaders_products_in_f16_stay_within_a_part_in_500() {
        for device in devices().into_iter().skip(1) {
            if crate::backend::check_precision(&device, Precision::F16).is_err() {
                eprintln!("{device:?} has no f16 shaders: nothing to compare");
                continue;
            }
            let (rows, cols) = (96, 512);
            // activations in the thousands, whose products f16 could not hold unscaled
            let x = Tensor::<2>::random([70, cols], burn::tensor::Distribution::Normal(0.0, 1000.0), &device);
            let compare = |name: &str, w: &Weight| {
                let want = crate::model::llama::download(w.product_in(x.clone(), Precision::F32)).unwrap().data;
                let got_t = w.product_in(x.clone(), Precision::F16);
                assert_eq!(got_t.dtype(), burn::tensor::DType::F32, "{name}: f32 out");
                let got = crate::model::llama::download(got_t).unwrap().data;
                let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
                let worst = want.iter().zip(&got).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
                eprintln!("{name}: f16 against f32 differs by {:.2e} of the largest output", worst / scale);
                // every kept type, the product's own kernel's too, multiplies f16 operands
                assert!(worst > 0.0, "{name}: an f16 product rounds its operands");
                assert!(worst <= 2e-3 * scale, "{name}: f16 differs by {worst} (values up to {scale})");
            };
            for (i, kind) in KEPT_TYPES.into_iter().chain([GgmlType::F32]).enumerate() {
                let (_file, bytes) = random_matrix(kind, rows, cols, 40 + i as u64);
                let codes = Resident::keeping_codes(u64::MAX, true);
                let m = StoredMatrix::new("m".into(), kind, bytes, rows, cols, None, &codes, &device).unwrap();
                compare(&kind.name(), &Weight::Stored(m.clone()));
                if m.keeps_codes() {
                    // and keeps no f32 copy of the matrix to do so
                    let s = codes.stats();
                    assert_eq!(s.bytes, s.codes_bytes, "{}: {} bytes beside the codes", kind.name(), s.bytes - s.codes_bytes);
                }
                if i == 0 {
                    compare("a dense weight", &Weight::Dense(m.dense_t()));
                }
            }
        }
    }

    #[test]
    fn the_next_matrix_is_read_ahead_on_another_thread_with_the_same_values() {
        let device = Device::flex();
        let (rows, cols) = (16, 64);
        // room for one matrix of three: two of them stream from the file on every pass
        let resident = Resident::new((rows * cols * 4) as u64);
        let files: Vec<_> = (0..3).map(|i| random_matrix(GgmlType::Q4_1, rows, cols, 20 + i)).collect();
        let matrices: Vec<_> =
            files.iter().map(|(_, b)| StoredMatrix::new("m".into(), GgmlType::Q4_1, b.clone(), rows, cols, None, &resident, &device).unwrap()).collect();
        let want: Vec<Vec<f32>> = matrices.iter().map(|m| transpose(&m.host().data, rows, cols)).collect();
        for pass in 0..3 {
            for (i, (m, w)) in matrices.iter().zip(&want).enumerate() {
                let got = crate::model::llama::download(m.dense_t()).unwrap().data;
                assert!(got.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()), "pass {pass}, matrix {i}");
            }
        }
        let s = resident.stats();
        assert!(s.read_ahead >= 3, "{s:?}");
        assert!(s.bytes <= s.budget, "{s:?}");
    }

    #[test]
    fn codes_outrank_f32_copies_in_the_budget() {
        let r = Resident::keeping_codes(40, true);
        let codes = || Arc::new(DeviceCodes::upload(&nan_codes(1, 32), 1, 32, &Device::flex()));
        r.get(1, 16, || tensor(1.0));
        r.get(1, 16, || tensor(1.0));
        r.get(2, 16, || tensor(2.0));
        // codes used once let go of f32 copies used more often than them
        r.get_codes(3, 16, codes);
        let s = r.stats();
        assert_eq!((s.bytes, s.codes_bytes, s.evictions), (32, 16, 1), "{s:?}");
        // an f32 copy never lets go of codes, however often it is used
        for _ in 0..5 {
            r.get(4, 32, || tensor(4.0));
        }
        let s = r.stats();
        assert_eq!(s.codes_bytes, 16, "{s:?}");
        assert!(s.bytes <= 40, "{s:?}");
    }

    #[test]
    fn a_cycle_longer_than_the_budget_keeps_a_fixed_set() {
        let r = Resident::new(32);
        let mut made = 0;
        for _ in 0..5 {
            for k in 0..4 {
                r.get(k, 16, || {
                    made += 1;
                    tensor(0.0)
                });
            }
        }
        // two of four fit: after the first pass, two of every four uses are hits
        assert_eq!(made, 4 + 4 * 2);
    }

    #[test]
    fn a_reservation_shrinks_the_budget_letting_go_of_the_least_used_and_gives_it_back() {
        let r = Resident::new(48);
        for (k, uses) in [(1, 3), (2, 1), (3, 2)] {
            for _ in 0..uses {
                r.get(k, 16, || tensor(k as f32));
            }
        }
        assert_eq!(r.stats().bytes, 48);
        let held = r.reserve(20);
        assert_eq!((held.bytes(), r.budget()), (20, 28));
        // 2 (used once) goes first, then 3: only 1, the most used, fits in 28 bytes
        let s = r.stats();
        assert_eq!((s.bytes, s.evictions), (16, 2));
        let made = std::cell::Cell::new(0);
        r.get(1, 16, || {
            made.set(1);
            tensor(1.0)
        });
        assert_eq!(made.get(), 0, "the most used matrix stayed");
        // more than the budget takes all of it, and no more
        let all = r.reserve(1000);
        assert_eq!((all.bytes(), r.budget(), r.stats().bytes), (28, 0, 0));
        drop(all);
        drop(held);
        assert_eq!(r.budget(), 48);
        // an unbounded budget stays unbounded
        let open = Resident::new(u64::MAX);
        let none = open.reserve(1 << 30);
        assert_eq!((none.bytes(), open.budget()), (0, u64::MAX));
    }
}
