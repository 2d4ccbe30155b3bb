//! An overlay store that survives reboots and restarts: the
//! `server-persistent` write cache's (PVS's "private image"). The
//! clusters live in a sparse file as in [`SparseOverlay`], which it wraps,
//! and the map of the clusters it holds is saved beside it
//! (`<file>.map`) at every flush, naming the base it overlays.
//!
//! Crash consistency: a flush takes a snapshot of the map, then makes the
//! data durable, then replaces the saved map (a new file, synced, renamed
//! over the old one). A cluster's bit is set only once its data is
//! written, so every bit a saved map holds names data that was durable
//! before the map was. After a crash the overlay is what the last flush
//! saved: writes since may be lost (NBD allows that for unflushed
//! writes), a cluster trimmed since may read as zeroes (a trim leaves
//! content undefined). Opening an overlay saved over another base (image
//! version) or of another geometry fails rather than show a mix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Contents, OverlayStore, SparseOverlay};
use crate::export::ExportError;
use crate::metrics::NbdMetrics;

const MAGIC: &[u8; 8] = b"BFOVMAP1";
/// Magic, size, cluster size, base name length.
const HEADER_LEN: usize = 8 + 8 + 8 + 2;

/// Why a persistent overlay cannot be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistentOverlayError {
    /// Reading or writing its files failed.
    #[error("write cache {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The saved map cannot be read.
    #[error("write cache map {path} is damaged: {reason}")]
    Corrupt {
        /// The map file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The overlay was saved over another base or for another geometry.
    #[error("write cache {path} overlays {saved}, not {wanted}")]
    OtherBase {
        /// The map file.
        path: PathBuf,
        /// What it was saved for (base, size, cluster size).
        saved: String,
        /// What was asked for.
        wanted: String,
    },
}

/// A map as saved.
#[derive(Debug, PartialEq, Eq)]
struct SavedMap {
    size: u64,
    cluster: u64,
    base: String,
    words: Vec<u64>,
}

fn encode_map(map: &SavedMap) -> Vec<u8> {
    let base = map.base.as_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + base.len() + 8 + map.words.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&map.size.to_le_bytes());
    out.extend_from_slice(&map.cluster.to_le_bytes());
    out.extend_from_slice(&u16::try_from(base.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(&base[..base.len().min(usize::from(u16::MAX))]);
    out.extend_from_slice(&(map.words.len() as u64).to_le_bytes());
    for word in &map.words {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

fn parse_map(bytes: &[u8]) -> Result<SavedMap, &'static str> {
    let u64_at = |at: usize| -> Result<u64, &'static str> {
        let field = bytes.get(at..at + 8).ok_or("truncated")?;
        Ok(u64::from_le_bytes(field.try_into().map_err(|_| "truncated")?))
    };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err("not a write cache map");
    }
    let size = u64_at(8)?;
    let cluster = u64_at(16)?;
    if !cluster.is_power_of_two() {
        return Err("cluster size not a power of two");
    }
    let base_len = usize::from(u16::from_le_bytes([bytes[24], bytes[25]]));
    let base = bytes.get(HEADER_LEN..HEADER_LEN + base_len).ok_or("truncated")?;
    let base = String::from_utf8(base.to_vec()).map_err(|_| "base name not UTF-8")?;
    let words_at = HEADER_LEN + base_len;
    let count = u64_at(words_at)?;
    if count != size.div_ceil(cluster).div_ceil(64) {
        return Err("map length does not match the size");
    }
    let words = bytes.get(words_at + 8..).ok_or("truncated")?;
    if words.len() as u64 != count * 8 {
        return Err("map length does not match its count");
    }
    let words = words.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))).collect();
    Ok(SavedMap { size, cluster, base, words })
}

/// The overlay store of a `server-persistent` write cache.
#[derive(Debug)]
pub struct PersistentOverlay {
    sparse: SparseOverlay,
    map_path: PathBuf,
    base: String,
    /// One save at a time.
    saving: Mutex<()>,
}

impl PersistentOverlay {
    /// Opens the overlay in `path` (and `path.map`) over `base` (the name
    /// of the base image version), creating both when there is no map
    /// yet. An overlay saved for another base or geometry is refused.
    pub fn open(
        path: &Path,
        base: &str,
        size: u64,
        cluster: u64,
        cap_bytes: u64,
        metrics: Arc<NbdMetrics>,
    ) -> Result<Self, PersistentOverlayError> {
        let map_path = path.with_extension("map");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PersistentOverlayError::Io { path, source }
        };
        let wanted = format!("{base} ({size} bytes, {cluster}-byte clusters)");
        let sparse = match std::fs::read(&map_path) {
            Ok(bytes) => {
                let corrupt = |reason| PersistentOverlayError::Corrupt { path: map_path.clone(), reason };
                let saved = parse_map(&bytes).map_err(corrupt)?;
                if saved.base != base || saved.size != size || saved.cluster != cluster {
                    let saved =
                        format!("{} ({} bytes, {}-byte clusters)", saved.base, saved.size, saved.cluster);
                    return Err(PersistentOverlayError::OtherBase { path: map_path, saved, wanted });
                }
                SparseOverlay::reopen(path, size, cluster, cap_bytes, metrics, &saved.words)
                    .map_err(io(path))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No map: nothing was ever saved; data without one is a
                // leftover of a cache that never flushed.
                let _ = std::fs::remove_file(path);
                SparseOverlay::create(path, size, cluster, cap_bytes, metrics).map_err(io(path))?.keep_file()
            }
            Err(e) => return Err(io(&map_path)(e)),
        };
        let overlay = Self { sparse, map_path, base: base.to_owned(), saving: Mutex::new(()) };
        overlay.save().map_err(|e| match e {
            ExportError::Io(source) => PersistentOverlayError::Io { path: overlay.map_path.clone(), source },
            _ => PersistentOverlayError::Corrupt { path: overlay.map_path.clone(), reason: "cannot save" },
        })?;
        Ok(overlay)
    }

    /// Deletes the overlay's files (a reset: the host's next session
    /// starts from the base again).
    pub fn delete(self) -> std::io::Result<()> {
        let data = self.sparse.path().to_owned();
        let map = self.map_path.clone();
        drop(self);
        std::fs::remove_file(map)?;
        std::fs::remove_file(data)
    }

    /// Snapshot of the map, data made durable, then the map saved.
    fn save(&self) -> Result<(), ExportError> {
        let _one_at_a_time = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let words = self.sparse.map_words();
        self.sparse.flush()?;
        let map = SavedMap {
            size: self.sparse.size(),
            cluster: self.sparse.cluster_size(),
            base: self.base.clone(),
            words,
        };
        let temporary = self.map_path.with_extension("map.new");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&encode_map(&map))?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.map_path)?;
        if let Some(dir) = self.map_path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl OverlayStore for PersistentOverlay {
    fn cluster_size(&self) -> u64 {
        self.sparse.cluster_size()
    }

    fn contains(&self, index: u64) -> bool {
        self.sparse.contains(index)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ExportError> {
        self.sparse.read_at(buf, offset)
    }

    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), ExportError>> {
        self.sparse.try_read_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), ExportError> {
        self.sparse.write_at(data, offset)
    }

    fn insert(&self, index: u64, contents: Contents<'_>) -> Result<(), ExportError> {
        self.sparse.insert(index, contents)
    }

    fn zero(&self, index: u64) -> Result<(), ExportError> {
        self.sparse.zero(index)
    }

    fn remove(&self, index: u64) -> Result<(), ExportError> {
        self.sparse.remove(index)
    }

    fn flush(&self) -> Result<(), ExportError> {
        self.save()
    }

    fn used_bytes(&self) -> u64 {
        self.sparse.used_bytes()
    }
}

#[cfg(test)]
mod tests;
