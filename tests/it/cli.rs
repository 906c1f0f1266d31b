//! The command line a package installs: `--version` names the commit,
//! `completions` prints scripts the shells load, `manpage` prints roff that
//! man(1) renders, and none of them panics on a closed pipe.

use std::process::{Command, Stdio};

use crate::common::BIN;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("ringlb");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let (ok, out, _) = run(&["--version"]);
    assert!(ok);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let want = match head {
        Some(c) => format!("ringlb {} (commit {c})\n", env!("CARGO_PKG_VERSION")),
        // Built outside a checkout: the commit is unknown or given.
        None => return assert!(out.starts_with("ringlb "), "{out}"),
    };
    assert_eq!(out, want);
}

#[test]
fn completions_load_in_their_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = run(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        assert!(out.contains("upgrade"), "{shell}: no subcommands in\n{out}");
    }
    // bash sources it and completes a subcommand from its prefix.
    let script = run(&["completions", "bash"]).1;
    let dir = std::env::temp_dir().join(format!("ringlb-completion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("ringlb.bash");
    std::fs::write(&file, script).expect("write");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(ringlb ch); COMP_CWORD=1; _ringlb ringlb ch ringlb; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .expect("bash");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "check\n", "{out:?}");
    let (ok, _, err) = run(&["completions", "tcsh"]);
    assert!(!ok && err.contains("tcsh"), "{err}");
}

#[test]
fn man_pages_render() {
    for (section, want) in [("1", "ringlb upgrade"), ("5", "shutdown_timeout")] {
        let (ok, page, err) = run(&["manpage", section]);
        assert!(ok, "{err}");
        assert!(page.contains(".TH "), "section {section}");
        if Command::new("man").arg("--version").output().is_err() {
            continue; // no man(1) here: the roff is still checked above
        }
        let dir = std::env::temp_dir().join(format!("ringlb-man-{}-{section}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join(format!("ringlb.{section}"));
        std::fs::write(&file, &page).expect("write");
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&file)
            .env("MANWIDTH", "100")
            .output()
            .expect("man");
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(text.contains(want), "section {section}:\n{text}");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "troff warnings:\n{warnings}");
    }
    let (ok, _, _) = run(&["manpage", "3"]);
    assert!(!ok, "only sections 1 and 5");
}

#[test]
fn a_closed_pipe_is_an_error_not_a_panic() {
    for args in [&["completions", "bash"][..], &["manpage", "5"][..]] {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ringlb");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
