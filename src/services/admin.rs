//! XEP-0133: Service Administration — the commands administrators run from their client,
//! on top of the ad-hoc framework (`adhoc.rs`), plus the announcement and the message of
//! the day they share with the control socket.
//!
//! Choices where the XEP leaves room:
//! - Deleting or disabling your own account is refused with `not-allowed`: an admin
//!   would cut off the session they are working in; in-band registration (XEP-0077)
//!   remains the way to remove one's own account.
//! - Commands on several accounts check every JID first (a JID of another domain or a
//!   malformed one is `bad-payload`, nothing done), then act on each and complete with a
//!   note saying what happened to each; the note is an `error` note if any failed.
//! - Commands on one account answer a missing account with `item-not-found` and an
//!   existing one (add-user) with `conflict`.
//! - "Online" users are accounts with at least one bound session; "active" users are
//!   those with an available presence that is not away or xa.
//! - Announcements and the message of the day are `headline` messages from the domain:
//!   they are for whoever is connected, not stored offline. The message of the day is
//!   sent when a session has bound its resource, i.e. at each login.

use crate::accounts::{self, AccountError};
use crate::forms::{Field, FieldType, Form, FormType};
use crate::module::{IqKind, IqRequest, IqTarget, Registry};
use crate::ns;
use crate::services::adhoc::{bad_payload, CommandCtx, CommandStep, Note, NoteType};
use crate::sessions::SessionHandle;
use crate::stanza::StanzaError;
use crate::xml::Element;
use crate::ServerState;
use jid::{BareJid, Jid};
use std::collections::BTreeSet;

macro_rules! node {
    ($name:literal) => {
        concat!("http://jabber.org/protocol/admin#", $name)
    };
}

pub const ADD_USER: &str = node!("add-user");
pub const DELETE_USER: &str = node!("delete-user");
pub const DISABLE_USER: &str = node!("disable-user");
pub const REENABLE_USER: &str = node!("reenable-user");
pub const END_USER_SESSION: &str = node!("end-user-session");
pub const CHANGE_USER_PASSWORD: &str = node!("change-user-password");
pub const GET_USER_ROSTER: &str = node!("get-user-roster");
pub const GET_USER_LASTLOGIN: &str = node!("get-user-lastlogin");
pub const GET_REGISTERED_USERS_NUM: &str = node!("get-registered-users-num");
pub const GET_REGISTERED_USERS_LIST: &str = node!("get-registered-users-list");
pub const GET_ONLINE_USERS_NUM: &str = node!("get-online-users-num");
pub const GET_ONLINE_USERS_LIST: &str = node!("get-online-users-list");
pub const GET_ACTIVE_USERS_NUM: &str = node!("get-active-users-num");
pub const GET_ACTIVE_USERS: &str = node!("get-active-users");
pub const ANNOUNCE: &str = node!("announce");
pub const SET_MOTD: &str = node!("set-motd");
pub const EDIT_MOTD: &str = node!("edit-motd");
pub const DELETE_MOTD: &str = node!("delete-motd");

/// The roster namespace, for reading a user's roster through the roster module's own
/// handler (the admin module does not know how rosters are stored).
use crate::ns::ROSTER;

type Handler = fn(&CommandCtx<'_>, &[Form]) -> Result<CommandStep, StanzaError>;

pub fn register(reg: &mut Registry) {
    reg.spec("0133", "1.3.1", "Service Administration");
    let commands: [(&'static str, &'static str, Handler); 18] = [
        (ADD_USER, "Add User", add_user),
        (DELETE_USER, "Delete User", delete_user),
        (DISABLE_USER, "Disable User", disable_user),
        (REENABLE_USER, "Re-Enable User", reenable_user),
        (END_USER_SESSION, "End User Session", end_user_session),
        (
            CHANGE_USER_PASSWORD,
            "Change User Password",
            change_password,
        ),
        (GET_USER_ROSTER, "Get User Roster", get_user_roster),
        (
            GET_USER_LASTLOGIN,
            "Get User Last Login Time",
            get_lastlogin,
        ),
        (
            GET_REGISTERED_USERS_NUM,
            "Get Number of Registered Users",
            registered_num,
        ),
        (
            GET_REGISTERED_USERS_LIST,
            "Get List of Registered Users",
            registered_list,
        ),
        (
            GET_ONLINE_USERS_NUM,
            "Get Number of Online Users",
            online_num,
        ),
        (
            GET_ONLINE_USERS_LIST,
            "Get List of Online Users",
            online_list,
        ),
        (
            GET_ACTIVE_USERS_NUM,
            "Get Number of Active Users",
            active_num,
        ),
        (GET_ACTIVE_USERS, "Get List of Active Users", active_list),
        (ANNOUNCE, "Send Announcement to Online Users", announce_cmd),
        (SET_MOTD, "Set Message of the Day", set_motd),
        (EDIT_MOTD, "Edit Message of the Day", edit_motd),
        (DELETE_MOTD, "Delete Message of the Day", delete_motd),
    ];
    for (node, name, handler) in commands {
        reg.command(node, name, true, handler);
    }
    reg.on_session_start(send_motd);
}

// ---- shared operations (also used by the control socket) ----

/// Sends a headline from the domain to every bound session; returns how many took it.
pub fn announce(server: &ServerState, subject: Option<&str>, body: &str, by: &str) -> usize {
    let mut sent = 0;
    for handle in server.sessions.all() {
        if handle
            .send(headline(server, &handle, subject, body))
            .is_ok()
        {
            sent += 1;
        }
    }
    tracing::info!(by, sessions = sent, "announcement sent");
    sent
}

fn headline(
    server: &ServerState,
    to: &SessionHandle,
    subject: Option<&str>,
    body: &str,
) -> Element {
    let mut m = Element::new("message", ns::CLIENT)
        .with_attr("from", server.config.domain.clone())
        .with_attr("to", to.jid.as_str())
        .with_attr("type", "headline");
    if let Some(s) = subject.filter(|s| !s.is_empty()) {
        m.push(Element::new("subject", ns::CLIENT).with_text(s));
    }
    m.push(Element::new("body", ns::CLIENT).with_text(body));
    m
}

fn send_motd(server: &ServerState, handle: &SessionHandle) {
    match server.store.motd() {
        Ok(Some(motd)) => {
            // A session gone already has nobody to read it; nothing to fall back to.
            let _ = handle.send(headline(server, handle, None, &motd.text));
        }
        Ok(None) => {}
        Err(e) => tracing::error!("reading the message of the day failed: {e}"),
    }
}

/// Accounts with at least one bound session, sorted.
pub fn online_users(server: &ServerState) -> Vec<BareJid> {
    let set: BTreeSet<BareJid> = server
        .sessions
        .all()
        .into_iter()
        .map(|h| h.jid.to_bare())
        .collect();
    set.into_iter().collect()
}

/// Online accounts with an available presence that is neither away nor xa.
pub fn active_users(server: &ServerState) -> Vec<BareJid> {
    online_users(server)
        .into_iter()
        .filter(|bare| {
            server.sessions.resources(bare).iter().any(|r| {
                r.available
                    && !r
                        .presence
                        .as_ref()
                        .and_then(|p| p.child_text("show", ns::CLIENT))
                        .is_some_and(|s| matches!(s.trim(), "away" | "xa"))
            })
        })
        .collect()
}

// ---- helpers ----

fn account_error(e: AccountError, jid: &BareJid) -> StanzaError {
    match e {
        AccountError::Exists => StanzaError::conflict().with_text(format!("{jid} already exists")),
        AccountError::NoSuchAccount => {
            StanzaError::item_not_found().with_text(format!("there is no account {jid}"))
        }
        AccountError::BadJid(..) | AccountError::BadPassword => bad_payload(e.to_string()),
        AccountError::Store(e) => {
            tracing::error!("administration: store error: {e}");
            StanzaError::internal_server_error()
        }
    }
}

/// A JID naming an account of this server (a bare JID of our domain).
fn local_account(ctx: &CommandCtx<'_>, input: &str) -> Result<BareJid, StanzaError> {
    let domain = &ctx.server.config.domain;
    // The form asks for a JID: a bare "localhost" is the server, not a user to complete.
    if !input.contains('@') {
        return Err(bad_payload(format!(
            "{:?} is not an account JID (user@{domain})",
            input.trim()
        )));
    }
    accounts::local_jid(input.trim(), domain).map_err(|_| {
        bad_payload(format!(
            "{:?} is not an account of this server (user@{domain})",
            input.trim()
        ))
    })
}

fn accountjid_form(title: &str, instructions: &str) -> Form {
    Form::typed(FormType::Form, ns::ADMIN)
        .title(title)
        .instructions(instructions)
        .field(
            Field::new("accountjid", FieldType::JidSingle)
                .label("The Jabber ID")
                .required(),
        )
}

fn accountjids_form(title: &str, instructions: &str) -> Form {
    Form::typed(FormType::Form, ns::ADMIN)
        .title(title)
        .instructions(instructions)
        .field(
            Field::new("accountjids", FieldType::JidMulti)
                .label("The Jabber ID(s)")
                .required(),
        )
}

/// The accounts named in `accountjids`, all checked before anything is done.
fn accountjids(ctx: &CommandCtx<'_>, form: &Form) -> Result<Vec<BareJid>, StanzaError> {
    let mut out = Vec::new();
    for v in form.values("accountjids") {
        let jid = local_account(ctx, v)?;
        if !out.contains(&jid) {
            out.push(jid);
        }
    }
    if out.is_empty() {
        return Err(bad_payload("name at least one account"));
    }
    Ok(out)
}

fn refuse_self(ctx: &CommandCtx<'_>, jids: &[BareJid], what: &str) -> Result<(), StanzaError> {
    let me = ctx.by();
    if jids.contains(&me) {
        return Err(StanzaError::not_allowed().with_text(format!(
            "you cannot {what} your own account from here ({me})"
        )));
    }
    Ok(())
}

/// Applies `op` to each account and completes with one note per outcome.
fn for_each_account(
    jids: &[BareJid],
    done: &str,
    mut op: impl FnMut(&BareJid) -> Result<String, AccountError>,
) -> CommandStep {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for jid in jids {
        match op(jid) {
            Ok(detail) if detail.is_empty() => ok.push(jid.to_string()),
            Ok(detail) => ok.push(format!("{jid} ({detail})")),
            Err(e) => failed.push(format!("{jid}: {e}")),
        }
    }
    let mut notes = Vec::new();
    if !ok.is_empty() {
        notes.push(Note {
            kind: NoteType::Info,
            text: format!("{done}: {}", ok.join(", ")),
        });
    }
    if !failed.is_empty() {
        notes.push(Note {
            kind: NoteType::Error,
            text: format!("Failed: {}", failed.join("; ")),
        });
    }
    // Put the error first: clients that show one note show the one that matters.
    notes.sort_by_key(|n| n.kind != NoteType::Error);
    CommandStep::Done { form: None, notes }
}

fn result_form(fields: Vec<Field>) -> Form {
    let mut f = Form::typed(FormType::Result, ns::ADMIN);
    f.fields.extend(fields);
    f
}

/// Joins the lines of a text-multi field.
fn multiline(form: &Form, var: &str) -> String {
    form.get(var)
        .map(|f| f.values.join("\n"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

fn max_items_form(title: &str) -> Form {
    let mut max = Field::new("max_items", FieldType::ListSingle).label("Maximum number of items");
    for n in ["25", "50", "75", "100", "150", "200"] {
        max = max.option(n, n);
    }
    max = max.option("None", "none").value("100");
    Form::typed(FormType::Form, ns::ADMIN)
        .title(title)
        .field(max)
}

/// A list command: first the max_items form, then the (possibly truncated) list.
fn list_command(
    forms: &[Form],
    title: &str,
    var: &str,
    label: &str,
    list: impl FnOnce() -> Result<Vec<String>, StanzaError>,
) -> Result<CommandStep, StanzaError> {
    let Some(form) = forms.first() else {
        return Ok(CommandStep::last_form(max_items_form(title)));
    };
    let mut items = list()?;
    let total = items.len();
    if let Some(max) = form
        .value("max_items")
        .filter(|m| *m != "none")
        .and_then(|m| m.parse::<usize>().ok())
    {
        items.truncate(max);
    }
    let mut step = CommandStep::result(result_form(vec![Field::new(var, FieldType::JidMulti)
        .label(label)
        .values(items.iter().cloned())]));
    if items.len() < total {
        if let CommandStep::Done { notes, .. } = &mut step {
            notes.push(Note {
                kind: NoteType::Info,
                text: format!("Showing {} of {total}", items.len()),
            });
        }
    }
    Ok(step)
}

fn count_result(var: &str, label: &str, n: usize) -> Result<CommandStep, StanzaError> {
    Ok(CommandStep::result(result_form(vec![Field::new(
        var,
        FieldType::TextSingle,
    )
    .label(label)
    .value(n.to_string())])))
}

fn log(ctx: &CommandCtx<'_>, command: &str) {
    tracing::info!(by = %ctx.by(), command, "administrative command");
}

// ---- the commands ----

fn add_user(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    let Some(form) = forms.first() else {
        return Ok(CommandStep::last_form(
            accountjid_form("Adding a User", "Fill out this form to add a user.")
                .field(
                    Field::new("password", FieldType::TextPrivate)
                        .label("The password for this account")
                        .required(),
                )
                .field(
                    Field::new("password-verify", FieldType::TextPrivate)
                        .label("Retype password")
                        .required(),
                )
                .field(Field::new("email", FieldType::TextMulti).label("Email address"))
                .field(Field::new("given_name", FieldType::TextSingle).label("Given name"))
                .field(Field::new("surname", FieldType::TextSingle).label("Family name")),
        ));
    };
    let jid = local_account(ctx, form.value("accountjid").unwrap_or(""))?;
    let password = form.value("password").unwrap_or("");
    if form.value("password-verify").unwrap_or("") != password {
        return Err(bad_payload("the two passwords do not match"));
    }
    ctx.server
        .create_account(&jid, password, ctx.by().as_str())
        .map_err(|e| account_error(e, &jid))?;
    Ok(CommandStep::note(
        NoteType::Info,
        format!("Account {jid} created"),
    ))
}

fn delete_user(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    let Some(form) = forms.first() else {
        return Ok(CommandStep::last_form(accountjids_form(
            "Deleting a User",
            "Fill out this form to delete a user: the account and everything stored for it.",
        )));
    };
    let jids = accountjids(ctx, form)?;
    refuse_self(ctx, &jids, "delete")?;
    let by = ctx.by();
    Ok(for_each_account(&jids, "Deleted", |jid| {
        ctx.server.delete_account(jid, by.as_str())?;
        Ok(String::new())
    }))
}

fn disable_user(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    let Some(form) = forms.first() else {
        return Ok(CommandStep::last_form(accountjids_form(
            "Disabling a User",
            "Fill out this form to disable a user: their sessions end and they cannot log in.",
        )));
    };
    let jids = accountjids(ctx, form)?;
    refuse_self(ctx, &jids, "disable")?;
    let by = ctx.by();
    Ok(for_each_account(&jids, "Disabled", |jid| {
        ctx.server.set_disabled(jid, true, by.as_str())?;
        Ok(String::new())
    }))
}

fn reenable_user(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    let Some(form) = forms.first() else {
        return Ok(CommandStep::last_form(accountjids_form(
            "Re-Enabling a User",
            "Fill out this form to re-enable a user.",
        )));
    };
    let jids = accountjids(ctx, form)?;
    let by = ctx.by();
    Ok(for_each_account(&jids, "Re-enabled", |jid| {
        ctx.server.set_disabled(jid, false, by.as_str())?;
        Ok(String::new())
    }))
}

fn end_user_session(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    let Some(form) = forms.first() else {
        return Ok(CommandStep::last_form(accountjids_form(
            "Ending a User Session",
            "A bare JID ends every session of the account; a full JID ends that one.",
        )));
    };
    let domain = &ctx.server.config.domain;
    let mut targets = Vec::new();
    for v in form.values("accountjids") {
        let jid = Jid::new(v.trim())
            .ok()
            .filter(|j| j.node().is_some() && j.domain().as_str() == domain)
            .ok_or_else(|| {
                bad_payload(format!(
                    "{:?} is not a user or session of this server",
                    v.trim()
                ))
            })?;
        targets.push(jid);
    }
    if targets.is_empty() {
        return Err(bad_payload("name at least one account"));
    }
    let by = ctx.by();
    let mut notes = Vec::new();
    for t in &targets {
        let n = ctx.server.end_sessions(t, by.as_str());
        notes.push(format!("{t}: {n} session(s) ended"));
    }
    Ok(CommandStep::note(NoteType::Info, notes.join("; ")))
}

fn change_password(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    let Some(form) = forms.first() else {
        return Ok(CommandStep::last_form(
            accountjid_form(
                "Changing a User Password",
                "The user's sessions end; they log in again with the new password.",
            )
            .field(
                Field::new("password", FieldType::TextPrivate)
                    .label("The password for this account")
                    .required(),
            ),
        ));
    };
    let jid = local_account(ctx, form.value("accountjid").unwrap_or(""))?;
    let password = form.value("password").unwrap_or("");
    // An admin changing their own password keeps the session they are using.
    let me = ctx.by();
    let keep = (jid == me).then_some(ctx.from);
    ctx.server
        .change_password(&jid, password, keep, me.as_str())
        .map_err(|e| account_error(e, &jid))?;
    Ok(CommandStep::note(
        NoteType::Info,
        format!("Password of {jid} changed"),
    ))
}

fn existing(ctx: &CommandCtx<'_>, jid: &BareJid) -> Result<crate::store::Account, StanzaError> {
    match ctx.server.store.account(jid.as_str()) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(account_error(AccountError::NoSuchAccount, jid)),
        Err(e) => Err(account_error(AccountError::Store(e), jid)),
    }
}

fn get_user_roster(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    let Some(form) = forms.first() else {
        return Ok(CommandStep::last_form(accountjid_form(
            "Getting a User's Roster",
            "Fill out this form to get a user's roster.",
        )));
    };
    let jid = local_account(ctx, form.value("accountjid").unwrap_or(""))?;
    existing(ctx, &jid)?;
    log(ctx, "get-user-roster");
    // Ask the roster module the way the user would (a roster get from their bare JID,
    // which marks no session as interested), so this module needs no roster internals.
    let payload = Element::new("query", ROSTER);
    let user = Jid::from(jid.clone());
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("id", "admin-roster")
        .with_attr("from", jid.as_str())
        .with_child(payload.clone());
    let req = IqRequest {
        server: ctx.server,
        from: &user,
        to: &user,
        kind: IqKind::Get,
        iq: &iq,
    };
    let mut notes = Vec::new();
    let query = match ctx
        .server
        .registry
        .dispatch_iq(IqTarget::Account, &req, &payload)
    {
        Some(Ok(Some(q))) => q,
        Some(Ok(None)) => payload,
        Some(Err(e)) => {
            tracing::error!(account = %jid, "reading the roster failed: {e}");
            return Err(StanzaError::internal_server_error());
        }
        None => {
            notes.push(Note {
                kind: NoteType::Warn,
                text: "this server has no roster module; the roster is empty".into(),
            });
            payload
        }
    };
    let mut result = result_form(vec![
        Field::new("accountjid", FieldType::JidSingle).value(jid.as_str())
    ]);
    result.extra.push(query);
    Ok(CommandStep::Done {
        form: Some(result),
        notes,
    })
}

fn get_lastlogin(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    let Some(form) = forms.first() else {
        return Ok(CommandStep::last_form(accountjid_form(
            "Getting a User's Last Login Time",
            "Fill out this form to get a user's last login time.",
        )));
    };
    let jid = local_account(ctx, form.value("accountjid").unwrap_or(""))?;
    existing(ctx, &jid)?;
    let (last_login, _) = ctx
        .server
        .store
        .activity(jid.as_str())
        .map_err(|e| account_error(AccountError::Store(e), &jid))?;
    log(ctx, "get-user-lastlogin");
    let mut last = Field::new("lastlogin", FieldType::TextSingle).label("Last login time");
    let mut notes = Vec::new();
    match last_login {
        Some(t) => last = last.value(crate::datetime::format(t)),
        None => notes.push(Note {
            kind: NoteType::Info,
            text: format!("{jid} has never logged in"),
        }),
    }
    Ok(CommandStep::Done {
        form: Some(result_form(vec![
            Field::new("accountjid", FieldType::JidSingle).value(jid.as_str()),
            last,
        ])),
        notes,
    })
}

fn registered_num(ctx: &CommandCtx<'_>, _: &[Form]) -> Result<CommandStep, StanzaError> {
    log(ctx, "get-registered-users-num");
    count_result(
        "registeredusersnum",
        "The number of registered users",
        ctx.server.store.account_count(),
    )
}

fn registered_list(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    list_command(
        forms,
        "Requesting List of Registered Users",
        "registereduserjids",
        "The list of all users",
        || {
            log(ctx, "get-registered-users-list");
            ctx.server.store.account_jids().map_err(|e| {
                tracing::error!("listing accounts failed: {e}");
                StanzaError::internal_server_error()
            })
        },
    )
}

fn online_num(ctx: &CommandCtx<'_>, _: &[Form]) -> Result<CommandStep, StanzaError> {
    log(ctx, "get-online-users-num");
    count_result(
        "onlineusersnum",
        "The number of online users",
        online_users(ctx.server).len(),
    )
}

fn online_list(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    list_command(
        forms,
        "Requesting List of Online Users",
        "onlineuserjids",
        "The list of all online users",
        || {
            log(ctx, "get-online-users-list");
            Ok(online_users(ctx.server)
                .into_iter()
                .map(|j| j.to_string())
                .collect())
        },
    )
}

fn active_num(ctx: &CommandCtx<'_>, _: &[Form]) -> Result<CommandStep, StanzaError> {
    log(ctx, "get-active-users-num");
    count_result(
        "activeusersnum",
        "The number of active users",
        active_users(ctx.server).len(),
    )
}

fn active_list(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    list_command(
        forms,
        "Requesting List of Active Users",
        "activeuserjids",
        "The list of active users",
        || {
            log(ctx, "get-active-users");
            Ok(active_users(ctx.server)
                .into_iter()
                .map(|j| j.to_string())
                .collect())
        },
    )
}

fn announce_cmd(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    let Some(form) = forms.first() else {
        return Ok(CommandStep::last_form(
            Form::typed(FormType::Form, ns::ADMIN)
                .title("Making an Announcement")
                .instructions("Fill out this form to make an announcement to all active users of this service.")
                .field(Field::new("subject", FieldType::TextSingle).label("Subject"))
                .field(
                    Field::new("announcement", FieldType::TextMulti)
                        .label("Announcement")
                        .required(),
                ),
        ));
    };
    let body = multiline(form, "announcement");
    if body.trim().is_empty() {
        return Err(bad_payload("the announcement is empty"));
    }
    let n = announce(ctx.server, form.value("subject"), &body, ctx.by().as_str());
    Ok(CommandStep::note(
        NoteType::Info,
        format!("Announcement sent to {n} session(s)"),
    ))
}

fn motd_form(title: &str, current: Option<String>) -> Form {
    let mut field = Field::new("motd", FieldType::TextMulti)
        .label("Message of the Day")
        .required();
    if let Some(text) = current {
        field = field.values(text.lines().map(str::to_string));
    }
    Form::typed(FormType::Form, ns::ADMIN)
        .title(title)
        .instructions("Users receive this message each time they log in.")
        .field(field)
}

fn store_motd(ctx: &CommandCtx<'_>, form: &Form) -> Result<CommandStep, StanzaError> {
    let text = multiline(form, "motd");
    if text.trim().is_empty() {
        return Err(bad_payload("the message of the day is empty"));
    }
    let by = ctx.by();
    ctx.server
        .store
        .set_motd(&text, by.as_str())
        .map_err(|e| account_error(AccountError::Store(e), &by))?;
    tracing::info!(by = %by, "message of the day set");
    Ok(CommandStep::note(NoteType::Info, "Message of the day set"))
}

fn set_motd(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    match forms.first() {
        None => Ok(CommandStep::last_form(motd_form(
            "Setting the Message of the Day",
            None,
        ))),
        Some(form) => store_motd(ctx, form),
    }
}

fn edit_motd(ctx: &CommandCtx<'_>, forms: &[Form]) -> Result<CommandStep, StanzaError> {
    match forms.first() {
        None => {
            let current = ctx.server.store.motd().map_err(|e| {
                tracing::error!("reading the message of the day failed: {e}");
                StanzaError::internal_server_error()
            })?;
            Ok(CommandStep::last_form(motd_form(
                "Editing the Message of the Day",
                current.map(|m| m.text),
            )))
        }
        Some(form) => store_motd(ctx, form),
    }
}

fn delete_motd(ctx: &CommandCtx<'_>, _: &[Form]) -> Result<CommandStep, StanzaError> {
    let by = ctx.by();
    let had = ctx
        .server
        .store
        .delete_motd()
        .map_err(|e| account_error(AccountError::Store(e), &by))?;
    tracing::info!(by = %by, had, "message of the day deleted");
    Ok(CommandStep::note(
        NoteType::Info,
        if had {
            "Message of the day deleted"
        } else {
            "There was no message of the day"
        },
    ))
}
