//! `ringlb demo`, the README's first command: it starts with nothing else
//! installed, and every command it prints works as it says.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::common::{signal, BIN};

/// What each printed command must show, by a part of the command.
const EXPECT: [(&str, &[&str]); 10] = [
    (
        "/api/hello",
        &["\"backend\":\"api-", "\"path\":\"/api/hello\""],
    ),
    ("/static/", &["\"backend\":\"static-1\""]),
    ("/nope", &["\"status\":404", "\"request_id\":\""]),
    ("/limited/", &["200 200 ", "429"]),
    (
        "/old/page",
        &["HTTP/1.1 302", "Location: http://127.0.0.1:"],
    ),
    ("/api/sticky", &["Set-Cookie: demo_srv="]),
    (
        "https://",
        &["HTTP/2 200", "strict-transport-security: max-age="],
    ),
    ("/dev/tcp/", &["hello from backend-", "\nhello\n"]),
    ("/metrics", &["ringlb_http_requests_total{"]),
    ("/status", &["\"listeners\":["]),
];

#[test]
fn the_demo_starts_alone_and_every_printed_command_works() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("RINGLB_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ringlb demo");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut cmds = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the demo printed no `stop with Ctrl-C` line");
        if let Some(rest) = line.strip_prefix("$ ") {
            let cmd = rest.split("    # ").next().unwrap_or(rest).to_string();
            cmds.push(cmd);
        }
        if line.starts_with("stop with") {
            break;
        }
    }
    assert_eq!(cmds.len(), EXPECT.len(), "{cmds:#?}");
    // Serving once the admin endpoint answers (the commands print first).
    let admin = cmds
        .iter()
        .find(|c| c.contains("/status"))
        .cloned()
        .unwrap_or_default();
    assert!(
        crate::common::wait_until(Duration::from_secs(10), || {
            Command::new("bash")
                .args(["-c", &admin])
                .output()
                .is_ok_and(|o| o.status.success())
        }),
        "the demo never served {admin}"
    );
    // The certificate's directory is new, this user's only, the key 0600.
    let mine = || {
        std::fs::read_dir(std::env::temp_dir())
            .expect("temp dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("ringlb-demo-{pid}-")))
            })
            .collect::<Vec<_>>()
    };
    let dirs = mine();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).expect("stat").permissions())
            & 0o777
    };
    assert_eq!(mode(&dirs[0]), 0o700);
    assert_eq!(mode(&dirs[0].join("demo.key")), 0o600);
    for (part, wants) in EXPECT {
        let cmd = cmds
            .iter()
            .find(|c| c.contains(part))
            .unwrap_or_else(|| panic!("no printed command with {part}: {cmds:#?}"));
        let out = Command::new("timeout")
            .args(["10", "bash", "-c", cmd])
            .output()
            .expect("bash");
        let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        for w in wants {
            assert!(text.contains(w), "`{cmd}` showed no {w:?}:\n{text}");
        }
    }
    signal(pid, "TERM");
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the demo did not stop on SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        mine(),
        Vec::<std::path::PathBuf>::new(),
        "the demo left these behind"
    );
}
