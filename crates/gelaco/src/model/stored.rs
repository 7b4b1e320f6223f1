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
//! of its layers from the file: when a matrix is dequantised, the system is asked to read
//! the next one's bytes from disk meanwhile, and the file pages of a dequantised matrix
//! are let go, so the process holds the budget's matrices and not the file besides.
//! Dequantisation is deterministic, so every result is the same bit for bit whatever the
//! budget.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Tensor, TensorData};
use memmap2::Mmap;

use super::gguf::{dequantize, GgmlType};
use super::weights::{unpermute_rows, HostTensor};

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

    /// Ask the system to read these bytes from disk now, ahead of their use.
    pub fn will_need(&self) {
        #[cfg(unix)]
        let _ = self.map.advise_range(memmap2::Advice::WillNeed, self.range.start, self.range.len());
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
    /// Matrices dequantised (a first use, or a use after being let go).
    pub loads: u64,
    /// Uses served by a matrix already resident.
    pub hits: u64,
    /// Matrices let go to make room.
    pub evictions: u64,
    /// Bytes of dequantised matrices held now, and at most so far.
    pub bytes: u64,
    pub peak_bytes: u64,
    /// The budget, in bytes.
    pub budget: u64,
}

struct Entry {
    tensor: Tensor<2>,
    bytes: u64,
    last: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<usize, Entry>,
    /// Uses of every matrix so far, resident or not.
    uses: HashMap<usize, u64>,
    /// The file bytes of every matrix, by key (keys follow the order of the layers).
    bytes: HashMap<usize, MappedBytes>,
    clock: u64,
    next_key: usize,
    stats: ResidentStats,
}

impl Inner {
    /// The resident matrices as (uses, key, bytes), in the order they are let go: the least
    /// used first, among equals the most recently used (so a cycle over more matrices than
    /// fit keeps a fixed set).
    fn eviction_order(&self) -> Vec<(u64, usize, u64)> {
        let mut order: Vec<(u64, std::cmp::Reverse<u64>, usize, u64)> = self
            .entries
            .iter()
            .map(|(&k, e)| (self.uses.get(&k).copied().unwrap_or(0), std::cmp::Reverse(e.last), k, e.bytes))
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(u, _, k, b)| (u, k, b)).collect()
    }
}

/// The dequantised matrices of one model, within a byte budget.
pub struct Resident {
    inner: Mutex<Inner>,
}

impl fmt::Debug for Resident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resident").field("stats", &self.stats()).finish()
    }
}

impl Resident {
    pub fn new(budget: u64) -> Arc<Self> {
        let inner = Inner { stats: ResidentStats { budget, ..Default::default() }, ..Default::default() };
        Arc::new(Resident { inner: Mutex::new(inner) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic elsewhere while holding the lock leaves the map consistent (every update is
        // one insert or remove), so its contents stay usable
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, bytes: &MappedBytes) -> usize {
        let mut g = self.lock();
        g.next_key += 1;
        let key = g.next_key;
        g.bytes.insert(key, bytes.clone());
        key
    }

    pub fn stats(&self) -> ResidentStats {
        self.lock().stats
    }

    /// The matrix under `key`, made by `make` when it is not resident. A new matrix is
    /// kept when it fits, or when room can be made by letting go of matrices used fewer
    /// times than it (the least used first, among equals the most recent).
    fn get(&self, key: usize, bytes: u64, make: impl FnOnce() -> Tensor<2>) -> Tensor<2> {
        let uses = {
            let mut g = self.lock();
            g.clock += 1;
            let now = g.clock;
            let uses = {
                let u = g.uses.entry(key).or_insert(0);
                *u += 1;
                *u
            };
            if let Some(e) = g.entries.get_mut(&key) {
                e.last = now;
                let t = e.tensor.clone();
                g.stats.hits += 1;
                return t;
            }
            uses
        };
        // the next matrix of the model (in layer order) is likely the next one needed: have
        // its bytes read from disk while this one is dequantised and used
        if let Some(next) = {
            let g = self.lock();
            g.bytes.get(&(key + 1)).filter(|_| !g.entries.contains_key(&(key + 1))).cloned()
        } {
            next.will_need();
        }
        // dequantise outside the lock: other threads keep using what is resident
        let tensor = make();
        let mut g = self.lock();
        g.stats.loads += 1;
        if g.entries.contains_key(&key) || bytes > g.stats.budget {
            return tensor;
        }
        let mut victims = Vec::new();
        let mut freed = 0;
        if g.stats.bytes + bytes > g.stats.budget {
            for (u, k, b) in g.eviction_order() {
                if g.stats.bytes - freed + bytes <= g.stats.budget || u >= uses {
                    break;
                }
                victims.push(k);
                freed += b;
            }
            if g.stats.bytes - freed + bytes > g.stats.budget {
                return tensor;
            }
        }
        for k in victims {
            g.entries.remove(&k);
            g.stats.evictions += 1;
        }
        let now = g.clock;
        g.entries.insert(key, Entry { tensor: tensor.clone(), bytes, last: now });
        g.stats.bytes = g.stats.bytes - freed + bytes;
        g.stats.peak_bytes = g.stats.peak_bytes.max(g.stats.bytes);
        tensor
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
            for (_, k, b) in g.eviction_order() {
                if g.stats.bytes <= g.stats.budget {
                    break;
                }
                g.entries.remove(&k);
                g.stats.bytes -= b;
                g.stats.evictions += 1;
            }
        }
        Reservation { resident: self.clone(), bytes }
    }

    /// Let go of everything resident (the next uses dequantise again).
    pub fn clear(&self) {
        let mut g = self.lock();
        g.entries.clear();
        g.stats.bytes = 0;
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
    ) -> std::result::Result<Self, String> {
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
        let key = resident.key(&bytes);
        Ok(StoredMatrix { name, kind, bytes, rows, cols, permuted_heads, key, resident: resident.clone(), device: device.clone() })
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

    /// The matrix transposed, `[cols, rows]` (`[in, out]`), on the device: resident, or
    /// dequantised now.
    pub fn dense_t(&self) -> Tensor<2> {
        self.resident.get(self.key, self.f32_bytes(), || upload_transposed(&self.host(), &self.device))
    }
}

/// Upload the transpose of a 2-D host matrix `[rows, cols]` as `[cols, rows]`, so that
/// `x.matmul(w)` computes `x @ W^T` as PyTorch's `Linear` does.
pub fn upload_transposed(t: &HostTensor, device: &Device) -> Tensor<2> {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut out = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = t.data[i * c + j];
        }
    }
    Tensor::<2>::from_data(TensorData::new(out, [c, r]), device)
}

/// A projection's weight: a device tensor (`[in, out]`, what merging and healing make), or
/// the stored matrix of the model file.
#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Tensor<2>),
    Stored(Arc<StoredMatrix>),
}

impl Weight {
    /// The weight transposed, `[in, out]`, on the device.
    pub fn dense_t(&self) -> Tensor<2> {
        match self {
            Weight::Dense(t) => t.clone(),
            Weight::Stored(s) => s.dense_t(),
        }
    }

    /// The weight on the host in Hugging Face layout `[out, in]`.
    pub fn host(&self) -> crate::Result<HostTensor> {
        match self {
            Weight::Dense(t) => super::llama::download(t.clone().transpose()),
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
