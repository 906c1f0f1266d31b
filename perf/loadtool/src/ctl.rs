//! Checkpoints: print a line, then wait for the controller to say `go LABEL`.
//!
//! `--ctl FILE`: the controller appends the line `go LABEL` to FILE (polled every 20 ms; nothing
//! blocks and nothing breaks if the controller dies). `--ctl -`: any line on stdin (by hand).
//! Without `--ctl`, checkpoints do not pause. A wait gives up after `--ctl-timeout` seconds and
//! says so: the run goes on rather than hang.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::Args;

pub enum Ctl {
    None,
    Stdin(Duration),
    File(PathBuf, Duration),
}

impl Ctl {
    pub fn from_args(a: &Args) -> Result<Ctl, String> {
        let to = Duration::from_secs(a.num("ctl-timeout", 120u64)?);
        Ok(match a.str("ctl") {
            None | Some("") => Ctl::None,
            Some("-") => Ctl::Stdin(to),
            Some(p) => Ctl::File(PathBuf::from(p), to),
        })
    }

    /// Print `line` on stdout, then wait for `go LABEL`.
    pub async fn checkpoint(&self, label: &str, line: &str) {
        println!("{line}");
        match self {
            Ctl::None => {}
            Ctl::Stdin(to) => {
                let read = tokio::task::spawn_blocking(|| {
                    let mut s = String::new();
                    let _ = std::io::stdin().read_line(&mut s);
                });
                if tokio::time::timeout(*to, read).await.is_err() {
                    eprintln!(
                        "loadtool: no line on stdin for checkpoint {label} within {to:?}: going on"
                    );
                }
            }
            Ctl::File(path, to) => {
                let want = format!("go {label}");
                let start = Instant::now();
                loop {
                    if let Ok(s) = std::fs::read_to_string(path) {
                        if s.lines().any(|l| l.trim() == want) {
                            break;
                        }
                    }
                    if start.elapsed() > *to {
                        eprintln!(
                            "loadtool: no '{want}' in {} within {to:?}: going on",
                            path.display()
                        );
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}
