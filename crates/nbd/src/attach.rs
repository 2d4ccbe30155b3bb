//! Decisions of `bootfleet-nbd-attach` that need no system: where the
//! replicas are, which one to try after a connection dies, and the block
//! size the kernel's device gets. The binary only adds sockets.

use std::net::{IpAddr, SocketAddr};

use crate::client::ExportDetails;

/// The NBD port a replica without one listens on (IANA's).
pub const DEFAULT_PORT: u16 = 10809;

/// Why a replica list or an export cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttachError {
    /// The list names no replica.
    #[error("no replica in {list:?}")]
    NoReplicas {
        /// The list given.
        list: String,
    },
    /// A replica's address does not resolve.
    #[error("replica {replica:?} is not IP:PORT (or an IP address)")]
    BadReplica {
        /// The entry.
        replica: String,
    },
    /// The kernel's devices take blocks of 512 to 4096 bytes.
    #[error("the export needs blocks of at least {min_block} bytes; the kernel takes at most 4096")]
    BlockTooLarge {
        /// The server's minimum block size.
        min_block: u32,
    },
}

/// The entries of a comma-separated `HOST:PORT[,HOST:PORT...]` list, in
/// order (the boot script puts the least-loaded replica first).
pub fn replica_list(list: &str) -> Result<Vec<String>, AttachError> {
    let replicas: Vec<String> =
        list.split(',').map(str::trim).filter(|entry| !entry.is_empty()).map(str::to_owned).collect();
    if replicas.is_empty() {
        return Err(AttachError::NoReplicas { list: list.to_owned() });
    }
    Ok(replicas)
}

/// The address of `replica`: `IP:PORT`, `[IPv6]:PORT`, or an address
/// alone for [`DEFAULT_PORT`]. Addresses only: a diskless initramfs has
/// no resolver, and the boot script writes addresses.
pub fn replica_address(replica: &str) -> Result<SocketAddr, AttachError> {
    if let Ok(address) = replica.parse::<SocketAddr>() {
        return Ok(address);
    }
    let bare = replica.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(replica);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| AttachError::BadReplica { replica: replica.to_owned() })
}

/// The replicas to try, by index, after the connection to `current` died:
/// the ones after it in list order, wrapping around, and `current` last
/// (it may only have restarted).
pub fn failover_order(count: usize, current: usize) -> Vec<usize> {
    (1..=count).map(|step| (current + step) % count).collect()
}

/// The logical block size for the kernel's device: the server's minimum,
/// raised to 512 and to a power of two (the kernel's range is 512 to the
/// page size, 4096 on x86).
pub fn device_block_size(details: &ExportDetails) -> Result<u64, AttachError> {
    let size = details.min_block.max(512).next_power_of_two();
    if size > 4096 {
        return Err(AttachError::BlockTooLarge { min_block: details.min_block });
    }
    Ok(u64::from(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_lists_keep_their_order_and_ports_default_to_10809() {
        assert_eq!(
            replica_list("10.0.0.1:10809, 10.0.0.2:9000,").unwrap(),
            ["10.0.0.1:10809", "10.0.0.2:9000"]
        );
        assert!(matches!(replica_list(" , "), Err(AttachError::NoReplicas { .. })));
        assert_eq!(replica_address("198.18.70.11:10810").unwrap(), "198.18.70.11:10810".parse().unwrap());
        assert_eq!(replica_address("198.18.70.11").unwrap(), "198.18.70.11:10809".parse().unwrap());
        assert_eq!(replica_address("[::1]").unwrap(), "[::1]:10809".parse().unwrap());
        assert_eq!(replica_address("[::1]:7").unwrap(), "[::1]:7".parse().unwrap());
        assert!(matches!(replica_address("198.18.70.11:x"), Err(AttachError::BadReplica { .. })));
        assert!(matches!(replica_address("streamer-a:10809"), Err(AttachError::BadReplica { .. })));
    }

    #[test]
    fn after_a_death_the_next_replicas_come_first_and_the_dead_one_last() {
        assert_eq!(failover_order(3, 0), [1, 2, 0]);
        assert_eq!(failover_order(3, 2), [0, 1, 2]);
        assert_eq!(failover_order(1, 0), [0]);
    }

    #[test]
    fn block_sizes_are_what_the_kernel_accepts() {
        let details = |min_block| ExportDetails {
            size: 1 << 20,
            transmission_flags: 1,
            min_block,
            preferred_block: 4096,
            max_payload: 1 << 25,
        };
        assert_eq!(device_block_size(&details(1)), Ok(512));
        assert_eq!(device_block_size(&details(1024)), Ok(1024));
        assert_eq!(device_block_size(&details(4096)), Ok(4096));
        assert_eq!(device_block_size(&details(8192)), Err(AttachError::BlockTooLarge { min_block: 8192 }));
    }
}
