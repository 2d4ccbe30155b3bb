//! The per-service admin endpoint: gRPC health (`grpc.health.v1`) and plain
//! HTTP (`/healthz`, `/readyz`, `/metrics` in Prometheus text format) on one
//! port. Requests with content-type `application/grpc` go to the health
//! service; everything else is HTTP.
//!
//! Health is kept per component ("store", "dhcp", …). The overall status
//! (gRPC service `""`) is SERVING unless a component is not serving or
//! shutdown began; a *degraded* component — e.g. the store is unreachable
//! but the snapshot still answers — keeps the overall status SERVING, shows
//! in `/healthz`, and reports NOT_SERVING under its own gRPC service name
//! `bootfleet.<component>`.
//!
//! A process names the components it will run before its admin endpoint
//! answers ([`Health::expect`]); each starts as not serving, so `/readyz`
//! and the overall gRPC status say "serving" only once every one of them
//! has said so, never in the moment before a component registered.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::Encoder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceExt;

use crate::snapshot::{CacheStatus, SnapshotCache};

/// One component's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComponentHealth {
    /// Working normally.
    Serving,
    /// Working with reduced guarantees; the reason.
    Degraded(String),
    /// Not working; the reason.
    NotServing(String),
}

#[derive(Default)]
struct HealthState {
    components: BTreeMap<String, ComponentHealth>,
    shutting_down: bool,
}

/// Shared health of a process. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    state: Arc<Mutex<HealthState>>,
    reporter: HealthReporter,
    service: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Health with no components yet (overall SERVING once set).
    pub fn new() -> Self {
        let reporter = HealthReporter::new();
        let service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        );
        Self { state: Arc::default(), reporter, service }
    }

    /// The `grpc.health.v1` service, to serve on a service's own gRPC port
    /// as well as on the admin port.
    pub fn grpc_service(
        &self,
    ) -> tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService> {
        self.service.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers components that are starting: each is not serving (and
    /// so neither is the process) until it sets its own health.
    pub async fn expect(&self, components: &[&str]) {
        for component in components {
            self.set(component, ComponentHealth::NotServing("starting".into())).await;
        }
    }

    /// Sets a component's health and republishes the gRPC statuses.
    pub async fn set(&self, component: &str, health: ComponentHealth) {
        let (overall, own) = self.record(component, health);
        self.reporter.set_service_status(format!("bootfleet.{component}"), own).await;
        self.reporter.set_service_status("", overall).await;
    }

    /// Updates the state `/healthz` reads, at once; returns the gRPC
    /// statuses (the component's own, the overall) to publish.
    fn record(&self, component: &str, health: ComponentHealth) -> (ServingStatus, ServingStatus) {
        let mut state = self.lock();
        let own = if health == ComponentHealth::Serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        state.components.insert(component.to_owned(), health);
        (overall_status(&state), own)
    }

    /// Marks the process as shutting down: overall NOT_SERVING, so load
    /// balancers and peers stop sending new work.
    pub async fn set_shutting_down(&self) {
        self.lock().shutting_down = true;
        self.reporter.set_service_status("", ServingStatus::NotServing).await;
    }

    /// `(http status, text)` for `/healthz`.
    pub fn summary(&self) -> (StatusCode, String) {
        let state = self.lock();
        let mut lines = Vec::new();
        for (name, health) in &state.components {
            match health {
                ComponentHealth::Serving => lines.push(format!("{name}: serving")),
                ComponentHealth::Degraded(why) => lines.push(format!("{name}: degraded ({why})")),
                ComponentHealth::NotServing(why) => lines.push(format!("{name}: not serving ({why})")),
            }
        }
        let status = overall_status(&state);
        let word = if state.shutting_down {
            "shutting down"
        } else if status == ServingStatus::NotServing {
            "not serving"
        } else if state.components.values().any(|h| matches!(h, ComponentHealth::Degraded(_))) {
            "degraded"
        } else {
            "serving"
        };
        let code =
            if status == ServingStatus::Serving { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (code, format!("{word}\n{}\n", lines.join("\n")))
    }

    /// Mirrors a snapshot cache's status into component `component`. The
    /// component is registered before this returns (the task that follows
    /// the cache may run later), so no answer can miss it.
    pub fn track_snapshot(&self, component: &str, cache: &SnapshotCache, stop: CancellationToken) {
        let health = self.clone();
        let component = component.to_owned();
        let mut status = cache.status_updates();
        let prefix = cache.prefix().to_owned();
        let mapped = move |status: CacheStatus| match status {
            CacheStatus::Live => ComponentHealth::Serving,
            CacheStatus::Degraded => {
                ComponentHealth::Degraded(format!("store unreachable; serving snapshot of {prefix}"))
            }
            CacheStatus::Loading => ComponentHealth::NotServing(format!("loading {prefix}")),
        };
        self.record(&component, mapped(*status.borrow()));
        tokio::spawn(async move {
            loop {
                let current = *status.borrow_and_update();
                health.set(&component, mapped(current)).await;
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = status.changed() => if changed.is_err() { return },
                }
            }
        });
    }
}

fn overall_status(state: &HealthState) -> ServingStatus {
    let down = state.components.values().any(|h| matches!(h, ComponentHealth::NotServing(_)));
    if state.shutting_down || down { ServingStatus::NotServing } else { ServingStatus::Serving }
}

type AdminBody = tonic::body::Body;

fn text(code: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut response = Response::new(AdminBody::new(Full::new(body.into())));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

fn metrics_text() -> Response<AdminBody> {
    let families = prometheus::gather();
    let mut buf = Vec::new();
    match prometheus::TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => text(StatusCode::OK, "text/plain; version=0.0.4", buf),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding metrics: {e}\n")),
    }
}

async fn handle(health: Health, request: Request<Incoming>) -> Result<Response<AdminBody>, Infallible> {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        return match health.service.clone().oneshot(request).await {
            Ok(response) => Ok(response),
            Err(never) => match never {},
        };
    }
    let response = match (request.method().as_str(), request.uri().path()) {
        ("GET" | "HEAD", "/metrics") => metrics_text(),
        ("GET" | "HEAD", "/healthz" | "/readyz") => {
            let (code, body) = health.summary();
            text(code, "text/plain; charset=utf-8", body)
        }
        ("GET" | "HEAD", "/livez") => text(StatusCode::OK, "text/plain", "alive\n"),
        (_, "/metrics" | "/healthz" | "/readyz" | "/livez") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n")
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: try /healthz, /metrics\n"),
    };
    Ok(response)
}

/// Serves the admin endpoint on an already-bound listener until `stop`,
/// then lets open connections finish (at most 2 s).
pub async fn serve(listener: TcpListener, health: Health, stop: CancellationToken) {
    serve_with_limits(listener, health, stop, crate::http_limits::HttpLimits::ADMIN).await;
}

/// As [`serve`], with the given connection limits.
pub async fn serve_with_limits(
    listener: TcpListener,
    health: Health,
    stop: CancellationToken,
    limits: crate::http_limits::HttpLimits,
) {
    use crate::http_limits::{Admission, ConnectionSlots};
    let graceful = GracefulShutdown::new();
    let builder = crate::http_limits::builder(limits);
    let slots = ConnectionSlots::new(limits);
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Admission::Admitted(permit, stream) = slots.admit(stream) else {
            tracing::warn!(
                limit = limits.max_connections,
                "admin endpoint: too many connections; refused one"
            );
            continue;
        };
        let activity = stream.activity();
        let health = health.clone();
        let service = hyper::service::service_fn(move |req| handle(health.clone(), req));
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        let slots = slots.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if !slots.serve(activity, connection).await {
                tracing::debug!("admin connection idle too long; closed");
            }
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
}
