//! The Python peers of the HTTP/2 and gRPC tests (tests/py/): grpcio and
//! the h2 package, pinned in tests/requirements.txt, in a venv at
//! target/pyenv that .ci/run makes (or the first test that needs it).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
};

use super::json::{self, Json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn has_packages(py: &Path) -> bool {
    Command::new(py)
        .args(["-c", "import grpc, h2, hpack, kazoo"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The venv's python, made on first use.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = root().join("target/pyenv");
        let py = venv.join("bin/python");
        if !has_packages(&py) {
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3 -m venv");
            assert!(
                made.success(),
                "python3 -m venv failed (Debian: apt-get install python3-venv)"
            );
            let pip = Command::new(&py)
                .args(["-m", "pip", "install", "-q", "-r"])
                .arg(root().join("tests/requirements.txt"))
                .status()
                .expect("pip");
            assert!(
                pip.success(),
                "pip install -r tests/requirements.txt failed"
            );
            assert!(
                has_packages(&py),
                "grpcio and h2 still missing from {venv:?}"
            );
        }
        py
    })
    .clone()
}

pub fn script(name: &str) -> PathBuf {
    root().join("tests/py").join(name)
}

/// Run a peer script to its end; its last stdout line, parsed.
pub fn run_json(name: &str, args: &[String]) -> Json {
    let out = Command::new(python())
        .arg(script(name))
        .args(args)
        .output()
        .expect("run python peer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    json::parse(last).unwrap_or_else(|e| {
        panic!(
            "{name} {args:?}: {e}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A grpcio server on 127.0.0.1 (raw-bytes methods of tests/py/grpc_peer.py).
pub struct GrpcServer {
    child: Child,
    pub addr: std::net::SocketAddr,
    pub events: PathBuf,
}

impl GrpcServer {
    pub fn start(name: &str) -> GrpcServer {
        Self::start_with(name, None)
    }

    /// `tls`: (certificate chain, key) PEM files to serve TLS with.
    pub fn start_with(name: &str, tls: Option<(&Path, &Path)>) -> GrpcServer {
        let events = super::temp_file(&format!("grpc-{name}-events"), "");
        let mut cmd = Command::new(python());
        cmd.arg(script("grpc_peer.py"))
            .args(["server", "--name", name, "--events"])
            .arg(&events);
        if let Some((cert, key)) = tls {
            cmd.arg("--tls").arg(cert).arg(key);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start grpc server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("port line");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("grpc server said {line:?}"));
        GrpcServer {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            events,
        }
    }

    /// SIGTERM: the server sends GOAWAY and finishes its calls.
    pub fn term(&self) {
        super::signal(self.child.id(), "TERM");
    }

    pub fn events(&self) -> String {
        std::fs::read_to_string(&self.events).unwrap_or_default()
    }

    /// Stop it (by its PID), so connects to its port are refused.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.events);
    }
}

/// One grpc_peer.py client scenario against `target`.
pub fn grpc_client(target: std::net::SocketAddr, scenario: &str, args: &[&str]) -> Json {
    grpc_client_tls(target, None, scenario, args)
}

/// [`grpc_client`] over TLS when `tls` = (CA file, server name).
pub fn grpc_client_tls(
    target: std::net::SocketAddr,
    tls: Option<(&Path, &str)>,
    scenario: &str,
    args: &[&str],
) -> Json {
    let mut a = vec!["client".to_string(), "--target".into(), target.to_string()];
    if let Some((ca, name)) = tls {
        a.extend([
            "--ca".into(),
            ca.display().to_string(),
            "--name".into(),
            name.into(),
        ]);
    }
    a.push(scenario.into());
    a.extend(args.iter().map(|s| s.to_string()));
    run_json("grpc_peer.py", &a)
}
