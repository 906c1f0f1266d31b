//! loadtool: the client and backend side of perf/c100k.sh.
//!
//! Subcommands (every option is `--key value`; unknown keys are errors):
//!
//! - `echo`: an echo backend on several ports; an idle connection holds its socket and no buffer.
//! - `hold`: open N connections (source addresses round-robin), exchange a few bytes on each right
//!   after connecting, pause at checkpoints for the controller, and at the end check that every
//!   held connection is still open and that a random sample still echoes, all while every
//!   connection is held.
//! - `rate`: short-lived connections (connect, send 64 bytes, read the echo, close) for a duration.
//! - `overload`: more clients than the proxy's max_connections; checks that the extra clients
//!   wait (not dropped) and are served once others leave, and samples the proxy's fd count.
//! - `grpc`: a gRPC unary echo backend over h2c (perf/grpc.sh).
//! - `tls`: TLS handshakes per second (full, or resumed with `--resume true`), threads of
//!   blocking rustls clients, each connection one `GET /` (perf/l7.sh TLS=1).
//!
//! Output is one `key=value` line per event on stdout (machine-readable); progress and problems
//! go to stderr. The tool raises its RLIMIT_NOFILE soft limit to the hard limit at start and
//! exits by itself at `--deadline` (seconds) whatever happens.

mod ctl;
mod echo;
mod grpc;
mod hold;
mod net;
mod overload;
mod rate;
mod tls;

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

const USAGE: &str = "usage: loadtool <echo|grpc|hold|rate|overload|tls> [--key value]...
  echo     --listen IP:PORT[,IP:PORT...] [--backlog 4096] [--deadline 3600]
  grpc     --listen IP:PORT[,IP:PORT...] [--deadline 3600]
  hold     --target IP:PORT --count N [--sources IP,IP...] [--checkpoints N1,N2,...]
           [--concurrency 128] [--connect-timeout-ms 3000] [--echo-timeout-ms 3000]
           [--max-failures 1] [--sample 200] [--msg-len 16] [--open-timeout 120]
           [--ctl FILE|-] [--ctl-timeout 120] [--close rst|fin] [--deadline 900]
  rate     --target IP:PORT --duration S [--concurrency 64] [--sources ...] [--msg-len 64]
           [--timeout-ms 2000] [--close rst|fin] [--deadline ...]
  overload --target IP:PORT --clients C --max-connections M [--watch-pid PID] [--fd-csv FILE]
           [--sources ...] [--settle-ms 2000] [--ctl FILE|-] [--ctl-timeout 120] [--deadline 300]
  tls      --target IP:PORT [--duration 5] [--concurrency 4] [--resume true|false] [--timeout-ms 5000]";

/// `--key value` options of one subcommand.
pub struct Args {
    map: HashMap<String, String>,
}

impl Args {
    fn parse(argv: &[String], known: &[&str]) -> Result<Args, String> {
        let known: HashSet<&str> = known.iter().copied().chain(["deadline"]).collect();
        let mut map = HashMap::new();
        let mut it = argv.iter();
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --key, got '{k}'"))?;
            if !known.contains(key) {
                return Err(format!("unknown option --{key}"));
            }
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_string(), v.clone());
        }
        Ok(Args { map })
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    pub fn req(&self, key: &str) -> Result<&str, String> {
        self.str(key).ok_or_else(|| format!("--{key} is required"))
    }

    pub fn num<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.str(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key}: bad number '{v}'")),
        }
    }

    pub fn ms(&self, key: &str, default: u64) -> Result<Duration, String> {
        Ok(Duration::from_millis(self.num(key, default)?))
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let known: &[&str] = match cmd.as_str() {
        "echo" => &["listen", "backlog"],
        "grpc" => &["listen"],
        "hold" => &[
            "target",
            "count",
            "sources",
            "checkpoints",
            "concurrency",
            "connect-timeout-ms",
            "echo-timeout-ms",
            "max-failures",
            "sample",
            "msg-len",
            "open-timeout",
            "ctl",
            "ctl-timeout",
            "close",
        ],
        "rate" => &[
            "target",
            "duration",
            "concurrency",
            "sources",
            "msg-len",
            "timeout-ms",
            "close",
        ],
        "overload" => &[
            "target",
            "clients",
            "max-connections",
            "watch-pid",
            "fd-csv",
            "sources",
            "settle-ms",
            "ctl",
            "ctl-timeout",
            "connect-timeout-ms",
        ],
        "tls" => &["target", "duration", "concurrency", "resume", "timeout-ms"],
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("loadtool: unknown subcommand '{other}'\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let args = match Args::parse(&argv[1..], known) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadtool {cmd}: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let long_lived = cmd == "echo" || cmd == "grpc";
    let deadline: u64 = match args.num("deadline", if long_lived { 3600 } else { 900 }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("loadtool {cmd}: {e}");
            return ExitCode::from(2);
        }
    };
    // Hard stop, whatever the runtime is doing.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(deadline));
        eprintln!("loadtool: deadline of {deadline}s reached: exiting");
        std::process::exit(3);
    });
    let (soft, hard) = net::raise_nofile();
    eprintln!("loadtool {cmd}: RLIMIT_NOFILE soft {soft} hard {hard}");

    if cmd == "tls" {
        return match tls::run(&args) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("loadtool tls: {e}");
                ExitCode::from(2)
            }
        };
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(async {
        match cmd.as_str() {
            "echo" => echo::run(&args).await,
            "grpc" => grpc::run(&args).await,
            "hold" => hold::run(&args, soft).await,
            "rate" => rate::run(&args).await,
            _ => overload::run(&args).await,
        }
    });
    match r {
        Ok(code) => {
            // Do not wait for blocked helper threads (stdin reader, deadline timer).
            std::process::exit(code);
        }
        Err(e) => {
            eprintln!("loadtool {cmd}: {e}");
            ExitCode::from(2)
        }
    }
}
