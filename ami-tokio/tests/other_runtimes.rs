//! The futures-io path: the same client on smol and on async-std (deprecated upstream
//! in favour of smol), against the simulated Asterisk over loopback TCP.

use std::time::Duration;

use ami_proto::{Config, Filter};
use ami_sim::{Flood, SimConfig, TcpSim};
use ami_tokio::{BoxTransport, Client, ClientSpec, Custom};
use futures_util::StreamExt;

fn smol_runtime() -> Custom {
    Custom::new(
        |addr| {
            Box::pin(async move {
                let stream = smol::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok(Box::new(stream) as BoxTransport)
            })
        },
        |at| {
            Box::pin(async move {
                smol::Timer::at(at).await;
            })
        },
        |task| smol::spawn(task).detach(),
    )
}

fn async_std_runtime() -> Custom {
    Custom::new(
        |addr| {
            Box::pin(async move {
                let stream = async_std::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok(Box::new(stream) as BoxTransport)
            })
        },
        |at| {
            Box::pin(async move {
                async_std::task::sleep(at.saturating_duration_since(std::time::Instant::now()))
                    .await;
            })
        },
        |task| {
            async_std::task::spawn(task);
        },
    )
}

/// Login, Ping, Command, a list, 1,000 events through a stream, graceful close.
async fn exercise(runtime: Custom, sim: &TcpSim) {
    let client = Client::spawn(
        runtime,
        ClientSpec::new(Config::new("node", "admin", "amp111"), sim.addr()),
    );
    client.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert!(client.ping().await.is_ok());
    assert_eq!(
        client.command("core show version").await.unwrap(),
        ["Asterisk 22.10.1 built by sim"]
    );
    assert_eq!(client.queue_status().await.unwrap().events.len(), 3);
    let mut floods = client.events(Filter::event("UserEvent").header("UserEvent", "Flood"));
    sim.set_flood(Some(Flood::new(10_000).with_total(1_000)));
    for seq in 0..1_000u64 {
        let event = floods.next().await.unwrap();
        assert_eq!(event.get("Seq"), Some(seq.to_string().as_str()));
    }
    assert_eq!(floods.dropped(), 0);
    client.close().await;
    assert!(client.is_closed());
    assert!(
        floods.next().await.is_none(),
        "the stream ends with the client"
    );
}

#[test]
fn works_on_smol() {
    let sim = TcpSim::start(SimConfig::new()).unwrap();
    smol::block_on(exercise(smol_runtime(), &sim));
}

#[test]
fn works_on_async_std() {
    let sim = TcpSim::start(SimConfig::new()).unwrap();
    async_std::task::block_on(exercise(async_std_runtime(), &sim));
}
