//! Fuzz target `parser`: splitting the input never changes what the parser emits, and
//! the parser never holds more than its limit plus one byte.
//!
//! Input layout:
//! - byte 0: the limits. `max_frame_size` is 1 + (byte 0 & 0x3f) (1..=64 bytes); bits 6-7
//!   make `max_command_output` four times that (01), half of it (10), or equal (00, 11).
//! - byte 1: `n`, how many chunk-size bytes follow (n & 0x0f, 0..=15).
//! - the next `n` bytes: chunk sizes, each 1 + byte (1..=256), used in turn, cycling.
//!   With none, the whole stream is fed at once.
//! - the rest: the AMI byte stream.
//!
//! The stream is parsed twice with the same limits: once whole, once in chunks. The
//! items must be equal, and after every `feed` the chunked parser's `buffered()` must not
//! exceed the larger of its two limits plus one (a command response may grow to
//! `max_command_output`; when both limits are equal this is the frame limit + 1).

#![no_main]

use ami_proto::parser::{Limits, Parsed, Parser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&limit_byte, rest)) = input.split_first() else {
        return;
    };
    let Some((&count_byte, rest)) = rest.split_first() else {
        return;
    };
    let count = usize::from(count_byte & 0x0f).min(rest.len());
    let (sizes, stream) = rest.split_at(count);
    let sizes: Vec<usize> = sizes.iter().map(|&b| usize::from(b) + 1).collect();

    let frame = 1 + usize::from(limit_byte & 0x3f);
    // Bits 6 and 7: the command limit larger, smaller or equal to the frame limit.
    let command = match limit_byte >> 6 {
        1 => frame * 4,
        2 => (frame / 2).max(1),
        _ => frame,
    };
    let limits = Limits {
        max_frame_size: frame,
        max_command_output: command,
    };
    let ceiling = frame.max(command) + 1;

    let mut whole = Vec::new();
    let mut parser = Parser::new(limits);
    parser.feed(stream, &mut |item| whole.push(item));
    assert!(
        parser.buffered() <= ceiling,
        "whole: buffered {} > {ceiling}",
        parser.buffered()
    );
    parser.finish(&mut |item| whole.push(item));
    assert_eq!(parser.buffered(), 0, "finish leaves nothing buffered");

    let mut chunked: Vec<Parsed> = Vec::new();
    let mut parser = Parser::new(limits);
    let mut pos = 0;
    let mut turn = 0;
    while pos < stream.len() {
        let size = if sizes.is_empty() {
            stream.len()
        } else {
            sizes[turn % sizes.len()]
        };
        turn += 1;
        let end = (pos + size).min(stream.len());
        parser.feed(&stream[pos..end], &mut |item| chunked.push(item));
        pos = end;
        assert!(
            parser.buffered() <= ceiling,
            "buffered {} > {ceiling} after {pos} bytes (limits {limits:?})",
            parser.buffered()
        );
    }
    parser.finish(&mut |item| chunked.push(item));

    assert_eq!(
        whole, chunked,
        "chunk sizes {sizes:?} change the output (limits {limits:?})"
    );

    // Discarded bytes are bytes of the stream: together they never exceed it.
    let discarded: u64 = whole
        .iter()
        .filter_map(|item| match item {
            Parsed::Discarded(discard) => Some(discard.bytes),
            _ => None,
        })
        .sum();
    assert!(
        discarded <= stream.len() as u64,
        "{discarded} bytes discarded, {} fed",
        stream.len()
    );
});
