//! Parser rules, one test per rule of PROTOCOL-NOTES that touches framing.

use ami_proto::message::{Message, MessageKind};
use ami_proto::parser::{Discard, Limits, ParseError, Parsed, Parser};
use proptest::prelude::*;

fn parse_with(limits: Limits, chunks: &[&[u8]]) -> Vec<Parsed> {
    let mut parser = Parser::new(limits);
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut |item| out.push(item));
    }
    parser.finish(&mut |item| out.push(item));
    out
}

fn parse(bytes: &[u8]) -> Vec<Parsed> {
    parse_with(Limits::default(), &[bytes])
}

fn messages(items: &[Parsed]) -> Vec<&Message> {
    items
        .iter()
        .filter_map(|item| match item {
            Parsed::Message(message) => Some(message),
            _ => None,
        })
        .collect()
}

fn discards(items: &[Parsed]) -> Vec<&Discard> {
    items
        .iter()
        .filter_map(|item| match item {
            Parsed::Discarded(discard) => Some(discard),
            _ => None,
        })
        .collect()
}

#[test]
fn banner_has_no_blank_line_after_it() {
    // PROTOCOL-NOTES 1
    let items =
        parse(b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nActionID: L-1\r\n\r\n");
    assert_eq!(
        items[0],
        Parsed::Banner("Asterisk Call Manager/11.0.0".into())
    );
    let message = messages(&items)[0];
    assert_eq!(message.kind(), MessageKind::Response);
    assert_eq!(message.response(), Some("Success"));
    assert_eq!(message.action_id(), Some("L-1"));
    assert_eq!(items.len(), 2);
}

#[test]
fn banner_is_optional() {
    let items = parse(b"Event: FullyBooted\r\nStatus: Fully Booted\r\n\r\n");
    assert_eq!(items.len(), 1);
    assert_eq!(messages(&items)[0].event_name(), Some("FullyBooted"));
}

#[test]
fn bare_newlines_and_stray_blank_lines() {
    // PROTOCOL-NOTES 2: res_pjsip's `\n\r\n\r\n` and QueueRule's extra blank line.
    let items = parse(b"Response: Error\r\nActionID: 7\r\nMessage: No endpoints found\n\r\n\r\nEvent: A\nX: 1\n\n\n\n");
    let all = messages(&items);
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(all[0].get("Message"), Some("No endpoints found"));
    assert_eq!(all[1].event_name(), Some("A"));
    assert_eq!(all[1].get("x"), Some("1"));
}

#[test]
fn keys_case_insensitive_repeated_keys_in_order() {
    // PROTOCOL-NOTES 3
    let items = parse(
        b"Event: VarSet\r\nUniqueid: 1\r\nUniqueID: 2\r\nVariable: a=1\r\nvariable: b=2\r\nVARIABLE: c=3\r\n\r\n",
    );
    let message = messages(&items)[0];
    assert_eq!(message.get("UNIQUEID"), Some("1"));
    assert_eq!(
        message.get_all("variable").collect::<Vec<_>>(),
        ["a=1", "b=2", "c=3"]
    );
    let keys: Vec<&str> = message.headers().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "Event", "Uniqueid", "UniqueID", "Variable", "variable", "VARIABLE"
        ]
    );
}

#[test]
fn value_blanks_and_empty_values() {
    // PROTOCOL-NOTES 4
    let items = parse(b"Event: X\r\nA:   padded  \r\nB:\r\nC:\tx\r\nD:no-space\r\n\r\n");
    let message = messages(&items)[0];
    assert_eq!(message.get("A"), Some("padded  "));
    assert_eq!(message.get("B"), Some(""));
    assert_eq!(message.get("C"), Some("x"));
    assert_eq!(message.get("D"), Some("no-space"));
    assert_eq!(message.get("E"), None);
}

#[test]
fn event_with_response_header_is_an_event() {
    // PROTOCOL-NOTES 15
    let items = parse(
        b"Event: OriginateResponse\r\nActionID: o-1\r\nResponse: Failure\r\nReason: 5\r\n\r\n",
    );
    let message = messages(&items)[0];
    assert_eq!(message.kind(), MessageKind::Event);
    assert_eq!(message.event_name(), Some("OriginateResponse"));
    assert_eq!(message.response(), Some("Failure"));
    // The kind does not depend on header order.
    let items = parse(b"Response: Success\r\nEvent: OriginateResponse\r\n\r\n");
    assert_eq!(messages(&items)[0].kind(), MessageKind::Event);
}

#[test]
fn message_without_event_or_response_is_unknown() {
    let items = parse(b"Foo: bar\r\n\r\n");
    assert_eq!(messages(&items)[0].kind(), MessageKind::Unknown);
}

#[test]
fn modern_command_output_is_one_large_frame() {
    // PROTOCOL-NOTES 23: a large output arrives as one message, past the frame limit.
    let mut wire =
        b"Response: Success\r\nActionID: c-1\r\nMessage: Command output follows\r\n".to_vec();
    for i in 0..3000 {
        wire.extend_from_slice(
            format!("Output: line {i:05} of the help text................\r\n").as_bytes(),
        );
    }
    wire.extend_from_slice(b"\r\n");
    assert!(wire.len() > 64 * 1024);
    let items = parse(&wire);
    assert_eq!(items.len(), 1, "{:?}", discards(&items));
    let message = messages(&items)[0];
    let lines = message.output_lines();
    assert_eq!(lines.len(), 3000);
    assert_eq!(lines[2999], "line 02999 of the help text................");
}

#[test]
fn empty_command_output() {
    let items = parse(b"Response: Success\r\nMessage: Command output follows\r\nOutput: \r\n\r\n");
    assert_eq!(messages(&items)[0].output_lines(), [""]);
}

#[test]
fn command_output_over_the_limit_is_discarded_with_its_action_id() {
    let limits = Limits {
        max_frame_size: 256,
        max_command_output: 1024,
    };
    let mut wire = b"Response: Success\r\nActionID: c-9\r\n".to_vec();
    for _ in 0..100 {
        wire.extend_from_slice(b"Output: 0123456789\r\n");
    }
    wire.extend_from_slice(b"\r\nEvent: After\r\n\r\n");
    let items = parse_with(limits, &[&wire]);
    let discard = discards(&items)[0];
    assert_eq!(discard.error, ParseError::OutputTooLarge { limit: 1024 });
    assert_eq!(discard.action_id.as_deref(), Some("c-9"));
    assert_eq!(
        discard.bytes as usize,
        wire.len() - b"Event: After\r\n\r\n".len()
    );
    assert_eq!(messages(&items)[0].event_name(), Some("After"));
}

#[test]
fn legacy_follows_body_with_blank_lines_and_sentinel() {
    // PROTOCOL-NOTES 24: raw lines, some looking like headers, some blank.
    let wire = b"Response: Follows\r\nPrivilege: Command\r\nActionID: c-2\r\n\
Uptime: 5 seconds\n\nsecond paragraph\n--END COMMAND--\r\n\r\nEvent: Next\r\n\r\n";
    let items = parse(wire);
    let all = messages(&items);
    assert_eq!(all.len(), 2, "{items:?}");
    let follows = all[0];
    assert!(follows.is_follows());
    assert_eq!(follows.response(), Some("Follows"));
    assert_eq!(follows.action_id(), Some("c-2"));
    assert_eq!(follows.header_count(), 3);
    assert_eq!(
        follows.output_lines(),
        ["Uptime: 5 seconds", "", "second paragraph"]
    );
    assert_eq!(all[1].event_name(), Some("Next"));
}

#[test]
fn legacy_sentinel_glued_to_the_last_line() {
    // Old Asterisk appends the sentinel even when the output lacks a final newline.
    let items =
        parse(b"Response: Follows\r\nPrivilege: Command\r\nno newline--END COMMAND--\r\n\r\n");
    assert_eq!(messages(&items)[0].output_lines(), ["no newline"]);
    assert_eq!(items.len(), 1);
}

#[test]
fn oversized_event_is_discarded_and_parsing_resumes() {
    // PROTOCOL-NOTES 5: events have no size cap at the source; ours does.
    let limits = Limits {
        max_frame_size: 100,
        max_command_output: 1000,
    };
    let mut wire = b"Event: Big\r\nActionID: x\r\n".to_vec();
    wire.extend_from_slice(format!("Data: {}\r\n\r\n", "y".repeat(500)).as_bytes());
    let big = wire.len();
    wire.extend_from_slice(b"Event: Small\r\n\r\n");
    for split in [1, 7, 99, 100, 101, wire.len()] {
        let chunks: Vec<&[u8]> = wire.chunks(split).collect();
        let items = parse_with(limits, &chunks);
        assert_eq!(items.len(), 2, "split {split}: {items:?}");
        let discard = discards(&items)[0];
        assert_eq!(discard.error, ParseError::FrameTooLarge { limit: 100 });
        assert_eq!(discard.bytes as usize, big);
        assert_eq!(discard.action_id.as_deref(), Some("x"));
        assert_eq!(messages(&items)[0].event_name(), Some("Small"));
    }
}

#[test]
fn the_command_output_limit_ends_with_its_message_at_every_cut() {
    // A response whose `Output` raised its limit, then an `Event` header (so later
    // lines are an event's), then an event over the frame limit: that event is
    // discarded however the input is cut, also when the event's lines are taken in
    // one run with the end of the message before.
    let limits = Limits {
        max_frame_size: 100,
        max_command_output: 1000,
    };
    let mut wire = b"Response: Success\r\nOutput: one\r\nEvent: Odd\r\nA: 1\r\n\r\n".to_vec();
    let first = wire.len();
    for index in 0..12 {
        wire.extend_from_slice(format!("Event: Big\r\nKey{index:02}: value\r\n").as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let big = wire.len() - first;
    assert!(big > 100 && big < 1000);
    // Enough after it that its blank line is not among the input's last 64 bytes.
    for _ in 0..8 {
        wire.extend_from_slice(b"Event: Small\r\n\r\n");
    }
    let expected = [[Some("Odd")].as_slice(), &[Some("Small"); 8]].concat();
    for split in 1..=wire.len() {
        let chunks: Vec<&[u8]> = wire.chunks(split).collect();
        let items = parse_with(limits, &chunks);
        let names: Vec<_> = messages(&items).iter().map(|m| m.event_name()).collect();
        assert_eq!(names, expected, "split {split}: {items:?}");
        let discard = discards(&items)[0];
        assert_eq!(
            discard.error,
            ParseError::FrameTooLarge { limit: 100 },
            "split {split}"
        );
        assert_eq!(discard.bytes as usize, big, "split {split}");
    }
}

#[test]
fn discarded_bytes_are_not_buffered() {
    let limits = Limits {
        max_frame_size: 1000,
        max_command_output: 2000,
    };
    let mut parser = Parser::new(limits);
    let mut out = Vec::new();
    parser.feed(b"Event: Flood\r\n", &mut |item| out.push(item));
    let line = format!("Data: {}\r\n", "z".repeat(200));
    let mut max_buffered = 0;
    for _ in 0..10_000 {
        parser.feed(line.as_bytes(), &mut |item| out.push(item));
        max_buffered = max_buffered.max(parser.buffered());
    }
    assert!(max_buffered <= 1001, "held {max_buffered} bytes");
    parser.feed(b"\r\nEvent: Ok\r\n\r\n", &mut |item| out.push(item));
    assert_eq!(out.len(), 2);
    assert_eq!(
        discards(&out)[0].bytes as usize,
        14 + 10_000 * line.len() + 2
    );
    assert_eq!(messages(&out)[0].event_name(), Some("Ok"));
}

#[test]
fn garbage_is_discarded_up_to_the_next_blank_line() {
    let wire = b"Event: A\r\n\r\nthis is not a header\r\nnor this\r\n\r\nEvent: B\r\n\r\n";
    let items = parse(wire);
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(discards(&items)[0].error, ParseError::MalformedLine);
    assert_eq!(discards(&items)[0].bytes, 34);
    let names: Vec<_> = messages(&items)
        .iter()
        .map(|m| m.event_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["A", "B"]);
}

#[test]
fn binary_garbage_never_panics_and_recovers() {
    let mut wire = vec![0u8, 255, 10, 13, 10, 0, 58, 10, 10];
    wire.extend_from_slice(b"Event: Good\r\n\r\n");
    let items = parse(&wire);
    assert_eq!(messages(&items).last().unwrap().event_name(), Some("Good"));
}

#[test]
fn truncated_message_is_reported_at_the_end() {
    let items = parse(b"Event: A\r\n\r\nEvent: Cut\r\nActionID: t-1\r\nPart");
    let discard = discards(&items)[0];
    assert_eq!(discard.error, ParseError::Truncated);
    assert_eq!(discard.bytes, 31);
    assert_eq!(discard.action_id.as_deref(), Some("t-1"));
}

#[test]
fn non_utf8_bytes_are_replaced_not_lost() {
    let items = parse(b"Event: Newchannel\r\nCallerIDName: Jos\xe9\r\nExten: 100\r\n\r\n");
    let message = messages(&items)[0];
    assert_eq!(message.get("CallerIDName"), Some("Jos\u{fffd}"));
    assert_eq!(message.get("Exten"), Some("100"));
}

#[test]
fn zero_copy_views_share_one_buffer() {
    let items = parse(b"Event: X\r\nA: 1\r\n\r\n");
    let message = messages(&items)[0];
    let whole = message.as_str().as_bytes().as_ptr_range();
    let value = message.get("A").unwrap().as_ptr();
    assert!(whole.contains(&value));
}

/// A stream made of pieces of every kind the parser knows, including bad ones.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"Event: Newexten\r\nChannel: Local/100@test-0001;1\r\nAppData: x\r\n\r\n".to_vec()),
        Just(b"Response: Success\r\nActionID: a-1\r\nPing: Pong\r\n\r\n".to_vec()),
        Just(b"Response: Success\r\nActionID: c\r\nOutput: a\r\nOutput: \r\n\r\n".to_vec()),
        Just(
            b"Response: Follows\r\nPrivilege: Command\r\nx: y\n\nz--END COMMAND--\r\n\r\n".to_vec()
        ),
        Just(b"garbage line\r\nmore\r\n\r\n".to_vec()),
        Just(b"\r\n\n".to_vec()),
        Just(b"Message: bare\n\r\n".to_vec()),
        Just(format!("Event: Big\r\nData: {}\r\n\r\n", "b".repeat(300)).into_bytes()),
        // Bytes that are not ASCII, some not UTF-8 (replaced when the message is built).
        Just(b"Event: Hangup\r\nCause-txt: Caf\xc3\xa9\r\nBad: \xff\xfe\r\n\r\n".to_vec()),
        // An event with a `Response` header, which is still an event.
        Just(
            b"Event: OriginateResponse\r\nResponse: Success\r\nActionID: o-1\r\nOutput: x\r\n\r\n"
                .to_vec()
        ),
        // Keys in other cases, blanks after the colon, an empty value, an empty key.
        Just(b"event:\t  Tabbed\r\nactionid:x\r\nEmpty:\r\n:no key\r\n\r\n".to_vec()),
        Just(b"Event: Bare\nLines: 1\n\n".to_vec()),
        // A response whose `Output` raised its limit, then an `Event` header: the next
        // message's limit is the frame limit again, which the next piece (an event of
        // 284 bytes: over every frame limit drawn below, under the largest
        // command-output limit) tells apart.
        Just(b"Response: Success\r\nOutput: x\r\nEvent: Odd\r\nA: 1\r\n\r\n".to_vec()),
        Just(
            format!(
                "Event: Mid\r\n{}\r\n",
                "Key: vvvvvvvvvvvvvvvvvvvv\r\n".repeat(10)
            )
            .into_bytes()
        ),
        // A legacy command response over every limit, its body with blank lines and
        // header-like lines: discarded up to its sentinel line.
        Just(
            format!(
                "Response: Follows\r\nPrivilege: Command\r\nActionID: f-1\r\n{}end--END COMMAND--\r\n\r\n",
                "Key: v\n\n".repeat(80)
            )
            .into_bytes()
        ),
        Just(
            format!(
                "Response: Success\r\n{}\r\n",
                "Output: oooooooooo\r\n".repeat(30)
            )
            .into_bytes()
        ),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    /// Any split of a byte stream into chunks gives identical outputs.
    #[test]
    fn any_split_gives_identical_output(
        pieces in proptest::collection::vec(piece(), 0..20),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
        banner in any::<bool>(),
        (max_frame_size, max_command_output) in prop_oneof![Just((200, 500)), Just((200, 100)), Just((64, 64))],
    ) {
        let limits = Limits { max_frame_size, max_command_output };
        let mut stream = if banner { b"Asterisk Call Manager/11.0.0\r\n".to_vec() } else { Vec::new() };
        for piece in &pieces {
            stream.extend_from_slice(piece);
        }
        let whole = parse_with(limits, &[&stream]);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for point in points {
            chunks.push(&stream[last..point]);
            last = point;
        }
        chunks.push(&stream[last..]);
        prop_assert_eq!(&parse_with(limits, &chunks), &whole);
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(&parse_with(limits, &bytewise), &whole);
    }
}

#[test]
fn output_lines_keep_their_indentation_in_both_formats() {
    // `dialplan show` indents its lines; Asterisk writes `Output: <line>` with one
    // space, so only that space goes (the capture's `Output:   '100' =>` keeps two).
    let modern = parse(
        b"Response: Success\r\nMessage: Command output follows\r\n\
Output: [ Context 'test' created by 'pbx_config' ]\r\nOutput:   '100' =>  1. Answer()\r\n\
Output:\r\nOutput:\ttab\r\n\r\n",
    );
    let legacy = parse(
        b"Response: Follows\r\nPrivilege: Command\r\n\
[ Context 'test' created by 'pbx_config' ]\n  '100' =>  1. Answer()\n\n\ttab\n--END COMMAND--\r\n\r\n",
    );
    let expected = [
        "[ Context 'test' created by 'pbx_config' ]",
        "  '100' =>  1. Answer()",
        "",
        "\ttab",
    ];
    assert_eq!(messages(&modern)[0].output_lines(), expected);
    assert_eq!(messages(&legacy)[0].output_lines(), expected);
    // Other values still lose every leading blank.
    assert_eq!(
        messages(&modern)[0].get("Message"),
        Some("Command output follows")
    );
}

/// A legacy `Follows` response over its limit is discarded up to its
/// `--END COMMAND--` line, not up to the first blank line of its body: wherever the
/// input is cut, one discard (with the ActionID), then the next message.
#[test]
fn oversized_follows_is_discarded_up_to_its_sentinel_at_every_cut() {
    let limits = Limits {
        max_frame_size: 64,
        max_command_output: 128,
    };
    let mut input = b"Response: Follows\r\nPrivilege: Command\r\nActionID: A-1\r\n".to_vec();
    for i in 0..12 {
        input.extend_from_slice(format!("Name{i}: value\n\n").as_bytes());
    }
    input.extend_from_slice(b"tail --END COMMAND--\r\n");
    let discarded = input.len() as u64;
    input.extend_from_slice(b"\r\nEvent: Next\r\n\r\n");
    for cut in 0..=input.len() {
        let items = parse_with(limits, &[&input[..cut], &input[cut..]]);
        assert_eq!(
            discards(&items),
            [&Discard {
                error: ParseError::OutputTooLarge { limit: 128 },
                bytes: discarded,
                action_id: Some("A-1".into()),
            }],
            "cut at {cut}"
        );
        let names: Vec<_> = messages(&items).iter().map(|m| m.event_name()).collect();
        assert_eq!(names, [Some("Next")], "cut at {cut}");
    }
}
