//! The admin endpoint answers HTTP (healthz, metrics) and gRPC health on one
//! port, and reflects component health.

use std::time::Duration;

use bootfleet_core::admin::{ComponentHealth, Health, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn grpc_status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let request = HealthCheckRequest { service: service.into() };
    let response = client.check(request).await.unwrap().into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

#[tokio::test]
async fn health_and_metrics_on_one_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = Health::new();
    health.set("store", ComponentHealth::Serving).await;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, health.clone(), stop.clone()));
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = HealthClient::new(channel);

    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!((code, body.lines().next()), (200, Some("serving")));
    assert_eq!(grpc_status(&mut grpc, "").await, ServingStatus::Serving);
    assert_eq!(grpc_status(&mut grpc, "bootfleet.store").await, ServingStatus::Serving);

    // Degraded: still serving overall, the component says otherwise.
    health.set("store", ComponentHealth::Degraded("etcd unreachable".into())).await;
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!(code, 200);
    assert!(body.starts_with("degraded\n") && body.contains("store: degraded (etcd unreachable)"), "{body}");
    assert_eq!(grpc_status(&mut grpc, "").await, ServingStatus::Serving);
    assert_eq!(grpc_status(&mut grpc, "bootfleet.store").await, ServingStatus::NotServing);

    health.set("store", ComponentHealth::NotServing("loading".into())).await;
    assert_eq!(http_get(addr, "/readyz").await.0, 503);
    assert_eq!(grpc_status(&mut grpc, "").await, ServingStatus::NotServing);
    health.set("store", ComponentHealth::Serving).await;
    health.set_shutting_down().await;
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!((code, body.lines().next()), (503, Some("shutting down")));

    bootfleet_core::metrics::LEADER.with_label_values(&["admin-test"]).set(1);
    let (code, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("bootfleet_election_leader{election=\"admin-test\"} 1"), "{metrics}");
    assert_eq!(http_get(addr, "/nope").await.0, 404);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("admin server stops").unwrap();
}
