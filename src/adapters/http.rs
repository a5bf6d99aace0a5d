//! The HTTP surface shared by every platform: health, metrics (on its own listener, which
//! answers the health probes too), and the limits every request meets (64 KiB bodies, a request timeout against slow uploads). Slack's
//! and Discord's routes are merged in by their adapters.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tower_http::timeout::TimeoutLayer;

use crate::App;

/// Largest request body accepted (the spec's 64 KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// `/healthz` and `/readyz`, on the public listener.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(app)
}

/// `/metrics`, on its own listener (`server.metrics_listen`): request counts, latencies and
/// connection figures are for the operator, not for whoever can reach the webhooks. The
/// listener also answers `/healthz` and `/readyz`, within its own connection budget, so the
/// probes never wait behind the public listener's cap.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(app)
}

/// Wraps the whole router in the limits every request meets; `timeout` covers the body upload
/// too, so a slow-loris sender is cut off. The body limit is axum's own, which every body
/// extractor applies (413 past it, whether the length is declared or not; no handler reads a
/// body any other way); tower-http's `RequestBodyLimitLayer` on top would wrap each request's
/// and response's body once more for the same check.
pub fn with_limits(router: Router, timeout: Duration) -> Router {
    router
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
}

/// 200 when every readiness check is up (Redis when configured, the chat connections);
/// 503 otherwise and while shutting down. The body names each check, for the operator.
async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let checks = app.readiness.report();
    let stopping = app.shutdown().is_fired();
    let mut body = String::new();
    for (name, up) in &checks {
        body.push_str(&format!("{name}: {}\n", if *up { "up" } else { "down" }));
    }
    if stopping {
        body.push_str("shutting down\n");
    }
    let ready = !stopping && checks.iter().all(|(_, up)| *up);
    let status = if ready {
        body.push_str("ready\n");
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
}
