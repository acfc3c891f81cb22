//! XMPP over WebSocket (RFC 7395) at `/xmpp-websocket`.
//!
//! The handshake is checked here and answered by hyper; the upgraded connection is then
//! driven by one task that runs the client stream (the same negotiation and session code
//! as TCP, see `c2s::serve_framed`) next to a pump that turns each text message into one
//! parsed element and each element the stream emits into one text message.

use super::{plain, Body, Ctx};
use crate::c2s::stream::{Frame, Framed, Inbound, Incoming};
use crate::stanza::StreamError;
use crate::xml::element::escape;
use crate::xml::reader::{parse_element_with, Limits, StreamEvent, StreamHeader};
use crate::xml::Element;
use crate::{c2s, ns, ServerState};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming as HttpBody;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The RFC 7395 subprotocol name.
const SUBPROTOCOL: &str = "xmpp";
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long we wait for the client's closing handshake after ours.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Whether a comma-separated header (Connection, Upgrade, Sec-WebSocket-Protocol) lists
/// `token`, compared without regard to case.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Answers the opening handshake (RFC 6455 §4.2) and, if it is acceptable, starts the
/// stream on the upgraded connection.
pub fn upgrade(ctx: Arc<Ctx>, mut req: Request<HttpBody>) -> Response<Body> {
    if req.method() != Method::GET {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET with a WebSocket upgrade\n",
        );
    }
    let h = req.headers();
    if !has_token(h, UPGRADE, "websocket") || !has_token(h, CONNECTION, "upgrade") {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "this is an XMPP over WebSocket endpoint (RFC 7395)\n",
        );
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if h.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = plain(StatusCode::BAD_REQUEST, "unsupported WebSocket version\n");
        r.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = h.get(SEC_WEBSOCKET_KEY).filter(|k| !k.is_empty()) else {
        return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing\n");
    };
    // RFC 7395 §3.1: the client offers "xmpp"; a client that does not is speaking some
    // other protocol, and letting it in would only produce confusing stream errors.
    if !has_token(h, SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        return plain(
            StatusCode::BAD_REQUEST,
            "this endpoint speaks only the 'xmpp' WebSocket subprotocol (RFC 7395)\n",
        );
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let alive = ctx.alive();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let max = ctx.server().config.limits.max_stanza_bytes;
                // tungstenite's own cap is a backstop against unbounded buffering; the
                // stanza limit proper is checked on each message so that breaking it
                // gets the XMPP policy-violation rather than a bare disconnect.
                let config = WebSocketConfig::default()
                    .max_message_size(Some(max.saturating_mul(2)))
                    .max_frame_size(Some(max.saturating_mul(2)));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                run(ctx, ws).await;
            }
            Err(e) => tracing::debug!("WebSocket upgrade failed: {e}"),
        }
        drop(alive);
    });
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = r.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn run(ctx: Arc<Ctx>, ws: Ws) {
    let server = ctx.server().clone();
    // Small queues: each side waits for the other rather than buffering.
    let (in_tx, in_rx) = mpsc::channel(8);
    let (out_tx, out_rx) = mpsc::channel(64);
    let end = Framed {
        incoming: in_rx,
        outgoing: out_tx,
        secure: ctx.secure,
        bindings: ctx.bindings.clone(),
    };
    let session = c2s::serve_framed(server.clone(), end, ctx.peer, "websocket", ctx.shutdown());
    tokio::join!(session, pump(&server, ws, in_tx, out_rx));
}

/// Moves messages between the socket and the stream until either side ends.
async fn pump(
    server: &ServerState,
    ws: Ws,
    in_tx: mpsc::Sender<Inbound>,
    mut out_rx: mpsc::Receiver<Frame>,
) {
    let l = &server.config.limits;
    let limits = Limits {
        max_stanza_bytes: l.max_stanza_bytes,
        max_depth: l.max_depth,
        max_attrs: l.max_attrs,
    };
    let (mut sink, mut stream) = ws.split();
    // An event waiting for room in the stream's queue; the socket is not read meanwhile,
    // which is what pushes back on a client that sends faster than it is served.
    let mut held: Option<Inbound> = None;
    let mut reading = true;
    let mut peer_closed = false;
    let mut close_code = CloseCode::Normal;
    loop {
        tokio::select! {
            permit = in_tx.reserve(), if held.is_some() => match (permit, held.take()) {
                (Ok(p), Some(ev)) => p.send(ev),
                // The stream has ended; what remains is writing its last frames.
                _ => reading = false,
            },
            msg = stream.next(), if reading && held.is_none() => {
                let ev = match msg {
                    None => { peer_closed = true; break; }
                    Some(Ok(Message::Text(text))) => decode(text.as_str(), limits),
                    Some(Ok(Message::Binary(_))) => {
                        close_code = CloseCode::Unsupported;
                        Some(Err(StreamError::new("bad-format")
                            .with_text("XMPP over WebSocket uses text messages only")))
                    }
                    Some(Ok(Message::Close(_))) => { peer_closed = true; break; }
                    // tungstenite answers pings itself; a ping still shows the client is
                    // there (RFC 7395 §3.5 keepalives). Pongs and raw frames mean nothing.
                    Some(Ok(Message::Ping(_))) => {
                        held = Some(Inbound::KeepAlive);
                        continue;
                    }
                    Some(Ok(_)) => None,
                    Some(Err(WsError::Capacity(_))) => {
                        close_code = CloseCode::Size;
                        Some(Err(too_big()))
                    }
                    Some(Err(e)) => {
                        tracing::debug!("WebSocket read failed: {e}");
                        peer_closed = true;
                        break;
                    }
                };
                if let Some(ev) = ev {
                    // After an error the stream is over: ignore whatever else arrives.
                    if ev.is_err() {
                        reading = false;
                    }
                    held = Some(ev.into());
                }
            }
            out = out_rx.recv() => {
                let Some(frame) = out else { break };
                let (text, last) = match frame {
                    Frame::Open { id } => (open_tag(server, &id), false),
                    Frame::Xml(s) | Frame::Error(s) => (s, false),
                    Frame::Close => (format!("<close xmlns='{}'/>", ns::FRAMING), true),
                };
                let sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::text(text))).await;
                if !matches!(sent, Ok(Ok(()))) || last {
                    break;
                }
            }
        }
    }
    // The stream sees the end of its input and finishes (if it has not already).
    drop(in_tx);
    drop(out_rx);
    if !peer_closed {
        let frame = CloseFrame {
            code: close_code,
            reason: "".into(),
        };
        let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
        // Give the client a moment to answer our close, then drop the connection.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(m)) = stream.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    } else {
        // Flushes tungstenite's reply to the client's close.
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
    }
}

fn too_big() -> StreamError {
    StreamError::new("policy-violation").with_text("message larger than the stanza size limit")
}

/// RFC 7395 §3.3.2: our `<open/>` in answer to the client's.
fn open_tag(server: &ServerState, id: &str) -> String {
    format!(
        "<open xmlns='{}' from='{}' id='{}' version='1.0' xml:lang='en'/>",
        ns::FRAMING,
        escape(&server.config.domain),
        escape(id)
    )
}

/// One text message to one stream event. `None` for a message that carries nothing
/// (whitespace, which some clients send as a keepalive).
pub fn decode(text: &str, limits: Limits) -> Option<Incoming> {
    // The size check comes before any parsing, so an oversized message costs nothing.
    if text.len() > limits.max_stanza_bytes {
        return Some(Err(too_big()));
    }
    if text.trim().is_empty() {
        return None;
    }
    let el = match parse_element_with(text.as_bytes(), limits) {
        Ok(el) => el,
        Err(e) => return Some(Err(StreamError::new(e.condition()).with_text(e.to_string()))),
    };
    Some(framing_event(el))
}

/// Maps RFC 7395 framing to the stream events of RFC 6120, so that the stream code checks
/// `<open/>` exactly as it checks a TCP stream header.
pub fn framing_event(mut el: Element) -> Incoming {
    if el.ns() == ns::FRAMING {
        return match el.name() {
            "open" => Ok(StreamEvent::Open(StreamHeader {
                name: "stream".into(),
                ns: ns::STREAM.into(),
                default_ns: ns::CLIENT.into(),
                attrs: el
                    .attrs()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                namespaces: Vec::new(),
            })),
            "close" => Ok(StreamEvent::Close),
            other => Err(StreamError::new("unsupported-stanza-type")
                .with_text(format!("<{other}/> is not an RFC 7395 framing element"))),
        };
    }
    adopt_client_ns(&mut el);
    Ok(StreamEvent::Element(el))
}

/// COMPAT: some clients leave out `xmlns='jabber:client'` on stanzas in a WebSocket
/// message. Unqualified elements are read as if the message sat inside a client stream,
/// whose default namespace is jabber:client, which is what such clients mean.
fn adopt_client_ns(el: &mut Element) {
    if el.ns().is_empty() {
        el.set_ns(ns::CLIENT);
        for child in el.children_mut() {
            adopt_client_ns(child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_stanza_bytes: 1024,
            max_depth: 8,
            max_attrs: 8,
        }
    }

    #[test]
    fn open_and_close_map_to_stream_events() {
        let open =
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";
        match decode(open, limits()) {
            Some(Ok(StreamEvent::Open(h))) => {
                assert_eq!(h.ns, ns::STREAM);
                assert_eq!(h.default_ns, ns::CLIENT);
                assert_eq!(h.attr("to"), Some("localhost"));
                assert_eq!(h.attr("version"), Some("1.0"));
            }
            other => panic!("{other:?}"),
        }
        let close = "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";
        assert!(matches!(
            decode(close, limits()),
            Some(Ok(StreamEvent::Close))
        ));
    }

    #[test]
    fn stanzas_without_namespace_are_client_stanzas() {
        match decode("<message to='a@b'><body>hi</body></message>", limits()) {
            Some(Ok(StreamEvent::Element(el))) => {
                assert_eq!(el.ns(), ns::CLIENT);
                assert!(el.child("body", ns::CLIENT).is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_messages_are_stream_errors() {
        let cond = |t: &str| match decode(t, limits()) {
            Some(Err(e)) => e.condition,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(cond("hello"), "not-well-formed");
        assert_eq!(cond("<message><body>"), "not-well-formed");
        assert_eq!(
            cond(&format!("<a>{}</a>", "x".repeat(2000))),
            "policy-violation"
        );
        assert_eq!(
            cond("<stream xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"),
            "unsupported-stanza-type"
        );
        assert!(decode("  \n", limits()).is_none());
    }
}
