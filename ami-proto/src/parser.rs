//! The incremental AMI parser: bytes in, banner / messages / discards out.
//!
//! Feed it bytes in pieces of any size with [`Parser::feed`]; it calls you back with
//! every complete item. It never rescans a byte: a line's end is searched once (the
//! search resumes where it stopped when a line arrives in pieces) and a line's key is
//! found once, when the line is complete.
//!
//! The rules it applies (PROTOCOL-NOTES 1–6, 23–24):
//! - The stream's first line is the banner when it has no `:`; the banner has no blank
//!   line after it, so the first message follows at once.
//! - A line ends at `\n`; an optional `\r` before it is stripped. A message ends at an
//!   empty line; empty messages (extra blank lines) are skipped.
//! - A header is `Key:Value`; blanks after the `:` are skipped, trailing blanks kept.
//! - A message may hold at most [`Limits::max_frame_size`] bytes, except a command
//!   response (a `Response` with `Output:` headers, or a legacy `Response: Follows`),
//!   which may hold [`Limits::max_command_output`].
//! - A legacy `Response: Follows` message carries raw body lines after its
//!   `Privilege`/`ActionID` headers, blank ones included, up to a line ending in
//!   `--END COMMAND--`.
//! - A line that is not `Key: Value`, or a message over its limit, is discarded up to
//!   the next blank line. The discarded bytes are counted but never buffered, and one
//!   [`Discard`] reports them; parsing then carries on (desync recovery).
//!
//! Memory: the parser holds at most the message in progress, never more than its
//! limit plus one byte.

use bytes::Bytes;
use memchr::memchr;

use crate::message::{Field, Layout, Message};

/// Size limits of the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted, in bytes, counting line ends (default 64 KiB).
    pub max_frame_size: usize,
    /// Largest command response accepted, in bytes (default 1 MiB, plan §8).
    pub max_command_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 64 * 1024,
            max_command_output: 1024 * 1024,
        }
    }
}

/// Why input was discarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A message grew past [`Limits::max_frame_size`].
    #[error("message larger than the frame limit of {limit} bytes")]
    FrameTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// A command response grew past [`Limits::max_command_output`].
    #[error("command output larger than the limit of {limit} bytes")]
    OutputTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// A line inside a message was not `Key: Value`.
    #[error("line is not `Key: Value`")]
    MalformedLine,
    /// The input ended inside a message.
    #[error("input ended inside a message")]
    Truncated,
}

impl ParseError {
    /// A short stable name for the error, e.g. for JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::FrameTooLarge { .. } => "frame_too_large",
            ParseError::OutputTooLarge { .. } => "output_too_large",
            ParseError::MalformedLine => "malformed_line",
            ParseError::Truncated => "truncated",
        }
    }
}

/// Input the parser threw away, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discard {
    /// Why it was discarded.
    pub error: ParseError,
    /// How many bytes were discarded, the terminating blank line included.
    pub bytes: u64,
    /// The `ActionID` of the discarded message, when it was read before the message
    /// went bad, so that the action waiting for it can be failed at once.
    pub action_id: Option<String>,
}

/// One item out of the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The one-line banner, e.g. `Asterisk Call Manager/11.0.0`.
    Banner(String),
    /// A complete message.
    Message(Message),
    /// Discarded input.
    Discarded(Discard),
}

/// Whether the line being discarded is still blank so far (for a blank line split
/// across two inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineSoFar {
    Empty,
    CarriageReturn,
    Text,
}

impl LineSoFar {
    /// The state after `bytes` more of the same line.
    fn extend(self, bytes: &[u8]) -> LineSoFar {
        match (self, bytes) {
            (state, []) => state,
            (LineSoFar::Empty, b"\r") => LineSoFar::CarriageReturn,
            _ => LineSoFar::Text,
        }
    }

    /// Whether the line is blank when it ends after `bytes` more.
    fn blank_with(self, bytes: &[u8]) -> bool {
        matches!(
            (self, bytes),
            (LineSoFar::Empty, b"" | b"\r") | (LineSoFar::CarriageReturn, b"")
        )
    }
}

/// What the parser is reading.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// The first line of the stream: the banner, or the first header.
    Start,
    /// Header lines of a message.
    Headers,
    /// `Privilege`/`ActionID` headers of a legacy `Follows` response.
    FollowsHeaders,
    /// Raw body lines of a legacy `Follows` response.
    FollowsBody,
    /// Skipping input up to the next blank line.
    Discarding { discard: Discard, line: LineSoFar },
}

const SENTINEL: &[u8] = b"--END COMMAND--";

/// The incremental parser. See the [module documentation](self).
///
/// `Debug` shows sizes, never the bytes held (they may carry secrets).
pub struct Parser {
    limits: Limits,
    mode: Mode,
    /// Bytes of the message in progress, from `msg_start`.
    buf: Vec<u8>,
    /// Where the message in progress starts in `buf`.
    msg_start: usize,
    /// Where the next line starts in `buf`.
    line_start: usize,
    /// Where the search for the next `\n` resumes (bytes before it hold none).
    searched: usize,
    /// Fields of the message in progress, offsets relative to `msg_start`.
    fields: Vec<Field>,
    /// How many of `fields` are headers (the rest are `Follows` body lines).
    headers: usize,
    /// Index in `fields` of the first `Event`, `Response` and `ActionID` headers.
    event_field: Option<usize>,
    response_field: Option<usize>,
    action_id_field: Option<usize>,
    /// The size limit of the message in progress.
    limit: usize,
}

impl std::fmt::Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parser")
            .field("limits", &self.limits)
            .field("buffered", &self.buffered())
            .field("discarding", &matches!(self.mode, Mode::Discarding { .. }))
            .finish_non_exhaustive()
    }
}

impl Parser {
    /// A parser at the start of a stream (the first line may be a banner).
    pub fn new(limits: Limits) -> Self {
        Parser {
            limits,
            mode: Mode::Start,
            buf: Vec::new(),
            msg_start: 0,
            line_start: 0,
            searched: 0,
            fields: Vec::new(),
            headers: 0,
            event_field: None,
            response_field: None,
            action_id_field: None,
            limit: limits.max_frame_size,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes held for the message in progress (never more than its limit plus one).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.msg_start
    }

    /// Parses `data`, calling `emit` for every complete item, in stream order.
    pub fn feed(&mut self, mut data: &[u8], emit: &mut impl FnMut(Parsed)) {
        while !data.is_empty() {
            if let Mode::Discarding { .. } = self.mode {
                // Discarded bytes are counted as they pass, never stored.
                let used = self.discard_scan(data, emit);
                data = &data[used..];
                continue;
            }
            self.compact();
            // Never hold more than the message's limit plus one byte: past that it is
            // discarded anyway.
            let room = (self.limit + 1).saturating_sub(self.buf.len()).max(1);
            let (now, later) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            data = later;
            self.parse_buffer(emit);
        }
    }

    /// Ends the stream: a message still in progress is reported as truncated (or the
    /// discard in progress is reported), and the parser is reset for a new stream.
    pub fn finish(&mut self, emit: &mut impl FnMut(Parsed)) {
        match std::mem::replace(&mut self.mode, Mode::Start) {
            Mode::Discarding { discard, .. } => emit(Parsed::Discarded(discard)),
            _ if self.buffered() > 0 => {
                let action_id = self.action_id();
                emit(Parsed::Discarded(Discard {
                    error: ParseError::Truncated,
                    bytes: self.buffered() as u64,
                    action_id,
                }))
            }
            _ => {}
        }
        *self = Parser::new(self.limits);
    }

    /// Drops the bytes of messages already emitted from the front of the buffer.
    fn compact(&mut self) {
        if self.msg_start > 0 {
            self.buf.drain(..self.msg_start);
            self.line_start -= self.msg_start;
            self.searched -= self.msg_start;
            self.msg_start = 0;
        }
    }

    /// Parses every complete line in the buffer.
    fn parse_buffer(&mut self, emit: &mut impl FnMut(Parsed)) {
        while let Some(offset) = find_newline(&self.buf[self.searched..]) {
            let newline = self.searched + offset;
            let line_end = newline + 1;
            self.searched = line_end;
            self.handle_line(newline, emit);
            if let Mode::Discarding { .. } = self.mode {
                // The rest of the buffer is skipped up to the next blank line.
                let rest = std::mem::take(&mut self.buf);
                let used = self.discard_scan(&rest[line_end..], emit);
                self.buf = rest;
                if let Mode::Discarding { .. } = self.mode {
                    self.buf.clear();
                    self.msg_start = 0;
                    self.line_start = 0;
                    self.searched = 0;
                    return;
                }
                self.msg_start = line_end + used;
                self.line_start = self.msg_start;
                self.searched = self.msg_start;
            }
        }
        self.searched = self.buf.len();
        if self.buffered() > self.limit {
            // The message is over its limit before its end arrived.
            let partial = LineSoFar::Empty.extend(&self.buf[self.line_start..]);
            self.start_discard(self.too_large(), partial);
            self.buf.clear();
            self.msg_start = 0;
            self.line_start = 0;
            self.searched = 0;
        }
    }

    /// Handles the complete line from `line_start` to the `\n` at `newline`.
    fn handle_line(&mut self, newline: usize, emit: &mut impl FnMut(Parsed)) {
        let start = self.line_start;
        let line_end = newline + 1;
        self.line_start = line_end;
        let mut end = newline;
        if end > start && self.buf[end - 1] == b'\r' {
            end -= 1;
        }
        // The limit that applies to this line is the one set by the lines before it,
        // so that the verdict is the same however the input was split.
        if line_end - self.msg_start > self.limit {
            let error = self.too_large();
            if start == end {
                // The blank line that ends the discard is this one.
                let bytes = (line_end - self.msg_start) as u64;
                emit(Parsed::Discarded(Discard {
                    error,
                    bytes,
                    action_id: self.action_id(),
                }));
                self.reset_message(line_end);
            } else {
                self.start_discard_at_line_end(error, line_end);
            }
            return;
        }
        match self.mode {
            Mode::Start if start == end => {
                self.mode = Mode::Headers;
                self.msg_start = line_end;
            }
            Mode::Start if !self.buf[start..end].contains(&b':') => {
                let text = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
                emit(Parsed::Banner(text));
                self.mode = Mode::Headers;
                self.msg_start = line_end;
            }
            Mode::Headers if start == end => {
                if self.fields.is_empty() {
                    // An empty message: skip it.
                    self.msg_start = line_end;
                } else {
                    self.complete(start, line_end, emit);
                }
            }
            Mode::Start | Mode::Headers => {
                self.mode = Mode::Headers;
                if !self.push_header(start, end) {
                    self.start_discard_at_line_end(ParseError::MalformedLine, line_end);
                    return;
                }
                let last = self.fields.len() - 1;
                if self.fields.len() == 1
                    && self.key_is(last, "Response")
                    && self.value_is(last, "Follows")
                {
                    self.mode = Mode::FollowsHeaders;
                    self.limit = self.limits.max_command_output;
                } else if self.response_field.is_some()
                    && self.event_field.is_none()
                    && self.key_is(last, "Output")
                {
                    self.limit = self.limits.max_command_output;
                }
            }
            Mode::FollowsHeaders => {
                let checkpoint = self.fields.len();
                if self.push_header(start, end)
                    && (self.key_is(checkpoint, "Privilege") || self.key_is(checkpoint, "ActionID"))
                {
                    return;
                }
                // Not one of the headers: the body starts here.
                self.fields.truncate(checkpoint);
                self.headers = checkpoint;
                self.action_id_field = self.action_id_field.filter(|&i| i < checkpoint);
                self.event_field = self.event_field.filter(|&i| i < checkpoint);
                self.mode = Mode::FollowsBody;
                self.push_body_line(start, end, line_end, emit);
            }
            Mode::FollowsBody => self.push_body_line(start, end, line_end, emit),
            // Discarded bytes are scanned by `discard_scan`, never here.
            Mode::Discarding { .. } => {}
        }
    }

    /// Records a header line; false when it is not `Key: Value`.
    fn push_header(&mut self, start: usize, end: usize) -> bool {
        let line = &self.buf[start..end];
        let Some(colon) = find_colon(line) else {
            return false;
        };
        if colon == 0 {
            return false;
        }
        let mut value = colon + 1;
        while value < line.len() && matches!(line[value], b' ' | b'\t') {
            value += 1;
        }
        let key = &line[..colon];
        // The three keys that shape a message are found here, once, by length first.
        let index = Some(self.fields.len());
        if key.len() == 5 {
            if self.event_field.is_none() && key.eq_ignore_ascii_case(b"Event") {
                self.event_field = index;
            }
        } else if key.len() == 8 {
            if self.response_field.is_none() && key.eq_ignore_ascii_case(b"Response") {
                self.response_field = index;
            } else if self.action_id_field.is_none() && key.eq_ignore_ascii_case(b"ActionID") {
                self.action_id_field = index;
            }
        }
        let base = start - self.msg_start;
        self.fields.push(Field {
            key_start: base as u32,
            key_end: (base + colon) as u32,
            value_start: (base + value) as u32,
            value_end: (base + line.len()) as u32,
        });
        self.headers = self.fields.len();
        true
    }

    /// Records a body line of a `Follows` response, completing it at the sentinel.
    fn push_body_line(
        &mut self,
        start: usize,
        end: usize,
        line_end: usize,
        emit: &mut impl FnMut(Parsed),
    ) {
        let line = &self.buf[start..end];
        let base = (start - self.msg_start) as u32;
        if line.ends_with(SENTINEL) {
            // Old Asterisk appends the sentinel right after output that lacks a final
            // newline: what precedes it on the line is the last output line.
            let text_len = (line.len() - SENTINEL.len()) as u32;
            if text_len > 0 {
                self.fields.push(Field::line(base, base + text_len));
            }
            self.complete(line_end, line_end, emit);
        } else {
            self.fields
                .push(Field::line(base, base + line.len() as u32));
        }
    }

    fn key_is(&self, index: usize, key: &str) -> bool {
        let field = &self.fields[index];
        let start = self.msg_start + field.key_start as usize;
        self.buf[start..self.msg_start + field.key_end as usize]
            .eq_ignore_ascii_case(key.as_bytes())
    }

    fn value_is(&self, index: usize, value: &str) -> bool {
        let field = &self.fields[index];
        let start = self.msg_start + field.value_start as usize;
        self.buf[start..self.msg_start + field.value_end as usize]
            .eq_ignore_ascii_case(value.as_bytes())
    }

    fn action_id(&self) -> Option<String> {
        self.action_id_field.map(|index| {
            let field = &self.fields[index];
            let start = self.msg_start + field.value_start as usize;
            String::from_utf8_lossy(&self.buf[start..self.msg_start + field.value_end as usize])
                .into_owned()
        })
    }

    fn too_large(&self) -> ParseError {
        if self.limit == self.limits.max_frame_size {
            ParseError::FrameTooLarge { limit: self.limit }
        } else {
            ParseError::OutputTooLarge { limit: self.limit }
        }
    }

    /// Emits the message from `msg_start` to `end` and starts the next at `next`.
    fn complete(&mut self, end: usize, next: usize, emit: &mut impl FnMut(Parsed)) {
        let bytes = &self.buf[self.msg_start..end];
        let follows = matches!(self.mode, Mode::FollowsHeaders | Mode::FollowsBody);
        let layout = Layout {
            headers: self.headers,
            follows,
            event: self.event_field,
            response: self.response_field,
            action_id: self.action_id_field,
        };
        // `is_ascii` first: it is the common case and several times cheaper.
        let message = if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() {
            Message::from_parts(Bytes::copy_from_slice(bytes), &self.fields, layout)
        } else {
            reparse_lossy(bytes, follows)
        };
        emit(Parsed::Message(message));
        self.reset_message(next);
    }

    /// Forgets the message in progress; the next one starts at `next`.
    fn reset_message(&mut self, next: usize) {
        self.mode = Mode::Headers;
        self.msg_start = next;
        self.line_start = next;
        self.fields.clear();
        self.headers = 0;
        self.event_field = None;
        self.response_field = None;
        self.action_id_field = None;
        self.limit = self.limits.max_frame_size;
    }

    /// Starts discarding the message in progress, whose bytes up to `line_end` (the
    /// end of a complete line) are already read.
    fn start_discard_at_line_end(&mut self, error: ParseError, line_end: usize) {
        self.line_start = line_end;
        let held = line_end - self.msg_start;
        self.start_discard_counted(error, held, LineSoFar::Empty);
    }

    /// Starts discarding the message in progress, all of whose buffered bytes are read;
    /// `line` tells how the last, incomplete line looks so far.
    fn start_discard(&mut self, error: ParseError, line: LineSoFar) {
        let held = self.buffered();
        self.start_discard_counted(error, held, line);
    }

    fn start_discard_counted(&mut self, error: ParseError, held: usize, line: LineSoFar) {
        let discard = Discard {
            error,
            bytes: held as u64,
            action_id: self.action_id(),
        };
        self.reset_message(self.msg_start);
        self.mode = Mode::Discarding { discard, line };
    }

    /// Skips `data` up to and including the next blank line; returns how many bytes
    /// it used. When the blank line is found the discard is emitted and parsing resumes.
    fn discard_scan(&mut self, data: &[u8], emit: &mut impl FnMut(Parsed)) -> usize {
        let Mode::Discarding { discard, line } = &mut self.mode else {
            return 0;
        };
        let mut pos = 0;
        while let Some(offset) = memchr(b'\n', &data[pos..]) {
            let newline = pos + offset;
            let blank = line.blank_with(&data[pos..newline]);
            pos = newline + 1;
            *line = LineSoFar::Empty;
            if blank {
                discard.bytes += pos as u64;
                let discard = discard.clone();
                emit(Parsed::Discarded(discard));
                self.mode = Mode::Headers;
                return pos;
            }
        }
        *line = line.extend(&data[pos..]);
        discard.bytes += data.len() as u64;
        data.len()
    }
}

/// The position of the first `:` in `line`. Keys are short (10 bytes on average), too
/// short for a SIMD search to pay off, so this tests 8 bytes per step in a `u64`
/// (the classic "has zero byte" trick on `word ^ b":::::::: "`).
fn find_colon(line: &[u8]) -> Option<usize> {
    find_byte::<b':'>(line)
}

/// The position of the first `\n`. Most AMI lines are short (about 30 bytes), where a
/// word-at-a-time search beats a SIMD call; longer lines go to `memchr`.
fn find_newline(haystack: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    if haystack.len() <= SHORT {
        return find_byte::<b'\n'>(haystack);
    }
    find_byte::<b'\n'>(&haystack[..SHORT])
        .or_else(|| memchr(b'\n', &haystack[SHORT..]).map(|i| SHORT + i))
}

/// The position of the first `NEEDLE` in `haystack`, 8 bytes per step.
#[inline(always)]
fn find_byte<const NEEDLE: u8>(line: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let needles: u64 = u64::from_ne_bytes([NEEDLE; 8]);
    let mut chunks = line.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let diff = u64::from_le_bytes(word) ^ needles;
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
        .position(|&b| b == NEEDLE)
        .map(|i| offset + i)
}

/// Rebuilds a message whose bytes are not valid UTF-8, replacing each invalid sequence
/// with U+FFFD. The replacement holds no `:` or `\n`, so the structure is unchanged.
fn reparse_lossy(bytes: &[u8], follows: bool) -> Message {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if !follows {
        text.push_str("\r\n");
    }
    let limits = Limits {
        max_frame_size: usize::MAX - 1,
        max_command_output: usize::MAX - 1,
    };
    let mut parser = Parser::new(limits);
    parser.mode = Mode::Headers;
    let mut rebuilt = None;
    parser.feed(text.as_bytes(), &mut |item| {
        if let Parsed::Message(message) = item {
            rebuilt = Some(message);
        }
    });
    // The bytes were one complete message before the replacement, so they still are.
    rebuilt.unwrap_or_else(Message::empty)
}

#[cfg(test)]
mod tests {
    use super::find_colon;

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
}
