//! Shared pieces of every gRPC server: accepted connections with Nagle off,
//! and reflection over Bootfleet's schema and grpc.health.v1.

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

/// Requests served at once on one connection; more wait for a slot.
pub const CONCURRENCY_PER_CONNECTION: usize = 256;
/// HTTP/2 streams a client may open on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 512;

/// A gRPC server with the limits every Bootfleet service applies: requests
/// in flight per connection, streams per connection, HTTP/2 keep-alive
/// pings that drop peers that vanished, and, when given, a deadline for
/// each request (a unary call's whole life; a server-streaming call's
/// start — the stream itself is not cut).
pub fn server(request_timeout: Option<std::time::Duration>) -> tonic::transport::Server {
    let mut server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)));
    if let Some(timeout) = request_timeout {
        server = server.timeout(timeout);
    }
    server
}

/// As [`server`], speaking TLS with `tls`'s certificate when given, and
/// asking for client certificates from its client CA as it says. Every
/// Bootfleet gRPC server takes its TLS settings through here, the same keys
/// in each service's section.
pub fn server_with_tls(
    request_timeout: Option<std::time::Duration>,
    tls: Option<&crate::config::ServerTls>,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let server = server(request_timeout);
    match tls {
        None => Ok(server),
        Some(tls) => server.tls_config(tls_config(tls)),
    }
}

fn tls_config(tls: &crate::config::ServerTls) -> tonic::transport::ServerTlsConfig {
    use crate::config::ClientAuth;
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    if let Some(ca) = &tls.client_ca_pem {
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(tls.client_auth == ClientAuth::Optional);
    }
    config
}

/// Connections accepted on `listener` with TCP_NODELAY set.
/// `serve_with_incoming` ignores the builder's TCP_NODELAY; without it Nagle
/// holds small responses back and request latency suffers.
pub fn incoming_nodelay(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|connection| {
        if let Ok(stream) = &connection {
            let _ = stream.set_nodelay(true);
        }
        connection
    })
}

/// The reflection services over Bootfleet's schema and grpc.health.v1, so
/// generic clients can call any service: `v1`, and `v1alpha`, which many
/// clients still speak (grpcio-reflection's descriptor database only does).
/// They advertise `services` and grpc.health.v1 (which every Bootfleet server
/// serves), not every service the schema defines. Add both to a server.
pub fn reflection(
    services: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(bootfleet_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(tonic_health::pb::health_server::SERVICE_NAME);
        for service in services {
            builder = builder.with_service_name(*service);
        }
        builder
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
