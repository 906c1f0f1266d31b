//! A real DNS server for the discovery tests: dnsmasq (Debian's
//! dnsmasq-base) on a loopback port, answering only from the records the
//! test gives it (no upstream, no /etc/hosts), with a 1 s TTL.

use std::process::{Child, Command, Stdio};

use super::{wait_until, TempDir};

pub struct Dnsmasq {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
}

impl Dnsmasq {
    /// `hosts`: (name, ip) pairs; `srv`: (name, target, port, priority, weight).
    pub fn start(hosts: &[(&str, &str)], srv: &[(&str, &str, u16, u16, u16)]) -> Dnsmasq {
        let mut d = Dnsmasq {
            child: None,
            dir: TempDir::new("dnsmasq"),
            port: 0,
        };
        // A port free for UDP may be taken for TCP (dnsmasq wants both):
        // another one then.
        for _ in 0..10 {
            d.port = std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("a free port")
                .port();
            if d.run(hosts, srv) {
                return d;
            }
        }
        panic!("dnsmasq did not start: {}", d.log());
    }

    /// Serve these records from now on (dnsmasq restarted on the same port).
    pub fn set(&mut self, hosts: &[(&str, &str)], srv: &[(&str, &str, u16, u16, u16)]) {
        self.stop();
        for _ in 0..10 {
            if self.run(hosts, srv) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!(
            "dnsmasq did not restart on port {}: {}",
            self.port,
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("log")).unwrap_or_default()
    }

    /// Start on `self.port`; false if it did not come up (it is stopped).
    fn run(&mut self, hosts: &[(&str, &str)], srv: &[(&str, &str, u16, u16, u16)]) -> bool {
        let file = self.dir.path("hosts");
        let text: String = hosts.iter().map(|(n, ip)| format!("{ip} {n}\n")).collect();
        std::fs::write(&file, text).expect("hosts file");
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--local-ttl=1",
            "--pid-file=",
        ])
        .arg(format!("--port={}", self.port))
        .arg(format!("--addn-hosts={}", file.display()));
        if nix_root() {
            cmd.arg("--user=root");
        }
        for (name, target, port, prio, weight) in srv {
            cmd.arg(format!("--srv-host={name},{target},{port},{prio},{weight}"));
        }
        let log = std::fs::File::create(self.dir.path("log")).expect("log");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("dnsmasq (Debian: apt-get install dnsmasq-base)");
        self.child = Some(child);
        let port = self.port;
        let up = wait_until(std::time::Duration::from_secs(3), || {
            let alive = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            !alive || answers(port)
        }) && answers(port);
        if !up {
            self.stop();
        }
        up
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Any answer to a query (for readiness).
fn answers(port: u16) -> bool {
    let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(200)));
    // A query for "x." type A.
    let q = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 1, 0, 1,
    ];
    if s.send_to(&q, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    s.recv(&mut buf).is_ok()
}
