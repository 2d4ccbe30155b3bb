//! Shared pieces of every gRPC server: accepted connections with Nagle off,
//! and reflection over Bootfleet's schema and grpc.health.v1.

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

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

/// The reflection service (v1) over Bootfleet's schema and grpc.health.v1,
/// so generic clients (grpcurl, grpcio-reflection) can call any service.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(bootfleet_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}
