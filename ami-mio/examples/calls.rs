//! Follow every call of one Asterisk and print how each ended, with `ami-mio` and the
//! call tracker.
//!
//! ```sh
//! AMI_HOST=127.0.0.1 AMI_PORT=5038 AMI_USERNAME=admin AMI_SECRET=amp111 \
//!     cargo run --release -p ami-mio --example calls
//! ```
//!
//! Every event goes to `ami_cluster::CallTracker`; each ended call is printed with its
//! outcome (answered, busy, no_answer, ...), Q.850 cause, and ring and talk time.
//! Ctrl-C to stop.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ami_mio::ami_cluster::{CallTracker, TrackerConfig};
use ami_mio::{Driver, Endpoint, ServerSpec};
use ami_proto::Config;
use ami_proto::action::EventMask;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::new(
        "pbx",
        env("AMI_USERNAME", "admin"),
        env("AMI_SECRET", "amp111"),
    );
    // The tracker needs the `call` class only.
    config.events = EventMask::Classes(vec!["call".into()]);
    let endpoint = Endpoint::new(
        env("AMI_HOST", "127.0.0.1"),
        env("AMI_PORT", "5038").parse()?,
    );
    let mut driver = Driver::new()?;
    let id = driver.add_server(ServerSpec::new(config, endpoint))?;
    let tracker = Rc::new(RefCell::new(CallTracker::new(TrackerConfig::default())));
    {
        let tracker = tracker.clone();
        driver.on_any_event(move |event| {
            tracker
                .borrow_mut()
                .handle_event(&event.message, event.received_at);
        });
    }
    driver.connect(id)?;
    driver.wait_ready(id, Duration::from_secs(10))?;
    eprintln!("logged in; make some calls");
    loop {
        driver.tick_all(Duration::from_millis(50));
        let mut tracker = tracker.borrow_mut();
        let now = Instant::now();
        if tracker.poll_timeout().is_some_and(|at| at <= now) {
            tracker.handle_timeout(now);
        }
        while let Some(call) = tracker.poll_ended() {
            println!(
                "{:<10} cause {:<4} {:<28} ring {:>6} ms  talk {:>7} ms  {}",
                call.outcome,
                call.cause.map_or("-".into(), |c| c.to_string()),
                call.cause_txt.as_deref().unwrap_or("-"),
                call.ring_ms(),
                call.talk_ms(),
                call.channels.first().map_or("", String::as_str),
            );
        }
    }
}
