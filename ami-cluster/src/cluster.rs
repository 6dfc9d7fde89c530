//! The server registry: many [`Node`]s, a default, and routing between them.
//!
//! A [`Cluster`] is what a driver that runs every server in one loop (`ami-mio`, your
//! own reactor) holds: it owns one [`Node`] per configured server, selects servers for
//! actions with a [`Router`], and aggregates timeouts, outputs and metrics. It is
//! sans-IO like the rest of the crate: the driver moves the bytes of each node.

use std::time::Instant;

use ami_proto::{Action, Config, MemoryBudget, SendError};

use crate::health::Health;
use crate::metrics::{NodeMetrics, render_memory, render_prometheus_with};
use crate::node::{Node, NodeOutput, Policy};
use crate::rng::Rng;
use crate::routing::{NoServerAvailable, Router, Strategy};

/// A server of a cluster (its index in registry order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub usize);

/// How a cluster is built.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The servers, in registry order (the order failover and health-aware routing
    /// prefer).
    pub servers: Vec<Config>,
    /// The key of the default server (`default` in the config); `None` means the first.
    pub default: Option<String>,
    /// Reconnect policy for every node.
    pub policy: Policy,
    /// Seed of the jitter (each node gets its own stream derived from it).
    pub seed: u64,
    /// Tag of this client in ActionIDs (drivers pick one per process).
    pub instance: u32,
    /// The one memory budget of the whole client (`options.memory_limit`, 128 MiB by
    /// default): every server's connections charge it, in place of the budget their
    /// `Config` came with (see [`ami_proto::budget`]).
    pub memory: MemoryBudget,
}

impl ClusterConfig {
    /// A configuration with the default policy.
    pub fn new(servers: Vec<Config>, seed: u64, instance: u32) -> Self {
        ClusterConfig {
            servers,
            default: None,
            policy: Policy::default(),
            seed,
            instance,
            memory: MemoryBudget::default(),
        }
    }
}

/// Why the registry refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No server has this key.
    #[error("unknown server {0:?}")]
    UnknownServer(String),
    /// Two servers have the same key.
    #[error("server {0:?} configured twice")]
    DuplicateServer(String),
    /// The cluster has no server at all.
    #[error("no servers configured")]
    Empty,
}

/// Why a routed send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No server qualified.
    #[error(transparent)]
    NoServer(#[from] NoServerAvailable),
    /// The selected server refused the action.
    #[error("{server}: {error}")]
    Refused {
        /// The server selected.
        server: ServerId,
        /// Why it refused.
        error: SendError,
    },
}

/// Many servers, a default, and a router. See the [module documentation](self).
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    default: ServerId,
    router: Router<ServerId>,
    /// The round-robin cursor of [`Cluster::select_with`] when the configured strategy
    /// is another one.
    round_robin: Router<ServerId>,
    /// The node whose outputs [`Cluster::poll`] looks at first.
    poll_start: usize,
    /// What [`Cluster::add`] builds new nodes with: the policy, the ActionID tag and
    /// the seed stream (continued, so adding servers one by one seeds them as `new`).
    policy: Policy,
    instance: u32,
    seeds: Rng,
    /// The budget every node's connections charge ([`ClusterConfig::memory`]).
    memory: MemoryBudget,
}

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server #{}", self.0)
    }
}

impl Cluster {
    /// A cluster of idle nodes (nothing connects before [`Cluster::connect_all`] or a
    /// server's first use). Routing starts round-robin.
    pub fn new(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        if config.servers.is_empty() {
            return Err(ClusterError::Empty);
        }
        let mut seeds = Rng::new(config.seed);
        let mut nodes: Vec<Node> = Vec::with_capacity(config.servers.len());
        for mut server in config.servers {
            server.budget = config.memory.clone();
            if nodes.iter().any(|n| n.key() == server.server_key) {
                return Err(ClusterError::DuplicateServer(server.server_key));
            }
            nodes.push(Node::new(
                server,
                config.instance,
                seeds.next_u64(),
                config.policy,
            ));
        }
        let default = match &config.default {
            None => ServerId(0),
            Some(key) => nodes
                .iter()
                .position(|n| n.key() == key)
                .map(ServerId)
                .ok_or_else(|| ClusterError::UnknownServer(key.clone()))?,
        };
        Ok(Cluster {
            nodes,
            default,
            router: Router::new(Strategy::RoundRobin),
            round_robin: Router::new(Strategy::RoundRobin),
            poll_start: 0,
            policy: config.policy,
            instance: config.instance,
            seeds,
            memory: config.memory,
        })
    }

    /// Adds an idle server at the end of the registry (for drivers that add servers
    /// one at a time). Its jitter seed continues the cluster's seed stream.
    pub fn add(&mut self, server: Config) -> Result<ServerId, ClusterError> {
        self.add_with_policy(server, self.policy)
    }

    /// Adds an idle server with its own reconnect policy.
    pub fn add_with_policy(
        &mut self,
        mut server: Config,
        policy: Policy,
    ) -> Result<ServerId, ClusterError> {
        if self.id(&server.server_key).is_some() {
            return Err(ClusterError::DuplicateServer(server.server_key));
        }
        server.budget = self.memory.clone();
        let seed = self.seeds.next_u64();
        self.nodes
            .push(Node::new(server, self.instance, seed, policy));
        Ok(ServerId(self.nodes.len() - 1))
    }

    /// Makes the server with this key the default (see [`Cluster::default_server`]).
    pub fn set_default(&mut self, key: &str) -> Result<ServerId, ClusterError> {
        let id = self
            .id(key)
            .ok_or_else(|| ClusterError::UnknownServer(key.to_owned()))?;
        self.default = id;
        Ok(id)
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one server.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every server, in registry order.
    pub fn ids(&self) -> impl Iterator<Item = ServerId> + use<> {
        (0..self.nodes.len()).map(ServerId)
    }

    /// The server with this key, without opening it.
    pub fn id(&self, key: &str) -> Option<ServerId> {
        self.nodes.iter().position(|n| n.key() == key).map(ServerId)
    }

    /// A server's node.
    pub fn node(&self, id: ServerId) -> &Node {
        &self.nodes[id.0]
    }

    /// A server's node, to drive it.
    pub fn node_mut(&mut self, id: ServerId) -> &mut Node {
        &mut self.nodes[id.0]
    }

    /// The server with this key, opened if it was idle (lazy open).
    pub fn server(&mut self, key: &str, now: Instant) -> Result<ServerId, ClusterError> {
        let id = self
            .id(key)
            .ok_or_else(|| ClusterError::UnknownServer(key.to_owned()))?;
        self.open_if_idle(id, now);
        Ok(id)
    }

    /// The default server, opened if it was idle.
    pub fn default_server(&mut self, now: Instant) -> ServerId {
        let id = self.default;
        self.open_if_idle(id, now);
        id
    }

    /// Opens every server now (eager open).
    pub fn connect_all(&mut self, now: Instant) {
        for node in &mut self.nodes {
            node.open(now);
        }
    }

    /// Closes every server gracefully; none reconnects.
    pub fn close_all(&mut self, now: Instant) {
        for node in &mut self.nodes {
            node.close(now);
        }
    }

    /// Sets the routing strategy (keys are checked against the registry).
    pub fn set_routing(&mut self, strategy: Strategy<String>) -> Result<(), ClusterError> {
        let strategy = strategy.try_map(|key| {
            self.id(key)
                .ok_or_else(|| ClusterError::UnknownServer(key.clone()))
        })?;
        self.router = Router::new(strategy);
        Ok(())
    }

    /// Selects a healthy server with the routing strategy. Idle servers are opened
    /// first (they become selectable once logged in).
    pub fn select(&mut self, now: Instant) -> Result<ServerId, NoServerAvailable> {
        for i in 0..self.nodes.len() {
            self.open_if_idle(ServerId(i), now);
        }
        let table = self.health_table();
        self.router.select(&table).copied()
    }

    /// Selects a healthy server with `strategy` instead of the configured one (the
    /// configured one when `None`), e.g. a route chosen per request. A round-robin
    /// override keeps a cursor of its own between calls.
    pub fn select_with(
        &mut self,
        strategy: Option<&Strategy<String>>,
        now: Instant,
    ) -> Result<ServerId, NoServerAvailable> {
        let Some(strategy) = strategy else {
            return self.select(now);
        };
        let unknown = NoServerAvailable {
            strategy: strategy.kind(),
            considered: 0,
        };
        let strategy = strategy.try_map(|key| self.id(key).ok_or(unknown))?;
        if &strategy == self.router.strategy() {
            return self.select(now);
        }
        for i in 0..self.nodes.len() {
            self.open_if_idle(ServerId(i), now);
        }
        let table = self.health_table();
        match strategy {
            Strategy::RoundRobin => self.round_robin.select(&table).copied(),
            other => Router::new(other).select(&table).copied(),
        }
    }

    /// Selects a server and sends `action` there.
    pub fn send_routed(
        &mut self,
        now: Instant,
        action: impl Into<Action>,
    ) -> Result<(ServerId, String), RouteError> {
        let server = self.select(now)?;
        self.nodes[server.0]
            .send(now, action)
            .map(|id| (server, id))
            .map_err(|error| RouteError::Refused { server, error })
    }

    /// Every server's health, in registry order.
    pub fn health_table(&self) -> Vec<(ServerId, Health)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (ServerId(i), n.health()))
            .collect()
    }

    /// Runs every node's due timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        for node in &mut self.nodes {
            if node.poll_timeout().is_some_and(|at| at <= now) {
                node.handle_timeout(now);
            }
        }
    }

    /// The earliest instant any node needs [`Cluster::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.nodes.iter().filter_map(Node::poll_timeout).min()
    }

    /// The next output of any node. Nodes take turns going first, so that one busy
    /// server cannot hide the others' outputs.
    pub fn poll(&mut self) -> Option<(ServerId, NodeOutput)> {
        let n = self.nodes.len();
        for offset in 0..n {
            let i = (self.poll_start + offset) % n;
            if let Some(output) = self.nodes[i].poll() {
                self.poll_start = (i + 1) % n;
                return Some((ServerId(i), output));
            }
        }
        None
    }

    /// Every server's metrics, keyed by server key.
    pub fn metrics(&self) -> Vec<(&str, NodeMetrics)> {
        self.nodes.iter().map(|n| (n.key(), n.metrics())).collect()
    }

    /// The memory budget every server's connections charge.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// Every server's metrics in the Prometheus text format, then the client's memory
    /// budget (`ami_memory_used_bytes`, `ami_memory_limit_bytes`).
    pub fn render_prometheus(&self) -> String {
        self.render_prometheus_with(&[])
    }

    /// [`render_prometheus`](Cluster::render_prometheus) with drops of the
    /// application's own (see [`render_prometheus_with`]).
    pub fn render_prometheus_with(&self, more_drops: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        render_prometheus_with(&self.metrics(), more_drops, &mut out);
        render_memory(&self.memory, &mut out);
        out
    }

    fn open_if_idle(&mut self, id: ServerId, now: Instant) {
        let node = &mut self.nodes[id.0];
        if node.is_idle() {
            node.open(now);
        }
    }
}
