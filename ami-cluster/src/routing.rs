//! Choosing a server for an action (plan §12.2, usage guide §5).
//!
//! A [`Router`] holds a [`Strategy`] and, for round robin, its cursor. It selects from a
//! slice of `(key, Health)` pairs in registry order and only ever returns a routable
//! ([`Health::Healthy`]) server; when none qualifies it returns [`NoServerAvailable`].

use crate::health::Health;

/// How to pick a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy<K> {
    /// Exactly this server, if it is routable.
    Explicit(K),
    /// Cycle through the routable servers; the router keeps its cursor between calls.
    RoundRobin,
    /// The first routable server in this order (primary, then secondaries).
    Failover(Vec<K>),
    /// The first server in registry order that is routable; disconnected, degraded,
    /// reconnecting, circuit-open and still-connecting servers are excluded.
    HealthAware,
}

impl<K> Strategy<K> {
    /// The same strategy with every key converted by `f` (e.g. a server key to an
    /// index); the first error stops the conversion.
    pub fn try_map<L, E>(&self, mut f: impl FnMut(&K) -> Result<L, E>) -> Result<Strategy<L>, E> {
        Ok(match self {
            Strategy::Explicit(key) => Strategy::Explicit(f(key)?),
            Strategy::Failover(keys) => {
                Strategy::Failover(keys.iter().map(f).collect::<Result<_, _>>()?)
            }
            Strategy::RoundRobin => Strategy::RoundRobin,
            Strategy::HealthAware => Strategy::HealthAware,
        })
    }

    /// The strategy's kind, without its keys.
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::Explicit(_) => StrategyKind::Explicit,
            Strategy::RoundRobin => StrategyKind::RoundRobin,
            Strategy::Failover(_) => StrategyKind::Failover,
            Strategy::HealthAware => StrategyKind::HealthAware,
        }
    }
}

/// A [`Strategy`] without its keys, for errors, logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    /// [`Strategy::Explicit`].
    Explicit,
    /// [`Strategy::RoundRobin`].
    RoundRobin,
    /// [`Strategy::Failover`].
    Failover,
    /// [`Strategy::HealthAware`].
    HealthAware,
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StrategyKind::Explicit => "explicit",
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::Failover => "failover",
            StrategyKind::HealthAware => "health-aware",
        })
    }
}

/// No server qualified for the strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no server available for {strategy} routing ({considered} considered, none healthy)")]
pub struct NoServerAvailable {
    /// The strategy that found nothing.
    pub strategy: StrategyKind,
    /// How many servers it looked at (for `Explicit` and `Failover`, how many of the
    /// named keys exist in the registry).
    pub considered: usize,
}

/// A strategy plus the state it needs between selections (the round-robin cursor).
#[derive(Debug, Clone)]
pub struct Router<K> {
    strategy: Strategy<K>,
    cursor: usize,
}

impl<K: PartialEq> Router<K> {
    /// A router for `strategy`, its round-robin cursor at the first server.
    pub fn new(strategy: Strategy<K>) -> Self {
        Router {
            strategy,
            cursor: 0,
        }
    }

    /// The strategy in use.
    pub fn strategy(&self) -> &Strategy<K> {
        &self.strategy
    }

    /// Picks a routable server's key from `servers` (in registry order).
    pub fn select<'a>(&mut self, servers: &'a [(K, Health)]) -> Result<&'a K, NoServerAvailable> {
        let routable = |h: &Health| h.is_routable();
        let none = |considered| NoServerAvailable {
            strategy: self.strategy.kind(),
            considered,
        };
        match &self.strategy {
            Strategy::Explicit(key) => {
                let found = servers.iter().find(|(k, _)| k == key);
                match found {
                    Some((k, h)) if routable(h) => Ok(k),
                    Some(_) => Err(none(1)),
                    None => Err(none(0)),
                }
            }
            Strategy::Failover(order) => {
                let mut considered = 0;
                for key in order {
                    if let Some((k, h)) = servers.iter().find(|(k, _)| k == key) {
                        considered += 1;
                        if routable(h) {
                            return Ok(k);
                        }
                    }
                }
                Err(none(considered))
            }
            Strategy::HealthAware => servers
                .iter()
                .find(|(_, h)| !matches!(h, Health::Disconnected | Health::Degraded) && routable(h))
                .map(|(k, _)| k)
                .ok_or_else(|| none(servers.len())),
            Strategy::RoundRobin => {
                let n = servers.len();
                let start = if n == 0 { 0 } else { self.cursor % n };
                for offset in 0..n {
                    let i = (start + offset) % n;
                    if routable(&servers[i].1) {
                        self.cursor = i + 1;
                        return Ok(&servers[i].0);
                    }
                }
                Err(none(n))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    fn cluster(healths: &[Health]) -> Vec<(String, Health)> {
        healths
            .iter()
            .enumerate()
            .map(|(i, h)| (format!("node_{i}"), *h))
            .collect()
    }

    #[test]
    fn explicit_returns_the_named_healthy_server() {
        let servers = cluster(&[Healthy, Healthy]);
        let mut r = Router::new(Strategy::Explicit("node_1".to_owned()));
        assert_eq!(r.select(&servers).unwrap(), "node_1");
    }

    #[test]
    fn explicit_fails_when_unhealthy_or_unknown() {
        let servers = cluster(&[Healthy, Degraded]);
        let mut r = Router::new(Strategy::Explicit("node_1".to_owned()));
        let err = r.select(&servers).unwrap_err();
        assert_eq!(
            err,
            NoServerAvailable {
                strategy: StrategyKind::Explicit,
                considered: 1
            }
        );
        let mut r = Router::new(Strategy::Explicit("nope".to_owned()));
        assert_eq!(r.select(&servers).unwrap_err().considered, 0);
    }

    #[test]
    fn round_robin_cycles_over_routable_nodes_and_keeps_its_cursor() {
        let servers = cluster(&[Healthy, Degraded, Healthy, CircuitOpen, Healthy]);
        let mut r = Router::new(Strategy::RoundRobin);
        let picks: Vec<&str> = (0..7)
            .map(|_| r.select(&servers).unwrap().as_str())
            .collect();
        assert_eq!(
            picks,
            [
                "node_0", "node_2", "node_4", "node_0", "node_2", "node_4", "node_0"
            ]
        );
        // node_2 goes down: the cursor continues after node_0 and skips it.
        let servers = cluster(&[Healthy, Degraded, Reconnecting, CircuitOpen, Healthy]);
        assert_eq!(r.select(&servers).unwrap(), "node_4");
        assert_eq!(r.select(&servers).unwrap(), "node_0");
    }

    #[test]
    fn round_robin_with_nothing_routable_fails() {
        let mut r = Router::new(Strategy::RoundRobin);
        let servers = cluster(&[Connecting, Authenticating, Disconnected]);
        assert_eq!(
            r.select(&servers).unwrap_err(),
            NoServerAvailable {
                strategy: StrategyKind::RoundRobin,
                considered: 3
            }
        );
        let empty: Vec<(String, Health)> = Vec::new();
        assert_eq!(r.select(&empty).unwrap_err().considered, 0);
    }

    #[test]
    fn failover_returns_the_first_routable_in_order() {
        let order = vec![
            "node_2".to_owned(),
            "node_0".to_owned(),
            "node_1".to_owned(),
        ];
        let mut r = Router::new(Strategy::Failover(order));
        assert_eq!(
            r.select(&cluster(&[Healthy, Healthy, Healthy])).unwrap(),
            "node_2"
        );
        assert_eq!(
            r.select(&cluster(&[Healthy, Healthy, Degraded])).unwrap(),
            "node_0"
        );
        assert_eq!(
            r.select(&cluster(&[Reconnecting, Healthy, CircuitOpen]))
                .unwrap(),
            "node_1"
        );
        let err = r
            .select(&cluster(&[Disconnected, Degraded, Connecting]))
            .unwrap_err();
        assert_eq!(err.strategy, StrategyKind::Failover);
        assert_eq!(err.considered, 3);
        assert_eq!(
            err.to_string(),
            "no server available for failover routing (3 considered, none healthy)"
        );
    }

    #[test]
    fn failover_ignores_unknown_keys() {
        let order = vec!["ghost".to_owned(), "node_1".to_owned()];
        let mut r = Router::new(Strategy::Failover(order));
        assert_eq!(r.select(&cluster(&[Healthy, Healthy])).unwrap(), "node_1");
        assert_eq!(
            r.select(&cluster(&[Healthy, Degraded]))
                .unwrap_err()
                .considered,
            1
        );
    }

    #[test]
    fn health_aware_excludes_disconnected_degraded_and_unroutable() {
        let mut r = Router::new(Strategy::HealthAware);
        let servers = cluster(&[
            Disconnected,
            Degraded,
            Connecting,
            Authenticating,
            Reconnecting,
            CircuitOpen,
            Healthy,
        ]);
        assert_eq!(r.select(&servers).unwrap(), "node_6");
        let err = r.select(&servers[..6]).unwrap_err();
        assert_eq!(
            err,
            NoServerAvailable {
                strategy: StrategyKind::HealthAware,
                considered: 6
            }
        );
    }
}
