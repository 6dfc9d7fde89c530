//! Finding where lines end, and where their keys end, in the parser's input.
//!
//! This is the parser's innermost loop: an AMI message is about 20 lines of about 20
//! bytes each, so what each line costs decides the parser's speed. [`LineScanner`]
//! takes the lines of one input in turn; [`find_newline`] and [`find_colon`] search a
//! piece 8 bytes at a time, for what the scanner leaves over (the last bytes of an
//! input, long lines) and for a message completed across inputs.
//!
//! Every search also tells whether the bytes it passed were all ASCII (the `seen`
//! argument, see [`HIGHS`]), so that the parser need not check a message again.

use memchr::memchr;

/// Where a line ends, and where its first `:` is (offsets from the line's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line {
    /// Offset of the `\n` that ends the line.
    pub(crate) newline: usize,
    /// Offset of the first `:` before it.
    pub(crate) colon: Option<usize>,
}

/// The first line of `haystack`, searched 8 bytes at a time: its `\n` and its first
/// `:`, with the OR of its bytes ORed into `seen` as [`find_newline`] does.
#[inline(always)]
pub(crate) fn find_line(haystack: &[u8], seen: &mut u64) -> Option<Line> {
    let newline = find_newline(haystack, seen)?;
    let colon = find_colon(&haystack[..newline]);
    Some(Line { newline, colon })
}

/// Takes the lines of one input in turn.
///
/// On x86-64 the 64 bytes from a line's start are compared with `\n` and `:` once, in
/// SSE2 registers, and every line that ends inside them is taken from the same bit
/// masks: the next line's end and colon are then a trailing-zero count away, instead of
/// a word loop whose exit the CPU must guess (its line lengths vary) and whose next
/// search waits on where this line ended. Elsewhere, and for a line that does not end
/// within 64 bytes or within the input, it searches with [`find_line`].
#[derive(Debug, Default)]
pub(crate) struct LineScanner {
    /// Where the bytes of the masks start in the input.
    base: usize,
    /// One bit per byte from `base` (bit `i` for byte `base + i`): the `\n`s of lines
    /// not taken yet, the `:`s, and the bytes that are not ASCII.
    newlines: u64,
    colons: u64,
    highs: u64,
}

impl LineScanner {
    /// The line of `data` that starts at `start` (its offsets counted from `start`),
    /// with the OR of its bytes ORed into `seen` as [`find_newline`] does. `start` is 0,
    /// or the end of the line this scanner returned last.
    #[inline(always)]
    pub(crate) fn next(&mut self, data: &[u8], start: usize, seen: &mut u64) -> Option<Line> {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            // Newlines before `start` were taken already (or belong to another input).
            let skipped = start.wrapping_sub(self.base);
            self.newlines &= if skipped < 64 { u64::MAX << skipped } else { 0 };
            if self.newlines == 0 {
                let Some(window) = data[start..].first_chunk::<64>() else {
                    return find_line(&data[start..], seen);
                };
                let masks = sse2::Masks::of::<true>(window);
                if masks.newlines == 0 {
                    return find_line(&data[start..], seen);
                }
                *self = LineScanner {
                    base: start,
                    newlines: masks.newlines,
                    colons: masks.colons,
                    highs: masks.highs,
                };
            }
            let skipped = start - self.base;
            let newline = self.newlines.trailing_zeros() as usize;
            self.newlines &= self.newlines - 1;
            // The bytes of this line, `skipped..newline`.
            let line = (1 << newline) - (1 << skipped);
            if self.highs & line != 0 {
                *seen |= HIGHS;
            }
            let colon = match self.colons & line {
                0 => None,
                colons => Some(colons.trailing_zeros() as usize - skipped),
            };
            Some(Line {
                newline: newline - skipped,
                colon,
            })
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
        find_line(&data[start..], seen)
    }
}

/// Takes the lines of one input one after another, each starting where the last one
/// ended: the parser's common case, header after header (see `Parser::header_run`).
///
/// Like [`LineScanner`] it compares the 64 bytes from a line's start with `\n` and `:`
/// once, and takes every line that ends in them from the bit masks; it does less per
/// line because its lines are consecutive: no mask of the lines already taken, and the
/// ASCII check once per window instead of once per line. A line that does not end
/// within 64 bytes of its start, or within the input, is left to the caller.
#[derive(Debug, Default)]
pub(crate) struct RunScanner {
    /// Where the window starts in the input.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    base: usize,
    /// One bit per byte of the window: the `\n`s of the lines not taken yet and the
    /// `:`s.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    newlines: u64,
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    colons: u64,
    /// Nonzero when a byte of the window is not ASCII.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    highs: u64,
}

impl RunScanner {
    /// The line of `data` that starts at `start` (where the line this scanner returned
    /// last ended, or anywhere for its first): where its `\n` is, and the first `:`
    /// from `start` on in the window, which may lie past the line (offsets in `data`).
    /// `None` when the line does not end within the 64 bytes from its start, or fewer
    /// are left. When the scanner loads a window with bytes that are not ASCII, it sets
    /// [`HIGHS`] in `high` (whose message it counts as not known to be ASCII).
    #[inline(always)]
    pub(crate) fn next(
        &mut self,
        data: &[u8],
        start: usize,
        high: &mut u64,
    ) -> Option<(usize, Option<usize>)> {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            if self.newlines == 0 {
                let window = data.get(start..)?.first_chunk::<64>()?;
                let masks = sse2::Masks::of::<false>(window);
                if masks.newlines == 0 {
                    return None;
                }
                *self = RunScanner {
                    base: start,
                    newlines: masks.newlines,
                    colons: masks.colons,
                    highs: masks.highs,
                };
                self.start_message(high);
            }
            // Below 64: a line is taken from the window only when another ends in it.
            let skipped = start - self.base;
            let newline = self.base + self.newlines.trailing_zeros() as usize;
            self.newlines &= self.newlines - 1;
            let colons = self.colons >> skipped;
            let colon = (colons != 0).then(|| start + colons.trailing_zeros() as usize);
            Some((newline, colon))
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
        {
            let _ = (data, start, high);
            None
        }
    }

    /// A new message starts inside the window (its `high` was reset): sets [`HIGHS`]
    /// in `high` when the window has bytes that are not ASCII.
    #[inline(always)]
    pub(crate) fn start_message(&self, high: &mut u64) {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        if self.highs != 0 {
            *high |= HIGHS;
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
        let _ = high;
    }
}

/// SSE2 compares (every x86-64 CPU has SSE2) through `safe_arch`, whose wrappers of the
/// intrinsics are safe to call: `ami-proto` forbids `unsafe`. (The compiler does not
/// turn a plain loop into `pmovmskb`, the instruction that makes a bit mask of a
/// compare.)
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod sse2 {
    use safe_arch::{
        cmp_eq_mask_i8_m128i, load_unaligned_m128i, m128i, move_mask_i8_m128i, set_splat_i8_m128i,
    };

    /// One bit per byte of a 64-byte window (bit `i` for byte `i`).
    pub(super) struct Masks {
        pub(super) newlines: u64,
        pub(super) colons: u64,
        pub(super) highs: u64,
    }

    impl Masks {
        /// The bytes of `window` that are `\n`, `:`, or not ASCII. With
        /// `HIGHS_PER_BYTE` false, `highs` only tells whether any byte is not ASCII
        /// (nonzero then): one bit mask fewer to build, for a scanner that needs no
        /// more.
        #[inline(always)]
        pub(super) fn of<const HIGHS_PER_BYTE: bool>(window: &[u8; 64]) -> Masks {
            let mut masks = Masks {
                newlines: 0,
                colons: 0,
                highs: 0,
            };
            let newline = set_splat_i8_m128i(b'\n' as i8);
            let colon = set_splat_i8_m128i(b':' as i8);
            let bits = |vector: m128i| u64::from(move_mask_i8_m128i(vector) as u16);
            let mut any = m128i::default();
            let (chunks, _) = window.as_chunks::<16>();
            for (at, chunk) in (0..64).step_by(16).zip(chunks) {
                let bytes = load_unaligned_m128i(chunk);
                masks.newlines |= bits(cmp_eq_mask_i8_m128i(bytes, newline)) << at;
                masks.colons |= bits(cmp_eq_mask_i8_m128i(bytes, colon)) << at;
                if HIGHS_PER_BYTE {
                    masks.highs |= bits(bytes) << at;
                } else {
                    any |= bytes;
                }
            }
            if !HIGHS_PER_BYTE {
                masks.highs = bits(any);
            }
            masks
        }
    }
}

/// The position of the first `:` in `line`. Keys are short (10 bytes on average), too
/// short for a SIMD search to pay off, so this tests 8 bytes per step in a `u64`
/// (the classic "has zero byte" trick on `word ^ b":::::::: "`).
#[inline(always)]
pub(crate) fn find_colon(line: &[u8]) -> Option<usize> {
    find_byte::<b':'>(line)
}

/// The position of the first `\n`, for what [`LineScanner`] leaves over. Most AMI lines
/// are short (about 20 bytes, nearly all under 40), where a word-at-a-time search beats
/// a `memchr` call; longer lines go to `memchr`. (On the Asterisk 22 capture a 64-byte head measured 2–3% faster than a
/// 32-byte one, which sent the many 32–39-byte lines to `memchr`; 16 bytes was 20%
/// slower.)
///
/// When it finds one, `seen` gets the OR of the bytes before it, and maybe of a few
/// after it (in the same word): the high bits of `seen` tell whether they are ASCII,
/// for free, from the words the search loads anyway. (When it finds none, `seen` may
/// miss bytes.)
#[inline(always)]
pub(crate) fn find_newline(haystack: &[u8], seen: &mut u64) -> Option<usize> {
    const SHORT: usize = 64;
    if haystack.len() <= SHORT {
        return find_byte_seeing::<b'\n'>(haystack, seen);
    }
    find_byte_seeing::<b'\n'>(&haystack[..SHORT], seen).or_else(|| {
        let newline = SHORT + memchr(b'\n', &haystack[SHORT..])?;
        if !is_ascii(&haystack[SHORT..newline]) {
            *seen |= HIGHS;
        }
        Some(newline)
    })
}

/// The position of the first `NEEDLE` in `haystack`, 8 bytes per step.
#[inline(always)]
fn find_byte<const NEEDLE: u8>(line: &[u8]) -> Option<usize> {
    // The OR of the bytes is dropped, so the compiler leaves it out.
    find_byte_seeing::<NEEDLE>(line, &mut 0)
}

/// The high bit of every byte of a word: where a `seen` OR of bytes shows any that are
/// not ASCII.
pub(crate) const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// [`find_byte`], also ORing into `seen` every byte it loads: all those before the
/// first `NEEDLE`, and those after it in the same 8-byte word (all of `line` when
/// there is no `NEEDLE`).
#[inline(always)]
fn find_byte_seeing<const NEEDLE: u8>(line: &[u8], seen: &mut u64) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    let needles: u64 = u64::from_ne_bytes([NEEDLE; 8]);
    let mut chunks = line.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        *seen |= word;
        let diff = word ^ needles;
        // The lowest flagged byte is exact; borrows can only flag bytes above it.
        let found = diff.wrapping_sub(ONES) & !diff & HIGHS;
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| {
            *seen |= u64::from(b);
            b == NEEDLE
        })
        .map(|i| offset + i)
}

/// Whether `bytes` are all ASCII. Unlike `<[u8]>::is_ascii`, which stops at the first
/// non-ASCII byte, this ORs every byte together: the compiler turns that into a few
/// vector ORs per 64 bytes with no byte-at-a-time tail, faster on whole messages
/// (where non-ASCII bytes are rare).
pub(crate) fn is_ascii(bytes: &[u8]) -> bool {
    bytes.iter().fold(0, |all, &byte| all | byte) < 0x80
}

#[cfg(test)]
mod tests {
    use super::{HIGHS, Line, LineScanner, find_colon, find_newline};

    /// `find_newline` finds the first `\n` at every place, on both sides of the head
    /// searched by words, and `seen` shows a non-ASCII byte anywhere before it.
    #[test]
    fn find_newline_agrees_with_a_plain_search() {
        for len in 0..150 {
            for newline_at in (0..=len).chain([usize::MAX]) {
                let mut line: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                if newline_at < len {
                    line[newline_at] = b'\n';
                }
                // Bytes just around '\n' (0x0a) must not be mistaken for it.
                if newline_at > 0 && newline_at < len {
                    line[newline_at - 1] = 0x0b;
                }
                let expected = line.iter().position(|&b| b == b'\n');
                let mut seen = 0;
                assert_eq!(find_newline(&line, &mut seen), expected, "{line:?}");
                if expected.is_some() {
                    assert_eq!(seen & HIGHS, 0, "{line:?}");
                }
                for odd_at in 0..expected.unwrap_or(0) {
                    let mut odd = line.clone();
                    odd[odd_at] = 0xc3;
                    let mut seen = 0;
                    assert_eq!(find_newline(&odd, &mut seen), expected);
                    assert_ne!(seen & HIGHS, 0, "{odd:?}");
                }
            }
        }
    }

    #[test]
    fn find_colon_agrees_with_a_plain_search() {
        let mut line = Vec::new();
        for len in 0..40 {
            for colon_at in 0..=len {
                line.clear();
                line.extend((0..len).map(|i| {
                    if i == colon_at {
                        b':'
                    } else {
                        b'a' + (i % 26) as u8
                    }
                }));
                // Bytes just around ':' (0x3a) must not be mistaken for it.
                if len > 0 && colon_at != 0 {
                    line[0] = 0x39;
                }
                let expected = line.iter().position(|&b| b == b':');
                assert_eq!(find_colon(&line), expected, "{line:?}");
            }
        }
        assert_eq!(find_colon(b"\x3b\x3a\x3a"), Some(1));
        assert_eq!(find_colon(&[0xff; 17]), None);
    }

    /// The lines of `data` and whether each has a non-ASCII byte, by a plain search.
    fn plain_lines(data: &[u8]) -> Vec<(Line, bool)> {
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(newline) = data[start..].iter().position(|&b| b == b'\n') {
            let line = &data[start..start + newline];
            let colon = line.iter().position(|&b| b == b':');
            lines.push((Line { newline, colon }, !line.is_ascii()));
            start += newline + 1;
        }
        lines
    }

    /// The scanner finds every line of an input as a plain search does: lines of every
    /// length from 0 to past 64 bytes (where it falls back to the word search), at every
    /// offset of its 64-byte masks, with and without a `:` or a non-ASCII byte, and
    /// the last lines of the input, which leave fewer than 64 bytes to mask. A line with a
    /// non-ASCII byte is always flagged in `seen`.
    #[test]
    fn the_scanner_agrees_with_a_plain_search() {
        // A small deterministic generator: the same inputs every run.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        for _ in 0..2_000 {
            let mut data = Vec::new();
            for _ in 0..next(12) {
                let len = match next(4) {
                    0 => next(4),
                    1 | 2 => next(40),
                    _ => next(150),
                };
                let line_start = data.len();
                data.extend((0..len).map(|i| b'a' + (i % 26) as u8));
                if len > 0 && next(3) > 0 {
                    data[line_start + next(len) as usize] = b':';
                }
                if len > 0 && next(4) == 0 {
                    data[line_start + next(len) as usize] = 0xc3;
                }
                data.push(b'\n');
            }
            // An incomplete last line, with no `\n`.
            data.extend((0..next(70)).map(|_| b'x'));
            let expected = plain_lines(&data);
            let mut scanner = LineScanner::default();
            let mut start = 0;
            for &(line, high) in &expected {
                let mut seen = 0;
                assert_eq!(
                    scanner.next(&data, start, &mut seen),
                    Some(line),
                    "{data:?}"
                );
                // A word search may also OR in a few bytes after the line, which can
                // only make the parser check a message that is ASCII after all.
                if high {
                    assert_ne!(seen & HIGHS, 0, "at {start} of {data:?}");
                }
                start += line.newline + 1;
            }
            assert_eq!(scanner.next(&data, start, &mut 0), None, "{data:?}");
        }
    }
}
