//! BOSH (XEP-0124) carrying XMPP (XEP-0206) at `/http-bind`.
//!
//! A BOSH session is a client stream (`c2s::serve_framed`) whose input arrives in the
//! bodies of HTTP requests and whose output waits in the session until a request is
//! there to carry it. Requests are numbered (`rid`); the server handles them strictly in
//! order, keeps the last few responses so that a request lost with its connection can be
//! sent again with the same rid and get the same answer, holds up to `hold` requests open
//! for `wait` seconds so the server can push, and ends a session that goes
//! `inactivity` seconds without any request.

use super::{plain, Body, Ctx};
use crate::c2s::stream::{Frame, Framed, Inbound, Incoming};
use crate::stanza::StreamError;
use crate::xml::element::escape;
use crate::xml::reader::{parse_element_with, Limits, StreamEvent, StreamHeader};
use crate::xml::Element;
use crate::{c2s, ns};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming as HttpBody;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, CONTENT_TYPE,
};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Responses kept for resending; also how far ahead of the last rid a request may be.
const WINDOW: u64 = 5;
/// How long an ended session stays around so the client's next request can still pick
/// up its last data and the terminate condition.
const LINGER: Duration = Duration::from_secs(10);
/// Upper bound on how long a session-creation request waits for the stream's features.
const FIRST_RESPONSE: Duration = Duration::from_secs(10);

/// All BOSH sessions of the server, by sid.
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions {
            map: Mutex::new(HashMap::new()),
        })
    }

    fn get(&self, sid: &str) -> Option<Arc<Session>> {
        lock(&self.map).get(sid).cloned()
    }

    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere never leaves these maps half-updated in a way that matters more
    // than refusing all BOSH traffic would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Session {
    sid: String,
    wait: Duration,
    hold: usize,
    inactivity: Duration,
    incoming: mpsc::Sender<Inbound>,
    state: Mutex<State>,
    /// Wakes held requests (new output, the session ending, a newer request).
    notify: Notify,
}

#[derive(Default)]
struct State {
    /// The highest rid handled so far.
    last_rid: u64,
    /// Recent responses by rid (`None` while that request is still being answered).
    responses: BTreeMap<u64, Option<String>>,
    /// Serialised elements waiting for a request to carry them.
    out: Vec<String>,
    /// The stream's header arrived (its id is the session's authid).
    authid: Option<String>,
    /// The stream ended: `Some(condition)` for the terminate body.
    ended: Option<Option<&'static str>>,
    /// Requests currently held, by rid.
    held: Vec<u64>,
    /// Held requests with a rid below this give way to newer ones.
    release_below: u64,
    /// Requests being handled right now (inactivity runs only when there are none).
    in_flight: usize,
    last_activity: Option<Instant>,
}

fn body_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    // BOSH clients are often pages served from another origin.
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

/// A terminal binding error (XEP-0124 §17.2).
fn terminate(condition: &'static str) -> Response<Body> {
    body_response(
        StatusCode::OK,
        format!(
            "<body xmlns='{}' type='terminate' condition='{condition}'/>",
            ns::HTTPBIND
        ),
    )
}

fn wrap(payloads: &[String], extra_attrs: &str) -> String {
    let mut s = format!(
        "<body xmlns='{}' xmlns:stream='{}'{extra_attrs}",
        ns::HTTPBIND,
        ns::STREAM
    );
    if payloads.is_empty() {
        s.push_str("/>");
    } else {
        s.push('>');
        for p in payloads {
            s.push_str(p);
        }
        s.push_str("</body>");
    }
    s
}

fn attr_u64(el: &Element, name: &str) -> Option<u64> {
    el.attr(name).and_then(|v| v.trim().parse().ok())
}

pub async fn handle(ctx: Arc<Ctx>, req: Request<HttpBody>) -> Response<Body> {
    if req.method() == Method::OPTIONS {
        // CORS preflight for cross-origin BOSH clients.
        let mut r = Response::new(Body::default());
        let h = r.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, OPTIONS"),
        );
        h.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Content-Type"),
        );
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        return r;
    }
    if req.method() != Method::POST {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "this is a BOSH endpoint (XEP-0206): POST a <body/>\n",
        );
    }
    let server = ctx.server().clone();
    let cfg = &server.config;
    let bytes = match Limited::new(req.into_body(), cfg.http.max_body_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
            }
            return plain(StatusCode::BAD_REQUEST, "could not read the request body\n");
        }
    };
    let limits = Limits {
        max_stanza_bytes: cfg.http.max_body_bytes,
        // One more level for the <body/> wrapper.
        max_depth: cfg.limits.max_depth + 1,
        max_attrs: cfg.limits.max_attrs,
    };
    let body = match parse_element_with(&bytes, limits) {
        Ok(b) if b.is("body", ns::HTTPBIND) => b,
        // XEP-0124 §17.1: a request that is not a BOSH body is a bad request.
        _ => return plain(StatusCode::BAD_REQUEST, "expected a BOSH <body/>\n"),
    };
    let Some(rid) = attr_u64(&body, "rid").filter(|r| *r > 0 && *r < (1u64 << 53)) else {
        return plain(StatusCode::BAD_REQUEST, "rid is missing or invalid\n");
    };
    match body.attr("sid") {
        None => create(ctx, body, rid).await,
        Some(sid) => match ctx.http.bosh.get(sid) {
            Some(session) => request(&session, body, rid).await,
            None => terminate("item-not-found"),
        },
    }
}

/// Session creation (XEP-0124 §7, XEP-0206 §3).
async fn create(ctx: Arc<Ctx>, body: Element, rid: u64) -> Response<Body> {
    let server = ctx.server().clone();
    let cfg = &server.config.http;
    let to = body.attr("to").unwrap_or("");
    if to != server.config.domain {
        return terminate("host-unknown");
    }
    let wait = attr_u64(&body, "wait")
        .unwrap_or(cfg.bosh_max_wait_secs)
        .clamp(1, cfg.bosh_max_wait_secs);
    let hold = attr_u64(&body, "hold")
        .unwrap_or(1)
        .min(u64::from(cfg.bosh_max_hold)) as usize;
    let sid = {
        use rand::Rng;
        let bytes: [u8; 16] = rand::thread_rng().gen();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::channel(64);
    let session = Arc::new(Session {
        sid: sid.clone(),
        wait: Duration::from_secs(wait),
        hold,
        inactivity: Duration::from_secs(cfg.bosh_inactivity_secs),
        incoming: in_tx,
        state: Mutex::new(State {
            last_rid: rid,
            in_flight: 1,
            ..State::default()
        }),
        notify: Notify::new(),
    });
    lock(&session.state).responses.insert(rid, None);
    lock(&ctx.http.bosh.map).insert(sid.clone(), session.clone());
    let end = Framed {
        incoming: in_rx,
        outgoing: out_tx,
        secure: ctx.secure,
        bindings: ctx.bindings.clone(),
    };
    let stream = c2s::serve_framed(server.clone(), end, ctx.peer, "bosh", ctx.shutdown());
    let pump_session = session.clone();
    let sessions = ctx.http.bosh.clone();
    let alive = ctx.alive();
    let guard = ctx.guard();
    let mut shutdown = ctx.shutdown();
    tokio::spawn(async move {
        tokio::join!(stream, pump(&pump_session, out_rx));
        // Let the client's next request collect the end of the stream, then forget it
        // (at once when the server is stopping: shutdown waits for this task).
        if !*shutdown.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(LINGER.min(pump_session.inactivity)) => {}
                _ = shutdown.changed() => {}
            }
        }
        lock(&sessions.map).remove(&pump_session.sid);
        drop(guard);
        drop(alive);
    });
    let header = StreamHeader {
        name: "stream".into(),
        ns: ns::STREAM.into(),
        default_ns: ns::CLIENT.into(),
        attrs: vec![
            ("to".into(), to.to_string()),
            ("version".into(), xmpp_version(&body)),
        ],
        namespaces: Vec::new(),
    };
    if session
        .incoming
        .send(Ok(StreamEvent::Open(header)).into())
        .await
        .is_err()
    {
        return terminate("internal-server-error");
    }
    // The first response carries the session parameters and, per XEP-0206 §3, the
    // stream features: wait for them rather than make the client poll once more.
    let deadline = Instant::now() + FIRST_RESPONSE;
    loop {
        let notified = session.notify.notified();
        {
            let mut st = lock(&session.state);
            if st.ended.is_some() || (st.authid.is_some() && !st.out.is_empty()) {
                let attrs = format!(
                    " sid='{sid}' wait='{wait}' requests='{}' hold='{hold}' inactivity='{}' polling='{}' ver='1.11' from='{}' authid='{}' secure='{}' xmlns:xmpp='{}' xmpp:version='1.0' xmpp:restartlogic='true'",
                    hold + 1,
                    cfg.bosh_inactivity_secs,
                    1,
                    escape(&server.config.domain),
                    escape(st.authid.as_deref().unwrap_or("")),
                    ctx.secure,
                    ns::XBOSH,
                );
                let out = std::mem::take(&mut st.out);
                let text = wrap(&out, &attrs);
                st.responses.insert(rid, Some(text.clone()));
                st.in_flight -= 1;
                st.last_activity = Some(Instant::now());
                return body_response(StatusCode::OK, text);
            }
        }
        if tokio::time::timeout_at(deadline.into(), notified)
            .await
            .is_err()
        {
            session.close();
            return terminate("internal-server-error");
        }
    }
}

fn xmpp_version(body: &Element) -> String {
    // Without xmpp:version the client speaks XEP-0124 without XEP-0206; it still gets
    // an XMPP 1.0 stream, the only kind there is.
    body.attr(&format!("{{{}}}version", ns::XBOSH))
        .unwrap_or("1.0")
        .to_string()
}

impl Session {
    /// Ends the session from the HTTP side: the stream sees its input end.
    fn close(&self) {
        let mut st = lock(&self.state);
        if st.ended.is_none() {
            st.ended = Some(None);
        }
        drop(st);
        self.notify.notify_waiters();
        // The stream's own closing is driven by `incoming` being dropped with the
        // session; until then, tell it explicitly.
        let _ = self.incoming.try_send(Ok(StreamEvent::Close).into());
    }
}

/// A request on an existing session.
async fn request(session: &Arc<Session>, body: Element, rid: u64) -> Response<Body> {
    // Order: wait until this rid is the next one (a later request may overtake an
    // earlier one on another connection), answer a repeated rid from the cache, refuse
    // anything outside the window.
    let deadline = Instant::now() + session.wait;
    loop {
        let notified = session.notify.notified();
        {
            let mut st = lock(&session.state);
            if rid <= st.last_rid {
                match st.responses.get(&rid) {
                    Some(Some(text)) => {
                        // XEP-0124 §14.3: a resent request gets the same answer.
                        return body_response(StatusCode::OK, text.clone());
                    }
                    Some(None) => {} // the first copy is still being answered: wait for it
                    None => return terminate("item-not-found"),
                }
            } else if rid > st.last_rid + WINDOW {
                drop(st);
                session.close();
                return terminate("item-not-found");
            } else if rid == st.last_rid + 1 {
                st.last_rid = rid;
                st.responses.insert(rid, None);
                while st.responses.len() as u64 > WINDOW {
                    st.responses.pop_first();
                }
                st.in_flight += 1;
                break;
            }
        }
        if tokio::time::timeout_at(deadline.into(), notified)
            .await
            .is_err()
        {
            // The gap never filled: the client lost a request and did not resend it.
            session.close();
            return terminate("item-not-found");
        }
    }
    let text = process(session, &body, rid).await;
    let mut st = lock(&session.state);
    st.responses.insert(rid, Some(text.clone()));
    st.in_flight -= 1;
    st.last_activity = Some(Instant::now());
    drop(st);
    // Requests queued behind this rid may go now.
    session.notify.notify_waiters();
    body_response(StatusCode::OK, text)
}

/// Feeds the body's content to the stream and waits (up to `wait`) for something to
/// answer with. Returns the response body.
async fn process(session: &Arc<Session>, body: &Element, rid: u64) -> String {
    let mut events: Vec<Incoming> = Vec::new();
    let restart = body.attr(&format!("{{{}}}restart", ns::XBOSH)) == Some("true");
    if restart {
        events.push(Ok(StreamEvent::Open(StreamHeader {
            name: "stream".into(),
            ns: ns::STREAM.into(),
            default_ns: ns::CLIENT.into(),
            attrs: vec![
                ("to".into(), body.attr("to").unwrap_or("").to_string()),
                ("version".into(), "1.0".into()),
            ],
            namespaces: Vec::new(),
        })));
    }
    for child in body.children() {
        let mut el = child.clone();
        adopt_client_ns(&mut el);
        events.push(Ok(StreamEvent::Element(el)));
    }
    let terminating = body.attr("type") == Some("terminate");
    if terminating {
        events.push(Ok(StreamEvent::Close));
    }
    let inbound: Vec<Inbound> = if events.is_empty() {
        // An empty poll: nothing for the stream but the news that the client is there.
        vec![Inbound::KeepAlive]
    } else {
        events.into_iter().map(Inbound::from).collect()
    };
    for ev in inbound {
        if session.incoming.send(ev).await.is_err() {
            break;
        }
    }
    // A newer request makes the oldest held ones give way (only `hold` may wait).
    {
        let mut st = lock(&session.state);
        st.held.push(rid);
        if st.held.len() > session.hold {
            let excess = st.held.len() - session.hold;
            let mut sorted = st.held.clone();
            sorted.sort_unstable();
            st.release_below = st.release_below.max(sorted[excess - 1] + 1);
        }
    }
    session.notify.notify_waiters();
    let deadline = Instant::now() + session.wait;
    loop {
        let notified = session.notify.notified();
        {
            let mut st = lock(&session.state);
            let give_way = rid < st.release_below;
            let answer = if terminating {
                // XEP-0124 §13: the answer to a terminate is the session's last word.
                Some(wrap(&std::mem::take(&mut st.out), " type='terminate'"))
            } else if !st.out.is_empty() && !give_way {
                Some(wrap(&std::mem::take(&mut st.out), ""))
            } else if let Some(cond) = st.ended {
                let out = std::mem::take(&mut st.out);
                let attrs = match cond {
                    Some(c) => format!(" type='terminate' condition='{c}'"),
                    None => " type='terminate'".to_string(),
                };
                Some(wrap(&out, &attrs))
            } else if give_way || session.hold == 0 {
                Some(wrap(&[], ""))
            } else {
                None
            };
            if let Some(a) = answer {
                st.held.retain(|r| *r != rid);
                return a;
            }
        }
        if tokio::time::timeout_at(deadline.into(), notified)
            .await
            .is_err()
        {
            let mut st = lock(&session.state);
            st.held.retain(|r| *r != rid);
            let out = std::mem::take(&mut st.out);
            return wrap(&out, "");
        }
    }
}

/// COMPAT: stanzas in a BOSH body belong in jabber:client, but some clients leave them
/// in the body's namespace; read them as jabber:client, as the wrapper is not part of
/// the XMPP stream.
fn adopt_client_ns(el: &mut Element) {
    if el.ns() == ns::HTTPBIND || el.ns().is_empty() {
        el.set_ns(ns::CLIENT);
        for child in el.children_mut() {
            adopt_client_ns(child);
        }
    }
}

/// Moves the stream's output into the session, and ends an idle session.
async fn pump(session: &Arc<Session>, mut out_rx: mpsc::Receiver<Frame>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stream_error = false;
    let mut timed_out = false;
    loop {
        tokio::select! {
            frame = out_rx.recv() => {
                let mut st = lock(&session.state);
                match frame {
                    Some(Frame::Open { id }) => {
                        if st.authid.is_none() {
                            st.authid = Some(id);
                        }
                    }
                    Some(Frame::Xml(x)) => st.out.push(x),
                    Some(Frame::Error(x)) => {
                        st.out.push(x);
                        stream_error = true;
                    }
                    Some(Frame::Close) | None => {
                        st.ended = Some(stream_error.then_some("remote-stream-error"));
                        drop(st);
                        session.notify.notify_waiters();
                        return;
                    }
                }
                drop(st);
                session.notify.notify_waiters();
            }
            _ = tick.tick() => {
                let idle = {
                    let st = lock(&session.state);
                    st.in_flight == 0
                        && st.last_activity.is_some_and(|t| t.elapsed() > session.inactivity)
                };
                if idle && !timed_out {
                    timed_out = true;
                    tracing::info!(sid = %session.sid, "BOSH session inactive; ending it");
                    let _ = session.incoming.try_send(Inbound::Event(Err(StreamError::new("connection-timeout")
                        .with_text("no BOSH request within the inactivity period"))));
                    // Keep pumping: the stream still writes its error and closes.
                }
            }
        }
    }
}
