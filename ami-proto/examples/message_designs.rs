//! What each way of building a message costs, beside the parser and the `memmem` floor,
//! in one run: the measurement behind issue 14's items 1 and 2 (BENCHMARKS.md, "What
//! items 1 and 2 would take").
//!
//! Every variant walks the corpus with the same loop: 64-byte SSE2 masks of `\n`, `:`
//! and high bits; per line its end, its `\r`, its colon, the `Event` and `ActionID`
//! keys found by length, and (except the first variant) the line's colon and end
//! recorded in a table. It does none of the parser's other work (frame limits, the
//! value's leading blanks, `Response`/`Follows`/`Output`, malformed lines), so each
//! figure is an upper bound for a parser that builds its messages that way. Per
//! message, the variants then build:
//!
//! - `walk only`: nothing (what finding the lines costs);
//! - `Bytes slice, no table`: a `Bytes` slice of the input and no table (the walk
//!   records none): what a design that finds headers only when they are looked up
//!   would cost the parser (each lookup would then scan the text);
//! - `one copied buffer`: the text and the table copied into one `Bytes` (what
//!   `ami-proto` does, one allocation);
//! - `Bytes slice + table`: a `Bytes` slice of the input and the table in a `Box`
//!   (zero-copy; values would still be UTF-8 checked at each access);
//! - `ByteString slice + table`: the slice checked once as UTF-8
//!   (`bytestring::ByteString::try_from`), as item 1 asks;
//! - `ByteString, unchecked when ASCII`: the same, but a message whose masks saw no
//!   high bit skips the check through `ByteString::from_bytes_unchecked`: the one
//!   `unsafe` call item 1 would need to check UTF-8 at no cost (`ami-proto` forbids
//!   `unsafe`; this example is not part of it);
//! - `String copy + table`: the text copied into a `String` (checked once) and the
//!   table in a `Box` (no zero-copy, two allocations);
//! - `copy per read, slices`: each 64 KiB read copied into a `Bytes` of its own (the
//!   unfinished message carried over), messages sliced from it and checked once: what
//!   zero-copy costs when, as in `ami-mio`, one read buffer serves every server.
//!
//! The variants run in turns, each the best of 3 runs per round; the figures are the
//! medians over the rounds, with the range.
//!
//! Run with `cargo run --release -p ami-proto --example message_designs [ROUNDS]`.

use std::hint::black_box;
use std::ops::Range;
use std::time::{Duration, Instant};

#[path = "../benches/corpus.rs"]
mod corpus;
use corpus::{CHUNK, corpus, parse_count};

use bytes::Bytes;
use bytestring::ByteString;

/// How a variant builds each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    WalkOnly,
    SliceNoTable,
    OneCopiedBuffer,
    BytesSlice,
    ByteStringChecked,
    ByteStringUncheckedWhenAscii,
    StringCopy,
    CopyPerRead,
}

impl Build {
    const ALL: [Build; 8] = [
        Build::WalkOnly,
        Build::SliceNoTable,
        Build::OneCopiedBuffer,
        Build::BytesSlice,
        Build::ByteStringChecked,
        Build::ByteStringUncheckedWhenAscii,
        Build::StringCopy,
        Build::CopyPerRead,
    ];

    fn name(self) -> &'static str {
        match self {
            Build::WalkOnly => "walk only",
            Build::SliceNoTable => "Bytes slice, no table",
            Build::OneCopiedBuffer => "one copied buffer (ami-proto's)",
            Build::BytesSlice => "Bytes slice + table",
            Build::ByteStringChecked => "ByteString slice + table",
            Build::ByteStringUncheckedWhenAscii => "ByteString, unchecked when ASCII",
            Build::StringCopy => "String copy + table",
            Build::CopyPerRead => "copy per read, slices",
        }
    }
}

/// A line's colon and end, from its message's start, as two native-endian `u32`s (the
/// table of the variants; bytes, so that a table is copied in one piece, as
/// `ami-proto` stores its fields).
type Entry = [u8; 8];

/// The masks of one 64-byte window: bit `i` for byte `i`.
struct Masks {
    newlines: u64,
    colons: u64,
    highs: u64,
}

fn masks(window: &[u8; 64]) -> Masks {
    use safe_arch::{cmp_eq_mask_i8_m128i, m128i, move_mask_i8_m128i};
    let newline = m128i::from([b'\n' as i8; 16]);
    let colon = m128i::from([b':' as i8; 16]);
    let mut masks = Masks {
        newlines: 0,
        colons: 0,
        highs: 0,
    };
    for (index, chunk) in window.chunks_exact(16).enumerate() {
        let bytes = m128i::from(<[u8; 16]>::try_from(chunk).expect("16 bytes"));
        let shift = index * 16;
        let mask = |m: m128i| u64::from(move_mask_i8_m128i(m) as u16) << shift;
        masks.newlines |= mask(cmp_eq_mask_i8_m128i(bytes, newline));
        masks.colons |= mask(cmp_eq_mask_i8_m128i(bytes, colon));
        masks.highs |= mask(bytes);
    }
    masks
}

/// A message the walk found: where it lies in the input, its table, and whether its
/// bytes are all ASCII.
struct Found<'w> {
    range: Range<usize>,
    table: &'w [Entry],
    ascii: bool,
}

/// Walks the lines of `data` and calls `on_message` for each message that ends in it;
/// returns where the unfinished message at its end starts. `RECORD` fills the table.
fn walk<const RECORD: bool>(data: &[u8], mut on_message: impl FnMut(Found<'_>)) -> usize {
    let mut table: Vec<Entry> = Vec::with_capacity(64);
    let (mut start, mut msg_start, mut base) = (0, 0, 0);
    let (mut newlines, mut colons) = (0u64, 0u64);
    // The high bits of the message so far, and of the window the lines come from.
    let (mut high, mut window_high) = (0u64, 0u64);
    let mut keys = (None, None);
    loop {
        let (newline, colon) = if newlines != 0 {
            let newline = base + newlines.trailing_zeros() as usize;
            newlines &= newlines - 1;
            let after = colons >> (start - base);
            (newline, start + after.trailing_zeros() as usize)
        } else if let Some(window) = data.get(start..).and_then(|rest| rest.first_chunk()) {
            let window_masks = masks(window);
            window_high = window_masks.highs;
            high |= window_high;
            if window_masks.newlines != 0 {
                (base, newlines, colons) = (start, window_masks.newlines, window_masks.colons);
                continue;
            }
            // A line longer than the window: searched by `memchr`.
            let newline = start + memchr::memchr(b'\n', &data[start..]).expect("in window");
            high |= u64::from(!data[start..newline].is_ascii());
            let colon = memchr::memchr(b':', &data[start..newline]).map_or(newline, |c| start + c);
            (newline, colon)
        } else {
            // The last bytes: searched by `memchr`.
            let Some(offset) = memchr::memchr(b'\n', &data[start..]) else {
                return msg_start;
            };
            let newline = start + offset;
            high |= u64::from(!data[start..newline].is_ascii());
            let colon = memchr::memchr(b':', &data[start..newline]).map_or(newline, |c| start + c);
            (newline, colon)
        };
        let end = newline - usize::from(newline > start && data[newline - 1] == b'\r');
        if end == start {
            if start > msg_start {
                on_message(Found {
                    range: msg_start..start,
                    table: &table,
                    ascii: high == 0,
                });
                black_box(keys);
            }
            table.clear();
            keys = (None, None);
            // The next message starts in the window (if lines are left in it): its
            // high bits count for that message too.
            high = if newlines != 0 { window_high } else { 0 };
            start = newline + 1;
            msg_start = start;
            continue;
        }
        assert!(colon < end, "every line of the corpus is a header");
        let key = &data[start..colon];
        if key.len() == 5 && keys.0.is_none() && key.eq_ignore_ascii_case(b"Event") {
            keys.0 = Some(table.len());
        } else if key.len() == 8 && keys.1.is_none() && key.eq_ignore_ascii_case(b"ActionID") {
            keys.1 = Some(table.len());
        }
        if RECORD {
            let mut entry = [0; 8];
            entry[..4].copy_from_slice(&((colon - msg_start) as u32).to_ne_bytes());
            entry[4..].copy_from_slice(&((end - msg_start) as u32).to_ne_bytes());
            table.push(entry);
        }
        start = newline + 1;
    }
}

/// The input as one read buffer and each message built as `build` says; returns the
/// number of messages.
fn run(build: Build, input: &Bytes) -> u64 {
    let mut messages = 0u64;
    let data: &[u8] = input;
    let boxed = |table: &[Entry]| -> Box<[Entry]> { table.into() };
    match build {
        Build::WalkOnly => {
            walk::<false>(data, |found| {
                black_box(found.range);
                messages += 1;
            });
        }
        Build::SliceNoTable => {
            walk::<false>(data, |found| {
                black_box(input.slice(found.range));
                messages += 1;
            });
        }
        Build::CopyPerRead => {
            // Each read copied behind the unfinished message of the last one.
            let mut carried: Vec<u8> = Vec::new();
            for read in data.chunks(CHUNK) {
                carried.extend_from_slice(read);
                let buffer = Bytes::from(std::mem::take(&mut carried));
                let unfinished = walk::<true>(&buffer, |found| {
                    let text = ByteString::try_from(buffer.slice(found.range)).expect("UTF-8");
                    black_box((text, boxed(found.table)));
                    messages += 1;
                });
                carried.extend_from_slice(&buffer[unfinished..]);
            }
        }
        _ => {
            walk::<true>(data, |found| {
                let table = found.table;
                match build {
                    Build::OneCopiedBuffer => {
                        let text = &data[found.range];
                        let table = table.as_flattened();
                        let mut buffer = Vec::with_capacity(text.len() + table.len());
                        buffer.extend_from_slice(text);
                        buffer.extend_from_slice(table);
                        black_box(Bytes::from(buffer));
                    }
                    Build::BytesSlice => {
                        black_box((input.slice(found.range), boxed(table)));
                    }
                    Build::ByteStringChecked => {
                        let text = ByteString::try_from(input.slice(found.range)).expect("UTF-8");
                        black_box((text, boxed(table)));
                    }
                    Build::ByteStringUncheckedWhenAscii => {
                        let slice = input.slice(found.range);
                        let text = if found.ascii {
                            // SAFETY: the walk's masks saw no byte with its high bit set
                            // in this message, and ASCII is valid UTF-8.
                            unsafe { ByteString::from_bytes_unchecked(slice) }
                        } else {
                            ByteString::try_from(slice).expect("UTF-8")
                        };
                        black_box((text, boxed(table)));
                    }
                    Build::StringCopy => {
                        let text = String::from_utf8(data[found.range].to_vec()).expect("UTF-8");
                        black_box((text, boxed(table)));
                    }
                    Build::WalkOnly | Build::SliceNoTable | Build::CopyPerRead => {
                        unreachable!("handled above")
                    }
                }
                messages += 1;
            });
        }
    }
    messages
}

/// The shortest of three runs of `work`, and its result.
#[allow(
    clippy::disallowed_methods,
    reason = "a benchmark reads the clock; the library never does"
)]
fn best_of_3(mut work: impl FnMut() -> u64) -> (u64, Duration) {
    let mut best = Duration::MAX;
    let mut result = 0;
    for _ in 0..3 {
        let start = Instant::now();
        result = black_box(work());
        best = best.min(start.elapsed());
    }
    (result, best)
}

fn main() {
    let rounds: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .expect("ROUNDS must be a number >= 1"),
        None => 9,
    };
    let data = corpus();
    let input = Bytes::from(data.clone());
    let megabytes = data.len() as f64 / 1e6;
    let mb_s = |time: Duration| megabytes / time.as_secs_f64();

    // Per round: the floor, the parser, then every variant.
    let mut floor = Vec::new();
    let mut parser = Vec::new();
    let mut variants = vec![Vec::new(); Build::ALL.len()];
    for _ in 0..rounds {
        let (blocks, time) = best_of_3(|| {
            memchr::memmem::find_iter(black_box(&data[..]), b"\r\n\r\n").count() as u64
        });
        floor.push(mb_s(time));
        let (messages, time) = best_of_3(|| parse_count(&data));
        assert_eq!(
            messages, blocks,
            "every block of the capture is one message"
        );
        parser.push(mb_s(time));
        for (build, figures) in Build::ALL.into_iter().zip(&mut variants) {
            let (built, time) = best_of_3(|| run(build, &input));
            assert_eq!(built, messages, "{} found every message", build.name());
            figures.push(mb_s(time));
        }
    }

    println!(
        "corpus: {} bytes, {} messages; {rounds} rounds, best of 3 each; MB/s median (range)",
        data.len(),
        parse_count(&data)
    );
    let floor_median = median(&floor);
    let show = |name: &str, figures: &[f64]| {
        let mut sorted = figures.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = median(figures);
        println!(
            "{name:34} {median:6.0} ({:.0}-{:.0}) {:5.1}x below the floor",
            sorted[0],
            sorted[sorted.len() - 1],
            floor_median / median
        );
    };
    show("memmem floor", &floor);
    show("ami-proto parser", &parser);
    for (build, figures) in Build::ALL.into_iter().zip(&variants) {
        show(build.name(), figures);
    }
}

fn median(figures: &[f64]) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
