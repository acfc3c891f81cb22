//! A stream-management client for the reliability tests: it counts what it handles,
//! answers `<r/>`, keeps what it sent until the server acknowledges it, and resumes.
#![allow(dead_code)]

use crate::common::*;
use starling::xml::Element;
use std::collections::VecDeque;
use std::net::SocketAddr;

pub const SM: &str = "urn:xmpp:sm:3";

/// STARTTLS and PLAIN; returns the client with the post-auth features read.
pub async fn authed(addr: SocketAddr, user: &str) -> (Client, Element) {
    let mut c = Client::connect(addr).await;
    c.starttls().await;
    let mut mech = sasl::client::mechanisms::Plain::new(user, "pw");
    let r = c.auth(&mut mech).await;
    assert_eq!(r.name(), "success", "login failed: {r}");
    let f = c.open().await;
    (c, f)
}

pub fn is_stanza(e: &Element) -> bool {
    e.ns() == "jabber:client" && matches!(e.name(), "message" | "presence" | "iq")
}

pub struct SmClient {
    pub c: Client,
    pub user: String,
    pub id: Option<String>,
    /// Answer `<r/>` on our own (tests that decide what was handled turn this off).
    pub auto_ack: bool,
    /// Stanzas from the server we handled.
    pub h: u32,
    /// Our stanzas the server acknowledged, and the ones it has not yet.
    pub acked: u32,
    pub out: VecDeque<String>,
    /// Acknowledgement figures the server sent us, in order.
    pub acks: Vec<u32>,
    /// Stanzas that arrived before `<enabled/>` (not counted by either side).
    pub early: Vec<Element>,
}

impl SmClient {
    /// Enables stream management (with resumption) on a bound client.
    pub async fn enable(mut c: Client, user: &str) -> SmClient {
        c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
        let mut early = Vec::new();
        let e = loop {
            let e = c.el().await;
            if e.name() == "enabled" || e.name() == "failed" {
                break e;
            }
            early.push(e);
        };
        assert_eq!(e.name(), "enabled", "{e}");
        assert_eq!(e.attr("resume"), Some("true"));
        SmClient {
            c,
            user: user.to_string(),
            auto_ack: true,
            id: e.attr("id").map(str::to_string),
            h: 0,
            acked: 0,
            out: VecDeque::new(),
            acks: Vec::new(),
            early,
        }
    }

    pub async fn send(&mut self, xml: &str) {
        self.out.push_back(xml.to_string());
        self.c.send(xml).await;
    }

    /// Sends, tolerating a dead connection (the stanza stays queued for resumption).
    pub async fn try_send(&mut self, xml: &str) -> bool {
        self.out.push_back(xml.to_string());
        self.c.try_send_bytes(xml.as_bytes()).await
    }

    fn ack(&mut self, h: u32) {
        let newly = h.wrapping_sub(self.acked) as usize;
        assert!(
            newly <= self.out.len(),
            "server acked {h}, more than we sent"
        );
        self.out.drain(..newly);
        self.acked = h;
        self.acks.push(h);
    }

    /// Next stanza (answering `<r/>` and taking `<a/>` on the way); `None` when the
    /// stream ended.
    pub async fn recv(&mut self) -> Option<Element> {
        loop {
            match self.c.next().await {
                Got::El(e) if e.ns() == SM && e.name() == "r" && !self.auto_ack => {}
                Got::El(e) if e.ns() == SM && e.name() == "r" => {
                    let a = format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", self.h);
                    if !self.c.try_send_bytes(a.as_bytes()).await {
                        return None;
                    }
                }
                Got::El(e) if e.ns() == SM && e.name() == "a" => {
                    let h = e.attr("h").and_then(|h| h.parse().ok()).expect("numeric h");
                    self.ack(h);
                    return Some(e);
                }
                Got::El(e) if is_stanza(&e) => {
                    self.h = self.h.wrapping_add(1);
                    return Some(e);
                }
                Got::El(e) => return Some(e),
                Got::Closed => return None,
                Got::Header(_) => {}
            }
        }
    }

    /// Like `recv`, waiting at most `wait` for each read: `Err(())` when nothing came.
    pub async fn recv_within(&mut self, wait: std::time::Duration) -> Result<Option<Element>, ()> {
        loop {
            match self.c.next_within(wait).await {
                None => return Err(()),
                Some(Got::El(e)) if e.ns() == SM && e.name() == "r" => {
                    let a = format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", self.h);
                    if !self.c.try_send_bytes(a.as_bytes()).await {
                        return Ok(None);
                    }
                }
                Some(Got::El(e)) if e.ns() == SM && e.name() == "a" => {
                    let h = e.attr("h").and_then(|h| h.parse().ok()).expect("numeric h");
                    self.ack(h);
                }
                Some(Got::El(e)) => {
                    if is_stanza(&e) {
                        self.h = self.h.wrapping_add(1);
                    }
                    return Ok(Some(e));
                }
                Some(Got::Closed) => return Ok(None),
                Some(Got::Header(_)) => {}
            }
        }
    }

    /// Next stanza matching `pred`.
    pub async fn wait_for(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        loop {
            let e = self.recv().await.expect("stream ended");
            if pred(&e) {
                return e;
            }
        }
    }

    /// Asks for an acknowledgement and waits until the server answers it.
    pub async fn sync(&mut self) -> Vec<Element> {
        let before = self.acks.len();
        self.c.send("<r xmlns='urn:xmpp:sm:3'/>").await;
        let mut seen = Vec::new();
        while self.acks.len() == before {
            if let Some(e) = self.recv().await {
                seen.push(e);
            } else {
                panic!("stream ended while waiting for <a/>");
            }
        }
        seen
    }

    /// Cuts the TCP connection without closing the stream.
    pub fn cut(&mut self) {
        self.c.io = Io::None;
    }

    /// Resumes on a new connection: returns the `<resumed/>` or `<failed/>` element.
    /// After `<resumed/>`, our unacknowledged stanzas have been sent again.
    pub async fn resume(&mut self, addr: SocketAddr) -> Element {
        let (mut c, f) = authed(addr, &self.user).await;
        assert!(f.has_child("sm", SM), "sm advertised: {f}");
        c.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{}' h='{}'/>",
            self.id.as_deref().unwrap_or(""),
            self.h
        ))
        .await;
        let e = c.wait_for(|e| e.ns() == SM).await;
        self.c = c;
        if e.name() == "resumed" {
            let h = e.attr("h").and_then(|h| h.parse().ok()).expect("h");
            self.ack(h);
            let pending: Vec<String> = self.out.iter().cloned().collect();
            for xml in pending {
                if !self.c.try_send_bytes(xml.as_bytes()).await {
                    break;
                }
            }
        }
        e
    }
}
