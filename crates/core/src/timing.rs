//! Where a request's time goes, stage by stage. The stage names are defined here once: the
//! server's per-request log line, `cutout remove --timings` and the metrics use them.

use std::fmt;
use std::time::{Duration, Instant};

/// The stages of one image, in the order it passes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the server's memory for work in flight (`cutout serve`'s admission: for
    /// the body before it is read, then for the image once its size is known).
    Admission,
    /// Reading the request body (or fetching the image URL).
    ReadBody,
    /// Decoding the image bytes into pixels.
    Decode,
    /// Waiting in the job queue for the worker.
    QueueWait,
    /// Upload, resize to the model's input and normalisation (the batch's share).
    Preprocess,
    /// The model's forward pass (the batch's share).
    Forward,
    /// Mask refinement, placement, effects and compositing, until the device is done.
    Effects,
    /// Copying the result back to the host.
    Readback,
    /// Encoding the result (PNG, JPEG, WebP, ZIP).
    Encode,
    /// The whole request, from its first byte to its response.
    Total,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Admission,
        Stage::ReadBody,
        Stage::Decode,
        Stage::QueueWait,
        Stage::Preprocess,
        Stage::Forward,
        Stage::Effects,
        Stage::Readback,
        Stage::Encode,
        Stage::Total,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Admission => "admission",
            Stage::ReadBody => "read_body",
            Stage::Decode => "decode",
            Stage::QueueWait => "queue_wait",
            Stage::Preprocess => "preprocess",
            Stage::Forward => "forward",
            Stage::Effects => "effects",
            Stage::Readback => "readback",
            Stage::Encode => "encode",
            Stage::Total => "total",
        }
    }
}

/// Time spent per stage; stages sum when added.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct StageTimes([Duration; Stage::ALL.len()]);

impl StageTimes {
    pub fn get(&self, stage: Stage) -> Duration {
        self.0[stage as usize]
    }

    pub fn add(&mut self, stage: Stage, spent: Duration) {
        self.0[stage as usize] += spent;
    }

    /// Runs `work`, adding its wall time to `stage`.
    pub fn time<T>(&mut self, stage: Stage, work: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = work();
        self.add(stage, start.elapsed());
        result
    }

    /// The sum of every stage but `Total`.
    pub fn sum(&self) -> Duration {
        Stage::ALL
            .iter()
            .filter(|&&s| s != Stage::Total)
            .map(|&s| self.get(s))
            .sum()
    }
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, other: Self) {
        for stage in Stage::ALL {
            self.add(stage, other.get(stage));
        }
    }
}

/// `read_body=1.2ms decode=4.0ms …`, in milliseconds, stages that took no time left out.
impl fmt::Display for StageTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for stage in Stage::ALL {
            let spent = self.get(stage);
            if spent.is_zero() {
                continue;
            }
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}={:.1}ms", stage.name(), spent.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_add_and_print_by_name() {
        let mut times = StageTimes::default();
        times.add(Stage::Decode, Duration::from_millis(4));
        times.add(Stage::Forward, Duration::from_millis(300));
        times.add(Stage::Forward, Duration::from_millis(100));
        let mut sum = times;
        sum += times;
        assert_eq!(sum.get(Stage::Forward), Duration::from_millis(800));
        assert_eq!(sum.get(Stage::Decode), Duration::from_millis(8));
        assert_eq!(times.sum(), Duration::from_millis(404));
        assert_eq!(times.to_string(), "decode=4.0ms forward=400.0ms");
    }
}
