//! The etcd backend, through etcd-client.
//!
//! Errors that mean "cannot reach a quorum right now" (transport errors,
//! UNAVAILABLE, DEADLINE_EXCEEDED, no leader) map to
//! [`StoreError::Unavailable`] so callers can fall back to their snapshot.
//! Requests carry `require_leader`, so a member cut off from its quorum
//! answers "unavailable" instead of serving stale watches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp as EtcdCompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp as EtcdTxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::Mutex;

use super::{
    Compare, CompareOp, CompareTarget, EventKind, KeyValue, LeaseId, Range, Revision, StateStore, StoreError,
    StoreResult, TxnOp, TxnOpResult, TxnRequest, TxnResult, WatchEvent, WatchStream, check_key,
};

/// HTTP/2 keep-alive interval: etcd 3.4 closes connections that ping more
/// often than every 5 s ("too many pings").
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(5);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connection settings for [`EtcdStore::connect`].
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs of the cluster members (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one unary request.
    pub request_timeout: Duration,
    /// TLS for `https://` endpoints: the members' CA, and a client identity
    /// for clusters that require one.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// etcd user and password.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls.is_some())
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish()
    }
}

impl EtcdOptions {
    /// Defaults suited to a LAN: 2 s to connect, 3 s per request.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            tls: None,
            credentials: None,
        }
    }
}

type Keeper = Arc<Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>>;

/// A [`StateStore`] on a real etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    options: EtcdOptions,
    /// One open keep-alive stream per lease, reopened after an error.
    keepers: Arc<std::sync::Mutex<HashMap<LeaseId, Keeper>>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.options.endpoints).finish()
    }
}

fn map_err(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::Unknown => StoreError::Unavailable(status.message().to_owned()),
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
                StoreError::InvalidArgument(status.message().to_owned())
            }
            _ => StoreError::Backend(format!("{}: {}", status.code(), status.message())),
        },
        E::TransportError(e) => StoreError::Unavailable(format!("transport: {e}")),
        E::IoError(e) => StoreError::Unavailable(format!("io: {e}")),
        E::WatchError(e) => StoreError::Unavailable(format!("watch: {e}")),
        E::LeaseKeepAliveError(e) => StoreError::Unavailable(format!("lease keep-alive: {e}")),
        E::InvalidArgs(e) => StoreError::InvalidArgument(e),
        other => StoreError::Backend(other.to_string()),
    }
}

fn key_string(bytes: &[u8]) -> StoreResult<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StoreError::Backend(format!("non-UTF-8 key in etcd: {bytes:?}")))
}

fn convert_kv(kv: &etcd_client::KeyValue) -> StoreResult<KeyValue> {
    Ok(KeyValue {
        key: key_string(kv.key())?,
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

fn convert_compare(c: &Compare) -> EtcdCompare {
    let op = match c.op {
        CompareOp::Equal => EtcdCompareOp::Equal,
        CompareOp::NotEqual => EtcdCompareOp::NotEqual,
        CompareOp::Less => EtcdCompareOp::Less,
        CompareOp::Greater => EtcdCompareOp::Greater,
    };
    let key = c.key.as_bytes().to_vec();
    match &c.target {
        CompareTarget::CreateRevision(r) => EtcdCompare::create_revision(key, op, *r),
        CompareTarget::ModRevision(r) => EtcdCompare::mod_revision(key, op, *r),
        CompareTarget::Version(v) => EtcdCompare::version(key, op, *v),
        CompareTarget::Value(v) => EtcdCompare::value(key, op, v.clone()),
    }
}

fn convert_op(op: &TxnOp) -> StoreResult<EtcdTxnOp> {
    check_key(op.key())?;
    Ok(match op {
        TxnOp::Put { key, value, lease } => {
            let options = lease.map(|l| PutOptions::new().with_lease(l));
            EtcdTxnOp::put(key.as_bytes(), value.clone(), options)
        }
        TxnOp::Delete { key } => EtcdTxnOp::delete(key.as_bytes(), None::<DeleteOptions>),
        TxnOp::Get { key } => EtcdTxnOp::get(key.as_bytes(), None::<GetOptions>),
    })
}

impl EtcdStore {
    /// Connects to the cluster. Fails fast (within `connect_timeout`) only on
    /// a malformed endpoint; an unreachable cluster surfaces on first use.
    pub async fn connect(options: EtcdOptions) -> StoreResult<Self> {
        if options.endpoints.is_empty() {
            return Err(StoreError::InvalidArgument("no etcd endpoints configured".into()));
        }
        for endpoint in crate::config::plaintext_remote_endpoints(&options.endpoints) {
            tracing::warn!(
                endpoint,
                "etcd endpoint is plaintext and leaves this machine: anyone on the path can read and \
                 rewrite Bootfleet's state; use https:// with store.etcd_ca_file"
            );
        }
        let mut connect = ConnectOptions::new()
            .with_keep_alive(HTTP2_KEEPALIVE, HTTP2_KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true)
            .with_connect_timeout(options.connect_timeout)
            .with_require_leader(true);
        if let Some(tls) = &options.tls {
            connect = connect.with_tls(tls.clone());
        }
        if let Some((user, password)) = &options.credentials {
            connect = connect.with_user(user.clone(), password.clone());
        }
        let client = Client::connect(&options.endpoints, Some(connect)).await.map_err(map_err)?;
        Ok(Self { client, options, keepers: Arc::default() })
    }

    /// Runs a unary request with the configured timeout.
    async fn timed<T>(&self, fut: impl Future<Output = Result<T, etcd_client::Error>>) -> StoreResult<T> {
        match tokio::time::timeout(self.options.request_timeout, fut).await {
            Ok(result) => result.map_err(map_err),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd did not answer within {:?}",
                self.options.request_timeout
            ))),
        }
    }

    fn keeper(&self, lease: LeaseId) -> Keeper {
        let mut keepers = self.keepers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(keepers.entry(lease).or_default())
    }

    fn forget_keeper(&self, lease: LeaseId) {
        let mut keepers = self.keepers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        keepers.remove(&lease);
    }

    async fn keep_alive_on(&self, lease: LeaseId, keeper: &Keeper) -> StoreResult<Duration> {
        let mut slot = keeper.lock().await;
        if slot.is_none() {
            let mut client = self.client.lease_client();
            match self.timed(client.keep_alive(lease)).await {
                Ok(pair) => *slot = Some(pair),
                // etcd-client reports an expired lease as "lease not found".
                Err(StoreError::Unavailable(m)) if m.contains("lease not found") => {
                    return Err(StoreError::LeaseNotFound(lease));
                }
                Err(e) => return Err(e),
            }
        }
        let Some((keeper_tx, stream)) = slot.as_mut() else {
            return Err(StoreError::Backend("lease keeper missing".into()));
        };
        let exchange = async {
            keeper_tx.keep_alive().await?;
            stream.message().await
        };
        match self.timed(exchange).await {
            Ok(Some(resp)) if resp.ttl() > 0 => {
                Ok(Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0)))
            }
            Ok(Some(_)) => {
                *slot = None;
                Err(StoreError::LeaseNotFound(lease))
            }
            Ok(None) => {
                *slot = None;
                Err(StoreError::Unavailable("lease keep-alive stream closed".into()))
            }
            Err(e) => {
                *slot = None;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl StateStore for EtcdStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let mut kv = self.client.kv_client();
        let resp = self.timed(kv.get(key.as_bytes(), None)).await?;
        resp.kvs().first().map(convert_kv).transpose()
    }

    async fn range(&self, prefix: &str) -> StoreResult<Range> {
        let mut kv = self.client.kv_client();
        let resp = self.timed(kv.get(prefix.as_bytes(), Some(GetOptions::new().with_prefix()))).await?;
        let kvs = resp.kvs().iter().map(convert_kv).collect::<StoreResult<_>>()?;
        Ok(Range { kvs, revision: header_revision(resp.header()) })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> StoreResult<Revision> {
        check_key(key)?;
        let mut kv = self.client.kv_client();
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        match self.timed(kv.put(key.as_bytes(), value, options)).await {
            Ok(resp) => Ok(header_revision(resp.header())),
            Err(StoreError::Backend(m)) if m.contains("requested lease not found") => {
                Err(StoreError::LeaseNotFound(lease.unwrap_or(0)))
            }
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        let mut kv = self.client.kv_client();
        let resp = self.timed(kv.delete(key.as_bytes(), None)).await?;
        Ok(resp.deleted() > 0)
    }

    async fn txn(&self, txn: TxnRequest) -> StoreResult<TxnResult> {
        let request = Txn::new()
            .when(txn.compares.iter().map(convert_compare).collect::<Vec<_>>())
            .and_then(txn.then.iter().map(convert_op).collect::<StoreResult<Vec<_>>>()?)
            .or_else(txn.otherwise.iter().map(convert_op).collect::<StoreResult<Vec<_>>>()?);
        let mut kv = self.client.kv_client();
        let resp = match self.timed(kv.txn(request)).await {
            Err(StoreError::Backend(m)) if m.contains("requested lease not found") => {
                let lease = txn
                    .then
                    .iter()
                    .chain(&txn.otherwise)
                    .find_map(|op| match op {
                        TxnOp::Put { lease: Some(l), .. } => Some(*l),
                        _ => None,
                    })
                    .unwrap_or(0);
                return Err(StoreError::LeaseNotFound(lease));
            }
            other => other?,
        };
        let mut results = Vec::new();
        for op in resp.op_responses() {
            results.push(match op {
                TxnOpResponse::Put(_) => TxnOpResult::Put,
                TxnOpResponse::Delete(d) => TxnOpResult::Delete(d.deleted() > 0),
                TxnOpResponse::Get(g) => TxnOpResult::Get(g.kvs().first().map(convert_kv).transpose()?),
                TxnOpResponse::Txn(_) => {
                    return Err(StoreError::Backend("nested transactions are not used".into()));
                }
            });
        }
        Ok(TxnResult { succeeded: resp.succeeded(), revision: header_revision(resp.header()), results })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> StoreResult<WatchStream> {
        let mut options = WatchOptions::new().with_prefix();
        if from > 0 {
            options = options.with_start_revision(from);
        }
        let mut client = self.client.watch_client();
        let mut etcd_stream = self.timed(client.watch(prefix.as_bytes(), Some(options))).await?;
        // Wait for etcd to confirm the watch, so Ok means "established".
        let first = self.timed(etcd_stream.message()).await?;
        let mut pending = match first {
            Some(resp) if resp.created() && !resp.canceled() => None,
            Some(resp) => Some(resp),
            None => {
                return Err(StoreError::Unavailable("watch stream closed at creation".into()));
            }
        };
        let (stream, tx, stop) = WatchStream::channel(64);
        tokio::spawn(async move {
            // Keep the request half open: dropping it would end the watch.
            let _etcd_stream_guard = &etcd_stream;
            loop {
                let resp = match pending.take() {
                    Some(resp) => Ok(Some(resp)),
                    None => tokio::select! {
                        () = stop.cancelled() => return,
                        msg = etcd_stream.message() => msg,
                    },
                };
                let items = match resp {
                    Ok(Some(resp)) if resp.canceled() && resp.compact_revision() > 0 => {
                        vec![Err(StoreError::Compacted {
                            requested: from,
                            compact_revision: resp.compact_revision(),
                        })]
                    }
                    Ok(Some(resp)) if resp.canceled() => vec![Err(StoreError::Unavailable(format!(
                        "watch canceled by etcd: {}",
                        resp.cancel_reason()
                    )))],
                    Ok(Some(resp)) => match per_revision(resp.events()) {
                        Ok(batches) => batches.into_iter().map(Ok).collect(),
                        Err(e) => vec![Err(e)],
                    },
                    Ok(None) => vec![Err(StoreError::Unavailable("watch stream closed".into()))],
                    Err(e) => vec![Err(map_err(e))],
                };
                for item in items {
                    let last = item.is_err();
                    tokio::select! {
                        () = stop.cancelled() => return,
                        sent = tx.send(item) => if sent.is_err() { return },
                    }
                    if last {
                        return;
                    }
                }
            }
        });
        Ok(stream)
    }

    async fn lease_grant(&self, ttl: Duration) -> StoreResult<LeaseId> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut lease = self.client.lease_client();
        let resp = self.timed(lease.grant(secs, None)).await?;
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> StoreResult<Duration> {
        let keeper = self.keeper(lease);
        let result = self.keep_alive_on(lease, &keeper).await;
        if matches!(result, Err(StoreError::LeaseNotFound(_))) {
            self.forget_keeper(lease);
        }
        result
    }

    async fn lease_revoke(&self, lease: LeaseId) -> StoreResult<()> {
        self.forget_keeper(lease);
        let mut client = self.client.lease_client();
        match self.timed(client.revoke(lease)).await {
            Ok(_) => Ok(()),
            Err(StoreError::Backend(m)) if m.contains("lease not found") => {
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(e) => Err(e),
        }
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        let mut kv = self.client.kv_client();
        self.timed(kv.compact(revision, None)).await.map(drop)
    }

    fn backend_name(&self) -> &'static str {
        "etcd"
    }
}

/// Splits one etcd watch response (which may span several revisions when
/// history is replayed) into one batch per revision, as the trait promises.
fn per_revision(events: &[etcd_client::Event]) -> StoreResult<Vec<Vec<WatchEvent>>> {
    let mut batches: Vec<Vec<WatchEvent>> = Vec::new();
    for event in events.iter().filter_map(convert_event) {
        let event = event?;
        match batches.last_mut() {
            Some(batch) if batch[0].kv.mod_revision == event.kv.mod_revision => batch.push(event),
            _ => batches.push(vec![event]),
        }
    }
    Ok(batches)
}

fn convert_event(event: &etcd_client::Event) -> Option<StoreResult<WatchEvent>> {
    let kv = event.kv()?;
    Some(convert_kv(kv).map(|mut kv| {
        let kind = match event.event_type() {
            EventType::Put => EventKind::Put,
            EventType::Delete => {
                kv.value.clear();
                EventKind::Delete
            }
        };
        WatchEvent { kind, kv }
    }))
}
