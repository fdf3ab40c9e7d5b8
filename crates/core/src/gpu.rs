//! The one wgpu device everything runs on: the WGSL image operations and, on hardware GPUs,
//! burn's wgpu backend for the model.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

/// Turns off Mesa's `VK_LAYER_MESA_device_select`, an implicit Vulkan layer that asks the
/// Wayland compositor for the default GPU and, headless, prints `error: XDG_RUNTIME_DIR is
/// invalid or not set` twice, which reads as a failure. cutout picks its adapter itself
/// (`DevicePreference`), so the layer's ordering is not needed. Kept if the user set
/// `NODEVICE_SELECT` (the layer's own switch) either way.
///
/// # Safety
/// Sets a process-wide environment variable: call it before any other thread exists (at
/// the start of `main`), as for [`std::env::set_var`].
pub unsafe fn quiet_device_select_layer() {
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: the caller guarantees no other thread reads the environment meanwhile.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// Which adapter to use (`CUTOUT_DEVICE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePreference {
    /// A hardware GPU when there is one, else the software fallback adapter.
    #[default]
    Auto,
    /// A hardware GPU or an error.
    Gpu,
    /// The software fallback adapter (Mesa lavapipe on Linux).
    Cpu,
}

impl DevicePreference {
    pub fn from_env() -> Result<Self> {
        match std::env::var("CUTOUT_DEVICE") {
            Ok(value) => value.parse(),
            Err(_) => Ok(Self::Auto),
        }
    }
}

impl std::str::FromStr for DevicePreference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(Error::InvalidArgument(format!(
                "CUTOUT_DEVICE must be auto, gpu or cpu, not '{other}'"
            ))),
        }
    }
}

/// Shared handle to the device, queue and burn's view of the same device.
#[derive(Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// burn's wgpu runtime registered on `device`/`queue` (not a second device).
    pub burn_device: burn::tensor::Device,
    /// Why the device was lost (driver reset, GPU removed, `destroy`), once it is.
    lost: Arc<OnceLock<String>>,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Gpu({} via {:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }
}

impl Gpu {
    /// Opens the device chosen by `CUTOUT_DEVICE` (default `auto`).
    pub fn from_env() -> Result<Self> {
        Self::new(DevicePreference::from_env()?)
    }

    pub fn new(preference: DevicePreference) -> Result<Self> {
        pollster::block_on(Self::open(preference))
    }

    /// Why the device was lost, if it was: nothing submitted to it will run again, and
    /// only a new `Gpu` (and everything made on it) recovers.
    pub fn lost(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }

    /// True when the adapter is a real GPU rather than a CPU rasteriser.
    pub fn is_hardware(&self) -> bool {
        self.info.device_type != wgpu::DeviceType::Cpu
    }

    async fn open(preference: DevicePreference) -> Result<Self> {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        // GL adds nothing for compute here and its software path is slower than lavapipe.
        descriptor.backends &= wgpu::Backends::PRIMARY;
        let instance = wgpu::Instance::new(descriptor);
        let adapters = instance.enumerate_adapters(wgpu::Backends::PRIMARY).await;
        let is_hardware = |a: &wgpu::Adapter| a.get_info().device_type != wgpu::DeviceType::Cpu;
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let names: Vec<String> = adapters
            .iter()
            .map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().device_type))
            .collect();
        let adapter = adapters
            .into_iter()
            .filter(|a| match preference {
                DevicePreference::Auto => true,
                DevicePreference::Gpu => is_hardware(a),
                DevicePreference::Cpu => !is_hardware(a),
            })
            .min_by_key(rank)
            .ok_or_else(|| {
                let hint = match preference {
                    DevicePreference::Cpu | DevicePreference::Auto => {
                        " (install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
                    }
                    DevicePreference::Gpu => " (set CUTOUT_DEVICE=cpu to use the software adapter)",
                };
                Error::NoAdapter(format!(
                    "CUTOUT_DEVICE={preference:?} matched none of {names:?}{hint}"
                ))
            })?;

        let info = adapter.get_info();
        // The same features and limits burn's own initialisation asks for, so its runtime
        // accepts this device.
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("cutout"),
                required_features: adapter
                    .features()
                    .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
                required_limits: adapter.limits(),
                memory_hints: wgpu::MemoryHints::MemoryUsage,
                trace: wgpu::Trace::Off,
                // SAFETY: mirrors burn/cubecl's device request; cutout itself submits only
                // validated WGSL.
                experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("{}: {e}", info.name)))?;

        let setup = burn::tensor::wgpu::WgpuSetup {
            instance,
            adapter,
            device: device.clone(),
            queue: queue.clone(),
            backend: info.backend,
        };
        let burn_device = burn::tensor::Device::wgpu_options()
            .setup(setup)
            .init()
            .map_err(|e| Error::NoAdapter(format!("burn could not use {}: {e}", info.name)))?;

        // After burn's initialisation, so that this callback is the one the device keeps.
        let lost = Arc::new(OnceLock::new());
        let record = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if matches!(
                reason,
                wgpu::DeviceLostReason::Unknown | wgpu::DeviceLostReason::Destroyed
            ) {
                log::error!("the GPU device was lost ({reason:?}): {message}");
                let _ = record.set(format!("{reason:?}: {message}"));
            }
        });

        log::info!(
            "device: {} ({:?}, {:?}, driver {} {})",
            info.name,
            info.device_type,
            info.backend,
            info.driver,
            info.driver_info
        );
        Ok(Self {
            device,
            queue,
            info,
            burn_device,
            lost,
        })
    }
}
