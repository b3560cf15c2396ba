//! Command line: parse, set up logging, load the config, run a command, map the outcome to
//! an exit code (CONTRACT: 0 success, 1 runtime failure, 64 usage, 78 configuration).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use hubee_sync::app::{self, EXIT_USAGE};

#[derive(Parser, Debug)]
#[command(
    name = "hubee-sync",
    version,
    about = "Receives télédossiers from HubEE into a spool, verified and acknowledged exactly once"
)]
struct Cli {
    /// Configuration file [default: $HUBEE_SYNC_CONFIG, then /etc/hubee-sync/hubee-sync.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The daemon: every subscription now, then on its schedule; SIGTERM/SIGINT drain and
    /// exit 0 (a second one exits at once).
    Run,
    /// One complete cycle of every (or the named) subscription, then exit.
    Once {
        /// Only this subscription (repeatable).
        #[arg(long = "subscription", value_name = "NAME")]
        subscriptions: Vec<String>,
    },
    /// Read and check the configuration; report every error at once.
    Validate,
    /// `validate`, then credentials, state database, spools and SMTP: one line per check.
    Check,
    /// Per subscription, from the state database: last poll, counts, last error.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Fetch a case again by id and publish it as a new entry; touches nothing on the hub.
    Redeliver {
        #[arg(long, value_name = "NAME")]
        subscription: String,
        /// The case id (caseId in case.json / manifest.json).
        #[arg(long = "case", value_name = "ID")]
        case_id: String,
    },
    /// Print each recipient list's next digest (text part); with --send, send them now.
    Digest {
        /// Send now (and move the digest cursors) instead of printing.
        #[arg(long)]
        send: bool,
        /// Print the HTML part instead of the text part (to look at it in a browser).
        #[arg(long, conflicts_with = "send")]
        html: bool,
    },
}

/// Logs go to journald with structured fields when stderr is the journal (under systemd),
/// else to stderr as text or JSON. A basic logger exists before the config is read, so
/// configuration errors are reported properly.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter = || {
        EnvFilter::try_from_env("HUBEE_SYNC_LOG")
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn,reqwest=warn"))
    };
    if hubee_sync::systemd::journal::stderr_is_journal() {
        match hubee_sync::systemd::journal::JournalLayer::new() {
            Ok(journal) => {
                tracing_subscriber::registry()
                    .with(journal.with_filter(filter()))
                    .init();
                return;
            }
            Err(e) => {
                eprintln!("hubee-sync: cannot reach journald ({e}); logging to stderr as text")
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => EXIT_USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(cli.log_format);
    bound_freed_memory();
    let path = cli.config.unwrap_or_else(hubee_sync::config::default_path);
    if let Command::Validate = cli.command {
        return app::validate(&path);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(app::EXIT_FAILURE);
        }
    };
    if let Command::Check = cli.command {
        return rt.block_on(app::check(&path));
    }
    let settings = match app::load_or_report(&path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // The command runs as a task of the runtime, not on this thread: a future polled by
    // `block_on` is woken across threads at every socket readiness and database answer
    // (a futex wake and a context switch each), where a task runs on the worker thread
    // that drives the sockets.
    let command = rt.spawn(async move {
        match cli.command {
            Command::Run => match hubee_sync::daemon::signals::forward() {
                Ok(controls) => hubee_sync::daemon::run(settings, controls).await,
                Err(e) => {
                    eprintln!("cannot install the SIGTERM/SIGINT/SIGHUP handlers: {e}");
                    ExitCode::from(app::EXIT_FAILURE)
                }
            },
            Command::Once { subscriptions } => app::once(settings, &subscriptions).await,
            Command::Status { json } => app::status(settings, json).await,
            Command::Redeliver {
                subscription,
                case_id,
            } => app::redeliver(settings, &subscription, &case_id).await,
            Command::Digest { send, html } => app::digest(settings, send, html).await,
            Command::Validate | Command::Check => unreachable!("handled above"),
        }
    });
    let code = rt.block_on(command).unwrap_or_else(|e| {
        eprintln!("the command stopped unexpectedly: {e}");
        ExitCode::from(app::EXIT_FAILURE)
    });
    // Work cut by a second stop signal or the drain bound must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Buffers of 256 KiB and more (a file's write buffer) are mapped for themselves and given
/// back to the system when freed. By default glibc raises this threshold as such buffers
/// are freed and then keeps them in the heaps of the threads that freed them: with files
/// downloaded side by side, peak RSS grew by about 7 MiB (BENCHMARKS.md, issue 10).
fn bound_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator setting; called before the runtime starts
    // any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
