//! Outgoing server streams: one task per (local, remote) pair that connects, secures,
//! authenticates (SASL EXTERNAL, else dialback) and then writes the pair's stanzas; and
//! short-lived verification streams for dialback (XEP-0220 §2.3).

use super::conn::{describe_stream_error, Conn, S2sError};
use super::resolve;
use super::Pair;
use crate::ns;
use crate::router;
use crate::stanza::{StanzaError, StreamError};
use crate::xml::reader::StreamEvent;
use crate::xml::Element;
use crate::ServerState;
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

/// Why an outgoing stream could not be set up; decides the bounce condition.
#[derive(Debug)]
enum Failure {
    /// No address, connection refused, no acceptable security or authentication.
    NotFound(String),
    /// The peer did not answer in time.
    Timeout(String),
    Shutdown,
}

impl Failure {
    fn stanza_error(&self, remote: &str) -> StanzaError {
        match self {
            Failure::NotFound(why) => StanzaError::remote_server_not_found()
                .with_text(format!("cannot reach {remote}: {why}")),
            Failure::Timeout(why) => StanzaError::remote_server_timeout()
                .with_text(format!("{remote} did not answer in time: {why}")),
            Failure::Shutdown => {
                StanzaError::remote_server_timeout().with_text("this server is shutting down")
            }
        }
    }
}

impl From<S2sError> for Failure {
    fn from(e: S2sError) -> Self {
        match e {
            S2sError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                Failure::Timeout(e.to_string())
            }
            S2sError::Io(e) => Failure::NotFound(e.to_string()),
            S2sError::Closed => Failure::NotFound("the peer closed the stream".into()),
            S2sError::Stream(e) => Failure::NotFound(format!("stream error: {e}")),
        }
    }
}

/// A stream that is open and past TLS, with what the peer offered.
struct Opened {
    conn: Conn,
    features: Element,
    /// The id of the peer's latest stream header (dialback keys are bound to it).
    stream_id: String,
    /// The peer declared the dialback namespace (servers that predate the feature).
    dialback_declared: bool,
}

/// The pool task of one (local, remote) pair.
pub(super) async fn run(
    state: Arc<ServerState>,
    pair: Pair,
    id: u64,
    mut rx: mpsc::Receiver<Element>,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let span = tracing::info_span!("s2s-out", local = %pair.0, remote = %pair.1);
    async move {
        let timeout = Duration::from_secs(state.config.s2s.negotiation_timeout_secs);
        let opened = tokio::select! {
            r = tokio::time::timeout(timeout, connect_and_authenticate(&state, &pair)) => match r {
                Ok(r) => r,
                Err(_) => Err(Failure::Timeout("stream negotiation took too long".into())),
            },
            _ = shutdown.changed() => Err(Failure::Shutdown),
        };
        match opened {
            Err(failure) => {
                tracing::info!("outgoing stream failed: {failure:?}");
                if !matches!(failure, Failure::Shutdown) {
                    state.s2s.note_failure(&pair);
                }
                let err = failure.stanza_error(&pair.1);
                for s in state.s2s.fail(&pair, id, &mut rx) {
                    router::bounce(&state, &s, err.clone());
                }
            }
            Ok((conn, auth)) => {
                tracing::info!(auth = %auth, "outgoing stream established");
                state.s2s.note_success(&pair);
                let end = established(&state, conn, &mut rx, &mut shutdown).await;
                let (left, err) = match end {
                    End::Shutdown => (
                        state.s2s.fail(&pair, id, &mut rx),
                        Failure::Shutdown.stanza_error(&pair.1),
                    ),
                    // Idle or broken: whatever is still queued goes to a fresh stream
                    // (only what does not fit there comes back).
                    End::Done => (
                        state.s2s.retire(&pair, id, &mut rx),
                        StanzaError::remote_server_timeout()
                            .with_text(format!("too many stanzas waiting for {}", pair.1)),
                    ),
                };
                for s in left {
                    router::bounce(&state, &s, err.clone());
                }
            }
        }
        drop(alive);
    }
    .instrument(span)
    .await
}

/// How an outgoing stream was authenticated (logged, so operators and tests can tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    SaslExternal,
    Dialback,
}

impl std::fmt::Display for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::SaslExternal => "SASL EXTERNAL",
            Auth::Dialback => "dialback",
        })
    }
}

async fn connect_and_authenticate(
    state: &ServerState,
    pair: &Pair,
) -> Result<(Conn, Auth), Failure> {
    let (local, remote) = (pair.0.as_str(), pair.1.as_str());
    let mut opened = open_stream(state, local, remote).await?;
    if offers_external(&opened.features) {
        match sasl_external(state, &mut opened, local, remote).await? {
            true => return Ok((opened.conn, Auth::SaslExternal)),
            false => tracing::info!("SASL EXTERNAL refused; trying dialback"),
        }
    }
    let dialback =
        opened.features.has_child("dialback", ns::DIALBACK_FEATURE) || opened.dialback_declared;
    if !dialback {
        return Err(Failure::NotFound(
            "the peer offers no authentication we can use".into(),
        ));
    }
    let key = state.s2s.dialback_key(remote, local, &opened.stream_id);
    let conn = &mut opened.conn;
    conn.send(
        &Element::new("result", ns::DIALBACK)
            .with_attr("from", local)
            .with_attr("to", remote)
            .with_text(key),
    )
    .await?;
    loop {
        let el = conn.expect_element().await?;
        let answers_us = el.is("result", ns::DIALBACK)
            && el.attr("from") == Some(remote)
            && el.attr("to") == Some(local);
        if !answers_us {
            // XEP-0220 §2.4: only the answer to the request we made counts; anything
            // else (an unsolicited result, a verify nobody asked for) changes nothing.
            tracing::debug!(name = el.name(), "ignored while waiting for dialback");
            continue;
        }
        return match el.attr("type") {
            Some("valid") => Ok((opened.conn, Auth::Dialback)),
            Some("invalid") => Err(Failure::NotFound(
                "the peer refused our dialback key".into(),
            )),
            Some("error") => Err(Failure::NotFound(format!(
                "dialback error: {}",
                el.child("error", ns::SERVER)
                    .or_else(|| el.child("error", ns::CLIENT))
                    .and_then(|e| e.children().next())
                    .map(|c| c.name().to_string())
                    .unwrap_or_else(|| "undefined".into())
            ))),
            _ => Err(Failure::NotFound("malformed dialback answer".into())),
        };
    }
}

fn offers_external(features: &Element) -> bool {
    features.child("mechanisms", ns::SASL).is_some_and(|m| {
        m.children()
            .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == "EXTERNAL")
    })
}

/// XEP-0178 §4: EXTERNAL with our domain as authorization identity. `Ok(false)` when
/// the peer refuses (dialback may still work).
async fn sasl_external(
    state: &ServerState,
    opened: &mut Opened,
    local: &str,
    remote: &str,
) -> Result<bool, Failure> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(local);
    let conn = &mut opened.conn;
    conn.send(
        &Element::new("auth", ns::SASL)
            .with_attr("mechanism", "EXTERNAL")
            .with_text(b64),
    )
    .await?;
    let el = conn.expect_element().await?;
    if el.is("failure", ns::SASL) {
        return Ok(false);
    }
    if !el.is("success", ns::SASL) {
        return Err(Failure::NotFound(format!(
            "unexpected <{}/> during SASL",
            el.name()
        )));
    }
    conn.restart();
    conn.queue_header(local, Some(remote), None);
    conn.flush().await?;
    let header = conn.expect_header().await?;
    check_header(&header)?;
    let _features = conn.expect_element().await?;
    let _ = state;
    Ok(true)
}

fn check_header(header: &crate::xml::StreamHeader) -> Result<String, Failure> {
    if header.name != "stream" || header.ns != ns::STREAM || header.default_ns != ns::SERVER {
        return Err(Failure::NotFound(
            "the peer did not open a server stream".into(),
        ));
    }
    let major = header
        .attr("version")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse::<u32>().ok());
    if major != Some(1) {
        return Err(Failure::NotFound("the peer does not speak XMPP 1.0".into()));
    }
    header
        .attr("id")
        .map(str::to_string)
        .ok_or_else(|| Failure::NotFound("the peer's stream has no id".into()))
}

/// Resolves, connects, opens the stream and negotiates TLS.
async fn open_stream(state: &ServerState, local: &str, remote: &str) -> Result<Opened, Failure> {
    let targets = resolve::targets(state, remote)
        .await
        .map_err(Failure::NotFound)?;
    let connect_timeout = Duration::from_secs(state.config.s2s.connect_timeout_secs);
    let mut last = Failure::NotFound(format!("no address found for {remote}"));
    let mut connected = None;
    'targets: for target in &targets {
        for addr in resolve::addresses(state, target).await {
            match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    connected = Some((tcp, addr, target.direct_tls));
                    break 'targets;
                }
                Ok(Err(e)) => last = Failure::NotFound(format!("{addr}: {e}")),
                Err(_) => last = Failure::Timeout(format!("connecting to {addr}")),
            }
        }
    }
    let Some((tcp, addr, direct_tls)) = connected else {
        return Err(last);
    };
    tracing::debug!(%addr, direct_tls, "connected");
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::new(state, tcp, addr);
    conn.set_local(local);
    if direct_tls {
        conn.connect_tls(state, remote, true).await?;
    }
    loop {
        conn.queue_header(local, Some(remote), None);
        conn.flush().await?;
        let header = conn.expect_header().await?;
        let stream_id = check_header(&header)?;
        let dialback_declared = header.namespaces.iter().any(|(_, uri)| uri == ns::DIALBACK);
        let features = conn.expect_element().await?;
        if !features.is("features", ns::STREAM) {
            return Err(Failure::NotFound("expected stream features".into()));
        }
        if !conn.is_tls() {
            if features.has_child("starttls", ns::TLS) {
                conn.send(&Element::new("starttls", ns::TLS)).await?;
                let answer = conn.expect_element().await?;
                if !answer.is("proceed", ns::TLS) {
                    return Err(Failure::NotFound("the peer refused STARTTLS".into()));
                }
                conn.ensure_nothing_buffered()?;
                conn.connect_tls(state, remote, false).await?;
                conn.restart();
                continue;
            }
            if state.config.s2s.require_encryption {
                return Err(Failure::NotFound(
                    "the peer does not offer TLS, which this server requires".into(),
                ));
            }
        }
        return Ok(Opened {
            conn,
            features,
            stream_id,
            dialback_declared,
        });
    }
}

enum End {
    /// Idle, closed by the peer, or broken: the task retires.
    Done,
    Shutdown,
}

/// The authenticated stream: stanzas out, and (since this direction carries no
/// stanzas in) only stream-level traffic in.
async fn established(
    state: &ServerState,
    mut conn: Conn,
    rx: &mut mpsc::Receiver<Element>,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let idle = Duration::from_secs(state.config.s2s.idle_timeout_secs);
    let mut last_activity = Instant::now();
    let mut batch: Vec<Element> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                conn.finish(S2sError::Stream(StreamError::new("system-shutdown"))).await;
                return End::Shutdown;
            }
            next = rx.recv() => {
                let Some(first) = next else {
                    conn.finish(S2sError::Closed).await;
                    return End::Done;
                };
                batch.clear();
                conn.queue_stanza(&first);
                batch.push(first);
                while batch.len() < 64 {
                    match rx.try_recv() {
                        Ok(s) => {
                            conn.queue_stanza(&s);
                            batch.push(s);
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = conn.flush().await {
                    // Some of these may have reached the peer; without stream management
                    // we cannot tell which, so the senders are told they may not have.
                    tracing::info!("writing to the peer failed: {e}");
                    let err = StanzaError::remote_server_timeout()
                        .with_text("the server-to-server stream failed while sending");
                    for s in batch.drain(..) {
                        router::bounce(state, &s, err.clone());
                    }
                    return End::Done;
                }
                last_activity = Instant::now();
            }
            read = conn.read_some() => {
                if let Err(e) = read {
                    tracing::debug!("outgoing stream ended: {e}");
                    if matches!(e, S2sError::Closed) {
                        conn.finish(S2sError::Closed).await;
                    } else {
                        conn.finish(e).await;
                    }
                    return End::Done;
                }
                loop {
                    match conn.next_event() {
                        Ok(None) => break,
                        Ok(Some(StreamEvent::Close)) => {
                            conn.finish(S2sError::Closed).await;
                            return End::Done;
                        }
                        Ok(Some(StreamEvent::Element(el))) if el.is("error", ns::STREAM) => {
                            tracing::info!("peer sent a stream error: {}", describe_stream_error(&el));
                            conn.finish(S2sError::Closed).await;
                            return End::Done;
                        }
                        Ok(Some(StreamEvent::Element(el))) if el.ns() == ns::DIALBACK => {
                            tracing::debug!(name = el.name(), "unsolicited dialback element ignored");
                        }
                        Ok(Some(StreamEvent::Element(el))) => {
                            // RFC 6120 §2.3: this direction is ours to send on.
                            conn.finish(S2sError::Stream(
                                StreamError::new("unsupported-stanza-type").with_text(format!(
                                    "<{}/> on a stream this server initiated",
                                    el.name()
                                )),
                            ))
                            .await;
                            return End::Done;
                        }
                        Ok(Some(StreamEvent::Open(_))) => {
                            conn.finish(S2sError::Stream(StreamError::new("not-well-formed")))
                                .await;
                            return End::Done;
                        }
                        Err(e) => {
                            conn.finish(e).await;
                            return End::Done;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(last_activity + idle) => {
                tracing::debug!("closing idle outgoing stream");
                conn.finish(S2sError::Closed).await;
                return End::Done;
            }
        }
    }
}

/// Asks `remote`'s authoritative server, on a stream of its own, whether `key` is the
/// key it generated for a stream with id `stream_id` from `remote` to `local`.
/// `Ok(true)` valid, `Ok(false)` invalid, `Err` when no answer could be had.
pub async fn verify(
    state: Arc<ServerState>,
    local: String,
    remote: String,
    stream_id: String,
    key: String,
) -> Result<bool, StanzaError> {
    let span = tracing::info_span!("s2s-verify", local = %local, remote = %remote);
    let timeout = Duration::from_secs(state.config.s2s.negotiation_timeout_secs);
    let work = async {
        let mut opened = open_stream(&state, &local, &remote).await?;
        let conn = &mut opened.conn;
        conn.send(
            &Element::new("verify", ns::DIALBACK)
                .with_attr("from", local.as_str())
                .with_attr("to", remote.as_str())
                .with_attr("id", stream_id.as_str())
                .with_text(key),
        )
        .await?;
        loop {
            let el = conn.expect_element().await?;
            let ours = el.is("verify", ns::DIALBACK)
                && el.attr("id") == Some(stream_id.as_str())
                && el.attr("from") == Some(remote.as_str())
                && el.attr("to") == Some(local.as_str());
            if !ours {
                tracing::debug!(name = el.name(), "ignored on a verification stream");
                continue;
            }
            let answer = match el.attr("type") {
                Some("valid") => Ok(true),
                Some("invalid") => Ok(false),
                _ => Err(Failure::NotFound(
                    "the authoritative server answered with an error".into(),
                )),
            };
            opened.conn.finish(S2sError::Closed).await;
            return answer;
        }
    };
    let result = match tokio::time::timeout(timeout, work.instrument(span)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout(
            "dialback verification took too long".into(),
        )),
    };
    result.map_err(|f| {
        tracing::info!(%remote, "dialback verification failed: {f:?}");
        f.stanza_error(&remote)
    })
}
