//! The man pages: `ringlb(1)` from the CLI definition (clap_mangen) and
//! `ringlb.toml(5)` from the README's configuration reference, the
//! sections from "Configuration reference" up to "Operations", read with
//! pulldown-cmark and written as roff (tables through tbl).

use std::fmt::Write as _;

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

const README: &str = include_str!("../README.md");
const FIRST: &str = "## Configuration reference";
const AFTER: &str = "\n## Operations";

/// `ringlb(1)`: clap_mangen's sections, and the subcommands with their
/// arguments on this page (there are no `ringlb-run(1)` pages).
pub fn page_1(cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone()).section("1");
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    out.extend_from_slice(b".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut line = format!(".TP\n\\fBringlb {}\\fR", sub.get_name());
        for a in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = a.get_id().as_str();
            if id == "help" || id == "config" {
                continue;
            }
            match a.get_long() {
                Some(l) => {
                    let _ = write!(line, " [\\fB\\-\\-{l}\\fR \\fI{}\\fR]", id.to_uppercase());
                }
                None => {
                    let _ = write!(line, " \\fI{}\\fR", id.to_uppercase());
                }
            }
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        out.extend_from_slice(escape(&about).as_bytes());
        out.push(b'\n');
        for a in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = a.get_id().as_str();
            if id == "help" || id == "config" {
                continue;
            }
            if let Some(h) = a.get_help() {
                let text = format!(
                    ".br\n\\fI{}\\fR: {}\n",
                    id.to_uppercase(),
                    escape(&h.to_string())
                );
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    man.render_version_section(&mut out)?;
    out.extend_from_slice(
        b".SH FILES\n/etc/ringlb/ringlb.toml, the default configuration; see \\fBringlb.toml\\fR(5).\n\
          .SH SEE ALSO\n\\fBringlb.toml\\fR(5), \\fBsystemctl\\fR(1)\n",
    );
    Ok(out)
}

/// `ringlb.toml(5)`, or `None` when the README lost its reference.
pub fn page_5(version: &str) -> Option<String> {
    let start = README.find(FIRST)?;
    let end = README[start..]
        .find(AFTER)
        .map_or(README.len(), |e| start + e);
    let mut r = Roff::default();
    // The first line asks man(1) to run tbl.
    let _ = writeln!(
        r.out,
        "'\\\" t\n.TH RINGLB.TOML 5 \"\" \"ringlb {}\" \"File Formats\"\n.ad l\n.SH NAME\nringlb.toml \\- ringlb configuration file\n.SH DESCRIPTION\nringlb reads one TOML file (by default /etc/ringlb/ringlb.toml; \\fBringlb check\\fR validates it). What follows is the configuration reference of ringlb's README.",
        escape(version)
    );
    r.render(&README[start..end]);
    r.out.push_str(".SH SEE ALSO\n\\fBringlb\\fR(1)\n");
    Some(r.out)
}

/// roff text: backslashes doubled, and a line never starts with a control
/// character.
fn escape(s: &str) -> String {
    s.replace('\\', "\\e")
}

#[derive(Default)]
struct Roff {
    out: String,
    /// Inside a code block.
    pre: bool,
    /// Inside a table: its cells so far, row by row.
    table: Option<Vec<Vec<String>>>,
    cell: String,
    lists: usize,
    heading: Option<HeadingLevel>,
    /// Text of the current heading (uppercased for .SH).
    title: String,
}

impl Roff {
    /// Start a line for a request (`.PP`), ending the current text line.
    fn request(&mut self, req: &str) {
        if !self.out.ends_with('\n') && !self.out.is_empty() {
            self.out.push('\n');
        }
        self.out.push_str(req);
        self.out.push('\n');
    }

    /// Running text (a word break at each newline of the source).
    fn text(&mut self, t: &str) {
        if self.table.is_some() {
            self.cell.push_str(&escape(t));
            return;
        }
        if self.heading.is_some() {
            self.title.push_str(t);
            return;
        }
        for (i, line) in t.split('\n').enumerate() {
            if i > 0 {
                self.out.push('\n');
            }
            if self.out.ends_with('\n') && (line.starts_with('.') || line.starts_with('\'')) {
                self.out.push_str("\\&");
            }
            self.out.push_str(&escape(line));
        }
    }

    fn font(&mut self, f: &str) {
        if self.table.is_some() {
            self.cell.push_str(f);
        } else if self.heading.is_none() {
            self.out.push_str(f);
        }
    }

    fn render(&mut self, md: &str) {
        for ev in Parser::new_ext(md, Options::ENABLE_TABLES) {
            match ev {
                Event::Start(Tag::Heading { level, .. }) => {
                    self.heading = Some(level);
                    self.title.clear();
                }
                Event::End(TagEnd::Heading(level)) => {
                    self.heading = None;
                    let t = escape(self.title.trim()).replace('"', "\\(dq");
                    if level <= HeadingLevel::H2 {
                        self.request(&format!(".SH \"{}\"", t.to_uppercase()));
                    } else {
                        self.request(&format!(".SS \"{t}\""));
                    }
                }
                Event::Start(Tag::Paragraph) if self.table.is_none() && self.lists == 0 => {
                    self.request(".PP");
                }
                Event::End(TagEnd::Paragraph) => {}
                Event::Start(Tag::CodeBlock(_)) => {
                    self.request(".PP\n.RS 4\n.nf");
                    self.pre = true;
                }
                Event::End(TagEnd::CodeBlock) => {
                    self.pre = false;
                    self.request(".fi\n.RE");
                }
                Event::Start(Tag::List(_)) => {
                    self.lists += 1;
                    self.request(".RS 2");
                }
                Event::End(TagEnd::List(_)) => {
                    self.lists = self.lists.saturating_sub(1);
                    self.request(".RE");
                }
                Event::Start(Tag::Item) => self.request(".IP \\(bu 2"),
                Event::Start(Tag::Table(_)) => self.table = Some(Vec::new()),
                Event::End(TagEnd::Table) => self.table_out(),
                Event::Start(Tag::TableHead | Tag::TableRow) => {
                    if let Some(t) = &mut self.table {
                        t.push(Vec::new());
                    }
                }
                Event::End(TagEnd::TableCell) => {
                    let cell = std::mem::take(&mut self.cell);
                    if let Some(row) = self.table.as_mut().and_then(|t| t.last_mut()) {
                        row.push(cell);
                    }
                }
                Event::Start(Tag::Strong) => self.font("\\fB"),
                Event::Start(Tag::Emphasis) => self.font("\\fI"),
                Event::End(TagEnd::Strong | TagEnd::Emphasis) => self.font("\\fR"),
                Event::Code(c) => {
                    self.font("\\fB");
                    self.text(&c);
                    self.font("\\fR");
                }
                Event::Text(t) if self.pre => {
                    for line in t.lines() {
                        if line.starts_with('.') || line.starts_with('\'') {
                            self.out.push_str("\\&");
                        }
                        self.out.push_str(&escape(line));
                        self.out.push('\n');
                    }
                }
                Event::Text(t) => self.text(&t),
                Event::SoftBreak => self.text("\n"),
                Event::HardBreak => self.request(".br"),
                Event::Html(_) | Event::InlineHtml(_) => {}
                _ => {}
            }
        }
        if !self.out.ends_with('\n') {
            self.out.push('\n');
        }
    }

    /// The table through tbl: each cell a text block, so long cells wrap.
    fn table_out(&mut self) {
        let Some(rows) = self.table.take() else {
            return;
        };
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        if cols == 0 {
            return;
        }
        self.request(".TS\nallbox tab(\u{1f});");
        // Keys and defaults as wide as they are; the last column wraps.
        let mut format = vec!["l"; cols - 1];
        format.push("lx");
        let format = format.join(" ");
        self.out.push_str(&format);
        self.out.push_str(".\n");
        for row in rows {
            let cells: Vec<String> = (0..cols)
                .map(|i| {
                    let c = row.get(i).map_or("", String::as_str);
                    format!("T{{\n{}\nT}}", guard(c))
                })
                .collect();
            self.out.push_str(&cells.join("\u{1f}"));
            self.out.push('\n');
        }
        self.out.push_str(".TE\n");
    }
}

/// A cell's text may not start a line with a control character.
fn guard(s: &str) -> String {
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_becomes_a_page_with_its_sections_and_tables() {
        let p = page_5("9.9").expect("the README has its reference");
        assert!(p.starts_with("'\\\" t\n.TH RINGLB.TOML 5"));
        assert!(p.contains(".SH \"CONFIGURATION REFERENCE\""));
        assert!(p.contains(".SS \"`[runtime]`\"") || p.contains(".SS \"[runtime]\""));
        assert!(p.contains(".TS\n"), "tables go through tbl");
        assert!(
            !p.contains(".SH \"OPERATIONS\""),
            "the reference ends there"
        );
        // No line starts with a stray control character from the text.
        for line in p.lines() {
            assert!(
                !line.starts_with("'") || line.starts_with("'\\\""),
                "{line}"
            );
        }
    }

    #[test]
    fn text_is_escaped() {
        let mut r = Roff::default();
        r.render("a \\ b\n.not a request\n\n```\n.x\n```\n");
        assert!(r.out.contains("a \\e b\n\\&.not a request"), "{}", r.out);
        assert!(r.out.contains(".nf\n\\&.x\n"), "{}", r.out);
    }
}
