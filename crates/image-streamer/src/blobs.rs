//! This replica's bytes: files addressed by the sha256 of their content,
//! under `<dir>/blobs/<sha256>`, with uploads and pulls assembled in
//! `<dir>/partial/<sha256>` and renamed into place only once their hash is
//! verified.
//!
//! Landing a file is durable before anyone is told: the partial file is
//! hashed, fsynced, renamed, and both directories are fsynced before
//! [`BlobStore::finish`] returns (so an upload is acknowledged, or a pull
//! published, only for a file that survives a power cut). A crash or
//! SIGKILL at any point leaves either the whole verified file under
//! `blobs/` or a partial file, which is never served or listed: the next
//! writer resumes it ([`BlobStore::resume`]), and one that already
//! holds every byte is checked and moved into place then.
//!
//! A file is served only after its hash was checked. The check is
//! remembered together with the file's length, modification time and inode,
//! so any later change on disk (a corrupting write, a replaced file) forces a
//! new check before the next byte goes out; a periodic scrub catches silent
//! rot that leaves the metadata alone. A file found corrupt is deleted and
//! reported, so replication fetches it again.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Errors of the blob store callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Not a lowercase hex sha256.
    #[error("{0:?} is not a sha256 digest (64 lowercase hex characters)")]
    BadDigest(String),
    /// The assembled bytes do not hash to the announced digest.
    #[error("content hashes to {actual}, not the announced {expected}; discarded")]
    HashMismatch {
        /// Announced digest.
        expected: String,
        /// Digest of what arrived.
        actual: String,
    },
    /// More or fewer bytes than announced.
    #[error("expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Announced size.
        expected: u64,
        /// Size that arrived.
        actual: u64,
    },
    /// An upload chunk does not continue where the partial file ends.
    #[error("upload offset {offered} does not match the {held} bytes held; ask for the offset again")]
    OffsetMismatch {
        /// Offset the writer claimed.
        offered: u64,
        /// Bytes already held.
        held: u64,
    },
    /// Another upload or pull of the same file is writing it.
    #[error("another upload or pull of {0} is in progress; try again shortly")]
    InProgress(String),
    /// The file changed while its hash was being checked.
    #[error("{0} changed while its hash was being checked; discarded")]
    ChangedWhileVerifying(String),
    /// Local disk trouble.
    #[error("blob store I/O on {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BlobError {
    let what = what.into();
    move |source| BlobError::Io { what, source }
}

/// Checks that `digest` is a lowercase hex sha256.
pub fn check_digest(digest: &str) -> Result<(), BlobError> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(BlobError::BadDigest(digest.chars().take(80).collect()))
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What a verified file looked like on disk when its hash was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ino: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            len: meta.len(),
            ino: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// A verified file ready to serve.
#[derive(Clone, Debug)]
pub struct Blob {
    /// Its digest.
    pub sha256: String,
    /// Its length.
    pub len: u64,
    /// When it arrived on this replica.
    pub modified: SystemTime,
    /// The whole content, when small enough to keep in memory.
    pub cached: Option<Bytes>,
    /// Path on disk.
    pub path: PathBuf,
    /// The verified file, open (so serving needs no `open`).
    pub file: Arc<File>,
}

/// Result of looking a blob up.
#[derive(Debug)]
pub enum Lookup {
    /// Verified and ready.
    Ready(Blob),
    /// Not held here.
    Absent,
    /// Was on disk but failed its hash check; now deleted.
    Corrupt,
}

/// A lookup that either has its answer or needs a hash check first.
enum Known {
    Answer(Lookup),
    Unverified { path: PathBuf, modified: SystemTime },
}

/// A file whose hash was checked, as it was then.
struct Verified {
    stamp: Stamp,
    cached: Option<Bytes>,
    file: Arc<File>,
}

#[derive(Default)]
struct State {
    verified: HashMap<String, Verified>,
    cached_bytes: u64,
    corrupt: HashSet<String>,
    /// Files an upload or a pull is writing (one writer per file).
    writing: HashSet<String>,
}

/// Where a writer of a file goes on ([`BlobStore::resume`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The verified file is in place: nothing to write.
    Whole,
    /// Write from this offset (the bytes the partial file holds).
    From(u64),
}

/// The right to write one file's partial copy; released on drop.
#[derive(Debug)]
pub struct WriteClaim {
    store: Arc<BlobStore>,
    sha: String,
}

impl Drop for WriteClaim {
    fn drop(&mut self) {
        self.store.state().writing.remove(&self.sha);
    }
}

/// The content-addressed file store of one replica.
pub struct BlobStore {
    blobs: PathBuf,
    partial: PathBuf,
    /// Files up to this size are kept in memory once verified.
    cache_file_limit: u64,
    /// Total bytes kept in memory.
    cache_budget: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("blobs", &self.blobs).finish_non_exhaustive()
    }
}

/// Makes a rename into or out of `dir` durable (fsync of the directory).
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a file through sha256, returning the digest, the length and,
/// when `keep` allows, the bytes.
fn hash_file(mut file: &File, keep: bool) -> io::Result<(String, u64, Option<Bytes>)> {
    let mut hasher = Sha256::new();
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if keep {
            kept.extend_from_slice(&buf[..n]);
        }
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total, keep.then(|| Bytes::from(kept))))
}

impl BlobStore {
    /// Opens (creating) the store under `dir`. Partial files of earlier
    /// runs are kept so uploads and pulls resume, except those of files
    /// already in place and anything not named by a digest.
    pub fn open(dir: &Path, cache_file_limit: u64, cache_budget: u64) -> Result<Self, BlobError> {
        let blobs = dir.join("blobs");
        let partial = dir.join("partial");
        for d in [&blobs, &partial] {
            fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let store = Self { blobs, partial, cache_file_limit, cache_budget, state: Mutex::default() };
        store.drop_stale_partials()?;
        Ok(store)
    }

    fn drop_stale_partials(&self) -> Result<(), BlobError> {
        let reading = || io_err(format!("reading {}", self.partial.display()));
        for entry in fs::read_dir(&self.partial).map_err(reading())? {
            let entry = entry.map_err(reading())?;
            let name = entry.file_name();
            let resumable =
                name.to_str().is_some_and(|sha| check_digest(sha).is_ok() && !self.is_complete(sha));
            if !resumable {
                tracing::info!(path = %entry.path().display(), "removing a leftover partial file");
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Removes partial files nobody has written for `idle` (an upload
    /// given up on, a pull of a file no longer needed): kept across
    /// restarts so a retry resumes, but not forever. Those being written
    /// now stay. Returns how many went.
    pub fn drop_abandoned_partials(&self, idle: std::time::Duration) -> usize {
        let Ok(entries) = fs::read_dir(&self.partial) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let Some(sha) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if self.state().writing.contains(&sha) {
                continue;
            }
            let idle_for =
                entry.metadata().and_then(|m| m.modified()).map(|at| at.elapsed().unwrap_or_default());
            if idle_for.is_ok_and(|d| d >= idle) && fs::remove_file(entry.path()).is_ok() {
                tracing::info!(sha256 = %sha, "removed a partial file nobody wrote for {idle:?}");
                removed += 1;
            }
        }
        removed
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn blob_path(&self, sha: &str) -> PathBuf {
        self.blobs.join(sha)
    }

    fn partial_path(&self, sha: &str) -> PathBuf {
        self.partial.join(sha)
    }

    /// Digests of the files on disk (verified or not yet).
    pub fn on_disk(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.blobs) else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| check_digest(name).is_ok())
            .collect()
    }

    /// Digests found corrupt since they were last fetched again.
    pub fn corrupt(&self) -> Vec<String> {
        self.state().corrupt.iter().cloned().collect()
    }

    /// Looks a blob up, verifying it first when it is new or changed on
    /// disk. Blocking (hashes files): call from a blocking context.
    pub fn lookup(&self, sha: &str) -> Result<Lookup, BlobError> {
        match self.lookup_known(sha)? {
            Known::Answer(found) => Ok(found),
            Known::Unverified { path, modified, .. } => self.verify(sha, &path, modified),
        }
    }

    /// Answers from what was verified before, costing one `stat`; `None`
    /// when the file must be hashed first (then call [`Self::lookup`] off
    /// the async threads).
    pub fn lookup_verified(&self, sha: &str) -> Result<Option<Lookup>, BlobError> {
        Ok(match self.lookup_known(sha)? {
            Known::Answer(found) => Some(found),
            Known::Unverified { .. } => None,
        })
    }

    fn lookup_known(&self, sha: &str) -> Result<Known, BlobError> {
        check_digest(sha)?;
        // The verified file, checked through its open handle (one fstat):
        // any write to it changes its length or mtime. What goes out is the
        // inode that was hashed, even if the path was replaced meanwhile.
        let known = self.state().verified.get(sha).map(|v| (v.stamp, v.cached.clone(), Arc::clone(&v.file)));
        if let Some((stamp, cached, file)) = known
            && let Ok(meta) = file.metadata()
            && Stamp::of(&meta) == stamp
        {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let (sha256, path) = (sha.to_owned(), self.blob_path(sha));
            return Ok(Known::Answer(Lookup::Ready(Blob {
                sha256,
                len: stamp.len,
                modified,
                cached,
                path,
                file,
            })));
        }
        let path = self.blob_path(sha);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Self::forget(&mut self.state(), sha);
                return Ok(Known::Answer(Lookup::Absent));
            }
            Err(e) => return Err(io_err(format!("reading {sha}"))(e)),
        };
        let stamp = Stamp::of(&meta);
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if let Some(seen) = self.state().verified.get(sha)
            && seen.stamp == stamp
        {
            return Ok(Known::Answer(Lookup::Ready(Blob {
                sha256: sha.to_owned(),
                len: stamp.len,
                modified,
                cached: seen.cached.clone(),
                path,
                file: Arc::clone(&seen.file),
            })));
        }
        Ok(Known::Unverified { path, modified })
    }

    fn verify(&self, sha: &str, path: &Path, modified: SystemTime) -> Result<Lookup, BlobError> {
        let file = File::open(path).map_err(io_err(format!("opening {sha}")))?;
        // The stamp of what is actually hashed (the path may have changed).
        let stamp = Stamp::of(&file.metadata().map_err(io_err(format!("reading {sha}")))?);
        let keep = stamp.len <= self.cache_file_limit;
        let (actual, len, bytes) = hash_file(&file, keep).map_err(io_err(format!("hashing {sha}")))?;
        let mut state = self.state();
        Self::forget(&mut state, sha);
        if actual != sha || len != stamp.len {
            tracing::error!(sha256 = sha, actual = %actual, "file failed its hash check: deleted, will be fetched again");
            state.corrupt.insert(sha.to_owned());
            crate::metrics::CORRUPT_FOUND.inc();
            drop(state);
            let _ = fs::remove_file(path);
            return Ok(Lookup::Corrupt);
        }
        let file = Arc::new(file);
        let cached = Self::remember(&mut state, self.cache_budget, sha, stamp, bytes, Arc::clone(&file));
        Ok(Lookup::Ready(Blob { sha256: sha.to_owned(), len, modified, cached, path: path.to_owned(), file }))
    }

    fn forget(state: &mut State, sha: &str) {
        if let Some(Verified { cached: Some(old), .. }) = state.verified.remove(sha) {
            state.cached_bytes -= old.len() as u64;
        }
    }

    /// Records a verified file, keeping its bytes in memory within budget.
    fn remember(
        state: &mut State,
        budget: u64,
        sha: &str,
        stamp: Stamp,
        bytes: Option<Bytes>,
        file: Arc<File>,
    ) -> Option<Bytes> {
        Self::forget(state, sha);
        let cached = bytes.filter(|b| state.cached_bytes + b.len() as u64 <= budget);
        if let Some(b) = &cached {
            state.cached_bytes += b.len() as u64;
        }
        state.verified.insert(sha.to_owned(), Verified { stamp, cached: cached.clone(), file });
        state.corrupt.remove(sha);
        cached
    }

    /// Re-hashes every file on disk, whatever its metadata says; returns
    /// the digests found corrupt. Blocking.
    pub fn scrub(&self) -> Vec<String> {
        let mut corrupt = Vec::new();
        for sha in self.on_disk() {
            let path = self.blob_path(&sha);
            let Ok(meta) = fs::metadata(&path) else { continue };
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            match self.verify(&sha, &path, modified) {
                Ok(Lookup::Corrupt) => corrupt.push(sha),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scrub could not check a file"),
            }
        }
        corrupt
    }

    /// Claims the partial file of `sha` for one writer (an upload or a
    /// pull); a second claim fails with [`BlobError::InProgress`].
    pub fn claim(store: &Arc<Self>, sha: &str) -> Result<WriteClaim, BlobError> {
        check_digest(sha)?;
        if !store.state().writing.insert(sha.to_owned()) {
            return Err(BlobError::InProgress(sha.to_owned()));
        }
        Ok(WriteClaim { store: Arc::clone(store), sha: sha.to_owned() })
    }

    /// Bytes of `sha` already assembled (0 when none); the size when the
    /// whole file is held.
    pub fn held_bytes(&self, sha: &str) -> Result<u64, BlobError> {
        check_digest(sha)?;
        if let Ok(meta) = fs::metadata(self.blob_path(sha)) {
            return Ok(meta.len());
        }
        match fs::metadata(self.partial_path(sha)) {
            Ok(meta) => Ok(meta.len()),
            Err(_) => Ok(0),
        }
    }

    /// Whether the file's hash was checked and it is held (memory only, no I/O).
    pub fn is_verified(&self, sha: &str) -> bool {
        self.state().verified.contains_key(sha)
    }

    /// Whether the complete file is on disk (verified or not).
    pub fn is_complete(&self, sha: &str) -> bool {
        check_digest(sha).is_ok() && self.blob_path(sha).exists()
    }

    /// Opens the partial file of `sha` for appending at `offset`, which
    /// must equal the bytes held. Blocking.
    pub fn append_at(&self, sha: &str, offset: u64) -> Result<File, BlobError> {
        check_digest(sha)?;
        let path = self.partial_path(sha);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(format!("opening the partial file of {sha}")))?;
        let held = file.metadata().map_err(io_err(format!("reading {sha}")))?.len();
        if held != offset {
            return Err(BlobError::OffsetMismatch { offered: offset, held });
        }
        file.seek(SeekFrom::Start(offset)).map_err(io_err(format!("seeking in {sha}")))?;
        Ok(file)
    }

    /// Appends `data` to an open partial file. Blocking.
    pub fn write(file: &mut File, sha: &str, data: &[u8]) -> Result<(), BlobError> {
        file.write_all(data).map_err(io_err(format!("writing {sha}")))
    }

    /// Verifies the partial file of `sha` (size and hash) and moves it into
    /// place; a mismatch deletes it. Blocking.
    pub fn finish(&self, sha: &str, size: u64) -> Result<(), BlobError> {
        check_digest(sha)?;
        let partial = self.partial_path(sha);
        let keep = size <= self.cache_file_limit;
        let file = File::open(&partial).map_err(io_err(format!("opening the partial file of {sha}")))?;
        let stamp = |f: &File| f.metadata().map(|m| Stamp::of(&m)).map_err(io_err(format!("reading {sha}")));
        let before = stamp(&file)?;
        let (actual, len, bytes) = hash_file(&file, keep).map_err(io_err(format!("hashing {sha}")))?;
        // What is remembered as verified must be exactly what was hashed.
        if stamp(&file)? != before {
            let _ = fs::remove_file(&partial);
            return Err(BlobError::ChangedWhileVerifying(sha.to_owned()));
        }
        if len != size {
            if len > size {
                let _ = fs::remove_file(&partial);
            }
            return Err(BlobError::SizeMismatch { expected: size, actual: len });
        }
        if actual != sha {
            let _ = fs::remove_file(&partial);
            return Err(BlobError::HashMismatch { expected: sha.to_owned(), actual });
        }
        // Durable before it is acknowledged: the bytes reach the disk before
        // the rename makes them a blob, and the rename reaches it (in both
        // directories) before the caller records the file in the catalog. A
        // crash at any point leaves the whole verified file or none (a
        // partial file is never served: only `blobs/` is, and only after a
        // hash check).
        file.sync_all().map_err(io_err(format!("flushing {sha} to disk")))?;
        let target = self.blob_path(sha);
        fs::rename(&partial, &target).map_err(io_err(format!("moving {sha} into place")))?;
        for dir in [&self.blobs, &self.partial] {
            sync_dir(dir).map_err(io_err(format!("flushing {} to disk", dir.display())))?;
        }
        // The hash was just checked: remember that for the file now in place
        // (the open handle follows the rename; a rename keeps the stamp).
        Self::remember(&mut self.state(), self.cache_budget, sha, before, bytes, Arc::new(file));
        Ok(())
    }

    /// Where the writer holding `claim` resumes a file of `size` bytes:
    /// nowhere when the verified file is in place, otherwise after the bytes
    /// its partial file holds. A partial file that already holds `size`
    /// bytes (its writer was stopped after the last byte but before the move
    /// into place) is verified and moved now; one longer than `size`, or one
    /// that fails its check, is dropped and the writer starts at 0.
    /// Blocking (may hash the file).
    pub fn resume(&self, claim: &WriteClaim, size: u64) -> Result<Resume, BlobError> {
        let sha = claim.sha.as_str();
        match self.lookup(sha)? {
            Lookup::Ready(blob) if blob.len == size => return Ok(Resume::Whole),
            Lookup::Ready(blob) => return Err(BlobError::SizeMismatch { expected: size, actual: blob.len }),
            Lookup::Absent | Lookup::Corrupt => {}
        }
        let held = match fs::metadata(self.partial_path(sha)) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Resume::From(0)),
            Err(e) => return Err(io_err(format!("reading the partial file of {sha}"))(e)),
        };
        if held < size {
            return Ok(Resume::From(held));
        }
        if held == size {
            match self.finish(sha, size) {
                Ok(()) => return Ok(Resume::Whole),
                Err(e @ (BlobError::HashMismatch { .. } | BlobError::ChangedWhileVerifying(_))) => {
                    tracing::warn!(sha256 = sha, error = %e, "a complete partial file failed its check; starting over");
                }
                Err(e) => return Err(e),
            }
        }
        // Longer than announced, or not the announced content.
        self.discard_partial(sha);
        Ok(Resume::From(0))
    }

    /// Drops a partial file (after a failed pull).
    pub fn discard_partial(&self, sha: &str) {
        if check_digest(sha).is_ok() {
            let _ = fs::remove_file(self.partial_path(sha));
        }
    }

    /// Removes a file no longer needed by anything.
    pub fn remove(&self, sha: &str) {
        if check_digest(sha).is_err() {
            return;
        }
        Self::forget(&mut self.state(), sha);
        let _ = fs::remove_file(self.blob_path(sha));
    }

    /// Removes a file for garbage collection, unless a reader has it open
    /// (a download, an NBD session: they hold the verified file), a
    /// writer is writing it, or it arrived less than `min_age` ago.
    /// Whether it was removed.
    pub fn collect(&self, sha: &str, min_age: std::time::Duration) -> bool {
        if check_digest(sha).is_err() {
            return false;
        }
        let mut state = self.state();
        let open = state.verified.get(sha).is_some_and(|v| Arc::strong_count(&v.file) > 1);
        if open || state.writing.contains(sha) {
            return false;
        }
        let young = fs::metadata(self.blob_path(sha))
            .and_then(|m| m.modified())
            .map_or(true, |at| at.elapsed().unwrap_or_default() < min_age);
        if young {
            return false;
        }
        Self::forget(&mut state, sha);
        fs::remove_file(self.blob_path(sha)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    fn put(store: &BlobStore, data: &[u8]) -> String {
        let digest = sha(data);
        let mut f = store.append_at(&digest, 0).unwrap();
        BlobStore::write(&mut f, &digest, data).unwrap();
        drop(f);
        store.finish(&digest, data.len() as u64).unwrap();
        digest
    }

    #[test]
    fn abandoned_partial_files_go_and_fresh_or_claimed_ones_stay() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path(), 1 << 20, 1 << 30).unwrap());
        let (old, fresh, claimed) = (sha(b"old"), sha(b"fresh"), sha(b"claimed"));
        for digest in [&old, &fresh, &claimed] {
            let mut f = store.append_at(digest, 0).unwrap();
            BlobStore::write(&mut f, digest, b"half").unwrap();
        }
        let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86400);
        for digest in [&old, &claimed] {
            let file = File::options().write(true).open(dir.path().join("partial").join(digest)).unwrap();
            file.set_modified(two_days_ago).unwrap();
        }
        let _claim = BlobStore::claim(&store, &claimed).unwrap();
        assert_eq!(store.drop_abandoned_partials(Duration::from_secs(86400)), 1);
        assert_eq!(store.held_bytes(&old).unwrap(), 0);
        assert_eq!(store.held_bytes(&fresh).unwrap(), 4);
        assert_eq!(store.held_bytes(&claimed).unwrap(), 4);
    }

    #[test]
    fn collection_spares_open_young_and_written_files() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path(), 1 << 20, 1 << 30).unwrap());
        let digest = put(&store, b"golden disk");
        assert!(
            !store.collect(&digest, Duration::from_secs(3600)),
            "a file younger than the minimum age went"
        );
        let Lookup::Ready(reader) = store.lookup(&digest).unwrap() else { panic!("not ready") };
        assert!(!store.collect(&digest, Duration::ZERO), "a file open for a reader went");
        drop(reader);
        let claim = BlobStore::claim(&store, &digest).unwrap();
        assert!(!store.collect(&digest, Duration::ZERO), "a file being written went");
        drop(claim);
        assert!(store.collect(&digest, Duration::ZERO));
        assert!(matches!(store.lookup(&digest).unwrap(), Lookup::Absent));
        assert!(!store.collect(&digest, Duration::ZERO), "removed twice");
    }

    #[test]
    fn upload_resumes_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20, 1 << 30).unwrap();
        let data = b"hello, fleet".repeat(1000);
        let digest = sha(&data);
        let mut f = store.append_at(&digest, 0).unwrap();
        BlobStore::write(&mut f, &digest, &data[..5000]).unwrap();
        drop(f);
        assert_eq!(store.held_bytes(&digest).unwrap(), 5000);
        assert!(matches!(store.append_at(&digest, 10), Err(BlobError::OffsetMismatch { held: 5000, .. })));
        let mut f = store.append_at(&digest, 5000).unwrap();
        BlobStore::write(&mut f, &digest, &data[5000..]).unwrap();
        drop(f);
        store.finish(&digest, data.len() as u64).unwrap();
        match store.lookup(&digest).unwrap() {
            Lookup::Ready(b) => assert_eq!(b.cached.as_deref(), Some(&data[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_hash_is_rejected_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20, 1 << 30).unwrap();
        let claimed = sha(b"the real thing");
        let mut f = store.append_at(&claimed, 0).unwrap();
        BlobStore::write(&mut f, &claimed, b"an impostor!!!").unwrap();
        drop(f);
        assert!(matches!(store.finish(&claimed, 14), Err(BlobError::HashMismatch { .. })));
        assert_eq!(store.held_bytes(&claimed).unwrap(), 0);
        assert!(matches!(store.lookup(&claimed).unwrap(), Lookup::Absent));
    }

    #[test]
    fn corruption_on_disk_is_detected_and_the_file_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 0, 0).unwrap();
        let digest = put(&store, &[7u8; 4096]);
        assert!(matches!(store.lookup(&digest).unwrap(), Lookup::Ready(_)));
        // Flip a byte in place; the length stays the same.
        let path = dir.path().join("blobs").join(&digest);
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(100)).unwrap();
        f.write_all(&[8]).unwrap();
        drop(f);
        assert_eq!(store.scrub(), vec![digest.clone()]);
        assert!(matches!(store.lookup(&digest).unwrap(), Lookup::Absent));
        assert_eq!(store.corrupt(), vec![digest]);
    }

    #[test]
    fn one_writer_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path(), 0, 0).unwrap());
        let digest = sha(b"x");
        let claim = BlobStore::claim(&store, &digest).unwrap();
        assert!(matches!(BlobStore::claim(&store, &digest), Err(BlobError::InProgress(_))));
        drop(claim);
        assert!(BlobStore::claim(&store, &digest).is_ok());
    }

    /// Writes `data` as the partial file of `digest`, as a writer stopped
    /// by a crash leaves it.
    fn leave_partial(dir: &Path, digest: &str, data: &[u8]) {
        fs::write(dir.join("partial").join(digest), data).unwrap();
    }

    #[test]
    fn a_partial_file_holding_every_byte_is_moved_into_place_when_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path(), 0, 0).unwrap());
        let data = b"all of it".repeat(500);
        let digest = sha(&data);
        leave_partial(dir.path(), &digest, &data);
        assert!(!store.is_complete(&digest));
        let claim = BlobStore::claim(&store, &digest).unwrap();
        assert_eq!(store.resume(&claim, data.len() as u64).unwrap(), Resume::Whole);
        assert!(matches!(store.lookup(&digest).unwrap(), Lookup::Ready(b) if b.len == data.len() as u64));
        assert_eq!(store.held_bytes(&digest).unwrap(), data.len() as u64);
        assert!(!dir.path().join("partial").join(&digest).exists());
    }

    #[test]
    fn a_partial_file_that_cannot_be_the_file_is_dropped_when_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path(), 0, 0).unwrap());
        let digest = sha(b"the real thing");
        let claim = BlobStore::claim(&store, &digest).unwrap();
        // Every byte, but not the right ones (a torn write, say).
        leave_partial(dir.path(), &digest, b"the real th\0\0\0");
        assert_eq!(store.resume(&claim, 14).unwrap(), Resume::From(0));
        // More bytes than announced.
        leave_partial(dir.path(), &digest, b"the real thing, and more");
        assert_eq!(store.resume(&claim, 14).unwrap(), Resume::From(0));
        assert_eq!(store.held_bytes(&digest).unwrap(), 0);
        // Part of it: resumed after what is held.
        leave_partial(dir.path(), &digest, b"the real");
        assert_eq!(store.resume(&claim, 14).unwrap(), Resume::From(8));
        // Nothing at all, and an empty file is still to be written.
        let empty = sha(b"");
        let claim = BlobStore::claim(&store, &empty).unwrap();
        assert_eq!(store.resume(&claim, 0).unwrap(), Resume::From(0));
    }

    #[test]
    fn a_torn_file_in_place_is_checked_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path(), 0, 0).unwrap());
        let data = [3u8; 10_000];
        let digest = sha(&data);
        // What a rename that reached the disk before the bytes leaves.
        fs::write(dir.path().join("blobs").join(&digest), b"").unwrap();
        let claim = BlobStore::claim(&store, &digest).unwrap();
        assert_eq!(store.resume(&claim, data.len() as u64).unwrap(), Resume::From(0));
        assert!(!store.is_complete(&digest));
    }

    #[test]
    fn opening_keeps_resumable_partial_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let digest = {
            let store = BlobStore::open(dir.path(), 0, 0).unwrap();
            put(&store, b"in place")
        };
        let resumable = sha(b"half sent");
        leave_partial(dir.path(), &digest, b"in place");
        leave_partial(dir.path(), &resumable, b"half");
        leave_partial(dir.path(), "not-a-digest.tmp", b"junk");
        let store = BlobStore::open(dir.path(), 0, 0).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path().join("partial"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec![resumable.clone()]);
        assert_eq!(store.held_bytes(&resumable).unwrap(), 4);
        assert!(store.is_complete(&digest));
    }

    #[test]
    fn digests_are_checked() {
        assert!(check_digest(&"a".repeat(64)).is_ok());
        for bad in ["", "../etc/passwd", &"A".repeat(64), &"a".repeat(63), &"g".repeat(64)] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
    }
}
