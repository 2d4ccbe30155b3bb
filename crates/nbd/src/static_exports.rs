//! A fixed table of exports: read-only files by name, and write caches
//! over a golden file under `<prefix>/<client>`. For a standalone server,
//! tests and benchmarks; the image streamer resolves names from its
//! catalog instead.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::export::{Client, Export, Exports, FileExport};
use crate::options::ExportInfo;
use crate::overlay::{WriteCacheError, WriteCaches, cow_info};
use crate::session::{Listing, Refusal};

#[derive(Debug)]
enum Entry {
    Fixed(Arc<dyn Export>),
    WriteCache { base: Arc<FileExport>, caches: Arc<WriteCaches> },
}

/// Exports known up front.
#[derive(Debug, Default)]
pub struct StaticExports {
    entries: BTreeMap<String, Entry>,
}

impl StaticExports {
    /// No exports.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `export` read-only as `name`.
    #[must_use]
    pub fn with_file(self, name: impl Into<String>, export: FileExport) -> Self {
        self.with_export(name, Arc::new(export))
    }

    /// Serves `export` as `name`, every session the same export.
    #[must_use]
    pub fn with_export(mut self, name: impl Into<String>, export: Arc<dyn Export>) -> Self {
        self.entries.insert(name.into(), Entry::Fixed(export));
        self
    }

    /// Serves `<prefix>/<client>` as `client`'s write cache over `base`:
    /// every open starts a new boot of that client (an empty cache). Not
    /// listed: the names are the clients'.
    #[must_use]
    pub fn with_write_cache(
        mut self,
        prefix: impl Into<String>,
        base: FileExport,
        caches: Arc<WriteCaches>,
    ) -> Self {
        self.entries.insert(prefix.into(), Entry::WriteCache { base: Arc::new(base), caches });
        self
    }

    /// The entry for `name`, and the client key for write caches.
    fn find<'a>(&self, name: &'a str) -> Option<(&Entry, Option<&'a str>)> {
        if let Some(entry @ Entry::Fixed(_)) = self.entries.get(name) {
            return Some((entry, None));
        }
        let (prefix, client) = name.split_once('/')?;
        match self.entries.get(prefix)? {
            entry @ Entry::WriteCache { .. } => Some((entry, Some(client))),
            Entry::Fixed(_) => None,
        }
    }
}

#[async_trait]
impl Exports for StaticExports {
    async fn list(&self, _client: &Client) -> Vec<Listing> {
        self.entries
            .iter()
            .filter_map(|(name, entry)| match entry {
                Entry::Fixed(file) => {
                    Some(Listing { name: name.clone(), description: file.info().description })
                }
                Entry::WriteCache { .. } => None,
            })
            .collect()
    }

    async fn describe(&self, name: &str, _client: &Client) -> Result<ExportInfo, Refusal> {
        match self.find(name).ok_or(Refusal::Unknown)? {
            (Entry::Fixed(file), _) => Ok(file.info()),
            (Entry::WriteCache { base, caches }, _) => Ok(cow_info(base.info(), caches.cluster_size())),
        }
    }

    async fn open(&self, name: &str, client: &Client) -> Result<Arc<dyn Export>, Refusal> {
        match self.find(name).ok_or(Refusal::Unknown)? {
            (Entry::Fixed(export), _) => Ok(Arc::clone(export)),
            (Entry::WriteCache { base, caches }, key) => {
                let key = key.unwrap_or_default();
                match caches.boot(key, Arc::clone(base) as Arc<dyn Export>) {
                    Ok(cache) => Ok(cache as Arc<dyn Export>),
                    Err(e @ WriteCacheError::Io { .. }) => {
                        tracing::warn!(cause = %e, peer = %client.peer, "no write cache");
                        Err(Refusal::Policy("no write cache available".into()))
                    }
                    Err(e) => Err(Refusal::Policy(e.to_string())),
                }
            }
        }
    }
}
