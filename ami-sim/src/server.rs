//! One simulated Asterisk node, without I/O: it accepts sessions (or refuses them)
//! and keeps counters over all of them.

use std::time::Instant;

use crate::config::SimConfig;
use crate::session::{SessionStats, SimSession};
use ami_proto::rng::Rng;

/// Why [`SimServer::accept`] refused a connection: the node is not accepting (down,
/// killed, or refusing on purpose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection refused: the simulated node is not accepting")
    }
}

impl std::error::Error for Refused {}

/// Counters of a [`SimServer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Sessions accepted.
    pub accepted: u64,
    /// Connections refused.
    pub refused: u64,
    /// The summed counters of the sessions handed back with [`SimServer::retire`].
    pub retired: SessionStats,
}

/// One simulated Asterisk node: its configuration, a seeded generator that gives
/// each session its own seed, and counters.
#[derive(Debug)]
pub struct SimServer {
    config: SimConfig,
    rng: Rng,
    accepting: bool,
    stats: ServerStats,
}

impl SimServer {
    /// A node that accepts sessions; `seed` fixes the seeds of its sessions.
    pub fn new(config: SimConfig, seed: u64) -> Self {
        SimServer {
            config,
            rng: Rng::new(seed),
            accepting: true,
            stats: ServerStats::default(),
        }
    }

    /// Accepts a session at `now` (its banner queued), or refuses while the node is
    /// not accepting.
    pub fn accept(&mut self, now: Instant) -> Result<SimSession, Refused> {
        if !self.accepting {
            self.stats.refused += 1;
            return Err(Refused);
        }
        self.stats.accepted += 1;
        let seed = self.rng.next_u64();
        Ok(SimSession::new(&self.config, now, seed))
    }

    /// Starts (`true`) or stops refusing new sessions; live sessions are not touched.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// Whether new sessions are accepted.
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// The configuration new sessions get.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Changes the configuration new sessions get.
    pub fn config_mut(&mut self) -> &mut SimConfig {
        &mut self.config
    }

    /// Takes back a finished session and adds its counters to the node's.
    pub fn retire(&mut self, session: SimSession) {
        self.stats.retired.merge(&session.stats());
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        self.stats.clone()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests take one real instant as the base of virtual time
mod tests {
    use std::time::Instant;

    use super::{Refused, SimServer};
    use crate::config::SimConfig;

    #[test]
    fn accepts_refuses_and_counts() {
        let now = Instant::now();
        let mut server = SimServer::new(SimConfig::default(), 42);
        let first = server.accept(now).unwrap();
        assert!(
            first
                .poll_transmit()
                .starts_with(b"Asterisk Call Manager/11.0.0\r\n")
        );
        server.set_accepting(false);
        assert_eq!(server.accept(now).unwrap_err(), Refused);
        server.set_accepting(true);
        let second = server.accept(now).unwrap();
        server.retire(first);
        server.retire(second);
        let stats = server.stats();
        assert_eq!((stats.accepted, stats.refused), (2, 1));
    }
}
