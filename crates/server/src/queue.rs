//! The GPU job queue: handlers submit decoded jobs; one worker thread owns the editor (and
//! so the device) and renders them in batches, so concurrent requests share one model
//! forward. The queue is bounded: a full queue is reported at once, never waited on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cutout_core::edit::{EditOutput, Editor, Job};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct Batching {
    /// Most jobs rendered together.
    pub max_batch: usize,
    /// How long the first job of a batch waits for company.
    pub max_wait: Duration,
    /// Jobs waiting beyond the one being rendered.
    pub capacity: usize,
}

type Reply = oneshot::Sender<cutout_core::Result<EditOutput>>;

#[derive(Clone)]
pub struct JobQueue {
    sender: mpsc::Sender<(Job, Reply)>,
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
    /// Starts the worker thread; it exits when every `JobQueue` clone is dropped and the
    /// queue is drained.
    pub fn start(editor: Editor, batching: Batching) -> (Self, std::thread::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(batching.capacity.max(1));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let worker = {
            let in_flight = in_flight.clone();
            std::thread::Builder::new()
                .name("gpu-worker".into())
                .spawn(move || work(editor, receiver, batching, in_flight))
                .expect("spawn the GPU worker")
        };
        (Self { sender, in_flight }, worker)
    }

    pub async fn render(&self, job: Job) -> Result<cutout_core::Result<EditOutput>, Rejected> {
        let (reply, answer) = oneshot::channel();
        match self.sender.try_send((job, reply)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // A rough wait: the batches ahead of this one, at about a second each.
                let ahead = self.in_flight.load(Ordering::Relaxed) as u64;
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

fn work(
    editor: Editor,
    mut receiver: mpsc::Receiver<(Job, Reply)>,
    batching: Batching,
    in_flight: Arc<AtomicUsize>,
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
        in_flight.store(batch.len() + receiver.len(), Ordering::Relaxed);
        let (jobs, replies): (Vec<Job>, Vec<Reply>) = batch.into_iter().unzip();
        log::debug!("rendering a batch of {}", jobs.len());
        let results = editor.render(&jobs);
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
        in_flight.store(receiver.len(), Ordering::Relaxed);
    }
}
