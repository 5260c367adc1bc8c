//! Jobs' scratch folders, made ahead of time and removed afterwards, both
//! off the job's path.
//!
//! Creating and removing folders are writes to the file system's journal.
//! On a worker whose disk also carries a broker's fsyncs they wait behind
//! those (a few hundred microseconds to milliseconds each, on the
//! development VM), which for a short job is more than its run. So the pool
//! keeps a few folders made, each already holding `out-0` (the first output
//! mount's folder; every job has `/outputs` unless it says otherwise), and
//! a job takes one without touching the disk while a blocking thread makes
//! the next. A job's folder is removed on a blocking thread when the job is
//! done with it.
use crate::error::InfraError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

/// The first output mount's folder, made with every pooled folder.
pub const FIRST_OUTPUT: &str = "out-0";

/// Ready scratch folders under one parent folder.
#[derive(Clone)]
pub struct ScratchPool {
    inner: Arc<Inner>,
}

struct Inner {
    parent: PathBuf,
    keep: usize,
    ready: Mutex<Vec<TempDir>>,
    refilling: AtomicBool,
}

impl ScratchPool {
    /// A pool of `keep` folders under `parent` (the system's temporary
    /// folder when empty). Nothing is made until the first job asks.
    pub fn new(parent: &Path, keep: usize) -> ScratchPool {
        let parent = if parent.as_os_str().is_empty() {
            std::env::temp_dir()
        } else {
            parent.to_path_buf()
        };
        ScratchPool {
            inner: Arc::new(Inner {
                parent,
                keep,
                ready: Mutex::new(Vec::with_capacity(keep)),
                refilling: AtomicBool::new(false),
            }),
        }
    }

    /// An empty scratch folder with `out-0` inside: a made one if the pool
    /// has one, else made now. Either way the pool is topped up in the
    /// background.
    pub async fn take(&self) -> Result<Scratch, InfraError> {
        let ready = self.inner.lock().pop();
        self.refill();
        let dir = match ready {
            Some(dir) => dir,
            None => {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || inner.make())
                    .await
                    .map_err(|e| InfraError::Disk(format!("creating scratch folder: {e}")))??
            }
        };
        Ok(Scratch {
            path: dir.path().to_path_buf(),
            dir: Some(dir),
        })
    }

    /// Folders ready now (for tests).
    pub fn ready(&self) -> usize {
        self.inner.lock().len()
    }

    /// Tops the pool up on a blocking thread, unless one is at it already.
    fn refill(&self) {
        if self.inner.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        let fill = move || {
            while inner.lock().len() < inner.keep {
                match inner.make() {
                    Ok(dir) => inner.lock().push(dir),
                    Err(e) => {
                        // The job that finds the pool empty makes its own
                        // folder and reports the error if it persists.
                        tracing::warn!(error = %e, "could not make a scratch folder ahead of time");
                        break;
                    }
                }
            }
            inner.refilling.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(fill);
            }
            Err(_) => fill(),
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TempDir>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn make(&self) -> Result<TempDir, InfraError> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-job-")
            .tempdir_in(&self.parent)
            .map_err(|e| {
                InfraError::Disk(format!(
                    "creating a scratch folder in {}: {e}",
                    self.parent.display()
                ))
            })?;
        std::fs::create_dir(dir.path().join(FIRST_OUTPUT))
            .map_err(|e| InfraError::Disk(format!("creating scratch folder: {e}")))?;
        Ok(dir)
    }
}

/// A job's scratch folder, removed on a blocking thread when dropped:
/// deleting a tree is disk work that must not hold up the async runtime or
/// the job's result. If the runtime is shutting down, the closure (and with
/// it the folder) is dropped in place, so the folder goes either way.
pub struct Scratch {
    path: PathBuf,
    /// Taken only by `drop`.
    dir: Option<TempDir>,
}

impl Scratch {
    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || drop(dir));
                }
                Err(_) => drop(dir),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn folders_are_made_ahead_and_removed_after() {
        let parent = tempfile::tempdir().unwrap();
        let pool = ScratchPool::new(parent.path(), 2);
        // The first job finds nothing made and makes its own.
        let first = pool.take().await.unwrap();
        assert!(first.path().join(FIRST_OUTPUT).is_dir());
        let first_path = first.path().to_path_buf();
        for _ in 0..200 {
            if pool.ready() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(pool.ready(), 2, "the pool tops itself up");
        let second = pool.take().await.unwrap();
        assert!(second.path().join(FIRST_OUTPUT).is_dir());
        assert_ne!(second.path(), first_path);
        drop(first);
        for _ in 0..200 {
            if !first_path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!first_path.exists(), "a finished job's folder is removed");
    }

    #[tokio::test]
    async fn an_unusable_parent_is_the_workers_fault() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let pool = ScratchPool::new(&file, 1);
        let err = pool.take().await.err().expect("no folder under a file");
        assert!(matches!(err, InfraError::Disk(_)), "{err:?}");
    }
}
