//! The README's many-server program with `ami-mio`: several servers in one driver,
//! round-robin routing over the healthy ones, health changes, and the Prometheus text.
//!
//! ```sh
//! AMI_SERVERS=node_1=10.0.0.5:5038,node_2=10.0.0.6:5038 \
//!     AMI_USERNAME=admin AMI_SECRET=amp111 \
//!     cargo run --release -p ami-mio --example many_servers
//! ```
//!
//! Without `AMI_SERVERS`, two servers named `node_1` and `node_2` both point at
//! `AMI_HOST:AMI_PORT` (one Asterisk, two sessions). It sends six routed `Ping`s,
//! prints which server answered each, then the `ami_connection_status` samples.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ami_mio::{Driver, Endpoint, ServerSpec, Strategy};
use ami_proto::Config;
use ami_proto::action::{EventMask, Ping};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let one = format!(
        "{}:{}",
        env("AMI_HOST", "127.0.0.1"),
        env("AMI_PORT", "5038")
    );
    let servers = env("AMI_SERVERS", &format!("node_1={one},node_2={one}"));
    let mut driver = Driver::new()?;
    for entry in servers.split(',') {
        let (key, addr) = entry
            .split_once('=')
            .ok_or("AMI_SERVERS: KEY=HOST:PORT,...")?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or("AMI_SERVERS: KEY=HOST:PORT,...")?;
        let mut config = Config::new(
            key,
            env("AMI_USERNAME", "admin"),
            env("AMI_SECRET", "amp111"),
        );
        config.events = EventMask::Off;
        driver.add_server(ServerSpec::new(config, Endpoint::new(host, port.parse()?)))?;
    }
    driver.set_routing(Strategy::RoundRobin)?;
    driver.on_health_change(|server, from, to| println!("{server}: {from} -> {to}"));
    driver.connect_all()?;
    let ids: Vec<_> = driver.server_ids().collect();
    for &id in &ids {
        driver.wait_ready(id, Duration::from_secs(10))?;
    }

    let answered: Rc<RefCell<Vec<String>>> = Rc::default();
    for _ in 0..6 {
        let answered = answered.clone();
        let server = driver.send_routed(Ping, move |result| {
            answered.borrow_mut().push(if result.is_ok() {
                "pong".into()
            } else {
                "failed".into()
            });
        })?;
        println!("ping routed to {}", driver.server_key(server.server));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.borrow().len() < 6 && Instant::now() < deadline {
        driver.tick_all(Duration::from_millis(25));
    }
    println!("answers: {}", answered.borrow().join(" "));
    for line in driver.render_prometheus().lines() {
        if line.starts_with("ami_connection_status{") {
            println!("{line}");
        }
    }
    driver.shutdown(Duration::from_secs(5));
    Ok(())
}
