//! How the loop of `ami listen` and `ami gateway` tells its service manager how it is
//! doing, for systemd's `Type=notify` (a no-op without `NOTIFY_SOCKET`):
//!
//! - `READY=1` once the servers are opened and the HTTP endpoint is bound;
//! - `WATCHDOG=1` from the loop itself, at half the `WatchdogSec` systemd gave
//!   (`WATCHDOG_USEC`), so a loop that hangs stops pinging and gets restarted;
//! - `STOPPING=1` when the shutdown begins.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The loop's link to its service manager.
#[derive(Debug)]
pub struct ServiceNotifier {
    /// Ping this often (half the watchdog timeout), if the manager asked for pings.
    every: Option<Duration>,
    pinged: Option<Instant>,
}

impl ServiceNotifier {
    /// Reads what the manager asked for (`WATCHDOG_USEC`, for this process).
    pub fn new() -> ServiceNotifier {
        ServiceNotifier {
            every: sd_notify::watchdog_enabled().map(|timeout| timeout / 2),
            pinged: None,
        }
    }

    /// The loop runs: the service is up.
    pub fn ready(&mut self) {
        send(&[NotifyState::Ready]);
        self.pinged = Some(Instant::now());
    }

    /// One turn of the loop: pings the watchdog when a ping is due.
    pub fn tick(&mut self) {
        let Some(every) = self.every else { return };
        if self.pinged.is_none_or(|at| at.elapsed() >= every) {
            send(&[NotifyState::Watchdog]);
            self.pinged = Some(Instant::now());
        }
    }

    /// The shutdown begins.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}
