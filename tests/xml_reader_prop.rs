//! Property tests for the incremental stream reader: arbitrary and mutated input split at
//! arbitrary points never panics, stays within its memory bound, and yields the same
//! events (and the same error) however it is split.

use proptest::prelude::*;
use starling::xml::{parse_element, Element, Limits, Node, StreamEvent, StreamReader, XmlError};

const STREAM: &str = "<?xml version='1.0'?>\n<stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>\
    <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features> \
    <message to='a@b' type='chat' xmlns:x='urn:x' x:y='&amp;'><body>héllo &lt;😀&#33;</body>\
    <x:z><![CDATA[<cdata>]]></x:z></message>\n\
    <iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>\t\
    <presence xml:lang='en'><status>on ]] line</status></presence>\
    </stream:stream>";

type Outcome = (Vec<StreamEvent>, Option<XmlError>);

/// Feeds `data` cut at `cuts`, pulling all events after each chunk.
fn run(limits: Limits, data: &[u8], cuts: &[usize]) -> Outcome {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    let mut reader = StreamReader::new(limits);
    let mut events = Vec::new();
    for w in points.windows(2) {
        let chunk = &data[w[0]..w[1]];
        reader.feed(chunk);
        assert!(reader.buffered() <= limits.max_stanza_bytes + chunk.len());
        loop {
            match reader.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => {
                    // Dead readers stay dead.
                    assert_eq!(reader.next_event(), Err(e.clone()));
                    return (events, Some(e));
                }
            }
        }
    }
    (events, None)
}

fn small_limits() -> Limits {
    Limits {
        max_stanza_bytes: 200,
        max_depth: 4,
        max_attrs: 4,
    }
}

fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut data = base.to_vec();
    for &(at, kind, byte) in edits {
        if data.is_empty() {
            break;
        }
        let at = at % data.len();
        match kind % 3 {
            0 => data[at] = byte,
            1 => data.insert(at, byte),
            _ => {
                data.remove(at);
            }
        }
    }
    data
}

/// Parsing merges adjacent text and drops empty text, so compare in that form.
fn normalise(e: &Element) -> Element {
    let mut out = e.clone();
    let nodes = out.nodes_mut();
    let old = std::mem::take(nodes);
    for n in old {
        match n {
            Node::Text(t) if t.is_empty() => {}
            Node::Text(t) => match nodes.last_mut() {
                Some(Node::Text(prev)) => prev.push_str(&t),
                _ => nodes.push(Node::Text(t)),
            },
            Node::Element(c) => nodes.push(Node::Element(normalise(&c))),
        }
    }
    out
}

fn arb_element() -> impl Strategy<Value = Element> {
    let name = prop::sample::select(vec!["a", "b", "message", "x-y", "é"]);
    let ns = prop::sample::select(vec!["", "jabber:client", "urn:x", "urn:y"]);
    let attr_name = prop::sample::select(vec!["to", "type", "xml:lang", "{urn:z}q", "{urn:x}r"]);
    let text = "[a-z <>&\"'\\]\\r\\n\\té😀]{0,12}";
    let leaf =
        (name, ns, prop::collection::vec((attr_name, text), 0..4)).prop_map(|(name, ns, attrs)| {
            let mut e = Element::new(name, ns);
            for (k, v) in attrs {
                e.set_attr(k, v);
            }
            e
        });
    leaf.prop_recursive(4, 32, 4, move |inner| {
        (
            inner,
            prop::collection::vec(
                prop_oneof![
                    text.prop_map(|t: String| Node::Text(t)),
                    arb_leafish().prop_map(Node::Element)
                ],
                0..4,
            ),
        )
            .prop_map(|(mut e, children)| {
                e.nodes_mut().extend(children);
                e
            })
    })
}

fn arb_leafish() -> impl Strategy<Value = Element> {
    prop::sample::select(vec!["c", "d"]).prop_map(|n| Element::new(n, "urn:y"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..400),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = run(small_limits(), &data, &[]);
        prop_assert_eq!(run(small_limits(), &data, &cuts), whole);
        let _ = parse_element(&data);
    }

    #[test]
    fn arbitrary_markup_never_panics(
        data in "[<>/!?\\[\\]a-c:=' \"&#;x0-9\\-CDAT]{0,200}",
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let data = format!("<s xmlns='x'>{data}");
        let whole = run(small_limits(), data.as_bytes(), &[]);
        prop_assert_eq!(run(small_limits(), data.as_bytes(), &cuts), whole);
    }

    #[test]
    fn valid_stream_split_anywhere(cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let whole = run(Limits::default(), STREAM.as_bytes(), &[]);
        prop_assert_eq!(whole.0.len(), 6);
        prop_assert_eq!(&whole.1, &None);
        prop_assert_eq!(run(Limits::default(), STREAM.as_bytes(), &cuts), whole);
    }

    #[test]
    fn mutated_stream_split_anywhere(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let data = mutate(STREAM.as_bytes(), &edits);
        for limits in [Limits::default(), small_limits()] {
            let whole = run(limits, &data, &[]);
            prop_assert_eq!(run(limits, &data, &cuts), whole);
        }
    }

    #[test]
    fn write_then_parse_round_trips(e in arb_element()) {
        let expected = normalise(&e);
        for parent in ["", "jabber:client"] {
            let mut out = Vec::new();
            e.write_to(&mut out, parent);
            // Written for a context with `parent` as default namespace: wrap accordingly.
            let doc = if parent.is_empty() {
                out
            } else {
                let mut wrapped = format!("<w xmlns='{parent}'>").into_bytes();
                wrapped.extend_from_slice(&out);
                wrapped.extend_from_slice(b"</w>");
                wrapped
            };
            let parsed = parse_element(&doc);
            prop_assert!(parsed.is_ok(), "{:?} for {}", parsed, String::from_utf8_lossy(&doc));
            let parsed = parsed.unwrap_or_else(|_| Element::new("", ""));
            let got = if parent.is_empty() {
                parsed
            } else {
                parsed.children().next().cloned().unwrap_or_else(|| Element::new("", ""))
            };
            prop_assert_eq!(&got, &expected);
        }
    }
}
