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
use std::path::Path;
use std::time::Duration;

use ami_proto::parser::{Limits, Parsed, Parser};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

/// The corpus is repeated until it is at least this long.
const MIN_CORPUS: usize = 100 * 1000 * 1000;
/// The piece the parser is fed at a time, like one socket read.
const CHUNK: usize = 64 * 1024;

/// The capture without its banner line, repeated to at least [`MIN_CORPUS`] bytes.
fn corpus() -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/asterisk22-capture.raw");
    let raw = std::fs::read(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let first_line = raw
        .iter()
        .position(|&b| b == b'\n')
        .map_or(raw.len(), |i| i + 1);
    let body = if raw[..first_line].contains(&b':') {
        &raw[..]
    } else {
        &raw[first_line..]
    };
    assert!(
        body.ends_with(b"\r\n\r\n"),
        "the capture must end with a complete message"
    );
    let copies = MIN_CORPUS.div_ceil(body.len());
    body.repeat(copies)
}

/// Parses `data` in [`CHUNK`]-byte pieces and returns how many messages came out.
fn parse_count(data: &[u8]) -> u64 {
    let mut parser = Parser::new(Limits::default());
    let mut messages = 0u64;
    let mut count = |item: Parsed| {
        if let Parsed::Message(message) = item {
            black_box(&message);
            messages += 1;
        }
    };
    for chunk in data.chunks(CHUNK) {
        parser.feed(black_box(chunk), &mut count);
    }
    parser.finish(&mut count);
    messages
}

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
