//! Rendering answers: `text` is one logfmt `key=value` line per object and an aligned table
//! for lists; `json` is the API's JSON unchanged (one document).
//!
//! Every answer is decoded as the type its call expects before anything is printed, in both
//! modes: a 2xx answer of the wrong shape is an error (exit 1), never a silent success.
//! Text output never carries a raw control, bidi-override or zero-width character (see
//! [`escape`]): a hostile id or message cannot drive or spoof the terminal.

use std::borrow::Cow;
use std::io::{self, Write};

use autonomy_client::Reply;
use autonomy_core::is_hidden_char;
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// JSON lines: like `json` (the answer is one line), except that `audit query` prints one
    /// event per line as the pages arrive, for log pipelines.
    Jsonl,
}

pub struct Output {
    format: Format,
}

impl Output {
    pub fn new(format: Format) -> Output {
        Output { format }
    }

    /// `json` or `jsonl`: the API's JSON, unchanged.
    pub fn is_json(&self) -> bool {
        matches!(self.format, Format::Json | Format::Jsonl)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Prints a 2xx answer after decoding it as `T` (an answer of another shape is
    /// [`autonomy_client::ClientError::BadAnswer`], exit 1, and nothing is printed): its body
    /// unchanged in json mode, else `text(decoded body)`.
    pub fn answer<T: DeserializeOwned>(
        &self,
        reply: &Reply<T>,
        text: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        let value = reply.value()?;
        self.decoded(reply.body(), &value, text)
    }

    /// Prints an answer already decoded as `value`: `body` unchanged in json mode, else
    /// `text(value)`.
    pub fn decoded<T>(
        &self,
        body: &[u8],
        value: &T,
        text: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        if self.is_json() {
            self.print(String::from_utf8_lossy(body).trim())
        } else {
            self.print(&text(value))
        }
    }

    /// Writes `s` and a newline to stdout. In text mode every unsafe character but the
    /// newlines between lines is escaped ([`escape_lines`]), whatever the caller built; json
    /// mode writes `s` as is. A closed stdout (`| head`) is a `BrokenPipe` error, which `main`
    /// turns into a quiet exit.
    pub fn print(&self, s: &str) -> anyhow::Result<()> {
        let s = if self.is_json() {
            Cow::Borrowed(s)
        } else {
            escape_lines(s)
        };
        let mut out = io::stdout().lock();
        out.write_all(s.as_bytes())?;
        if !s.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }
}

/// `s` with every [`is_hidden_char`] written visibly as `\u{hex}` (e.g. ESC as `\u{1b}`), so
/// text output shows what the CP holds and never drives the terminal. Borrows when there is
/// nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_except(s, None)
}

/// [`escape`], keeping the newlines that separate the lines of a multi-line output.
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    escape_except(s, Some('\n'))
}

fn escape_except(s: &str, keep: Option<char>) -> Cow<'_, str> {
    let unsafe_char = |c: char| is_hidden_char(c) && Some(c) != keep;
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One logfmt line. Values with spaces, quotes, `=` or unsafe characters (see
/// [`is_hidden_char`]), and empty values, are quoted.
pub fn logfmt<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", k.as_ref(), quote(v.as_ref())))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || is_hidden_char(c) || matches!(c, '"' | '=' | '\\'));
    if plain {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c => s.push_str(&escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    s.push('"');
    s
}

/// A left-aligned table; the last column is not padded. Cells are kept on one line (line
/// breaks and tabs become spaces) and other unsafe characters are [`escape`]d.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        let cells = cells
            .into_iter()
            .map(|c| {
                let c = escape(&c.replace(['\n', '\r', '\t'], " ")).into_owned();
                if c.is_empty() {
                    "-".to_string()
                } else {
                    c
                }
            })
            .collect();
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    s.push_str(cell);
                    s.push_str(&" ".repeat(pad + 2));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = vec![line(self.headers.clone())];
        for row in &self.rows {
            out.push(line(row.iter().map(String::as_str).collect()));
        }
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_quotes_only_when_needed() {
        let line = logfmt(&[
            ("a", "x"),
            ("b", "two words"),
            ("c", ""),
            ("d", "say \"hi\""),
        ]);
        assert_eq!(line, r#"a=x b="two words" c="" d="say \"hi\"""#);
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["ID", "PHASE"]);
        t.row(vec!["a-long-id".into(), "active".into()]);
        t.row(vec!["b".into(), "".into()]);
        assert_eq!(
            t.render(),
            "ID         PHASE\na-long-id  active\nb          -"
        );
    }

    #[test]
    fn escape_writes_unsafe_characters_visibly_and_leaves_the_rest() {
        assert!(matches!(escape("web-1 café ✓ 日本"), Cow::Borrowed(_)));
        assert_eq!(escape("\u{1b}[2J"), r"\u{1b}[2J");
        assert_eq!(
            escape("a\u{0}b\u{7}c\u{7f}d\u{9b}e"),
            r"a\u{0}b\u{7}c\u{7f}d\u{9b}e"
        );
        assert_eq!(escape("x\ny\tz\r"), r"x\u{a}y\u{9}z\u{d}");
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200b}', '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}',
            '\u{061c}', '\u{2060}', '\u{feff}', '\u{2028}', '\u{2029}', '\u{ad}',
        ] {
            assert!(is_hidden_char(c), "U+{:04X}", c as u32);
            assert_eq!(
                escape(&format!("a{c}b")),
                format!("a\\u{{{:x}}}b", c as u32)
            );
        }
        // Visible neighbours of the ranges stay.
        for c in [
            '\u{a0}', '\u{2010}', '\u{2030}', '\u{2027}', '\u{2065}', '\u{206a}',
        ] {
            assert!(!is_hidden_char(c), "U+{:04X}", c as u32);
        }
        assert_eq!(escape_lines("a\u{1b}\nb\r\n"), "a\\u{1b}\nb\\u{d}\n");
    }

    #[test]
    fn logfmt_escapes_unsafe_characters_inside_quotes() {
        assert_eq!(
            logfmt(&[
                ("id", "\u{1b}[2J"),
                ("ref", "a\u{202e}b"),
                ("z", "x\u{200b}")
            ]),
            r#"id="\u{1b}[2J" ref="a\u{202e}b" z="x\u{200b}""#
        );
        assert_eq!(logfmt(&[("m", "l1\nl2")]), r#"m="l1\nl2""#);
    }

    #[test]
    fn table_cells_are_escaped_and_stay_on_one_line() {
        let mut t = Table::new(&["ID", "RESOURCE"]);
        t.row(vec!["1".into(), "\u{1b}[2J\u{feff}".into()]);
        t.row(vec!["2".into(), "two\nlines".into()]);
        assert_eq!(
            t.render(),
            "ID  RESOURCE\n1   \\u{1b}[2J\\u{feff}\n2   two lines"
        );
    }
}
