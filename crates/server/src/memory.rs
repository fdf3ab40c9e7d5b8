//! Admission by memory: one budget of bytes for all the work in flight, so concurrency is
//! bounded by what requests cost rather than by how many there are. A request is charged
//! its body while it is read, then, from the image's header before any pixel is decoded,
//! its pixels' working copies and the model's forward (`ModelSpec::forward_bytes`). One
//! that does not fit waits up to `Config::admission_wait`, then gets 503 with
//! `Retry-After`: the server slows down instead of being killed for running out of memory.
//! A tokio semaphore (fair, first come first served) counts the bytes in 64 KiB units.

use std::time::Duration;

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes per semaphore permit.
const UNIT: u64 = 64 * 1024;

/// Bytes an image costs per pixel while it is edited on the CPU path: the decoded photo and
/// the pipeline's copy of it, the full-size mask, the placed colour and mask, the composed
/// result, and the encoder's input and output (4 bytes each, rounded up).
pub const BYTES_PER_PIXEL: u64 = 32;

pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    units: u64,
    wait: Duration,
}

/// Bytes claimed for a request until it is dropped, and how long it waited for them.
pub struct Claim {
    permit: OwnedSemaphorePermit,
    waited: Duration,
}

impl Claim {
    fn bytes(&self) -> u64 {
        self.permit.num_permits() as u64 * UNIT
    }

    /// Time spent waiting for this claim's bytes (across `grow`s).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl MemoryBudget {
    pub fn new(bytes: u64, wait: Duration) -> Self {
        let units = bytes.div_ceil(UNIT).max(1);
        Self {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
            wait,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.units * UNIT
    }

    /// Bytes a request needs once its image is known, beyond its body: the pixels of its
    /// image, its background and the most its canvas can add to them (a size it names, the
    /// room `crop_margin` adds: `Edit::canvas_pixels_beyond_input`), `BYTES_PER_PIXEL`
    /// each, and one forward of `model`.
    pub fn image_bytes(pixels: u64, model: &cutout_core::model::ModelSpec) -> u64 {
        pixels * BYTES_PER_PIXEL + model.forward_bytes()
    }

    /// Bytes held by requests now.
    pub fn in_flight(&self) -> u64 {
        (self.units - self.permits.available_permits() as u64) * UNIT
    }

    /// Holds `bytes` (at most the whole budget, so the largest request can always run
    /// alone), waiting up to the admission wait for them; `None` when they did not free up.
    pub async fn admit(&self, bytes: u64) -> Option<Claim> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.units) as u32;
        let acquire = self.permits.clone().acquire_many_owned(units);
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Some(Claim {
                permit,
                waited: started.elapsed(),
            }),
            _ => None,
        }
    }

    /// `held` grown by `bytes`. What it held is given back before waiting, so requests that
    /// each hold a body and wait for their pixels cannot hold each other up.
    pub async fn grow(&self, held: Claim, bytes: u64) -> Option<Claim> {
        let (total, waited) = (held.bytes() + bytes, held.waited);
        drop(held);
        let mut grown = self.admit(total).await?;
        grown.waited += waited;
        Some(grown)
    }
}
