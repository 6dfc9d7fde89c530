//! Follow every call of one Asterisk and print how each ended, with `ami-mio` and the
//! call tracker of its client core (`Driver::track_calls`).
//!
//! ```sh
//! AMI_HOST=127.0.0.1 AMI_PORT=5038 AMI_USERNAME=admin AMI_SECRET=amp111 \
//!     cargo run --release -p ami-mio --example calls
//! ```
//!
//! The driver feeds every event to the server's `CallTracker` (and reseeds it from
//! `CoreShowChannels` at each login); each ended call is printed with its outcome
//! (answered, busy, no_answer, ...), Q.850 cause, and ring and talk time. Ctrl-C to
//! stop.

use std::time::Duration;

use ami_mio::ami_cluster::DialerConfig;
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
    driver.track_calls(id, DialerConfig::default());
    driver.on_call_ended(|_, call| {
        println!(
            "{:<10} cause {:<4} {:<28} ring {:>6} ms  talk {:>7} ms  {}",
            call.outcome,
            call.cause.map_or("-".into(), |c| c.to_string()),
            call.cause_txt.as_deref().unwrap_or("-"),
            call.ring_ms(),
            call.talk_ms(),
            call.channels.first().map_or("", String::as_str),
        );
    });
    driver.connect(id)?;
    driver.wait_ready(id, Duration::from_secs(10))?;
    eprintln!("logged in; make some calls");
    loop {
        driver.tick_all(Duration::from_millis(50));
    }
}
