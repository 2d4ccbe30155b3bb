//! The streamer's NBD exports: every file of every catalog version this
//! replica holds, read-only, named `<image>/<version>/<file>`.
//!
//! The catalog has no notion of which files are disks, so every held file
//! is listed (a kernel is a valid, if useless, read-only block device).
//! A file this replica does not hold is unknown here: clients go to a
//! replica that holds it, as boot scripts do. A session reads the inode it
//! opened, so a version replaced or removed meanwhile does not change
//! under a running client.

use std::sync::Arc;

use async_trait::async_trait;
use bootfleet_nbd::export::{Client, Export, Exports, FileExport};
use bootfleet_nbd::options::ExportInfo;
use bootfleet_nbd::session::{Listing, Refusal};

use super::Streamer;
use crate::blobs::Lookup;

/// Exports resolved from the catalog and this replica's files.
pub(crate) struct CatalogExports {
    streamer: Arc<Streamer>,
}

impl CatalogExports {
    pub(crate) fn new(streamer: Arc<Streamer>) -> Self {
        Self { streamer }
    }
}

/// `<image>/<version>/<file>`, split; `None` for anything else.
fn split_name(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split('/');
    let parts = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    match parts {
        (image, version, file, None) if ![image, version, file].contains(&"") => Some((image, version, file)),
        _ => None,
    }
}

#[async_trait]
impl Exports for CatalogExports {
    async fn list(&self, _client: &Client) -> Vec<Listing> {
        let catalog = self.streamer.catalog();
        let blobs = &self.streamer.blobs;
        catalog
            .versions()
            .flat_map(|version| version.files.iter().map(move |file| (version, file)))
            // Verified files, and complete ones not hashed since start (an
            // open verifies them first).
            .filter(|(_, file)| blobs.is_verified(&file.sha256) || blobs.is_complete(&file.sha256))
            .map(|(version, file)| Listing {
                name: format!("{}/{}/{}", version.image, version.version, file.name),
                description: version.description.clone(),
            })
            .collect()
    }

    async fn describe(&self, name: &str, client: &Client) -> Result<ExportInfo, Refusal> {
        Ok(self.open(name, client).await?.info())
    }

    async fn open(&self, name: &str, _client: &Client) -> Result<Arc<dyn Export>, Refusal> {
        let (image, version, file) = split_name(name).ok_or(Refusal::Unknown)?;
        let catalog = self.streamer.catalog();
        let entry = catalog.resolve(image, version, file).ok_or(Refusal::Unknown)?;
        let description = catalog.version(image, version).map(|v| v.description.clone()).unwrap_or_default();
        let (blobs, sha) = (Arc::clone(&self.streamer.blobs), entry.sha256.clone());
        // A file not hashed since start is hashed now (blocking, and as
        // long as the file is large): never serve unverified bytes.
        let lookup = tokio::task::spawn_blocking(move || blobs.lookup(&sha)).await;
        match lookup {
            Ok(Ok(Lookup::Ready(blob))) => {
                let export = FileExport::from_file(blob.file).map_err(|e| {
                    tracing::warn!(export = name, cause = %e, "cannot serve a verified file");
                    Refusal::Unknown
                })?;
                Ok(Arc::new(export.with_description(description)))
            }
            Ok(Ok(Lookup::Absent | Lookup::Corrupt)) => Err(Refusal::Unknown),
            Ok(Err(e)) => {
                tracing::warn!(export = name, cause = %e, "looking up an NBD export failed");
                Err(Refusal::Unknown)
            }
            Err(e) => {
                tracing::warn!(export = name, cause = %e, "looking up an NBD export failed");
                Err(Refusal::Unknown)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_name;

    #[test]
    fn names_have_exactly_three_parts() {
        assert_eq!(split_name("debian/12/root.img"), Some(("debian", "12", "root.img")));
        for bad in ["", "debian", "debian/12", "debian/12/root.img/x", "a//b", "/12/root.img", "a/b/"] {
            assert_eq!(split_name(bad), None, "{bad}");
        }
    }
}
