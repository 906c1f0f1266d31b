//! The `ringlb` binary: parse arguments, load the config, run.
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration.

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};

mod docs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringlb",
    version = VERSION,
    about = "Thread-per-core io_uring load balancer"
)]
struct Cli {
    /// Config file (for the default `run` command).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the load balancer (the default command).
    Run,
    /// Validate the config and exit: 0 when valid, 2 with one line naming the key when not.
    Check,
    /// Ask the running ringlb to reload its config (SIGHUP), after checking it.
    Reload {
        /// The process; default: the config's runtime.pid_file.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Ask the running ringlb to start the binary now on disk and hand over (SIGUSR2).
    Upgrade {
        /// The process; default: the config's runtime.pid_file.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Try ringlb with nothing else installed: built-in backends on loopback behind a tcp, an http
    /// and an https listener and the admin endpoint; prints commands to paste.
    Demo {
        /// The tcp listener; http, https and admin take the ports +80, +443 and +90 (port 0: free ports).
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: std::net::SocketAddr,
    },
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// Print a man page: 1 for ringlb(1), 5 for ringlb.toml(5) (roff, for the package).
    #[command(hide = true)]
    Manpage {
        #[arg(value_parser = ["1", "5"])]
        section: String,
    },
}

/// The version and the commit it was built from (src/build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RINGLB_COMMIT"),
    ")"
);

const DEFAULT_CONFIG: &str = "/etc/ringlb/ringlb.toml";

fn main() -> ExitCode {
    // Before anything else: fds handed over by a previous ringlb or systemd.
    let inherited = ringlb::server::Inherited::adopt();
    ringlb::server::remember_exe();
    let cli = Cli::parse();
    let path = cli.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let command = cli.command.unwrap_or(Cmd::Run);
    match &command {
        Cmd::Completions { shell } => {
            // Into memory first: writing to a closed pipe is an error
            // here, not a panic in the generator.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "ringlb", &mut script);
            return print_bytes(&script, "the completion script");
        }
        Cmd::Manpage { section } => return manpage(section),
        _ => {}
    }
    if !matches!(command, Cmd::Run) {
        init_logging("info");
    }
    let result = match command {
        Cmd::Check => match ringlb::Config::load(&path).and_then(|cfg| {
            // Certificates and keys are built too, as the server would.
            ringlb::tls::listener_configs(&cfg)
                .and_then(|_| ringlb::tls::upstream_configs(&cfg))
                .map(|_| cfg)
                .map_err(|err| ringlb::config::LoadError {
                    file: path.display().to_string(),
                    err,
                })
        }) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} listener(s), {} upstream(s))",
                    path.display(),
                    cfg.listeners.len(),
                    cfg.upstreams.len()
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Cmd::Run => ringlb::Config::load_seeded(&path, &inherited.seed())
            .map_err(ringlb::Error::from)
            .and_then(|cfg| {
                init_logging(&cfg.log_level);
                ringlb::server::run_with(cfg, Some(path.clone()), inherited)
            }),
        Cmd::Demo { listen } => ringlb::demo::run(listen),
        Cmd::Reload { pid } => signal_running(&path, pid, libc::SIGHUP, "reload"),
        Cmd::Upgrade { pid } => signal_running(&path, pid, libc::SIGUSR2, "upgrade"),
        Cmd::Completions { .. } | Cmd::Manpage { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlb: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Print man page `section` to stdout.
fn manpage(section: &str) -> ExitCode {
    let page = match section {
        "1" => docs::page_1(Cli::command()).ok(),
        _ => docs::page_5(VERSION).map(String::into_bytes),
    };
    match page {
        Some(p) => print_bytes(&p, "the man page"),
        None => {
            eprintln!("ringlb: man page {section} cannot be made");
            ExitCode::FAILURE
        }
    }
}

/// Write `bytes` to stdout; a failure (a closed pipe) is reported, not a panic.
fn print_bytes(bytes: &[u8], what: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlb: cannot write {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Validate the config, find the running process and signal it.
fn signal_running(
    path: &std::path::Path,
    pid: Option<u32>,
    sig: libc::c_int,
    what: &str,
) -> Result<(), ringlb::Error> {
    // The running process asks its discovery sources itself (and keeps
    // its sets when they are down): only the file is checked here.
    let seed = ringlb::config::Seed {
        no_fetch: true,
        ..Default::default()
    };
    let cfg = ringlb::Config::load_seeded(path, &seed)?;
    let pid = match pid {
        Some(p) => p,
        None => {
            let file = cfg.runtime.pid_file.as_ref().ok_or_else(|| {
                ringlb::Error::Startup(format!(
                    "{what}: give --pid, or set runtime.pid_file in {}",
                    path.display()
                ))
            })?;
            std::fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| {
                    ringlb::Error::Startup(format!(
                        "{what}: no pid in {} (is ringlb running?)",
                        file.display()
                    ))
                })?
        }
    };
    ringlb::sys::send_signal(pid, sig)
        .map_err(|e| ringlb::Error::Startup(format!("{what}: cannot signal pid {pid}: {e}")))?;
    println!("{what} requested from pid {pid}; its log says how it went");
    Ok(())
}

/// `level` from the config; RINGLB_LOG (or RUST_LOG) overrides it.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGLB_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
