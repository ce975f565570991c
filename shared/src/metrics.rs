//! Prometheus-style metrics: every role keeps its counters in a [`Registry`] and serves them as text
//! on `GET /metrics`.

use std::future::Future;
use std::sync::Arc;

use prometheus_client::encoding::prometheus_text;
pub use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, registry);
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], render(&registry)) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Binds `addr` and serves metrics there in the background until `shutdown` completes; logs and
/// carries on when the address cannot be bound (metrics are not worth failing the process for).
pub async fn spawn(
    addr: std::net::SocketAddr,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    match TcpListener::bind(addr).await {
        Ok(listener) => {
            tracing::info!(address = %addr, "metrics served on /metrics");
            tokio::spawn(async move {
                if let Err(e) = serve(listener, registry, shutdown).await {
                    tracing::warn!(error = %e, "metrics endpoint failed");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, address = %addr, "cannot serve metrics"),
    }
}
