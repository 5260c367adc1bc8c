//! Jobs' scratch folders: made ahead of time, emptied and reused
//! afterwards, all off the job's path.
//!
//! Making and removing a folder per job is the costliest thing a short job
//! does to its worker. On ext4, allocating an inode scans past every inode
//! freed in the last few seconds (`recently_deleted` in the kernel), so a
//! worker that creates and deletes folders at hundreds of jobs a second
//! spends most of its CPU in the kernel (profiled with `perf`: 58% of the
//! benchmark's samples; docs/BENCHMARKS.md). So the pool owns a fixed set of
//! folders, one per job slot and one to spare, each holding `out-0` (the
//! first output mount's folder; every job has `/outputs` unless it says
//! otherwise). A job takes a ready one; when it is done, and only if it says
//! nothing can still write into the folder, a blocking thread empties it
//! (everything the job left, whatever it is) and gives it back. A folder
//! that cannot be emptied, or that a job did not vouch for, is removed and
//! a new one made instead.
use crate::error::{Cause, InfraError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

/// The host folder of output mount `i` in a job's scratch folder: named
/// by index, not by the mount's name, so no name can clash with another
/// folder of the scratch directory.
pub(crate) fn output_folder(i: usize) -> String {
    format!("out-{i}")
}

/// The first output mount's folder, made ahead in every pooled folder
/// (`output_folder(0)`).
pub(crate) const FIRST_OUTPUT: &str = "out-0";

/// Scratch folders under one parent folder.
#[derive(Clone)]
pub(crate) struct ScratchPool {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// This pool's own folder, `shoal-worker-<random>` in the parent
    /// folder; removed with the pool.
    home: PathBuf,
    /// Locked for the pool's life: how a later worker tells this folder is
    /// still in use (the kernel releases the lock when the process dies,
    /// however it dies).
    _lock: std::fs::File,
    /// Folders the pool owns at most: ready ones plus lent ones (a worker's
    /// prefetch and one, which [`ScratchPool::keep`] follows).
    keep: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The ready folders first (dropping a `TempDir` removes it), then
        // the pool's own folder and its lock file.
        drop(std::mem::take(&mut self.lock().ready));
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

#[derive(Default)]
struct State {
    ready: Vec<TempDir>,
    lent: usize,
    /// A blocking thread is making folders.
    refilling: bool,
}

/// The name of a pool's own folder starts with this.
const HOME_PREFIX: &str = "shoal-worker-";
/// The lock file in a pool's own folder.
const LOCK: &str = ".lock";

impl ScratchPool {
    /// A pool of `keep` folders in a folder of its own under `parent`
    /// (`Config::scratch_parent`). Folders that earlier workers
    /// left there when they died (their lock is free) are removed first, so
    /// a worker that crashes and restarts does not fill the disk with its
    /// old jobs' inputs. Nothing is made for jobs until the first asks.
    pub(crate) fn new(parent: &Path, keep: usize) -> Result<ScratchPool, InfraError> {
        let parent = parent.to_path_buf();
        let disk = |what: &str, e: std::io::Error| {
            InfraError::Disk(Cause::new(format!("{what} in {}", parent.display()), e))
        };
        // A configured folder that does not exist yet is made, as any
        // program makes its own working folder; only one that cannot be
        // made (a file in the way, no permission) stops the worker.
        std::fs::create_dir_all(&parent).map_err(|e| disk("creating worker.scratch_dir", e))?;
        remove_abandoned(&parent);
        // Made under a name no other worker looks at, locked, then renamed
        // into view: a worker starting at the same moment never finds it
        // unlocked.
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let starting = parent.join(format!(".shoal-starting-{suffix}"));
        let home = parent.join(format!("{HOME_PREFIX}{suffix}"));
        std::fs::create_dir(&starting)
            .map_err(|e| disk("creating the worker's scratch folder", e))?;
        let locked = std::fs::File::create(starting.join(LOCK))
            .and_then(|lock| {
                lock.try_lock().map_err(std::io::Error::other)?;
                Ok(lock)
            })
            .and_then(|lock| std::fs::rename(&starting, &home).map(|()| lock));
        let lock = match locked {
            Ok(lock) => lock,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&starting);
                return Err(disk("setting up the worker's scratch folder", e));
            }
        };
        Ok(ScratchPool {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                home,
                _lock: lock,
                keep: AtomicUsize::new(keep.max(1)),
            }),
        })
    }

    /// Sizes the pool for `keep` folders, as a worker's prefetch changes:
    /// more are made ahead at once; past fewer, folders are removed as
    /// their jobs give them back.
    pub(crate) fn keep(&self, keep: usize) {
        self.inner.keep.store(keep.max(1), Ordering::Relaxed);
        self.inner.clone().refill();
    }

    /// The pool's own folder (holding every scratch folder it made).
    #[cfg(test)]
    pub(crate) fn home(&self) -> &Path {
        &self.inner.home
    }

    /// An empty scratch folder with `out-0` inside: a ready one if there
    /// is one, else one made now. It is counted as lent only once the
    /// caller holds it, so a caller cancelled while it waits costs the pool
    /// nothing.
    pub(crate) async fn take(&self) -> Result<Scratch, InfraError> {
        let ready = {
            let mut state = self.inner.lock();
            let ready = state.ready.pop();
            if ready.is_some() {
                state.lent += 1;
            }
            ready
        };
        let dir = match ready {
            Some(dir) => dir,
            None => {
                let inner = self.inner.clone();
                let dir = tokio::task::spawn_blocking(move || inner.make())
                    .await
                    .map_err(|e| InfraError::Disk(Cause::new("creating scratch folder", e)))??;
                self.inner.lock().lent += 1;
                dir
            }
        };
        self.inner.clone().refill();
        Ok(Scratch {
            path: dir.path().to_path_buf(),
            dir: Some(dir),
            pool: self.inner.clone(),
            reusable: false,
        })
    }

    /// Folders ready now (for tests).
    #[cfg(test)]
    pub(crate) fn ready(&self) -> usize {
        self.inner.lock().ready.len()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes folders on a blocking thread until the pool owns `keep`,
    /// unless a thread is at it already.
    fn refill(self: Arc<Self>) {
        {
            let mut state = self.lock();
            if state.refilling
                || state.ready.len() + state.lent >= self.keep.load(Ordering::Relaxed)
            {
                return;
            }
            state.refilling = true;
        }
        let fill = move || {
            loop {
                {
                    let state = self.lock();
                    if state.ready.len() + state.lent >= self.keep.load(Ordering::Relaxed) {
                        break;
                    }
                }
                match self.make() {
                    Ok(dir) => self.lock().ready.push(dir),
                    Err(e) => {
                        // The job that finds the pool empty makes its own
                        // folder and reports the error if it persists.
                        tracing::warn!(error = %e, "could not make a scratch folder ahead of time");
                        break;
                    }
                }
            }
            self.lock().refilling = false;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(fill);
            }
            Err(_) => fill(),
        }
    }

    fn make(&self) -> Result<TempDir, InfraError> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-job-")
            .tempdir_in(&self.home)
            .map_err(|e| {
                InfraError::Disk(Cause::new(
                    format!("creating a scratch folder in {}", self.home.display()),
                    e,
                ))
            })?;
        std::fs::create_dir(dir.path().join(FIRST_OUTPUT))
            .map_err(|e| InfraError::Disk(Cause::new("creating scratch folder", e)))?;
        Ok(dir)
    }

    /// Takes back a folder a job is done with: emptied and kept when it is
    /// `reusable` and the pool has room, else removed (dropping a `TempDir`
    /// removes it) and, if the pool is short, replaced.
    fn give_back(self: &Arc<Self>, dir: TempDir, reusable: bool) {
        let wanted = {
            let mut state = self.lock();
            state.lent -= 1;
            state.ready.len() + state.lent < self.keep.load(Ordering::Relaxed)
        };
        if !wanted {
            return;
        }
        if reusable {
            match empty(dir.path()) {
                Ok(()) => return self.lock().ready.push(dir),
                Err(e) => {
                    tracing::warn!(folder = %dir.path().display(), error = %e, "could not empty a scratch folder; removing it");
                }
            }
        }
        // Removed (dropping it) and replaced, so the next job still finds
        // one ready.
        drop(dir);
        self.clone().refill();
    }
}

/// Removes the folders of pools whose worker is gone: their lock file can
/// be locked. A folder still being set up (no lock file yet) or locked by a
/// live worker, on this host or another sharing the folder, is left alone.
fn remove_abandoned(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_pool = name.to_string_lossy().starts_with(HOME_PREFIX)
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_pool {
            continue;
        }
        let Ok(lock) = std::fs::File::open(entry.path().join(LOCK)) else {
            continue;
        };
        if lock.try_lock().is_ok() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(folder = %entry.path().display(), "removed the scratch folder of a worker that is gone")
                }
                Err(e) => {
                    tracing::warn!(folder = %entry.path().display(), error = %e, "could not remove an abandoned scratch folder")
                }
            }
        }
    }
}

/// Removes everything in `dir` but an empty `out-0`, and checks that this
/// is all that is left. Symbolic links are removed, never followed.
fn empty(dir: &Path) -> std::io::Result<()> {
    // Most jobs leave nothing outside their outputs, which were published
    // (and are removed here): look before touching anything.
    let entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    let out = dir.join(FIRST_OUTPUT);
    if let [only] = entries.as_slice()
        && only.file_name() == FIRST_OUTPUT
        && only.file_type()?.is_dir()
        && std::fs::read_dir(&out)?.next().is_none()
    {
        return fresh_times(&out);
    }
    let remove = |path: &Path| -> std::io::Result<()> {
        if std::fs::symlink_metadata(path)?.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        }
    };
    for entry in entries {
        let path = entry.path();
        if entry.file_name() == FIRST_OUTPUT && entry.file_type()?.is_dir() {
            for inner in std::fs::read_dir(&path)? {
                remove(&inner?.path())?;
            }
        } else {
            remove(&path)?;
        }
    }
    let left: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    let clean = left.len() == 1
        && std::fs::symlink_metadata(&out)?.is_dir()
        && std::fs::read_dir(&out)?.next().is_none();
    if !clean {
        return Err(std::io::Error::other("something was left behind"));
    }
    fresh_times(&out)
}

/// A guest may set its output mount's timestamps (`fd_filestat_set_times`
/// on the preopen); the next job sees the folder's times as of now.
fn fresh_times(out: &Path) -> std::io::Result<()> {
    let now = std::time::SystemTime::now();
    std::fs::File::open(out)?.set_times(
        std::fs::FileTimes::new()
            .set_accessed(now)
            .set_modified(now),
    )
}

/// A job's scratch folder, dealt with on a blocking thread when dropped
/// (emptying or removing a tree is disk work that must not hold up the
/// async runtime or the job's result; if the runtime is shutting down, in
/// place).
///
/// It is reused only when the job said it is quiet ([`Scratch::reusable`]):
/// nothing may still write into it. A job that was cancelled, failed while
/// staging (an unpacking thread may still be writing under `inputs/`), or
/// whose guest was stopped in the middle of a host call (a file operation
/// already running on a blocking thread finishes after the guest is gone)
/// drops its folder unmarked, and it is removed, never handed to the next
/// job.
pub(crate) struct Scratch {
    path: PathBuf,
    /// Taken only when the folder is dealt with.
    dir: Option<TempDir>,
    pool: Arc<Inner>,
    reusable: bool,
}

impl Scratch {
    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the folder safe to empty and reuse: staging finished, the
    /// guest's run ended on its own, and nothing else writes into it.
    pub(crate) fn reusable(&mut self) {
        self.reusable = true;
    }

    /// Gives the folder back on the calling thread, which must be one that
    /// may block (it empties or removes the folder).
    pub(crate) fn give_back_here(mut self) {
        if let Some(dir) = self.dir.take() {
            self.pool.give_back(dir, self.reusable);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let pool = self.pool.clone();
            let reusable = self.reusable;
            let give_back = move || pool.give_back(dir, reusable);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(give_back);
                }
                Err(_) => give_back(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_output_folder_is_the_pooled_one() {
        assert_eq!(output_folder(0), FIRST_OUTPUT);
    }
    use std::time::Duration;

    #[tokio::test]
    async fn a_scratch_folder_that_does_not_exist_is_made() {
        let parent = tempfile::tempdir().unwrap();
        let nested = parent.path().join("not/there/yet");
        let pool = ScratchPool::new(&nested, 1).unwrap();
        assert!(pool.take().await.unwrap().path().starts_with(&nested));
        // A file in the way is still an error, naming the setting.
        let blocked = parent.path().join("file");
        std::fs::write(&blocked, "in the way").unwrap();
        let err = ScratchPool::new(&blocked.join("sub"), 1).err().unwrap();
        assert!(err.to_string().contains("worker.scratch_dir"), "{err}");
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..400 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting until {what}");
    }

    #[tokio::test]
    async fn folders_are_made_ahead_then_emptied_and_reused() {
        let parent = tempfile::tempdir().unwrap();
        let pool = ScratchPool::new(parent.path(), 2).unwrap();
        // The first job finds nothing made and makes its own.
        let mut first = pool.take().await.unwrap();
        assert!(first.path().join(FIRST_OUTPUT).is_dir());
        let first_path = first.path().to_path_buf();
        until("the pool tops itself up", || pool.ready() == 1).await;
        let mut second = pool.take().await.unwrap();
        assert_ne!(second.path(), first_path);

        // The job leaves everything a guest can make behind.
        let out = first.path().join(FIRST_OUTPUT);
        std::fs::create_dir_all(out.join("a/b/c")).unwrap();
        std::fs::write(out.join("a/b/c/file"), b"x").unwrap();
        std::fs::write(out.join("top"), b"x").unwrap();
        std::os::unix::fs::symlink(parent.path(), out.join("link")).unwrap();
        std::fs::create_dir(first.path().join("inputs")).unwrap();
        std::fs::write(first.path().join("inputs/data"), b"x").unwrap();
        // And dates its output mount.
        let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::open(&out)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(long_ago))
            .unwrap();
        first.reusable();
        drop(first);
        until("the folder comes back", || pool.ready() == 1).await;
        let again = pool.take().await.unwrap();
        assert_eq!(again.path(), first_path, "the same folder, reused");
        let left: Vec<_> = std::fs::read_dir(again.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(FIRST_OUTPUT)]);
        assert_eq!(
            std::fs::read_dir(again.path().join(FIRST_OUTPUT))
                .unwrap()
                .count(),
            0
        );
        assert!(parent.path().exists(), "a symlink is removed, not followed");
        let modified = std::fs::metadata(again.path().join(FIRST_OUTPUT))
            .unwrap()
            .modified()
            .unwrap();
        assert!(modified > long_ago, "the output mount's times are reset");
        second.reusable();
        let mut again = again;
        again.reusable();
        drop(second);
        drop(again);
        until("both are back", || pool.ready() == 2).await;
        drop(pool);
        let remaining = std::fs::read_dir(parent.path()).unwrap().count();
        assert_eq!(remaining, 0, "dropping the pool removes its folders");
    }

    #[tokio::test]
    async fn a_folder_beyond_the_pools_size_is_removed_not_kept() {
        let parent = tempfile::tempdir().unwrap();
        let pool = ScratchPool::new(parent.path(), 1).unwrap();
        // Two jobs at once in a pool of one: one folder too many.
        let mut one = pool.take().await.unwrap();
        let mut two = pool.take().await.unwrap();
        one.reusable();
        two.reusable();
        let one_path = one.path().to_path_buf();
        let two_path = two.path().to_path_buf();
        drop(one);
        until("the extra one is removed", || !one_path.exists()).await;
        assert_eq!(pool.ready(), 0);
        drop(two);
        until("the other is kept", || pool.ready() == 1).await;
        assert!(two_path.join(FIRST_OUTPUT).is_dir());
    }

    #[tokio::test]
    async fn the_pool_follows_the_prefetch_up_and_down() {
        let parent = tempfile::tempdir().unwrap();
        let pool = ScratchPool::new(parent.path(), 1).unwrap();
        // Raised: made ahead at once, without a job asking.
        pool.keep(3);
        until("three made ahead", || pool.ready() == 3).await;
        // Lowered: the folders beyond it go as their jobs give them back.
        pool.keep(1);
        let mut taken = Vec::new();
        for _ in 0..3 {
            let mut scratch = pool.take().await.unwrap();
            scratch.reusable();
            taken.push(scratch);
        }
        drop(taken);
        until("one kept", || pool.ready() == 1).await;
        let home = std::fs::read_dir(pool.home())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != LOCK)
            .count();
        assert_eq!(home, 1, "the others are removed");
    }

    #[tokio::test]
    async fn a_folder_nobody_vouched_for_is_removed_and_replaced() {
        let parent = tempfile::tempdir().unwrap();
        let pool = ScratchPool::new(parent.path(), 1).unwrap();
        // A job cancelled, or whose staging failed: something may still
        // write into its folder, so the next job must not get it.
        let unquiet = pool.take().await.unwrap();
        let path = unquiet.path().to_path_buf();
        drop(unquiet);
        until("it is removed and replaced", || {
            !path.exists() && pool.ready() == 1
        })
        .await;
        let next = pool.take().await.unwrap();
        assert_ne!(next.path(), path);
        assert!(next.path().join(FIRST_OUTPUT).is_dir());
    }

    #[tokio::test]
    async fn an_unusable_parent_is_the_workers_fault() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let err = ScratchPool::new(&file, 1)
            .err()
            .expect("no folder under a file");
        assert!(matches!(err, InfraError::Disk(_)), "{err:?}");
    }

    #[test]
    fn folders_of_workers_that_are_gone_are_removed_and_live_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        // A worker that died mid-job: its folder, its lock file (unlocked
        // now), a job's leftovers.
        let gone = parent.path().join("shoal-worker-0123");
        std::fs::create_dir_all(gone.join("shoal-job-x/inputs")).unwrap();
        std::fs::write(gone.join("shoal-job-x/inputs/big"), b"x").unwrap();
        std::fs::File::create(gone.join(LOCK)).unwrap();
        // Something else in the folder, and a worker still setting up.
        std::fs::create_dir(parent.path().join("unrelated")).unwrap();
        std::fs::create_dir(parent.path().join("shoal-worker-starting")).unwrap();

        let live = ScratchPool::new(parent.path(), 1).unwrap();
        assert!(!gone.exists(), "the dead worker's folder is removed");
        assert!(parent.path().join("unrelated").exists());
        assert!(parent.path().join("shoal-worker-starting").exists());
        // A second worker on the same folder leaves the first one's alone.
        let other = ScratchPool::new(parent.path(), 1).unwrap();
        assert!(
            live.home().join(LOCK).exists(),
            "a live worker's folder is kept"
        );
        assert_ne!(live.home(), other.home());
        let home = live.home().to_path_buf();
        drop(live);
        assert!(!home.exists(), "a pool removes its folder when it goes");
    }
}
