//! `GET /loaders/<path>`: first-stage loaders (iPXE for UEFI HTTP boot)
//! from `loaders_dir`. A path may name a subdirectory (`arm64/ipxe.efi`,
//! as the shipped DHCP configuration does); every component is checked and
//! no symlink is followed. A loader is hashed for its ETag once per version
//! of the file (length, mtime, inode), not on every request: a boot storm
//! asks for the same loader thousands of times.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::Digest;

use crate::blobs::Blob;

/// Subdirectories a loader path may go through.
const MAX_DEPTH: usize = 4;
/// Loaders remembered with their hash.
const MAX_CACHED: usize = 64;

/// What identifies one version of a file on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: SystemTime,
    inode: u64,
}

/// The loaders directory and the hashes of what was served from it.
#[derive(Debug)]
pub(crate) struct Loaders {
    dir: PathBuf,
    cache: Mutex<HashMap<PathBuf, (Stamp, Blob)>>,
}

impl Loaders {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir, cache: Mutex::new(HashMap::new()) }
    }

    /// The file `name` names under the directory, if it is a safe path:
    /// 1 to 4 components of the catalog's name alphabet, no symlinks.
    fn resolve(&self, name: &str) -> Option<PathBuf> {
        let parts: Vec<&str> = name.split('/').collect();
        if parts.len() > MAX_DEPTH + 1
            || parts.iter().any(|p| crate::catalog::check_name("loader", p).is_err())
        {
            return None;
        }
        let mut path = self.dir.clone();
        for part in parts {
            path.push(part);
            if std::fs::symlink_metadata(&path).ok()?.file_type().is_symlink() {
                return None;
            }
        }
        Some(path)
    }

    /// The loader `name`, hashed at most once per version of the file.
    /// Blocking: call off the async threads.
    pub(crate) fn load(&self, name: &str) -> Option<Blob> {
        let path = self.resolve(name)?;
        let mut file = std::fs::File::open(&path).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let stamp = Stamp {
            len: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            inode: meta.ino(),
        };
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, blob)) = cache.get(&path)
            && *seen == stamp
        {
            return Some(blob.clone());
        }
        drop(cache);
        let mut data = Vec::new();
        file.read_to_end(&mut data).ok()?;
        crate::metrics::LOADER_HASHES.inc();
        let blob = Blob {
            sha256: crate::blobs::hex(&sha2::Sha256::digest(&data)),
            len: data.len() as u64,
            modified: stamp.modified,
            cached: Some(Bytes::from(data)),
            path: path.clone(),
            file: Arc::new(file),
        };
        // The length read may differ from the stamp's if the file changed
        // meanwhile: then it is not remembered, and hashed again next time.
        if blob.len == stamp.len {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(path, (stamp, blob.clone()));
        }
        Some(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_directories_are_served_and_escapes_are_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("arm64")).unwrap();
        std::fs::write(dir.path().join("arm64/ipxe.efi"), b"arm loader").unwrap();
        std::fs::write(dir.path().join("ipxe.efi"), b"x64 loader").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        let loaders = Loaders::new(dir.path().to_owned());
        assert_eq!(loaders.load("arm64/ipxe.efi").unwrap().cached.unwrap(), &b"arm loader"[..]);
        assert_eq!(loaders.load("ipxe.efi").unwrap().len, 10);
        for bad in ["../ipxe.efi", "arm64/../ipxe.efi", "etc/passwd", "arm64", "", "a/b/c/d/e/f", "/ipxe.efi"]
        {
            assert!(loaders.load(bad).is_none(), "{bad:?} must not be served");
        }
    }

    #[test]
    fn a_loader_is_hashed_once_per_version_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipxe.efi");
        std::fs::write(&path, b"version one").unwrap();
        let loaders = Loaders::new(dir.path().to_owned());
        let first = loaders.load("ipxe.efi").unwrap();
        let again = loaders.load("ipxe.efi").unwrap();
        assert_eq!(first.sha256, again.sha256);
        assert!(Arc::ptr_eq(&first.file, &again.file), "the second request reuses the first hash");
        std::fs::write(&path, b"version two, longer").unwrap();
        let changed = loaders.load("ipxe.efi").unwrap();
        assert_ne!(changed.sha256, first.sha256, "a changed file is hashed again");
    }
}
