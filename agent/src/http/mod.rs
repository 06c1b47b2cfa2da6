//! `/healthz` (200 while the agent runs), `/readyz` (503 until the lease
//! is held, the datapath programmed and subnet.env written) and `/metrics`
//! (Prometheus, see `metrics/`: one rendering at a time, shared), behind a
//! listener that bounds the connections (`listener.rs`).

pub mod listener;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    http::{StatusCode, header},
    routing::get,
};

use listener::BoundedListener;

use crate::metrics::{
    self,
    single_flight::{self, SingleFlight},
};

/// The paths this endpoint serves (probes and scrapers name them).
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";
pub const METRICS_PATH: &str = "/metrics";

#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Binds now (so a taken port is a start-up error) and serves in the background.
pub async fn serve(address: SocketAddr, readiness: Readiness) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("--healthz-port: cannot listen on {address}"))?;
    let app = Router::new()
        .route(HEALTHZ_PATH, get(|| async { "ok\n" }))
        .route(
            METRICS_PATH,
            get({
                let readiness = readiness.clone();
                let scrapes = Arc::new(SingleFlight::new(single_flight::RECENT, move || {
                    metrics::global().render(readiness.get())
                }));
                move || {
                    let scrapes = scrapes.clone();
                    async move { scrapes_answer(&scrapes).await }
                }
            }),
        )
        .route(
            READYZ_PATH,
            get(move || {
                let ready = readiness.get();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let listener = BoundedListener::new(listener, |refusal| {
            metrics::global().http_refused(refusal);
        });
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!("health endpoint stopped: {error}");
        }
    });
    Ok(())
}

/// One scrape's answer: the metrics text, rendered by this scrape or shared
/// from the last rendering (counted either way).
async fn scrapes_answer(
    scrapes: &SingleFlight,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    match scrapes.get().await {
        Ok((text, served)) => {
            metrics::global().scrape_served(served);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                text.to_string(),
            )
        }
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("cannot render the metrics: {error}\n"),
        ),
    }
}
