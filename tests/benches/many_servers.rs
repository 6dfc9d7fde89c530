//! Criterion: one `tick_all` with one ready server out of 10, 100 and 1,000 (issue 14
//! item 4). Each iteration writes one event to one server's socket (the server
//! poked goes round the fleet) and runs the tick that reads it and hands it to a
//! counting listener; the write is part of the measured time, the same for every
//! fleet size.
//!
//! Run with `cargo bench -p ami-tests --bench many_servers`.

use std::time::Duration;

use ami_tests::many::Fleet;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn one_ready_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_ready_tick");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(3));
    for servers in [10usize, 100, 1000] {
        let mut fleet = Fleet::start(servers, Duration::from_secs(600)).expect("a fleet");
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(servers), &servers, |b, &n| {
            b.iter(|| {
                let before = fleet.count();
                fleet.poke(next % n).expect("poke");
                next += 1;
                while fleet.count() == before {
                    fleet.driver.tick_all(Duration::from_millis(100));
                }
            });
        });
        assert_eq!(fleet.dropped(), (0, 0));
    }
    group.finish();
}

fn idle_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("idle_tick");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(2));
    for servers in [10usize, 100, 1000] {
        let mut fleet = Fleet::start(servers, Duration::from_secs(600)).expect("a fleet");
        group.bench_with_input(BenchmarkId::from_parameter(servers), &servers, |b, _| {
            b.iter(|| fleet.driver.tick_all(Duration::ZERO));
        });
    }
    group.finish();
}

criterion_group!(benches, one_ready_tick, idle_tick);
criterion_main!(benches);
