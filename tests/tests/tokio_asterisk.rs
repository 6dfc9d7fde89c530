//! The conformance cases of `ami_tests::cases` (shared with the mio suite) through
//! `ami-tokio` against the sandbox Asterisk 22, and the connection-level cases of the
//! mio suite in async form: logins (plain, MD5, rejected, TLS), `Events: off`, a user
//! without `call` permission, a 10,000-UserEvent flood through a stream, and one
//! connection's flood beside another connection's Pings.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ami_proto::action::{EventMask, Originate};
use ami_proto::config::AuthMethod;
use ami_proto::{CloseReason, Config, Filter};
use ami_tests::asterisk::{asterisk, unique_id};
use ami_tests::cases::cases;
use ami_tokio::{Client, ClientError, ClientSpec, Tokio};
use futures_util::StreamExt;

/// The flood tests take turns: two floods at once would measure each other.
static FLOODS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn addr() -> SocketAddr {
    let env = asterisk();
    format!("{}:{}", env.host, env.port).parse().unwrap()
}

fn client(key: &str, adjust: impl FnOnce(&mut Config)) -> Client {
    let mut config = Config::new(
        format!("{key}-{}", unique_id("t")),
        "admin",
        asterisk().secret.clone(),
    );
    adjust(&mut config);
    Client::spawn(Tokio, ClientSpec::new(config, addr()))
}

#[tokio::test]
async fn shared_cases_through_tokio() {
    let client = client("cases", |c| {
        c.events = EventMask::Classes(vec!["call".into()])
    });
    client.wait_ready(Duration::from_secs(15)).await.unwrap();
    for case in cases() {
        let result = match client.send((case.action)()).await {
            Ok(reply) => Ok(reply),
            Err(ClientError::Failed(error)) => Err(error),
            Err(other) => panic!("{}: {other}", case.name),
        };
        (case.check)(&result);
    }
    client.close().await;
}

#[tokio::test]
async fn plain_and_md5_logins_and_a_rejected_one() {
    let plain = client("plain", |_| {});
    plain.wait_ready(Duration::from_secs(15)).await.unwrap();
    let md5 = client("md5", |c| c.auth = AuthMethod::Md5);
    md5.wait_ready(Duration::from_secs(15)).await.unwrap();
    assert!(md5.ping().await.is_ok());
    let wrong = client("wrong", |c| c.secret = "not-the-secret".into());
    let result = wrong.wait_ready(Duration::from_secs(3)).await;
    assert!(result.is_err(), "{result:?}");
    let metrics = wrong.metrics();
    assert!(metrics.connection_failures >= 1, "{metrics:?}");
    assert_eq!(metrics.connections_established, 0);
    let _ = CloseReason::PeerClosed;
    for c in [plain, md5, wrong] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_userevent_flood_arrives_complete_through_a_stream() {
    const COUNT: usize = 10_000;
    let _turn = FLOODS.lock().await;
    let client = client("flood", |c| {
        c.events = EventMask::Classes(vec!["user".into(), "call".into()])
    });
    client.wait_ready(Duration::from_secs(15)).await.unwrap();
    let two = unique_id("flood2");
    let mut floods = client.events(
        Filter::event("UserEvent")
            .header("UserEvent", "Flood")
            .header("Uniqueid", two.clone()),
    );
    let originate = Originate::application("Local/flood@test", "Wait", "120")
        .with_variable("COUNT", COUNT.to_string())
        .with_channel_id(unique_id("flood1"))
        .with_other_channel_id(two);
    let started = Instant::now();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.send(originate).await }
    });
    let mut seen = vec![false; COUNT];
    for _ in 0..COUNT {
        let event = tokio::time::timeout(Duration::from_secs(30), floods.next())
            .await
            .expect("the flood stalled")
            .unwrap();
        let seq: usize = event.get("Seq").unwrap().parse().unwrap();
        assert!(!seen[seq], "Seq {seq} twice");
        seen[seq] = true;
    }
    eprintln!(
        "tokio: {COUNT} UserEvents in {:?}, {} dropped",
        started.elapsed(),
        floods.dropped()
    );
    assert_eq!(floods.dropped(), 0);
    assert!(call.await.unwrap().is_ok());
    client.close().await;
}

#[tokio::test]
async fn tls_login_verifies_the_certificate() {
    use ami_tokio::tls::{TlsSettings, TokioTls};
    let env = asterisk();
    let addr: SocketAddr = format!("{}:{}", env.host, env.tls_port).parse().unwrap();
    let settings = |name: &str| TlsSettings {
        server_name: name.to_owned(),
        ca_file: Some(env.tls_ca.clone()),
        roots: Default::default(),
    };
    let config = |key: &str| Config::new(unique_id(key), "admin", env.secret.clone());
    let tls = TokioTls::new(&settings("127.0.0.1")).unwrap();
    let client = Client::spawn(tls, ClientSpec::new(config("tls"), addr));
    client.wait_ready(Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        client.command("core show version").await.unwrap()[0]
            .split_whitespace()
            .next(),
        Some("Asterisk")
    );
    client.close().await;
    // A certificate that does not name the server is refused: never logged in.
    let wrong = TokioTls::new(&settings("wrong.example")).unwrap();
    let refused = Client::spawn(wrong, ClientSpec::new(config("tls-wrong"), addr));
    assert!(refused.wait_ready(Duration::from_secs(3)).await.is_err());
    let metrics = refused.metrics();
    assert_eq!(metrics.connections_established, 0);
    assert!(metrics.connection_failures >= 1, "{metrics:?}");
    refused.close().await;
}

#[tokio::test]
async fn events_off_gets_no_broadcasts_but_actions_work() {
    let off = client("off", |c| c.events = EventMask::Off);
    let on = client("on", |_| {});
    off.wait_ready(Duration::from_secs(15)).await.unwrap();
    on.wait_ready(Duration::from_secs(15)).await.unwrap();
    let off_events = off.all_events();
    let marker = unique_id("marker");
    let mut on_events = on.events(Filter::event("UserEvent").header("Marker", marker.clone()));
    let user_event = ami_proto::Action::new("UserEvent")
        .header("UserEvent", "Check")
        .header("Marker", marker);
    on.send(user_event).await.unwrap();
    // The event reaches the connection with events on...
    tokio::time::timeout(Duration::from_secs(5), on_events.next())
        .await
        .expect("the UserEvent")
        .unwrap();
    // ...and never the one with `Events: off`, whose actions (lists included) work.
    assert!(off.core_show_channels().await.unwrap().list_end.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        off_events.queued(),
        0,
        "events reached the Events: off client"
    );
    off.close().await;
    on.close().await;
}

#[tokio::test]
async fn originate_without_call_permission_times_out() {
    // The `nocall` user may not read `call` events: the OriginateResponse never comes.
    let mut config = Config::new(unique_id("nocall"), "nocall", asterisk().secret.clone());
    config.events = EventMask::Classes(vec!["call".into()]);
    let client = Client::spawn(Tokio, ClientSpec::new(config, addr()));
    client.wait_ready(Duration::from_secs(15)).await.unwrap();
    let answer_timeout = Duration::from_secs(1);
    let originate =
        Originate::application("Local/answer@test", "Wait", "1").with_timeout(answer_timeout);
    let started = Instant::now();
    match client.send(originate).await {
        Err(ClientError::Failed(ami_proto::ActionError::Timeout { stage, timeout })) => {
            assert_eq!(stage, ami_proto::Stage::OriginateEvent);
            assert_eq!(timeout, answer_timeout + Duration::from_secs(10));
        }
        other => panic!("expected an OriginateEvent timeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(11) && took < Duration::from_secs(16),
        "{took:?}"
    );
    assert!(client.ping().await.is_ok(), "the session is fine");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connections_flood_does_not_delay_another_connections_ping() {
    const COUNT: usize = 10_000;
    let _turn = FLOODS.lock().await;
    let flooded = client("flooded", |c| {
        c.events = EventMask::Classes(vec!["user".into(), "call".into()])
    });
    let quiet = client("quiet", |c| c.events = EventMask::Off);
    flooded.wait_ready(Duration::from_secs(15)).await.unwrap();
    quiet.wait_ready(Duration::from_secs(15)).await.unwrap();
    let two = unique_id("flood2");
    let mut floods = flooded.events(
        Filter::event("UserEvent")
            .header("UserEvent", "Flood")
            .header("Uniqueid", two.clone()),
    );
    let consumer = tokio::spawn(async move {
        let mut n = 0;
        while n < COUNT {
            let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(30), floods.next()).await
            else {
                break;
            };
            n += 1;
        }
        (n, floods.dropped())
    });
    let originate = Originate::application("Local/flood@test", "Wait", "120")
        .with_variable("COUNT", COUNT.to_string())
        .with_channel_id(unique_id("flood1"))
        .with_other_channel_id(two);
    let call = tokio::spawn({
        let flooded = flooded.clone();
        async move { flooded.send(originate).await }
    });
    let mut latencies = Vec::new();
    while !consumer.is_finished() {
        let started = Instant::now();
        quiet.ping().await.unwrap();
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies.sort();
    let pings = latencies.len();
    let slowest = latencies.last().copied().unwrap_or_default();
    let median = latencies.get(pings / 2).copied().unwrap_or_default();
    let (received, dropped) = consumer.await.unwrap();
    eprintln!(
        "tokio: {pings} Pings during a {COUNT}-event flood on another connection, median \
         {median:?}, slowest {slowest:?}"
    );
    assert_eq!((received, dropped), (COUNT, 0));
    // Behaviour, not timing, as in the mio suite: the Pings kept completing and most of
    // them at once; the slowest (on a loaded machine, the scheduler's) is printed.
    assert!(pings >= 1, "no Ping completed during the flood");
    assert!(median <= Duration::from_millis(200), "{median:?}");
    assert!(call.await.unwrap().is_ok());
    flooded.close().await;
    quiet.close().await;
}

/// The core's dialer through `ami-tokio`: six Originates at 5 per second (a burst of
/// one) leave 200 ms apart, and each call's record comes out of the call stream.
#[tokio::test]
async fn paced_originates_leave_at_the_rate_and_each_call_ends_in_a_record() {
    use ami_tokio::ami_cluster::{DialerConfig, Outcome, PacingConfig};
    let mut config = Config::new(
        format!("paced-{}", unique_id("t")),
        "admin",
        asterisk().secret.clone(),
    );
    config.events = EventMask::Classes(vec!["call".into()]);
    let dialer = DialerConfig {
        pacing: PacingConfig {
            max_calls_per_second: Some(5.0),
            calls_burst: 1,
            max_concurrent_calls: None,
        },
        ..DialerConfig::default()
    };
    let client = Client::spawn(Tokio, ClientSpec::new(config, addr()).with_calls(dialer));
    client.wait_ready(Duration::from_secs(15)).await.unwrap();
    let mut calls = client.calls();
    let ids: Vec<String> = (0..6).map(|i| unique_id(&format!("paced{i}"))).collect();
    let sends = ids.iter().map(|id| {
        client.originate(
            Originate::application("Local/busy@test", "Wait", "1")
                .with_async(true)
                .with_timeout(Duration::from_secs(5))
                .with_channel_id(id.clone()),
        )
    });
    let replies = futures_util::future::join_all(sends).await;
    for reply in &replies {
        let reply = reply.as_ref().expect("answered");
        assert_eq!(reply.events[0].get("Reason"), Some("5"), "{reply:?}");
    }
    let mut created = Vec::new();
    let deadline = Duration::from_secs(20);
    while created.len() < ids.len() {
        let record = tokio::time::timeout(deadline, calls.next())
            .await
            .expect("a record in time")
            .expect("stream open");
        let Some(i) = ids
            .iter()
            .position(|id| record.call.registered_as.as_ref() == Some(id))
        else {
            continue; // another test's call
        };
        assert_eq!(record.call.outcome, Outcome::Busy, "{record:?}");
        assert_eq!(record.call.cause, Some(17), "{record:?}");
        created.push((i, record.call.created));
    }
    created.sort();
    for pair in created.windows(2) {
        let gap = pair[1].1.saturating_duration_since(pair[0].1);
        assert!(gap >= Duration::from_millis(195), "{created:?}");
    }
    let status = client.dialer_status().expect("tracked");
    assert_eq!(status.admitted, 6);
    assert!(status.waited >= Duration::from_millis(2_900), "{status:?}");
    client.close().await;
}
