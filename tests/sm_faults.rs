//! Fault injection: clients chat with each other while their TCP connections are cut at
//! random points (between stanzas, in the middle of one, and for longer than the
//! resumption timeout), then resume or log in again. Every message must reach its
//! recipient exactly once and in order per sender — across resumption, offline storage
//! — and sit exactly once in the recipient's archive. A seeded RNG makes a failure
//! reproducible; the run is bounded in steps and time.

mod common;
mod im_util;
mod sm_util;

use common::*;
use im_util::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sm_util::*;
use starling::ns;
use starling::xml::Element;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const USERS: usize = 4;
const PER_PAIR: u32 = 12;
/// Default seed; `STARLING_FAULT_SEED=<n>` replays another run.
const SEED: u64 = 0x5eed_0198;
const RESUME_TIMEOUT: u64 = 2;

struct Peer {
    name: String,
    sm: SmClient,
    /// Next sequence number to send to each user.
    next: Vec<u32>,
    /// What arrived, by sender.
    got: BTreeMap<String, Vec<u32>>,
    away_until: Option<Instant>,
}

fn record(got: &mut BTreeMap<String, Vec<u32>>, e: &Element) {
    if e.name() != "message" {
        return;
    }
    let Some(body) = e.child_text("body", ns::CLIENT) else {
        return;
    };
    let (from, seq) = body.split_once(':').expect("body is sender:seq");
    got.entry(from.to_string())
        .or_default()
        .push(seq.parse().expect("seq"));
}

/// Logs in afresh (bind, stream management, then presence) without losing anything that
/// arrives along the way.
async fn fresh(s: &TestServer, name: &str, got: &mut BTreeMap<String, Vec<u32>>) -> SmClient {
    let c = login(s, name, "r").await;
    let mut sm = SmClient::enable(c, name).await;
    for e in std::mem::take(&mut sm.early) {
        record(got, &e);
    }
    sm.send("<presence/>").await;
    sm
}

async fn read_for(p: &mut Peer, wait: Duration) {
    while let Ok(Some(e)) = p.sm.recv_within(wait).await {
        record(&mut p.got, &e);
    }
}

async fn resume(s: &TestServer, p: &mut Peer) {
    let r = p.sm.resume(s.c2s).await;
    assert_eq!(r.name(), "resumed", "{}: {r}", p.name);
}

#[tokio::test]
async fn cut_connections_lose_and_duplicate_nothing() {
    let names: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = server_with(&refs, |c| c.sm.resume_timeout_secs = RESUME_TIMEOUT).await;
    let seed = std::env::var("STARLING_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut peers = Vec::new();
    for n in &names {
        let mut got = BTreeMap::new();
        let sm = fresh(&s, n, &mut got).await;
        peers.push(Peer {
            name: n.clone(),
            sm,
            next: vec![0; USERS],
            got,
            away_until: None,
        });
    }
    let mut long_absences = 0;
    let (mut cuts, mut partial_cuts) = (0, 0);
    let started = Instant::now();
    for _step in 0..3000 {
        let all_sent = peers
            .iter()
            .enumerate()
            .all(|(i, p)| (0..USERS).all(|j| j == i || p.next[j] == PER_PAIR));
        if all_sent || started.elapsed() > Duration::from_secs(90) {
            break;
        }
        let i = rng.gen_range(0..USERS);
        let p = &mut peers[i];
        if let Some(t) = p.away_until {
            if Instant::now() >= t {
                p.away_until = None;
                p.sm = fresh(&s, &p.name.clone(), &mut p.got).await;
            }
            continue;
        }
        let roll = rng.gen_range(0..100);
        let targets: Vec<usize> = (0..USERS)
            .filter(|&j| j != i && p.next[j] < PER_PAIR)
            .collect();
        if roll < 50 && !targets.is_empty() {
            let j = targets[rng.gen_range(0..targets.len())];
            let xml = format!(
                "<message to='u{j}@localhost/r' type='chat'><body>{}:{}</body></message>",
                p.name, p.next[j]
            );
            p.next[j] += 1;
            if rng.gen_range(0..100) < 6 {
                // Cut in the middle of the stanza: the server never sees it whole, the
                // client still has it queued and sends it again after resuming.
                let cut_at = rng.gen_range(1..xml.len());
                p.sm.out.push_back(xml.clone());
                p.sm.c.try_send_bytes(&xml.as_bytes()[..cut_at]).await;
                p.sm.cut();
                partial_cuts += 1;
                resume(&s, p).await;
            } else if !p.sm.try_send(&xml).await {
                resume(&s, p).await;
            }
        } else if roll < 85 {
            read_for(p, Duration::from_millis(15)).await;
        } else if roll < 97 || long_absences >= 2 {
            p.sm.cut();
            cuts += 1;
            // Sometimes the client comes back before the server noticed anything.
            if rng.gen_bool(0.5) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            resume(&s, p).await;
        } else {
            // Away for longer than the resumption timeout: first make sure both sides
            // agree on what was handled (otherwise a failed resumption would legitimately
            // repeat what was handled but not acknowledged — XEP-0198 §5 leaves that to
            // stanza-id deduplication).
            let seen = p.sm.sync().await;
            for e in &seen {
                record(&mut p.got, e);
            }
            assert!(p.sm.out.is_empty());
            let a = format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", p.sm.h);
            p.sm.c.send(&a).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            p.sm.cut();
            long_absences += 1;
            p.away_until =
                Some(Instant::now() + Duration::from_millis(RESUME_TIMEOUT * 1000 + 800));
        }
    }
    // Everyone back, everything acknowledged, everything read.
    for p in peers.iter_mut() {
        if let Some(t) = p.away_until.take() {
            tokio::time::sleep_until(t.into()).await;
            p.sm = fresh(&s, &p.name.clone(), &mut p.got).await;
        }
    }
    let expected: Vec<u32> = (0..PER_PAIR).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for p in peers.iter_mut() {
            for e in p.sm.sync().await {
                record(&mut p.got, &e);
            }
            read_for(p, Duration::from_millis(50)).await;
        }
        let done = peers.iter().all(|p| {
            p.sm.out.is_empty()
                && p.got.len() == USERS - 1
                && p.got.values().all(|v| v.len() >= PER_PAIR as usize)
        });
        if done || Instant::now() > deadline {
            break;
        }
    }
    for p in &peers {
        for (from, seqs) in &p.got {
            assert_eq!(seqs, &expected, "{} from {from}", p.name);
        }
        assert_eq!(p.got.len(), USERS - 1, "{} heard from everyone", p.name);
    }
    // The archive agrees: each message once, in order.
    for p in peers.iter_mut() {
        for sender in names.iter().filter(|n| **n != p.name) {
            p.sm.send(&format!(
                "<iq type='set' id='mam-{sender}'><query xmlns='urn:xmpp:mam:2'>\
                 <x xmlns='jabber:x:data' type='submit'><field var='with'><value>{sender}@localhost</value></field></x>\
                 <set xmlns='http://jabber.org/protocol/rsm'><max>250</max></set></query></iq>"
            ))
            .await;
            let mut seqs = Vec::new();
            loop {
                let e = p.sm.recv().await.expect("stream open");
                if e.name() == "iq" && e.attr("id") == Some(format!("mam-{sender}").as_str()) {
                    break;
                }
                let fwd = e
                    .child("result", "urn:xmpp:mam:2")
                    .and_then(|r| r.child("forwarded", "urn:xmpp:forward:0"))
                    .and_then(|f| f.child("message", ns::CLIENT));
                if let Some(m) = fwd {
                    if m.attr("from")
                        .is_some_and(|f| f.starts_with(sender.as_str()))
                    {
                        let mut one = BTreeMap::new();
                        record(&mut one, m);
                        seqs.extend(one.into_values().flatten());
                    }
                }
            }
            assert_eq!(seqs, expected, "archive of {} from {sender}", p.name);
        }
    }
    eprintln!(
        "seed {seed:#x}: {cuts} cuts, {partial_cuts} mid-stanza cuts, {long_absences} expiries"
    );
    assert!(cuts > 0 && partial_cuts > 0, "the faults actually happened");
    s.stop().await;
}
