//! What the CLI's end-to-end suites share: running the real `pact` binary in a clean
//! environment (no user config, no dev profile, an empty HOME, so only what a test passes
//! reaches the CLI) and reading its JSON output. Each suite declares `mod common;` (the
//! journal's harness) next to `mod support;`.
#![allow(dead_code)]

use crate::common::{self, Journal};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one `pact` run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// How a run gets its token.
pub enum Tok<'a> {
    None,
    Flag(&'a str),
    Env(&'a str),
}

/// An isolated place to run the CLI from: an empty HOME that is also the working directory.
pub struct Cli {
    pub home: PathBuf,
    pub endpoint: String,
    pub ca: PathBuf,
}

impl Cli {
    pub fn new(j: &Journal, name: &str) -> Cli {
        Cli::at(&j.endpoint(), &j.ca(), name)
    }

    pub fn at(endpoint: &str, ca: &Path, name: &str) -> Cli {
        let home = common::temp_dir(&format!("cli-home-{name}"));
        Cli { home, endpoint: endpoint.to_string(), ca: ca.to_path_buf() }
    }

    /// `pact` with this place's endpoint, CA, token and a clean environment.
    pub fn command(&self, tok: Tok<'_>, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pact"));
        c.arg("--endpoint").arg(&self.endpoint).arg("--ca-cert").arg(&self.ca);
        for v in ["PACT_ENDPOINT", "PACT_TOKEN", "PACT_TLS_CA", "PACT_VCLUSTER", "PACT_OUTPUT"] {
            c.env_remove(v);
        }
        c.env("PACT_CLI_CONFIG", "/nonexistent").env("PACT_DEV_DIR", "/nonexistent").env("HOME", &self.home);
        c.current_dir(&self.home);
        match tok {
            Tok::None => {}
            Tok::Flag(t) => {
                c.arg("--token").arg(t);
            }
            Tok::Env(t) => {
                c.env("PACT_TOKEN", t);
            }
        }
        c.args(args);
        c
    }

    pub fn run(&self, tok: Tok<'_>, args: &[&str]) -> Run {
        let out = self.command(tok, args).output().expect("run pact");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Like `run`, for a command that may never end by itself (`pact watch`): one still running
    /// after `limit` is killed and the test fails, showing what it had printed.
    pub fn run_within(&self, limit: Duration, tok: Tok<'_>, args: &[&str]) -> Run {
        let mut child = self
            .command(tok, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pact");
        // Read both pipes while waiting, so a chatty child never blocks on a full pipe.
        let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut text);
                }
                text
            })
        };
        let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn std::io::Read + Send>));
        let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn std::io::Read + Send>));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for pact") {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let run = Run { code: -1, stdout: out.join().unwrap(), stderr: err.join().unwrap() };
        match status {
            Some(st) => Run { code: st.code().unwrap_or(-1), ..run },
            None => panic!("pact {args:?} still running after {limit:?}: {run:?}"),
        }
    }

    /// Runs and insists on exit 0.
    pub fn ok(&self, tok: Tok<'_>, args: &[&str]) -> String {
        let r = self.run(tok, args);
        assert_eq!(r.code, 0, "pact {args:?} failed: {r:?}");
        r.stdout
    }

    /// Every entry the journal holds, newest first, as `pact log --output json` prints them.
    pub fn entries(&self, token: &str) -> Vec<Json> {
        let out = self.ok(Tok::Flag(token), &["log", "-n", "10000", "--output", "json"]);
        match parse_json(&out) {
            Json::Arr(a) => a,
            other => panic!("log --output json is not an array: {other:?}"),
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.home);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small JSON reader (the CLI's output is JSON; the workspace has no serde for tests).

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(m) => m.get(key).unwrap_or_else(|| panic!("no key {key:?} in {self:?}")),
            other => panic!("not an object (looking for {key:?}): {other:?}"),
        }
    }

    pub fn opt(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.get(key),
            _ => None,
        }
    }

    pub fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    pub fn u64(&self) -> u64 {
        match self {
            Json::Num(n) if *n >= 0.0 && n.fract() == 0.0 => *n as u64,
            other => panic!("not a non-negative integer: {other:?}"),
        }
    }

    pub fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            other => panic!("not an array: {other:?}"),
        }
    }
}

pub fn parse_json(text: &str) -> Json {
    let b = text.trim().as_bytes();
    let mut i = 0;
    let v = json_value(b, &mut i);
    assert_eq!(i, b.len(), "trailing bytes after JSON value: {text}");
    v
}

pub fn json_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

pub fn json_expect(b: &[u8], i: &mut usize, lit: &str) {
    assert!(b[*i..].starts_with(lit.as_bytes()), "expected {lit:?} at byte {i}: {}", String::from_utf8_lossy(b));
    *i += lit.len();
}

pub fn json_value(b: &[u8], i: &mut usize) -> Json {
    json_ws(b, i);
    assert!(*i < b.len(), "unexpected end of JSON");
    let v = match b[*i] {
        b'n' => {
            json_expect(b, i, "null");
            Json::Null
        }
        b't' => {
            json_expect(b, i, "true");
            Json::Bool(true)
        }
        b'f' => {
            json_expect(b, i, "false");
            Json::Bool(false)
        }
        b'"' => Json::Str(json_string(b, i)),
        b'[' => {
            *i += 1;
            let mut items = Vec::new();
            json_ws(b, i);
            if b[*i] == b']' {
                *i += 1;
            } else {
                loop {
                    items.push(json_value(b, i));
                    json_ws(b, i);
                    match b[*i] {
                        b',' => *i += 1,
                        b']' => {
                            *i += 1;
                            break;
                        }
                        c => panic!("expected , or ] at byte {i}, found {:?}", c as char),
                    }
                }
            }
            Json::Arr(items)
        }
        b'{' => {
            *i += 1;
            let mut m = BTreeMap::new();
            json_ws(b, i);
            if b[*i] == b'}' {
                *i += 1;
            } else {
                loop {
                    json_ws(b, i);
                    let k = json_string(b, i);
                    json_ws(b, i);
                    json_expect(b, i, ":");
                    let v = json_value(b, i);
                    assert!(m.insert(k.clone(), v).is_none(), "duplicate key {k:?}");
                    json_ws(b, i);
                    match b[*i] {
                        b',' => *i += 1,
                        b'}' => {
                            *i += 1;
                            break;
                        }
                        c => panic!("expected , or }} at byte {i}, found {:?}", c as char),
                    }
                }
            }
            Json::Obj(m)
        }
        _ => {
            let start = *i;
            while *i < b.len() && matches!(b[*i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                *i += 1;
            }
            let s = std::str::from_utf8(&b[start..*i]).unwrap();
            Json::Num(s.parse().unwrap_or_else(|_| panic!("bad JSON number {s:?} at byte {start}")))
        }
    };
    json_ws(b, i);
    v
}

pub fn json_string(b: &[u8], i: &mut usize) -> String {
    json_expect(b, i, "\"");
    let mut out = Vec::new();
    loop {
        let c = b[*i];
        *i += 1;
        match c {
            b'"' => break,
            b'\\' => {
                let e = b[*i];
                *i += 1;
                let ch = match e {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        let hex = std::str::from_utf8(&b[*i..*i + 4]).unwrap();
                        *i += 4;
                        char::from_u32(u32::from_str_radix(hex, 16).unwrap()).unwrap_or('\u{fffd}')
                    }
                    other => panic!("bad escape \\{}", other as char),
                };
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            c => out.push(c),
        }
    }
    String::from_utf8(out).unwrap()
}

/// The data rows of `pact log` text output: (seq, type, scope, rest of the line).
pub fn log_rows(text: &str) -> Vec<(u64, String, String, String)> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    assert!(header.starts_with("SEQ") && header.contains("MESSAGE"), "{header}");
    lines
        .filter(|l| !l.starts_with(' '))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 5, "short log row {l:?}");
            (f[0].parse().unwrap_or_else(|_| panic!("bad seq in {l:?}")), f[2].into(), f[3].into(), f[5..].join(" "))
        })
        .collect()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
