//! `ami-replay`: a loopback AMI server that blasts recorded events.
//!
//! ```text
//! ami-replay --events N [--rate R] [--capture PATH] [--port P]
//!            [--chunk-bytes B] [--username U --secret S]
//! ```
//!
//! Loads the event frames of a capture (default: the Asterisk 22 fixture), listens on
//! `127.0.0.1:P` (default: an ephemeral port), prints the address on one line of
//! stdout, and serves until it is killed or the first connection ends; it then prints
//! a summary on stderr. See `ami_tests::replay` for the protocol.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use ami_tests::replay::{DEFAULT_CHUNK_BYTES, ReplayConfig, ReplayServer, load_capture_events};
use clap::Parser;
use clap::builder::RangedU64ValueParser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "ami-replay",
    about = "Loopback AMI server that replays the events of a capture"
)]
struct Args {
    /// Events to send to each connection after its login.
    #[arg(long)]
    events: u64,
    /// Events per second per connection (default: as fast as the client reads).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Capture to take the events from (every byte a client received, banner first).
    #[arg(long, default_value_os_t = default_capture())]
    capture: PathBuf,
    /// Port on 127.0.0.1 (default: an ephemeral port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Bytes per write (whole frames).
    #[arg(long, default_value_t = DEFAULT_CHUNK_BYTES, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    chunk_bytes: usize,
    /// Username the login must carry (default: any).
    #[arg(long)]
    username: Option<String>,
    /// Secret the login must carry (default: any).
    #[arg(long)]
    secret: Option<String>,
}

/// The Asterisk 22 fixture of this crate.
fn default_capture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/asterisk22-capture.raw")
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ami-replay: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let (events, count) = load_capture_events(&args.capture).map_err(|error| {
        io::Error::new(error.kind(), format!("{}: {error}", args.capture.display()))
    })?;
    if count == 0 && args.events > 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no event frames", args.capture.display()),
        ));
    }
    let mut config = ReplayConfig::new(events, args.events).with_chunk_bytes(args.chunk_bytes);
    config.rate = args.rate;
    config.username = args.username;
    config.secret = args.secret;
    let server =
        ReplayServer::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)))?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", server.addr())?;
    stdout.flush()?;
    drop(stdout);
    eprintln!(
        "ami-replay: {count} event frames from {}, {} events per connection",
        args.capture.display(),
        args.events
    );
    server.wait_finished(1, None);
    let report = server.stop();
    let rate = report.events_per_second().map_or_else(String::new, |rate| {
        format!(", {rate:.0} events/s while streaming")
    });
    eprintln!(
        "ami-replay: {} events, {} bytes, {} connection(s) in {:.3} s{rate}",
        report.events_sent,
        report.bytes_sent,
        report.connections,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}
