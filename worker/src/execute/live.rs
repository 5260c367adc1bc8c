//! A job's handle for others while it is on the worker: cancel it, read
//! its output so far. The consume side holds one per job it took (for
//! `submit cancel` and `submit logs -f`); the pipeline watches it while
//! staging and waiting, and the executor while the guest runs.
use super::capture::CappedPipe;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Shared by the job and whoever may cancel or follow it.
#[derive(Clone, Default)]
pub struct Live(Arc<Inner>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
    /// The guest's stdout and stderr, once it starts.
    pipes: Mutex<Option<(CappedPipe, CappedPipe)>>,
}

impl Live {
    /// Asks the job to stop wherever it is; it ends `cancelled`.
    pub fn cancel(&self) {
        if !self.0.cancelled.swap(true, Ordering::SeqCst) {
            self.0.notify.notify_waiters();
        }
    }

    /// Whether [`Live::cancel`] was called: cheap enough for the guest's
    /// epoch callback.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once the job is cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// Whether both are the handle of the same job.
    pub fn same(&self, other: &Live) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub(super) fn attach(&self, stdout: &CappedPipe, stderr: &CappedPipe) {
        *self.0.pipes.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((stdout.clone(), stderr.clone()));
    }

    /// What the guest has written to stdout (or `stderr`) from byte
    /// `offset` on, of what its cap keeps; `None` before the guest starts.
    pub fn output_from(&self, stderr: bool, offset: usize) -> Option<Bytes> {
        let pipes = self.0.pipes.lock().unwrap_or_else(|e| e.into_inner());
        let (out, err) = pipes.as_ref()?;
        Some(if stderr { err } else { out }.read_from(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_wakes_a_waiter_and_stays() {
        let live = Live::default();
        let waiter = tokio::spawn({
            let live = live.clone();
            async move { live.cancelled().await }
        });
        tokio::task::yield_now().await;
        assert!(!live.is_cancelled());
        live.cancel();
        waiter.await.unwrap();
        assert!(live.is_cancelled());
        // A later waiter returns at once.
        live.cancelled().await;
    }

    #[test]
    fn output_reads_on_from_an_offset() {
        let live = Live::default();
        assert_eq!(live.output_from(false, 0), None);
        let (out, err) = (CappedPipe::new(8), CappedPipe::new(8));
        live.attach(&out, &err);
        out.push(b"hello ");
        assert_eq!(live.output_from(false, 0).unwrap(), "hello ");
        out.push(b"world");
        assert_eq!(live.output_from(false, 6).unwrap(), "wo");
        assert_eq!(live.output_from(false, 99).unwrap(), "");
        assert_eq!(live.output_from(true, 0).unwrap(), "");
    }
}
