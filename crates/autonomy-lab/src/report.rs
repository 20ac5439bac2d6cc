//! A lab's checks and its report: `<lab>-report.json` and `<lab>-report.txt`, in the format
//! the lab script's report writer has always produced (values typed as it types them: `true`/
//! `false` booleans, integers, decimals, else strings; checks in natural id order; JSON with
//! two-space indent and non-ASCII escaped).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where a check's `key=value` lines also go.
pub enum CheckFile {
    None,
    /// Written anew.
    Write(PathBuf),
    /// Appended.
    Append(PathBuf),
}

/// A progress line on stderr: `[lab HH:MM:SS] LAB: MSG`.
pub fn say(lab: &str, msg: &str) {
    let now = crate::lab::utc_now();
    eprintln!("[lab {}] {lab}: {msg}", &now[11..19]);
}

/// One recorded check.
#[derive(Debug, Clone)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub pass: bool,
    pub evidence: Vec<String>,
    /// Every `key=value` but `pass`, in order.
    pub measured: Vec<(String, String)>,
}

/// The checks and notes of one lab run.
#[derive(Debug, Default)]
pub struct Report {
    /// The lab's name, for the progress lines.
    pub lab: &'static str,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
}

impl Report {
    /// Records a check and says PASS/FAIL. `kvs` must hold `pass=true|false` (anything else,
    /// or a check file that cannot be written, is a failure).
    pub fn check(
        &mut self,
        id: &str,
        name: &str,
        file: CheckFile,
        evidence: &str,
        kvs: Vec<(String, String)>,
    ) -> bool {
        let mut pass = false;
        let mut lines = String::new();
        let mut measured = Vec::new();
        for (k, v) in kvs {
            let v = v.replace(['\n', '\t', '\r'], " ");
            if k == "pass" {
                pass = v == "true";
            } else {
                measured.push((k.clone(), v.clone()));
            }
            let _ = writeln!(lines, "{k}={v}");
        }
        let written = match file {
            CheckFile::None => Ok(()),
            CheckFile::Write(p) => std::fs::write(p, &lines),
            CheckFile::Append(p) => {
                use std::io::Write;
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(p)
                    .and_then(|mut f| f.write_all(lines.as_bytes()))
            }
        };
        if let Err(e) = written {
            say(
                self.lab,
                &format!("cannot write the check file of {id}: {e}"),
            );
            pass = false;
        }
        self.checks.push(Check {
            id: id.into(),
            name: name.into(),
            pass,
            evidence: evidence
                .split(' ')
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect(),
            measured,
        });
        say(
            self.lab,
            &format!("{} {id} {name}", if pass { "PASS" } else { "FAIL" }),
        );
        pass
    }

    /// Writes the report files; returns (pass_count, total, PASS|FAIL).
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        lab: &str,
        title: &str,
        dir: &Path,
        started: &str,
        finished: &str,
        environment: &[(String, String)],
    ) -> std::io::Result<(usize, usize, &'static str)> {
        let mut checks = self.checks.clone();
        checks.sort_by_key(|c| natural_key(&c.id));
        let pass_count = checks.iter().filter(|c| c.pass).count();
        let total = checks.len();
        let result = if total > 0 && pass_count == total {
            "PASS"
        } else {
            "FAIL"
        };
        let kvs = |kv: &[(String, String)]| {
            J::Obj(kv.iter().map(|(k, v)| (k.clone(), typed(v))).collect())
        };
        let json = J::Obj(vec![
            ("lab".into(), J::Str(lab.into())),
            ("title".into(), J::Str(title.into())),
            ("result".into(), J::Str(result.into())),
            ("pass_count".into(), J::Int(pass_count as i64)),
            ("total".into(), J::Int(total as i64)),
            ("started_at".into(), J::Str(started.into())),
            ("finished_at".into(), J::Str(finished.into())),
            ("environment".into(), kvs(environment)),
            (
                "notes".into(),
                J::List(self.notes.iter().map(|n| J::Str(n.clone())).collect()),
            ),
            (
                "checks".into(),
                J::List(
                    checks
                        .iter()
                        .map(|c| {
                            J::Obj(vec![
                                ("id".into(), J::Str(c.id.clone())),
                                ("name".into(), J::Str(c.name.clone())),
                                ("pass".into(), J::Bool(c.pass)),
                                (
                                    "evidence".into(),
                                    J::List(c.evidence.iter().map(|e| J::Str(e.clone())).collect()),
                                ),
                                ("measured".into(), kvs(&c.measured)),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]);
        let mut out = String::new();
        json.pretty(&mut out, 0);
        out.push('\n');
        std::fs::write(dir.join(format!("{lab}-report.json")), out)?;

        let mut t = vec![
            title.to_string(),
            "=".repeat(title.chars().count()),
            String::new(),
            format!("lab={lab} started_at={started} finished_at={finished}"),
        ];
        for (k, v) in environment {
            t.push(format!("{k}={}", typed(v).py_str()));
        }
        t.push(String::new());
        for c in &checks {
            let mark = if c.pass { "PASS" } else { "FAIL" };
            t.push(format!("[{mark}] {} {}", c.id, c.name));
            let meas: Vec<String> = c
                .measured
                .iter()
                .map(|(k, v)| {
                    let v = typed(v);
                    match v {
                        J::Bool(b) => format!("{k}={b}"),
                        other => format!("{k}={}", other.py_str()),
                    }
                })
                .collect();
            t.push(format!("       measured: {}", meas.join(" ")));
            t.push(format!("       evidence: {}", c.evidence.join(" ")));
        }
        if !self.notes.is_empty() {
            t.push(String::new());
            t.extend(self.notes.iter().map(|n| format!("note: {n}")));
        }
        t.push(String::new());
        t.push(format!(
            "pass_count={pass_count} total={total} result={result}"
        ));
        std::fs::write(dir.join(format!("{lab}-report.txt")), t.join("\n") + "\n")?;
        Ok((pass_count, total, result))
    }
}

/// `VAL12-02` → [Str("VAL"), Num(12), Str("-"), Num(2), Str("")], compared like the script's
/// natural sort.
fn natural_key(id: &str) -> Vec<(u8, u64, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_digits = false;
    for ch in id.chars() {
        let d = ch.is_ascii_digit();
        if d != in_digits {
            out.push(part(&cur, in_digits));
            cur.clear();
            in_digits = d;
        }
        cur.push(ch);
    }
    out.push(part(&cur, in_digits));
    out
}

fn part(s: &str, digits: bool) -> (u8, u64, String) {
    match (digits, s.parse::<u64>()) {
        (true, Ok(n)) => (0, n, String::new()),
        _ => (1, 0, s.to_string()),
    }
}

/// A JSON value whose objects keep their order.
#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<J>),
    Obj(Vec<(String, J)>),
}

/// A report value as the script types it.
pub fn typed(v: &str) -> J {
    if v == "true" || v == "false" {
        return J::Bool(v == "true");
    }
    let digits = v.strip_prefix('-').unwrap_or(v);
    let is_int = !digits.is_empty()
        && digits.len() <= 16
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if is_int {
        if let Ok(n) = v.parse() {
            return J::Int(n);
        }
    }
    if let Some((int, frac)) = digits.split_once('.') {
        let int_ok = !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && (int == "0" || !int.starts_with('0'));
        if int_ok && !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(f) = v.parse() {
                return J::Float(f);
            }
        }
    }
    J::Str(v.to_string())
}

impl J {
    /// As Python's `str()` prints it.
    fn py_str(&self) -> String {
        match self {
            J::Bool(b) => if *b { "True" } else { "False" }.into(),
            J::Int(n) => n.to_string(),
            J::Float(f) => py_float(*f),
            J::Str(s) => s.clone(),
            other => {
                let mut s = String::new();
                other.pretty(&mut s, 0);
                s
            }
        }
    }

    fn pretty(&self, out: &mut String, depth: usize) {
        let pad = |n: usize| "  ".repeat(n);
        match self {
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(n) => out.push_str(&n.to_string()),
            J::Float(f) => out.push_str(&py_float(*f)),
            J::Str(s) => escape(out, s),
            J::List(items) if items.is_empty() => out.push_str("[]"),
            J::Obj(items) if items.is_empty() => out.push_str("{}"),
            J::List(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&pad(depth + 1));
                    item.pretty(out, depth + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(depth));
                out.push(']');
            }
            J::Obj(items) => {
                out.push_str("{\n");
                for (i, (k, v)) in items.iter().enumerate() {
                    out.push_str(&pad(depth + 1));
                    escape(out, k);
                    out.push_str(": ");
                    v.pretty(out, depth + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(depth));
                out.push('}');
            }
        }
    }
}

/// Python's `repr(float)` for the values a report holds.
fn py_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// A JSON string with every non-ASCII character escaped (as Python's `json.dump` does).
fn escape(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_like_the_script_types_them() {
        assert_eq!(typed("true"), J::Bool(true));
        assert_eq!(typed("0"), J::Int(0));
        assert_eq!(typed("-12"), J::Int(-12));
        assert_eq!(typed("007"), J::Str("007".into()));
        assert_eq!(
            typed("12345678901234567"),
            J::Str("12345678901234567".into())
        );
        assert_eq!(typed("1.50"), J::Float(1.5));
        assert_eq!(typed("1."), J::Str("1.".into()));
        assert_eq!(typed("none"), J::Str("none".into()));
        assert_eq!(J::Float(1.0).py_str(), "1.0");
        assert_eq!(J::Float(1.5).py_str(), "1.5");
    }

    #[test]
    fn ids_sort_naturally() {
        let mut ids = vec!["VAL12-10", "VAL12-02", "VAL12-1", "VAL12-09"];
        ids.sort_by_key(|id| natural_key(id));
        assert_eq!(ids, ["VAL12-1", "VAL12-02", "VAL12-09", "VAL12-10"]);
    }

    #[test]
    fn json_escapes_like_python() {
        let mut s = String::new();
        J::Obj(vec![
            ("t".into(), J::Str("a — \"b\"\n".into())),
            ("l".into(), J::List(vec![])),
        ])
        .pretty(&mut s, 0);
        assert_eq!(s, "{\n  \"t\": \"a \\u2014 \\\"b\\\"\\n\",\n  \"l\": []\n}");
    }

    #[test]
    fn a_report_round_trips_through_its_files() {
        let dir = autonomy_testkit::TestDir::create("report").unwrap();
        let mut r = Report::default();
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert!(r.check(
            "X-10",
            "ten",
            CheckFile::None,
            "a b",
            vec![kv("n", "3"), kv("pass", "true")],
        ));
        let f = dir.path().join("x.txt");
        assert!(!r.check(
            "X-2",
            "two",
            CheckFile::Write(f.clone()),
            "",
            vec![kv("ok", "false"), kv("pass", "no")],
        ));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "ok=false\npass=no\n");
        let (p, t, res) = r
            .write("x", "T", dir.path(), "s", "f", &[kv("port", "1")])
            .unwrap();
        assert_eq!((p, t, res), (1, 2, "FAIL"));
        let txt = std::fs::read_to_string(dir.path().join("x-report.txt")).unwrap();
        assert!(txt.starts_with("T\n=\n\nlab=x started_at=s finished_at=f\nport=1\n\n[FAIL] X-2 two\n       measured: ok=false\n"), "{txt}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("x-report.json")).unwrap())
                .unwrap();
        assert_eq!(json["checks"][1]["measured"]["n"], 3);
        assert_eq!(json["result"], "FAIL");
    }
}
