//! redis-benchmark through ringlb to a real redis-server: no errors.
//! Needs redis-server and redis-benchmark (installed by .ci/run).

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::common::*;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn redis_benchmark_through_ringlb_has_no_errors() {
    if !have("redis-server") || !have("redis-benchmark") {
        // In CI (.ci/run installs them) a missing tool is a failure; on a
        // developer machine the test says what to install and skips.
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server/redis-benchmark missing in CI: .ci/run should have installed them"
        );
        eprintln!(
            "SKIPPED: install redis-server and redis-tools to run this test (bash .ci/run does)"
        );
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("ringlb-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _redis = Redis(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let backend: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(backend).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let lb = Ringlb::start(Cfg::tcp_proxy(&[backend]));
    let front = lb.addr("l");
    for pipeline in ["1", "16"] {
        let out = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &front.port().to_string()])
            .args([
                "-t", "get,set", "-n", "20000", "-c", "20", "-P", pipeline, "--csv",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "redis-benchmark failed: {err}");
        assert!(!err.to_lowercase().contains("error"), "errors: {err}");
        assert!(
            text.contains("\"SET\"") && text.contains("\"GET\""),
            "unexpected output: {text}"
        );
    }
    // And the data really went through: a SET via the proxy is visible directly.
    let cli = |p: u16, args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &p.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    if have("redis-cli") {
        assert_eq!(
            cli(front.port(), &["SET", "ringlb-key", "through-the-proxy"]),
            "OK"
        );
        assert_eq!(cli(port, &["GET", "ringlb-key"]), "through-the-proxy");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
