//! Incoming server streams: header checks, STARTTLS, SASL EXTERNAL, dialback as the
//! receiving server (verifying keys on a separate stream) and as the authoritative
//! server (answering `<db:verify/>`), then stanzas from the domains the stream has
//! authenticated, and nothing else.

use super::conn::{to_client_ns, Conn, S2sError};
use super::{is_local_domain, outgoing};
use crate::ns;
use crate::router;
use crate::stanza::{error_reply, Kind, StanzaError, StreamError};
use crate::xml::reader::{StreamEvent, StreamHeader};
use crate::xml::Element;
use crate::ServerState;
use base64::Engine;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

/// The outcome of one dialback verification, sent back to the stream's task.
struct Verified {
    from: String,
    to: String,
    result: Result<bool, StanzaError>,
}

enum Input {
    Event(StreamEvent),
    Verified(Verified),
}

struct Stream {
    /// The id of our latest stream header (keys are bound to it).
    id: String,
    /// The domain the peer addressed in its header.
    local: String,
    /// The domain the peer claimed in its header, if it is a valid domain.
    claimed: Option<String>,
    /// Remote domains this stream has authenticated (several with piggybacking).
    authenticated: HashSet<String>,
    /// Dialback requests being verified: (from, to).
    pending: HashSet<(String, String)>,
    sasl_done: bool,
}

/// Serves one accepted server connection to completion.
pub async fn serve(
    server: Arc<ServerState>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("s2s-in", %peer, from = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn::new(&server, tcp, peer);
        if direct_tls {
            if let Err(e) = conn.accept_tls(&server).await {
                tracing::debug!("direct TLS handshake failed: {e}");
                return;
            }
        }
        let mut shutdown = shutdown;
        let result = run(&server, &mut conn, &mut shutdown).await;
        let how = match result {
            Ok(()) => S2sError::Closed,
            Err(e) => e,
        };
        conn.finish(how).await;
    }
    .instrument(span)
    .await
}

async fn next_input(
    conn: &mut Conn,
    verified: &mut mpsc::Receiver<Verified>,
    shutdown: &mut watch::Receiver<bool>,
    deadline: Instant,
) -> Result<Input, S2sError> {
    loop {
        if let Some(ev) = conn.next_event()? {
            return Ok(Input::Event(ev));
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                return Err(S2sError::Stream(StreamError::new("system-shutdown")));
            }
            Some(v) = verified.recv() => return Ok(Input::Verified(v)),
            r = conn.read_some() => r?,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(S2sError::Stream(StreamError::new("connection-timeout")));
            }
        }
    }
}

async fn run(
    server: &Arc<ServerState>,
    conn: &mut Conn,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), S2sError> {
    let (vtx, mut vrx) = mpsc::channel::<Verified>(16);
    let started = Instant::now();
    let auth_timeout = Duration::from_secs(server.config.limits.auth_timeout_secs);
    let idle = Duration::from_secs(server.config.limits.idle_timeout_secs);
    let mut last_activity = Instant::now();
    let mut st = Stream {
        id: String::new(),
        local: server.config.domain.clone(),
        claimed: None,
        authenticated: HashSet::new(),
        pending: HashSet::new(),
        sasl_done: false,
    };
    'stream: loop {
        let deadline = started + auth_timeout;
        let header = match next_input(conn, &mut vrx, shutdown, deadline).await? {
            Input::Event(StreamEvent::Open(h)) => h,
            Input::Event(StreamEvent::Close) => return Ok(()),
            Input::Event(StreamEvent::Element(_)) => {
                return Err(S2sError::Stream(StreamError::new("not-well-formed")))
            }
            // A verification finishing across a restart: the peer asks again if needed.
            Input::Verified(v) => {
                st.pending.remove(&(v.from, v.to));
                continue;
            }
        };
        check_header(server, &header, &mut st).map_err(S2sError::Stream)?;
        st.id = new_stream_id();
        let to = st.claimed.clone();
        let local = st.local.clone();
        conn.queue_header(&local, to.as_deref(), Some(&st.id));
        conn.queue(&features(server, conn, &st));
        conn.flush().await?;
        loop {
            let deadline = if st.authenticated.is_empty() {
                started + auth_timeout
            } else {
                last_activity + idle
            };
            let input = next_input(conn, &mut vrx, shutdown, deadline).await?;
            last_activity = Instant::now();
            match input {
                Input::Verified(v) => verified(conn, &mut st, v)?,
                Input::Event(StreamEvent::Close) => return Ok(()),
                Input::Event(StreamEvent::Open(_)) => {
                    return Err(S2sError::Stream(
                        StreamError::new("not-well-formed").with_text("unexpected stream header"),
                    ))
                }
                Input::Event(StreamEvent::Element(el)) => match (el.ns(), el.name()) {
                    (ns::STREAM, "error") => {
                        tracing::info!(
                            "peer sent a stream error: {}",
                            super::conn::describe_stream_error(&el)
                        );
                        return Ok(());
                    }
                    (ns::TLS, "starttls") if !conn.is_tls() => {
                        conn.send(&Element::new("proceed", ns::TLS)).await?;
                        conn.ensure_nothing_buffered()?;
                        conn.accept_tls(server).await?;
                        conn.restart();
                        continue 'stream;
                    }
                    (ns::SASL, "auth") => {
                        if sasl_external(server, conn, &mut st, &el)? {
                            conn.flush().await?;
                            conn.restart();
                            continue 'stream;
                        }
                    }
                    (ns::DIALBACK, "result") => db_result(server, conn, &mut st, &el, &vtx)?,
                    (ns::DIALBACK, "verify") => db_verify(server, conn, &el)?,
                    _ => stanza(server, &st, el)?,
                },
            }
            conn.flush().await?;
        }
    }
}

fn new_stream_id() -> String {
    use rand::Rng;
    let bytes: [u8; 12] = rand::thread_rng().gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn check_header(
    server: &ServerState,
    header: &StreamHeader,
    st: &mut Stream,
) -> Result<(), StreamError> {
    if header.name != "stream" || header.ns != ns::STREAM {
        return Err(StreamError::new("invalid-namespace")
            .with_text("the root must be <stream> in http://etherx.jabber.org/streams"));
    }
    if header.default_ns != ns::SERVER {
        return Err(StreamError::new("invalid-namespace")
            .with_text("the content namespace of a server stream is jabber:server"));
    }
    if let Some(to) = header.attr("to") {
        if !is_local_domain(server, to) {
            return Err(StreamError::new("host-unknown")
                .with_text(format!("this server does not serve {to:?}")));
        }
        st.local = to.to_string();
    }
    let first = st.claimed.is_none();
    st.claimed = header.attr("from").and_then(domain_of).filter(|d| {
        // The peer may only claim the domain it claimed before a restart.
        st.claimed.as_ref().is_none_or(|c| c == d)
    });
    if let (true, Some(claimed)) = (first, &st.claimed) {
        tracing::Span::current().record("from", tracing::field::display(claimed));
    }
    let major = header
        .attr("version")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse::<u32>().ok());
    if major != Some(1) {
        return Err(StreamError::new("unsupported-version")
            .with_text("this server speaks XMPP version 1.0"));
    }
    Ok(())
}

/// A bare domain, or `None` for anything else.
fn domain_of(s: &str) -> Option<String> {
    let j = jid::BareJid::new(s).ok()?;
    if j.node().is_some() {
        return None;
    }
    Some(j.domain().as_str().to_string())
}

fn external_offered(server: &ServerState, conn: &Conn, st: &Stream) -> bool {
    conn.is_tls()
        && !st.sasl_done
        && st
            .claimed
            .as_deref()
            .is_some_and(|d| server.tls.peer_cert_valid_for(conn.peer_certs(), d))
}

fn features(server: &ServerState, conn: &Conn, st: &Stream) -> Element {
    let mut f = Element::new("features", ns::STREAM);
    if !conn.is_tls() {
        let mut tls = Element::new("starttls", ns::TLS);
        if server.config.s2s.require_encryption {
            tls.push(Element::new("required", ns::TLS));
            f.push(tls);
            return f;
        }
        f.push(tls);
    }
    // Offered only once the certificate has been checked for the claimed domain.
    if external_offered(server, conn, st) {
        f.push(
            Element::new("mechanisms", ns::SASL)
                .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
        );
    }
    f.push(
        Element::new("dialback", ns::DIALBACK_FEATURE)
            .with_child(Element::new("errors", ns::DIALBACK_FEATURE)),
    );
    f
}

fn sasl_failure(condition: &str) -> Element {
    Element::new("failure", ns::SASL).with_child(Element::new(condition, ns::SASL))
}

/// XEP-0178 as the receiving entity. `Ok(true)` on success (the stream restarts).
fn sasl_external(
    server: &ServerState,
    conn: &mut Conn,
    st: &mut Stream,
    auth: &Element,
) -> Result<bool, S2sError> {
    if !external_offered(server, conn, st) {
        if conn.is_tls() || !server.config.s2s.require_encryption {
            conn.queue(&sasl_failure("invalid-mechanism"));
            return Ok(false);
        }
        return Err(S2sError::Stream(
            StreamError::new("policy-violation").with_text("negotiate TLS first"),
        ));
    }
    if auth.attr("mechanism") != Some("EXTERNAL") {
        conn.queue(&sasl_failure("invalid-mechanism"));
        return Ok(false);
    }
    let claimed = st.claimed.clone().unwrap_or_default();
    let text: String = auth.text().chars().filter(|c| !c.is_whitespace()).collect();
    let authzid = if text.is_empty() || text == "=" {
        claimed.clone()
    } else {
        match base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(a) => a,
            None => {
                conn.queue(&sasl_failure("incorrect-encoding"));
                return Ok(false);
            }
        }
    };
    if authzid != claimed && !server.tls.peer_cert_valid_for(conn.peer_certs(), &authzid) {
        conn.queue(&sasl_failure("invalid-authzid"));
        return Ok(false);
    }
    tracing::info!(domain = %authzid, local = %st.local, "authenticated with SASL EXTERNAL");
    conn.queue(&Element::new("success", ns::SASL));
    st.authenticated.insert(authzid);
    st.sasl_done = true;
    Ok(true)
}

fn dialback_error(name: &str, from: &str, to: &str, err: &StanzaError) -> Element {
    let mut e = Element::new(name, ns::DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", "error");
    let mut inner = err.to_element();
    inner.set_ns(ns::SERVER);
    e.push(inner);
    e
}

/// `<db:result/>` from an originating server: verify its key with the authoritative
/// server (XEP-0220 §2.2–2.4).
fn db_result(
    server: &Arc<ServerState>,
    conn: &mut Conn,
    st: &mut Stream,
    el: &Element,
    vtx: &mpsc::Sender<Verified>,
) -> Result<(), S2sError> {
    if el.attr("type").is_some() {
        // An answer we never asked for on a stream where we only receive requests:
        // it must not authenticate anything (XEP-0220 §2.4), so it is noted and ignored.
        tracing::info!("unsolicited dialback answer ignored");
        return Ok(());
    }
    if !conn.is_tls() && server.config.s2s.require_encryption {
        return Err(S2sError::Stream(
            StreamError::new("policy-violation").with_text("negotiate TLS first"),
        ));
    }
    let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
        return Err(S2sError::Stream(
            StreamError::new("improper-addressing").with_text("dialback needs from and to"),
        ));
    };
    let Some(from) = domain_of(from) else {
        return Err(S2sError::Stream(
            StreamError::new("invalid-from").with_text("dialback from is not a domain"),
        ));
    };
    let to = to.to_string();
    if !is_local_domain(server, &to) {
        conn.queue(&dialback_error(
            "result",
            &to,
            &from,
            &StanzaError::item_not_found().with_text("this server does not serve that domain"),
        ));
        return Ok(());
    }
    if st.authenticated.contains(&from) {
        conn.queue(&valid_result(&to, &from));
        return Ok(());
    }
    if !st.pending.insert((from.clone(), to.clone())) {
        return Ok(());
    }
    let key = el.text();
    let (state, tx, id) = (server.clone(), vtx.clone(), st.id.clone());
    tokio::spawn(async move {
        let result = outgoing::verify(state, to.clone(), from.clone(), id, key).await;
        let _ = tx.send(Verified { from, to, result }).await;
    });
    Ok(())
}

fn valid_result(from: &str, to: &str) -> Element {
    Element::new("result", ns::DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", "valid")
}

fn verified(conn: &mut Conn, st: &mut Stream, v: Verified) -> Result<(), S2sError> {
    st.pending.remove(&(v.from.clone(), v.to.clone()));
    match v.result {
        Ok(true) => {
            tracing::info!(domain = %v.from, local = %v.to, "authenticated with dialback");
            conn.queue(&valid_result(&v.to, &v.from));
            st.authenticated.insert(v.from);
            Ok(())
        }
        Ok(false) => {
            tracing::info!(domain = %v.from, "dialback key refused by the authoritative server");
            conn.queue(
                &Element::new("result", ns::DIALBACK)
                    .with_attr("from", v.to.as_str())
                    .with_attr("to", v.from.as_str())
                    .with_attr("type", "invalid"),
            );
            Err(S2sError::Stream(
                StreamError::new("not-authorized").with_text("dialback key is not valid"),
            ))
        }
        Err(err) => {
            conn.queue(&dialback_error("result", &v.to, &v.from, &err));
            Ok(())
        }
    }
}

/// `<db:verify/>` from a receiving server: we are the authoritative server and check
/// whether we issued that key.
fn db_verify(server: &ServerState, conn: &mut Conn, el: &Element) -> Result<(), S2sError> {
    if el.attr("type").is_some() {
        tracing::info!("unsolicited dialback verification answer ignored");
        return Ok(());
    }
    let (Some(from), Some(to), Some(id)) = (el.attr("from"), el.attr("to"), el.attr("id")) else {
        return Err(S2sError::Stream(
            StreamError::new("improper-addressing").with_text("db:verify needs from, to and id"),
        ));
    };
    if !is_local_domain(server, to) {
        let mut e = dialback_error(
            "verify",
            to,
            from,
            &StanzaError::item_not_found().with_text("this server does not serve that domain"),
        );
        e.set_attr("id", id);
        conn.queue(&e);
        return Ok(());
    }
    let valid = server.s2s.dialback_key_valid(from, to, id, &el.text());
    conn.queue(
        &Element::new("verify", ns::DIALBACK)
            .with_attr("from", to)
            .with_attr("to", from)
            .with_attr("id", id)
            .with_attr("type", if valid { "valid" } else { "invalid" }),
    );
    Ok(())
}

/// A stanza on an incoming stream: only from an authenticated domain, only to us.
fn stanza(server: &ServerState, st: &Stream, mut el: Element) -> Result<(), S2sError> {
    let kind = match Kind::of(&el) {
        Some(k) if el.ns() == ns::SERVER => k,
        _ => {
            return Err(S2sError::Stream(
                StreamError::new("unsupported-stanza-type").with_text(format!(
                    "<{}/> in {} is not handled on a server stream",
                    el.name(),
                    el.ns()
                )),
            ))
        }
    };
    if st.authenticated.is_empty() {
        return Err(S2sError::Stream(
            StreamError::new("not-authorized").with_text("authenticate first"),
        ));
    }
    let (Some(from), Some(to)) = (
        el.attr("from").map(str::to_string),
        el.attr("to").map(str::to_string),
    ) else {
        return Err(S2sError::Stream(
            StreamError::new("improper-addressing")
                .with_text("stanzas between servers need from and to"),
        ));
    };
    let from = match jid::Jid::new(&from) {
        Ok(j) if st.authenticated.contains(j.domain().as_str()) => j,
        _ => {
            return Err(S2sError::Stream(
                StreamError::new("invalid-from")
                    .with_text("the from domain is not one this stream has authenticated"),
            ))
        }
    };
    el.set_attr("from", from.as_str());
    match jid::Jid::new(&to) {
        Ok(to) if is_local_domain(server, to.domain().as_str()) => {
            el.set_attr("to", to.as_str());
        }
        Ok(_) => {
            return Err(S2sError::Stream(
                StreamError::new("host-unknown")
                    .with_text("this server does not serve that domain"),
            ))
        }
        Err(_) => {
            to_client_ns(&mut el);
            router::bounce(server, &el, StanzaError::jid_malformed());
            return Ok(());
        }
    }
    to_client_ns(&mut el);
    let ty = el.attr("type");
    let bad = match kind {
        Kind::Iq => {
            el.attr("id").is_none() || !matches!(ty, Some("get" | "set" | "result" | "error"))
        }
        Kind::Message => {
            ty.is_some_and(|t| !matches!(t, "chat" | "error" | "groupchat" | "headline" | "normal"))
        }
        Kind::Presence => ty.is_some_and(|t| {
            !matches!(
                t,
                "error"
                    | "probe"
                    | "subscribe"
                    | "subscribed"
                    | "unavailable"
                    | "unsubscribe"
                    | "unsubscribed"
            )
        }),
    };
    if bad {
        if let Some(reply) = error_reply(&el, &StanzaError::bad_request()) {
            router::route(server, reply);
        }
        return Ok(());
    }
    router::route(server, el);
    Ok(())
}
