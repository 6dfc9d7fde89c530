//! A virtual network for cluster tests: every [`Node`] of a [`Cluster`] talks to an
//! `ami-sim` server through memory, in virtual time. Nothing sleeps and nothing
//! touches a socket, so a day of traffic runs in seconds and every run with the same
//! seed is the same run.

#![allow(dead_code, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ami_cluster::{Cluster, ClusterConfig, Health, NodeOutput, ServerId, Transition};
use ami_proto::{ActionError, CloseReason, Output, Reply};
use ami_sim::{SimConfig, SimServer, SimSession};

/// Something the network saw, with its virtual time.
#[derive(Debug, Clone)]
pub enum Record {
    /// The node asked for a transport.
    Connect,
    /// The server refused the connection.
    Refused,
    /// A session closed.
    Closed(CloseReason),
    /// Health changed.
    Health(Health, Health),
    /// The circuit changed.
    Circuit(Transition),
}

/// One completion as the application saw it.
#[derive(Debug, Clone)]
pub struct Done {
    /// The server it ran on.
    pub server: ServerId,
    /// When it completed.
    pub at: Instant,
    /// The outcome.
    pub result: Result<Reply, ActionError>,
}

/// A cluster wired to simulated servers.
pub struct Net {
    /// The cluster under test.
    pub cluster: Cluster,
    /// One simulated Asterisk per node.
    pub servers: Vec<SimServer>,
    /// The live session of each node, if any.
    pub links: Vec<Option<SimSession>>,
    /// Virtual time.
    pub now: Instant,
    /// Where virtual time started.
    pub start: Instant,
    /// Per-node log.
    pub records: Vec<Vec<(Instant, Record)>>,
    /// Completions by ActionID; a second completion for one ID panics.
    pub completions: HashMap<String, Done>,
    /// Events delivered, per node.
    pub events: Vec<u64>,
    /// Events a node may deliver per virtual millisecond (`None`: all): a slow
    /// application.
    pub event_budget: Option<usize>,
    /// What is left of each node's budget in the current millisecond.
    budget_left: Vec<usize>,
    /// The virtual millisecond `budget_left` belongs to.
    budget_ms: Option<u128>,
    /// Largest queue and buffer sizes seen, per node: (events, transmit, input, pending).
    pub high_water: Vec<(usize, usize, usize, usize)>,
}

impl Net {
    /// A network of `servers` (client config, simulator config) pairs.
    pub fn new(cluster: ClusterConfig, sims: Vec<SimConfig>, seed: u64) -> Net {
        let start = Instant::now();
        let n = cluster.servers.len();
        assert_eq!(n, sims.len());
        let servers = sims
            .into_iter()
            .enumerate()
            .map(|(i, sim)| SimServer::new(sim, seed ^ ((i as u64 + 1) * 0x9E37_79B9)))
            .collect();
        Net {
            cluster: Cluster::new(cluster).expect("cluster"),
            servers,
            links: (0..n).map(|_| None).collect(),
            now: start,
            start,
            records: vec![Vec::new(); n],
            completions: HashMap::new(),
            events: vec![0; n],
            event_budget: None,
            budget_left: vec![0; n],
            budget_ms: None,
            high_water: vec![(0, 0, 0, 0); n],
        }
    }

    /// Virtual seconds since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Moves bytes and outputs at the current instant until nothing moves.
    pub fn settle(&mut self) {
        let ms = (self.now - self.start).as_millis();
        if self.budget_ms != Some(ms) {
            self.budget_ms = Some(ms);
            let budget = self.event_budget.unwrap_or(usize::MAX);
            self.budget_left.iter_mut().for_each(|b| *b = budget);
        }
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the network did not settle at {:?}", self.elapsed());
    }

    /// One round over every node; returns whether anything moved.
    fn step(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        for i in 0..self.links.len() {
            let id = ServerId(i);
            // Client → server.
            if let Some(session) = self.links[i].as_mut() {
                let node = self.cluster.node_mut(id);
                let out = node.poll_transmit();
                if !out.is_empty() && session.wants_input(now) {
                    let n = out.len();
                    session.handle_input(now, out);
                    node.advance_transmit(n);
                    moved = true;
                }
            }
            // Server → client.
            if let Some(session) = self.links[i].as_mut() {
                let data = session.poll_transmit();
                if !data.is_empty() {
                    let n = data.len();
                    let node = self.cluster.node_mut(id);
                    node.handle_data(now, data);
                    session.advance_transmit(n);
                    moved = true;
                } else if session.is_closed() {
                    let session = self.links[i].take().expect("live");
                    self.servers[i].retire(session);
                    self.cluster.node_mut(id).handle_eof(now);
                    moved = true;
                }
            }
            moved |= self.drain(id);
            self.watch(id);
        }
        moved
    }

    /// Polls a node's outputs (events within the budget).
    fn drain(&mut self, id: ServerId) -> bool {
        let now = self.now;
        let mut moved = false;
        loop {
            let node = self.cluster.node_mut(id);
            if self.event_budget.is_some()
                && self.budget_left[id.0] == 0
                && !node.has_pending_outputs()
            {
                break;
            }
            let Some(output) = node.poll() else { break };
            moved = true;
            let record = match output {
                NodeOutput::Connect => match self.servers[id.0].accept(now) {
                    Ok(session) => {
                        self.links[id.0] = Some(session);
                        self.cluster.node_mut(id).handle_connected(now);
                        Record::Connect
                    }
                    Err(_) => {
                        self.cluster
                            .node_mut(id)
                            .handle_transport_error(now, &"connection refused");
                        Record::Refused
                    }
                },
                NodeOutput::Connection(Output::Event(_)) => {
                    self.budget_left[id.0] = self.budget_left[id.0].saturating_sub(1);
                    self.events[id.0] += 1;
                    continue;
                }
                NodeOutput::Connection(Output::Completed(done)) => {
                    let previous = self.completions.insert(
                        done.action_id.clone(),
                        Done {
                            server: id,
                            at: now,
                            result: done.result,
                        },
                    );
                    assert!(previous.is_none(), "{} completed twice", done.action_id);
                    continue;
                }
                NodeOutput::Connection(Output::Closed(reason)) => {
                    if let Some(session) = self.links[id.0].take() {
                        self.servers[id.0].retire(session);
                    }
                    Record::Closed(reason)
                }
                NodeOutput::Connection(_) => continue,
                NodeOutput::Health { from, to } => Record::Health(from, to),
                NodeOutput::Circuit(t) => Record::Circuit(t),
            };
            self.records[id.0].push((now, record));
        }
        moved
    }

    /// Records the high-water marks of the node's queues and buffers.
    fn watch(&mut self, id: ServerId) {
        let Some(conn) = self.cluster.node(id).connection() else {
            return;
        };
        let hw = &mut self.high_water[id.0];
        hw.0 = hw.0.max(conn.queued_events());
        hw.1 = hw.1.max(conn.queued_transmit());
        hw.2 = hw.2.max(conn.buffered_input());
        hw.3 = hw.3.max(conn.pending_actions());
    }

    /// The next instant anything is due (cluster or simulators), capped at `limit`.
    fn next_due(&self, limit: Instant) -> Instant {
        let sessions = self
            .links
            .iter()
            .flatten()
            .filter_map(SimSession::poll_timeout);
        self.cluster
            .poll_timeout()
            .into_iter()
            .chain(sessions)
            .chain(std::iter::once(limit))
            .min()
            .expect("limit")
            .max(self.now)
    }

    /// Runs until `until`, handling every timeout on the way.
    pub fn run_until(&mut self, until: Instant) {
        self.settle();
        while self.now < until {
            let next = self.next_due(until);
            // Events held back by the budget are taken at the next millisecond.
            let next = if self.event_budget.is_some()
                && self
                    .cluster
                    .ids()
                    .any(|id| self.cluster.node(id).queued_events() > 0)
            {
                next.min(self.now + Duration::from_millis(1))
            } else {
                next
            };
            self.now = next.max(self.now);
            let now = self.now;
            self.cluster.handle_timeout(now);
            for session in self.links.iter_mut().flatten() {
                if session.poll_timeout().is_some_and(|at| at <= now) {
                    session.handle_timeout(now);
                }
            }
            self.settle();
            if next == until {
                break;
            }
        }
    }

    /// Cuts a node's live session (the transport breaks; the server stays up).
    pub fn cut(&mut self, i: usize) {
        if let Some(session) = self.links[i].take() {
            self.servers[i].retire(session);
            let now = self.now;
            self.cluster
                .node_mut(ServerId(i))
                .handle_transport_error(now, &"connection reset by peer");
        }
        self.settle();
    }

    /// Server-side counters of node `i`'s simulator, live session included.
    pub fn server_stats(&self, i: usize) -> ami_sim::SessionStats {
        let mut stats = self.servers[i].stats().retired;
        if let Some(session) = &self.links[i] {
            stats.merge(&session.stats());
        }
        stats
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Takes a server down: its session is cut and new connections are refused.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].set_accepting(false);
        self.cut(i);
    }

    /// Brings a server back: new connections are accepted again.
    pub fn revive(&mut self, i: usize) {
        self.servers[i].set_accepting(true);
    }

    /// The records of a node.
    pub fn log(&self, i: usize) -> &[(Instant, Record)] {
        &self.records[i]
    }

    /// Times the node asked for a transport.
    pub fn connect_times(&self, i: usize) -> Vec<Instant> {
        self.records[i]
            .iter()
            .filter(|(_, r)| matches!(r, Record::Connect | Record::Refused))
            .map(|(t, _)| *t)
            .collect()
    }
}
