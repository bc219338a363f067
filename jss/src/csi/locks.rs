//! One lock per target path: a publish or unpublish of a volume waits only
//! for calls on the same target. A token-mode publish holds its lock while
//! the daemon waits for a pod it does not list yet (up to its retry window),
//! which must not stall the other volumes of the node.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Locks by target path, the kubelet's spelling with `//` and a trailing
/// `/` folded (targets never contain `.`, `..` or symlinks: target.rs).
#[derive(Default)]
pub struct TargetLocks {
    held: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds the lock of one target; dropping it frees the lock and, when no
/// one else waits, the map entry.
pub struct TargetGuard<'a> {
    locks: &'a TargetLocks,
    key: PathBuf,
    guard: Option<OwnedMutexGuard<()>>,
}

impl TargetLocks {
    /// Waits for and takes the lock of `target`.
    pub async fn lock(&self, target: &Path) -> TargetGuard<'_> {
        let key: PathBuf = target.components().collect();
        let lock = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(held.entry(key.clone()).or_default())
        };
        let guard = Some(lock.lock_owned().await);
        TargetGuard {
            locks: self,
            key,
            guard,
        }
    }

    /// How many targets have an entry (held or waited for).
    pub fn len(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// No target is locked or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for TargetGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.guard.take());
        // Only the map's Arc left: nobody holds or waits for this target.
        if held
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            held.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_target_blocks_only_itself_and_entries_are_freed() {
        let locks = TargetLocks::default();
        let a = locks
            .lock(Path::new("/k/pods/u/volumes/kubernetes.io~csi/a/mount"))
            .await;
        // Another target is free while `a` is held.
        let b = locks
            .lock(Path::new("/k/pods/u/volumes/kubernetes.io~csi/b/mount"))
            .await;
        drop(b);
        // The same target, spelt with a doubled slash, waits for `a`.
        let same = Path::new("/k//pods/u/volumes/kubernetes.io~csi/a/mount/");
        let mut waiting = std::pin::pin!(locks.lock(same));
        assert!(futures_now(&mut waiting).is_none());
        drop(a);
        let again = waiting.await;
        assert_eq!(locks.len(), 1);
        drop(again);
        assert!(locks.is_empty());
    }

    /// Polls `f` once.
    fn futures_now<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
