//! One pod-list fetch in flight at a time, shared by every caller, and
//! versioned so that a caller who missed waits for a strictly newer list.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{
    BoxFuture, KubeletClient, KubeletConfig, KubeletError, LookupError, Outcome, Pod, PodList,
    PodMatch, PodQuery, PodRef, PodSource, PodSourceStats,
};

/// Something that fetches a whole pod list (the kubelet client).
pub trait FetchPods: Send + Sync + 'static {
    fn fetch(&self) -> BoxFuture<'_, Result<PodList, KubeletError>>;
}

/// The kubelet behind the shared, versioned cache.
pub type KubeletPods = SharedPodList<KubeletClient>;

impl KubeletPods {
    pub fn from_config(cfg: &KubeletConfig) -> Result<Self, KubeletError> {
        Ok(SharedPodList::new(
            KubeletClient::new(cfg)?,
            Timing::from(cfg),
        ))
    }
}

/// How long callers wait and how fresh a list must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub retry_window: Duration,
    pub retry_interval: Duration,
    pub max_list_age: Duration,
    /// Upper bound on one fetch, so a stuck fetch cannot hold callers forever.
    pub fetch_timeout: Duration,
}

impl From<&KubeletConfig> for Timing {
    fn from(c: &KubeletConfig) -> Self {
        Self {
            retry_window: KubeletConfig::ms(c.retry_window_ms),
            retry_interval: KubeletConfig::ms(c.retry_interval_ms),
            max_list_age: KubeletConfig::ms(c.max_list_age_ms),
            fetch_timeout: KubeletConfig::ms(c.request_timeout_ms) + Duration::from_secs(1),
        }
    }
}

#[derive(Default)]
struct FetchState {
    latest: Option<Arc<Snapshot>>,
    in_flight: bool,
}

struct Snapshot {
    version: u64,
    at: Instant,
    list: Result<Arc<PodList>, Arc<KubeletError>>,
}

struct Inner<F> {
    fetcher: F,
    timing: Timing,
    /// The newest list and whether a fetch runs, changed together under the
    /// channel's lock: a waiter woken by a new list never sees a stale
    /// "fetch in flight" and waits for a fetch that will not come.
    tx: watch::Sender<FetchState>,
    version: AtomicU64,
    fetches: AtomicU64,
    errors: AtomicU64,
    pods: AtomicU64,
    skipped: AtomicU64,
    /// Where fetches run: the runtime that built the list (the daemon's
    /// main one), not the caller's. A SPIFFE worker's runtime
    /// (`spiffe::workers`) ends before the HTTP server drains, which would
    /// cancel a fetch other callers wait on and close the pooled kubelet
    /// connections it opened.
    runtime: Option<tokio::runtime::Handle>,
}

/// A [`PodSource`] over any [`FetchPods`].
pub struct SharedPodList<F> {
    inner: Arc<Inner<F>>,
}

impl<F> std::fmt::Debug for SharedPodList<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPodList")
            .field("timing", &self.inner.timing)
            .field("version", &self.inner.version.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<F: FetchPods> SharedPodList<F> {
    pub fn new(fetcher: F, timing: Timing) -> Self {
        Self {
            inner: Arc::new(Inner {
                fetcher,
                timing,
                tx: watch::Sender::new(FetchState::default()),
                version: AtomicU64::new(0),
                fetches: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                pods: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                runtime: tokio::runtime::Handle::try_current().ok(),
            }),
        }
    }

    async fn lookup(&self, q: &PodQuery) -> Result<PodMatch, LookupError> {
        self.lookup_with(
            |list, version| list.lookup(q, version),
            |waited, lists| LookupError::NotFound {
                container_id: q.container_id.clone(),
                pod_uid: q.pod_uid.clone(),
                waited,
                lists,
            },
        )
        .await
        .map(|m| *m)
    }

    /// Asks `look` of the newest list, and of each newer one while it
    /// misses, for up to the retry window; then `not_found(waited, lists)`,
    /// or the last fetch's error when the kubelet did not answer.
    async fn lookup_with<T>(
        &self,
        look: impl Fn(&PodList, u64) -> Outcome<T>,
        not_found: impl Fn(Duration, u64) -> LookupError,
    ) -> Result<T, LookupError> {
        let t = self.inner.timing;
        let start = Instant::now();
        let deadline = start + t.retry_window;
        // A young, good list may answer a first lookup; otherwise fetch.
        let mut after = match self.inner.tx.borrow().latest.as_ref() {
            Some(s) if s.list.is_ok() && s.at.elapsed() <= t.max_list_age => s.version - 1,
            Some(s) => s.version,
            None => 0,
        };
        let mut lists = 0u64;
        let mut last_err = None;
        let give_up = |lists, err: Option<Arc<KubeletError>>| match err {
            Some(e) => LookupError::Kubelet(e),
            None => not_found(start.elapsed(), lists),
        };
        loop {
            let wait = deadline.saturating_duration_since(Instant::now()) + t.fetch_timeout;
            let Ok(snap) = tokio::time::timeout(wait, Inner::newer(&self.inner, after)).await
            else {
                break Err(give_up(lists, last_err));
            };
            lists += 1;
            last_err = match &snap.list {
                Ok(list) => match look(list, snap.version) {
                    Outcome::Found(m) => return Ok(m),
                    Outcome::Denied(e) => return Err(e),
                    Outcome::Miss => None,
                },
                Err(e) => Some(e.clone()),
            };
            after = snap.version;
            if Instant::now() + t.retry_interval > deadline {
                break Err(give_up(lists, last_err));
            }
            tracing::debug!(
                version = after,
                "not in the pod list yet; waiting for a newer one"
            );
            tokio::time::sleep(t.retry_interval).await;
        }
    }
}

impl<F: FetchPods> Inner<F> {
    /// A list newer than `after`, starting the (single) fetch if none runs.
    async fn newer(me: &Arc<Self>, after: u64) -> Arc<Snapshot> {
        let mut rx = me.tx.subscribe();
        loop {
            let mut newer = None;
            let mut start = false;
            // Check and claim in one step; publishes nothing, wakes no one.
            me.tx.send_if_modified(|st| {
                match &st.latest {
                    Some(s) if s.version > after => newer = Some(Arc::clone(s)),
                    _ if !st.in_flight => {
                        st.in_flight = true;
                        start = true;
                    }
                    _ => {}
                }
                false
            });
            if let Some(s) = newer {
                return s;
            }
            if start {
                // Detached: a caller that gives up must not cancel everyone's fetch.
                let me2 = Arc::clone(me);
                let fetch = async move { me2.run_fetch().await };
                match &me.runtime {
                    Some(rt) => drop(rt.spawn(fetch)),
                    None => drop(tokio::spawn(fetch)),
                }
            }
            // Any list published since `subscribe` (or the last wake-up) wakes us.
            if rx.changed().await.is_err() {
                // Unreachable while `me` holds the sender; wait for the caller's timeout.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn run_fetch(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let began = Instant::now();
        let res = tokio::time::timeout(self.timing.fetch_timeout, self.fetcher.fetch()).await;
        let list = match res {
            Ok(Ok(l)) => {
                self.pods.store(l.pods.len() as u64, Ordering::Relaxed);
                self.skipped.fetch_add(l.skipped as u64, Ordering::Relaxed);
                Ok(Arc::new(l))
            }
            Ok(Err(e)) => Err(Arc::new(e)),
            Err(_) => Err(Arc::new(KubeletError::Timeout {
                url: "(pod list fetch)".into(),
                after: self.timing.fetch_timeout,
            })),
        };
        if let Err(e) = &list {
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, code = e.code(), "kubelet pod list fetch failed");
        }
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::debug!(
            version,
            took_ms = began.elapsed().as_millis() as u64,
            ok = list.is_ok(),
            "kubelet pod list fetched"
        );
        let snapshot = Arc::new(Snapshot {
            version,
            at: Instant::now(),
            list,
        });
        self.tx.send_modify(|st| {
            st.latest = Some(snapshot);
            st.in_flight = false;
        });
    }
}

impl<F: FetchPods> PodSource for SharedPodList<F> {
    fn find<'a>(&'a self, query: &'a PodQuery) -> BoxFuture<'a, Result<PodMatch, LookupError>> {
        Box::pin(self.lookup(query))
    }

    fn find_pod<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<Arc<Pod>, LookupError>> {
        Box::pin(self.lookup_with(
            |list, _| list.lookup_pod(pod),
            |waited, lists| pod.not_listed(waited, lists),
        ))
    }

    fn stats(&self) -> PodSourceStats {
        PodSourceStats {
            fetches: self.inner.fetches.load(Ordering::Relaxed),
            fetch_errors: self.inner.errors.load(Ordering::Relaxed),
            pods: self.inner.pods.load(Ordering::Relaxed),
            pods_skipped: self.inner.skipped.load(Ordering::Relaxed),
        }
    }
}

/// A fixed pod list (a saved `/pods` answer): a miss is final.
#[derive(Debug, Clone)]
pub struct StaticPods {
    list: Arc<PodList>,
}

impl StaticPods {
    pub fn new(list: PodList) -> Self {
        Self {
            list: Arc::new(list),
        }
    }

    /// Reads and parses a saved `/pods` JSON file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, KubeletError> {
        let body = std::fs::read(path).map_err(|source| KubeletError::File {
            what: "the pod list",
            path: path.to_path_buf(),
            source,
        })?;
        let list = PodList::parse(&body).map_err(|source| KubeletError::Malformed {
            url: path.display().to_string(),
            source,
        })?;
        Ok(Self::new(list))
    }
}

impl PodSource for StaticPods {
    fn find<'a>(&'a self, query: &'a PodQuery) -> BoxFuture<'a, Result<PodMatch, LookupError>> {
        Box::pin(async move {
            match self.list.lookup(query, 1) {
                Outcome::Found(m) => Ok(*m),
                Outcome::Denied(e) => Err(e),
                Outcome::Miss => Err(LookupError::NotFound {
                    container_id: query.container_id.clone(),
                    pod_uid: query.pod_uid.clone(),
                    waited: Duration::ZERO,
                    lists: 1,
                }),
            }
        })
    }

    fn find_pod<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<Arc<Pod>, LookupError>> {
        Box::pin(async move {
            match self.list.lookup_pod(pod) {
                Outcome::Found(p) => Ok(p),
                Outcome::Denied(e) => Err(e),
                Outcome::Miss => Err(pod.not_listed(Duration::ZERO, 1)),
            }
        })
    }

    fn stats(&self) -> PodSourceStats {
        PodSourceStats {
            fetches: 0,
            fetch_errors: 0,
            pods: self.list.pods.len() as u64,
            pods_skipped: self.list.skipped as u64,
        }
    }
}
