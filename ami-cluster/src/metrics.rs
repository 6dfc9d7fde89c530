//! Per-server metrics and their Prometheus text rendering.
//!
//! A [`Node`](crate::node::Node) keeps its counters across reconnects (the core's
//! per-connection `Stats` start again with every connection) and hands out a
//! [`NodeMetrics`] snapshot. [`render_prometheus`] writes snapshots in the Prometheus
//! text exposition format under the seeds' names: `ami_connection_status`,
//! `ami_dropped_events_total`, `ami_action_latency_ms`, plus pending actions,
//! reconnect attempts, and the bad input the core counted (discarded messages and
//! bytes, unmatched responses, late replies).

use std::fmt::Write as _;
use std::time::Duration;

use crate::health::Health;

/// Upper bounds (ms) of the latency histogram's buckets; a last `+Inf` bucket follows.
pub const LATENCY_BUCKETS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
];

/// A fixed-bucket histogram of action latencies in milliseconds (no allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last entry is `+Inf`.
    pub buckets: [u64; LATENCY_BUCKETS_MS.len() + 1],
    /// Sum of all observations, in microseconds (kept fine so the mean is exact).
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn observe(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| us <= le * 1000)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[slot] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }

    /// The smallest bucket bound (ms) below which at least `q` (0..=1) of the
    /// observations fall; `None` when empty, `u64::MAX` for the `+Inf` bucket.
    pub fn quantile_bound_ms(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let target = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Some(LATENCY_BUCKETS_MS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// A snapshot of one server's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeMetrics {
    /// The server's health when the snapshot was taken.
    pub health: Health,
    /// `ami_connection_status`: 1 when healthy, 0 otherwise.
    pub connection_status: u8,
    /// Actions awaiting completion on the current connection.
    pub pending_actions: usize,
    /// `ami_dropped_events_total{reason="queue_full"}`: events dropped because the
    /// event queue was full, over all connections.
    pub dropped_events_total: u64,
    /// `ami_dropped_events_total{reason="memory_limit"}`: events dropped because the
    /// memory budget was exhausted, over all connections.
    pub dropped_events_memory_total: u64,
    /// `ami_action_latency_ms`: send-to-completion time of the application's actions.
    pub action_latency: LatencyHistogram,
    /// Connection attempts started by the reconnect policy (the first open included).
    pub reconnect_attempts: u64,
    /// Connections that logged in.
    pub connections_established: u64,
    /// Attempts that failed before logging in (refused, timed out, login rejected).
    pub connection_failures: u64,
    /// Logged-in connections that were lost (not closed by the application).
    pub connections_lost: u64,
    /// Times the circuit opened (or reopened after a failed probe).
    pub circuit_opened_total: u64,
    /// Actions completed successfully.
    pub actions_completed: u64,
    /// Actions completed with an error (timeouts and connection loss included).
    pub actions_failed: u64,
    /// Actions refused at send time (not ready, backpressure, too many pending).
    pub actions_refused: u64,
    /// `ami_discarded_messages_total`: discards reported by the parser (malformed or
    /// oversized messages, input cut mid-message) over all connections.
    pub discarded_messages_total: u64,
    /// `ami_discarded_bytes_total`: bytes the parser discarded over all connections.
    pub discarded_bytes_total: u64,
    /// `ami_unmatched_responses_total`: responses that named no pending action of
    /// their connection, over all connections.
    pub unmatched_responses_total: u64,
    /// `ami_late_replies_total`: replies to actions that had already completed (timed
    /// out or failed early), over all connections.
    pub late_replies_total: u64,
}

/// Writes `servers` (key, snapshot) in the Prometheus text exposition format.
pub fn render_prometheus(servers: &[(&str, NodeMetrics)], out: &mut String) {
    render_prometheus_with(servers, &[], out);
}

/// [`render_prometheus`] plus events the application dropped itself, as more samples
/// of `ami_dropped_events_total`: `(server, reason, total)` each (e.g. an outlet that
/// fell behind, reason `outlet_slow`).
pub fn render_prometheus_with(
    servers: &[(&str, NodeMetrics)],
    more_drops: &[(&str, &str, u64)],
    out: &mut String,
) {
    type Gauge = fn(&NodeMetrics) -> u64;
    let simple: [(&str, &str, &str, Gauge); 12] = [
        (
            "ami_connection_status",
            "gauge",
            "1 when the server is connected and healthy, 0 otherwise.",
            |m| u64::from(m.connection_status),
        ),
        (
            "ami_pending_actions",
            "gauge",
            "Actions awaiting completion.",
            |m| m.pending_actions as u64,
        ),
        (
            "ami_reconnect_attempts_total",
            "counter",
            "Connection attempts started.",
            |m| m.reconnect_attempts,
        ),
        (
            "ami_connection_failures_total",
            "counter",
            "Connection attempts that failed before logging in.",
            |m| m.connection_failures,
        ),
        (
            "ami_connections_lost_total",
            "counter",
            "Logged-in connections that were lost.",
            |m| m.connections_lost,
        ),
        (
            "ami_circuit_opened_total",
            "counter",
            "Times the circuit breaker opened.",
            |m| m.circuit_opened_total,
        ),
        (
            "ami_actions_failed_total",
            "counter",
            "Actions that completed with an error.",
            |m| m.actions_failed,
        ),
        (
            "ami_actions_refused_total",
            "counter",
            "Actions refused at send time.",
            |m| m.actions_refused,
        ),
        (
            "ami_discarded_messages_total",
            "counter",
            "Messages the parser discarded (malformed, oversized or cut off).",
            |m| m.discarded_messages_total,
        ),
        (
            "ami_discarded_bytes_total",
            "counter",
            "Bytes the parser discarded.",
            |m| m.discarded_bytes_total,
        ),
        (
            "ami_unmatched_responses_total",
            "counter",
            "Responses that named no pending action.",
            |m| m.unmatched_responses_total,
        ),
        (
            "ami_late_replies_total",
            "counter",
            "Replies to actions that had already completed.",
            |m| m.late_replies_total,
        ),
    ];
    for (name, kind, help, value) in simple {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (key, m) in servers {
            let _ = writeln!(out, "{name}{{server=\"{}\"}} {}", escape(key), value(m));
        }
    }
    let name = "ami_dropped_events_total";
    let _ = writeln!(
        out,
        "# HELP {name} Events dropped (oldest first), by reason: the event queue was full (queue_full), the memory budget was exhausted (memory_limit), or the application's own reasons (e.g. outlet_slow).\n# TYPE {name} counter"
    );
    for (key, m) in servers {
        let key = escape(key);
        for (reason, value) in [
            ("queue_full", m.dropped_events_total),
            ("memory_limit", m.dropped_events_memory_total),
        ] {
            let _ = writeln!(
                out,
                "{name}{{server=\"{key}\",reason=\"{reason}\"}} {value}"
            );
        }
    }
    for (key, reason, value) in more_drops {
        let (key, reason) = (escape(key), escape(reason));
        let _ = writeln!(
            out,
            "{name}{{server=\"{key}\",reason=\"{reason}\"}} {value}"
        );
    }
    let name = "ami_action_latency_ms";
    let _ = writeln!(
        out,
        "# HELP {name} Time from sending an action to its completion, in milliseconds.\n# TYPE {name} histogram"
    );
    for (key, m) in servers {
        let key = escape(key);
        let h = &m.action_latency;
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            match LATENCY_BUCKETS_MS.get(i) {
                Some(le) => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{server=\"{key}\",le=\"{le}\"}} {cumulative}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{server=\"{key}\",le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "{name}_sum{{server=\"{key}\"}} {}.{:03}",
            h.sum_us / 1000,
            h.sum_us % 1000
        );
        let _ = writeln!(out, "{name}_count{{server=\"{key}\"}} {}", h.count);
    }
}

/// Writes the gauges of a client's memory budget: the bytes charged to it now and its
/// limit (see [`ami_proto::budget`]).
pub fn render_memory(budget: &ami_proto::MemoryBudget, out: &mut String) {
    for (name, help, value) in [
        (
            "ami_memory_used_bytes",
            "Bytes the client holds, charged to its memory budget.",
            budget.used(),
        ),
        (
            "ami_memory_limit_bytes",
            "The memory budget's limit (options.memory_limit).",
            budget.limit(),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The dialers of tracked servers (calls and pacing) in the Prometheus text format:
/// `(server, status)` each.
pub fn render_dialers(dialers: &[(&str, crate::DialerStatus)], out: &mut String) {
    if dialers.is_empty() {
        return;
    }
    type Value = fn(&crate::DialerStatus) -> String;
    let samples: [(&str, &str, &str, Value); 8] = [
        (
            "ami_calls_live",
            "gauge",
            "Calls the tracker follows now (Originates in flight included).",
            |d| d.live_calls.to_string(),
        ),
        (
            "ami_calls_ended_total",
            "counter",
            "Calls the tracker ended.",
            |d| d.calls.ended.to_string(),
        ),
        (
            "ami_calls_evicted_total",
            "counter",
            "Calls ended unknown for age or for room.",
            |d| d.calls.evicted.to_string(),
        ),
        (
            "ami_paced_waiting",
            "gauge",
            "Originates waiting for the call limits now.",
            |d| d.waiting.to_string(),
        ),
        (
            "ami_paced_admitted_total",
            "counter",
            "Originates the call limits let go.",
            |d| d.admitted.to_string(),
        ),
        (
            "ami_paced_wait_seconds_total",
            "counter",
            "Time the admitted Originates waited for the call limits, in all.",
            |d| format!("{:.3}", d.waited.as_secs_f64()),
        ),
        (
            "ami_paced_refused_total",
            "counter",
            "Originates refused because the wait queue was full.",
            |d| d.refused.to_string(),
        ),
        (
            "ami_paced_failed_total",
            "counter",
            "Held Originates that waited past their timeout or were refused when their turn came.",
            |d| (d.expired + d.not_sent).to_string(),
        ),
    ];
    for (name, kind, help, value) in samples {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (key, status) in dialers {
            let _ = writeln!(
                out,
                "{name}{{server=\"{}\"}} {}",
                escape(key),
                value(status)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> NodeMetrics {
        NodeMetrics {
            health: Health::Healthy,
            connection_status: 1,
            pending_actions: 2,
            dropped_events_total: 7,
            dropped_events_memory_total: 8,
            action_latency: LatencyHistogram::default(),
            reconnect_attempts: 3,
            connections_established: 1,
            connection_failures: 2,
            connections_lost: 0,
            circuit_opened_total: 0,
            actions_completed: 0,
            actions_failed: 0,
            actions_refused: 0,
            discarded_messages_total: 4,
            discarded_bytes_total: 1234,
            unmatched_responses_total: 5,
            late_replies_total: 6,
        }
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_micros(1000)); // le 1
        h.observe(Duration::from_micros(1001)); // le 2
        h.observe(Duration::from_millis(40)); // le 50
        h.observe(Duration::from_secs(60)); // +Inf
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[5], 1);
        assert_eq!(h.buckets[LATENCY_BUCKETS_MS.len()], 1);
        assert_eq!(h.count, 4);
        assert_eq!(h.sum_us, 1000 + 1001 + 40_000 + 60_000_000);
        assert_eq!(h.quantile_bound_ms(0.5), Some(2));
        assert_eq!(h.quantile_bound_ms(0.75), Some(50));
        assert_eq!(h.quantile_bound_ms(1.0), Some(u64::MAX));
        assert_eq!(LatencyHistogram::default().quantile_bound_ms(0.5), None);
    }

    #[test]
    fn prometheus_text_has_the_seeds_names_and_cumulative_buckets() {
        let mut a = snapshot();
        a.action_latency.observe(Duration::from_millis(3));
        a.action_latency.observe(Duration::from_millis(3));
        a.action_latency.observe(Duration::from_millis(300));
        let mut b = snapshot();
        b.connection_status = 0;
        b.health = Health::CircuitOpen;
        let mut out = String::new();
        render_prometheus(&[("node_1", a), ("we\"ird", b)], &mut out);
        assert!(out.contains("# TYPE ami_connection_status gauge\n"));
        assert!(out.contains("ami_connection_status{server=\"node_1\"} 1\n"));
        assert!(out.contains("ami_connection_status{server=\"we\\\"ird\"} 0\n"));
        assert!(out.contains("# TYPE ami_dropped_events_total counter\n"));
        assert!(
            out.contains("ami_dropped_events_total{server=\"node_1\",reason=\"queue_full\"} 7\n")
        );
        assert!(
            out.contains("ami_dropped_events_total{server=\"node_1\",reason=\"memory_limit\"} 8\n")
        );
        assert!(out.contains("# TYPE ami_action_latency_ms histogram\n"));
        let mut more = String::new();
        render_prometheus_with(&[("node_1", a)], &[("node_1", "outlet_slow", 9)], &mut more);
        assert!(more.contains(
            "ami_dropped_events_total{server=\"node_1\",reason=\"memory_limit\"} 8\nami_dropped_events_total{server=\"node_1\",reason=\"outlet_slow\"} 9\n"
        ));
        assert!(out.contains("ami_action_latency_ms_bucket{server=\"node_1\",le=\"2\"} 0\n"));
        assert!(out.contains("ami_action_latency_ms_bucket{server=\"node_1\",le=\"5\"} 2\n"));
        assert!(out.contains("ami_action_latency_ms_bucket{server=\"node_1\",le=\"500\"} 3\n"));
        assert!(out.contains("ami_action_latency_ms_bucket{server=\"node_1\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("ami_action_latency_ms_sum{server=\"node_1\"} 306.000\n"));
        assert!(out.contains("ami_action_latency_ms_count{server=\"node_1\"} 3\n"));
        for (name, value) in [
            ("ami_discarded_messages_total", 4),
            ("ami_discarded_bytes_total", 1234),
            ("ami_unmatched_responses_total", 5),
            ("ami_late_replies_total", 6),
        ] {
            assert!(out.contains(&format!("# HELP {name} ")), "{name}");
            assert!(out.contains(&format!("# TYPE {name} counter\n")), "{name}");
            assert!(
                out.contains(&format!("{name}{{server=\"node_1\"}} {value}\n")),
                "{name}"
            );
        }
        // Every sample line is `name{labels} value`.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(series.contains("{server=\""), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
