//! The README's one-server program with `ami-mio`: connect, follow `Hangup` events by
//! filter, run a `Command`, and (with `AMI_ORIGINATE`) place an async `Originate`.
//!
//! ```sh
//! AMI_HOST=127.0.0.1 AMI_PORT=5038 AMI_USERNAME=admin AMI_SECRET=amp111 \
//!     AMI_ORIGINATE=Local/100@from-internal \
//!     cargo run --release -p ami-mio --example one_server
//! ```
//!
//! It ends once the answers are in (and the call it placed hung up), or after 20 s.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ami_mio::{Driver, Endpoint, Filter, ServerSpec};
use ami_proto::Config;
use ami_proto::action::{Command, EventMask, Originate};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::new(
        "pbx",
        env("AMI_USERNAME", "admin"),
        env("AMI_SECRET", "amp111"),
    );
    // Hangup and OriginateResponse come in the `call` class.
    config.events = EventMask::Classes(vec!["call".into()]);
    let endpoint = Endpoint::new(
        env("AMI_HOST", "127.0.0.1"),
        env("AMI_PORT", "5038").parse()?,
    );
    let mut driver = Driver::new()?;
    let pbx = driver.add_server(ServerSpec::new(config, endpoint))?;

    let hangups = Rc::new(Cell::new(0u32));
    {
        let hangups = hangups.clone();
        driver.subscribe(Filter::event("Hangup"), move |event| {
            hangups.set(hangups.get() + 1);
            println!(
                "hangup: {} ({})",
                event.get("Channel").unwrap_or("?"),
                event.get("Cause-txt").unwrap_or("no cause")
            );
        });
    }
    driver.connect(pbx)?;
    driver.wait_ready(pbx, Duration::from_secs(10))?;
    println!("logged in to {}", driver.banner(pbx).unwrap_or("?"));

    let answers = Rc::new(Cell::new(0u32));
    let done = answers.clone();
    driver.send(pbx, Command::new("core show channels"), move |result| {
        match result {
            Ok(reply) => println!("command: {} lines of output", reply.output().len()),
            Err(error) => println!("command failed: {error}"),
        }
        done.set(done.get() + 1);
    })?;
    let originate = std::env::var("AMI_ORIGINATE").ok();
    if let Some(channel) = &originate {
        let done = answers.clone();
        let call = Originate::application(channel.clone(), "Wait", "1").with_async(true);
        driver.send(pbx, call, move |result| {
            match result {
                Ok(reply) => {
                    let event = &reply.events[0];
                    println!(
                        "originate: {} (reason {})",
                        event.get("Response").unwrap_or("?"),
                        event.get("Reason").unwrap_or("?")
                    );
                }
                Err(error) => println!("originate failed: {error}"),
            }
            done.set(done.get() + 1);
        })?;
    }
    let expected = 1 + u32::from(originate.is_some());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        driver.tick_all(Duration::from_millis(25));
        let hung_up = originate.is_none() || hangups.get() > 0;
        if answers.get() == expected && hung_up {
            break;
        }
    }
    driver.shutdown(Duration::from_secs(5));
    Ok(())
}
