//! A thousand servers in one loop (issue 14 item 4).
//!
//! 1. The tick with one ready server: for 10, 100 and 1,000 servers logged in to one
//!    `ami-mio` driver (a fleet on one loopback listener, see `ami_tests::many`), one
//!    event is written to one server's socket, then one `tick_all` is timed: it reads
//!    that socket and hands the event to a counting listener. The server poked goes
//!    round the fleet. Also timed: an idle `tick_all(0)` (nothing ready).
//! 2. The flood: 1,000 servers at 1,000 events/s each (1 M events/s) from one flood
//!    thread, through one driver thread, for `--seconds`; heartbeats every second
//!    (answered by the flood thread). Reports events/s delivered, drops, and the
//!    driver thread's CPU per event (`/proc/thread-self`).
//!
//! The file-descriptor limit is raised by the program itself (two sockets a server).
//!
//! Run with
//! `cargo run --release -p ami-tests --example many_servers -- [--ticks N]
//! [--seconds S] [--servers 10,100,1000] [--flood-servers 1000] [--rate 1000]
//! [--slice-ms 20] [--skip-flood] [--skip-ticks] [--log]` (`--log`: the driver's
//! warnings on stderr).

use std::time::{Duration, Instant};

use ami_tests::asterisk::thread_cpu_time;
use ami_tests::many::{Fleet, Flood, raise_fd_limit};

struct Args {
    ticks: usize,
    seconds: u64,
    servers: Vec<usize>,
    flood_servers: usize,
    rate: u64,
    slice_ms: u64,
    skip_flood: bool,
    skip_ticks: bool,
    log: bool,
}

fn args() -> Args {
    let mut args = Args {
        ticks: 5000,
        seconds: 10,
        servers: vec![10, 100, 1000],
        flood_servers: 1000,
        rate: 1000,
        slice_ms: 20,
        skip_flood: false,
        skip_ticks: false,
        log: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after the option");
        match arg.as_str() {
            "--ticks" => args.ticks = value().parse().expect("--ticks N"),
            "--seconds" => args.seconds = value().parse().expect("--seconds S"),
            "--servers" => {
                args.servers = value()
                    .split(',')
                    .map(|n| n.parse().expect("--servers 10,100,1000"))
                    .collect()
            }
            "--flood-servers" => args.flood_servers = value().parse().expect("a number"),
            "--rate" => args.rate = value().parse().expect("--rate EVENTS_PER_S"),
            "--slice-ms" => args.slice_ms = value().parse().expect("--slice-ms MS"),
            "--skip-flood" => args.skip_flood = true,
            "--skip-ticks" => args.skip_ticks = true,
            "--log" => args.log = true,
            other => panic!("unknown option {other}"),
        }
    }
    args
}

/// The `q` quantile of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn one_ready_ticks(n: usize, ticks: usize) {
    // Heartbeats on (every server has a deadline), none due during the run.
    let mut fleet = Fleet::start(n, Duration::from_secs(600)).expect("a fleet");
    let mut times = Vec::with_capacity(ticks);
    let mut missed = 0u64;
    let warmup = (ticks / 10).max(100);
    for round in 0..warmup + ticks {
        let server = round % n;
        let before = fleet.count();
        fleet.poke(server).expect("poke");
        let started = Instant::now();
        fleet.driver.tick_all(Duration::from_millis(100));
        let took = started.elapsed();
        if fleet.count() != before + 1 {
            // The event was not read in that tick: not a one-ready tick.
            missed += 1;
            while fleet.count() < before + 1 {
                fleet.driver.tick_all(Duration::from_millis(10));
            }
            continue;
        }
        if round >= warmup {
            times.push(took);
        }
    }
    let mut idle = Vec::with_capacity(ticks);
    for _ in 0..ticks {
        let started = Instant::now();
        fleet.driver.tick_all(Duration::ZERO);
        idle.push(started.elapsed());
    }
    times.sort();
    idle.sort();
    let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    println!(
        "{n:>5} servers: one-ready tick median {:.2} µs (p10 {:.2}, p90 {:.2}, mean {:.2}) over {} ticks ({missed} missed); idle tick_all(0) median {:.2} µs",
        micros(quantile(&times, 0.5)),
        micros(quantile(&times, 0.1)),
        micros(quantile(&times, 0.9)),
        micros(mean),
        times.len(),
        micros(quantile(&idle, 0.5)),
    );
    assert_eq!(fleet.dropped(), (0, 0));
}

fn flood(n: usize, rate: u64, seconds: u64, slice: Duration) {
    let setup = Instant::now();
    let mut fleet = Fleet::start(n, Duration::from_secs(1)).expect("a fleet");
    println!(
        "       {n} servers logged in in {:.2} s",
        setup.elapsed().as_secs_f64()
    );
    let peers = std::mem::take(&mut fleet.peers);
    let base = fleet.count();
    let duration = Duration::from_secs(seconds);
    let flood = Flood::start(peers, rate, duration, slice).expect("a flood thread");
    let started = Instant::now();
    let cpu_before = thread_cpu_time().unwrap_or_default();
    let ticks_before = fleet.driver.stats().ticks;
    let mut last_event = started;
    let mut last_count = base;
    loop {
        fleet.driver.tick_all(Duration::from_millis(10));
        let count = fleet.count();
        if count != last_count {
            last_count = count;
            last_event = Instant::now();
        }
        if flood.is_finished() && count - base >= flood.sent() {
            break;
        }
        if started.elapsed() > duration + Duration::from_secs(30) {
            println!("gave up: the events did not all arrive");
            break;
        }
    }
    let cpu = thread_cpu_time().unwrap_or_default() - cpu_before;
    let ticks = fleet.driver.stats().ticks - ticks_before;
    let elapsed = last_event - started;
    let report = flood.join();
    let delivered = fleet.count() - base;
    let lost: u64 = fleet
        .ids
        .iter()
        .map(|&id| fleet.driver.metrics(id).connections_lost)
        .sum();
    let misses: u64 = fleet
        .ids
        .iter()
        .filter_map(|&id| fleet.driver.connection_stats(id))
        .map(|s| s.heartbeat_misses)
        .sum();
    if lost > 0 {
        let mut reasons: Vec<String> = fleet
            .ids
            .iter()
            .filter_map(|&id| {
                fleet
                    .driver
                    .node(id)
                    .last_close_reason()
                    .map(|r| r.to_string())
            })
            .collect();
        reasons.sort();
        reasons.dedup();
        println!("       close reasons: {reasons:?}");
    }
    println!(
        "flood: {n} servers × {rate} events/s for {seconds} s ({} ms slices): {} sent, {delivered} delivered, dropped {:?} (queue, memory), in {:.2} s = {:.0} events/s",
        slice.as_millis(),
        report.events_sent,
        fleet.dropped(),
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
    );
    println!(
        "       driver thread CPU {} ms = {:.3} µs per event ({:.1}% of one core), {ticks} ticks ({:.0} events per tick); flood thread CPU {} ms",
        cpu.as_millis(),
        cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
        cpu.as_secs_f64() * 100.0 / elapsed.as_secs_f64(),
        delivered as f64 / ticks.max(1) as f64,
        report.cpu.as_millis(),
    );
    println!(
        "       heartbeats: {} Pings answered, {misses} missed; sessions lost {lost}, sockets failed {}",
        report.pings_answered, report.failed_sockets,
    );
}

fn main() {
    let args = args();
    if args.log {
        tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
            .with_writer(std::io::stderr)
            .init();
    }
    let biggest = args
        .servers
        .iter()
        .copied()
        .chain([args.flood_servers])
        .max()
        .unwrap_or(0);
    let limit = raise_fd_limit(2 * biggest as u64 + 256).expect("RLIMIT_NOFILE");
    println!("RLIMIT_NOFILE soft limit: {limit}");
    if !args.skip_ticks {
        for &n in &args.servers {
            one_ready_ticks(n, args.ticks);
        }
    }
    if !args.skip_flood {
        flood(
            args.flood_servers,
            args.rate,
            args.seconds,
            Duration::from_millis(args.slice_ms),
        );
    }
}
