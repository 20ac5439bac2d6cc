//! Rendering answers: `text` is one logfmt `key=value` line per object and an aligned table
//! for lists; `json` is the API's JSON unchanged (one document).

use std::io::{self, Write};

use autonomy_client::Reply;
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub struct Output {
    format: Format,
}

impl Output {
    pub fn new(format: Format) -> Output {
        Output { format }
    }

    pub fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    /// Prints a 2xx answer: its body unchanged in json mode (after checking it is JSON),
    /// else `text(parsed body)`.
    pub fn answer<T: DeserializeOwned>(
        &self,
        reply: &Reply<T>,
        text: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        if self.is_json() {
            reply.json::<serde_json::Value>()?;
            self.print(reply.text().trim())
        } else {
            self.print(&text(&reply.value()?))
        }
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

    /// Writes `s` and a newline to stdout. A closed stdout (`| head`) is a `BrokenPipe`
    /// error, which `main` turns into a quiet exit.
    pub fn print(&self, s: &str) -> anyhow::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(s.as_bytes())?;
        if !s.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }
}

/// One logfmt line. Values with spaces, quotes, `=` or control characters, and empty values,
/// are quoted.
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
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '=' | '\\'));
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
            c if c.is_control() => s.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// A left-aligned table; the last column is not padded. Cells are kept on one line.
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
                let c = c.replace(['\n', '\r', '\t'], " ");
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
}
