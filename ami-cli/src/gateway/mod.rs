//! `ami gateway`: one process owns the AMI connections; events, status records,
//! actions and completions flow through Redis Streams.
//!
//! It runs the loop of `ami listen --all` ([`listen::serve`]: reconnects, health,
//! memory budget, status records, the HTTP endpoint) with three differences:
//! - the outlet is Redis ([`redis_outlet`]): each event to its server's events
//!   stream, each status record to the status stream; drops are counted with reason
//!   `redis`;
//! - requests are read from the action streams and completions written to each
//!   request's `reply_to` stream ([`actions`], [`request`]);
//! - it owns only the servers named with `--server` (all configured ones without),
//!   so that several gateways on one Redis can split the servers between them.
//!
//! The README's "ami gateway" section documents the streams, the fields, the
//! delivery rules and the topology for many servers and workers.

mod actions;
mod link;
mod redis_outlet;
mod request;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ami_proto::action::EventMask;

use crate::CliError;
use crate::listen::{self, Companion, LoopSettings, outlet_bounds};
use crate::outlet::OutletQueue;
use crate::worker::{ConfigArg, init_logging};
use actions::Actions;
use link::Link;
use redis_outlet::RedisOutlet;

/// Arguments of `ami gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Own this server (repeat for more). Default: every configured server.
    #[arg(long = "server", value_name = "KEY")]
    pub servers: Vec<String>,
    /// Serve `/metrics`, `/healthz`, `/status` and `/` on this address.
    #[arg(long, value_name = "ADDR", alias = "metrics-addr")]
    pub http_addr: Option<SocketAddr>,
    /// Tick timeout in milliseconds (default: `listen.tick_timeout_ms`, 25).
    #[arg(long, value_name = "MS")]
    pub tick_timeout_ms: Option<u64>,
    /// The config file.
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Runs `ami gateway`.
pub fn run(args: &GatewayArgs) -> Result<(), CliError> {
    init_logging();
    let file = args.config.load()?;
    let keys = if args.servers.is_empty() {
        file.servers.keys().cloned().collect()
    } else {
        for key in &args.servers {
            file.server(key)
                .map_err(|e| CliError::Usage(e.to_string()))?;
        }
        args.servers.clone()
    };
    for key in &keys {
        let events = &file.servers[key].connection.events;
        let takes_call = match events {
            EventMask::On => true,
            EventMask::Off => false,
            EventMask::Classes(classes) => classes
                .iter()
                .any(|c| c.eq_ignore_ascii_case("call") || c.eq_ignore_ascii_case("all")),
        };
        if !takes_call {
            tracing::warn!(
                server_key = %key,
                %events,
                "this server's session does not take `call` events: an async Originate \
                 through the gateway will time out waiting for its OriginateResponse"
            );
        }
    }
    let settings = file.gateway.clone();
    let events_link = Link::new(&settings.redis_url, "events")
        .map_err(|e| CliError::Usage(format!("gateway.redis_url: {e}")))?;
    let events_up = events_link.up();
    let outlet = RedisOutlet::new(
        events_link,
        &settings.events_stream,
        &settings.calls_stream,
        &settings.status_stream,
        settings.events_maxlen,
    );
    let queue = OutletQueue::start("ami-gw-events", outlet, outlet_bounds(&file))
        .map_err(|e| CliError::io("cannot start the outlet thread", e))?;
    let loop_settings = LoopSettings {
        tick: Duration::from_millis(args.tick_timeout_ms.unwrap_or(file.listen.tick_timeout_ms)),
        max_iterations: None,
        http_addr: args.http_addr,
        events: true,
        calls: true,
    };
    tracing::info!(
        servers = ?keys,
        consumer = %settings.consumer,
        group = %settings.group,
        "gateway starting"
    );
    listen::serve(&file, &keys, &loop_settings, queue, |driver, _| {
        driver
            .set_routing(request::strategy(settings.route, &keys))
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let actions = Actions::start(&settings, keys.clone(), driver.submitter(), events_up)?;
        Ok(Some(Box::new(Gateway(actions)) as Box<dyn Companion>))
    })
}

/// The gateway's part in the loop: its action threads.
struct Gateway(Actions);

impl Companion for Gateway {
    fn render_metrics(&self, out: &mut String) {
        self.0.render_metrics(out);
    }

    fn failure(&self) -> Option<CliError> {
        self.0.failure().map(CliError::Usage)
    }

    fn stop(&mut self) {
        self.0.stop();
    }

    fn finish(self: Box<Self>, deadline: Instant) {
        self.0.finish(deadline);
    }
}
