//! The README's async program with `ami-tokio`: connect, a stream of `Hangup` events,
//! a `Command`, and (with `AMI_ORIGINATE`) an async `Originate` awaited to its
//! `OriginateResponse`.
//!
//! ```sh
//! AMI_ADDR=127.0.0.1:5038 AMI_USERNAME=admin AMI_SECRET=amp111 \
//!     AMI_ORIGINATE=Local/100@from-internal \
//!     cargo run --release -p ami-tokio --example async_client
//! ```

use std::time::Duration;

use ami_proto::action::{EventMask, Originate};
use ami_proto::{Config, Filter};
use ami_tokio::{Client, ClientSpec, Tokio};
use futures_util::StreamExt;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::new(
        "pbx",
        env("AMI_USERNAME", "admin"),
        env("AMI_SECRET", "amp111"),
    );
    config.events = EventMask::Classes(vec!["call".into()]);
    let spec = ClientSpec::new(config, env("AMI_ADDR", "127.0.0.1:5038").parse()?);
    let client = Client::spawn(Tokio, spec); // cloneable, Send; one task owns the socket
    let mut hangups = client.events(Filter::event("Hangup")); // drop-oldest, counted
    client.wait_ready(Duration::from_secs(10)).await?;
    let output = client.command("core show channels").await?;
    println!("command: {} lines of output", output.len());
    if let Ok(channel) = std::env::var("AMI_ORIGINATE") {
        let call = Originate::application(channel, "Wait", "1").with_async(true);
        let reply = client.originate(call).await?;
        let event = &reply.events[0];
        println!(
            "originate: {} (reason {})",
            event.get("Response").unwrap_or("?"),
            event.get("Reason").unwrap_or("?")
        );
        let hangup = tokio::time::timeout(Duration::from_secs(10), hangups.next()).await;
        if let Ok(Some(event)) = hangup {
            println!(
                "hangup: {} ({})",
                event.get("Channel").unwrap_or("?"),
                event.get("Cause-txt").unwrap_or("no cause")
            );
        }
    }
    client.close().await; // Logoff, Goodbye
    Ok(())
}
