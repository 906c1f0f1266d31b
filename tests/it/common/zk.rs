//! A real ZooKeeper server for the discovery tests (Debian's `zookeeper`
//! package: its jars, run as a standalone server on a loopback port with a
//! short tick), and the registrar (tests/py/zk_peer.py, kazoo).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{py, wait_until, TempDir};

pub struct ZooKeeper {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
}

fn classpath() -> String {
    let mut jars: Vec<PathBuf> = std::fs::read_dir("/usr/share/java")
        .expect("/usr/share/java (Debian: apt-get install zookeeper)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jar"))
        .collect();
    jars.sort();
    let mut cp: Vec<String> = jars.iter().map(|p| p.display().to_string()).collect();
    cp.push("/etc/zookeeper/conf".into());
    cp.join(":")
}

fn ruok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.write_all(b"ruok");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out == "imok"
}

impl ZooKeeper {
    pub fn start() -> ZooKeeper {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut zk = ZooKeeper {
            child: None,
            dir: TempDir::new("zookeeper"),
            port,
        };
        zk.run();
        zk
    }

    fn run(&mut self) {
        let data = self.dir.path("data");
        std::fs::create_dir_all(&data).expect("zookeeper data dir");
        let cfg = self.dir.path("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=100\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\nminSessionTimeout=200\nmaxSessionTimeout=20000\nadmin.enableServer=false\n4lw.commands.whitelist=ruok\n",
                data.display(),
                self.port
            ),
        )
        .expect("zoo.cfg");
        let log = std::fs::File::create(self.dir.path("zk.log")).expect("zk.log");
        let child = Command::new("java")
            .arg("-cp")
            .arg(classpath())
            .arg(format!(
                "-Dzookeeper.log.dir={}",
                self.dir.path("").display()
            ))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&cfg)
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("java (Debian: apt-get install zookeeper)");
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(30), || ruok(self.port)),
            "zookeeper did not start: {}",
            std::fs::read_to_string(self.dir.path("zk.log")).unwrap_or_default()
        );
    }

    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop it (SIGKILL, by PID): clients lose the ensemble.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Run `zk_peer.py WHAT HOSTS PATH` to its end; its stdout.
    fn peer(&self, what: &str, path: &str) -> String {
        let out = Command::new(py::python())
            .arg(py::script("zk_peer.py"))
            .args([what, &self.hosts(), path])
            .output()
            .expect("zk_peer.py");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ensure(&self, path: &str) {
        self.peer("ensure", path);
    }

    /// The children of `path` and their data (empty when it is missing).
    pub fn children(&self, path: &str) -> std::collections::BTreeMap<String, String> {
        let text = self.peer("ls", path);
        match super::json::parse(text.trim()).expect("zk_peer.py ls prints JSON") {
            super::json::Json::Obj(members) => members
                .into_iter()
                .map(|(k, v)| (k, v.str().unwrap_or("").to_string()))
                .collect(),
            other => panic!("zk_peer.py ls: {other:?}"),
        }
    }

    /// An ephemeral node under `path` with `data`, held by a registrar
    /// process (its session: `timeout_s`) until the handle is killed.
    pub fn register(&self, path: &str, data: &str, timeout_s: f64) -> Registrant {
        let mut child = Command::new(py::python())
            .arg(py::script("zk_peer.py"))
            .args([
                "register",
                &self.hosts(),
                path,
                data,
                &timeout_s.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("zk_peer.py");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("registered line");
        assert!(line.starts_with("registered"), "{line:?}");
        Registrant { child }
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Registrant {
    child: Child,
}

impl Registrant {
    /// SIGKILL: the session is not closed, it expires on the server.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registrant {
    fn drop(&mut self) {
        self.kill();
    }
}
