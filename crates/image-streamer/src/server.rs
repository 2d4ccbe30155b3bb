//! The image-streamer service: its state and the `run` function that both
//! the `bootfleet-image-streamer` binary and `bootfleet up` call.

mod api;
pub mod config;
mod gc;
mod http;
mod loaders;
pub(crate) mod nbd;
mod replicate;

use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context;
use bootfleet_core::membership::service_prefix;
use bootfleet_core::process::ServiceContext;
use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_core::store::SharedStore;
use bootfleet_proto::v1::FileRef;
use bootfleet_proto::v1::image_service_server::ImageServiceServer;
use bootfleet_rules_engine::store::{RulesState, StateOptions};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::config::{StreamerArgs, StreamerConfig};
use crate::blobs::BlobStore;
use crate::catalog::{Catalog, IMAGES_PREFIX, NBD_ATTRIBUTE, Replica, SERVICE, replicas_of};
use crate::metrics;
use crate::script::{Sources, Templates};
use bootfleet_rules_engine::store::boot_reports::{ReportMetrics, Reporter};

/// Everything a replica serves from.
pub(crate) struct Streamer {
    pub(crate) member_id: String,
    pub(crate) public_url: String,
    pub(crate) store: SharedStore,
    pub(crate) blobs: Arc<BlobStore>,
    pub(crate) rules: Arc<RulesState>,
    pub(crate) images: SnapshotCache,
    /// The latest garbage-collection order ([`gc`]).
    pub(crate) gc_orders: SnapshotCache,
    pub(crate) members: SnapshotCache,
    pub(crate) templates: Templates,
    pub(crate) loaders: Option<Arc<loaders::Loaders>>,
    pub(crate) record_decisions: bool,
    pub(crate) reporter: Reporter,
    pub(crate) admin_token: Option<String>,
    /// Wakes the replication loop (an upload finished, say).
    pub(crate) replication_wake: Notify,
    /// The NBD service, when `streamer.nbd_listen` is set.
    pub(crate) nbd: Option<NbdEndpoint>,
    catalog: RwLock<Arc<Catalog>>,
    replicas: RwLock<Arc<Vec<Replica>>>,
    peer_turn: std::sync::atomic::AtomicUsize,
}

impl NbdEndpoint {
    /// What the member record publishes of it.
    pub(crate) fn published(&self) -> crate::catalog::NbdPublished {
        let now = self.metrics.snapshot();
        let usage = self.hosts.usage();
        crate::catalog::NbdPublished {
            address: self.address.clone(),
            sessions: now.sessions_active,
            bytes_read: now.bytes_read,
            bytes_written: now.bytes_written,
            cache_bytes: usage.iter().map(|(_, _, bytes)| bytes).sum(),
            caches: usage.len() as u64,
        }
    }
}

/// This replica's NBD service as boot scripts name it.
pub(crate) struct NbdEndpoint {
    /// `host:port` clients reach it at: the public URL's host, the NBD port.
    pub(crate) address: String,
    /// Its sessions and bytes.
    pub(crate) metrics: Arc<bootfleet_nbd::metrics::NbdMetrics>,
    /// The hosts' `server` write caches.
    pub(crate) hosts: Arc<nbd::HostCaches>,
}

impl Streamer {
    /// The catalog as last indexed.
    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Live replicas as last indexed (this one included once registered).
    pub(crate) fn replicas(&self) -> Arc<Vec<Replica>> {
        Arc::clone(&self.replicas.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Another replica that serves `sha`; successive calls go round the
    /// holders, so a failing peer is not asked again and again.
    pub(crate) fn peer_with(&self, sha: &str) -> Option<String> {
        let replicas = self.replicas();
        let holders: Vec<&Replica> =
            replicas.iter().filter(|r| r.id != self.member_id && r.has(sha)).collect();
        if holders.is_empty() {
            return None;
        }
        let turn = self.peer_turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(holders[turn % holders.len()].url.clone())
    }

    /// Keeps the catalog and replica indexes current.
    async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut images = self.images.changes();
        let mut members = self.members.changes();
        loop {
            let catalog = Arc::new(Catalog::from_kvs(&self.images.list(IMAGES_PREFIX)));
            *self.catalog.write().unwrap_or_else(PoisonError::into_inner) = catalog;
            let replicas = Arc::new(replicas_of(&self.members.list(self.members.prefix())));
            *self.replicas.write().unwrap_or_else(PoisonError::into_inner) = replicas;
            self.replication_wake.notify_one();
            tokio::select! {
                () = stop.cancelled() => return,
                changed = images.changed() => if changed.is_err() { return },
                changed = members.changed() => if changed.is_err() { return },
            }
        }
    }
}

impl Sources for Streamer {
    /// Replicas serving the file, this one first; none when the catalog
    /// does not know the file (the script then names this replica only).
    fn sources(&self, file: &FileRef) -> Vec<String> {
        let catalog = self.catalog();
        let Some(entry) = catalog.resolve_ref(file) else { return Vec::new() };
        let replicas = self.replicas();
        let mut urls: Vec<String> = Vec::with_capacity(replicas.len());
        // Checked in memory: this runs for every file of every boot script.
        if self.blobs.is_verified(&entry.sha256) {
            urls.push(self.public_url.clone());
        }
        for r in replicas.iter() {
            if r.has(&entry.sha256) && !urls.contains(&r.url) {
                urls.push(r.url.clone());
            }
        }
        urls
    }

    /// Replicas holding the file that serve NBD, by open sessions (this
    /// replica's counted now, the others' as they last published them),
    /// this one first among equals.
    fn nbd_sources(&self, file: &FileRef) -> Vec<String> {
        let catalog = self.catalog();
        let Some(entry) = catalog.resolve_ref(file) else { return Vec::new() };
        let mut candidates: Vec<(u64, bool, String)> = Vec::new();
        if let Some(nbd) = &self.nbd
            && self.blobs.is_verified(&entry.sha256)
        {
            candidates.push((nbd.metrics.snapshot().sessions_active, false, nbd.address.clone()));
        }
        for r in self.replicas().iter().filter(|r| r.id != self.member_id && r.has(&entry.sha256)) {
            if let Some(nbd) = &r.nbd
                && !candidates.iter().any(|(_, _, a)| *a == nbd.address)
            {
                candidates.push((nbd.sessions, true, nbd.address.clone()));
            }
        }
        candidates.sort_by_key(|(sessions, other, _)| (*sessions, *other));
        candidates.into_iter().map(|(_, _, address)| address).collect()
    }
}

/// `host:port` of the NBD service: the host clients already reach this
/// replica by (its public URL's), the port it listens on.
fn nbd_public_address(public_url: &str, port: u16) -> anyhow::Result<String> {
    let uri: ::http::Uri =
        public_url.parse().with_context(|| format!("streamer.public_url {public_url:?}"))?;
    let host = uri.host().with_context(|| format!("streamer.public_url {public_url:?} names no host"))?;
    Ok(format!("{host}:{port}"))
}

/// Binds the HTTP and gRPC ports and serves until shutdown.
pub async fn run(ctx: Arc<ServiceContext>, config: StreamerConfig) -> anyhow::Result<()> {
    let blobs = BlobStore::open(&config.data_dir, config.cache_file_limit, config.cache_bytes)
        .with_context(|| format!("opening the image store in {}", config.data_dir.display()))?;
    let http_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the image streamer's HTTP port on {}", config.listen))?;
    let grpc_listener = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("binding the ImageService gRPC port on {}", config.grpc_listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let nbd_listener = match config.nbd_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the image streamer's NBD port on {address}"))?,
        ),
        None => None,
    };
    let public_url = config.public_url.clone().unwrap_or(format!("http://{}", http_listener.local_addr()?));
    let stop = ctx.shutdown.token();
    let options =
        StateOptions { member_id: ctx.config.member_id.clone(), history_limit: config.records.history_limit };
    // The rules engines sweep expired records; this replica only keeps to
    // the cap and the history length.
    let rules = RulesState::start_with(ctx.store.clone(), options, config.records.limits(false), &stop);
    for (name, cache) in ["rules", "profiles", "locations", "hosts"].into_iter().zip(rules.caches()) {
        ctx.health.track_snapshot(&format!("streamer.{name}"), cache, stop.clone());
    }
    let report_metrics = ReportMetrics {
        written: metrics::REPORTS_WRITTEN.clone(),
        dropped: metrics::REPORTS_DROPPED.clone(),
        pending_hosts: metrics::REPORTS_PENDING_HOSTS.clone(),
    };
    let reporter = Reporter::start(ctx.store.clone(), Some(Arc::clone(&rules)), report_metrics, stop.clone());
    let nbd = match &nbd_listener {
        Some(listener) => {
            let metrics = Arc::default();
            let hosts = nbd::open_host_caches(&config.data_dir, config.write_caches, Arc::clone(&metrics))
                .with_context(|| format!("opening the write caches in {}", config.data_dir.display()))?;
            Some(NbdEndpoint {
                address: nbd_public_address(&public_url, listener.local_addr()?.port())?,
                metrics,
                hosts: Arc::new(hosts),
            })
        }
        None => None,
    };
    let images = SnapshotCache::start(ctx.store.clone(), IMAGES_PREFIX, stop.clone());
    ctx.health.track_snapshot("streamer.images", &images, stop.clone());
    let members = SnapshotCache::start(ctx.store.clone(), &service_prefix(SERVICE), stop.clone());
    let gc_orders = SnapshotCache::start(ctx.store.clone(), &gc::order_key(), stop.clone());
    let streamer = Arc::new(Streamer {
        member_id: ctx.config.member_id.clone(),
        public_url: public_url.clone(),
        store: ctx.store.clone(),
        blobs: Arc::new(blobs),
        rules,
        images,
        gc_orders,
        members,
        templates: config.templates.clone(),
        loaders: config.loaders_dir.clone().map(|dir| Arc::new(loaders::Loaders::new(dir))),
        record_decisions: config.record_decisions,
        reporter,
        nbd,
        admin_token: config.admin_token.clone(),
        replication_wake: Notify::new(),
        catalog: RwLock::default(),
        replicas: RwLock::default(),
        peer_turn: std::sync::atomic::AtomicUsize::new(0),
    });
    // The member record carries the base URL first, then the gRPC address.
    let registration = ctx.register(SERVICE, vec![public_url.clone(), grpc_addr.to_string()]);
    if let Some(nbd) = &streamer.nbd {
        let address = nbd.address.clone();
        registration.update(|m| {
            m.attributes.insert(NBD_ATTRIBUTE.to_owned(), address);
        });
    }
    ctx.shutdown.spawn(Arc::clone(&streamer).follow(stop.clone()));
    ctx.shutdown.spawn(replicate::run(
        Arc::clone(&streamer),
        registration,
        config.scrub_interval,
        stop.clone(),
    ));
    if config.admin_token.is_none() {
        tracing::warn!("no admin token configured: uploads and catalog writes are refused");
    }
    let nbd_addr = match nbd_listener {
        Some(listener) => Some(serve_nbd(listener, Arc::clone(&streamer), &ctx, stop.clone())?),
        None => None,
    };
    // Bound, and its snapshots registered: ready as soon as they load.
    ctx.health.set("streamer", bootfleet_core::admin::ComponentHealth::Serving).await;
    tracing::info!(
        http = %http_listener.local_addr()?,
        grpc = %grpc_addr,
        nbd = ?nbd_addr,
        url = %public_url,
        "image streamer listening"
    );
    let grpc = serve_grpc(grpc_listener, Arc::clone(&streamer), &ctx, config.grpc_tls.as_ref(), stop.clone());
    let http = http::serve(
        http_listener,
        Arc::clone(&streamer),
        stop.clone(),
        ctx.config.shutdown_grace,
        config.http_limits,
    );
    let (grpc, ()) = tokio::join!(grpc, http);
    grpc
}

/// Serves the catalog's files over NBD on `listener` until `stop`; the
/// process's shutdown waits for open sessions to answer what is in flight.
fn serve_nbd(
    listener: TcpListener,
    streamer: Arc<Streamer>,
    ctx: &ServiceContext,
    stop: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let address = listener.local_addr()?;
    let endpoint = streamer.nbd.as_ref().context("NBD served without its endpoint")?;
    let (metrics, hosts) = (Arc::clone(&endpoint.metrics), Arc::clone(&endpoint.hosts));
    metrics::register_nbd(Arc::clone(&metrics), Arc::clone(&hosts));
    let leases = SnapshotCache::start(ctx.store.clone(), nbd::LEASES_PREFIX, stop.clone());
    ctx.health.track_snapshot("streamer.leases", &leases, stop.clone());
    let exports = Arc::new(nbd::CatalogExports::new(streamer, hosts, leases));
    let server =
        bootfleet_nbd::server::NbdServer::new(bootfleet_nbd::server::NbdConfig::default(), exports, metrics);
    ctx.shutdown.spawn(async move {
        let sessions = tokio_util::task::TaskTracker::new();
        bootfleet_nbd::server::serve(listener, server, stop, sessions.clone()).await;
        sessions.close();
        sessions.wait().await;
    });
    Ok(address)
}

async fn serve_grpc(
    listener: TcpListener,
    streamer: Arc<Streamer>,
    ctx: &ServiceContext,
    tls: Option<&bootfleet_core::config::ServerTls>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (reflection_v1, reflection_v1alpha) =
        bootfleet_core::grpc::reflection(&[bootfleet_proto::v1::image_service_server::SERVICE_NAME])
            .context("building gRPC reflection")?;
    let incoming = bootfleet_core::grpc::incoming_nodelay(listener);
    // No deadline: an upload is one call that lasts as long as the image.
    bootfleet_core::grpc::server_with_tls(None, tls)
        .context("setting up TLS (streamer.grpc_tls_cert_file, streamer.grpc_tls_key_file)")?
        .add_service(ctx.health.grpc_service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ImageServiceServer::new(api::ImageApi::new(streamer)).max_decoding_message_size(8 << 20))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .context("serving the ImageService")
}
