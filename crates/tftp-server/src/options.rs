//! Option negotiation (RFC 2347): blksize (RFC 2348), tsize and timeout
//! (RFC 2349), windowsize (RFC 7440). Unknown options are ignored and not
//! echoed — including non-standard ones like `utimeout` or `windowwait`,
//! which would let a client set retransmission timing for the server.

use std::time::Duration;

/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65_464;
/// Block size without negotiation.
pub const DEFAULT_BLKSIZE: u16 = 512;

/// What the server allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted (from the link MTU).
    pub max_blksize: u16,
    /// Largest window granted.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client asks for none.
    pub default_timeout: Duration,
}

impl Limits {
    /// Limits for a link MTU: a block must fit one IPv4/UDP datagram.
    pub fn for_mtu(mtu: u16, max_windowsize: u16, default_timeout: Duration) -> Self {
        let max_blksize = mtu.saturating_sub(20 + 8 + 4).clamp(MIN_BLKSIZE, MAX_BLKSIZE);
        Self { max_blksize, max_windowsize: max_windowsize.max(1), default_timeout }
    }
}

/// The parameters of one transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Block size.
    pub blksize: u16,
    /// Window size.
    pub windowsize: u16,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// Transfer size announced, if the client asked.
    pub tsize: Option<u64>,
    /// Options accepted, in the client's order (empty: no OACK).
    pub oack: Vec<(String, String)>,
}

/// Which standard options a request used (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptionUse {
    /// blksize accepted.
    pub blksize: bool,
    /// tsize answered.
    pub tsize: bool,
    /// timeout accepted.
    pub timeout: bool,
    /// windowsize accepted.
    pub windowsize: bool,
}

/// Negotiates a read of `size` bytes.
pub fn negotiate(options: &[(String, String)], size: u64, limits: &Limits) -> (Negotiated, OptionUse) {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE.min(limits.max_blksize),
        windowsize: 1,
        timeout: limits.default_timeout,
        tsize: None,
        oack: Vec::new(),
    };
    let mut used = OptionUse::default();
    for (name, value) in options {
        match name.as_str() {
            "blksize" if !used.blksize => {
                if let Ok(asked) = value.parse::<u32>()
                    && asked >= u32::from(MIN_BLKSIZE)
                {
                    let granted =
                        u16::try_from(asked.min(u32::from(limits.max_blksize))).unwrap_or(MAX_BLKSIZE);
                    n.blksize = granted;
                    n.oack.push((name.clone(), granted.to_string()));
                    used.blksize = true;
                }
            }
            "tsize" if !used.tsize => {
                n.tsize = Some(size);
                n.oack.push((name.clone(), size.to_string()));
                used.tsize = true;
            }
            "timeout" if !used.timeout => {
                if let Ok(seconds) = value.parse::<u8>()
                    && seconds >= 1
                {
                    n.timeout = Duration::from_secs(u64::from(seconds));
                    n.oack.push((name.clone(), seconds.to_string()));
                    used.timeout = true;
                }
            }
            "windowsize" if !used.windowsize => {
                if let Ok(asked) = value.parse::<u16>()
                    && asked >= 1
                {
                    let granted = asked.min(limits.max_windowsize);
                    n.windowsize = granted;
                    n.oack.push((name.clone(), granted.to_string()));
                    used.windowsize = true;
                }
            }
            _ => {}
        }
    }
    (n, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::for_mtu(1500, 64, Duration::from_secs(1))
    }

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn mtu_caps_the_block_size() {
        assert_eq!(limits().max_blksize, 1468);
        assert_eq!(Limits::for_mtu(9000, 1, Duration::from_secs(1)).max_blksize, 8968);
        assert_eq!(Limits::for_mtu(10, 1, Duration::from_secs(1)).max_blksize, MIN_BLKSIZE);
    }

    #[test]
    fn options_are_granted_within_limits() {
        let (n, used) = negotiate(
            &opts(&[("blksize", "65464"), ("tsize", "0"), ("windowsize", "512"), ("timeout", "3")]),
            12_345,
            &limits(),
        );
        assert_eq!(
            (n.blksize, n.windowsize, n.timeout, n.tsize),
            (1468, 64, Duration::from_secs(3), Some(12_345))
        );
        assert_eq!(
            n.oack,
            opts(&[("blksize", "1468"), ("tsize", "12345"), ("windowsize", "64"), ("timeout", "3")])
        );
        assert!(used.blksize && used.tsize && used.windowsize && used.timeout);
    }

    #[test]
    fn bad_and_unknown_options_are_ignored() {
        let (n, _) = negotiate(
            &opts(&[
                ("blksize", "7"),
                ("timeout", "0"),
                ("timeout", "300"),
                ("windowsize", "x"),
                ("utimeout", "1"),
                ("windowwait", "1"),
            ]),
            10,
            &limits(),
        );
        assert!(n.oack.is_empty(), "{:?}", n.oack);
        assert_eq!((n.blksize, n.windowsize), (512, 1));
    }
}
