//! JSON shapes shared by the commands.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ami_proto::Message;
use serde_json::{Value, json};

/// Headers as `[[KEY, VALUE], ...]`, in wire order and with the key's wire case.
pub fn headers(message: &Message) -> Value {
    Value::Array(
        message
            .headers()
            .map(|(key, value)| json!([key, value]))
            .collect(),
    )
}

/// Turns the driver's `Instant`s into wall-clock UNIX seconds, anchored once.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    instant: Instant,
    unix: Duration,
}

impl WallClock {
    /// Anchors the clock now.
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        WallClock {
            instant: Instant::now(),
            unix,
        }
    }

    /// UNIX seconds (with fraction) of `at`.
    pub fn unix_seconds(&self, at: Instant) -> f64 {
        let unix = if at >= self.instant {
            self.unix + (at - self.instant)
        } else {
            self.unix.saturating_sub(self.instant - at)
        };
        unix.as_secs_f64()
    }
}
