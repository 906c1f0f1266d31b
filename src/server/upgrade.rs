//! Binary upgrade (SIGUSR2): start the binary now on disk with our listening
//! sockets and wait until it serves; the pipe a new process reports ready
//! on; the binary's path as started; and the pid file.

use std::{path::PathBuf, time::Duration};

use crate::{
    config::{Config, Seed},
    listen::sockets::{BindKey, Listening},
    sys,
};

use super::generation::Sockets;

/// Write this process's pid to `runtime.pid_file`, if one is set.
pub(super) fn write_pid_file(cfg: &Config) {
    if let Some(p) = &cfg.runtime.pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            tracing::warn!("cannot write pid file {}: {e}", p.display());
        }
    }
}

/// Remove the pid file if it still names this process.
pub(super) fn remove_pid_file(cfg: &Config) {
    if let Some(p) = &cfg.runtime.pid_file {
        let ours = std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What a previous ringlb (binary upgrade) or systemd (socket activation)
/// handed this process: listening sockets and the upgrade's readiness pipe.
/// Adopted first thing in `main`, before any thread or file exists, and
/// the variables that named them are cleared (children never see them).
pub struct Inherited {
    pub(super) listeners: Vec<(BindKey, Listening)>,
    pub(super) upgrade: Option<std::fs::File>,
    /// The previous process's discovered backend sets ([`Seed::to_text`]).
    discovered: Option<String>,
}

impl Inherited {
    /// Take ownership of the inherited fds (each checked for its type:
    /// listening TCP sockets, a pipe) and clear their variables.
    pub fn adopt() -> Inherited {
        Inherited {
            listeners: sys::inherited_listeners()
                .into_iter()
                .map(|(addr, s)| {
                    let udp = matches!(s, sys::Inherited::Udp(_));
                    (BindKey { udp, addr }, Listening::from(s))
                })
                .collect(),
            upgrade: take_upgrade_fd(),
            discovered: take_discovered(),
        }
    }

    /// What the config load starts discovered upstreams with: the sets
    /// the previous process had (an upgrade), until this one's own
    /// sources answer; else nothing known (the sources are asked).
    pub fn seed(&self) -> Seed {
        match self.discovered.as_deref().map(Seed::from_text) {
            None => Seed::default(),
            Some(Ok(seed)) => seed,
            Some(Err(e)) => {
                eprintln!("ringlb: the discovered sets handed over are unreadable ({e}); asking the sources");
                Seed::default()
            }
        }
    }
}

/// The discovered sets an upgrading parent wrote to a memfd.
fn take_discovered() -> Option<String> {
    let var = std::env::var("RINGLB_DISCOVERED_FD").ok();
    std::env::remove_var("RINGLB_DISCOVERED_FD");
    sys::read_inherited_file(var?.trim().parse::<i32>().ok()?, 64 << 20)
}

/// The write end of the pipe a parent ringlb waits on during an upgrade.
fn take_upgrade_fd() -> Option<std::fs::File> {
    let var = std::env::var("RINGLB_UPGRADE_FD").ok();
    std::env::remove_var("RINGLB_UPGRADE_FD");
    sys::pipe_file(var?.trim().parse::<i32>().ok()?)
}

/// How long an upgrade waits for the new process to say it serves.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// Start this program's binary (as it is on disk now) with our listening
/// sockets and wait until it serves. Returns its pid; on failure it is
/// stopped and we keep serving.
pub(super) fn upgrade(sockets: &Sockets, discovered: &Seed) -> Result<u32, String> {
    let exe = EXE.get().cloned().ok_or("the binary's path is unknown")?;
    let (ready_r, ready_w) = sys::pipe_pair().map_err(|e| format!("pipe: {e}"))?;
    let mut entries = Vec::new();
    for (addr, socks) in sockets {
        for s in socks {
            let fd = std::os::fd::AsRawFd::as_raw_fd(s);
            sys::set_inheritable(fd, true).map_err(|e| format!("fcntl: {e}"))?;
            entries.push(format!("{fd}@{addr}"));
        }
    }
    let wfd = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
    sys::set_inheritable(wfd, true).map_err(|e| format!("fcntl: {e}"))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env("RINGLB_INHERIT_FDS", entries.join(","))
        .env("RINGLB_UPGRADE_FD", wfd.to_string());
    // The discovered sets as they are now: the new process starts with
    // them instead of asking the sources (which may be down) first. The
    // memfd closes here when the child has its copy.
    let sets = if discovered.known.is_empty() {
        Ok(None)
    } else {
        sys::memfd_with("ringlb-discovered", discovered.to_text().as_bytes())
            .and_then(|f| {
                sys::set_inheritable(std::os::fd::AsRawFd::as_raw_fd(&f), true)?;
                Ok(f)
            })
            .map(Some)
    };
    if let Ok(Some(f)) = &sets {
        cmd.env(
            "RINGLB_DISCOVERED_FD",
            std::os::fd::AsRawFd::as_raw_fd(f).to_string(),
        );
    }
    // Without the memfd (no fd left, say) nothing is spawned; the sockets
    // still go back to close-on-exec below.
    let spawned = match &sets {
        Ok(_) => cmd.spawn(),
        Err(e) => Err(std::io::Error::new(e.kind(), format!("memfd: {e}"))),
    };
    // Our copies go back to close-on-exec whatever happened.
    for socks in sockets.values() {
        for s in socks {
            let _ = sys::set_inheritable(std::os::fd::AsRawFd::as_raw_fd(s), false);
        }
    }
    drop(ready_w);
    let mut child = spawned.map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id();
    // Wait for "ready" on the pipe; EOF (the child exited) or the timeout is failure.
    match sys::read_with_timeout(&ready_r, UPGRADE_TIMEOUT) {
        Ok(n) if n > 0 => Ok(pid),
        outcome => {
            let why = match outcome {
                Ok(_) => "it exited before serving".to_string(),
                Err(e) => format!("it did not report ready: {e}"),
            };
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("new process {pid}: {why}"))
        }
    }
}

/// The binary's path as started (`argv[0]` resolved at start): after the file
/// is replaced on disk, this names the new binary, which /proc/self/exe
/// would not.
static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Remember the binary's path for upgrades (call early in main).
pub fn remember_exe() {
    let from_args = std::env::args_os().next().map(PathBuf::from);
    let resolved = from_args.and_then(|p| {
        if p.components().count() > 1 {
            std::fs::canonicalize(&p).ok()
        } else {
            None
        }
    });
    let exe = resolved.or_else(|| std::env::current_exe().ok());
    if let Some(e) = exe {
        let _ = EXE.set(e);
    }
}
