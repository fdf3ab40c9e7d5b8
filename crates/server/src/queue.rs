//! The GPU job queue: handlers submit decoded jobs; two worker threads share the editor
//! (and so the device) and render them in batches, so concurrent requests share one model
//! forward. The model thread collects a batch and runs [`Editor::segment`] (upload,
//! preprocess, forward); the effects thread runs [`Editor::finish_each`] (refinement,
//! placement, effects, compositing, readback) and replies to each job as it is done. So
//! batch k+1's forward overlaps batch k's effects, with at most one segmented batch waiting
//! between them. The queue is bounded: a full queue is reported at once, never waited on.
//! A panic while rendering a batch fails that batch's jobs (500) and the threads carry on
//! with the next one: one bad image never takes the server down.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cutout_core::edit::{EditOutput, Editor, Job, Segmented};
use cutout_core::timing::Stage;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct Batching {
    /// Most jobs rendered together.
    pub max_batch: usize,
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
/// (a panic, as a bug would cause) to check that the server survives them.
pub type WorkerHook = Arc<dyn Fn(WorkerStage, &Job) + Send + Sync>;

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

/// A batch between the two threads: its jobs, the model's results, when they were ready,
/// and each job's queue wait and reply.
type SegmentedBatch = (Vec<Job>, Segmented, Instant, Vec<(Duration, Reply)>);

#[derive(Clone)]
pub struct JobQueue {
    sender: mpsc::Sender<Queued>,
    in_flight: Arc<AtomicUsize>,
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
        batching: Batching,
        hook: Option<WorkerHook>,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(batching.capacity.max(1));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let editor = Arc::new(editor);
        let (segmented, to_finish) = std::sync::mpsc::sync_channel::<SegmentedBatch>(1);
        let effects = {
            let (editor, in_flight, hook) = (editor.clone(), in_flight.clone(), hook.clone());
            std::thread::Builder::new()
                .name("effects-worker".into())
                .spawn(move || finish_batches(&editor, to_finish, &in_flight, hook.as_ref()))
                .expect("spawn the effects worker")
        };
        let in_flight_model = in_flight.clone();
        let model = std::thread::Builder::new()
            .name("model-worker".into())
            .spawn(move || {
                let hook = hook.as_ref();
                segment_batches(
                    &editor,
                    receiver,
                    &batching,
                    segmented,
                    &in_flight_model,
                    hook,
                );
                let _ = effects.join();
            })
            .expect("spawn the model worker");
        (Self { sender, in_flight }, model)
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

fn segment_batches(
    editor: &Editor,
    mut receiver: mpsc::Receiver<Queued>,
    batching: &Batching,
    segmented: std::sync::mpsc::SyncSender<SegmentedBatch>,
    in_flight: &AtomicUsize,
    hook: Option<&WorkerHook>,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + batching.max_wait;
        while batch.len() < batching.max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
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
        let started = Instant::now();
        let (jobs, waits_and_replies): (Vec<Job>, Vec<(Duration, Reply)>) = batch
            .into_iter()
            .map(|(job, queued, reply)| (job, (started - queued, reply)))
            .unzip();
        log::debug!("segmenting a batch of {}", jobs.len());
        let result = catch_unwind(AssertUnwindSafe(|| {
            if let Some(hook) = hook {
                jobs.iter().for_each(|job| hook(WorkerStage::Segment, job));
            }
            editor.segment(&jobs)
        }));
        let result = match result {
            Ok(result) => result,
            Err(payload) => {
                let message = panic_message(payload);
                log::error!("segmenting a batch of {} panicked: {message}", jobs.len());
                for (_, reply) in waits_and_replies {
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let _ = reply.send(Err(cutout_core::Error::Panicked(message.clone())));
                }
                continue;
            }
        };
        let ready = Instant::now();
        if segmented
            .send((jobs, result, ready, waits_and_replies))
            .is_err()
        {
            return;
        }
    }
}

fn finish_batches(
    editor: &Editor,
    segmented: std::sync::mpsc::Receiver<SegmentedBatch>,
    in_flight: &AtomicUsize,
    hook: Option<&WorkerHook>,
) {
    for (jobs, result, ready, waits_and_replies) in segmented {
        // Waiting for the model thread's queue, then for this thread to take the batch.
        let handed_over = ready.elapsed();
        let mut replies: Vec<Option<(Duration, Reply)>> =
            waits_and_replies.into_iter().map(Some).collect();
        let finished = catch_unwind(AssertUnwindSafe(|| {
            if let Some(hook) = hook {
                jobs.iter().for_each(|job| hook(WorkerStage::Finish, job));
            }
            editor.finish_each(&jobs, result, |i, mut result| {
                let Some((waited, reply)) = replies[i].take() else {
                    return;
                };
                if let Ok(output) = &mut result {
                    output.timings.add(Stage::QueueWait, waited + handed_over);
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
                let _ = reply.send(result);
            });
        }));
        if let Err(payload) = finished {
            let message = panic_message(payload);
            log::error!("finishing a batch of {} panicked: {message}", jobs.len());
            // The jobs not answered before the panic.
            for (_, reply) in replies.into_iter().flatten() {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                let _ = reply.send(Err(cutout_core::Error::Panicked(message.clone())));
            }
        }
    }
}
