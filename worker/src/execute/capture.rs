//! Bounded capture of the guest's stdout and stderr.
//!
//! Wasmtime's `MemoryOutputPipe` traps the guest when its buffer is full;
//! Shoal's contract is different: past the cap the output is cut, the job
//! goes on, and the result says `truncated`. Memory stays bounded by the cap
//! however much the guest writes.
use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Default)]
struct Inner {
    kept: BytesMut,
    truncated: bool,
    /// What [`CappedPipe::take`] took, still readable by a follower that
    /// has not sent it all yet (a reference, not a copy).
    taken: Bytes,
}

/// A stdout/stderr sink that keeps at most `cap` bytes and drops the rest.
#[derive(Clone)]
pub(crate) struct CappedPipe {
    cap: usize,
    inner: Arc<Mutex<Inner>>,
}

impl CappedPipe {
    pub(crate) fn new(cap: usize) -> Self {
        CappedPipe {
            cap,
            inner: Arc::default(),
        }
    }

    pub(super) fn push(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.cap.saturating_sub(inner.kept.len());
        if bytes.len() > room {
            inner.truncated = true;
        }
        let take = bytes.len().min(room);
        inner.kept.extend_from_slice(&bytes[..take]);
    }

    /// A copy of the kept bytes from `offset` on, for a follower while
    /// the guest runs.
    pub(super) fn read_from(&self, offset: usize) -> Bytes {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.kept.is_empty() {
            return inner.taken.slice(offset.min(inner.taken.len())..);
        }
        Bytes::copy_from_slice(inner.kept.get(offset..).unwrap_or_default())
    }

    /// The kept bytes and whether anything was dropped.
    pub(crate) fn take(&self) -> (Bytes, bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let kept = std::mem::take(&mut inner.kept).freeze();
        inner.taken = kept.clone();
        (kept, inner.truncated)
    }
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept a full buffer's worth: what does not fit is dropped,
        // so the guest never blocks or fails on a full pipe.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_cap_and_flags_the_rest() {
        let pipe = CappedPipe::new(5);
        pipe.push(b"abc");
        pipe.push(b"defg");
        pipe.push(b"h");
        let (kept, truncated) = pipe.take();
        assert_eq!(&kept[..], b"abcde");
        assert!(truncated);
    }

    #[test]
    fn exact_fit_is_not_truncated() {
        let pipe = CappedPipe::new(3);
        pipe.push(b"abc");
        pipe.push(b"");
        assert_eq!(pipe.take(), (Bytes::from_static(b"abc"), false));
    }
}
