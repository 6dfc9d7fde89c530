//! The benchmark corpus and the counting parse, shared by `benches/parse.rs` and
//! `examples/parse_throughput.rs` (each includes this file with `#[path]`).

use std::hint::black_box;
use std::path::Path;

use ami_proto::parser::{Limits, Parsed, Parser};

/// The corpus is repeated until it is at least this long.
pub const MIN_CORPUS: usize = 100 * 1000 * 1000;
/// The piece the parser is fed at a time, like one socket read.
pub const CHUNK: usize = 64 * 1024;

/// The capture without its banner line, repeated to at least [`MIN_CORPUS`] bytes.
pub fn corpus() -> Vec<u8> {
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
pub fn parse_count(data: &[u8]) -> u64 {
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
