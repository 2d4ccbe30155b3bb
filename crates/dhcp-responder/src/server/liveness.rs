//! Which boot-server replicas answer right now. A replica killed outright
//! keeps its member record until its lease runs out (`store.member_ttl`);
//! handing its address to a PXE ROM in that window costs a failed boot,
//! since firmware does not try a second TFTP server. So every second the
//! responder asks each TFTP and streamer replica's admin endpoint
//! (`/readyz`, 500 ms timeout) and leaves out the ones that do not answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bootfleet_core::snapshot::SnapshotCache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::live_members;

const EVERY: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);

/// Admin addresses found not answering on the last round.
#[derive(Clone, Default)]
pub(super) struct Liveness {
    down: Arc<Mutex<HashMap<String, bool>>>,
}

impl Liveness {
    /// Whether the replica with this admin address may be handed out
    /// (true until a probe says otherwise, so new replicas count at once).
    pub(super) fn is_up(&self, admin_address: &str) -> bool {
        !self.down.lock().unwrap_or_else(PoisonError::into_inner).get(admin_address).copied().unwrap_or(false)
    }

    /// Probes the members of `caches` until `stop`.
    pub(super) fn start(&self, caches: Vec<SnapshotCache>, stop: CancellationToken) {
        let down = Arc::clone(&self.down);
        tokio::spawn(async move {
            loop {
                let addresses: Vec<String> = caches
                    .iter()
                    .flat_map(live_members)
                    .map(|m| m.admin_address)
                    .filter(|a| !a.is_empty())
                    .collect();
                let mut probes = tokio::task::JoinSet::new();
                for address in addresses {
                    probes.spawn(async move {
                        let up = ready(&address).await;
                        (address, up)
                    });
                }
                let results = probes.join_all().await;
                {
                    let mut down = down.lock().unwrap_or_else(PoisonError::into_inner);
                    down.clear();
                    for (address, up) in results {
                        if !up {
                            tracing::debug!(admin = %address, "boot-server replica not answering; not handed out");
                        }
                        down.insert(address, !up);
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(EVERY) => {}
                }
            }
        });
    }
}

/// GET /readyz answered 200 within the timeout.
async fn ready(admin: &str) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: bootfleet\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(TIMEOUT, attempt).await.ok().flatten().unwrap_or(false)
}
