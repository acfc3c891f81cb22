//! The `starling` command: serve, and administer accounts with or without a running server.

use clap::{Parser, Subcommand};
use starling::accounts::{self, AccountError};
use starling::control::{self, Reply, Request};
use starling::module::Registry;
use starling::store::{Store, StoreError};
use starling::{services, Config, Server};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "starling", version, about = "Starling XMPP server")]
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        Command::Adduser { jid, password } => {
            let Some(password) = password_arg(password) else {
                return ExitCode::from(2);
            };
            runtime.block_on(admin(&config, Request::AddUser { jid, password }))
        }
        Command::Deluser { jid } => runtime.block_on(admin(&config, Request::DelUser { jid })),
        Command::Passwd { jid, password } => {
            let Some(password) = password_arg(password) else {
                return ExitCode::from(2);
            };
            runtime.block_on(admin(&config, Request::Passwd { jid, password }))
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
    let reply = match control::call(config, &req).await {
        Ok(Some(reply)) => reply,
        Ok(None) => offline(config, req),
        Err(e) => Reply {
            ok: false,
            error: Some(format!("talking to the running server failed: {e}")),
            lines: vec![],
        },
    };
    for line in &reply.lines {
        println!("{line}");
    }
    if reply.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("starling: {}", reply.error.unwrap_or_default());
        ExitCode::FAILURE
    }
}

fn offline(config: &Config, req: Request) -> Reply {
    let store = match Store::open(&config.data_dir) {
        Ok(s) => s,
        Err(StoreError::Locked) => {
            return failed(format!(
                "the database in {} is in use by another process, but no server answers on {}",
                config.data_dir.display(),
                control::socket_path(config).display()
            ))
        }
        Err(e) => return failed(e),
    };
    let mut registry = Registry::default();
    services::register_all(&mut registry, config);
    let domain = &config.domain;
    let result: Result<(), AccountError> = (|| match req {
        Request::AddUser { jid, password } => {
            accounts::create(&store, &accounts::local_jid(&jid, domain)?, &password)
        }
        Request::DelUser { jid } => {
            accounts::delete(&store, &registry, &accounts::local_jid(&jid, domain)?)
        }
        Request::Passwd { jid, password } => {
            accounts::set_password(&store, &accounts::local_jid(&jid, domain)?, &password)
        }
        Request::SetDisabled { jid, disabled } => {
            Ok(store.set_disabled(accounts::local_jid(&jid, domain)?.as_str(), disabled)?)
        }
        Request::ListUsers | Request::Online => Ok(()),
    })();
    let _ = store.flush();
    match result {
        Ok(()) => Reply {
            ok: true,
            error: None,
            lines: vec![],
        },
        Err(e) => failed(e),
    }
}

fn failed(e: impl ToString) -> Reply {
    Reply {
        ok: false,
        error: Some(e.to_string()),
        lines: vec![],
    }
}
