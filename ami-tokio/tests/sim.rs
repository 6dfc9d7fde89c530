//! `ami-tokio` against the simulated Asterisk over loopback TCP (`ami_sim::TcpSim`):
//! the basics, a stalled server beside a healthy one, a slow stream consumer under a
//! flood, and cancelled sends.
#![cfg(feature = "tokio")]

use std::net::SocketAddr;
use std::time::Duration;

use ami_proto::action::Originate;
use ami_proto::{ActionError, Config, Filter, SendError};
use ami_sim::{Fault, Flood, SimConfig, TcpSim};
use ami_tokio::{Client, ClientError, ClientSpec, ClusterClient, Tokio};
use futures_util::StreamExt;

fn spec(key: &str, addr: SocketAddr) -> ClientSpec {
    ClientSpec::new(Config::new(key, "admin", "amp111"), addr)
}

#[tokio::test]
async fn login_ping_command_list_and_originate() {
    let sim = TcpSim::start(SimConfig::new()).unwrap();
    let client = Client::spawn(Tokio, spec("node_1", sim.addr()));
    client.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(client.health(), ami_cluster::Health::Healthy);
    let pong = client.ping().await.unwrap();
    assert_eq!(pong.response.get("Ping"), Some("Pong"));
    assert_eq!(
        client.command("core show version").await.unwrap(),
        ["Asterisk 22.10.1 built by sim"]
    );
    let channels = client.core_show_channels().await.unwrap();
    assert_eq!(channels.events.len(), 3);
    assert!(channels.list_end.is_some());
    let answered = client
        .originate(Originate::extension("PJSIP/100", "test", "answer", 1).with_async(true))
        .await
        .unwrap();
    assert_eq!(answered.events[0].get("Response"), Some("Success"));
    let busy = client
        .originate(Originate::extension("PJSIP/busy", "test", "busy", 1).with_async(true))
        .await;
    // An async Originate completes with its OriginateResponse, whatever the outcome.
    let busy = busy.unwrap();
    assert_eq!(busy.events[0].get("Response"), Some("Failure"));
    assert_eq!(busy.events[0].get("Reason"), Some("5"));
    let metrics = client.metrics();
    assert_eq!(metrics.actions_completed, 5);
    client.close().await;
    assert!(client.is_closed());
    assert!(matches!(
        client.ping().await,
        Err(ClientError::Refused(SendError::NotReady { .. }))
    ));
}

#[tokio::test]
async fn the_first_send_opens_lazily_and_is_refused() {
    let sim = TcpSim::start(SimConfig::new()).unwrap();
    let client = Client::spawn(Tokio, spec("lazy", sim.addr()));
    let first = client.ping().await;
    assert!(
        matches!(first, Err(ClientError::Refused(SendError::NotReady { .. }))),
        "{first:?}"
    );
    client.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert!(client.ping().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_costs_the_others_nothing() {
    let stalled = TcpSim::start(SimConfig::new().with_fault(Fault::Stall)).unwrap();
    let healthy = TcpSim::start(SimConfig::new()).unwrap();
    let cluster = ClusterClient::spawn(
        Tokio,
        vec![
            spec("stalled", stalled.addr()),
            spec("healthy", healthy.addr()),
        ],
        None,
    )
    .unwrap();
    let failed = cluster.connect_all(Duration::from_millis(500)).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "stalled");
    let client = cluster.server("healthy").unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = std::time::Instant::now();
        client.ping().await.unwrap();
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_millis(50), "{slowest:?}");
    // Routing only ever picks the healthy one.
    for _ in 0..4 {
        let (key, _) = cluster.send_routed(ami_proto::action::Ping).await.unwrap();
        assert_eq!(key, "healthy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_loses_events_not_the_connection() {
    let sim = TcpSim::start(SimConfig::new()).unwrap();
    let client = Client::spawn(Tokio, spec("flood", sim.addr()));
    client.wait_ready(Duration::from_secs(5)).await.unwrap();
    let mut slow = client.events_with_capacity(Filter::event("UserEvent"), 100);
    // A fast consumer, on a task of its own, counts every flood event.
    let fast = tokio::spawn({
        let mut fast = client.all_events();
        async move {
            let mut seen = 0;
            while seen < 20_000 {
                let event = tokio::time::timeout(Duration::from_secs(5), fast.next())
                    .await
                    .expect("the flood")
                    .unwrap();
                if event.get("UserEvent") == Some("Flood") {
                    seen += 1;
                }
            }
            fast
        }
    });
    sim.set_flood(Some(Flood::new(20_000).with_total(20_000)));
    // The slow consumer takes one event every 10 ms for a second.
    let mut taken = 0;
    for _ in 0..100 {
        if tokio::time::timeout(Duration::from_millis(10), slow.next())
            .await
            .is_ok()
        {
            taken += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fast = fast.await.unwrap();
    assert_eq!(fast.dropped(), 0);
    assert!(slow.dropped() > 10_000, "dropped {}", slow.dropped());
    assert_eq!(
        slow.dropped() + slow.delivered() + slow.queued() as u64,
        20_000,
        "every event is delivered, buffered or counted (taken {taken})"
    );
    assert_eq!(client.health(), ami_cluster::Health::Healthy);
    assert!(client.ping().await.is_ok());
}

#[tokio::test]
async fn a_dropped_send_leaves_no_reply_behind() {
    let sim =
        TcpSim::start(SimConfig::new().with_response_delay(Duration::from_millis(200))).unwrap();
    let client = Client::spawn(Tokio, spec("cancel", sim.addr()));
    client.wait_ready(Duration::from_secs(5)).await.unwrap();
    let abandoned = tokio::time::timeout(Duration::from_millis(20), client.ping()).await;
    assert!(abandoned.is_err(), "the send was cancelled");
    assert_eq!(client.pending_replies(), 1, "in flight");
    // The answer comes, goes nowhere, and the slot is gone.
    let pong = client.ping().await.unwrap();
    assert_eq!(pong.response.get("Ping"), Some("Pong"));
    assert_eq!(client.pending_replies(), 0);
    assert_eq!(client.metrics().pending_actions, 0);
    assert_eq!(client.metrics().actions_completed, 2);
}

#[tokio::test]
async fn a_lost_session_fails_in_flight_actions_once() {
    let sim =
        TcpSim::start(SimConfig::new().with_response_delay(Duration::from_millis(300))).unwrap();
    let client = Client::spawn(Tokio, spec("lost", sim.addr()));
    client.wait_ready(Duration::from_secs(5)).await.unwrap();
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.queue_status().await }
    });
    // The action is in flight (sent, no reply yet: the sim answers after 300 ms).
    while client.metrics().pending_actions == 0 {
        tokio::task::yield_now().await;
    }
    sim.kill();
    let result = pending.await.unwrap();
    assert!(
        matches!(
            result,
            Err(ClientError::Failed(ActionError::ConnectionClosed { .. }))
        ),
        "{result:?}"
    );
    sim.restart().unwrap();
    client.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(client.metrics().connections_lost, 1);
    assert!(client.ping().await.is_ok());
}
