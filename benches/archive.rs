//! Archive query speed over a 100,000-message archive (XEP-0313 with XEP-0059 paging).
//! Run: `cargo bench --bench archive`. Prints the median and worst time of each query
//! shape; a measurement, not a test (no thresholds).

use starling::store::{ArchiveQuery, Store};
use std::time::{Duration, Instant};

const MESSAGES: usize = 100_000;
const CONTACTS: usize = 50;
const RUNS: usize = 200;

fn measure(name: &str, mut f: impl FnMut() -> usize) {
    let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
    let mut n = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        n = f();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{name:<44} {n:>4} results  median {:>8.1} µs  max {:>8.1} µs",
        times[RUNS / 2].as_secs_f64() * 1e6,
        times[RUNS - 1].as_secs_f64() * 1e6
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let owner = "alice@localhost";
    let body = "<message xmlns='jabber:client' type='chat' from='c@localhost/r' to='alice@localhost'><body>a typical short chat message of some sixty characters</body></message>";
    let t = Instant::now();
    let mut ids = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let with = format!("contact{}@localhost", i % CONTACTS);
        ids.push(store.archive_append(owner, &with, body).expect("append"));
    }
    // Other users' archives around it, so prefixes matter.
    for i in 0..10_000 {
        store
            .archive_append(&format!("user{}@localhost", i % 100), "x@localhost", body)
            .expect("append");
    }
    store.flush().expect("flush");
    println!(
        "filled {MESSAGES} messages (+10,000 in other archives) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let q = |f: &dyn Fn(&mut ArchiveQuery)| {
        let mut q = ArchiveQuery {
            max: 50,
            ..ArchiveQuery::default()
        };
        f(&mut q);
        store.archive_query(owner, &q).expect("query").items.len()
    };
    measure("first page (max 50)", || q(&|_| {}));
    measure("last page (<before/>, max 50)", || {
        q(&|q| q.from_end = true)
    });
    measure("page after an id in the middle", || {
        q(&|q| q.after_id = Some(ids[MESSAGES / 2]))
    });
    measure("page before an id in the middle", || {
        q(&|q| {
            q.before_id = Some(ids[MESSAGES / 2]);
            q.from_end = true
        })
    });
    measure("one conversation (with), first page", || {
        q(&|q| q.with = Some("contact7@localhost".into()))
    });
    measure("one conversation, last page", || {
        q(&|q| {
            q.with = Some("contact7@localhost".into());
            q.from_end = true
        })
    });
    let mid = starling::store::micros_of(ids[MESSAGES / 2]);
    measure("time range start..end in the middle", || {
        q(&|q| {
            q.start = Some(mid);
            q.end = Some(mid + 1_000_000)
        })
    });
    measure("index 50,000 (skip), max 50", || q(&|q| q.index = 50_000));
    measure("ids: 20 ids", || {
        q(&|q| q.ids = Some(ids.iter().step_by(5000).copied().collect()))
    });
    measure("max 250 (largest page)", || q(&|q| q.max = 250));
}
