//! `--metrics-addr`: the cluster's metrics over HTTP in the Prometheus text format.
//!
//! The driver lives on the listen loop's thread, so the loop renders a snapshot
//! ([`MetricsEndpoint::publish`]) and a small server thread hands the latest one to
//! every `GET /metrics`. Scrapes never touch the driver and never block the loop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::CliError;

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running metrics endpoint.
pub struct MetricsEndpoint {
    snapshot: Arc<Mutex<String>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsEndpoint {
    /// Binds `addr` and starts serving (an empty body until the first publish).
    pub fn start(addr: SocketAddr) -> Result<MetricsEndpoint, CliError> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| CliError::Failed(format!("cannot serve metrics on {addr}: {e}")))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| CliError::Failed(format!("metrics endpoint {addr} is not TCP")))?;
        let server = Arc::new(server);
        let snapshot = Arc::new(Mutex::new(String::new()));
        let thread = {
            let (server, snapshot) = (server.clone(), snapshot.clone());
            std::thread::Builder::new()
                .name("ami-metrics".into())
                .spawn(move || serve(&server, &snapshot))
                .map_err(|e| CliError::io("cannot start the metrics thread", e))?
        };
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
        Ok(MetricsEndpoint {
            snapshot,
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// Replaces the snapshot served to the next scrapes.
    pub fn publish(&self, text: String) {
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = text;
    }
}

impl std::fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsEndpoint")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers requests until the server is unblocked.
fn serve(server: &tiny_http::Server, snapshot: &Mutex<String>) {
    let content_type =
        tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE).expect("a valid static header");
    for request in server.incoming_requests() {
        let response = match (request.method(), request.url()) {
            (tiny_http::Method::Get, "/metrics") => {
                let body = snapshot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                tiny_http::Response::from_string(body).with_header(content_type.clone())
            }
            _ => tiny_http::Response::from_string("not found: try GET /metrics\n")
                .with_status_code(404),
        };
        if let Err(error) = request.respond(response) {
            tracing::debug!(%error, "metrics scrape aborted");
        }
    }
}
