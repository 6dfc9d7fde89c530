//! The conformance cases of `ami_tests::cases` (shared with the mio suite) through
//! `ami-tokio` against the sandbox Asterisk 22, plus logins and a 10,000-UserEvent
//! flood through an event stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ami_proto::action::{EventMask, Originate};
use ami_proto::config::AuthMethod;
use ami_proto::{CloseReason, Config, Filter};
use ami_tests::asterisk::{asterisk, unique_id};
use ami_tests::cases::cases;
use ami_tokio::{Client, ClientError, ClientSpec, Tokio};
use futures_util::StreamExt;

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
