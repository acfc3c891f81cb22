//! The `starling` command: serve, and administer accounts with or without a running server.

use clap::{Parser, Subcommand};
use starling::accounts::{self, AccountError};
use starling::control::{self, ErrorKind, Reply, Request};
use starling::module::Registry;
use starling::store::{Store, StoreError};
use starling::{services, Config, Server};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  failed for another reason (a corrupt record, a disk error)
  2  bad command line or configuration file
  3  bad input: a malformed JID, a JID of another domain, an empty password or text
  4  no such account
  5  the account already exists
  6  the command needs a running server and none answers on the control socket
  7  the database is locked by a process that does not answer on the control socket,
     or talking to the running server failed

Account commands work with the server running (through its control socket in data_dir)
or stopped (directly on the database).";

#[derive(Parser)]
#[command(
    name = "starling",
    version,
    about = "Starling XMPP server",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults serve `localhost`.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Create an account. The password comes from --password or the first line of stdin.
    Adduser {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account and everything stored for it.
    Deluser { jid: String },
    /// Change an account's password (from --password or stdin).
    Passwd {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Check the configuration file and exit.
    CheckConfig,
    /// Manage accounts: add, del, passwd, disable, enable, list.
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// List the online sessions (full JIDs), one a line. Needs a running server.
    Online,
    /// Send a headline message to every online session. Needs a running server.
    Announce {
        /// The text of the announcement.
        text: String,
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account. The password comes from --password or the first line of stdin.
    Add {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account and everything stored for it; its sessions end.
    Del { jid: String },
    /// Change an account's password (from --password or stdin); its sessions end.
    Passwd {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Disable an account: its sessions end and it cannot log in.
    Disable { jid: String },
    /// Re-enable a disabled account.
    Enable { jid: String },
    /// List every account (bare JIDs), one a line.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("starling: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.workers > 0 {
        builder.worker_threads(config.workers);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starling: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(config)),
        Command::CheckConfig => {
            println!("configuration is valid (domain {})", config.domain);
            ExitCode::SUCCESS
        }
        Command::Adduser { jid, password }
        | Command::User {
            action: UserCommand::Add { jid, password },
        } => {
            let Some(password) = password_arg(password) else {
                return ExitCode::from(2);
            };
            runtime.block_on(admin(&config, Request::AddUser { jid, password }))
        }
        Command::Deluser { jid }
        | Command::User {
            action: UserCommand::Del { jid },
        } => runtime.block_on(admin(&config, Request::DelUser { jid })),
        Command::Passwd { jid, password }
        | Command::User {
            action: UserCommand::Passwd { jid, password },
        } => {
            let Some(password) = password_arg(password) else {
                return ExitCode::from(2);
            };
            runtime.block_on(admin(&config, Request::Passwd { jid, password }))
        }
        Command::User { action } => {
            let req = match action {
                UserCommand::Disable { jid } => Request::SetDisabled {
                    jid,
                    disabled: true,
                },
                UserCommand::Enable { jid } => Request::SetDisabled {
                    jid,
                    disabled: false,
                },
                UserCommand::List => Request::ListUsers,
                // Matched by the arms above.
                UserCommand::Add { .. } | UserCommand::Del { .. } | UserCommand::Passwd { .. } => {
                    return ExitCode::from(2)
                }
            };
            runtime.block_on(admin(&config, req))
        }
        Command::Online => runtime.block_on(admin(&config, Request::Online)),
        Command::Announce { text, subject } => {
            runtime.block_on(admin(&config, Request::Announce { text, subject }))
        }
    }
}

fn password_arg(given: Option<String>) -> Option<String> {
    if let Some(p) = given {
        return Some(p);
    }
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(_) => {
            let p = line.trim_end_matches(['\r', '\n']).to_string();
            if p.is_empty() {
                eprintln!("starling: no password given (use --password or write it to stdin)");
                None
            } else {
                Some(p)
            }
        }
        Err(e) => {
            eprintln!("starling: cannot read the password: {e}");
            None
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn serve(config: Config) -> ExitCode {
    init_logging(&config);
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    server.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs an administrative request through the running server, or directly on the store
/// when no server is running.
async fn admin(config: &Config, req: Request) -> ExitCode {
    // Offline changes are logged here (the server logs the ones it makes).
    init_logging(config);
    let reply = match control::call(config, &req).await {
        Ok(Some(reply)) => reply,
        Ok(None) => offline(config, req),
        Err(e) => Reply::err(
            ErrorKind::Unavailable,
            format!("talking to the running server failed: {e}"),
        ),
    };
    for line in &reply.lines {
        println!("{line}");
    }
    if reply.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("starling: {}", reply.error.unwrap_or_default());
        ExitCode::from(reply.kind.unwrap_or(ErrorKind::Failed).exit_code())
    }
}

/// Who runs this command, for the log line of an offline change.
fn cli_user() -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata("/proc/self") {
            return format!("command line (uid {})", m.uid());
        }
    }
    "command line".to_string()
}

fn offline(config: &Config, req: Request) -> Reply {
    if matches!(req, Request::Online | Request::Announce { .. }) {
        return Reply::err(
            ErrorKind::NotRunning,
            format!(
                "no server is running (nothing answers on {}); this command needs one",
                control::socket_path(config).display()
            ),
        );
    }
    let store = match Store::open(&config.data_dir) {
        Ok(s) => s,
        Err(StoreError::Locked) => {
            return Reply::err(
                ErrorKind::Unavailable,
                format!(
                    "the database in {} is in use by another process, but no server answers on {}",
                    config.data_dir.display(),
                    control::socket_path(config).display()
                ),
            )
        }
        Err(e) => return Reply::err(ErrorKind::Failed, e),
    };
    let mut registry = Registry::default();
    services::register_all(&mut registry, config);
    let domain = &config.domain;
    let by = cli_user();
    let result: Result<Vec<String>, AccountError> = (|| {
        let (jid, what) = match req {
            Request::AddUser { jid, password } => {
                let jid = accounts::local_jid(&jid, domain)?;
                accounts::create(&store, &jid, &password)?;
                (jid, "account created")
            }
            Request::DelUser { jid } => {
                let jid = accounts::local_jid(&jid, domain)?;
                accounts::delete(&store, &registry, &jid)?;
                (jid, "account deleted")
            }
            Request::Passwd { jid, password } => {
                let jid = accounts::local_jid(&jid, domain)?;
                accounts::set_password(&store, &jid, &password)?;
                (jid, "password changed")
            }
            Request::SetDisabled { jid, disabled } => {
                let jid = accounts::local_jid(&jid, domain)?;
                store.set_disabled(jid.as_str(), disabled)?;
                (
                    jid,
                    if disabled {
                        "account disabled"
                    } else {
                        "account enabled"
                    },
                )
            }
            Request::ListUsers => return Ok(store.account_jids()?),
            Request::Online | Request::Announce { .. } => return Ok(vec![]),
        };
        tracing::info!(by = %by, account = %jid, "{what} (server stopped)");
        Ok(vec![])
    })();
    let _ = store.flush();
    match result {
        Ok(lines) => Reply::ok(lines),
        Err(e) => Reply::account_err(e),
    }
}
