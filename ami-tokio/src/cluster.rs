//! [`ClusterClient`]: several servers in one task, a default, and routing over the
//! healthy ones.
//!
//! All servers of a cluster client share one [`ami_cluster::ClientCore`] (the same
//! core `ami-mio` drives) in one task: routing, readiness, completion slots and
//! metrics are the core's, not a copy of them.

use std::time::Duration;

use ami_cluster::{ClusterError, NoServerAvailable, NodeMetrics, ServerId, Strategy};
use ami_proto::{Action, Filter, Reply};
use futures_core::Stream;

use crate::calls::{CallStream, DEFAULT_CALL_CAPACITY};
use crate::client::{Client, ClientSpec, spawn_all};
use crate::error::ClientError;
use crate::events::EventStream;
use crate::runtime::Runtime;

/// Many servers behind one cloneable handle.
#[derive(Clone, Debug)]
pub struct ClusterClient {
    clients: std::sync::Arc<[Client]>,
}

impl ClusterClient {
    /// Spawns one task for every server of `specs` (each connects through `rt`).
    /// `default` names the default server (the first when `None`). Routing starts
    /// round-robin.
    pub fn spawn<R: Runtime>(
        rt: R,
        specs: Vec<ClientSpec>,
        default: Option<&str>,
    ) -> Result<ClusterClient, ClusterError> {
        let clients = spawn_all(rt, specs)?;
        if let Some(key) = default {
            clients[0].shared().lock().core.set_default(key)?;
        }
        Ok(ClusterClient {
            clients: clients.into(),
        })
    }

    fn first(&self) -> &Client {
        &self.clients[0]
    }

    /// The server with this key.
    pub fn server(&self, key: &str) -> Option<&Client> {
        let id = self.first().shared().lock().core.id(key)?;
        self.clients.get(id.0)
    }

    /// The default server.
    pub fn default_server(&self) -> &Client {
        let now = (self.first().shared().now)();
        let id = self.first().shared().lock().core.default_server(now);
        self.first().shared().notify();
        &self.clients[id.0]
    }

    /// Every server, in registry order.
    pub fn servers(&self) -> &[Client] {
        &self.clients
    }

    /// Sets the routing strategy (keys are checked).
    pub fn set_routing(&self, strategy: Strategy<String>) -> Result<(), ClusterError> {
        self.first().shared().lock().core.set_routing(strategy)
    }

    /// A healthy server chosen by the routing strategy; idle servers are opened first
    /// (they become selectable once logged in).
    pub fn select(&self) -> Result<&Client, NoServerAvailable> {
        let shared = self.first().shared();
        let now = (shared.now)();
        let chosen: Result<ServerId, _> = shared.lock().core.select(now);
        shared.notify();
        Ok(&self.clients[chosen?.0])
    }

    /// Selects a server and sends `action` there; returns the server's key with the
    /// reply.
    pub async fn send_routed(
        &self,
        action: impl Into<Action>,
    ) -> Result<(String, Reply), ClientError> {
        let client = self.select()?;
        let reply = client.send(action).await?;
        Ok((client.key(), reply))
    }

    /// Opens every server (eager open) and waits until each is logged in or
    /// `timeout` ran out; returns the servers that did not make it.
    pub async fn connect_all(&self, timeout: Duration) -> Vec<(String, ClientError)> {
        let waits = self.clients.iter().map(|c| async move {
            let _ = c.connect().await;
            c.wait_ready(timeout).await.err().map(|e| (c.key(), e))
        });
        futures_util::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// One stream of the events that pass `filter`, from every server.
    pub fn events(&self, filter: Filter) -> ClusterEvents {
        let client = self.first();
        ClusterEvents {
            stream: client
                .shared()
                .subscribers
                .subscribe(filter, client.stream_capacity()),
        }
    }

    /// One stream of the ended calls of every tracked server.
    pub fn calls(&self) -> CallStream {
        self.first()
            .shared()
            .calls
            .subscribe(None, DEFAULT_CALL_CAPACITY)
    }

    /// Every server's metrics with its key, in registry order.
    pub fn metrics(&self) -> Vec<(String, NodeMetrics)> {
        let inner = self.first().shared().lock();
        inner
            .core
            .all_metrics()
            .into_iter()
            .map(|(key, metrics)| (key.to_owned(), metrics))
            .collect()
    }

    /// Every server's metrics in the Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        self.first().shared().lock().core.render_prometheus()
    }

    /// Logs off every server; the task ends once all are closed.
    pub async fn close_all(&self) {
        futures_util::future::join_all(self.clients.iter().map(Client::close)).await;
    }
}

/// Events of every server of a cluster, as they come.
#[derive(Debug)]
pub struct ClusterEvents {
    stream: EventStream,
}

impl ClusterEvents {
    /// Events this stream dropped because its consumer fell behind.
    pub fn dropped(&self) -> u64 {
        self.stream.dropped()
    }
}

impl Stream for ClusterEvents {
    type Item = ami_proto::Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.stream).poll_next(cx)
    }
}
