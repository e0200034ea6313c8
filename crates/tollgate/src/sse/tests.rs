use super::*;
use std::ops::ControlFlow;

/// A comment, a named event, a plain one, a two-line event with an `id:`, `[DONE]`.
const SAMPLE: &str = ": keep-alive\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\ndata: {\"a\":1}\n\nevent: delta\ndata: line one\ndata:line two\nid: 7\n\ndata: [DONE]\n\n";

/// What each event of `SAMPLE` says: `(event name, data)`.
fn expected() -> Vec<(Option<&'static str>, &'static str)> {
    vec![
        (None, ""),
        (Some("ping"), "{\"type\":\"ping\"}"),
        (None, "{\"a\":1}"),
        (Some("delta"), "line one\nline two"),
        (None, "[DONE]"),
    ]
}

/// `SAMPLE` with each line ending spelt `\n`, `\r\n` and `\r`.
fn spellings() -> Vec<String> {
    vec![
        SAMPLE.to_owned(),
        SAMPLE.replace('\n', "\r\n"),
        SAMPLE.replace('\n', "\r"),
    ]
}

/// Every event of `input` pushed in pieces of `size` bytes, and how many were out after
/// each piece.
fn frame(input: &[u8], size: usize) -> (Vec<Event>, Vec<usize>, SseFramer) {
    let mut framer = SseFramer::new();
    let mut events = Vec::new();
    let mut counts = Vec::new();
    for piece in input.chunks(size) {
        framer.push(Bytes::copy_from_slice(piece));
        while let Some(event) = framer.next_event() {
            events.push(event);
        }
        counts.push(events.len());
    }
    (events, counts, framer)
}

fn said(events: &[Event]) -> Vec<(Option<String>, String)> {
    events
        .iter()
        .map(|e| {
            let name = e.name().map(|n| String::from_utf8_lossy(n).into_owned());
            (name, String::from_utf8_lossy(&e.data()).into_owned())
        })
        .collect()
}

fn owned(list: Vec<(Option<&str>, &str)>) -> Vec<(Option<String>, String)> {
    list.into_iter()
        .map(|(n, d)| (n.map(str::to_owned), d.to_owned()))
        .collect()
}

/// The events' bytes, then what the framer still holds: the input again.
fn joined(events: &[Event], mut framer: SseFramer) -> Vec<u8> {
    let rest = framer.take_partial().map(Event::into_raw);
    let mut bytes: Vec<u8> = events.iter().flat_map(|e| e.raw().to_vec()).collect();
    bytes.extend_from_slice(&rest.unwrap_or_default());
    bytes
}

#[test]
fn every_chunking_and_line_ending_gives_the_same_events() {
    for input in spellings() {
        for size in [1, 2, 3, 7, 64, usize::MAX] {
            let (events, _, framer) = frame(input.as_bytes(), size);
            assert_eq!(said(&events), owned(expected()), "size {size}: {input:?}");
            let bytes = joined(&events, framer);
            assert_eq!(bytes, input.as_bytes(), "bytes kept, size {size}");
        }
    }
}

#[test]
fn an_event_comes_out_as_soon_as_its_blank_line_is_in() {
    for input in spellings() {
        let bytes = input.as_bytes();
        for size in [1, 2, 3, 7, 64] {
            let (_, counts, _) = frame(bytes, size);
            for (k, count) in counts.iter().enumerate() {
                let seen = ((k + 1) * size).min(bytes.len());
                let (whole, _, _) = frame(&bytes[..seen], usize::MAX);
                assert_eq!(
                    *count,
                    whole.len(),
                    "size {size}, {seen} bytes of {input:?}"
                );
            }
        }
    }
}

#[test]
fn mixed_line_endings_split_where_the_blank_lines_are() {
    let input = "data: a\r\n\ndata: b\n\r\ndata: c\r\rdata: d\r\n\r";
    for size in [1, 2, 3, 7, 64, usize::MAX] {
        let (events, _, framer) = frame(input.as_bytes(), size);
        let data: Vec<Cow<'_, [u8]>> = events.iter().map(Event::data).collect();
        assert_eq!(data, [&b"a"[..], b"b", b"c", b"d"], "size {size}");
        assert_eq!(joined(&events, framer), input.as_bytes());
    }
}

#[test]
fn a_trailing_partial_event_stays_until_taken() {
    let mut framer = SseFramer::new();
    framer.push(Bytes::from_static(b"data: 1\n\ndata: 2\n"));
    assert_eq!(
        framer.next_event().map(|e| e.data().into_owned()),
        Some(b"1".to_vec())
    );
    assert_eq!(framer.next_event(), None);
    assert!(!framer.is_empty());
    framer.push(Bytes::from_static(b"data: more"));
    assert_eq!(framer.next_event(), None);
    let rest = framer.take_partial().map(Event::into_raw);
    assert_eq!(rest.as_deref(), Some(&b"data: 2\ndata: more"[..]));
    assert!(framer.is_empty());
    assert_eq!(framer.take_partial(), None);
}

#[test]
fn an_event_cut_inside_its_separator() {
    for (head, tail, first) in [
        ("data: a\n", "\ndata: b\n\n", "data: a\n\n"),
        ("data: a\r", "\r\ndata: b\r\n\r\n", "data: a\r\r\n"),
        ("data: a\r\n", "\r\ndata: b\r\n\r\n", "data: a\r\n\r\n"),
        ("data: a\r", "\rdata: b\r\r", "data: a\r\r"),
    ] {
        let mut framer = SseFramer::new();
        framer.push(Bytes::from(head));
        assert_eq!(framer.next_event(), None, "{head:?}");
        framer.push(Bytes::from(tail));
        let a = framer.next_event().map(Event::into_raw);
        assert_eq!(a.as_deref(), Some(first.as_bytes()), "{head:?}");
        let b = framer
            .next_event()
            .map(|e| (e.lead(), e.data().into_owned()));
        assert_eq!(b, Some((false, b"b".to_vec())), "{head:?}");
    }
}

#[test]
fn a_crlf_blank_line_cut_after_its_cr_ends_the_event_at_once() {
    let mut framer = SseFramer::new();
    framer.push(Bytes::from_static(b"data: a\r\n\r"));
    let a = framer.next_event().map(Event::into_raw);
    assert_eq!(a.as_deref(), Some(&b"data: a\r\n\r"[..]));
    framer.push(Bytes::from_static(b"\ndata: b\r\n\r\n"));
    let b = framer.next_event().expect("second event");
    assert!(b.lead());
    assert_eq!(b.raw(), &b"\ndata: b\r\n\r\n"[..]);
    let (lead, own) = b.split_lead();
    assert_eq!((&lead[..], &own[..]), (&b"\n"[..], &b"data: b\r\n\r\n"[..]));
    assert_eq!(b.data(), &b"b"[..]);
    framer.push(Bytes::from_static(b"data: c\r\n\r"));
    framer.next_event().expect("third event");
    framer.push(Bytes::from_static(b"\ndata: unfinished"));
    assert_eq!(framer.next_event(), None);
    assert!(framer.take_partial().is_some_and(|p| p.lead()));
}

#[test]
fn events_inside_one_chunk_are_slices_of_it() {
    let chunk = Bytes::from_static(b"data: 1\n\ndata: 2\n\ndata: 3");
    let range = chunk.as_ptr_range();
    let mut framer = SseFramer::new();
    framer.push(chunk.clone());
    for _ in 0..2 {
        let event = framer.next_event().expect("event");
        assert!(range.contains(&event.raw().as_ptr()), "no copy");
    }
    framer.push(Bytes::from_static(b"\n\n"));
    assert_eq!(
        framer.next_event().map(Event::into_raw),
        Some(Bytes::from_static(b"data: 3\n\n"))
    );
}

#[test]
fn fed_slices_and_undrained_chunks_frame_the_same() {
    for input in spellings() {
        for size in [1, 3, 64] {
            let mut framer = SseFramer::new();
            let mut events = Vec::new();
            for (k, piece) in input.as_bytes().chunks(size).enumerate() {
                // Mix borrowed and owned pieces, and drain owned ones only every other time.
                match k % 3 {
                    0 => framer.feed(piece, |e| {
                        events.push(e.to_vec());
                        ControlFlow::Continue(())
                    }),
                    1 => framer.push(Bytes::copy_from_slice(piece)),
                    _ => {
                        framer.push(Bytes::copy_from_slice(piece));
                        events.extend(
                            std::iter::from_fn(|| framer.next_event()).map(|e| e.raw().to_vec()),
                        );
                    }
                }
            }
            events.extend(std::iter::from_fn(|| framer.next_event()).map(|e| e.raw().to_vec()));
            let data: Vec<Vec<u8>> = events.iter().map(|e| data(e).into_owned()).collect();
            let want: Vec<Vec<u8>> = expected()
                .iter()
                .map(|(_, d)| d.as_bytes().to_vec())
                .collect();
            assert_eq!(data, want, "size {size}: {input:?}");
            let rest = framer
                .take_partial()
                .map(Event::into_raw)
                .unwrap_or_default();
            assert_eq!([events.concat(), rest.to_vec()].concat(), input.as_bytes());
        }
    }
}

#[test]
fn feeding_stops_where_asked_and_keeps_the_rest() {
    let mut framer = SseFramer::new();
    let mut seen = Vec::new();
    framer.feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\n", |e| {
        seen.push(e.to_vec());
        ControlFlow::Break(())
    });
    assert_eq!(seen, [b"data: 1\n\n".to_vec()]);
    let rest: Vec<Bytes> = std::iter::from_fn(|| framer.next_event())
        .map(Event::into_raw)
        .collect();
    assert_eq!(rest, [&b"data: 2\n\n"[..], b"data: 3\n\n"]);
}

#[test]
fn a_growing_buffer_is_scanned_in_place() {
    let input = SAMPLE.replace('\n', "\r\n");
    let mut scanner = Scanner::new();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    for piece in input.as_bytes().chunks(5) {
        buf.extend_from_slice(piece);
        while let Some(event) = scanner.next_event(&buf) {
            events.push(event.to_vec());
        }
    }
    // The last `\n` came alone: it ends the blank line, the event was out at the `\r`.
    assert_eq!(events.concat(), input.as_bytes()[..input.len() - 1]);
    let data: Vec<Vec<u8>> = events.iter().map(|e| data(e).into_owned()).collect();
    let want: Vec<Vec<u8>> = expected()
        .iter()
        .map(|(_, d)| d.as_bytes().to_vec())
        .collect();
    assert_eq!(data, want);
}

#[test]
fn the_splitter_reports_each_end_in_its_piece() {
    let mut split = Splitter::new();
    assert_eq!(split.find(b"data: 1\n"), None);
    assert_eq!(
        split.find(b"\ndata: 2\r\n\r"),
        Some(End {
            len: 1,
            lead: false
        })
    );
    assert_eq!(
        split.find(b"data: 2\r\n\r"),
        Some(End {
            len: 10,
            lead: false
        })
    );
    assert_eq!(split.find(b"\n: c\n\n"), Some(End { len: 6, lead: true }));
    assert_eq!(split.find(b""), None);
    assert_eq!(
        split.find(b"\n"),
        Some(End {
            len: 1,
            lead: false
        }),
        "an empty event"
    );
}

#[test]
fn whole_chunks_can_be_passed_over() {
    let mut framer = SseFramer::new();
    assert!(framer.skip_whole(b"data: 1\n\ndata: 2\n\n"));
    assert!(framer.skip_whole(b"data: 3\r\n\r\n"));
    assert!(!framer.skip_whole(b"data: 4\n"));
    framer.push(Bytes::from_static(b"data: 4\n"));
    assert_eq!(framer.next_event(), None);
    assert!(
        !framer.skip_whole(b"\ndata: 5\n\n"),
        "an event is unfinished"
    );
    framer.push(Bytes::from_static(b"\n"));
    assert!(framer.next_event().is_some());
    assert!(framer.skip_whole(b"data: 5\n\n"));
}

#[test]
fn fields_follow_the_sse_grammar() {
    let event = b": comment\r\nevent:first\nevent: second\nid\ndata:  two spaces\r\ndata\r\r";
    let all: Vec<(&[u8], &[u8])> = fields(event).collect();
    assert_eq!(
        all,
        [
            (&b"event"[..], &b"first"[..]),
            (b"event", b"second"),
            (b"id", b""),
            (b"data", b" two spaces"),
            (b"data", b""),
        ]
    );
    assert_eq!(name(event), Some(&b"second"[..]));
    assert_eq!(data(event), &b" two spaces\n"[..]);
    assert!(matches!(data(b"data: one\n\n"), Cow::Borrowed(b"one")));
    assert_eq!(data(b"data:\ndata: x\ndata:\n\n"), &b"x\n"[..]);
    assert_eq!(data(b"event: ping\n\n"), &b""[..]);
    assert_eq!(name(b"data: x\n\n"), None);
}
