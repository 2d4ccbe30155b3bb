//! The streamer's NBD exports: every file of every catalog version this
//! replica holds, read-only, named `<image>/<version>/<file>`, and each
//! machine's own `host/<mac>` export with its `server` write cache
//! ([`host`]).
//!
//! The catalog has no notion of which files are disks, so every held file
//! is listed (a kernel is a valid, if useless, read-only block device).
//! A file this replica does not hold is unknown here: clients go to a
//! replica that holds it, as boot scripts do. A session reads the inode it
//! opened, so a version replaced or removed meanwhile does not change
//! under a running client.

mod host;
mod lease_check;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bootfleet_core::log_limit::LogLimit;
use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_nbd::export::{Client, Export, Exports, FileExport};
use bootfleet_nbd::metrics::NbdMetrics;
use bootfleet_nbd::options::ExportInfo;
use bootfleet_nbd::overlay::{WriteCaches, cow_info};
use bootfleet_nbd::session::{Listing, Refusal};
use bootfleet_proto::v1::{FileRef, HostFacts, Lease, WriteCache, image_profile};
use bootfleet_rules_engine::facts::Facts;
use prost::Message;

pub(crate) use self::host::HostCaches;
use self::host::HostName;
use super::Streamer;
use super::config::WriteCacheLimits;
use crate::blobs::Lookup;

/// The hosts' write caches in `data_dir/write-caches` (those of an earlier
/// run are deleted: their boots' sessions are gone).
pub(crate) fn open_host_caches(
    data_dir: &Path,
    limits: WriteCacheLimits,
    metrics: Arc<NbdMetrics>,
) -> std::io::Result<HostCaches> {
    let caches =
        WriteCaches::new(&data_dir.join("write-caches"), limits.bytes_per_host, limits.hosts, metrics)?;
    Ok(HostCaches::new(caches))
}

/// Where the DHCP leader keeps leases (full mode), keyed by address.
pub(crate) const LEASES_PREFIX: &str = "/bootfleet/v1/leases/";

/// Exports resolved from the catalog and this replica's files.
pub(crate) struct CatalogExports {
    streamer: Arc<Streamer>,
    hosts: Arc<HostCaches>,
    /// DHCP leases: who may open a `host/<mac>` export ([`lease_check`]).
    leases: SnapshotCache,
}

impl CatalogExports {
    /// Exports of `streamer`, whose NBD endpoint holds the hosts' caches.
    pub(crate) fn new(streamer: Arc<Streamer>, hosts: Arc<HostCaches>, leases: SnapshotCache) -> Self {
        Self { streamer, hosts, leases }
    }

    /// Refuses `host` to a client whose address does not hold its lease,
    /// where leases are known.
    fn check_lease(&self, host: &HostName<'_>, client: &Client) -> Result<(), Refusal> {
        let leases: Vec<Lease> = self
            .leases
            .list(LEASES_PREFIX)
            .iter()
            .filter_map(|kv| Lease::decode(kv.value.as_slice()).ok())
            .collect();
        lease_check::check(&leases, &host.mac, client.peer.ip(), now_ms()).map_err(|reason| {
            static REFUSED: LogLimit = LogLimit::default_limit();
            if let Some(similar_left_out) = REFUSED.admit() {
                tracing::warn!(host = %host.mac, peer = %client.peer, %reason, similar_left_out, "host export refused");
            }
            Refusal::Policy(format!("host/{}: {reason}", host.mac))
        })
    }

    /// Opens a catalog file read-only (`name` is for the log).
    async fn open_file(&self, file: &FileRef, name: &str) -> Result<Arc<dyn Export>, Refusal> {
        let catalog = self.streamer.catalog();
        let entry = catalog.resolve_ref(file).ok_or(Refusal::Unknown)?;
        let description =
            catalog.version(&file.image, &file.version).map(|v| v.description.clone()).unwrap_or_default();
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

    /// The golden disk `host` boots from now: the disk of the `vdisk` image
    /// profile its rules decision names, with a `server` write cache,
    /// opened read-only.
    async fn host_base(&self, host: &HostName<'_>, client: &Client) -> Result<Arc<dyn Export>, Refusal> {
        let facts = HostFacts { mac: host.mac.clone(), ipv4: client_ipv4(client), ..HostFacts::default() };
        let facts = Facts::from_proto(&facts).map_err(|_| Refusal::Unknown)?;
        let decision = self.streamer.rules.decide(&facts, now_ms());
        let vdisk = match decision.image_profile.and_then(|p| p.boot) {
            // client-ram hosts open the golden disk itself, read-only.
            Some(image_profile::Boot::Vdisk(v)) if v.write_cache() != WriteCache::ClientRam => v.disk,
            _ => None,
        };
        let Some(vdisk) = vdisk else {
            return Err(Refusal::Policy(format!(
                "the rules do not boot {} from a vDisk with a server write cache",
                host.mac
            )));
        };
        let name = format!("{}/{}/{}", vdisk.image, vdisk.version, vdisk.file);
        self.open_file(&vdisk, &name).await
    }
}

fn client_ipv4(client: &Client) -> String {
    match client.peer.ip() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| v4.to_string()).unwrap_or_default(),
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
        if let Some(host) = host::parse(name) {
            let host = host?;
            self.check_lease(&host, client)?;
            if let Some(cache) = self.hosts.current(&host) {
                return Ok(cache.info());
            }
            let base = self.host_base(&host, client).await?;
            return Ok(cow_info(base.info(), self.hosts.cluster_size()));
        }
        Ok(self.open(name, client).await?.info())
    }

    async fn open(&self, name: &str, client: &Client) -> Result<Arc<dyn Export>, Refusal> {
        if let Some(host) = host::parse(name) {
            let host = host?;
            self.check_lease(&host, client)?;
            if let Some(cache) = self.hosts.current(&host) {
                return Ok(cache);
            }
            let base = self.host_base(&host, client).await?;
            return Ok(self.hosts.open(&host, base)?);
        }
        let (image, version, file) = split_name(name).ok_or(Refusal::Unknown)?;
        let file = FileRef { image: image.to_owned(), version: version.to_owned(), file: file.to_owned() };
        self.open_file(&file, name).await
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
