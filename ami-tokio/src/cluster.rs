//! [`ClusterClient`]: several servers, a default, and routing over the healthy ones.
//!
//! Each server is a [`Client`] with its own connection task; the cluster client only
//! chooses between them, with `ami-cluster`'s [`Router`] over their current health.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ami_cluster::{ClusterError, Health, NoServerAvailable, Router, Strategy};
use ami_proto::{Action, Filter, Reply};
use futures_core::Stream;
use futures_util::stream::SelectAll;

use crate::client::{Client, ClientSpec};
use crate::error::ClientError;
use crate::events::EventStream;
use crate::runtime::Runtime;

/// Many servers behind one cloneable handle.
#[derive(Clone, Debug)]
pub struct ClusterClient {
    clients: Arc<[Client]>,
    default: usize,
    router: Arc<Mutex<Router<usize>>>,
}

impl ClusterClient {
    /// Spawns a task per server. `default` names the default server (the first when
    /// `None`). Routing starts round-robin.
    pub fn spawn<R: Runtime>(
        rt: R,
        specs: Vec<ClientSpec>,
        default: Option<&str>,
    ) -> Result<ClusterClient, ClusterError> {
        if specs.is_empty() {
            return Err(ClusterError::Empty);
        }
        for (i, spec) in specs.iter().enumerate() {
            let key = &spec.config.server_key;
            if specs[..i].iter().any(|s| s.config.server_key == *key) {
                return Err(ClusterError::DuplicateServer(key.clone()));
            }
        }
        let clients: Arc<[Client]> = specs
            .into_iter()
            .map(|spec| Client::spawn(rt.clone(), spec))
            .collect();
        let default = match default {
            None => 0,
            Some(key) => clients
                .iter()
                .position(|c| c.key() == key)
                .ok_or_else(|| ClusterError::UnknownServer(key.to_owned()))?,
        };
        Ok(ClusterClient {
            clients,
            default,
            router: Arc::new(Mutex::new(Router::new(Strategy::RoundRobin))),
        })
    }

    /// The server with this key.
    pub fn server(&self, key: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.key() == key)
    }

    /// The default server.
    pub fn default_server(&self) -> &Client {
        &self.clients[self.default]
    }

    /// Every server, in registry order.
    pub fn servers(&self) -> &[Client] {
        &self.clients
    }

    /// Sets the routing strategy (keys are checked).
    pub fn set_routing(&self, strategy: Strategy<String>) -> Result<(), ClusterError> {
        let strategy = strategy.try_map(|key| {
            self.clients
                .iter()
                .position(|c| c.key() == key)
                .ok_or_else(|| ClusterError::UnknownServer(key.clone()))
        })?;
        *self.router.lock().unwrap_or_else(PoisonError::into_inner) = Router::new(strategy);
        Ok(())
    }

    /// A healthy server chosen by the routing strategy.
    pub fn select(&self) -> Result<&Client, NoServerAvailable> {
        let table: Vec<(usize, Health)> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.health()))
            .collect();
        let chosen = *self
            .router
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .select(&table)?;
        Ok(&self.clients[chosen])
    }

    /// Selects a server and sends `action` there; returns the server's key with the
    /// reply.
    pub async fn send_routed(
        &self,
        action: impl Into<Action>,
    ) -> Result<(String, Reply), ClientError> {
        let client = self.select()?;
        let reply = client.send(action).await?;
        Ok((client.key().to_owned(), reply))
    }

    /// Opens every server (eager open) and waits until each is logged in or
    /// `timeout` ran out; returns the servers that did not make it.
    pub async fn connect_all(&self, timeout: Duration) -> Vec<(String, ClientError)> {
        let waits = self.clients.iter().map(|c| async move {
            c.wait_ready(timeout)
                .await
                .err()
                .map(|e| (c.key().to_owned(), e))
        });
        futures_util::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// One stream of the events that pass `filter`, from every server (each server
    /// buffers and counts drops on its own).
    pub fn events(&self, filter: Filter) -> ClusterEvents {
        ClusterEvents {
            streams: self
                .clients
                .iter()
                .map(|c| c.events(filter.clone()))
                .collect(),
        }
    }

    /// Logs off every server.
    pub async fn close_all(&self) {
        futures_util::future::join_all(self.clients.iter().map(Client::close)).await;
    }
}

/// Events of every server of a cluster, merged as they come.
#[derive(Debug)]
pub struct ClusterEvents {
    streams: SelectAll<EventStream>,
}

impl ClusterEvents {
    /// Events dropped by every server's buffer of this stream.
    pub fn dropped(&self) -> u64 {
        self.streams.iter().map(EventStream::dropped).sum()
    }
}

impl Stream for ClusterEvents {
    type Item = ami_proto::Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.streams).poll_next(cx)
    }
}
