//! Compute device choice: a WGPU adapter (Vulkan, Metal or DX12, chosen by enumerating the
//! adapters ourselves) or the CPU backend.
//!
//! The CPU backend is burn's `flex` (pure Rust, gemm + rayon + SIMD). burn 0.22 also offers
//! `ndarray` (deprecated there) and a CubeCL `cpu` backend (its build downloads LLVM, which
//! cannot happen offline). Measured on a 2-core AVX-512 machine, `flex` runs the
//! one-token matrix-vector products of generation 16x faster than `ndarray` (40 against
//! 2.5 GFLOP/s for 1x576x1536) and batched matrix products at 60-110% of its speed.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use burn::tensor::wgpu::{WgpuBackend, wgpu};
use burn::tensor::{Device, DeviceKind};

use crate::error::{Error, Result};

/// The compute device a user asks for, written `auto`, `gpu`, `cpu` or `gpu:N` (in
/// settings files too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// A real GPU when one exists, else the CPU backend.
    #[default]
    Auto,
    /// The best WGPU adapter, software adapters included.
    Gpu,
    /// burn's CPU backend.
    Cpu,
    /// The WGPU adapter numbered so by [`adapters`] (and `gelaco devices`): one process per
    /// GPU of a machine.
    Adapter(u16),
}

impl DeviceChoice {
    /// The choices without a number, with what each means.
    pub const NAMED: [(DeviceChoice, &'static str); 3] = [
        (DeviceChoice::Auto, "a real GPU when one exists, else the CPU backend"),
        (DeviceChoice::Gpu, "the best WGPU adapter, software adapters included"),
        (DeviceChoice::Cpu, "burn's CPU backend"),
    ];
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Gpu => f.write_str("gpu"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Adapter(n) => write!(f, "gpu:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let wrong = || format!("'{text}' is not a device: write auto, gpu, cpu or gpu:N (N as `gelaco devices` numbers the adapters)");
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "gpu" => Ok(DeviceChoice::Gpu),
            "cpu" => Ok(DeviceChoice::Cpu),
            other => match other.strip_prefix("gpu:") {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().map(DeviceChoice::Adapter).map_err(|_| wrong()),
                _ => Err(wrong()),
            },
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(text: String) -> std::result::Result<Self, String> {
        text.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(choice: DeviceChoice) -> String {
        choice.to_string()
    }
}

/// What the forward's matrix products compute in, written `f32` or `f16`: with `f16` (on a
/// WGPU adapter whose shaders compute in f16) every projection (whatever type its weight is
/// kept in) and attention's two products take f16 operands, as PyTorch's autocast does,
/// while norms, RoPE, softmax, the residual stream and the LM head stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            _ => Err(format!("'{text}' is not a precision: write f32 or f16")),
        }
    }
}

/// The devices started on an adapter whose shaders compute in f16.
static F16_DEVICES: Mutex<Vec<Device>> = Mutex::new(Vec::new());

/// Whether `device` has f16 arithmetic worth using: a WGPU adapter with f16 shaders.
pub fn computes_f16(device: &Device) -> bool {
    F16_DEVICES.lock().is_ok_and(|d| d.contains(device))
}

/// Whether `device` computes in `precision`: f32 everywhere; f16 on a WGPU adapter with f16
/// shaders, not on the CPU backend (whose f16 arithmetic is far slower than its f32). The
/// error says which device lacks it.
pub fn check_precision(device: &Device, precision: Precision) -> Result<()> {
    if precision.is_f32() || computes_f16(device) {
        return Ok(());
    }
    let which = if is_cpu(device) {
        "the CPU backend computes in f32 only"
    } else {
        "this WGPU adapter's shaders have no f16 (`gelaco devices` marks those that do)"
    };
    Err(Error::Invalid(format!("{precision} precision (--precision {precision}) needs a WGPU adapter whose shaders compute in f16: {which}; use f32")))
}

/// The kind of backend a device runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Wgpu,
    Cpu,
}

/// A chosen device with a description for the user.
#[derive(Clone, Debug)]
pub struct ComputeDevice {
    pub device: Device,
    pub backend: BackendKind,
    /// e.g. "wgpu: llvmpipe (LLVM 15.0.6, 256 bits) [Vulkan, Cpu]" or "cpu: flex".
    pub description: String,
    /// A one-line notice for the user when `auto` fell back or chose something unexpected.
    pub notice: Option<String>,
    /// The memory a loaded model may use, in bytes; `None`: what the machine reports
    /// available (or a discrete GPU's own memory, where that is less), less a quarter (see
    /// [`crate::model::plan_memory`]).
    pub memory_budget: Option<u64>,
    /// The memory of the device's own, where it has memory apart from the host's (a
    /// discrete GPU; see [`AdapterDesc::own_memory`]).
    pub device_memory: Option<u64>,
    /// Whether block-quantised weights are kept on the device as their codes and
    /// dequantised there when used (WGPU: the device's memory is what limits it), rather
    /// than dequantised on the host from the memory-mapped file (the CPU backend, whose
    /// memory the mapped file already is).
    pub codes_on_device: bool,
    /// What the forward's matrix products compute in (see [`Precision`]).
    pub precision: Precision,
}

/// burn compiles its WGPU kernels on CubeCL's device threads, where a kernel whose
/// construction panics (an autotune candidate that does not suit a shape, as some of the
/// quantised matrix product's do) is caught and counted as a candidate that cannot run; the
/// process's panic hook would still print each of those panics first. This hook sends them
/// to the debug log instead (`--verbose`) and leaves every other panic to the hook before it.
pub fn quiet_kernel_candidate_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let device_thread = std::thread::current().name().is_some_and(|n| n.starts_with("DSD-"));
        let in_cubecl = info.location().is_some_and(|l| l.file().contains("cubecl"));
        if device_thread && in_cubecl {
            tracing::debug!(panic = %info, "a kernel candidate could not be built");
            return;
        }
        previous(info)
    }));
}

/// Whether `device` is the CPU backend, where kernels cost nothing to compile for a new
/// shape, so batches need no padding to a few fixed lengths.
pub fn is_cpu(device: &Device) -> bool {
    *device == Device::flex()
}

/// One WGPU adapter as the system reports it.
#[derive(Debug, Clone)]
pub struct AdapterDesc {
    pub name: String,
    pub backend: String,
    pub api: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    /// Whether its shaders compute in f16 (wgpu's `SHADER_F16`), which `--precision f16`
    /// needs.
    pub shader_f16: bool,
    /// Its largest device-local memory heap, in bytes, as Vulkan reports it (`None` on
    /// Metal and DX12, whose memory this tool does not read).
    pub heap: Option<u64>,
    /// What of that heap the driver's budget leaves this process (memory other programs
    /// hold on the device is not in it), where the driver reports it (`VK_EXT_memory_budget`).
    pub heap_free: Option<u64>,
}

impl AdapterDesc {
    pub fn is_hardware(&self) -> bool {
        matches!(
            self.device_type,
            wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu
        )
    }

    fn rank(&self) -> u8 {
        match self.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        }
    }

    /// The memory of its own that bounds what a model may keep on it: a discrete GPU's
    /// device-local heap, or what of it the driver's budget leaves this process where the
    /// driver reports that. An integrated GPU or a software adapter uses the host's memory
    /// (its device-local heap, where it reports one, is a part of that memory or a small
    /// carve-out beside what it can use), so the host's available memory bounds it instead.
    pub fn own_memory(&self) -> Option<u64> {
        self.heap_free.or(self.heap).filter(|_| self.device_type == wgpu::DeviceType::DiscreteGpu)
    }

    pub fn describe(&self) -> String {
        let driver = if self.driver.is_empty() { String::new() } else { format!(", {}", self.driver) };
        let f16 = if self.shader_f16 { ", f16" } else { "" };
        let memory = self.own_memory().map(|m| format!(", {}", crate::model::gib(m))).unwrap_or_default();
        format!("{} [{}, {:?}{}{}{}]", self.name, self.backend, self.device_type, driver, f16, memory)
    }
}

static ADAPTERS: OnceLock<Vec<AdapterDesc>> = OnceLock::new();

/// The adapters [`adapters`] found, when it has been asked (without asking the system:
/// a window's frame never waits on it).
pub fn known_adapters() -> Option<Vec<AdapterDesc>> {
    ADAPTERS.get().cloned()
}

/// The WGPU adapters of this machine (Vulkan, Metal, DX12), best kind first; `gpu:N` is
/// the Nth of them.
pub fn adapters() -> Vec<AdapterDesc> {
    ADAPTERS
        .get_or_init(|| {
            let backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                backends,
                ..wgpu::InstanceDescriptor::new_without_display_handle()
            });
            let mut found: Vec<AdapterDesc> = pollster::block_on(instance.enumerate_adapters(backends))
                .iter()
                .map(|a| {
                    let info = a.get_info();
                    let heap = vulkan_heap(a);
                    AdapterDesc {
                        name: info.name,
                        backend: format!("{:?}", info.backend),
                        api: info.backend,
                        device_type: info.device_type,
                        driver: info.driver_info,
                        shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
                        heap: heap.map(|(size, _)| size),
                        heap_free: heap.and_then(|(_, free)| free),
                    }
                })
                .collect();
            found.sort_by_key(AdapterDesc::rank);
            found
        })
        .clone()
}

/// A Vulkan adapter's largest device-local memory heap (`None` for other APIs): its size, and
/// what of it the driver's budget leaves this process (the heap's budget less this process's
/// use, through `VK_EXT_memory_budget`), where the driver reports one.
fn vulkan_heap(adapter: &wgpu::Adapter) -> Option<(u64, Option<u64>)> {
    use ash::vk;
    const DEVICE_LOCAL: vk::MemoryHeapFlags = vk::MemoryHeapFlags::DEVICE_LOCAL;
    // SAFETY: only reads the physical device's memory properties through the instance that
    // enumerated it; nothing is created, kept or destroyed.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let instance = hal.shared_instance();
    let physical = hal.raw_physical_device();
    let capabilities = hal.physical_device_capabilities();
    // vkGetPhysicalDeviceMemoryProperties2 is Vulkan 1.1, for the instance and the device
    let v1_1 = instance.instance_api_version() >= vk::API_VERSION_1_1 && capabilities.properties().api_version >= vk::API_VERSION_1_1;
    let reports_budget = v1_1 && capabilities.supports_extension(ash::ext::memory_budget::NAME);
    let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
    let properties = if v1_1 {
        let mut properties = vk::PhysicalDeviceMemoryProperties2::default();
        if reports_budget {
            properties = properties.push_next(&mut budget);
        }
        // SAFETY: as above; the budget structure is chained only where the device has the
        // extension that defines it
        unsafe { instance.raw_instance().get_physical_device_memory_properties2(physical, &mut properties) };
        properties.memory_properties
    } else {
        // SAFETY: as above
        unsafe { instance.raw_instance().get_physical_device_memory_properties(physical) }
    };
    let count = (properties.memory_heap_count as usize).min(properties.memory_heaps.len());
    let (i, heap) = properties.memory_heaps[..count].iter().enumerate().filter(|(_, h)| h.flags.contains(DEVICE_LOCAL)).max_by_key(|(_, h)| h.size)?;
    let free = reports_budget.then(|| budget.heap_budget[i].saturating_sub(budget.heap_usage[i])).filter(|&f| f > 0);
    Some((heap.size, free))
}

/// The adapter of `all` that `choice` selects, as [`select`] takes it (`None`: the CPU
/// backend, or a number past the last adapter).
pub fn chosen_adapter(choice: DeviceChoice, all: &[AdapterDesc]) -> Option<&AdapterDesc> {
    match choice {
        DeviceChoice::Cpu => None,
        DeviceChoice::Gpu => all.first(),
        DeviceChoice::Adapter(n) => all.get(usize::from(n)),
        DeviceChoice::Auto => auto_adapter(all).map(|i| &all[i]),
    }
}

/// The own memory ([`AdapterDesc::own_memory`]) of the device `choice` selects, without
/// starting it: `None` for the CPU backend, an adapter that shares the host's memory, or a
/// choice that names no adapter.
pub fn own_memory(choice: DeviceChoice) -> Option<u64> {
    // the CPU backend names no adapter, and the adapters are not asked for it
    if choice == DeviceChoice::Cpu {
        return None;
    }
    chosen_adapter(choice, &adapters())?.own_memory()
}

/// Whether the device `choice` selects keeps block-quantised weights on the device as their
/// codes (as [`ComputeDevice::codes_on_device`] says once it is started): any WGPU adapter,
/// not the CPU backend.
pub fn codes_on_device(choice: DeviceChoice) -> bool {
    choice != DeviceChoice::Cpu && chosen_adapter(choice, &adapters()).is_some()
}

/// How burn addresses adapter `index` of `all`: its graphics API, and its kind numbered
/// among the adapters of that kind and API before it.
fn address(all: &[AdapterDesc], index: usize) -> (WgpuBackend, DeviceKind) {
    let adapter = &all[index];
    let n = all[..index].iter().filter(|a| a.device_type == adapter.device_type && a.api == adapter.api).count();
    let kind = match adapter.device_type {
        wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(n),
        wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(n),
        wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(n),
        _ => DeviceKind::Cpu,
    };
    let api = match adapter.api {
        wgpu::Backend::Vulkan => WgpuBackend::Vulkan,
        wgpu::Backend::Metal => WgpuBackend::Metal,
        wgpu::Backend::Dx12 => WgpuBackend::Dx12,
        _ => WgpuBackend::Auto,
    };
    (api, kind)
}

/// Devices are created once per process: burn refuses to initialise a runtime twice.
fn wgpu_device(api: WgpuBackend, kind: DeviceKind) -> Result<Device> {
    static DEVICES: OnceLock<Mutex<HashMap<(WgpuBackend, DeviceKind), Device>>> = OnceLock::new();
    let map = DEVICES.get_or_init(Default::default);
    let mut map = map.lock().map_err(|_| Error::Device("device registry poisoned".into()))?;
    if let Some(d) = map.get(&(api, kind.clone())) {
        return Ok(d.clone());
    }
    let device = Device::wgpu_options()
        .graphics_api(api)
        .device_kind(kind.clone())
        .init()
        .map_err(|e| Error::Device(format!("could not start WGPU adapter {kind:?} on {api:?}: {e}")))?;
    map.insert((api, kind), device.clone());
    Ok(device)
}

/// Adapter `index` of `all` as a compute device.
fn adapter_device(all: &[AdapterDesc], index: usize, notice: Option<String>) -> Result<ComputeDevice> {
    let adapter = &all[index];
    let (api, kind) = address(all, index);
    if kind == DeviceKind::Cpu && all[..index].iter().any(|a| !a.is_hardware() && a.api == adapter.api) {
        return Err(Error::Device(format!(
            "gpu:{index} ({}) is a second software adapter on {:?}, which burn cannot address; use an earlier one",
            adapter.describe(),
            adapter.api
        )));
    }
    let device = wgpu_device(api, kind)?;
    if adapter.shader_f16 {
        if let Ok(mut d) = F16_DEVICES.lock() {
            if !d.contains(&device) {
                d.push(device.clone());
            }
        }
    }
    Ok(ComputeDevice {
        device,
        backend: BackendKind::Wgpu,
        description: format!("wgpu gpu:{index}: {}", adapter.describe()),
        notice,
        memory_budget: None,
        device_memory: adapter.own_memory(),
        codes_on_device: true,
        precision: Precision::F32,
    })
}

fn cpu() -> ComputeDevice {
    ComputeDevice {
        device: Device::flex(),
        backend: BackendKind::Cpu,
        description: "cpu: burn flex".into(),
        notice: None,
        memory_budget: None,
        device_memory: None,
        codes_on_device: false,
        precision: Precision::F32,
    }
}

/// The adapter of `all` that `auto` takes: the first real GPU (`None`: the CPU backend).
pub fn auto_adapter(all: &[AdapterDesc]) -> Option<usize> {
    all.iter().position(AdapterDesc::is_hardware)
}

/// Choose the compute device for `choice`.
pub fn select(choice: DeviceChoice) -> Result<ComputeDevice> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Gpu => {
            let all = adapters();
            if all.is_empty() {
                return Err(Error::Device(
                    "no WGPU adapter found (on Linux without a GPU, install a software Vulkan driver: apt-get install mesa-vulkan-drivers)"
                        .into(),
                ));
            }
            adapter_device(&all, 0, None)
        }
        DeviceChoice::Adapter(n) => {
            let all = adapters();
            let index = usize::from(n);
            if index >= all.len() {
                return Err(Error::Device(match all.len() {
                    0 => format!("there is no WGPU adapter gpu:{n}: this machine has none"),
                    1 => format!("there is no WGPU adapter gpu:{n}: this machine has one, gpu:0 (`gelaco devices` lists it)"),
                    k => format!("there is no WGPU adapter gpu:{n}: this machine has {k}, gpu:0 to gpu:{} (`gelaco devices` lists them)", k - 1),
                }));
            }
            adapter_device(&all, index, None)
        }
        DeviceChoice::Auto => {
            let all = adapters();
            match auto_adapter(&all) {
                Some(best) => adapter_device(&all, best, Some(format!("using GPU adapter {}", all[best].describe()))),
                None => {
                    let mut c = cpu();
                    c.notice = Some(if all.is_empty() {
                        "no GPU adapter found; using the CPU backend".into()
                    } else {
                        format!(
                            "no GPU adapter found (only software adapter {}); using the CPU backend, which is faster here (the device choice `gpu` forces WGPU)",
                            all[0].name
                        )
                    });
                    Ok(c)
                }
            }
        }
    }
}

/// The f32 matrix-product rate of `device`, in floating-point operations per second (two per
/// multiply-add): the median of `repeats` products of an `[m, k]` by a `[k, n]` matrix,
/// after one warm-up (which compiles the kernel on WGPU), each timed until its result is
/// read back.
pub fn matmul_rate(device: &Device, (m, k, n): (usize, usize, usize), repeats: usize) -> Result<f64> {
    use burn::tensor::{Tensor, TensorData};
    if m == 0 || k == 0 || n == 0 {
        return Err(Error::Invalid(format!("a matrix product of {m}x{k} by {k}x{n} has no work to time")));
    }
    let filled = |rows: usize, cols: usize, salt: usize| {
        let values: Vec<f32> = (0..rows * cols).map(|i| (((i * 7919 + salt) % 2003) as f32 / 2003.0) - 0.5).collect();
        Tensor::<2>::from_data(TensorData::new(values, [rows, cols]), device)
    };
    let (a, b) = (filled(m, k, 1), filled(k, n, 2));
    let once = || -> Result<f64> {
        let start = std::time::Instant::now();
        let sum = a.clone().matmul(b.clone()).sum().into_scalar::<f32>();
        let seconds = start.elapsed().as_secs_f64();
        if !sum.is_finite() {
            return Err(Error::Numerical(format!("a {m}x{k} by {k}x{n} matrix product on this device is not finite")));
        }
        Ok(seconds)
    };
    once()?;
    let mut times = (0..repeats.max(1)).map(|_| once()).collect::<Result<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    Ok(2.0 * (m * k * n) as f64 / times[times.len() / 2].max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_product_rate_is_measured_and_an_empty_product_refused() {
        let cpu = cpu();
        let rate = matmul_rate(&cpu.device, (64, 96, 80), 3).unwrap();
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
        assert!(matches!(matmul_rate(&cpu.device, (0, 96, 80), 3), Err(Error::Invalid(_))));
    }

    #[test]
    fn device_choices_read_and_write_as_their_names() {
        for (text, choice) in [("auto", DeviceChoice::Auto), ("gpu", DeviceChoice::Gpu), ("cpu", DeviceChoice::Cpu), ("gpu:3", DeviceChoice::Adapter(3))] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(choice));
            assert_eq!(choice.to_string(), text);
            let json = serde_json::to_string(&choice).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<DeviceChoice>(&json).unwrap(), choice);
        }
        assert_eq!("GPU:1".parse::<DeviceChoice>(), Ok(DeviceChoice::Adapter(1)));
        for bad in ["", "gpu:", "gpu:-1", "gpu:x", "gpu:99999", "gpu1", "tpu", "gpu: 1"] {
            let e = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(e.contains("gpu:N"), "{bad}: {e}");
            assert!(serde_json::from_str::<DeviceChoice>(&format!("\"{bad}\"")).is_err(), "{bad}");
        }
    }

    fn adapter(name: &str, device_type: wgpu::DeviceType, api: wgpu::Backend) -> AdapterDesc {
        AdapterDesc { name: name.into(), backend: format!("{api:?}"), api, device_type, driver: String::new(), shader_f16: false, heap: None, heap_free: None }
    }

    #[test]
    fn adapters_are_addressed_by_kind_and_api_in_their_order() {
        use wgpu::{Backend, DeviceType};
        let all = [
            adapter("a", DeviceType::DiscreteGpu, Backend::Vulkan),
            adapter("b", DeviceType::DiscreteGpu, Backend::Dx12),
            adapter("c", DeviceType::DiscreteGpu, Backend::Vulkan),
            adapter("d", DeviceType::IntegratedGpu, Backend::Vulkan),
            adapter("e", DeviceType::Cpu, Backend::Vulkan),
        ];
        assert_eq!(address(&all, 0), (WgpuBackend::Vulkan, DeviceKind::DiscreteGpu(0)));
        assert_eq!(address(&all, 1), (WgpuBackend::Dx12, DeviceKind::DiscreteGpu(0)));
        assert_eq!(address(&all, 2), (WgpuBackend::Vulkan, DeviceKind::DiscreteGpu(1)));
        assert_eq!(address(&all, 3), (WgpuBackend::Vulkan, DeviceKind::IntegratedGpu(0)));
        assert_eq!(address(&all, 4), (WgpuBackend::Vulkan, DeviceKind::Cpu));
    }

    #[test]
    fn only_a_discrete_gpu_has_memory_of_its_own() {
        use wgpu::{Backend, DeviceType};
        let with_heap = |t| AdapterDesc { heap: Some(8 << 30), ..adapter("a", t, Backend::Vulkan) };
        assert_eq!(with_heap(DeviceType::DiscreteGpu).own_memory(), Some(8 << 30));
        assert!(with_heap(DeviceType::DiscreteGpu).describe().contains(", 8.00 GiB]"));
        for shared in [DeviceType::IntegratedGpu, DeviceType::Cpu, DeviceType::VirtualGpu] {
            assert_eq!(with_heap(shared).own_memory(), None, "{shared:?}");
            assert!(!with_heap(shared).describe().contains("GiB"));
        }
        // what the driver's budget leaves, where it reports one, bounds it instead
        let busy = AdapterDesc { heap_free: Some(5 << 30), ..with_heap(DeviceType::DiscreteGpu) };
        assert_eq!(busy.own_memory(), Some(5 << 30));
        assert!(busy.describe().contains(", 5.00 GiB]"));
        assert_eq!(AdapterDesc { heap_free: Some(5 << 30), ..with_heap(DeviceType::IntegratedGpu) }.own_memory(), None);
        assert_eq!(adapter("a", DeviceType::DiscreteGpu, Backend::Dx12).own_memory(), None);
        assert_eq!(own_memory(DeviceChoice::Cpu), None);
    }

    /// Every Vulkan adapter reports its memory heaps, and what of them its budget leaves where
    /// it reports one; software Vulkan (lavapipe) is enough.
    #[test]
    fn vulkan_adapters_report_their_device_local_memory() {
        let all = adapters();
        let vulkan: Vec<&AdapterDesc> = all.iter().filter(|a| a.api == wgpu::Backend::Vulkan).collect();
        if vulkan.is_empty() {
            eprintln!("skipped: no Vulkan adapter (install mesa-vulkan-drivers)");
            return;
        }
        for a in vulkan {
            assert!(a.heap.is_some_and(|h| h >= 64 << 20), "{}: heap {:?}", a.describe(), a.heap);
            // a budget the driver reports is some of the heap (lavapipe 22.3 reports none)
            assert!(a.heap_free.is_none_or(|f| f > 0 && Some(f) <= a.heap), "{}: {:?} free of {:?}", a.describe(), a.heap_free, a.heap);
            eprintln!("{}: device-local heap {:?}, free by the driver's budget {:?}", a.describe(), a.heap, a.heap_free);
        }
    }

    #[test]
    fn an_adapter_number_past_the_last_is_an_error_naming_the_range() {
        let n = adapters().len();
        let e = select(DeviceChoice::Adapter(n as u16)).unwrap_err().to_string();
        assert!(e.contains(&format!("gpu:{n}")), "{e}");
    }
}
