//! A parsed AMI message: one buffer, ordered headers, zero-copy views.
//!
//! The parser copies each complete message into one buffer of its own, followed by a
//! table of where every header's key and value lie inside it (one allocation per
//! message). Lookups are case-insensitive on the key (PROTOCOL-NOTES 3); iteration keeps
//! wire order and wire case; repeated keys (`Variable`, `Output`, `ChanVariable`, ...)
//! are all kept.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;

/// What a message is, decided by its headers (PROTOCOL-NOTES 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Has an `Event:` header (even when it also has `Response:`, like `OriginateResponse`).
    Event,
    /// Has a `Response:` header and no `Event:` header.
    Response,
    /// Has neither.
    Unknown,
}

/// Where one header or body line lies inside the message buffer (byte offsets).
///
/// A message's fields are its lines, one after the other, so a table stores only where
/// each key and each line ends ([`StoredField`]): a field's key starts one byte after
/// the `\n` of the field before it (the first at 0). Where the value starts and ends
/// is not stored exactly either: the parser's hot loop would find both for every
/// header, and only the values asked for need them ([`Field::value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) key_start: u32,
    /// The `:` of a header; `key_start` for a body line (which has no key).
    pub(crate) key_end: u32,
    /// The `\n` that ends the line (a `\r` before it is not part of the value); for
    /// the last body line of a legacy response, which the sentinel ends, where the
    /// sentinel starts.
    pub(crate) end: u32,
}

/// A field as stored in a message's field table ([`stored`]): its `key_end`
/// and its `end`, two native-endian `u32`s (the table never leaves the process). The
/// parser keeps the fields of the message in progress in this form, so that the table
/// is copied into the message in one piece.
pub(crate) type StoredField = [u8; Field::SIZE];

impl Field {
    /// Size of a field in a message's field table.
    pub(crate) const SIZE: usize = 8;

    /// Where the value lies in `text` (the bytes the offsets count in, from the
    /// message's start): from after the `:` and the spaces and tabs that follow it
    /// (for a body line, from the line's start) to the line's end, without its `\r`.
    /// (A header's key is never empty, so `key_end == key_start` marks a body line.)
    #[inline]
    pub(crate) fn value(self, text: &[u8]) -> Range<usize> {
        let (start, mut end) = (self.key_start as usize, self.end as usize);
        // (The byte before a line's start is the `\n` of the line before.)
        if text.get(end.wrapping_sub(1)..=end) == Some(b"\r\n") {
            end -= 1;
        }
        if self.key_end == self.key_start {
            return start..end;
        }
        let mut value = self.key_end as usize + 1;
        while value < end && matches!(text[value], b' ' | b'\t') {
            value += 1;
        }
        value..end
    }

    /// Field `index` of `table`, a field table of [`StoredField`]s.
    #[inline]
    pub(crate) fn at(table: &[u8], index: usize) -> Self {
        let at = index * Field::SIZE;
        let key_start = match index {
            0 => 0,
            _ => offsets(&table[at - Field::SIZE..at])[1] + 1,
        };
        let [key_end, end] = offsets(&table[at..at + Field::SIZE]);
        Field {
            key_start,
            key_end,
            end,
        }
    }
}

/// The stored form of a field whose key ends at `key_end` and whose line at `end`
/// (where its key starts is implied, see [`Field`]). A body line of a legacy
/// `Response: Follows` message has no key: its `key_end` is where the line starts.
#[inline(always)]
pub(crate) fn stored(key_end: u32, end: u32) -> StoredField {
    let mut bytes = [0; Field::SIZE];
    bytes[..4].copy_from_slice(&key_end.to_ne_bytes());
    bytes[4..].copy_from_slice(&end.to_ne_bytes());
    bytes
}

/// The `u32` stored in `bytes` (4 of them).
#[inline(always)]
fn offset(bytes: &[u8]) -> u32 {
    u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The two `u32`s of a stored field.
#[inline(always)]
fn offsets(bytes: &[u8]) -> [u32; 2] {
    // One length check up front spares one per offset.
    let bytes = &bytes[..Field::SIZE];
    [offset(&bytes[..4]), offset(&bytes[4..])]
}

/// The fields of a field table in order, each key's start taken from the line before.
#[derive(Debug, Clone)]
pub(crate) struct Fields<'t> {
    table: std::slice::ChunksExact<'t, u8>,
    /// Where the next field's key starts.
    next_start: u32,
}

impl<'t> Fields<'t> {
    /// The fields of `table`.
    pub(crate) fn of(table: &'t [u8]) -> Self {
        Fields {
            table: table.chunks_exact(Field::SIZE),
            next_start: 0,
        }
    }
}

impl Iterator for Fields<'_> {
    type Item = Field;

    #[inline]
    fn next(&mut self) -> Option<Field> {
        let [key_end, end] = offsets(self.table.next()?);
        let field = Field {
            key_start: self.next_start,
            key_end,
            end,
        };
        self.next_start = end.wrapping_add(1);
        Some(field)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.table.size_hint()
    }
}

impl ExactSizeIterator for Fields<'_> {}

/// Where the parser found the headers that give a message its shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// `fields[..headers]` are headers; the rest are legacy `Follows` body lines.
    pub(crate) headers: usize,
    /// A legacy `Response: Follows` message.
    pub(crate) follows: bool,
    /// Index of the first `Event` header.
    pub(crate) event: Option<usize>,
    /// Index of the first `Response` header.
    pub(crate) response: Option<usize>,
    /// Index of the first `ActionID` header.
    pub(crate) action_id: Option<usize>,
}

/// One AMI message: an event or a response.
///
/// Cheap to clone (the buffer is reference counted). Values are UTF-8: the rare
/// non-UTF-8 byte from Asterisk is replaced by U+FFFD when the message is built,
/// so every accessor returns `&str`.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The message's bytes, then its field table: where each header (and each legacy
    /// `Follows` body line) lies in those bytes, [`Field::SIZE`] bytes per field. Both in
    /// one buffer so that a message costs one allocation.
    buf: Bytes,
    /// How many bytes of `buf` are the message's (the field table follows).
    len: u32,
    /// Fields `..headers` are headers; the rest are legacy `Follows` body lines.
    headers: u32,
    kind: MessageKind,
    follows: bool,
    /// Index in `fields` of the `Event`/`Response` header that gave the kind.
    name_index: u32,
    action_id_index: Option<u32>,
}

impl Message {
    /// Builds a message from its UTF-8 bytes (copied), the fields found in them and
    /// where the parser saw the headers that matter.
    #[inline]
    pub(crate) fn from_parts(bytes: &[u8], fields: &[StoredField], layout: Layout) -> Self {
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        let table = fields.as_flattened();
        let mut buf = Vec::with_capacity(bytes.len() + table.len());
        buf.extend_from_slice(bytes);
        buf.extend_from_slice(table);
        let (kind, name_index) = match (layout.event, layout.response) {
            (Some(index), _) => (MessageKind::Event, index),
            (None, Some(index)) => (MessageKind::Response, index),
            (None, None) => (MessageKind::Unknown, 0),
        };
        Message {
            // Full to capacity, so `Bytes` takes the allocation over as it is.
            buf: Bytes::from(buf),
            len: bytes.len() as u32,
            headers: layout.headers as u32,
            kind,
            follows: layout.follows,
            name_index: name_index as u32,
            action_id_index: layout.action_id.map(|index| index as u32),
        }
    }

    /// A message with no headers (a stand-in that is never handed out).
    pub(crate) fn empty() -> Self {
        Message::from_parts(&[], &[], Layout::default())
    }

    /// A copy with every header value replaced by `mask(Some(key), value)` and every
    /// legacy body line by `mask(None, line)`; `None` (and no allocation) when `mask`
    /// changed nothing. Keys, separators and line endings are kept byte for byte, so
    /// the copy has the same headers, kind and ActionID as the original. (As on the
    /// wire, blanks that a new header value starts with are read as part of the
    /// separator; the masks of [`Redactor`](crate::redact::Redactor) start with none.)
    pub(crate) fn map_values<'m>(
        &'m self,
        mut mask: impl FnMut(Option<&'m str>, &'m str) -> Cow<'m, str>,
    ) -> Option<Message> {
        let headers = self.headers as usize;
        let key_of = |index: usize, field: Field| {
            (index < headers).then(|| self.slice(field.key_start, field.key_end))
        };
        let changed = self.fields().enumerate().any(|(index, field)| {
            let value = self.value(field);
            mask(key_of(index, field), value) != value
        });
        if !changed {
            return None;
        }
        let mut bytes = Vec::with_capacity(self.len as usize + 64);
        let mut fields = Vec::with_capacity(self.fields().len());
        // Bytes of the original copied so far.
        let mut copied = 0;
        for (index, field) in self.fields().enumerate() {
            let value = field.value(&self.buf);
            let shown = mask(key_of(index, field), self.text(value.clone()));
            // The key and separator (and the line ending before them) as they were.
            let base = bytes.len() as u32;
            let moved = |offset: u32| base + (offset - copied);
            bytes.extend_from_slice(&self.buf[copied as usize..value.start]);
            bytes.extend_from_slice(shown.as_bytes());
            // The line's end moves with the value: the `\r` between them, if any, is
            // copied with the next piece.
            let end = bytes.len() as u32 + (field.end - value.end as u32);
            fields.push(stored(moved(field.key_end), end));
            copied = value.end as u32;
        }
        bytes.extend_from_slice(&self.buf[copied as usize..self.len as usize]);
        let name = Some(self.name_index as usize);
        let layout = Layout {
            headers,
            follows: self.follows,
            event: name.filter(|_| self.kind == MessageKind::Event),
            response: name.filter(|_| self.kind == MessageKind::Response),
            action_id: self.action_id_index.map(|index| index as usize),
        };
        Some(Message::from_parts(&bytes, &fields, layout))
    }

    fn slice(&self, start: u32, end: u32) -> &str {
        // Every message buffer is valid UTF-8 and every offset lies on a char
        // boundary (they sit next to ASCII ':' / ' ' / '\n'), so this never fails.
        std::str::from_utf8(&self.buf[start as usize..end as usize]).unwrap_or_default()
    }

    /// The value of `field`, one of this message's.
    #[inline]
    fn value(&self, field: Field) -> &str {
        self.text(field.value(&self.buf))
    }

    /// The bytes of `range`, as text.
    fn text(&self, range: Range<usize>) -> &str {
        self.slice(range.start as u32, range.end as u32)
    }

    /// The fields, in wire order.
    fn fields(&self) -> Fields<'_> {
        Fields::of(&self.buf[self.len as usize..])
    }

    fn field(&self, index: u32) -> Field {
        Field::at(&self.buf[self.len as usize..], index as usize)
    }

    fn value_at(&self, index: u32) -> &str {
        self.value(self.field(index))
    }

    /// Whether this is an event, a response or neither.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The event name (the `Event:` value), for events.
    pub fn event_name(&self) -> Option<&str> {
        (self.kind == MessageKind::Event).then(|| self.value_at(self.name_index))
    }

    /// The `Response:` value (`Success`, `Error`, `Follows`, `Goodbye`, or for an
    /// `OriginateResponse` event `Success`/`Failure`).
    pub fn response(&self) -> Option<&str> {
        match self.kind {
            MessageKind::Response => Some(self.value_at(self.name_index)),
            _ => self.get("Response"),
        }
    }

    /// The `ActionID` value, if the message carries one.
    pub fn action_id(&self) -> Option<&str> {
        self.action_id_index.map(|index| self.value_at(index))
    }

    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields_of(key).next().map(|field| self.value(field))
    }

    /// Every value of `key` (case-insensitive), in wire order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields_of(key).map(|field| self.value(field))
    }

    /// The header fields whose key is `key` (case-insensitive), in wire order. Keys are
    /// compared as bytes: only the values asked for are made `&str`.
    fn fields_of<'a>(&'a self, key: &'a str) -> impl Iterator<Item = Field> + 'a {
        self.fields()
            .take(self.headers as usize)
            .filter(move |field| {
                // Lengths first: most keys differ in length, and then no bytes are read.
                (field.key_end - field.key_start) as usize == key.len()
                    && self.buf[field.key_start as usize..field.key_end as usize]
                        .eq_ignore_ascii_case(key.as_bytes())
            })
    }

    /// Every header as `(key, value)`, in wire order and with the key's wire case.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.fields().take(self.headers as usize).map(|field| {
            (
                self.slice(field.key_start, field.key_end),
                self.value(field),
            )
        })
    }

    /// [`headers`](Self::headers) as bytes, without the UTF-8 check each `&str` costs:
    /// for writers that copy them out (JSON, a wire format). They are UTF-8 all the
    /// same (see the type's documentation).
    pub fn header_bytes(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        self.fields().take(self.headers as usize).map(|field| {
            (
                &self.buf[field.key_start as usize..field.key_end as usize],
                &self.buf[field.value(&self.buf)],
            )
        })
    }

    /// Number of headers.
    pub fn header_count(&self) -> usize {
        self.headers as usize
    }

    /// Whether this is a legacy `Response: Follows` command response (Asterisk 13 and older).
    pub fn is_follows(&self) -> bool {
        self.follows
    }

    /// The raw body lines of a legacy `Response: Follows` message (without the
    /// `--END COMMAND--` sentinel); empty for every other message.
    pub fn body_lines(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.fields()
            .skip(self.headers as usize)
            .map(|field| self.value(field))
    }

    /// Command output lines in either format (PROTOCOL-NOTES 23–24): the legacy body
    /// lines of a `Follows` response, otherwise the text of every `Output:` header.
    ///
    /// Asterisk writes `Output: <line>`, one space after the colon, so exactly that
    /// one space is removed: an indented CLI line keeps its indentation, as it does in
    /// the legacy format (header values elsewhere lose all leading blanks).
    pub fn output_lines(&self) -> Vec<&str> {
        if self.follows {
            return self.body_lines().collect();
        }
        self.fields_of("Output")
            .map(|field| {
                let raw = self.text(field.key_end as usize + 1..field.value(&self.buf).end);
                raw.strip_prefix(' ').unwrap_or(raw)
            })
            .collect()
    }

    /// The message's bytes as they were received (UTF-8, lines ending as on the wire).
    pub fn as_str(&self) -> &str {
        self.slice(0, self.len)
    }

    /// Size of the message in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// What holding this message costs the memory budget: its buffer (the text and the
    /// header table) and [`MESSAGE_OVERHEAD`](crate::budget::MESSAGE_OVERHEAD).
    #[inline]
    pub(crate) fn charged_size(&self) -> usize {
        self.buf.len() + crate::budget::MESSAGE_OVERHEAD
    }

    /// Whether the message holds no bytes (never true for a parsed message).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Masks the built-in secret keys ([`Redactor::builtin`](crate::redact::Redactor::builtin));
/// a connection's own policy is applied with
/// [`Redactor::message`](crate::redact::Redactor::message).
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::redact::fmt_headers(f, self.headers())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::borrow::Cow;

    use super::{Field, Fields, Layout, Message, MessageKind, StoredField, stored};
    use crate::parser::{Limits, Parsed, Parser};

    /// The one message in `text` (other modules' tests use it too).
    pub(crate) fn parse_one(text: &str) -> Message {
        let mut parser = Parser::new(Limits::default());
        let mut items = Vec::new();
        parser.feed(text.as_bytes(), &mut |item| items.push(item));
        match <[Parsed; 1]>::try_from(items) {
            Ok([Parsed::Message(message)]) => message,
            other => panic!("expected one message: {other:?}"),
        }
    }

    /// Masks every `pw` inside values and lines.
    fn mask_pw<'m>(key: Option<&'m str>, value: &'m str) -> Cow<'m, str> {
        if key == Some("Secret") {
            return Cow::Borrowed("*");
        }
        match value.contains("pw") {
            true => Cow::Owned(value.replace("pw", "**")),
            false => Cow::Borrowed(value),
        }
    }

    #[test]
    fn map_values_keeps_the_shape_and_masks_only_values() {
        let message = parse_one(
            "Response: Error\r\nActionID: a-1\r\nMessage: bad pw\r\nSecret: pw\r\n\
             Output:    indented pw\r\nOutput: Secret: pw\r\n\r\n",
        );
        let masked = message.map_values(mask_pw).expect("something masked");
        assert_eq!(
            masked.as_str(),
            "Response: Error\r\nActionID: a-1\r\nMessage: bad **\r\nSecret: *\r\n\
             Output:    indented **\r\nOutput: Secret: **\r\n"
        );
        assert_eq!(masked.kind(), MessageKind::Response);
        assert_eq!(masked.response(), Some("Error"));
        assert_eq!(masked.action_id(), Some("a-1"));
        assert_eq!(masked.get("message"), Some("bad **"));
        assert_eq!(masked.get("Secret"), Some("*"));
        assert_eq!(masked.header_count(), message.header_count());
        assert_eq!(masked.output_lines(), ["   indented **", "Secret: **"]);

        let event = parse_one("Event: Hangup\r\nChannel: pw\r\n\r\n");
        let masked = event.map_values(mask_pw).unwrap();
        assert_eq!(masked.event_name(), Some("Hangup"));
        assert_eq!(masked.get("Channel"), Some("**"));

        // Nothing to mask: no copy.
        let clean = parse_one("Response: Success\r\nActionID: a-2\r\nPing: Pong\r\n\r\n");
        assert!(clean.map_values(mask_pw).is_none());
    }

    #[test]
    fn map_values_masks_legacy_body_lines() {
        let message = parse_one(
            "Response: Follows\r\nPrivilege: Command\r\nActionID: a-3\r\n\
             user pw\n  pw again\n--END COMMAND--\r\n\r\n",
        );
        let masked = message.map_values(mask_pw).unwrap();
        assert!(masked.is_follows());
        assert_eq!(masked.action_id(), Some("a-3"));
        assert_eq!(masked.response(), Some("Follows"));
        assert_eq!(
            masked.body_lines().collect::<Vec<_>>(),
            ["user **", "  ** again"]
        );
        assert_eq!(masked.output_lines(), ["user **", "  ** again"]);
        assert!(!masked.as_str().contains("pw"), "{}", masked.as_str());
    }

    #[test]
    fn field_table_round_trips() {
        // Two headers and a body line: each key starts after the `\n` before it.
        let text = b"Event: A\r\nKey:\tB\r\nline\r\n";
        let fields = [
            Field {
                key_start: 0,
                key_end: 5,
                end: 9,
            },
            Field {
                key_start: 10,
                key_end: 13,
                end: 17,
            },
            // A body line: no key.
            Field {
                key_start: 18,
                key_end: 18,
                end: 23,
            },
        ];
        let table: Vec<StoredField> = fields.iter().map(|f| stored(f.key_end, f.end)).collect();
        let flat = table.as_flattened();
        assert_eq!(Fields::of(flat).collect::<Vec<_>>(), fields);
        for (index, field) in fields.iter().enumerate() {
            assert_eq!(Field::at(flat, index), *field);
        }
        let values: Vec<&[u8]> = fields.iter().map(|f| &text[f.value(text)]).collect();
        assert_eq!(values, [&b"A"[..], b"B", b"line"]);

        let layout = Layout {
            headers: 2,
            follows: true,
            ..Layout::default()
        };
        let message = Message::from_parts(text, &table, layout);
        assert_eq!(message.len(), text.len());
        assert_eq!(message.as_str(), "Event: A\r\nKey:\tB\r\nline\r\n");
        assert_eq!(
            message.headers().collect::<Vec<_>>(),
            [("Event", "A"), ("Key", "B")]
        );
        assert_eq!(message.body_lines().collect::<Vec<_>>(), ["line"]);
    }
}
