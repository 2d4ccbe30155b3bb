//! What a transfer sends: files under the root, resolved safely, with hot
//! small files kept in memory and large ones read in bounded chunks;
//! netascii converted as it streams.
//!
//! Memory per transfer is bounded whatever the file: a file in the hot
//! cache is shared, not copied; any other file is read through one chunk
//! buffer ([`CHUNK`], or one block if larger); netascii adds one block of
//! output and a window's worth of [`Checkpoints`]. Rendered files are
//! shared the same way and are small.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::netascii::{self, Checkpoints};
use crate::path::{PathError, relative_path};
use crate::wire::Mode;

/// Bytes read from disk at a time for files not held in memory.
const CHUNK: usize = 256 * 1024;

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

/// The bytes a transfer reads: shared memory, or a file through a chunk.
enum Source {
    /// Whole content in memory, shared (hot files, rendered files).
    Memory(Arc<[u8]>),
    /// A file read in chunks.
    File { file: Arc<File>, size: u64, chunk_at: u64, chunk: Vec<u8> },
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Self::Memory(bytes) => bytes.len() as u64,
            Self::File { size, .. } => *size,
        }
    }

    /// Bytes from `offset` on: at least one and at most `max` unless the
    /// source ends at `offset`; exactly `max` if `exact` (and within the
    /// source).
    async fn read(&mut self, offset: u64, max: usize, exact: bool) -> std::io::Result<&[u8]> {
        match self {
            Self::Memory(bytes) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
                let end = start.saturating_add(max).min(bytes.len());
                Ok(&bytes[start..end])
            }
            Self::File { file, size, chunk_at, chunk } => {
                let available = size.saturating_sub(offset);
                let max = usize::try_from(available).map_or(max, |a| a.min(max));
                let chunk_end = *chunk_at + chunk.len() as u64;
                let held = offset >= *chunk_at
                    && if exact { offset + max as u64 <= chunk_end } else { offset < chunk_end };
                if !held && max > 0 {
                    let want = (CHUNK.max(max) as u64).min(available);
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
                let start = usize::try_from(offset.saturating_sub(*chunk_at)).unwrap_or(0).min(chunk.len());
                let end = start.saturating_add(max).min(chunk.len());
                Ok(&chunk[start..end])
            }
        }
    }

    /// Length once converted to netascii: one pass, through one chunk.
    async fn netascii_len(&self) -> std::io::Result<u64> {
        match self {
            Self::Memory(bytes) => Ok(count_netascii(bytes)),
            Self::File { file, size, .. } => {
                let (file, size) = (Arc::clone(file), *size);
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; CHUNK];
                    let (mut at, mut total) = (0u64, 0u64);
                    while at < size {
                        let n = usize::try_from(size - at).map_or(CHUNK, |left| left.min(CHUNK));
                        file.read_exact_at(&mut buf[..n], at)?;
                        total += netascii::converted_len(&buf[..n]);
                        at += n as u64;
                    }
                    Ok(total)
                })
                .await
                .map_err(std::io::Error::other)?
            }
        }
    }
}

/// netascii state of one transfer.
struct Netascii {
    /// Converted length.
    len: u64,
    checkpoints: Checkpoints,
    /// The block being built.
    out: Vec<u8>,
}

/// The bytes of one transfer.
pub(crate) struct Content {
    source: Source,
    netascii: Option<Netascii>,
}

impl Content {
    /// `source` served in `mode`: for netascii the converted length is
    /// counted here (one pass over a file on disk, keeping nothing), so
    /// tsize stays exact.
    async fn in_mode(source: Source, mode: Mode) -> Result<Self, ContentError> {
        let netascii_len = match mode {
            Mode::Octet => None,
            Mode::Netascii => Some(source.netascii_len().await.map_err(|_| ContentError::Io)?),
        };
        Ok(Self::with_netascii_len(source, netascii_len))
    }

    /// `source`, in netascii if its converted length is given.
    fn with_netascii_len(source: Source, netascii_len: Option<u64>) -> Self {
        let netascii =
            netascii_len.map(|len| Netascii { len, checkpoints: Checkpoints::new(2), out: Vec::new() });
        Self { source, netascii }
    }

    /// Shared bytes in `mode`.
    pub(crate) async fn memory(bytes: Arc<[u8]>, mode: Mode) -> Result<Self, ContentError> {
        Self::in_mode(Source::Memory(bytes), mode).await
    }

    /// Length on the wire.
    pub(crate) fn len(&self) -> u64 {
        self.netascii.as_ref().map_or_else(|| self.source.len(), |n| n.len)
    }

    /// Tells the content how far back a transfer may ask again: from the
    /// first block of a window of `windowsize` blocks.
    pub(crate) fn set_windowsize(&mut self, windowsize: u16) {
        if let Some(n) = &mut self.netascii {
            n.checkpoints = Checkpoints::new(usize::from(windowsize) + 1);
        }
    }

    /// Bytes `offset..offset + len` (within [`Self::len`]).
    pub(crate) async fn block(&mut self, offset: u64, len: usize) -> std::io::Result<&[u8]> {
        let Some(n) = &mut self.netascii else { return self.source.read(offset, len, true).await };
        let shrunk = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank");
        let (mut at, mut position) = n.checkpoints.before(offset);
        // Sized once: the block buffer never grows past one block.
        n.out.clear();
        n.out.reserve_exact(len);
        // Only when a checkpoint was lost: convert and drop what precedes.
        while at < offset {
            n.out.clear();
            let want = usize::try_from(offset - at).map_or(len, |w| w.min(len.max(1)));
            let source = self.source.read(position.source, want, false).await?;
            if source.is_empty() && position.pending.is_none() {
                return Err(shrunk());
            }
            netascii::encode(&mut position, source, &mut n.out, want);
            at += n.out.len() as u64;
        }
        n.out.clear();
        while n.out.len() < len {
            // Each source byte gives at least one converted byte.
            let source = self.source.read(position.source, len - n.out.len(), false).await?;
            if source.is_empty() && position.pending.is_none() {
                return Err(shrunk());
            }
            netascii::encode(&mut position, source, &mut n.out, len);
        }
        n.checkpoints.record(offset + len as u64, position);
        Ok(&n.out)
    }

    /// Bytes this transfer holds for itself (shared content not counted).
    #[cfg(test)]
    fn private_bytes(&self) -> usize {
        let source = match &self.source {
            Source::Memory(_) => 0,
            Source::File { chunk, .. } => chunk.capacity(),
        };
        let netascii = self
            .netascii
            .as_ref()
            .map_or(0, |n| n.out.capacity() + n.checkpoints.len() * size_of::<(u64, netascii::Position)>());
        source + netascii
    }
}

struct Cached {
    hot: Arc<Hot>,
    len: u64,
    modified: Option<SystemTime>,
}

/// A file held in memory, shared by every transfer of it.
struct Hot {
    bytes: Arc<[u8]>,
    /// Its length in netascii, counted once, off the async threads, when
    /// the first netascii transfer asks: a request costs no pass over the
    /// file of its own (forged netascii requests for a large file would
    /// otherwise each buy a full count, on the threads that serve
    /// everything else in the process).
    netascii_len: tokio::sync::OnceCell<u64>,
}

impl Hot {
    /// The file as a transfer's content in `mode`.
    async fn content(&self, mode: Mode) -> Result<Content, ContentError> {
        let netascii_len = match mode {
            Mode::Octet => None,
            Mode::Netascii => Some(
                *self
                    .netascii_len
                    .get_or_try_init(|| {
                        let bytes = Arc::clone(&self.bytes);
                        async move {
                            tokio::task::spawn_blocking(move || count_netascii(&bytes))
                                .await
                                .map_err(|_| ContentError::Io)
                        }
                    })
                    .await?,
            ),
        };
        Ok(Content::with_netascii_len(Source::Memory(Arc::clone(&self.bytes)), netascii_len))
    }
}

/// How often an in-memory file of each length was counted for netascii
/// (tests only; by length, as tests run side by side).
#[cfg(test)]
static NETASCII_COUNTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// The netascii length of a file held in memory.
fn count_netascii(bytes: &[u8]) -> u64 {
    #[cfg(test)]
    NETASCII_COUNTS.lock().unwrap_or_else(PoisonError::into_inner).push(bytes.len());
    netascii::converted_len(bytes)
}

/// Files under a root, with a cache of small hot files.
pub(crate) struct Files {
    root: PathBuf,
    cache: Mutex<HashMap<PathBuf, Cached>>,
    /// Held while a file is read into the cache: requests that arrive
    /// together for a file not cached yet (a boot storm, or forged
    /// requests) wait for that one read and share its bytes, instead of
    /// each reading a private copy of the whole file.
    filling: tokio::sync::Mutex<()>,
    cache_bytes: u64,
    cache_file_limit: u64,
}

impl Files {
    pub(crate) fn new(root: &Path, cache_bytes: u64, cache_file_limit: u64) -> std::io::Result<Self> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!("{} is not a directory", root.display())));
        }
        Ok(Self {
            root,
            cache: Mutex::default(),
            filling: tokio::sync::Mutex::new(()),
            cache_bytes,
            cache_file_limit,
        })
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
        if len > self.cache_file_limit {
            let source = Source::File { file: Arc::new(file), size: len, chunk_at: 0, chunk: Vec::new() };
            return Content::in_mode(source, mode).await;
        }
        let modified = meta.modified().ok();
        if let Some(hot) = self.lookup(&path, len, modified) {
            return hot.content(mode).await;
        }
        let filling = self.filling.lock().await;
        let hot = match self.lookup(&path, len, modified) {
            Some(hot) => hot,
            None => {
                let bytes: Arc<[u8]> = self.read_whole(file, len).await?.into();
                let hot = Arc::new(Hot { bytes, netascii_len: tokio::sync::OnceCell::new() });
                self.insert(path, Arc::clone(&hot), len, modified);
                hot
            }
        };
        drop(filling);
        hot.content(mode).await
    }

    async fn read_whole(&self, file: File, len: u64) -> Result<Vec<u8>, ContentError> {
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; usize::try_from(len).map_err(|_| ContentError::Io)?];
            file.read_exact_at(&mut buf, 0).map_err(|_| ContentError::Io)?;
            Ok(buf)
        })
        .await
        .map_err(|_| ContentError::Io)?
    }

    fn lookup(&self, path: &Path, len: u64, modified: Option<SystemTime>) -> Option<Arc<Hot>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(path).filter(|c| c.len == len && c.modified == modified).map(|c| Arc::clone(&c.hot))
    }

    /// Caches a file; when full, drops everything (simple, and a boot storm
    /// re-fills it with the few loaders that matter within one round).
    fn insert(&self, path: PathBuf, hot: Arc<Hot>, len: u64, modified: Option<SystemTime>) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let used: u64 = cache.values().map(|c| c.len).sum();
        if used + len > self.cache_bytes {
            cache.clear();
        }
        if len <= self.cache_bytes {
            cache.insert(path, Cached { hot, len, modified });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::to_netascii;

    /// Streams `content` in blocks of `blksize`, windows of 4, each window
    /// sent twice (as after a timeout); returns what went out and the most
    /// the transfer held for itself at any point.
    async fn stream(content: &mut Content, blksize: usize) -> (Vec<u8>, usize) {
        content.set_windowsize(4);
        let len = content.len();
        let blocks = len / blksize as u64 + 1;
        let (mut out, mut most) = (Vec::new(), 0);
        let mut base = 0;
        while base < blocks {
            let end = (base + 4).min(blocks);
            for pass in 0..2 {
                for i in base..end {
                    let offset = i * blksize as u64;
                    let n = usize::try_from(len.saturating_sub(offset)).unwrap().min(blksize);
                    let block = content.block(offset, n).await.unwrap();
                    assert_eq!(block.len(), n);
                    if pass == 1 {
                        out.extend_from_slice(block);
                    }
                    most = most.max(content.private_bytes());
                }
            }
            base = end;
        }
        (out, most)
    }

    /// Whatever the size and mode, a transfer holds at most a chunk, a
    /// block and a window of checkpoints of its own.
    #[tokio::test]
    async fn memory_per_transfer_is_bounded_in_every_mode() {
        let dir = tempfile::tempdir().unwrap();
        // Text with line ends everywhere, larger than the chunk many times.
        let text: Vec<u8> = (0..3 * CHUNK as u32 + 77)
            .map(|i| match i.wrapping_mul(2_654_435_761) >> 28 {
                0..=2 => b'\n',
                3 => b'\r',
                other => b'a' + other as u8,
            })
            .collect();
        std::fs::write(dir.path().join("big.txt"), &text).unwrap();
        std::fs::write(dir.path().join("small.txt"), &text[..5000]).unwrap();
        let files = Files::new(dir.path(), 1 << 20, 64 * 1024).unwrap();
        let bound = CHUNK + 1468 + 5 * size_of::<(u64, netascii::Position)>();
        for (name, source) in [("big.txt", &text[..]), ("small.txt", &text[..5000])] {
            for mode in [Mode::Octet, Mode::Netascii] {
                let mut content = files.open(name, mode).await.unwrap();
                let want = if mode == Mode::Netascii { to_netascii(source) } else { source.to_vec() };
                assert_eq!(content.len(), want.len() as u64, "{name} {mode:?}: tsize");
                let (got, most) = stream(&mut content, 1468).await;
                assert!(got == want, "{name} {mode:?}: content differs");
                assert!(most <= bound, "{name} {mode:?}: held {most} bytes");
            }
        }
        // Rendered (shared) content in netascii too.
        let mut rendered = Content::memory(text[..9000].into(), Mode::Netascii).await.unwrap();
        let (got, most) = stream(&mut rendered, 512).await;
        assert_eq!(got, to_netascii(&text[..9000]));
        assert!(most <= bound);
    }

    /// Requests that arrive together for a file not cached yet share one
    /// copy of it: one read, not one per request.
    #[tokio::test]
    async fn opens_of_a_file_not_cached_yet_share_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("loader.efi"), vec![7u8; 200_000]).unwrap();
        let files = Files::new(dir.path(), 1 << 20, 1 << 20).unwrap();
        let opens = (0..16).map(|_| files.open("loader.efi", Mode::Octet));
        let mut copies: Vec<Arc<[u8]>> = Vec::new();
        for content in join_all(opens).await {
            let Source::Memory(bytes) = content.unwrap().source else {
                panic!("a hot file is held in memory")
            };
            if !copies.iter().any(|c| Arc::ptr_eq(c, &bytes)) {
                copies.push(bytes);
            }
        }
        assert_eq!(copies.len(), 1, "16 opens held {} copies of the file", copies.len());
    }

    /// Netascii transfers of a file held in memory count its converted
    /// length once between them, not once each.
    #[tokio::test]
    async fn a_hot_file_is_counted_for_netascii_once() {
        let dir = tempfile::tempdir().unwrap();
        // A length no other test's file has.
        let text = b"one\ntwo\r\nthree\n".repeat(1001);
        std::fs::write(dir.path().join("notes.txt"), &text).unwrap();
        let files = Files::new(dir.path(), 1 << 20, 1 << 20).unwrap();
        let opens = (0..8).map(|_| files.open("notes.txt", Mode::Netascii));
        for content in join_all(opens).await {
            assert_eq!(content.unwrap().len(), netascii::converted_len(&text));
        }
        let counts = NETASCII_COUNTS.lock().unwrap_or_else(PoisonError::into_inner);
        let counted = counts.iter().filter(|&&len| len == text.len()).count();
        assert_eq!(counted, 1, "8 netascii opens counted the file {counted} times");
    }

    /// Polls every future on this task until all are done (their awaits
    /// interleave, as concurrent requests' do).
    async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
        let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut waiting = false;
            for (future, output) in pending.iter_mut().zip(done.iter_mut()) {
                if let Some(f) = future {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(value) => {
                            *output = Some(value);
                            *future = None;
                        }
                        std::task::Poll::Pending => waiting = true,
                    }
                }
            }
            if waiting { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
        })
        .await;
        done.into_iter().map(|o| o.expect("every future finished")).collect()
    }
}
