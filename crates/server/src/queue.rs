//! The GPU job queue: handlers submit decoded jobs; two worker threads share the editor
//! (and so the device) and render them in batches, so concurrent requests share one model
//! forward. The model thread collects a batch and runs [`Editor::segment`] (upload,
//! preprocess, forward); the effects thread runs [`Editor::finish_each`] (refinement,
//! placement, effects, compositing, readback) and replies to each job as it is done (on a
//! device, a batch's jobs pass those stages together and are done together). So
//! batch k+1's forward overlaps batch k's effects, with at most one segmented batch waiting
//! between them. The queue is bounded: a full queue is reported at once, never waited on.
//! A panic while rendering a batch fails that batch's jobs (500) and the threads carry on
//! with the next one: one bad image never takes the server down. When the device is lost,
//! the batch's jobs fail as `DeviceLost` (503) and the effects thread opens a new device and
//! model ([`Reopen`]); the batches after it run on those.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cutout_core::edit::{EditOutput, Editor, Job, Segmented};
use cutout_core::timing::Stage;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct Batching {
    /// Most jobs rendered together.
    pub max_batch: usize,
    /// Most input pixels rendered together: a batch's device and host memory grow with its
    /// pixels, not its count (one 25 MP photo is a batch of its own).
    pub max_batch_pixels: u64,
    /// How long the first job of a batch waits for company.
    pub max_wait: Duration,
    /// Jobs waiting for the model thread, beyond the batches it and the effects thread hold
    /// (at most three: one in the model, one handed over, one in effects).
    pub capacity: usize,
}

type Reply = oneshot::Sender<cutout_core::Result<EditOutput>>;

/// Where a worker thread is about to work on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStage {
    /// The model thread, before the batch's forward.
    Segment,
    /// The effects thread, before the batch's effects.
    Finish,
}

/// Called by the worker threads before they work on each job: tests inject faults with it
/// (a panic, as a bug would cause; a lost device) to check that the server survives them.
/// Only in builds with the `fault-injection` feature (this crate's tests).
#[cfg(feature = "fault-injection")]
pub type WorkerHook = Arc<dyn Fn(WorkerStage, &Job, &Editor) + Send + Sync>;

/// The fault-injection hook the workers call, if any.
#[cfg(feature = "fault-injection")]
pub(crate) type Hook = Option<WorkerHook>;
/// Builds without fault injection have no hook to call.
#[cfg(not(feature = "fault-injection"))]
#[derive(Clone)]
pub(crate) struct Hook;

/// Calls the hook (if there is one) for each of `jobs`.
#[cfg(feature = "fault-injection")]
fn inject(hook: &Hook, stage: WorkerStage, jobs: &[Job], editor: &Editor) {
    if let Some(hook) = hook {
        jobs.iter().for_each(|job| hook(stage, job, editor));
    }
}

#[cfg(not(feature = "fault-injection"))]
fn inject(_: &Hook, _: WorkerStage, _: &[Job], _: &Editor) {}

/// Opens a new device and loads the model on it, after the device was lost.
pub type Reopen = Arc<dyn Fn() -> cutout_core::Result<Editor> + Send + Sync>;

/// The editor the next batch runs on, replaced when its device is lost.
struct Current {
    editor: RwLock<Arc<Editor>>,
    reopen: Option<Reopen>,
    /// Held while reopening, so the two threads never reopen twice for one loss.
    reopening: Mutex<()>,
}

impl Current {
    fn get(&self) -> Arc<Editor> {
        self.editor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces `lost` (if it is still the current editor) with a new one.
    fn recover(&self, lost: &Arc<Editor>, why: &str) {
        let _reopening = self.reopening.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&self.get(), lost) {
            return;
        }
        let Some(reopen) = &self.reopen else {
            log::error!("the device was lost ({why}) and this server cannot reopen it");
            return;
        };
        log::warn!("the device was lost ({why}): opening a new device and model");
        let started = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| reopen())) {
            Ok(Ok(editor)) => {
                *self.editor.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(editor);
                log::warn!(
                    "recovered: a new device and model in {:.1?}",
                    started.elapsed()
                );
            }
            Ok(Err(e)) => log::error!("reopening the device failed (next batch retries): {e}"),
            Err(_) => log::error!("reopening the device panicked (next batch retries)"),
        }
    }
}

/// The message of a panic's payload (`panic!` with a literal or a format).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A job, when it was queued, and where its result goes.
type Queued = (Job, Instant, Reply);

/// A batch between the two threads: its editor, its jobs, the model's results, when they
/// were ready, and each job's queue wait and reply.
type SegmentedBatch = (
    Arc<Editor>,
    Vec<Job>,
    Segmented,
    Instant,
    Vec<(Duration, Reply)>,
);

#[derive(Clone)]
pub struct JobQueue {
    sender: mpsc::Sender<Queued>,
    in_flight: Arc<AtomicUsize>,
    current: Arc<Current>,
    answered: Arc<Answered>,
}

/// When the device last finished work (a batch or a probe), and whether a probe is running.
#[derive(Default)]
struct Answered {
    at: Mutex<Option<Instant>>,
    probing: AtomicBool,
}

impl Answered {
    fn now(&self) {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn within(&self, fresh: Duration) -> bool {
        self.at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() <= fresh)
    }
}

/// Clears `Answered::probing` when the probe ends, however it ends.
struct Probing(Arc<Answered>);

impl Drop for Probing {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
    }
}

/// Why a job was not rendered.
#[derive(Debug)]
pub enum Rejected {
    /// The queue is full; try again after the given number of seconds.
    Busy { retry_after: u64 },
    /// The worker is gone (shutting down).
    Stopped,
}

impl JobQueue {
    /// Starts the worker threads; they exit when every `JobQueue` clone is dropped and the
    /// queue is drained. The handle returned finishes after both.
    pub fn start(
        editor: Editor,
        reopen: Option<Reopen>,
        batching: Batching,
        hook: Hook,
        batch_size: prometheus::Histogram,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(batching.capacity.max(1));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let editor = Arc::new(Current {
            editor: RwLock::new(Arc::new(editor)),
            reopen,
            reopening: Mutex::new(()),
        });
        let answered = Arc::new(Answered::default());
        let (segmented, to_finish) = std::sync::mpsc::sync_channel::<SegmentedBatch>(1);
        let effects = {
            let (editor, in_flight, hook) = (editor.clone(), in_flight.clone(), hook.clone());
            let answered = answered.clone();
            std::thread::Builder::new()
                .name("effects-worker".into())
                .spawn(move || finish_batches(&editor, to_finish, &in_flight, &hook, &answered))
                .expect("spawn the effects worker")
        };
        let current = editor.clone();
        let in_flight_model = in_flight.clone();
        let model = std::thread::Builder::new()
            .name("model-worker".into())
            .spawn(move || {
                segment_batches(
                    &editor,
                    receiver,
                    &batching,
                    segmented,
                    &in_flight_model,
                    &hook,
                    &batch_size,
                );
                let _ = effects.join();
            })
            .expect("spawn the model worker");
        (
            Self {
                sender,
                in_flight,
                current,
                answered,
            },
            model,
        )
    }

    /// Whether the device answers (`/readyz`): it finished a batch or a probe within
    /// `fresh`, or a probe (a tiny dispatch with a known answer, [`Editor::ops`]`.probe()`)
    /// run now answers within `timeout`. A probe still running from an earlier call (a hung
    /// device) is not started again.
    pub async fn check_device(&self, fresh: Duration, timeout: Duration) -> Result<(), String> {
        let editor = self.current.get();
        if let Some(why) = editor.ops().gpu().lost() {
            return Err(format!("the device was lost: {why}"));
        }
        if self.answered.within(fresh) {
            return Ok(());
        }
        if self.answered.probing.swap(true, Ordering::AcqRel) {
            return Err("the device has not answered the last probe yet".into());
        }
        let probing = Probing(self.answered.clone());
        let probe = tokio::task::spawn_blocking(move || {
            let result = editor.ops().probe();
            if result.is_ok() {
                probing.0.now();
            }
            drop(probing);
            result
        });
        match tokio::time::timeout(timeout, probe).await {
            Err(_) => Err(format!(
                "the device did not answer a probe within {timeout:?}"
            )),
            Ok(Err(_)) => Err("the probe of the device panicked".into()),
            Ok(Ok(Err(error))) => Err(format!("a probe of the device failed: {error}")),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    pub async fn render(&self, job: Job) -> Result<cutout_core::Result<EditOutput>, Rejected> {
        let (reply, answer) = oneshot::channel();
        // Counted before sending, so the worker's decrement never comes first.
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let sent = self.sender.try_send((job, Instant::now(), reply));
        if sent.is_err() {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // A rough wait: the batches ahead of this one, at about a second each.
                let ahead = self.in_flight() as u64;
                return Err(Rejected::Busy {
                    retry_after: ahead.clamp(1, 60),
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Rejected::Stopped),
        }
        answer.await.map_err(|_| Rejected::Stopped)
    }

    /// Jobs queued or being rendered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A batch: `first`, then the jobs that arrive within `max_wait`, up to `max_batch` jobs and
/// `max_batch_pixels` input pixels. A job that would pass the pixel limit is `carried` to
/// start the next batch.
fn collect_batch(
    first: Queued,
    receiver: &mut mpsc::Receiver<Queued>,
    batching: &Batching,
    carried: &mut Option<Queued>,
) -> Vec<Queued> {
    let pixels = |queued: &Queued| queued.0.image.width() as u64 * queued.0.image.height() as u64;
    let mut total = pixels(&first);
    let mut batch = vec![first];
    let deadline = Instant::now() + batching.max_wait;
    while batch.len() < batching.max_batch {
        match receiver.try_recv() {
            Ok(job) if total + pixels(&job) > batching.max_batch_pixels => {
                *carried = Some(job);
                break;
            }
            Ok(job) => {
                total += pixels(&job);
                batch.push(job);
            }
            Err(mpsc::error::TryRecvError::Empty) => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        }
    }
    batch
}

fn segment_batches(
    current: &Current,
    mut receiver: mpsc::Receiver<Queued>,
    batching: &Batching,
    segmented: std::sync::mpsc::SyncSender<SegmentedBatch>,
    in_flight: &AtomicUsize,
    hook: &Hook,
    batch_size: &prometheus::Histogram,
) {
    let mut carried = None;
    while let Some(first) = carried.take().or_else(|| receiver.blocking_recv()) {
        let batch = collect_batch(first, &mut receiver, batching, &mut carried);
        let editor = current.get();
        let started = Instant::now();
        let (jobs, waits_and_replies): (Vec<Job>, Vec<(Duration, Reply)>) = batch
            .into_iter()
            .map(|(job, queued, reply)| (job, (started - queued, reply)))
            .unzip();
        log::debug!("segmenting a batch of {}", jobs.len());
        batch_size.observe(jobs.len() as f64);
        let result = catch_unwind(AssertUnwindSafe(|| {
            inject(hook, WorkerStage::Segment, &jobs, &editor);
            editor.segment(&jobs)
        }));
        let result = match result {
            Ok(result) => result,
            Err(payload) => {
                let message = panic_message(payload);
                log::error!("segmenting a batch of {} panicked: {message}", jobs.len());
                let lost = editor.ops().gpu().lost();
                let error = match lost {
                    Some(why) => cutout_core::Error::DeviceLost(why.to_string()),
                    None => cutout_core::Error::Panicked(message),
                };
                if let Some(why) = lost {
                    current.recover(&editor, why);
                }
                for (_, reply) in waits_and_replies {
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let _ = reply.send(Err(error.clone()));
                }
                continue;
            }
        };
        let ready = Instant::now();
        if segmented
            .send((editor, jobs, result, ready, waits_and_replies))
            .is_err()
        {
            return;
        }
    }
}

fn finish_batches(
    current: &Current,
    segmented: std::sync::mpsc::Receiver<SegmentedBatch>,
    in_flight: &AtomicUsize,
    hook: &Hook,
    answered: &Answered,
) {
    for (editor, jobs, result, ready, waits_and_replies) in segmented {
        // Waiting for the model thread's queue, then for this thread to take the batch.
        let handed_over = ready.elapsed();
        let mut replies: Vec<Option<(Duration, Reply)>> =
            waits_and_replies.into_iter().map(Some).collect();
        // Failures answered only after the device is reopened, so a retry finds it working.
        let mut failed: Vec<(Reply, cutout_core::Result<EditOutput>)> = Vec::new();
        let finished = catch_unwind(AssertUnwindSafe(|| {
            inject(hook, WorkerStage::Finish, &jobs, &editor);
            editor.finish_each(&jobs, result, |i, mut result| {
                let Some((waited, reply)) = replies[i].take() else {
                    return;
                };
                match &mut result {
                    Ok(output) => output.timings.add(Stage::QueueWait, waited + handed_over),
                    Err(_) => return failed.push((reply, result)),
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
                let _ = reply.send(result);
            });
        }));
        let panicked = finished.is_err();
        if let Err(payload) = finished {
            let message = panic_message(payload);
            log::error!("finishing a batch of {} panicked: {message}", jobs.len());
            // The jobs not answered before the panic.
            let error = cutout_core::Error::Panicked(message);
            failed.extend(
                replies
                    .into_iter()
                    .flatten()
                    .map(|(_, reply)| (reply, Err(error.clone()))),
            );
        }
        // The device reports its loss to its callback, or a readback fails with it first.
        let lost = editor.ops().gpu().lost().map(str::to_string).or_else(|| {
            failed.iter().find_map(|(_, result)| match result {
                Err(cutout_core::Error::DeviceLost(why)) => Some(why.clone()),
                _ => None,
            })
        });
        match &lost {
            Some(why) => current.recover(&editor, why),
            None if !panicked => answered.now(),
            None => {}
        }
        for (reply, mut result) in failed {
            // Whatever error the lost device surfaced as (a failed readback, a validation
            // error, a panic), it is the loss.
            if let Some(why) = &lost {
                result = Err(cutout_core::Error::DeviceLost(why.clone()));
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(side: u32) -> (Queued, oneshot::Receiver<cutout_core::Result<EditOutput>>) {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            image: image::RgbaImage::new(side, side),
            background: None,
            edit: Default::default(),
        };
        ((job, Instant::now(), reply), answer)
    }

    fn sides(batch: &[Queued]) -> Vec<u32> {
        batch.iter().map(|(job, ..)| job.image.width()).collect()
    }

    #[test]
    fn batches_are_sized_by_pixels_as_well_as_by_count() {
        let batching = Batching {
            max_batch: 3,
            // Two 100x100 images fit; a 150x150 one does not fit beside anything.
            max_batch_pixels: 20_000,
            max_wait: Duration::ZERO,
            capacity: 16,
        };
        let (sender, mut receiver) = mpsc::channel(16);
        let mut answers = Vec::new();
        for side in [100, 100, 100, 150, 10, 10, 10, 10] {
            let (job, answer) = queued(side);
            sender.try_send(job).unwrap();
            answers.push(answer);
        }
        let mut carried = None;
        let mut batches = Vec::new();
        while let Some(first) = carried.take().or_else(|| receiver.try_recv().ok()) {
            batches.push(sides(&collect_batch(
                first,
                &mut receiver,
                &batching,
                &mut carried,
            )));
        }
        assert_eq!(
            batches,
            vec![
                vec![100, 100],
                vec![100],
                vec![150],
                vec![10, 10, 10],
                vec![10]
            ]
        );
    }
}
