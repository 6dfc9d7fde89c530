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
//!   the next blank line; a legacy `Follows` response over its limit (whose body may
//!   hold blank lines) up to the end of its `--END COMMAND--` line. The discarded bytes
//!   are counted but never buffered, and one [`Discard`] reports them when the discard
//!   ends; parsing then carries on (desync recovery). While a discard goes on,
//!   [`Parser::discard_in_progress`] shows it, with the `ActionID` of the message if it was
//!   read, so that the action waiting for that message can be failed at once.
//!
//! Memory and copies: lines are parsed where they lie in the caller's input, and each
//! complete message is copied once, into a buffer of its own. Only the message still
//! incomplete at the end of an input is copied into the parser, to be completed by the
//! next one; it never holds more than that message's limit plus one byte. When that
//! buffer empties with more than twice the frame limit of capacity (after a long command
//! output held across inputs), it is freed, so that the capacity it keeps stays within
//! that. [`Parser::discard_held`] gives up the message held (the connection does when its
//! memory budget cannot take those bytes).

use memchr::memchr;

use crate::error::ConfigError;
use crate::line_search::{HIGHS, LineScanner, RunScanner, find_colon, find_newline, is_ascii};
use crate::message::{Field, Layout, Message, StoredField, stored};

/// The largest limit the parser can honour: it records where each header lies in its
/// message as `u32` offsets, so no message may be longer than `u32::MAX` bytes. A
/// larger limit is refused by [`Limits::validate`] and lowered to this by
/// [`Parser::new`].
pub const MAX_LIMIT: usize = u32::MAX as usize;

/// Size limits of the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted, in bytes, counting line ends (default 64 KiB; at least
    /// 1 and at most [`MAX_LIMIT`]).
    pub max_frame_size: usize,
    /// Largest command response accepted, in bytes (default 1 MiB, plan §8; at least
    /// `max_frame_size` and at most [`MAX_LIMIT`]).
    pub max_command_output: usize,
}

impl Limits {
    /// Checks that the limits can work: a frame limit of at least one byte, a command
    /// output limit no smaller than the frame limit (a command response starts as an
    /// ordinary message and may only grow from there), and neither above
    /// [`MAX_LIMIT`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_size == 0 {
            return Err(ConfigError::ZeroMaxFrameSize);
        }
        if self.max_frame_size > MAX_LIMIT {
            return Err(ConfigError::MaxFrameSizeTooLarge {
                size: self.max_frame_size,
            });
        }
        if self.max_command_output > MAX_LIMIT {
            return Err(ConfigError::MaxCommandOutputTooLarge {
                size: self.max_command_output,
            });
        }
        if self.max_command_output < self.max_frame_size {
            return Err(ConfigError::MaxCommandOutputBelowFrameSize {
                max_command_output: self.max_command_output,
                max_frame_size: self.max_frame_size,
            });
        }
        Ok(())
    }

    /// The limits with each lowered to [`MAX_LIMIT`] at most.
    fn clamped(self) -> Limits {
        Limits {
            max_frame_size: self.max_frame_size.min(MAX_LIMIT),
            max_command_output: self.max_command_output.min(MAX_LIMIT),
        }
    }
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
#[non_exhaustive]
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
    /// The memory budget could not take the start of the message in progress, which
    /// had to be held until the rest arrived (see [`Parser::discard_held`]).
    #[error("memory budget exhausted ({used} of {limit} bytes in use)")]
    MemoryLimit {
        /// Bytes in use when the bytes were refused.
        used: usize,
        /// The budget's limit.
        limit: usize,
    },
}

impl ParseError {
    /// A short stable name for the error, e.g. for JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::FrameTooLarge { .. } => "frame_too_large",
            ParseError::OutputTooLarge { .. } => "output_too_large",
            ParseError::MalformedLine => "malformed_line",
            ParseError::Truncated => "truncated",
            ParseError::MemoryLimit { .. } => "memory_limit",
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

/// Bytes of the sentinel line kept across inputs: the sentinel and a `\r`.
const TAIL: usize = SENTINEL.len() + 1;

/// The last bytes of the line being discarded, to tell whether it ends with the
/// `--END COMMAND--` sentinel when the line is split across inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LineTail {
    bytes: [u8; TAIL],
    len: usize,
}

impl LineTail {
    /// The tail of a line whose bytes so far are `partial`.
    fn of(partial: &[u8]) -> LineTail {
        let mut tail = LineTail {
            bytes: [0; TAIL],
            len: 0,
        };
        tail.extend(partial);
        tail
    }

    /// The tail after `more` bytes of the same line.
    fn extend(&mut self, more: &[u8]) {
        let mut joined = [0; 2 * TAIL];
        let n = self.join(more, &mut joined);
        let keep = n.min(TAIL);
        self.bytes[..keep].copy_from_slice(&joined[n - keep..n]);
        self.len = keep;
    }

    /// Whether the line ends with the sentinel (before an optional `\r`) when `rest`
    /// is the rest of it, up to its `\n`.
    fn ends_with_sentinel(&self, rest: &[u8]) -> bool {
        let mut joined = [0; 2 * TAIL];
        let n = self.join(rest, &mut joined);
        let line = match &joined[..n] {
            [line @ .., b'\r'] => line,
            line => line,
        };
        line.ends_with(SENTINEL)
    }

    /// Writes the tail then the last [`TAIL`] bytes of `more` into `out`; returns
    /// their length.
    fn join(&self, more: &[u8], out: &mut [u8; 2 * TAIL]) -> usize {
        let more = &more[more.len().saturating_sub(TAIL)..];
        out[..self.len].copy_from_slice(&self.bytes[..self.len]);
        out[self.len..self.len + more.len()].copy_from_slice(more);
        self.len + more.len()
    }
}

/// Where a discard ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiscardEnd {
    /// At the next blank line (`line`: how the current line looks so far).
    BlankLine(LineSoFar),
    /// At the end of the next line ending with `--END COMMAND--`: the rest of a legacy
    /// `Follows` response, whose body may hold blank lines.
    Sentinel(LineTail),
}

impl DiscardEnd {
    /// The end of a discard that starts inside the message being read in `mode`,
    /// whose incomplete last line holds `partial` so far.
    fn for_message(mode: &Mode, partial: &[u8]) -> DiscardEnd {
        match mode {
            Mode::FollowsHeaders | Mode::FollowsBody => DiscardEnd::Sentinel(LineTail::of(partial)),
            _ => DiscardEnd::BlankLine(LineSoFar::Empty.extend(partial)),
        }
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
    /// Skipping input up to `end`.
    Discarding { discard: Discard, end: DiscardEnd },
}

const SENTINEL: &[u8] = b"--END COMMAND--";

/// The incremental parser. See the [module documentation](self).
///
/// `Debug` shows sizes, never the bytes held (they may carry secrets).
pub struct Parser {
    limits: Limits,
    mode: Mode,
    /// The message in progress at the end of the last input, from its first byte; empty
    /// when there is none. Complete lines are parsed in a *window*: the caller's input
    /// when nothing is held, otherwise this buffer (taken out while it is parsed).
    buf: Vec<u8>,
    /// Where the message in progress starts in the window (0 in `buf`).
    msg_start: usize,
    /// Where the next line starts in the window.
    line_start: usize,
    /// Fields of the message in progress, offsets relative to `msg_start`.
    fields: Vec<StoredField>,
    /// In `FollowsBody` mode, how many of `fields` are headers (the rest are body
    /// lines); in the other modes all are.
    headers: usize,
    /// Index in `fields` of the first `Event`, `Response` and `ActionID` headers.
    event_field: Option<usize>,
    response_field: Option<usize>,
    action_id_field: Option<usize>,
    /// The size limit of the message in progress.
    limit: usize,
    /// The OR of the bytes the line search loaded for the lines of the message in
    /// progress (with [`HIGHS`] set when a line was found another way): when no high
    /// bit is set the message is ASCII, and [`Parser::complete`] skips its own check.
    /// It may cover a few bytes past the message, which can only make that check run.
    high: u64,
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
    ///
    /// It never panics, whatever the limits: each is lowered to [`MAX_LIMIT`] at most
    /// (check them first with [`Limits::validate`]); a frame limit of zero discards
    /// every message.
    pub fn new(limits: Limits) -> Self {
        let limits = limits.clamped();
        Parser {
            limits,
            mode: Mode::Start,
            buf: Vec::new(),
            msg_start: 0,
            line_start: 0,
            fields: Vec::new(),
            headers: 0,
            event_field: None,
            response_field: None,
            action_id_field: None,
            limit: limits.max_frame_size,
            high: 0,
        }
    }

    /// The limits in force (each lowered to [`MAX_LIMIT`] at most).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes held for the message in progress (never more than its limit plus one).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Parses `data`, calling `emit` for every complete item, in stream order.
    pub fn feed(&mut self, mut data: &[u8], emit: &mut impl FnMut(Parsed)) {
        while !data.is_empty() {
            let used = if let Mode::Discarding { .. } = self.mode {
                // Discarded bytes are counted as they pass, never stored.
                self.discard_scan(data, emit)
            } else if self.buf.is_empty() {
                self.parse_in_place(data, emit)
            } else {
                self.extend_held(data, emit)
            };
            data = &data[used..];
        }
    }

    /// Ends the stream: a message still in progress is reported as truncated (or the
    /// discard in progress is reported), and the parser is reset for a new stream.
    pub fn finish(&mut self, emit: &mut impl FnMut(Parsed)) {
        match std::mem::replace(&mut self.mode, Mode::Start) {
            Mode::Discarding { discard, .. } => emit(Parsed::Discarded(discard)),
            _ if !self.buf.is_empty() => emit(Parsed::Discarded(Discard {
                error: ParseError::Truncated,
                bytes: self.buf.len() as u64,
                action_id: self.action_id(&self.buf),
            })),
            _ => {}
        }
        *self = Parser::new(self.limits);
    }

    /// Gives up the message in progress, whose start the parser holds (the
    /// [`buffered`](Self::buffered) bytes): those bytes are freed at once, and the rest
    /// of the message, up to its blank line, is skipped as it arrives and reported as
    /// one [`Discard`] with `error` (its `bytes` count the held ones too). Nothing
    /// happens when nothing is held.
    pub fn discard_held(&mut self, error: ParseError) {
        if self.buf.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        let held = buf.len();
        let partial = &buf[self.line_start..];
        self.start_discard(&buf, error, held, partial);
        self.clear_held(&mut buf);
        self.msg_start = 0;
        self.line_start = 0;
        self.buf = buf;
    }

    /// Empties `buf`, the held message's buffer, and frees it when it grew past twice
    /// the frame limit.
    fn clear_held(&self, buf: &mut Vec<u8>) {
        buf.clear();
        if buf.capacity() > 2 * (self.limits.max_frame_size + 1) {
            *buf = Vec::new();
        }
    }

    /// Parses the lines of `data` where they lie, nothing being held: each message is
    /// copied once, from the input into its own buffer. Returns how many bytes it used:
    /// up to the end of the line that started a discard, or all of `data`, whose
    /// incomplete last message is then held (or discarded, when already over its limit).
    fn parse_in_place(&mut self, data: &[u8], emit: &mut impl FnMut(Parsed)) -> usize {
        self.msg_start = 0;
        self.line_start = 0;
        let mut lines = LineScanner::default();
        loop {
            if matches!(self.mode, Mode::Headers) {
                self.header_run(data, emit);
            }
            let mut seen = 0;
            let Some(found) = lines.next(data, self.line_start, &mut seen) else {
                break;
            };
            self.high |= seen;
            let newline = self.line_start + found.newline;
            self.handle_line(data, newline, found.colon, emit);
            if let Mode::Discarding { .. } = self.mode {
                // The caller skips the rest up to the next blank line.
                self.msg_start = 0;
                self.line_start = 0;
                return newline + 1;
            }
        }
        let held = data.len() - self.msg_start;
        if held > self.limit {
            // The message is over its limit before its end arrived. (Its complete lines
            // were each within it, so the incomplete last line took it over.)
            let partial = &data[self.line_start..];
            self.start_discard(data, self.too_large(), held, partial);
            self.msg_start = 0;
            self.line_start = 0;
        } else {
            self.buf.extend_from_slice(&data[self.msg_start..]);
            self.line_start -= self.msg_start;
            self.msg_start = 0;
        }
        data.len()
    }

    /// Adds the start of `data` to the message held from earlier input, up to the end
    /// of its incomplete line, and handles that line. Returns how many bytes it used.
    ///
    /// The bytes added are the fewest that tell how the held message goes on: once it
    /// ends, the rest of the input is parsed in place. Never more are held than the
    /// message's limit plus one byte: past that it is discarded anyway.
    fn extend_held(&mut self, data: &[u8], emit: &mut impl FnMut(Parsed)) -> usize {
        let room = self
            .limit
            .saturating_add(1)
            .saturating_sub(self.buf.len())
            .max(1);
        let now = &data[..room.min(data.len())];
        // The held bytes hold no `\n` past `line_start` (that line would have been
        // handled), so only the new bytes are searched.
        // The held message's lines were not all seen by the search: `complete` checks
        // the whole message.
        self.high |= HIGHS;
        let newline = find_newline(now, &mut 0);
        let used = newline.map_or(now.len(), |offset| offset + 1);
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(&now[..used]);
        if newline.is_some() {
            let colon = find_colon(&buf[self.line_start..]);
            self.handle_line(&buf, buf.len() - 1, colon, emit);
        }
        // A line ends a message (or starts its discard) only at the line's end, here the
        // end of `buf`; otherwise the message goes on from the start of `buf`.
        let ended = self.msg_start == buf.len();
        if !ended && !self.discarding() && buf.len() > self.limit {
            // The message is over its limit before its end arrived.
            let partial = &buf[self.line_start..];
            self.start_discard(&buf, self.too_large(), buf.len(), partial);
        }
        if ended || self.discarding() {
            self.clear_held(&mut buf);
            self.msg_start = 0;
            self.line_start = 0;
        }
        self.buf = buf;
        used
    }

    fn discarding(&self) -> bool {
        matches!(self.mode, Mode::Discarding { .. })
    }

    /// Takes the lines of `data` from `line_start` on while they are the common case,
    /// in `Headers` mode: header lines of an event within its frame limit, and the blank
    /// lines that end its messages. Returns at the first line it leaves to
    /// [`Parser::handle_line`] (a `Response` header, a malformed or long line, a line
    /// over the limit, the last line of the input), with the parser where that line
    /// starts.
    ///
    /// This is the parser's hot loop: it does what [`Parser::handle_line`] would for
    /// those lines, with the line's position in locals instead of the parser's fields,
    /// and the `Response` and `Output` rules left out (they apply only from a
    /// `Response` header on, which returns).
    #[inline(always)]
    fn header_run(&mut self, data: &[u8], emit: &mut impl FnMut(Parsed)) {
        if self.response_field.is_some() && self.event_field.is_none() {
            // A response: each of its lines may be `Output` (see `header_line`).
            return;
        }
        let mut lines = RunScanner::default();
        let mut start = self.line_start;
        let mut msg_start = self.msg_start;
        // Where the message in progress would pass its limit.
        let mut limit_end = msg_start + self.limit;
        while let Some((newline, colon)) = lines.next(data, start, &mut self.high) {
            let line_end = newline + 1;
            if line_end > limit_end {
                break;
            }
            // Blank: `\n` or `\r\n`. Other lines keep their `\r` (it is left out of the
            // value when the value is read, see `Field::value`).
            if newline - start < 2 && (newline == start || data[start] == b'\r') {
                // A blank line: the end of the message, or of an empty one.
                if !self.fields.is_empty() {
                    self.msg_start = msg_start;
                    self.complete(data, start, line_end, emit);
                    lines.start_message(&mut self.high);
                }
                msg_start = line_end;
                limit_end = msg_start + self.limit;
                start = line_end;
                continue;
            }
            // No `:` in the line (the first one found may lie past it), or an empty key:
            // malformed, for `handle_line` to discard.
            let Some(colon) = colon.filter(|&colon| colon > start && colon < newline) else {
                break;
            };
            // The key's bytes are read only when its length is one of the keys that
            // shape a message.
            let key = || &data[start..colon];
            let index = Some(self.fields.len());
            if colon - start == 5 {
                if self.event_field.is_none() && key().eq_ignore_ascii_case(b"Event") {
                    self.event_field = index;
                }
            } else if colon - start == 8 {
                if key().eq_ignore_ascii_case(b"Response") {
                    break;
                }
                if self.action_id_field.is_none() && key().eq_ignore_ascii_case(b"ActionID") {
                    self.action_id_field = index;
                }
            }
            // (The key's start is implied: it follows the line before.)
            self.fields.push(stored(
                (colon - msg_start) as u32,
                (newline - msg_start) as u32,
            ));
            start = line_end;
        }
        self.msg_start = msg_start;
        self.line_start = start;
    }

    /// Handles the complete line of `window` from `line_start` to the `\n` at `newline`.
    ///
    /// Inlined into the line loops: most lines are headers of a message in progress,
    /// handled here without a call; the rest go to [`Parser::other_line`].
    #[inline(always)]
    fn handle_line(
        &mut self,
        window: &[u8],
        newline: usize,
        colon: Option<usize>,
        emit: &mut impl FnMut(Parsed),
    ) {
        let start = self.line_start;
        let line_end = newline + 1;
        self.line_start = line_end;
        let line = match &window[start..newline] {
            [line @ .., b'\r'] => line,
            line => line,
        };
        let end = start + line.len();
        // The limit that applies to this line is the one set by the lines before it,
        // so that the verdict is the same however the input was split.
        if line_end - self.msg_start > self.limit {
            self.line_too_large(window, line, line_end, emit);
        } else if !line.is_empty() && matches!(self.mode, Mode::Headers) {
            self.header_line(window, line, start, colon, line_end);
        } else {
            self.other_line(window, start, end, line_end, emit);
        }
    }

    /// Handles `line` (its `\r` stripped), a complete line that takes the message in
    /// progress over its limit.
    #[cold]
    #[inline(never)]
    fn line_too_large(
        &mut self,
        window: &[u8],
        line: &[u8],
        line_end: usize,
        emit: &mut impl FnMut(Parsed),
    ) {
        let error = self.too_large();
        let ends_message = match self.mode {
            // A legacy `Follows` body may hold blank lines: it ends at the sentinel.
            Mode::FollowsHeaders | Mode::FollowsBody => line.ends_with(SENTINEL),
            _ => line.is_empty(),
        };
        if ends_message {
            // The line that ends the discard is this one.
            let bytes = (line_end - self.msg_start) as u64;
            emit(Parsed::Discarded(Discard {
                error,
                bytes,
                action_id: self.action_id(window),
            }));
            self.reset_message(line_end);
        } else {
            self.start_discard_at_line_end(window, error, line_end);
        }
    }

    /// Handles `line`, a header line (not blank) of `window` at `start`, in `Headers`
    /// mode.
    #[inline(always)]
    fn header_line(
        &mut self,
        window: &[u8],
        line: &[u8],
        start: usize,
        colon: Option<usize>,
        line_end: usize,
    ) {
        if !self.push_header(line, start, colon, line_end) {
            self.start_discard_at_line_end(window, ParseError::MalformedLine, line_end);
            return;
        }
        let last = self.fields.len() - 1;
        // `response_field` is set by the first `Response` header, so for the first field
        // it tells whether its key is `Response`, without comparing the key again.
        if last == 0 && self.response_field == Some(0) && self.value_is(window, last, "Follows") {
            self.mode = Mode::FollowsHeaders;
            self.limit = self.limits.max_command_output;
        } else if self.response_field.is_some()
            && self.event_field.is_none()
            && self.key_is(window, last, "Output")
        {
            self.limit = self.limits.max_command_output;
        }
    }

    /// Handles every line [`Parser::handle_line`] does not: blank lines, the first line
    /// of the stream, and lines of a legacy `Follows` response.
    #[inline(never)]
    fn other_line(
        &mut self,
        window: &[u8],
        start: usize,
        end: usize,
        line_end: usize,
        emit: &mut impl FnMut(Parsed),
    ) {
        match self.mode {
            Mode::Start if start == end => {
                self.mode = Mode::Headers;
                self.msg_start = line_end;
            }
            Mode::Start if !window[start..end].contains(&b':') => {
                let text = String::from_utf8_lossy(&window[start..end]).into_owned();
                emit(Parsed::Banner(text));
                self.mode = Mode::Headers;
                self.msg_start = line_end;
            }
            Mode::Headers if start == end => {
                if self.fields.is_empty() {
                    // An empty message: skip it.
                    self.msg_start = line_end;
                } else {
                    self.complete(window, start, line_end, emit);
                }
            }
            Mode::Start | Mode::Headers => {
                self.mode = Mode::Headers;
                let line = &window[start..end];
                self.header_line(window, line, start, find_colon(line), line_end);
            }
            Mode::FollowsHeaders => {
                let checkpoint = self.fields.len();
                let line = &window[start..end];
                if self.push_header(line, start, find_colon(line), line_end)
                    && (self.key_is(window, checkpoint, "Privilege")
                        || self.key_is(window, checkpoint, "ActionID"))
                {
                    return;
                }
                // Not one of the headers: the body starts here.
                self.fields.truncate(checkpoint);
                self.headers = checkpoint;
                self.action_id_field = self.action_id_field.filter(|&i| i < checkpoint);
                self.event_field = self.event_field.filter(|&i| i < checkpoint);
                self.mode = Mode::FollowsBody;
                self.push_body_line(window, start, end, line_end, emit);
            }
            Mode::FollowsBody => self.push_body_line(window, start, end, line_end, emit),
            // Discarded bytes are scanned by `discard_scan`, never here.
            Mode::Discarding { .. } => {}
        }
    }

    /// Records `line` (without its line ending), a header line that starts at `start`
    /// in the window and whose `\n` is just before `line_end`; false when it is not
    /// `Key: Value`.
    #[inline(always)]
    fn push_header(
        &mut self,
        line: &[u8],
        start: usize,
        colon: Option<usize>,
        line_end: usize,
    ) -> bool {
        let Some(colon) = colon else {
            return false;
        };
        if colon == 0 {
            return false;
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
        // The `\n`, as the header run stores it: one field table for a message however
        // the input was split.
        let newline = line_end - 1 - self.msg_start;
        self.fields
            .push(stored((base + colon) as u32, newline as u32));
        true
    }

    /// Records a body line of a `Follows` response, completing it at the sentinel.
    fn push_body_line(
        &mut self,
        window: &[u8],
        start: usize,
        end: usize,
        line_end: usize,
        emit: &mut impl FnMut(Parsed),
    ) {
        let line = &window[start..end];
        let base = (start - self.msg_start) as u32;
        if line.ends_with(SENTINEL) {
            // Old Asterisk appends the sentinel right after output that lacks a final
            // newline: what precedes it on the line is the last output line.
            let text_len = (line.len() - SENTINEL.len()) as u32;
            if text_len > 0 {
                self.fields.push(stored(base, base + text_len));
            }
            self.complete(window, line_end, line_end, emit);
        } else {
            let newline = (line_end - 1 - self.msg_start) as u32;
            self.fields.push(stored(base, newline));
        }
    }

    /// The key of field `index` of the message in progress, which lies in `window`.
    fn key_of<'w>(&self, window: &'w [u8], index: usize) -> &'w [u8] {
        let field = Field::at(self.fields.as_flattened(), index);
        &window[self.msg_start + field.key_start as usize..self.msg_start + field.key_end as usize]
    }

    /// The value of field `index` of the message in progress, which lies in `window`.
    fn value_of<'w>(&self, window: &'w [u8], index: usize) -> &'w [u8] {
        let text = &window[self.msg_start..];
        let field = Field::at(self.fields.as_flattened(), index);
        &text[field.value(text)]
    }

    fn key_is(&self, window: &[u8], index: usize, key: &str) -> bool {
        self.key_of(window, index)
            .eq_ignore_ascii_case(key.as_bytes())
    }

    fn value_is(&self, window: &[u8], index: usize, value: &str) -> bool {
        self.value_of(window, index)
            .eq_ignore_ascii_case(value.as_bytes())
    }

    fn action_id(&self, window: &[u8]) -> Option<String> {
        self.action_id_field
            .map(|index| String::from_utf8_lossy(self.value_of(window, index)).into_owned())
    }

    fn too_large(&self) -> ParseError {
        if self.limit == self.limits.max_frame_size {
            ParseError::FrameTooLarge { limit: self.limit }
        } else {
            ParseError::OutputTooLarge { limit: self.limit }
        }
    }

    /// Emits the message of `window` from `msg_start` to `end` and starts the next at
    /// `next`.
    fn complete(&mut self, window: &[u8], end: usize, next: usize, emit: &mut impl FnMut(Parsed)) {
        let bytes = &window[self.msg_start..end];
        let follows = matches!(self.mode, Mode::FollowsHeaders | Mode::FollowsBody);
        let headers = match self.mode {
            Mode::FollowsBody => self.headers,
            _ => self.fields.len(),
        };
        let layout = Layout {
            headers,
            follows,
            event: self.event_field,
            response: self.response_field,
            action_id: self.action_id_field,
        };
        // ASCII first: it is the common case, usually known from the line search
        // already, and otherwise several times cheaper to check than UTF-8.
        let ascii = self.high & HIGHS == 0 || is_ascii(bytes);
        let message = if ascii || std::str::from_utf8(bytes).is_ok() {
            Message::from_parts(bytes, &self.fields, layout)
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
        self.high = 0;
    }

    /// Starts discarding the message in progress, whose bytes in `window` up to
    /// `line_end` (the end of a complete line) are already read.
    fn start_discard_at_line_end(&mut self, window: &[u8], error: ParseError, line_end: usize) {
        self.line_start = line_end;
        let held = line_end - self.msg_start;
        self.start_discard(window, error, held, &[]);
    }

    /// Starts discarding the message in progress, of which `held` bytes are read;
    /// `partial` holds its last, incomplete line so far.
    fn start_discard(&mut self, window: &[u8], error: ParseError, held: usize, partial: &[u8]) {
        let discard = Discard {
            error,
            bytes: held as u64,
            action_id: self.action_id(window),
        };
        let end = DiscardEnd::for_message(&self.mode, partial);
        self.reset_message(self.msg_start);
        self.mode = Mode::Discarding { discard, end };
    }

    /// The discard in progress, if the parser is skipping input: why, the bytes
    /// skipped so far, and the `ActionID` of the message when it was read before the
    /// message went bad. Its [`Parsed::Discarded`] comes when the discard ends (at the
    /// next blank line, or for a legacy `Follows` response at its `--END COMMAND--`
    /// line), which may be much later; this lets the caller fail the action waiting
    /// for that message at once.
    pub fn discard_in_progress(&self) -> Option<&Discard> {
        match &self.mode {
            Mode::Discarding { discard, .. } => Some(discard),
            _ => None,
        }
    }

    /// Skips `data` up to and including the line that ends the discard (the next
    /// blank line, or the sentinel line); returns how many bytes it used. When that
    /// line is found the discard is emitted and parsing resumes.
    fn discard_scan(&mut self, data: &[u8], emit: &mut impl FnMut(Parsed)) -> usize {
        let Mode::Discarding { discard, end } = &mut self.mode else {
            return 0;
        };
        let mut pos = 0;
        while let Some(offset) = memchr(b'\n', &data[pos..]) {
            let newline = pos + offset;
            let rest = &data[pos..newline];
            let ends = match end {
                DiscardEnd::BlankLine(line) => {
                    let blank = line.blank_with(rest);
                    *line = LineSoFar::Empty;
                    blank
                }
                DiscardEnd::Sentinel(tail) => {
                    let sentinel = tail.ends_with_sentinel(rest);
                    *tail = LineTail::of(&[]);
                    sentinel
                }
            };
            pos = newline + 1;
            if ends {
                discard.bytes += pos as u64;
                let discard = discard.clone();
                emit(Parsed::Discarded(discard));
                self.mode = Mode::Headers;
                return pos;
            }
        }
        match end {
            DiscardEnd::BlankLine(line) => *line = line.extend(&data[pos..]),
            DiscardEnd::Sentinel(tail) => tail.extend(&data[pos..]),
        }
        discard.bytes += data.len() as u64;
        data.len()
    }
}

/// Rebuilds a message whose bytes are not valid UTF-8, replacing each invalid sequence
/// with U+FFFD. The replacement holds no `:` or `\n`, so the structure is unchanged.
fn reparse_lossy(bytes: &[u8], follows: bool) -> Message {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if !follows {
        text.push_str("\r\n");
    }
    let limits = Limits {
        max_frame_size: MAX_LIMIT,
        max_command_output: MAX_LIMIT,
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
    use super::{Limits, Parsed, Parser};

    fn parse_split(limits: Limits, input: &[u8], cut: usize) -> (Vec<Parsed>, Vec<usize>) {
        let mut parser = Parser::new(limits);
        let mut items = Vec::new();
        let mut held = Vec::new();
        for piece in [&input[..cut], &input[cut..]] {
            parser.feed(piece, &mut |item| items.push(item));
            held.push(parser.buffered());
        }
        parser.finish(&mut |item| items.push(item));
        (items, held)
    }

    /// A message held across inputs (completed line by line from the next input) and a
    /// message parsed in place give the same items, also when a line changes the limit
    /// (`Output` raises it, or lowers it when `max_command_output` is the smaller).
    #[test]
    fn held_and_in_place_messages_agree_at_every_cut() {
        let input: &[u8] = b"Asterisk Call Manager/11.0.0\r\n\
            Response: Success\r\nActionID: 1\r\nOutput: line one\r\nOutput: two\r\n\r\n\
            Event: Long\r\nValue: 0123456789012345678901234567890123456789\r\n\r\n\
            Response: Follows\r\nPrivilege: Command\r\nbody\r\n\r\n--END COMMAND--\r\n\r\n\
            bad line\r\nmore\r\n\r\nEvent: A\r\n\r\nEvent: Cut\r\nKey: va";
        for (frame, command) in [(1024, 4096), (40, 160), (60, 20), (45, 45), (10, 10)] {
            let limits = Limits {
                max_frame_size: frame,
                max_command_output: command,
            };
            let (whole, _) = parse_split(limits, input, input.len());
            for cut in 0..=input.len() {
                let (split, held) = parse_split(limits, input, cut);
                assert_eq!(split, whole, "limits {limits:?}, cut at {cut}");
                let ceiling = frame.max(command) + 1;
                assert!(held.iter().all(|&bytes| bytes <= ceiling), "{held:?}");
            }
        }
    }

    /// A non-ASCII byte anywhere in a message (in a short line, at the end of a word,
    /// in a line long enough for `memchr`, in the last line), valid UTF-8 or not, is
    /// seen, whether the message is parsed in place or held across inputs: the text is
    /// kept, or replaced by U+FFFD, never taken for ASCII.
    #[test]
    fn non_ascii_bytes_are_seen_at_every_offset() {
        // "Key: " and "\r" make lines 6 bytes longer: around 8, 32 and 64 bytes, and long.
        let value_lens = [1, 2, 3, 6, 7, 8, 15, 25, 26, 27, 40, 57, 58, 59, 70, 140];
        for &len in &value_lens {
            for at in 0..len {
                for odd in [&b"\xe9"[..], "\u{e9}".as_bytes()] {
                    let mut value = vec![b'v'; len];
                    value.splice(at..at + 1, odd.iter().copied());
                    let mut input = b"Event: A\r\nKey: ".to_vec();
                    input.extend_from_slice(&value);
                    input.extend_from_slice(b"\r\nLast: x\r\n\r\nEvent: Next\r\n\r\n");
                    let expected = String::from_utf8_lossy(&value).into_owned();
                    for cut in [input.len(), 3, 14, 20, 30, 50] {
                        let cut = cut.min(input.len());
                        let (items, _) = parse_split(Limits::default(), &input, cut);
                        let [Parsed::Message(first), Parsed::Message(next)] = &items[..] else {
                            panic!("{items:?}");
                        };
                        assert_eq!(first.get("Key"), Some(expected.as_str()), "cut {cut}");
                        assert!(first.as_str().ends_with("Last: x\r\n"), "cut {cut}");
                        assert_eq!(next.event_name(), Some("Next"));
                    }
                }
            }
        }
    }
}
