//! XEP-0050 ad-hoc commands and the XEP-0133 administration set, driven over real
//! sockets; every effect is checked from the outside (logins, stream errors, messages).

mod admin_util;
mod common;

use admin_util::*;
use common::*;
use starling::ns;

const ALL: [&str; 18] = [
    "add-user",
    "delete-user",
    "disable-user",
    "reenable-user",
    "end-user-session",
    "change-user-password",
    "get-user-roster",
    "get-user-lastlogin",
    "get-registered-users-num",
    "get-registered-users-list",
    "get-online-users-num",
    "get-online-users-list",
    "get-active-users-num",
    "get-active-users",
    "announce",
    "set-motd",
    "edit-motd",
    "delete-motd",
];

async fn server() -> TestServer {
    let s = TestServer::start_with(|c| {
        c.admins = vec!["admin@localhost".into(), "root@localhost".into()];
    })
    .await;
    s.add_user("admin", "adminpw");
    s.add_user("root", "rootpw");
    s.add_user("bob", "bobpw");
    s.add_user("carol", "carolpw");
    s
}

async fn admin(s: &TestServer) -> Client {
    Client::login(s.c2s, "admin", "adminpw", "console").await
}

async fn disco_command_nodes(c: &mut Client) -> Vec<String> {
    let r = c
        .iq(
            &format!(
                "<iq type='get' id='items' to='localhost'><query xmlns='{}' node='{}'/></iq>",
                ns::DISCO_ITEMS,
                ns::COMMANDS
            ),
            "items",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    r.child("query", ns::DISCO_ITEMS)
        .expect("query")
        .children()
        .map(|i| {
            assert_eq!(i.attr("jid"), Some("localhost"));
            i.attr("node").unwrap_or("").to_string()
        })
        .collect()
}

#[tokio::test]
async fn admins_see_every_command_and_its_disco_info() {
    let s = server().await;
    let mut a = admin(&s).await;
    let nodes = disco_command_nodes(&mut a).await;
    for cmd in ALL {
        assert!(
            nodes.contains(&format!("{ADMIN}{cmd}")),
            "{cmd} not listed: {nodes:?}"
        );
        let r = a
            .iq(
                &format!(
                    "<iq type='get' id='i-{cmd}' to='localhost'><query xmlns='{}' node='{ADMIN}{cmd}'/></iq>",
                    ns::DISCO_INFO
                ),
                &format!("i-{cmd}"),
            )
            .await;
        let q = r.child("query", ns::DISCO_INFO).expect("info");
        let id = q.child("identity", ns::DISCO_INFO).expect("identity");
        assert_eq!(id.attr("category"), Some("automation"));
        assert_eq!(id.attr("type"), Some("command-node"));
        assert!(q.children().any(|f| f.attr("var") == Some(ns::COMMANDS)));
    }
    // The server advertises the commands feature.
    let r = a
        .iq(
            &format!(
                "<iq type='get' id='info' to='localhost'><query xmlns='{}'/></iq>",
                ns::DISCO_INFO
            ),
            "info",
        )
        .await;
    assert!(r
        .child("query", ns::DISCO_INFO)
        .unwrap()
        .children()
        .any(|f| f.attr("var") == Some(ns::COMMANDS)));
    s.stop().await;
}

#[tokio::test]
async fn a_non_admin_sees_nothing_and_is_refused_every_command() {
    let s = server().await;
    let mut bob = Client::login(s.c2s, "bob", "bobpw", "r").await;
    assert!(disco_command_nodes(&mut bob).await.is_empty());
    for cmd in ALL {
        let r = execute(&mut bob, cmd).await;
        assert_eq!(r.attr("type"), Some("error"), "{cmd}: {r}");
        assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"), "{cmd}");
        // Not even its disco#info.
        let r = bob
            .iq(
                &format!(
                    "<iq type='get' id='i-{cmd}' to='localhost'><query xmlns='{}' node='{ADMIN}{cmd}'/></iq>",
                    ns::DISCO_INFO
                ),
                &format!("i-{cmd}"),
            )
            .await;
        assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
    }
    // A forged one-shot submission is refused the same way, and changes nothing.
    let r = command(
        &mut bob,
        &format!("node='{ADMIN}add-user'"),
        &submit(&[
            ("accountjid", &["mallory@localhost"]),
            ("password", &["x"]),
            ("password-verify", &["x"]),
        ]),
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    assert!(!can_log_in(s.c2s, "mallory", "x").await);
    s.stop().await;
}

#[tokio::test]
async fn add_user_then_the_new_user_logs_in() {
    let s = server().await;
    let mut a = admin(&s).await;
    let first = execute(&mut a, "add-user").await;
    assert_eq!(status(&first), "executing");
    let actions = cmd_el(&first).child("actions", ns::COMMANDS).unwrap();
    assert_eq!(actions.attr("execute"), Some("complete"));
    let sid = session_id(&first);
    // Mismatched passwords: bad-payload, and the session stays open for a correction.
    let r = step(
        &mut a,
        "add-user",
        &sid,
        "complete",
        &submit(&[
            ("accountjid", &["dave@localhost"]),
            ("password", &["one"]),
            ("password-verify", &["two"]),
        ]),
    )
    .await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-payload"), "{r}");
    assert_eq!(error_type(&r).as_deref(), Some("modify"));
    let r = step(
        &mut a,
        "add-user",
        &sid,
        "complete",
        &submit(&[
            ("accountjid", &["dave@localhost"]),
            ("password", &["s3cret"]),
            ("password-verify", &["s3cret"]),
        ]),
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    assert_eq!(notes(&r)[0].0, "info");
    let mut dave = Client::login(s.c2s, "dave", "s3cret", "home").await;
    assert!(alive(&mut dave).await);
    // Adding it again is a conflict.
    let r = run(
        &mut a,
        "add-user",
        &[
            ("accountjid", &["dave@localhost"]),
            ("password", &["other"]),
            ("password-verify", &["other"]),
        ],
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("conflict"), "{r}");
    assert!(
        can_log_in(s.c2s, "dave", "s3cret").await,
        "password unchanged"
    );
    s.stop().await;
}

#[tokio::test]
async fn deleting_a_user_ends_their_session_and_they_cannot_log_in() {
    let s = server().await;
    let mut a = admin(&s).await;
    let mut bob = Client::login(s.c2s, "bob", "bobpw", "r").await;
    let r = run(
        &mut a,
        "delete-user",
        &[("accountjids", &["bob@localhost"])],
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    assert_eq!(notes(&r)[0].0, "info", "{r}");
    assert_eq!(bob.stream_error().await.as_deref(), Some("not-authorized"));
    assert!(!can_log_in(s.c2s, "bob", "bobpw").await);
    assert!(s.state().store.account("bob@localhost").unwrap().is_none());
    // Deleting it again: completed, with an error note naming the account.
    let r = run(
        &mut a,
        "delete-user",
        &[("accountjids", &["bob@localhost"])],
    )
    .await;
    let n = notes(&r);
    assert_eq!(n[0].0, "error", "{r}");
    assert!(n[0].1.contains("bob@localhost"));
    s.stop().await;
}

#[tokio::test]
async fn disable_and_reenable_a_user() {
    let s = server().await;
    let mut a = admin(&s).await;
    let mut bob = Client::login(s.c2s, "bob", "bobpw", "r").await;
    let r = run(
        &mut a,
        "disable-user",
        &[("accountjids", &["bob@localhost"])],
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    assert_eq!(bob.stream_error().await.as_deref(), Some("not-authorized"));
    assert!(!can_log_in(s.c2s, "bob", "bobpw").await);
    let r = run(
        &mut a,
        "reenable-user",
        &[("accountjids", &["bob@localhost"])],
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    assert!(can_log_in(s.c2s, "bob", "bobpw").await);
    s.stop().await;
}

#[tokio::test]
async fn changing_a_password_ends_the_users_sessions() {
    let s = server().await;
    let mut a = admin(&s).await;
    let mut bob = Client::login(s.c2s, "bob", "bobpw", "r").await;
    let r = run(
        &mut a,
        "change-user-password",
        &[("accountjid", &["bob@localhost"]), ("password", &["newpw"])],
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    assert_eq!(bob.stream_error().await.as_deref(), Some("not-authorized"));
    assert!(!can_log_in(s.c2s, "bob", "bobpw").await);
    assert!(can_log_in(s.c2s, "bob", "newpw").await);
    // An admin changing their own password keeps the session they used.
    let r = run(
        &mut a,
        "change-user-password",
        &[
            ("accountjid", &["admin@localhost"]),
            ("password", &["adminpw2"]),
        ],
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    assert!(alive(&mut a).await);
    assert!(can_log_in(s.c2s, "admin", "adminpw2").await);
    s.stop().await;
}

#[tokio::test]
async fn end_user_session_by_full_or_bare_jid() {
    let s = server().await;
    let mut a = admin(&s).await;
    let mut phone = Client::login(s.c2s, "bob", "bobpw", "phone").await;
    let mut desk = Client::login(s.c2s, "bob", "bobpw", "desk").await;
    let r = run(
        &mut a,
        "end-user-session",
        &[("accountjids", &["bob@localhost/phone"])],
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    assert_eq!(
        phone.stream_error().await.as_deref(),
        Some("policy-violation")
    );
    assert!(alive(&mut desk).await, "the other resource stays");
    let r = run(
        &mut a,
        "end-user-session",
        &[("accountjids", &["bob@localhost"])],
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    assert_eq!(
        desk.stream_error().await.as_deref(),
        Some("policy-violation")
    );
    // Ending sessions is not a ban.
    assert!(can_log_in(s.c2s, "bob", "bobpw").await);
    s.stop().await;
}

#[tokio::test]
async fn announcement_reaches_every_online_resource_and_counts_match() {
    let s = server().await;
    let mut a = admin(&s).await;
    let mut phone = Client::login(s.c2s, "bob", "bobpw", "phone").await;
    let mut desk = Client::login(s.c2s, "bob", "bobpw", "desk").await;
    let mut carol = Client::login(s.c2s, "carol", "carolpw", "r").await;
    carol.available().await;

    let r = run_now(&mut a, "get-online-users-num").await;
    assert_eq!(field_values(&r, "onlineusersnum"), vec!["3"]);
    let r = run(&mut a, "get-online-users-list", &[("max_items", &["none"])]).await;
    assert_eq!(
        field_values(&r, "onlineuserjids"),
        vec!["admin@localhost", "bob@localhost", "carol@localhost"]
    );
    let r = run(&mut a, "get-online-users-list", &[("max_items", &["25"])]).await;
    assert_eq!(field_values(&r, "onlineuserjids").len(), 3);
    // Only carol has sent available presence.
    let r = run_now(&mut a, "get-active-users-num").await;
    assert_eq!(field_values(&r, "activeusersnum"), vec!["1"]);
    let r = run(&mut a, "get-active-users", &[("max_items", &["none"])]).await;
    assert_eq!(field_values(&r, "activeuserjids"), vec!["carol@localhost"]);

    let r = run(
        &mut a,
        "announce",
        &[
            ("subject", &["Maintenance"]),
            ("announcement", &["Restart at noon.", "Back at ten past."]),
        ],
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    // (The admin's own copy arrives before the command's reply, which `run` waits for.)
    for c in [&mut phone, &mut desk, &mut carol] {
        let m = c.wait_for(|e| e.name() == "message").await;
        assert_eq!(m.attr("from"), Some("localhost"));
        assert_eq!(m.attr("type"), Some("headline"));
        assert_eq!(
            m.child_text("subject", ns::CLIENT).as_deref(),
            Some("Maintenance")
        );
        assert_eq!(
            m.child_text("body", ns::CLIENT).as_deref(),
            Some("Restart at noon.\nBack at ten past.")
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn registered_users_roster_and_last_login() {
    let s = server().await;
    let mut a = admin(&s).await;
    let r = run_now(&mut a, "get-registered-users-num").await;
    assert_eq!(field_values(&r, "registeredusersnum"), vec!["4"]);
    let r = run(
        &mut a,
        "get-registered-users-list",
        &[("max_items", &["none"])],
    )
    .await;
    assert_eq!(
        field_values(&r, "registereduserjids"),
        vec![
            "admin@localhost",
            "bob@localhost",
            "carol@localhost",
            "root@localhost"
        ]
    );
    // Never logged in: no value, and a note says so.
    let r = run(
        &mut a,
        "get-user-lastlogin",
        &[("accountjid", &["carol@localhost"])],
    )
    .await;
    assert!(field_values(&r, "lastlogin").is_empty(), "{r}");
    assert!(notes(&r)[0].1.contains("never"));
    let _bob = Client::login(s.c2s, "bob", "bobpw", "r").await;
    let r = run(
        &mut a,
        "get-user-lastlogin",
        &[("accountjid", &["bob@localhost"])],
    )
    .await;
    let last = field_values(&r, "lastlogin");
    assert_eq!(last.len(), 1, "{r}");
    assert!(last[0].ends_with('Z') && last[0].len() == 20, "{last:?}");
    let r = run(
        &mut a,
        "get-user-roster",
        &[("accountjid", &["bob@localhost"])],
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    let x = cmd_el(&r).child("x", ns::DATA_FORMS).expect("result form");
    assert!(x.child("query", "jabber:iq:roster").is_some(), "{r}");
    assert_eq!(field_values(&r, "accountjid"), vec!["bob@localhost"]);
    let r = run(
        &mut a,
        "get-user-roster",
        &[("accountjid", &["nobody@localhost"])],
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
    s.stop().await;
}

#[tokio::test]
async fn message_of_the_day_is_sent_at_login_edited_and_deleted() {
    let s = server().await;
    let mut a = admin(&s).await;
    let r = run(
        &mut a,
        "set-motd",
        &[("motd", &["Welcome to Starling.", "Be nice."])],
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    let mut bob = Client::login(s.c2s, "bob", "bobpw", "r").await;
    let m = bob.wait_for(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("localhost"));
    assert_eq!(
        m.child_text("body", ns::CLIENT).as_deref(),
        Some("Welcome to Starling.\nBe nice.")
    );
    // edit-motd shows the current text.
    let first = execute(&mut a, "edit-motd").await;
    assert_eq!(
        field_values(&first, "motd"),
        vec!["Welcome to Starling.", "Be nice."]
    );
    let r = step(
        &mut a,
        "edit-motd",
        &session_id(&first),
        "complete",
        &submit(&[("motd", &["Changed."])]),
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    let mut carol = Client::login(s.c2s, "carol", "carolpw", "r").await;
    let m = carol.wait_for(|e| e.name() == "message").await;
    assert_eq!(
        m.child_text("body", ns::CLIENT).as_deref(),
        Some("Changed.")
    );
    let r = run_now(&mut a, "delete-motd").await;
    assert_eq!(notes(&r)[0].0, "info");
    // After deletion the first thing a new session gets is the answer to its own ping.
    let mut c = Client::login(s.c2s, "carol", "carolpw", "other").await;
    c.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let first = c.el().await;
    assert_eq!(first.name(), "iq", "got {first}");
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_xep_errors_and_changes_nothing() {
    let s = server().await;
    let mut a = admin(&s).await;

    // Unknown node, IQ get, missing node.
    let r = command(
        &mut a,
        &format!("node='{ADMIN}no-such' action='execute'"),
        "",
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
    let r = a
        .iq(
            &format!(
                "<iq type='get' id='g' to='localhost'><command xmlns='{}' node='{ADMIN}add-user'/></iq>",
                ns::COMMANDS
            ),
            "g",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
    let r = command(&mut a, "action='execute'", "").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
    // An action nobody knows: malformed-action.
    let r = command(&mut a, &format!("node='{ADMIN}add-user' action='jump'"), "").await;
    assert_eq!(command_error(&r).as_deref(), Some("malformed-action"));
    // Unknown session id.
    let r = step(&mut a, "add-user", "nope", "complete", &submit(&[])).await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-sessionid"));
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
    // 'next' without a session.
    let r = command(&mut a, &format!("node='{ADMIN}add-user' action='next'"), "").await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-sessionid"));

    let first = execute(&mut a, "add-user").await;
    let sid = session_id(&first);
    // This stage completes: 'next' and 'prev' are bad actions; the session survives.
    let r = step(&mut a, "add-user", &sid, "next", &submit(&[])).await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-action"), "{r}");
    let r = step(&mut a, "add-user", &sid, "prev", "").await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-action"), "{r}");
    // No form at all, a missing required field, a malformed JID, another domain.
    let r = step(&mut a, "add-user", &sid, "complete", "").await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-payload"));
    let r = step(
        &mut a,
        "add-user",
        &sid,
        "complete",
        &submit(&[("accountjid", &["eve@localhost"])]),
    )
    .await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-payload"), "{r}");
    for jid in [
        "@@",
        "eve@elsewhere.example",
        "localhost",
        "eve@localhost/res",
    ] {
        let r = step(
            &mut a,
            "add-user",
            &sid,
            "complete",
            &submit(&[
                ("accountjid", &[jid]),
                ("password", &["pw"]),
                ("password-verify", &["pw"]),
            ]),
        )
        .await;
        assert_eq!(
            command_error(&r).as_deref(),
            Some("bad-payload"),
            "{jid}: {r}"
        );
    }
    // A form that is not a data form at all.
    let r = step(
        &mut a,
        "add-user",
        &sid,
        "complete",
        "<x xmlns='jabber:x:data'/>",
    )
    .await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-payload"), "{r}");
    // After all that, the same session still completes.
    let r = step(
        &mut a,
        "add-user",
        &sid,
        "complete",
        &submit(&[
            ("accountjid", &["eve@localhost"]),
            ("password", &["pw"]),
            ("password-verify", &["pw"]),
        ]),
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    // A finished session is gone.
    let r = step(&mut a, "add-user", &sid, "complete", &submit(&[])).await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-sessionid"));
    assert_eq!(s.state().store.account_count(), 5);

    // Multi-account commands check every JID before acting: nothing is deleted.
    let r = run(
        &mut a,
        "delete-user",
        &[("accountjids", &["bob@localhost", "carol@other.example"])],
    )
    .await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-payload"), "{r}");
    assert!(s.state().store.account("bob@localhost").unwrap().is_some());

    // Deleting or disabling yourself is refused.
    for cmd in ["delete-user", "disable-user"] {
        let r = run(&mut a, cmd, &[("accountjids", &["admin@localhost"])]).await;
        assert_eq!(
            stanza_error(&r).as_deref(),
            Some("not-allowed"),
            "{cmd}: {r}"
        );
        assert_eq!(error_type(&r).as_deref(), Some("cancel"));
    }
    let acct = s.state().store.account("admin@localhost").unwrap().unwrap();
    assert!(!acct.disabled);
    assert!(alive(&mut a).await);
    s.stop().await;
}

#[tokio::test]
async fn cancel_ends_a_session() {
    let s = server().await;
    let mut a = admin(&s).await;
    let first = execute(&mut a, "delete-user").await;
    let sid = session_id(&first);
    let r = step(&mut a, "delete-user", &sid, "cancel", "").await;
    assert_eq!(status(&r), "canceled", "{r}");
    let r = step(
        &mut a,
        "delete-user",
        &sid,
        "complete",
        &submit(&[("accountjids", &["bob@localhost"])]),
    )
    .await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-sessionid"));
    assert!(s.state().store.account("bob@localhost").unwrap().is_some());
    s.stop().await;
}

#[tokio::test]
async fn stale_sessions_expire() {
    let s = TestServer::start_with(|c| {
        c.admins = vec!["admin@localhost".into()];
        c.limits.command_session_timeout_secs = 1;
    })
    .await;
    s.add_user("admin", "adminpw");
    let mut a = admin(&s).await;
    let first = execute(&mut a, "add-user").await;
    let sid = session_id(&first);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let r = step(
        &mut a,
        "add-user",
        &sid,
        "complete",
        &submit(&[
            ("accountjid", &["late@localhost"]),
            ("password", &["pw"]),
            ("password-verify", &["pw"]),
        ]),
    )
    .await;
    assert_eq!(command_error(&r).as_deref(), Some("session-expired"), "{r}");
    assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"));
    assert_eq!(error_type(&r).as_deref(), Some("cancel"));
    assert!(s.state().store.account("late@localhost").unwrap().is_none());
    s.stop().await;
}

#[tokio::test]
async fn two_admins_at_once() {
    let s = server().await;
    let mut a = admin(&s).await;
    let mut r2 = Client::login(s.c2s, "root", "rootpw", "console").await;
    let fa = execute(&mut a, "add-user").await;
    let fr = execute(&mut r2, "add-user").await;
    let (sa, sr) = (session_id(&fa), session_id(&fr));
    assert_ne!(sa, sr);
    // One admin cannot continue the other's session.
    let r = step(&mut r2, "add-user", &sa, "complete", &submit(&[])).await;
    assert_eq!(command_error(&r).as_deref(), Some("bad-sessionid"));
    let form = |pw: &str| {
        submit(&[
            ("accountjid", &["frank@localhost"]),
            ("password", &[pw]),
            ("password-verify", &[pw]),
        ])
    };
    // Both submit the same new account, concurrently.
    let (fa, fr) = (form("from-admin"), form("from-root"));
    let (ra, rr) = tokio::join!(
        step(&mut a, "add-user", &sa, "complete", &fa),
        step(&mut r2, "add-user", &sr, "complete", &fr),
    );
    let outcomes = [status_or_error(&ra), status_or_error(&rr)];
    assert!(
        outcomes.contains(&"completed".to_string()) && outcomes.contains(&"conflict".to_string()),
        "{outcomes:?}"
    );
    let winner = if status_or_error(&ra) == "completed" {
        "from-admin"
    } else {
        "from-root"
    };
    assert!(can_log_in(s.c2s, "frank", winner).await);
    // Both delete the same account at once: one deletes it, the other is told it is gone.
    let (da, dr) = tokio::join!(
        run(
            &mut a,
            "delete-user",
            &[("accountjids", &["frank@localhost"])]
        ),
        run(
            &mut r2,
            "delete-user",
            &[("accountjids", &["frank@localhost"])]
        ),
    );
    let kinds = [notes(&da)[0].0.clone(), notes(&dr)[0].0.clone()];
    assert!(
        kinds.contains(&"info".to_string()) && kinds.contains(&"error".to_string()),
        "{kinds:?}"
    );
    assert!(s
        .state()
        .store
        .account("frank@localhost")
        .unwrap()
        .is_none());
    s.stop().await;
}

fn status_or_error(r: &starling::xml::Element) -> String {
    match r.attr("type") {
        Some("error") => stanza_error(r).unwrap_or_default(),
        _ => status(r),
    }
}

#[tokio::test]
async fn in_band_password_change_keeps_the_requesting_session() {
    let s = server().await;
    let mut phone = Client::login(s.c2s, "bob", "bobpw", "phone").await;
    let mut desk = Client::login(s.c2s, "bob", "bobpw", "desk").await;
    let r = desk
        .iq(
            "<iq type='set' id='pw' to='localhost'><query xmlns='jabber:iq:register'><username>bob</username><password>changed</password></query></iq>",
            "pw",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r}");
    assert!(alive(&mut desk).await);
    assert_eq!(
        phone.stream_error().await.as_deref(),
        Some("not-authorized")
    );
    assert!(can_log_in(s.c2s, "bob", "changed").await);
    s.stop().await;
}

#[tokio::test]
async fn one_shot_execute_with_a_filled_form() {
    let s = server().await;
    let mut a = admin(&s).await;
    let r = command(
        &mut a,
        &format!("node='{ADMIN}get-user-lastlogin' action='execute'"),
        &submit(&[("accountjid", &["bob@localhost"])]),
    )
    .await;
    assert_eq!(status(&r), "completed", "{r}");
    assert_eq!(field_values(&r, "accountjid"), vec!["bob@localhost"]);
    s.stop().await;
}
