//! Copy-on-write over a read-only base: the `server` write cache.
//!
//! The export is cut into clusters of a fixed size. A cluster the client
//! never wrote reads from the base; the first write to a cluster stores
//! the whole cluster in the overlay (copying the base's bytes around a
//! partial write first), and from then on the overlay answers for it.
//! [`CowExport`] does that bookkeeping over any [`OverlayStore`]: the
//! per-boot sparse file here ([`SparseOverlay`]), and the same file with
//! its map saved at every flush, surviving reboots and restarts
//! ([`PersistentOverlay`]). Mirroring every write to a second replica is
//! [`crate::mirror`]'s, around the export.
//!
//! Concurrency: requests of one session run in parallel. Turning a base
//! cluster into an overlay cluster (and back, on trim) happens under a
//! lock striped by cluster index, and a cluster counts as present only
//! once its whole content is stored, so a read never sees half a copy.
//! Overlapping requests in flight at once have no defined order in NBD;
//! non-overlapping ones never disturb each other.

mod caches;
mod persistent;
mod sparse;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use self::caches::{ClientCache, DEFAULT_CLUSTER_SIZE, WriteCacheError, WriteCaches};
pub use self::persistent::{PersistentOverlay, PersistentOverlayError};
pub use self::sparse::SparseOverlay;
use crate::export::{Export, ExportError, check_range};
use crate::options::ExportInfo;

/// What a new overlay cluster holds.
#[derive(Clone, Copy, Debug)]
pub enum Contents<'a> {
    /// These bytes: the cluster's whole length.
    Data(&'a [u8]),
    /// Zeroes (a hole where the store can make one).
    Zeroes,
}

/// Where an overlay keeps its clusters. Cluster `i` covers bytes
/// `i * cluster_size ..` of the export (the last one may be shorter).
/// [`CowExport`] serializes [`Self::insert`] and [`Self::remove`] per
/// cluster; everything else may run concurrently.
pub trait OverlayStore: Send + Sync + std::fmt::Debug {
    /// Cluster size in bytes: a power of two, constant.
    fn cluster_size(&self) -> u64;
    /// Whether cluster `index` is in the overlay.
    fn contains(&self, index: u64) -> bool;
    /// Reads from clusters the overlay contains.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ExportError>;
    /// [`Self::read_at`] without waiting for a disk, or `None`
    /// (see [`Export::try_read_at`]).
    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), ExportError>> {
        let _ = (buf, offset);
        None
    }
    /// Overwrites bytes of clusters the overlay contains.
    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), ExportError>;
    /// Adds cluster `index` with its whole content; fails with
    /// [`ExportError::CacheFull`] at the store's cap.
    fn insert(&self, index: u64, contents: Contents<'_>) -> Result<(), ExportError>;
    /// Zeroes a cluster the overlay contains (it stays in the overlay).
    fn zero(&self, index: u64) -> Result<(), ExportError>;
    /// Drops cluster `index`: the base shows through again.
    fn remove(&self, index: u64) -> Result<(), ExportError>;
    /// Makes everything stored so far durable.
    fn flush(&self) -> Result<(), ExportError>;
    /// Bytes the overlay holds.
    fn used_bytes(&self) -> u64;
}

/// Stripes of the per-cluster lock.
const LOCK_STRIPES: usize = 64;

/// A writable export: `store` over a read-only `base`.
#[derive(Debug)]
pub struct CowExport<S> {
    base: Arc<dyn Export>,
    store: S,
    size: u64,
    cluster: u64,
    locks: Vec<Mutex<()>>,
    /// One cluster of zeroes, for write-zeroes that cover part of one.
    zeroes: Vec<u8>,
}

impl<S: OverlayStore> CowExport<S> {
    /// `store` over `base`; the store must be sized for the base.
    pub fn new(base: Arc<dyn Export>, store: S) -> Self {
        let size = base.info().size;
        let cluster = store.cluster_size();
        let zeroes = vec![0u8; usize::try_from(cluster).expect("cluster size fits in memory")];
        Self {
            base,
            store,
            size,
            cluster,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            zeroes,
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn lock(&self, index: u64) -> MutexGuard<'_, ()> {
        self.locks[(index % LOCK_STRIPES as u64) as usize].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes `start..end` of cluster `index`'s range, clipped to the export.
    fn cluster_range(&self, index: u64) -> (u64, u64) {
        let start = index * self.cluster;
        (start, (start + self.cluster).min(self.size))
    }

    /// Splits `offset..end` at cluster boundaries, grouping neighbours
    /// that are both in the overlay or both not: `(start, end, present)`.
    fn runs(&self, offset: u64, end: u64) -> Vec<(u64, u64, bool)> {
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let index = pos / self.cluster;
            let piece_end = self.cluster_range(index).1.min(end);
            let present = self.store.contains(index);
            match runs.last_mut() {
                Some(last) if last.2 == present => last.1 = piece_end,
                _ => runs.push((pos, piece_end, present)),
            }
            pos = piece_end;
        }
        runs
    }

    /// Writes `data` at `offset` within cluster `index`.
    fn write_in_cluster(&self, index: u64, data: &[u8], offset: u64) -> Result<(), ExportError> {
        if self.store.contains(index) {
            return self.store.write_at(data, offset);
        }
        let _guard = self.lock(index);
        if self.store.contains(index) {
            return self.store.write_at(data, offset);
        }
        let (start, end) = self.cluster_range(index);
        if offset == start && offset + data.len() as u64 == end {
            return self.store.insert(index, Contents::Data(data));
        }
        let mut whole = vec![0u8; (end - start) as usize];
        self.base.read_at(&mut whole, start)?;
        let at = (offset - start) as usize;
        whole[at..at + data.len()].copy_from_slice(data);
        self.store.insert(index, Contents::Data(&whole))
    }

    /// Clusters entirely inside `offset..offset + length` (the export's
    /// short last cluster counts when the range reaches the end).
    fn whole_clusters(&self, offset: u64, length: u64) -> std::ops::Range<u64> {
        let end = offset + length;
        let first = offset.div_ceil(self.cluster);
        let last = if end == self.size { end.div_ceil(self.cluster) } else { end / self.cluster };
        first..last.max(first)
    }
}

/// What a copy-on-write export over `base` with clusters of `cluster`
/// bytes looks like to clients (for describing one without creating it).
pub fn cow_info(base: ExportInfo, cluster: u64) -> ExportInfo {
    ExportInfo {
        read_only: false,
        // One overlay per session: a second connection would not share it.
        multi_conn: false,
        trim: true,
        write_zeroes: true,
        // Writes of whole clusters need no copy from the base.
        preferred_block: u32::try_from(cluster).unwrap_or(4096),
        ..base
    }
}

impl<S: OverlayStore> Export for CowExport<S> {
    fn info(&self) -> ExportInfo {
        cow_info(self.base.info(), self.cluster)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ExportError> {
        check_range(offset, buf.len() as u64, self.size)?;
        for (start, end, present) in self.runs(offset, offset + buf.len() as u64) {
            let piece = &mut buf[(start - offset) as usize..(end - offset) as usize];
            if present {
                self.store.read_at(piece, start)?;
            } else {
                self.base.read_at(piece, start)?;
            }
        }
        Ok(())
    }

    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), ExportError>> {
        if let Err(e) = check_range(offset, buf.len() as u64, self.size) {
            return Some(Err(e));
        }
        for (start, end, present) in self.runs(offset, offset + buf.len() as u64) {
            let piece = &mut buf[(start - offset) as usize..(end - offset) as usize];
            let read = if present {
                self.store.try_read_at(piece, start)
            } else {
                self.base.try_read_at(piece, start)
            };
            match read? {
                Ok(()) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(()))
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> Result<(), ExportError> {
        check_range(offset, data.len() as u64, self.size)?;
        for (start, end, present) in self.runs(offset, offset + data.len() as u64) {
            let piece = &data[(start - offset) as usize..(end - offset) as usize];
            if present {
                // Clusters only leave the overlay on trim, which a client
                // does not overlap with its own writes.
                self.store.write_at(piece, start)?;
                continue;
            }
            let mut pos = start;
            while pos < end {
                let index = pos / self.cluster;
                let piece_end = self.cluster_range(index).1.min(end);
                let slice = &data[(pos - offset) as usize..(piece_end - offset) as usize];
                self.write_in_cluster(index, slice, pos)?;
                pos = piece_end;
            }
        }
        if fua {
            self.store.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), ExportError> {
        self.store.flush()
    }

    fn trim(&self, offset: u64, length: u64, _fua: bool) -> Result<(), ExportError> {
        check_range(offset, length, self.size)?;
        // Only whole clusters go back to the base: after a trim the client
        // may assume nothing about the range, so the base's bytes will do.
        for index in self.whole_clusters(offset, length) {
            if self.store.contains(index) {
                let _guard = self.lock(index);
                self.store.remove(index)?;
            }
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, length: u64, fua: bool, no_hole: bool) -> Result<(), ExportError> {
        check_range(offset, length, self.size)?;
        let end = offset + length;
        let mut pos = offset;
        while pos < end {
            let index = pos / self.cluster;
            let (start, cluster_end) = self.cluster_range(index);
            let piece_end = cluster_end.min(end);
            let whole = pos == start && piece_end == cluster_end;
            if whole && !no_hole {
                let _guard = self.lock(index);
                if self.store.contains(index) {
                    self.store.zero(index)?;
                } else {
                    self.store.insert(index, Contents::Zeroes)?;
                }
            } else {
                self.write_in_cluster(index, &self.zeroes[..(piece_end - pos) as usize], pos)?;
            }
            pos = piece_end;
        }
        if fua {
            self.store.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
