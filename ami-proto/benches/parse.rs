//! Parser throughput on the real Asterisk 22 capture, repeated to at least 100 MB.
//!
//! - `parser/bytes`: the parser fed 64 KiB at a time, in bytes per second;
//! - `parser/messages`: the same run, in messages per second;
//! - `floor/memmem`: counting `\r\n\r\n` with `memchr::memmem` over the same bytes, the
//!   least work any framer must do.
//!
//! Run with `cargo bench -p ami-proto --bench parse`. For one-shot figures (and peak
//! memory) see `examples/parse_throughput.rs`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

#[path = "corpus.rs"]
mod corpus;
use corpus::{corpus, parse_count};

fn parse(c: &mut Criterion) {
    let data = corpus();
    let messages = parse_count(&data);
    let blocks = memchr::memmem::find_iter(&data, b"\r\n\r\n").count() as u64;
    assert_eq!(
        messages, blocks,
        "every block of the capture is one message"
    );

    let mut group = c.benchmark_group("parser");
    // About 0.2 s an iteration: flat sampling keeps 10 samples within the time given.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("bytes", |b| b.iter(|| parse_count(black_box(&data))));
    group.throughput(Throughput::Elements(messages));
    group.bench_function("messages", |b| b.iter(|| parse_count(black_box(&data))));
    group.finish();

    let mut group = c.benchmark_group("floor");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("memmem", |b| {
        b.iter(|| memchr::memmem::find_iter(black_box(&data), b"\r\n\r\n").count())
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
