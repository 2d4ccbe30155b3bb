//! An overlay store in one sparse file, for one boot of one client.
//!
//! The file is as long as the export and cluster `i` lives at its own
//! offset in it, so nothing maps clusters to slots: the file system
//! allocates what is written and leaves the rest as holes. A bitmap in
//! memory says which clusters the overlay holds (a hole in the file is
//! also what a zeroed cluster looks like, so the file alone cannot say).
//! The map is not saved here: a per-boot cache lives for one boot, and
//! its file is deleted when the store is dropped. [`super::PersistentOverlay`]
//! keeps the file and saves the map beside it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FallocateFlags, fallocate};

use super::{Contents, OverlayStore};
use crate::export::{ExportError, read_cached};
use crate::metrics::NbdMetrics;

/// The per-boot sparse-file store.
#[derive(Debug)]
pub struct SparseOverlay {
    path: PathBuf,
    file: File,
    size: u64,
    cluster: u64,
    /// One bit per cluster, set once the cluster's content is stored.
    map: Vec<AtomicU64>,
    /// Clusters in the overlay.
    used: AtomicU64,
    /// Their bytes (the export's last cluster may be short).
    held_bytes: AtomicU64,
    /// Most clusters the overlay may hold.
    cap_clusters: u64,
    cap_bytes: u64,
    metrics: Arc<NbdMetrics>,
    /// Keep the file when dropped (a persistent overlay's).
    keep: bool,
}

impl SparseOverlay {
    /// Creates the file at `path` (which must not exist) for an export of
    /// `size` bytes, holding at most `cap_bytes` in clusters of `cluster`
    /// bytes (a power of two).
    pub fn create(
        path: &Path,
        size: u64,
        cluster: u64,
        cap_bytes: u64,
        metrics: Arc<NbdMetrics>,
    ) -> std::io::Result<Self> {
        assert!(cluster.is_power_of_two(), "cluster size must be a power of two");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        file.set_len(size)?;
        let clusters = size.div_ceil(cluster);
        let words = usize::try_from(clusters.div_ceil(64)).map_err(std::io::Error::other)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            cluster,
            map: (0..words).map(|_| AtomicU64::new(0)).collect(),
            used: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            cap_clusters: cap_bytes / cluster,
            cap_bytes,
            metrics,
            keep: false,
        })
    }

    /// Opens the existing file at `path` holding the clusters whose bits
    /// `words` sets (a map saved by [`Self::map_words`]); the file is kept
    /// when the store is dropped.
    pub(crate) fn reopen(
        path: &Path,
        size: u64,
        cluster: u64,
        cap_bytes: u64,
        metrics: Arc<NbdMetrics>,
        words: &[u64],
    ) -> std::io::Result<Self> {
        assert!(cluster.is_power_of_two(), "cluster size must be a power of two");
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() != size {
            file.set_len(size)?;
        }
        let clusters = size.div_ceil(cluster);
        let expected = usize::try_from(clusters.div_ceil(64)).map_err(std::io::Error::other)?;
        if words.len() != expected {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "map of another size"));
        }
        let store = Self {
            path: path.to_owned(),
            file,
            size,
            cluster,
            map: words.iter().map(|w| AtomicU64::new(*w)).collect(),
            used: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            cap_clusters: cap_bytes / cluster,
            cap_bytes,
            metrics,
            keep: true,
        };
        for index in 0..clusters {
            if store.contains(index) {
                store.used.fetch_add(1, Ordering::AcqRel);
                store.held_bytes.fetch_add(store.cluster_len(index), Ordering::AcqRel);
                store.metrics.overlay_grew(store.cluster_len(index));
            }
        }
        Ok(store)
    }

    /// Keeps the file when the store is dropped.
    pub(crate) fn keep_file(mut self) -> Self {
        self.keep = true;
        self
    }

    /// The map now: one bit per cluster, set when the overlay holds it.
    pub(crate) fn map_words(&self) -> Vec<u64> {
        self.map.iter().map(|w| w.load(Ordering::Acquire)).collect()
    }

    /// The export's size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bit(index: u64) -> (usize, u64) {
        ((index / 64) as usize, 1 << (index % 64))
    }

    fn cluster_len(&self, index: u64) -> u64 {
        let start = index * self.cluster;
        (start + self.cluster).min(self.size) - start
    }

    fn punch(&self, index: u64) -> Result<(), ExportError> {
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        fallocate(&self.file, flags, index * self.cluster, self.cluster_len(index))
            .map_err(std::io::Error::from)?;
        Ok(())
    }

    /// Counts one more cluster against the cap.
    fn reserve(&self) -> Result<(), ExportError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.cap_clusters).then_some(used + 1)
            })
            .map(drop)
            .map_err(|_| ExportError::CacheFull { cap: self.cap_bytes })
    }
}

impl OverlayStore for SparseOverlay {
    fn cluster_size(&self) -> u64 {
        self.cluster
    }

    fn contains(&self, index: u64) -> bool {
        let (word, bit) = Self::bit(index);
        self.map.get(word).is_some_and(|w| w.load(Ordering::Acquire) & bit != 0)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ExportError> {
        self.file.read_exact_at(buf, offset)?;
        Ok(())
    }

    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), ExportError>> {
        read_cached(&self.file, buf, offset).map(|r| r.map_err(ExportError::from))
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), ExportError> {
        self.file.write_all_at(data, offset)?;
        Ok(())
    }

    fn insert(&self, index: u64, contents: Contents<'_>) -> Result<(), ExportError> {
        if self.contains(index) {
            return match contents {
                Contents::Data(data) => self.write_at(data, index * self.cluster),
                Contents::Zeroes => self.zero(index),
            };
        }
        self.reserve()?;
        let stored = match contents {
            Contents::Data(data) => self.write_at(data, index * self.cluster),
            // A cluster never written is a hole already, unless it was
            // written and trimmed before: punch it again to be sure.
            Contents::Zeroes => self.punch(index),
        };
        if let Err(e) = stored {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        let (word, bit) = Self::bit(index);
        self.map[word].fetch_or(bit, Ordering::Release);
        self.held_bytes.fetch_add(self.cluster_len(index), Ordering::AcqRel);
        self.metrics.overlay_grew(self.cluster_len(index));
        Ok(())
    }

    fn zero(&self, index: u64) -> Result<(), ExportError> {
        self.punch(index)
    }

    fn remove(&self, index: u64) -> Result<(), ExportError> {
        let (word, bit) = Self::bit(index);
        let Some(entry) = self.map.get(word) else { return Ok(()) };
        if entry.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
            self.used.fetch_sub(1, Ordering::AcqRel);
            self.held_bytes.fetch_sub(self.cluster_len(index), Ordering::AcqRel);
            self.metrics.overlay_shrank(self.cluster_len(index));
            self.punch(index)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), ExportError> {
        self.file.sync_data()?;
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.held_bytes.load(Ordering::Acquire)
    }
}

impl Drop for SparseOverlay {
    fn drop(&mut self) {
        self.metrics.overlay_shrank(self.held_bytes.load(Ordering::Acquire));
        if self.keep {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), cause = %e, "could not delete a write cache");
        }
    }
}
