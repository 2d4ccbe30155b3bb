//! Exports: what a session reads and writes, how the caller names them,
//! and the simplest kind, a read-only file.
//!
//! Export methods block (positioned file I/O); the server calls them on
//! tokio's blocking pool, several at once for one session.

use std::fmt::Debug;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::options::ExportInfo;
use crate::session::{Listing, Refusal};
use crate::wire::Errno;

/// Why an export operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The export cannot be changed.
    #[error("the export is read-only")]
    ReadOnly,
    /// The range does not lie inside the export.
    #[error("bytes {offset}..{offset}+{length} lie outside the export ({size} bytes)")]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Its length.
        length: u64,
        /// Size of the export.
        size: u64,
    },
    /// The client's write cache reached its cap.
    #[error("the write cache is full ({cap} bytes)")]
    CacheFull {
        /// The per-client cap in bytes.
        cap: u64,
    },
    /// The storage failed.
    #[error("storage I/O failed")]
    Io(#[source] std::io::Error),
}

impl ExportError {
    /// The NBD error a client gets for this.
    pub fn errno(&self) -> Errno {
        match self {
            Self::ReadOnly => Errno::Perm,
            Self::OutOfRange { .. } => Errno::Inval,
            Self::CacheFull { .. } => Errno::NoSpc,
            Self::Io(e) => match e.raw_os_error().map(rustix::io::Errno::from_raw_os_error) {
                Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT | rustix::io::Errno::FBIG) => {
                    Errno::NoSpc
                }
                _ => Errno::Io,
            },
        }
    }
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Fills `buf` from `file` at `offset` only if that needs no waiting for
/// the disk (`preadv2` with `RWF_NOWAIT`: the bytes are in the page cache).
/// `None` when it would wait; the caller then reads on a blocking thread.
pub(crate) fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> Option<std::io::Result<()>> {
    use rustix::io::{Errno as E, ReadWriteFlags, preadv2};
    let mut done = 0;
    while done < buf.len() {
        let mut slices = [std::io::IoSliceMut::new(&mut buf[done..])];
        match preadv2(file, &mut slices, offset + done as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) => return Some(Err(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => done += n,
            Err(E::INTR) => {}
            // Not cached, or a file system or kernel without RWF_NOWAIT.
            Err(E::AGAIN | E::OPNOTSUPP | E::NOSYS | E::INVAL) => return None,
            Err(e) => return Some(Err(e.into())),
        }
    }
    Some(Ok(()))
}

/// Checks that `offset..offset + length` lies within `size` bytes.
pub(crate) fn check_range(offset: u64, length: u64, size: u64) -> Result<(), ExportError> {
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(()),
        _ => Err(ExportError::OutOfRange { offset, length, size }),
    }
}

/// A block device as a session sees it. The session checks ranges and
/// permissions against [`Export::info`] before calling; implementations
/// check again (they are public API).
pub trait Export: Send + Sync + Debug {
    /// Size, flags and description; constant for the export's lifetime.
    fn info(&self) -> ExportInfo;

    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ExportError>;

    /// [`Self::read_at`] if it can be done without waiting for a disk (the
    /// data is in memory); `None` otherwise, and then the server calls
    /// `read_at` on a blocking thread. Cached reads skip that hand-off.
    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), ExportError>> {
        let _ = (buf, offset);
        None
    }

    /// Writes `data` at `offset`; durable before returning when `fua`.
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> Result<(), ExportError> {
        let _ = (data, offset, fua);
        Err(ExportError::ReadOnly)
    }

    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }

    /// The client no longer needs the range (a hint: doing nothing is allowed).
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), ExportError> {
        let _ = (offset, length, fua);
        Err(ExportError::ReadOnly)
    }

    /// Makes the range read as zeroes; `no_hole` asks for it to stay allocated.
    fn write_zeroes(&self, offset: u64, length: u64, fua: bool, no_hole: bool) -> Result<(), ExportError> {
        let _ = (offset, length, fua, no_hole);
        Err(ExportError::ReadOnly)
    }
}

/// Who is asking for an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    /// The connection's remote address.
    pub peer: SocketAddr,
}

/// Names exports: the caller's catalog, seen by the server. Called once
/// per option; an opened export stays with its session to the end, so a
/// session keeps the version it opened even when the name moves on.
#[async_trait]
pub trait Exports: Send + Sync + 'static {
    /// Every export `client` may see (`NBD_OPT_LIST`).
    async fn list(&self, client: &Client) -> Vec<Listing>;

    /// What `name` is, without opening it (`NBD_OPT_INFO`).
    async fn describe(&self, name: &str, client: &Client) -> Result<ExportInfo, Refusal>;

    /// Opens `name` for a new session (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`).
    async fn open(&self, name: &str, client: &Client) -> Result<Arc<dyn Export>, Refusal>;
}

/// A regular file served read-only. The file is opened read-only, so the
/// golden image cannot change through it.
#[derive(Debug)]
pub struct FileExport {
    file: Arc<File>,
    size: u64,
    description: String,
}

impl FileExport {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::from_file(Arc::new(File::open(path)?))
    }

    /// Serves a file already open (read-only, or at least never written
    /// through this export). The export keeps that inode: a file replaced
    /// at its path later does not change what its sessions read.
    pub fn from_file(file: Arc<File>) -> std::io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self { file, size, description: String::new() })
    }

    /// The same export with a description for humans.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Size in bytes (as it was when opened).
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Export for FileExport {
    fn info(&self) -> ExportInfo {
        ExportInfo { description: self.description.clone(), ..ExportInfo::read_only(self.size) }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ExportError> {
        check_range(offset, buf.len() as u64, self.size)?;
        // A file that shrank under us fails here with UnexpectedEof: EIO
        // to the client rather than zeroes that were never there.
        self.file.read_exact_at(buf, offset)?;
        Ok(())
    }

    fn try_read_at(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), ExportError>> {
        if let Err(e) = check_range(offset, buf.len() as u64, self.size) {
            return Some(Err(e));
        }
        read_cached(&self.file, buf, offset).map(|r| r.map_err(ExportError::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_export_reads_ranges_and_refuses_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("golden.img");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let export = FileExport::open(&path).unwrap().with_description("golden");
        let info = export.info();
        assert_eq!((info.size, info.read_only, info.multi_conn), (10_000, true, true));
        let mut buf = vec![0u8; 100];
        export.read_at(&mut buf, 9_900).unwrap();
        assert_eq!(buf, data[9_900..]);
        let mut cached = vec![0u8; 100];
        // Just written, so in the page cache.
        export.try_read_at(&mut cached, 9_900).expect("cached").unwrap();
        assert_eq!(cached, buf);
        assert!(matches!(export.try_read_at(&mut cached, 9_901), Some(Err(ExportError::OutOfRange { .. }))));
        assert!(matches!(export.read_at(&mut buf, 9_901), Err(ExportError::OutOfRange { .. })));
        assert!(matches!(export.read_at(&mut buf, u64::MAX), Err(ExportError::OutOfRange { .. })));
        assert_eq!(export.write_at(&buf, 0, false).unwrap_err().errno(), Errno::Perm);
        assert_eq!(export.trim(0, 1, false).unwrap_err().errno(), Errno::Perm);
        assert_eq!(export.write_zeroes(0, 1, false, false).unwrap_err().errno(), Errno::Perm);
        export.flush().unwrap();

        std::fs::write(&path, b"short").unwrap();
        assert_eq!(
            export.read_at(&mut buf, 0).unwrap_err().errno(),
            Errno::Io,
            "a shrunk file is an I/O error"
        );
    }

    #[test]
    fn full_disks_map_to_enospc() {
        for code in [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT, rustix::io::Errno::FBIG] {
            let error = ExportError::Io(std::io::Error::from_raw_os_error(code.raw_os_error()));
            assert_eq!(error.errno(), Errno::NoSpc);
        }
        assert_eq!(ExportError::Io(std::io::Error::other("x")).errno(), Errno::Io);
        assert_eq!(ExportError::CacheFull { cap: 1 }.errno(), Errno::NoSpc);
    }
}
