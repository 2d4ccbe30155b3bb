//! What a transfer sends: files under the root, resolved safely, with hot
//! small files kept in memory and large ones read in bounded chunks.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::path::{PathError, relative_path};
use crate::wire::{Mode, to_netascii};

/// Bytes read from disk at a time for files not held in memory.
const CHUNK: usize = 256 * 1024;
/// Largest file served in netascii (converted in memory).
const MAX_NETASCII: u64 = 16 * 1024 * 1024;

/// Why a file cannot be served. The text goes to the client: it never
/// names a server path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ContentError {
    /// No such file.
    #[error("file not found")]
    NotFound,
    /// Outside the root or not a regular file.
    #[error("access violation: {0}")]
    Refused(&'static str),
    /// Too large for netascii conversion.
    #[error("file too large for netascii")]
    TooLarge,
    /// Reading failed.
    #[error("cannot read file")]
    Io,
}

impl From<PathError> for ContentError {
    fn from(e: PathError) -> Self {
        Self::Refused(match e {
            PathError::Backslash => "backslashes are not allowed",
            PathError::Parent => "parent directories are not allowed",
            _ => "bad file name",
        })
    }
}

/// The bytes of one transfer.
pub(crate) enum Content {
    /// Whole content in memory (hot files, netascii).
    Memory(Arc<[u8]>),
    /// A file read in chunks.
    File { file: Arc<File>, size: u64, chunk_at: u64, chunk: Vec<u8> },
}

impl Content {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Self::Memory(bytes) => bytes.len() as u64,
            Self::File { size, .. } => *size,
        }
    }

    /// Bytes `offset..offset + len` (within the content).
    pub(crate) async fn block(&mut self, offset: u64, len: usize) -> std::io::Result<&[u8]> {
        match self {
            Self::Memory(bytes) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
                let end = start.saturating_add(len).min(bytes.len());
                Ok(&bytes[start..end])
            }
            Self::File { file, size, chunk_at, chunk } => {
                let end = offset + len as u64;
                let cached = offset >= *chunk_at && end <= *chunk_at + chunk.len() as u64;
                if !cached {
                    let want = (CHUNK.max(len) as u64).min(size.saturating_sub(offset));
                    let file = Arc::clone(file);
                    let mut buf = std::mem::take(chunk);
                    buf.resize(usize::try_from(want).unwrap_or(CHUNK), 0);
                    let buf = tokio::task::spawn_blocking(move || {
                        file.read_exact_at(&mut buf, offset).map(|()| buf)
                    })
                    .await
                    .map_err(std::io::Error::other)??;
                    *chunk = buf;
                    *chunk_at = offset;
                }
                let start = usize::try_from(offset - *chunk_at).unwrap_or(0);
                Ok(&chunk[start..start + len])
            }
        }
    }
}

struct Cached {
    bytes: Arc<[u8]>,
    len: u64,
    modified: Option<SystemTime>,
}

/// Files under a root, with a cache of small hot files.
pub(crate) struct Files {
    root: PathBuf,
    cache: Mutex<HashMap<PathBuf, Cached>>,
    cache_bytes: u64,
    cache_file_limit: u64,
}

impl Files {
    pub(crate) fn new(root: &Path, cache_bytes: u64, cache_file_limit: u64) -> std::io::Result<Self> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!("{} is not a directory", root.display())));
        }
        Ok(Self { root, cache: Mutex::default(), cache_bytes, cache_file_limit })
    }

    /// Opens what `name` asks for, refusing anything outside the root.
    pub(crate) async fn open(&self, name: &str, mode: Mode) -> Result<Content, ContentError> {
        let relative = relative_path(name)?;
        let root = self.root.clone();
        // Resolving symlinks touches the disk: off the async threads.
        let resolved = tokio::task::spawn_blocking(
            move || -> Result<(PathBuf, File, std::fs::Metadata), ContentError> {
                let path = root.join(&relative).canonicalize().map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => ContentError::NotFound,
                    _ => ContentError::Io,
                })?;
                if !path.starts_with(&root) {
                    return Err(ContentError::Refused("outside the served directory"));
                }
                let file = File::open(&path).map_err(|_| ContentError::Io)?;
                let meta = file.metadata().map_err(|_| ContentError::Io)?;
                if !meta.is_file() {
                    return Err(ContentError::Refused("not a regular file"));
                }
                Ok((path, file, meta))
            },
        )
        .await
        .map_err(|_| ContentError::Io)??;
        let (path, file, meta) = resolved;
        let len = meta.len();
        if mode == Mode::Netascii {
            if len > MAX_NETASCII {
                return Err(ContentError::TooLarge);
            }
            let bytes = self.read_whole(file, len).await?;
            return Ok(Content::Memory(to_netascii(&bytes).into()));
        }
        if len <= self.cache_file_limit {
            let modified = meta.modified().ok();
            if let Some(hit) = self.lookup(&path, len, modified) {
                return Ok(Content::Memory(hit));
            }
            let bytes: Arc<[u8]> = self.read_whole(file, len).await?.into();
            self.insert(path, Arc::clone(&bytes), len, modified);
            return Ok(Content::Memory(bytes));
        }
        Ok(Content::File { file: Arc::new(file), size: len, chunk_at: 0, chunk: Vec::new() })
    }

    async fn read_whole(&self, file: File, len: u64) -> Result<Vec<u8>, ContentError> {
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; usize::try_from(len).map_err(|_| ContentError::TooLarge)?];
            file.read_exact_at(&mut buf, 0).map_err(|_| ContentError::Io)?;
            Ok(buf)
        })
        .await
        .map_err(|_| ContentError::Io)?
    }

    fn lookup(&self, path: &Path, len: u64, modified: Option<SystemTime>) -> Option<Arc<[u8]>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(path).filter(|c| c.len == len && c.modified == modified).map(|c| Arc::clone(&c.bytes))
    }

    /// Caches a file; when full, drops everything (simple, and a boot storm
    /// re-fills it with the few loaders that matter within one round).
    fn insert(&self, path: PathBuf, bytes: Arc<[u8]>, len: u64, modified: Option<SystemTime>) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let used: u64 = cache.values().map(|c| c.len).sum();
        if used + len > self.cache_bytes {
            cache.clear();
        }
        if len <= self.cache_bytes {
            cache.insert(path, Cached { bytes, len, modified });
        }
    }
}
