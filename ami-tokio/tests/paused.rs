//! Paused time: Tokio's virtual clock drives heartbeats, deadlines and reconnect
//! backoff. The simulated Asterisk is served in memory (`tokio::io::duplex` plus an
//! `ami_sim::SimSession` on Tokio's clock) through the `Custom` runtime, so that no
//! real socket makes the runtime jump time while bytes are in flight.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ami_cluster::Health;
use ami_proto::Config;
use ami_sim::{SimConfig, SimSession};
use ami_tokio::{BoxTransport, Client, ClientSpec, Custom};
use futures_channel::oneshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::compat::TokioAsyncReadCompatExt;

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A simulated server reachable in memory: up or down, with a kill switch per session
/// and a log of connection attempts.
#[derive(Clone, Default)]
struct MemSim {
    down: Arc<AtomicBool>,
    kills: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl MemSim {
    fn runtime(&self) -> Custom {
        let sim = self.clone();
        Custom::new(
            move |_addr| {
                let sim = sim.clone();
                Box::pin(async move {
                    sim.attempts.lock().unwrap().push(now());
                    if sim.down.load(Ordering::SeqCst) {
                        return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
                    }
                    let (client, server) = tokio::io::duplex(64 * 1024);
                    let (kill, killed) = oneshot::channel();
                    sim.kills.lock().unwrap().push(kill);
                    let session = SimSession::new(&SimConfig::new(), now(), 7);
                    tokio::spawn(serve(server, session, killed));
                    Ok(Box::new(client.compat()) as BoxTransport)
                })
            },
            |at| Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(at))),
            |task| {
                tokio::spawn(task);
            },
        )
        .with_clock(now)
    }

    /// Cuts every session and refuses new ones.
    fn kill(&self) {
        self.down.store(true, Ordering::SeqCst);
        for kill in self.kills.lock().unwrap().drain(..) {
            let _ = kill.send(());
        }
    }

    fn revive(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// Runs one simulated session over an in-memory stream, on Tokio's clock.
async fn serve(
    mut stream: DuplexStream,
    mut session: SimSession,
    mut killed: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while !session.poll_transmit().is_empty() {
            match stream.write(session.poll_transmit()).await {
                Ok(n) => session.advance_transmit(n),
                Err(_) => return,
            }
        }
        if session.is_closed() {
            return;
        }
        let wake = session
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = &mut killed => return,
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => session.handle_input(now(), &buf[..n]),
            },
            _ = tokio::time::sleep_until(wake) => session.handle_timeout(now()),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeats_and_reconnects_run_on_virtual_time() {
    let real_start = Instant::now();
    let sim = MemSim::default();
    let spec = ClientSpec::new(
        Config::new("virtual", "admin", "amp111"),
        "127.0.0.1:5038".parse().unwrap(),
    );
    let client = Client::spawn(sim.runtime(), spec);
    client.wait_ready(Duration::from_secs(5)).await.unwrap();

    // An hour of heartbeats (one Ping every 15 s), all answered.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(client.health(), Health::Healthy);
    assert_eq!(client.metrics().connections_established, 1);
    assert!(client.ping().await.is_ok());

    // The server goes away: backoff, then the circuit opens after 5 failures.
    let killed_at = now();
    sim.kill();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let metrics = client.metrics();
    assert!(metrics.circuit_opened_total >= 1, "{metrics:?}");
    assert_eq!(metrics.connections_lost, 1);
    let attempts: Vec<Instant> = sim
        .attempts
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|t| *t > killed_at)
        .collect();
    assert!(
        (5..=7).contains(&attempts.len()),
        "{} attempts",
        attempts.len()
    );
    let mut previous = killed_at;
    for (i, at) in attempts.iter().enumerate() {
        let delay = *at - previous;
        if i < 5 {
            assert!(
                (Duration::from_millis(100)..=Duration::from_secs(30)).contains(&delay),
                "retry {i} after {delay:?}"
            );
        } else {
            // After the circuit opened: the probe comes after the 30 s cooldown.
            assert!(delay >= Duration::from_secs(30), "probe after {delay:?}");
        }
        previous = *at;
    }
    assert!(matches!(
        client.health(),
        Health::CircuitOpen | Health::Reconnecting
    ));

    // Back: the next probe logs in again, within the cooldown plus 1 s of jitter.
    sim.revive();
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(client.health(), Health::Healthy);
    assert_eq!(client.metrics().connections_established, 2);
    assert!(client.ping().await.is_ok());
    client.close().await;
    assert!(
        real_start.elapsed() < Duration::from_secs(5),
        "an hour and a half of virtual time took {:?}",
        real_start.elapsed()
    );
}
