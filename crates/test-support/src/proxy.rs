//! A loopback TCP proxy that can cut its clients off (a partition that
//! drops nothing but delivers nothing either), to take one process away from
//! etcd while the rest of the cluster stays reachable.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards 127.0.0.1:<port> to a target until dropped.
pub struct CuttableProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    severed: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    /// Starts a proxy to `target`. Must run inside a tokio runtime.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let severed = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let severed = Arc::clone(&severed);
            let connections = Arc::clone(&connections);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if severed.load(Ordering::SeqCst) {
                        continue; // refused: dropped at once
                    }
                    let cut_rx = cut_rx.clone();
                    let task = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(pump(cr, sw, cut_rx.clone()), pump(sr, cw, cut_rx));
                    });
                    let mut list = connections.lock().unwrap_or_else(PoisonError::into_inner);
                    list.retain(|c| !c.is_finished());
                    list.push(task);
                }
            })
        };
        Ok(Self { addr, cut, severed, connections, accept })
    }

    /// Closes every open connection and refuses new ones until
    /// [`Self::restore`]: the client sees the server go away at once.
    pub fn sever(&self) {
        self.severed.store(true, Ordering::SeqCst);
        let list = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        for task in list.iter() {
            task.abort();
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as an etcd endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops delivering bytes in both directions (connections stay open).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Delivers again (including what a cut held back) and accepts again.
    pub fn restore(&self) {
        self.severed.store(false, Ordering::SeqCst);
        self.cut.send_replace(false);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Hold bytes read while cut until the link is restored.
        if cut.wait_for(|cut| !cut).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
