//! The `starling` command line: account administration against a stopped data directory
//! (straight on the store) and against a running server (through its control socket),
//! with the exit status each failure is documented to have.

mod admin_util;
mod common;

use admin_util::can_log_in;
use common::*;
use starling::ns;
use starling::store::Store;
use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn config_for(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cli-test.toml");
    std::fs::write(
        &path,
        format!(
            "domain = \"localhost\"\ndata_dir = {:?}\nlog_level = \"warn\"\n",
            dir.display().to_string()
        ),
    )
    .expect("write config");
    path
}

async fn starling(config: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_starling"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run starling");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.expect("stdin");
    }
    drop(input);
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("starling finished in time")
        .expect("starling ran");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(o: &Out) {
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
}

#[tokio::test]
async fn account_commands_on_a_stopped_server() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(dir.path());
    ok(&starling(&cfg, &["check-config"], None).await);
    ok(&starling(
        &cfg,
        &["user", "add", "alice@localhost", "--password", "pw1"],
        None,
    )
    .await);
    // Password on stdin; the old spelling of the command still works.
    ok(&starling(&cfg, &["adduser", "bob@localhost"], Some("pw2\n")).await);
    let o = starling(
        &cfg,
        &["user", "add", "alice@localhost", "--password", "x"],
        None,
    )
    .await;
    assert_eq!(o.code, 5, "exists: {}", o.stderr);
    assert!(o.stderr.contains("exists"), "{}", o.stderr);
    for bad in ["not a jid@@", "alice@elsewhere.example"] {
        let o = starling(&cfg, &["user", "add", bad, "--password", "x"], None).await;
        assert_eq!(o.code, 3, "{bad}: {}", o.stderr);
    }
    let o = starling(&cfg, &["user", "add", "carol@localhost"], Some("\n")).await;
    assert_eq!(o.code, 2, "empty password: {}", o.stderr);
    let o = starling(&cfg, &["user", "list"], None).await;
    ok(&o);
    assert_eq!(o.stdout, "alice@localhost\nbob@localhost\n");
    ok(&starling(&cfg, &["user", "disable", "bob@localhost"], None).await);
    ok(&starling(
        &cfg,
        &["user", "passwd", "alice@localhost", "--password", "new"],
        None,
    )
    .await);
    ok(&starling(&cfg, &["passwd", "alice@localhost"], Some("newer\n")).await);
    let o = starling(&cfg, &["user", "del", "nobody@localhost"], None).await;
    assert_eq!(o.code, 4, "{}", o.stderr);
    // online and announce need a running server.
    for args in [&["online"][..], &["announce", "hello"][..]] {
        let o = starling(&cfg, args, None).await;
        assert_eq!(o.code, 6, "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains("no server is running"), "{}", o.stderr);
    }
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(store.account("bob@localhost").unwrap().unwrap().disabled);
    }
    ok(&starling(&cfg, &["user", "enable", "bob@localhost"], None).await);
    ok(&starling(&cfg, &["deluser", "bob@localhost"], None).await);
    ok(&starling(&cfg, &["user", "del", "alice@localhost"], None).await);
    let o = starling(&cfg, &["user", "list"], None).await;
    ok(&o);
    assert_eq!(o.stdout, "");
    // A server started on the data directory sees what the command line did.
    let s = TestServer::start_in(dir).await;
    assert_eq!(s.state().store.account_count(), 0);
    s.stop().await;
}

#[tokio::test]
async fn account_commands_on_a_running_server() {
    let s = TestServer::start().await;
    let cfg = config_for(s.dir.path());
    s.add_user("bob", "bobpw");
    let mut bob = Client::login(s.c2s, "bob", "bobpw", "laptop").await;

    ok(&starling(
        &cfg,
        &["user", "add", "carol@localhost", "--password", "cpw"],
        None,
    )
    .await);
    let mut carol = Client::login(s.c2s, "carol", "cpw", "phone").await;
    let o = starling(
        &cfg,
        &["user", "add", "carol@localhost", "--password", "x"],
        None,
    )
    .await;
    assert_eq!(o.code, 5, "{}", o.stderr);

    let o = starling(&cfg, &["online"], None).await;
    ok(&o);
    assert_eq!(o.stdout, "bob@localhost/laptop\ncarol@localhost/phone\n");
    let o = starling(&cfg, &["user", "list"], None).await;
    assert_eq!(o.stdout, "bob@localhost\ncarol@localhost\n");

    let o = starling(
        &cfg,
        &["announce", "--subject", "Hi", "Server restarts at noon"],
        None,
    )
    .await;
    ok(&o);
    assert!(o.stdout.contains("2 session"), "{}", o.stdout);
    for c in [&mut bob, &mut carol] {
        let m = c.wait_for(|e| e.name() == "message").await;
        assert_eq!(m.attr("type"), Some("headline"));
        assert_eq!(
            m.child_text("body", ns::CLIENT).as_deref(),
            Some("Server restarts at noon")
        );
    }
    let o = starling(&cfg, &["announce", "  "], None).await;
    assert_eq!(o.code, 3, "{}", o.stderr);

    // Password change, disabling and deletion end live sessions.
    ok(&starling(
        &cfg,
        &["user", "passwd", "carol@localhost", "--password", "c2"],
        None,
    )
    .await);
    assert_eq!(
        carol.stream_error().await.as_deref(),
        Some("not-authorized")
    );
    assert!(can_log_in(s.c2s, "carol", "c2").await);
    ok(&starling(&cfg, &["user", "disable", "bob@localhost"], None).await);
    assert_eq!(bob.stream_error().await.as_deref(), Some("not-authorized"));
    assert!(!can_log_in(s.c2s, "bob", "bobpw").await);
    ok(&starling(&cfg, &["user", "enable", "bob@localhost"], None).await);
    let mut bob = Client::login(s.c2s, "bob", "bobpw", "laptop").await;
    ok(&starling(&cfg, &["user", "del", "bob@localhost"], None).await);
    assert_eq!(bob.stream_error().await.as_deref(), Some("not-authorized"));
    assert!(!can_log_in(s.c2s, "bob", "bobpw").await);
    let o = starling(&cfg, &["deluser", "bob@localhost"], None).await;
    assert_eq!(o.code, 4, "{}", o.stderr);
    s.stop().await;
}

#[tokio::test]
async fn help_documents_the_exit_codes_and_a_bad_config_is_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(dir.path());
    let o = starling(&cfg, &["--help"], None).await;
    ok(&o);
    for needle in [
        "user",
        "online",
        "announce",
        "Exit status",
        "no such account",
    ] {
        assert!(
            o.stdout.contains(needle),
            "--help lacks {needle:?}: {}",
            o.stdout
        );
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "domain = 42\n").unwrap();
    let o = starling(&bad, &["user", "list"], None).await;
    assert_eq!(o.code, 2, "{}", o.stderr);
}
