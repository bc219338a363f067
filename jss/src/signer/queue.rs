//! Who the signer works for next.
//!
//! A TPM signs one thing at a time and a real one takes 25–200 ms (README,
//! "Capacity"), so the order matters: a caller that has no valid token waits
//! only for other callers queued before it, never for proactive refreshes
//! (re-signing tokens that are still valid). TPM signatures run on one
//! dedicated thread that takes callers first, then refreshes; a software key
//! signs inline (~20 µs, nothing to schedule).
//!
//! The caller queue is bounded: past `max_callers` waiting, a caller is told
//! to come back after the time the queue ahead of it is measured to take.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::oneshot;

use super::{Backend, Signer, SignerError};

/// What a signature is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A caller without a valid cached token is waiting.
    Caller,
    /// A token that is still valid is re-signed ahead of need; `deadline`
    /// is when the old one stops being handed out. Within [`URGENT`] of it
    /// the refresh goes ahead of callers: past it, its workload would become
    /// one more caller waiting for the signer.
    Refresh { deadline: Instant },
}

/// How close to its deadline a refresh goes ahead of callers.
pub const URGENT: Duration = Duration::from_secs(1);

/// Why a signature was not made.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "{waiting} requests are waiting for the signer (about {retry_after_s} s of work at the measured signing time)"
    )]
    Full { waiting: usize, retry_after_s: u32 },
    #[error(transparent)]
    Signer(#[from] SignerError),
}

/// Signing figures for `/metrics`.
#[derive(Debug)]
pub struct QueueStats {
    /// Seconds one signature took in the signer (TPM round trip included).
    pub sign_seconds: Histogram,
    /// Seconds a signature waited in the queue before the signer took it.
    pub wait_seconds: Histogram,
    /// Signatures waiting now (callers and refreshes).
    pub depth: Gauge,
    /// Moving average of a signature's duration, in microseconds.
    ewma_us: AtomicU64,
}

impl Default for QueueStats {
    fn default() -> Self {
        Self {
            // 50 µs .. ~1.6 s
            sign_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            wait_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            depth: Gauge::default(),
            ewma_us: AtomicU64::new(0),
        }
    }
}

impl QueueStats {
    fn observe_sign(&self, started: Instant) {
        let d = started.elapsed();
        self.sign_seconds.observe(d.as_secs_f64());
        let us = d.as_micros().min(u128::from(u32::MAX)) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 7 + us) / 8 };
        self.ewma_us.store(new, Ordering::Relaxed);
    }

    /// `n` signatures at the measured rate.
    fn wait_for(&self, n: usize) -> Duration {
        Duration::from_micros(
            self.ewma_us
                .load(Ordering::Relaxed)
                .saturating_mul(n as u64),
        )
    }

    /// Seconds for `n` signatures at the measured rate, at least 1.
    fn seconds_for(&self, n: usize) -> u32 {
        let us = self.ewma_us.load(Ordering::Relaxed).max(1) * n as u64;
        us.div_ceil(1_000_000).clamp(1, u64::from(u32::MAX)) as u32
    }
}

type Reply = oneshot::Sender<Result<(String, [u8; 64]), SignerError>>;

struct Job {
    input: String,
    queued: Instant,
    deadline: Option<Instant>,
    reply: Reply,
}

#[derive(Default)]
struct Queues {
    callers: VecDeque<Job>,
    refresh: VecDeque<Job>,
    /// The signing thread is signing for a caller now.
    caller_signing: bool,
    closed: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    wake: Condvar,
    stats: Arc<QueueStats>,
}

/// The signer behind its queue.
pub struct SignQueue {
    signer: Arc<dyn Signer>,
    shared: Arc<Shared>,
    max_callers: usize,
    max_refresh: usize,
}

impl std::fmt::Debug for SignQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignQueue")
            .field("backend", &self.signer.backend())
            .field("max_callers", &self.max_callers)
            .finish_non_exhaustive()
    }
}

impl SignQueue {
    /// Starts the signing thread for a TPM key. At most `max_callers`
    /// callers and `max_refresh` refreshes wait at once.
    pub fn new(signer: Arc<dyn Signer>, max_callers: usize, max_refresh: usize) -> Self {
        Self::with_stats(signer, max_callers, max_refresh, Arc::default())
    }

    /// As [`SignQueue::new`], counting into `stats` (shared with the queue
    /// of the key it replaces, so `/metrics` goes on across a key switch).
    pub fn with_stats(
        signer: Arc<dyn Signer>,
        max_callers: usize,
        max_refresh: usize,
        stats: Arc<QueueStats>,
    ) -> Self {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            wake: Condvar::new(),
            stats,
        });
        if signer.backend() == Backend::Tpm {
            let (s, sh) = (Arc::clone(&signer), Arc::clone(&shared));
            let spawned = std::thread::Builder::new()
                .name("jss-signer".into())
                .spawn(move || work(s.as_ref(), &sh));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the signing thread");
            }
        }
        Self {
            signer,
            shared,
            max_callers,
            max_refresh,
        }
    }

    pub fn stats(&self) -> Arc<QueueStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Signatures waiting now: (callers, refreshes).
    pub fn waiting(&self) -> (usize, usize) {
        let q = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        (q.callers.len(), q.refresh.len())
    }

    /// What the signatures waiting now take at the measured signing time
    /// (zero before the first signature).
    pub fn queued_wait(&self) -> Duration {
        let (callers, refresh) = self.waiting();
        self.shared.stats.wait_for(callers + refresh)
    }

    /// One signature at the measured signing time (zero before the first).
    pub fn sign_estimate(&self) -> Duration {
        self.shared.stats.wait_for(1)
    }

    /// Room for more refreshes in the queue.
    pub fn refresh_room(&self) -> usize {
        self.max_refresh.saturating_sub(self.waiting().1)
    }

    /// ES256 over `input`; returns `input` with the `r‖s` signature.
    ///
    /// Errors: [`QueueError::Full`] when `max_callers` callers (or
    /// `max_refresh` refreshes) already wait, with the measured time the
    /// queue ahead needs; [`QueueError::Signer`] when the signature fails.
    pub async fn sign(
        &self,
        input: String,
        priority: Priority,
    ) -> Result<(String, [u8; 64]), QueueError> {
        let stats = &self.shared.stats;
        if self.signer.backend() == Backend::Software {
            let started = Instant::now();
            let sig = self.signer.sign(input.as_bytes())?;
            stats.observe_sign(started);
            return Ok((input, sig));
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut q = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            // A caller being signed for counts against the bound too.
            let busy = usize::from(q.caller_signing);
            let (queue, max, busy, deadline) = match priority {
                Priority::Caller => (&mut q.callers, self.max_callers, busy, None),
                Priority::Refresh { deadline } => {
                    (&mut q.refresh, self.max_refresh, 0, Some(deadline))
                }
            };
            if queue.len() + busy >= max {
                let waiting = queue.len() + busy;
                let ahead = match priority {
                    Priority::Caller => waiting,
                    Priority::Refresh { .. } => waiting + q.callers.len(),
                };
                return Err(QueueError::Full {
                    waiting,
                    retry_after_s: stats.seconds_for(ahead + 1),
                });
            }
            queue.push_back(Job {
                input,
                queued: Instant::now(),
                deadline,
                reply,
            });
            stats.depth.inc();
        }
        self.shared.wake.notify_one();
        match answer.await {
            Ok(r) => Ok(r?),
            Err(_) => Err(QueueError::Signer(SignerError::TpmAnswer {
                op: "sign",
                what: "the signing thread stopped",
            })),
        }
    }
}

impl Drop for SignQueue {
    fn drop(&mut self) {
        let mut q = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        q.closed = true;
        drop(q);
        self.shared.wake.notify_all();
    }
}

/// The signing thread: callers first, then refreshes, one at a time; a
/// refresh within [`URGENT`] of its deadline goes first.
fn work(signer: &dyn Signer, shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let urgent = q
                    .refresh
                    .front()
                    .and_then(|j| j.deadline)
                    .is_some_and(|d| d.saturating_duration_since(Instant::now()) <= URGENT);
                if urgent && let Some(j) = q.refresh.pop_front() {
                    break j;
                }
                if let Some(j) = q.callers.pop_front() {
                    q.caller_signing = true;
                    break j;
                }
                if let Some(j) = q.refresh.pop_front() {
                    break j;
                }
                if q.closed {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let stats = &shared.stats;
        stats.depth.dec();
        stats
            .wait_seconds
            .observe(job.queued.elapsed().as_secs_f64());
        if !job.reply.is_closed() {
            let started = Instant::now();
            // A panicking signer fails this signature, not the thread.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                signer.sign(job.input.as_bytes())
            }))
            .unwrap_or(Err(SignerError::TpmAnswer {
                op: "sign",
                what: "the signer panicked",
            }));
            stats.observe_sign(started);
            let _ = job.reply.send(result.map(|sig| (job.input, sig)));
        } // else the caller gave up (timeout, hung up)
        shared
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .caller_signing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::{KeyPolicy, NodePublicKey, SignerConfig, SignerKind, open};
    use std::sync::mpsc;
    use std::time::Duration;

    /// The software key as a slow "TPM" that reports what it signs, in
    /// order; its first signature says it has started, then waits for the
    /// gate.
    #[derive(Debug)]
    struct Slow(
        Arc<dyn Signer>,
        Mutex<mpsc::Sender<String>>,
        Mutex<Option<mpsc::Receiver<()>>>,
        Arc<std::sync::atomic::AtomicBool>,
    );

    impl Signer for Slow {
        fn backend(&self) -> Backend {
            Backend::Tpm
        }
        fn public_key(&self) -> &NodePublicKey {
            self.0.public_key()
        }
        fn sign(&self, input: &[u8]) -> Result<[u8; 64], SignerError> {
            if let Some(gate) = self.2.lock().unwrap().take() {
                self.3.store(true, std::sync::atomic::Ordering::SeqCst);
                gate.recv().unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
            let _ = self
                .1
                .lock()
                .unwrap()
                .send(String::from_utf8_lossy(input).into_owned());
            self.0.sign(input)
        }
    }

    /// The slow signer, what it signed in order, its gate, whether its
    /// first signature has started, and the key's directory.
    struct Rig {
        signer: Arc<dyn Signer>,
        order: mpsc::Receiver<String>,
        open_gate: mpsc::Sender<()>,
        started: Arc<std::sync::atomic::AtomicBool>,
        _dir: tempfile::TempDir,
    }

    fn slow() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SignerConfig {
            kind: SignerKind::Software,
            tcti: String::new(),
            state_dir: dir.path().to_path_buf(),
            pcrs: None,
        };
        let key = open(&cfg, KeyPolicy::CreateIfMissing).unwrap().0;
        let (tx, rx) = mpsc::channel();
        let (open_gate, gate) = mpsc::channel();
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = Slow(
            key,
            Mutex::new(tx),
            Mutex::new(Some(gate)),
            Arc::clone(&started),
        );
        Rig {
            signer: Arc::new(s),
            order: rx,
            open_gate,
            started,
            _dir: dir,
        }
    }

    #[test]
    fn callers_go_before_refreshes_and_a_full_queue_says_how_long() {
        let Rig {
            signer,
            order,
            open_gate,
            started,
            _dir,
        } = slow();
        let q = Arc::new(SignQueue::new(signer, 3, 10));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Five refreshes queue up (the first is held at the gate); then
            // three callers arrive.
            let until = |want: (usize, usize)| {
                let q = Arc::clone(&q);
                async move {
                    while q.waiting() != want {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            };
            let mut jobs = Vec::new();
            for i in 0..5 {
                let q = Arc::clone(&q);
                jobs.push(tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    q.sign(format!("refresh {i}"), Priority::Refresh { deadline })
                        .await
                }));
                until((0, i)).await;
                // Refresh 0 must be at the gate before the others queue, or
                // a later one could reach the signer first.
                while !started.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            for i in 0..3 {
                let q = Arc::clone(&q);
                jobs.push(tokio::spawn(async move {
                    q.sign(format!("caller {i}"), Priority::Caller).await
                }));
                until((i + 1, 4)).await;
            }
            // The bound counts the caller being signed for: a fourth waits
            // for nothing and is told when to come back.
            let full = q.sign("caller 3".into(), Priority::Caller).await;
            match full {
                Err(QueueError::Full { retry_after_s, .. }) => assert!(retry_after_s >= 1),
                other => panic!("{other:?}"),
            }
            open_gate.send(()).unwrap();
            for j in jobs {
                j.await.unwrap().unwrap();
            }
        });
        let order: Vec<String> = order.try_iter().collect();
        assert_eq!(order.len(), 8, "{order:?}");
        // The refresh already being signed finishes; then every caller, in
        // arrival order, then the remaining refreshes.
        assert_eq!(
            order,
            [
                "refresh 0",
                "caller 0",
                "caller 1",
                "caller 2",
                "refresh 1",
                "refresh 2",
                "refresh 3",
                "refresh 4"
            ],
        );
        let stats = q.stats();
        assert_eq!(stats.depth.get(), 0);
    }
}
