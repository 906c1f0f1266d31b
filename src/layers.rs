//! The test that keeps the module graph one-way: every file's `crate::`
//! paths must be arrows the table in lib.rs's docs allows.

mod tests {
    use std::path::{Path, PathBuf};

    /// The table in lib.rs's docs: (module, modules it may use). The
    /// crate-root re-exports `Config` and `Error` count as their modules.
    fn allowed() -> Vec<(String, Vec<String>)> {
        let lib = include_str!("lib.rs");
        let mut out = Vec::new();
        for line in lib.lines().filter_map(|l| l.strip_prefix("//! | `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(module), Some(uses)) = (cells.first(), cells.get(2)) else {
                continue;
            };
            let module = module.trim_end_matches('`').to_string();
            let mut may: Vec<String> = uses
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty() && !u.starts_with('('))
                .collect();
            if may.iter().any(|m| m == "config") {
                may.push("Config".into());
            }
            if may.iter().any(|m| m == "error") {
                may.push("Error".into());
            }
            out.push((module, may));
        }
        out
    }

    /// Every `crate::X` a file names, from `use crate::...` lines and
    /// `crate::X::` paths in code (grouped `use crate::{a, b::c}` included).
    fn crate_refs(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                // use crate::{a::b, c, d::{e, f}}: the first segment of each
                // top-level item.
                let mut depth = 0usize;
                let mut item = String::new();
                let mut items = Vec::new();
                for ch in group.chars() {
                    match ch {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                        _ => item.push(ch),
                    }
                }
                items.push(item);
                for it in items {
                    let name: String = it
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.push(name);
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
            rest = after;
        }
        out
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Drop `#[cfg(test)] mod tests { ... }` blocks and comments: tests may
    /// reach anything, and prose names modules freely.
    fn code_only(text: &str) -> String {
        let mut out = String::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let t = line.trim_start();
            if t.starts_with("//") {
                continue;
            }
            if t.starts_with("#[cfg(test)]") {
                // Skip the item that follows: to its closing brace at the
                // same indentation, or a one-line `mod x;`.
                let Some(item) = lines.next() else { break };
                if item.trim_end().ends_with(';') {
                    continue;
                }
                let indent = item.len() - item.trim_start().len();
                for l in lines.by_ref() {
                    if l.len() - l.trim_start().len() == indent && l.trim() == "}" {
                        break;
                    }
                }
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    #[test]
    fn imports_follow_the_layer_table() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let table = allowed();
        assert!(
            table.len() >= 15,
            "the table in lib.rs has {} rows",
            table.len()
        );
        let mut bad = Vec::new();
        let mut seen_modules = 0;
        for f in &files {
            let rel = f.strip_prefix(&src).unwrap_or(f);
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap_or("")
                .trim_end_matches(".rs")
                .to_string();
            // main and docs make the binary, build is the build script:
            // none is a module of the library the table describes.
            let outside = ["main", "docs", "build", "lib", "layers"];
            if outside.contains(&top.as_str()) || rel.ends_with("tests.rs") {
                continue;
            }
            let Some((_, allowed)) = table.iter().find(|(m, _)| *m == top) else {
                bad.push(format!(
                    "{}: module {top:?} is not in the layer table",
                    rel.display()
                ));
                continue;
            };
            seen_modules += 1;
            let text = std::fs::read_to_string(f).unwrap_or_default();
            for r in crate_refs(&code_only(&text)) {
                if r != top && r != "self" && r != "super" && !allowed.contains(&r) {
                    bad.push(format!("{}: {top} -> {r} is not allowed", rel.display()));
                }
            }
        }
        assert!(seen_modules > 20, "found only {seen_modules} source files");
        bad.sort();
        bad.dedup();
        assert!(
            bad.is_empty(),
            "imports against the layer table:\n{}",
            bad.join("\n")
        );
    }

    #[test]
    fn the_reader_sees_grouped_and_inline_paths() {
        let refs = crate_refs(
            "use crate::{a::b, c, d::{e, f}};\nlet x = crate::g::h();\nuse crate::Config;",
        );
        assert_eq!(refs, ["a", "c", "d", "g", "Config"]);
        let code = code_only("use crate::a;\n// crate::b\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\nuse crate::d;\n");
        assert_eq!(crate_refs(&code), ["a", "d"]);
    }
}
