//! The boot-server list a medium carries: parsed from `--servers`
//! (pure), then resolved and checked while the medium is built (the thin
//! I/O part at the bottom).
//!
//! `--servers` takes image streamer URLs (`http://host:port`, tried in
//! the order given), `dns:NAME[:PORT]` (every IPv4 address the name has
//! when the medium is built: iPXE would only ever try the first one a
//! round-robin name returns, so the medium lists them all), or `auto`
//! (the streamer replicas live in the store now).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::BootstrapError;

/// The streamer's HTTP port when a URL or DNS name gives none.
pub(crate) const DEFAULT_PORT: u16 = 8080;
/// How long the build-time check waits for each server.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What `--servers` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ServerSpec {
    /// These URLs, in this order.
    Urls(Vec<String>),
    /// Every IPv4 address of a round-robin DNS name.
    Dns {
        /// The name.
        name: String,
        /// The streamers' HTTP port.
        port: u16,
    },
    /// The streamer replicas live in the store.
    Auto,
}

impl ServerSpec {
    /// How the manifest names where the list came from.
    pub(crate) fn origin(&self) -> String {
        match self {
            Self::Urls(_) => "flags".to_owned(),
            Self::Dns { name, port } => format!("dns:{name}:{port}"),
            Self::Auto => "auto".to_owned(),
        }
    }
}

/// Parses the `--servers` values (each may hold several, comma-separated).
pub(crate) fn parse(values: &[String]) -> Result<ServerSpec, BootstrapError> {
    let items: Vec<&str> =
        values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty()).collect();
    match items.as_slice() {
        [] => Err(BootstrapError::EmptyList("--servers names no server".into())),
        ["auto"] => Ok(ServerSpec::Auto),
        [one] if one.starts_with("dns:") => {
            let rest = &one["dns:".len()..];
            let (name, port) = split_port(rest).map_err(|reason| bad(one, &reason))?;
            check_host(name).map_err(|reason| bad(one, &reason))?;
            Ok(ServerSpec::Dns { name: name.to_owned(), port })
        }
        many => {
            if let Some(special) = many.iter().find(|v| **v == "auto" || v.starts_with("dns:")) {
                return Err(bad(special, "auto and dns: stand alone; list URLs or one of them"));
            }
            let urls = many.iter().map(|v| normalize_url(v)).collect::<Result<Vec<_>, _>>()?;
            if let Some(twice) = urls.iter().enumerate().find(|(i, u)| urls[..*i].contains(u)) {
                return Err(bad(twice.1, "listed twice"));
            }
            Ok(ServerSpec::Urls(urls))
        }
    }
}

fn bad(value: &str, reason: &str) -> BootstrapError {
    BootstrapError::BadServer { value: value.to_owned(), reason: reason.to_owned() }
}

/// `http://host:port` from `http://host[:port][/]` or `host[:port]`.
/// Anything iPXE could read as more than a URL (spaces, `${`, quotes) is
/// refused, as are paths: the medium appends `/boot.ipxe`.
pub(crate) fn normalize_url(value: &str) -> Result<String, BootstrapError> {
    let rest = if let Some(rest) = value.strip_prefix("http://") {
        rest
    } else if value.contains("://") {
        return Err(bad(value, "only http:// (the medium's iPXE trusts no certificate of yours)"));
    } else {
        value
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(bad(value, "give the streamer's base URL, without a path"));
    }
    let (host, port) = split_port(rest).map_err(|reason| bad(value, &reason))?;
    check_host(host).map_err(|reason| bad(value, &reason))?;
    Ok(format!("http://{host}:{port}"))
}

fn split_port(text: &str) -> Result<(&str, u16), String> {
    match text.rsplit_once(':') {
        Some((host, port)) => {
            let port =
                port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("bad port {port:?}"))?;
            Ok((host, port))
        }
        None => Ok((text, DEFAULT_PORT)),
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let label_ok =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!("{host:?} is not an IPv4 address or a host name"));
    }
    Ok(())
}

/// Every IPv4 address of `name`, in the resolver's order, as URLs.
pub(crate) fn resolve(name: &str, port: u16) -> Result<Vec<String>, BootstrapError> {
    let addrs = (name, port).to_socket_addrs().map_err(|e| BootstrapError::BadServer {
        value: format!("dns:{name}:{port}"),
        reason: format!("cannot resolve {name}: {e}"),
    })?;
    let mut urls: Vec<String> = Vec::new();
    for addr in addrs {
        if let SocketAddr::V4(v4) = addr {
            let url = format!("http://{}:{}", v4.ip(), v4.port());
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    if urls.is_empty() {
        return Err(BootstrapError::EmptyList(format!("dns:{name}:{port} has no IPv4 address")));
    }
    Ok(urls)
}

/// Checks that `url` is an image streamer answering now: its boot-script
/// route refuses a request without a MAC (400) and changes nothing.
pub(crate) fn check(url: &str) -> Result<(), BootstrapError> {
    let unreachable = |cause: String| BootstrapError::Unreachable { url: url.to_owned(), cause };
    let authority = url.strip_prefix("http://").unwrap_or(url);
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| unreachable("no address".into()))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, CHECK_TIMEOUT).map_err(|e| unreachable(e.to_string()))?;
    stream.set_read_timeout(Some(CHECK_TIMEOUT)).map_err(|e| unreachable(e.to_string()))?;
    stream.set_write_timeout(Some(CHECK_TIMEOUT)).map_err(|e| unreachable(e.to_string()))?;
    let request = format!("GET /boot.ipxe HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| unreachable(e.to_string()))?;
    let mut answer = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    if answer.starts_with("HTTP/1.1 400") && answer.contains("\"mac\" is required") {
        Ok(())
    } else {
        let first = answer.lines().next().unwrap_or("no answer").to_owned();
        Err(unreachable(format!("answers, but not as a Bootfleet image streamer ({first})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn urls_keep_their_order_and_get_a_port() {
        let spec = parse(&strings(&["http://198.18.0.1:8081/,198.18.0.2", "boot.example.com:80"])).unwrap();
        assert_eq!(
            spec,
            ServerSpec::Urls(strings(&[
                "http://198.18.0.1:8081",
                "http://198.18.0.2:8080",
                "http://boot.example.com:80"
            ]))
        );
        assert_eq!(spec.origin(), "flags");
    }

    #[test]
    fn dns_and_auto_stand_alone() {
        assert_eq!(
            parse(&strings(&["dns:boot.example.com:8081"])).unwrap(),
            ServerSpec::Dns { name: "boot.example.com".into(), port: 8081 }
        );
        assert_eq!(parse(&strings(&["dns:boot"])).unwrap().origin(), "dns:boot:8080");
        assert_eq!(parse(&strings(&["auto"])).unwrap(), ServerSpec::Auto);
        let err = parse(&strings(&["auto", "http://198.18.0.1:8080"])).unwrap_err();
        assert!(err.to_string().contains("\"auto\""), "{err}");
    }

    #[test]
    fn bad_input_is_named() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "names no server"),
            (&[" , "], "names no server"),
            (&["https://198.18.0.1"], "only http://"),
            (&["http://198.18.0.1:8080/boot.ipxe"], "without a path"),
            (&["http://198.18.0.1:99999"], "bad port"),
            (&["http://198.18.0.1:0"], "bad port"),
            (&["http://${ip}:8080"], "not an IPv4 address or a host name"),
            (&["http://${net0/ip}:8080"], "without a path"),
            (&["http://a b:8080"], "not an IPv4 address or a host name"),
            (&["198.18.0.1", "http://198.18.0.1:8080"], "listed twice"),
            (&["dns:"], "not an IPv4 address or a host name"),
        ];
        for (values, needle) in cases {
            let err = parse(&strings(values)).unwrap_err().to_string();
            assert!(err.contains(needle), "{values:?}: {err}");
        }
        let err = parse(&strings(&["http://x_y"])).unwrap_err().to_string();
        assert!(err.contains("\"http://x_y\""), "names the value: {err}");
    }

    #[test]
    fn localhost_resolves_to_ipv4_urls() {
        assert_eq!(resolve("localhost", 8080).unwrap(), strings(&["http://127.0.0.1:8080"]));
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        // Bound, then closed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = check(&format!("http://127.0.0.1:{port}")).unwrap_err();
        assert!(matches!(err, BootstrapError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&format!("http://127.0.0.1:{port}")), "{err}");
    }
}
