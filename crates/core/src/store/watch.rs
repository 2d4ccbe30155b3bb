//! The consumer side of a prefix watch, common to both backends.

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{StoreResult, WatchEvent};

/// Events of one watch, in revision order, grouped as the store committed
/// them (all events of one transaction arrive in one batch).
///
/// Dropping the stream stops the backend task feeding it.
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::Receiver<StoreResult<Vec<WatchEvent>>>,
    _stop: DropGuard,
}

impl WatchStream {
    /// Creates the channel pair: the backend task sends into the returned
    /// sender and stops when the token is cancelled (the stream was dropped).
    pub(crate) fn channel(
        capacity: usize,
    ) -> (Self, mpsc::Sender<StoreResult<Vec<WatchEvent>>>, CancellationToken) {
        let (tx, rx) = mpsc::channel(capacity);
        let stop = CancellationToken::new();
        (Self { rx, _stop: stop.clone().drop_guard() }, tx, stop)
    }

    /// The next batch of events; `None` once the stream ended. An `Err` is
    /// always the last item.
    ///
    /// CANCEL-SAFETY: cancel-safe; a batch not yet returned stays queued.
    pub async fn next(&mut self) -> Option<StoreResult<Vec<WatchEvent>>> {
        self.rx.recv().await
    }
}
