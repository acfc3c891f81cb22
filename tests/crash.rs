//! Crash safety: the server binary runs as a child process under chat load and is killed
//! with SIGKILL, then restarted on the same data directory. Every message the server
//! acknowledged to its sender (XEP-0198 `<a h/>`) must be delivered exactly once
//! afterwards — it reached the recipient before the crash, comes out of offline storage
//! after it, or is in the recipient's archive — and no message is delivered twice.
//!
//! Uses the binary Cargo built for this test run (debug for `cargo test`, release for
//! `cargo test --release`).

mod common;
mod sm_util;

use sm_util::*;
use starling::ns;
use starling::xml::Element;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child if the test fails half-way.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn start(config: &Path, addr: SocketAddr, log: &Path) -> Proc {
    let log = std::fs::File::create(log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the server binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Proc(child)
}

async fn login(addr: SocketAddr, user: &str) -> SmClient {
    let (mut c, _) = authed(addr, user).await;
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>")
        .await;
    let r = c.el().await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    let mut sm = SmClient::enable(c, user).await;
    sm.send("<presence/>").await;
    sm
}

fn seq(e: &Element) -> Option<u32> {
    e.child_text("body", ns::CLIENT)?
        .strip_prefix('c')?
        .parse()
        .ok()
}

#[tokio::test]
async fn sigkill_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = starling::store::Store::open(&dir.path().join("data")).expect("store");
        for u in ["alice", "bob"] {
            let jid = starling::accounts::local_jid(u, "localhost").expect("jid");
            starling::accounts::create(&store, &jid, "pw").expect("account");
        }
        store.flush().expect("flush");
    }
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = dir.path().join("starling.toml");
    std::fs::write(
        &config,
        format!(
            // One runtime worker: the default (one per core) runs in every other suite
            // that starts the binary; this one covers the `workers` setting too.
            "data_dir = {:?}\nworkers = 1\n[c2s]\nlisten = [\"127.0.0.1:{port}\"]\ndirect_tls_listen = []\n\
             [s2s]\nlisten = []\n[http]\nlisten = []\n[limits]\nauth_failure_delay_ms = 10\n",
            dir.path().join("data")
        ),
    )
    .expect("config");
    let log = dir.path().join("server.log");
    let server = start(&config, addr, &log).await;

    let mut bob = login(addr, "bob").await;
    // Bob never acknowledges: what he was sent lives only in the server's memory (and
    // in the archive) when the server dies.
    bob.auto_ack = false;
    let mut alice = login(addr, "alice").await;
    let mut live: BTreeMap<u32, u32> = BTreeMap::new();
    let note = |e: &Element, live: &mut BTreeMap<u32, u32>| {
        if let Some(k) = seq(e) {
            *live.entry(k).or_default() += 1;
        }
    };
    let total = 400;
    let kill_at = 255; // in the middle of an acknowledgement window
    let mut server = Some(server);
    for k in 0..total {
        if k == kill_at {
            if let Some(mut s) = server.take() {
                // std's kill is SIGKILL on Unix: no shutdown, no flush.
                s.0.kill().expect("SIGKILL");
                let _ = s.0.wait();
            }
        }
        let xml = format!("<message to='bob@localhost' type='chat'><body>c{k}</body></message>");
        if !alice.try_send(&xml).await {
            break;
        }
        if k % 10 == 9 && !alice.c.try_send_bytes(b"<r xmlns='urn:xmpp:sm:3'/>").await {
            break;
        }
        while let Ok(Some(_)) = alice.recv_within(Duration::from_millis(2)).await {}
        while let Ok(Some(e)) = bob.recv_within(Duration::from_millis(2)).await {
            note(&e, &mut live);
        }
    }
    // Whatever was in flight before the connections died.
    while let Ok(Some(_)) = alice.recv_within(Duration::from_millis(200)).await {}
    while let Ok(Some(e)) = bob.recv_within(Duration::from_millis(200)).await {
        note(&e, &mut live);
    }
    // Alice's first counted stanza was her presence; the messages come after it.
    let acked = alice.acked.saturating_sub(1);
    assert!(
        acked > 0,
        "the server acknowledged something before the crash"
    );

    // Restart on the same data directory.
    let server = start(&config, addr, &log).await;
    let mut bob = login(addr, "bob").await;
    // Offline messages come after the presence; a ping round trip ends the batch.
    bob.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    loop {
        let e = bob.recv().await.expect("stream open");
        if e.attr("id") == Some("sync") {
            break;
        }
        note(&e, &mut live);
    }
    let duplicates: Vec<(&u32, &u32)> = live.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "delivered twice: {duplicates:?}");
    // And the archive.
    let mut archived: BTreeMap<u32, u32> = BTreeMap::new();
    let mut after = String::new();
    loop {
        bob.send(&format!(
            "<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>100</max>{after}</set></query></iq>"
        ))
        .await;
        let fin = loop {
            let e = bob.recv().await.expect("stream open");
            if e.attr("id") == Some("q") {
                break e;
            }
            let m = e
                .child("result", "urn:xmpp:mam:2")
                .and_then(|r| r.child("forwarded", "urn:xmpp:forward:0"))
                .and_then(|f| f.child("message", ns::CLIENT));
            if let Some(k) = m.and_then(seq) {
                *archived.entry(k).or_default() += 1;
            }
        };
        let fin = fin.child("fin", "urn:xmpp:mam:2").expect("fin").clone();
        if fin.attr("complete") == Some("true") {
            break;
        }
        let last = fin
            .child("set", "http://jabber.org/protocol/rsm")
            .and_then(|s| s.child_text("last", "http://jabber.org/protocol/rsm"))
            .expect("last");
        after = format!("<after>{last}</after>");
    }
    assert!(
        archived.values().all(|n| *n == 1),
        "archived once each: {archived:?}"
    );
    let missing: Vec<u32> = (0..acked)
        .filter(|k| !live.contains_key(k) && !archived.contains_key(k))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged (h={acked}) but lost: {missing:?}"
    );
    // What was acknowledged is, in particular, all in the archive, in order.
    let in_archive: Vec<u32> = archived.keys().copied().filter(|k| *k < acked).collect();
    assert_eq!(in_archive, (0..acked).collect::<Vec<_>>());
    eprintln!(
        "acknowledged before SIGKILL: {acked}; delivered live: {}; archived: {}",
        live.len(),
        archived.len()
    );
    drop(server);
}
