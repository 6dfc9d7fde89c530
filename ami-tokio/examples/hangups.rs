//! Print why each channel of one Asterisk hangs up, with `ami-tokio` and the typed
//! event views.
//!
//! ```sh
//! AMI_ADDR=127.0.0.1:5038 AMI_USERNAME=admin AMI_SECRET=amp111 \
//!     cargo run --release -p ami-tokio --example hangups
//! ```
//!
//! Runs `core show version` once, then prints a line per `Hangup` with its Q.850
//! cause in Asterisk's words. Ctrl-C to stop.

use std::time::Duration;

use ami_proto::typed::TypedEvent;
use ami_proto::{Config, Filter};
use ami_tokio::{Client, ClientSpec, Tokio};
use futures_util::StreamExt;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::new(
        "pbx",
        env("AMI_USERNAME", "admin"),
        env("AMI_SECRET", "amp111"),
    );
    let spec = ClientSpec::new(config, env("AMI_ADDR", "127.0.0.1:5038").parse()?);
    let client = Client::spawn(Tokio, spec);
    let mut hangups = client.events(Filter::event("Hangup"));
    client.wait_ready(Duration::from_secs(10)).await?;
    for line in client.command("core show version").await? {
        println!("{line}");
    }
    while let Some(event) = hangups.next().await {
        if let TypedEvent::Hangup(hangup) = event.typed() {
            let channel = hangup.channel();
            println!(
                "{} hung up: {}",
                channel.channel().unwrap_or("?"),
                hangup
                    .cause()
                    .map_or_else(|| "no cause".to_owned(), |cause| cause.to_string()),
            );
        }
    }
    Ok(())
}
