//! The typed TOML layer every config file goes through (DESIGN.md §8).
//!
//! A file is parsed once with `toml_edit::ImDocument` (which keeps byte spans), and then read
//! through [`Section`] (a table or inline table, with its dotted path) and [`Field`] (one value,
//! with its dotted path). Every getter either returns the typed value or a [`ConfigError`] that
//! names the file, the line, the full dotted key, what was expected and what was found. Callers
//! list the keys a table may hold with [`Section::check_keys`], which rejects anything else with
//! a "did you mean" suggestion.
//!
//! Errors about values that came from the environment or the command line use the same type
//! ([`ConfigError::env`], [`ConfigError::flag`]) so a binary reports every configuration mistake
//! the same way.

use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::Path;

use toml_edit::{ImDocument, Item, TableLike, Value};

/// A configuration mistake: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file path (or a label such as "environment variable PACT_JOURNAL_PEERS").
    pub file: String,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    /// The full dotted key (`journal.raft.snapshot_interval`), the variable or the flag; may be
    /// empty for file-level problems (unreadable file, TOML syntax).
    pub key: String,
    /// What is wrong, e.g. `expected a positive integer, found a string "ten"`.
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<String>,
        line: Option<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError { file: file.into(), line, key: key.into(), message: message.into() }
    }

    /// A bad value in environment variable `var`.
    pub fn env(var: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(format!("environment variable {var}"), None, var, message)
    }

    /// A bad value given to command-line flag `flag` (e.g. "--listen").
    pub fn flag(flag: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(format!("flag {flag}"), None, flag, message)
    }
}

impl fmt::Display for ConfigError {
    /// `FILE[:LINE]: [key `KEY`: ]MESSAGE`. The "key" part is left out when the message or
    /// the file label already names the key (unknown-key errors, env and flag errors), so no
    /// error says the same name twice.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        let quoted = format!("`{}`", self.key);
        let named_already = self.message.contains(&quoted) || self.file.ends_with(&format!(" {}", self.key));
        if !self.key.is_empty() && !named_already {
            write!(f, ": key {quoted}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line number of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// One parsed TOML file.
pub struct TomlFile {
    path: String,
    doc: ImDocument<String>,
}

impl TomlFile {
    /// Reads and parses `path`. An unreadable file gives an error naming the file and the OS
    /// error; a syntax error gives the line.
    pub fn load(path: &Path) -> Result<TomlFile, ConfigError> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(label.clone(), None, "", format!("cannot read config file: {e}")))?;
        TomlFile::parse(label, text)
    }

    /// Parses `text`; `path_label` is what errors call the file.
    pub fn parse(path_label: impl Into<String>, text: impl Into<String>) -> Result<TomlFile, ConfigError> {
        let path = path_label.into();
        let text = text.into();
        // ImDocument::parse consumes the text; keep a copy for the line number of a syntax error.
        match ImDocument::parse(text.clone()) {
            Ok(doc) => Ok(TomlFile { path, doc }),
            Err(e) => {
                let line = e.span().map(|s| line_of(&text, s.start));
                // toml_edit's messages are several short lines ("invalid table header\nduplicate
                // key ..."); one line reads better after "file:line:".
                let detail: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                Err(ConfigError::new(path, line, "", format!("invalid TOML: {}", detail.join(": "))))
            }
        }
    }

    /// The label errors use for this file.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's text.
    pub fn text(&self) -> &str {
        self.doc.raw()
    }

    /// The top-level table.
    pub fn root(&self) -> Section<'_> {
        Section { file: self, table: self.doc.as_table(), path: String::new(), span: None }
    }

    /// The line of a span's start.
    pub fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        span.map(|s| line_of(self.text(), s.start))
    }
}

/// Joins a parent path and a key the way TOML writes them: bare when the key is made of
/// `A-Za-z0-9_-`, quoted otherwise (`vcluster.x.sysctl."vm.swappiness"`).
pub fn join_key(parent: &str, key: &str) -> String {
    let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare { key.to_string() } else { format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\"")) };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// Levenshtein edit distance, by chars.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate nearest to `word`, if it is near enough to be a plausible typo: distance at
/// most max(2, len/3) where len is `word`'s length. Ties go to the earlier candidate.
pub fn suggest<'s>(word: &str, candidates: &[&'s str]) -> Option<&'s str> {
    let limit = 2.max(word.chars().count() / 3);
    let mut best: Option<(usize, &'s str)> = None;
    for c in candidates {
        let d = levenshtein(word, c);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// How a found value is described in "expected X, found Y".
fn describe(item: &Item) -> String {
    match item {
        Item::None => "nothing".to_string(),
        Item::Table(_) => "a table".to_string(),
        Item::ArrayOfTables(_) => "an array of tables".to_string(),
        Item::Value(v) => describe_value(v),
    }
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let s = s.value();
            // Long strings are cut so the message stays one readable line.
            if s.chars().count() > 60 {
                let cut: String = s.chars().take(57).collect();
                format!("a string {:?}", cut + "...")
            } else {
                format!("a string {s:?}")
            }
        }
        Value::Integer(i) => format!("an integer {}", i.value()),
        Value::Float(x) => format!("a float {}", x.value()),
        Value::Boolean(b) => format!("a boolean {}", b.value()),
        Value::Datetime(d) => format!("a datetime {}", d.value()),
        Value::Array(a) => format!("an array of {} item{}", a.len(), if a.len() == 1 { "" } else { "s" }),
        Value::InlineTable(_) => "an inline table".to_string(),
    }
}

/// "a positive integer", "an integer from 1 to 10000", ...; `type_max` is the largest value of
/// the target type, so full-range bounds are not spelled out.
fn describe_int_range(range: &RangeInclusive<u64>, type_max: u64) -> String {
    match (*range.start(), *range.end() == type_max) {
        (0, true) => "a non-negative integer".to_string(),
        (1, true) => "a positive integer".to_string(),
        (lo, true) => format!("an integer of at least {lo}"),
        (lo, false) => format!("an integer from {lo} to {}", range.end()),
    }
}

/// A table (or inline table) of a file, with its dotted path.
#[derive(Clone)]
pub struct Section<'a> {
    file: &'a TomlFile,
    table: &'a dyn TableLike,
    path: String,
    span: Option<Range<usize>>,
}

impl<'a> Section<'a> {
    /// The dotted path of this table ("" for the root).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn file(&self) -> &'a TomlFile {
        self.file
    }

    /// The line of the table's header (or inline table), when it has one; implicit tables
    /// (`[a.b]` with no `[a]`) have none.
    pub fn line(&self) -> Option<usize> {
        self.file.line(self.span.clone())
    }

    /// An error about the table as a whole.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file.path(), self.line(), self.path.clone(), message)
    }

    /// The dotted path of `key` in this table.
    pub fn key_path(&self, key: &str) -> String {
        join_key(&self.path, key)
    }

    pub fn is_empty(&self) -> bool {
        self.table.iter().next().is_none()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The keys, in file order.
    pub fn keys(&self) -> Vec<&'a str> {
        self.table.iter().map(|(k, _)| k).collect()
    }

    /// The value at `key`, if present.
    pub fn get(&self, key: &str) -> Option<Field<'a>> {
        let (k, item) = self.table.get_key_value(key)?;
        if item.is_none() {
            return None;
        }
        Some(Field {
            file: self.file,
            key: k.get(),
            node: Node::Item(item),
            path: self.key_path(key),
            key_span: k.span(),
        })
    }

    /// The value at `key`, or an error saying it is missing.
    pub fn require(&self, key: &str) -> Result<Field<'a>, ConfigError> {
        self.get(key).ok_or_else(|| self.missing(key))
    }

    /// The error for a required `key` that is absent, at the table's header line.
    pub fn missing(&self, key: &str) -> ConfigError {
        let path = self.key_path(key);
        let message = format!("missing required key `{path}`");
        ConfigError::new(self.file.path(), self.line(), path, message)
    }

    /// Every value, in file order.
    pub fn fields(&self) -> Vec<Field<'a>> {
        self.keys().into_iter().filter_map(|k| self.get(k)).collect()
    }

    /// Rejects any key not in `allowed`, suggesting the nearest allowed one:
    /// ``unknown key `journal.listen_adr` (did you mean `journal.listen_addr`?)``.
    pub fn check_keys(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        for field in self.fields() {
            if allowed.contains(&field.key()) {
                continue;
            }
            let mut message = format!("unknown key `{}`", field.path());
            if let Some(near) = suggest(field.key(), allowed) {
                message.push_str(&format!(" (did you mean `{}`?)", self.key_path(near)));
            }
            return Err(ConfigError::new(
                self.file.path(),
                field.key_line().or_else(|| field.line()),
                field.path(),
                message,
            ));
        }
        Ok(())
    }

    // ---- typed getters: Ok(None) when the key is absent, an error when it has the wrong type ----

    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.get(key).map(|f| f.string()).transpose()
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key).map(|f| f.bool()).transpose()
    }

    pub fn u64(&self, key: &str, range: RangeInclusive<u64>) -> Result<Option<u64>, ConfigError> {
        self.get(key).map(|f| f.u64(range)).transpose()
    }

    pub fn u32(&self, key: &str, range: RangeInclusive<u32>) -> Result<Option<u32>, ConfigError> {
        self.get(key).map(|f| f.u32(range)).transpose()
    }

    pub fn f64(&self, key: &str, range: RangeInclusive<f64>) -> Result<Option<f64>, ConfigError> {
        self.get(key).map(|f| f.f64(range)).transpose()
    }

    pub fn string_array(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        self.get(key).map(|f| f.string_array()).transpose()
    }

    pub fn socket_addr(&self, key: &str) -> Result<Option<SocketAddr>, ConfigError> {
        self.get(key).map(|f| f.socket_addr()).transpose()
    }

    /// A string that must be one of `allowed`; returns the matching entry of `allowed`.
    pub fn one_of<'s>(&self, key: &str, allowed: &[&'s str]) -> Result<Option<&'s str>, ConfigError> {
        self.get(key).map(|f| f.one_of(allowed)).transpose()
    }

    /// A sub-table (a `[header]` table, a dotted-key table or an inline table).
    pub fn section(&self, key: &str) -> Result<Option<Section<'a>>, ConfigError> {
        self.get(key).map(|f| f.section()).transpose()
    }
}

impl fmt::Debug for Section<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Section({}:{:?}: {})", self.file.path(), self.line(), self.path)
    }
}

impl fmt::Debug for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Field({}:{:?}: {} = {})", self.file.path(), self.line(), self.path, self.node.describe())
    }
}

/// What a [`Field`] points at: a table entry (any item) or an array element (always a value).
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn value(self) -> Option<&'a Value> {
        match self {
            Node::Item(i) => i.as_value(),
            Node::Value(v) => Some(v),
        }
    }

    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
        }
    }

    fn table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(i) => i.as_table_like(),
            Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    fn describe(self) -> String {
        match self {
            Node::Item(i) => describe(i),
            Node::Value(v) => describe_value(v),
        }
    }
}

/// One value of a file, with its dotted path.
#[derive(Clone)]
pub struct Field<'a> {
    file: &'a TomlFile,
    key: &'a str,
    node: Node<'a>,
    path: String,
    key_span: Option<Range<usize>>,
}

impl<'a> Field<'a> {
    /// The last component of the path (the key as written, unquoted). For an array element,
    /// the array's key.
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The full dotted path (`vcluster.x.services.chronyd.restart`, `members[2]`).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn file(&self) -> &'a TomlFile {
        self.file
    }

    /// The value, unless this is a `[header]` table or an array of tables.
    pub fn value(&self) -> Option<&'a Value> {
        self.node.value()
    }

    /// The line of the value (falling back to the key's line, e.g. for dotted-key tables).
    pub fn line(&self) -> Option<usize> {
        self.file.line(self.node.span()).or_else(|| self.key_line())
    }

    /// The line of the key itself.
    pub fn key_line(&self) -> Option<usize> {
        self.file.line(self.key_span.clone())
    }

    /// The value's source text as written (`0o644`, `"x"`), when it has a span.
    pub fn raw(&self) -> Option<&'a str> {
        self.node.span().and_then(|s| self.file.text().get(s))
    }

    /// An error about this value.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file.path(), self.line(), self.path.clone(), message)
    }

    /// `expected WHAT, found <what is there>`.
    pub fn expected(&self, what: &str) -> ConfigError {
        self.error(format!("expected {what}, found {}", self.node.describe()))
    }

    pub fn string(&self) -> Result<String, ConfigError> {
        self.value().and_then(Value::as_str).map(str::to_string).ok_or_else(|| self.expected("a string"))
    }

    /// A string, or a number written bare (stringified: `10` → "10", `0.5` → "0.5").
    pub fn scalar_string(&self) -> Result<String, ConfigError> {
        match self.value() {
            Some(Value::String(s)) => Ok(s.value().clone()),
            Some(Value::Integer(i)) => Ok(i.value().to_string()),
            Some(Value::Float(x)) => Ok(x.value().to_string()),
            _ => Err(self.expected("a string or a number")),
        }
    }

    pub fn bool(&self) -> Result<bool, ConfigError> {
        self.value().and_then(Value::as_bool).ok_or_else(|| self.expected("a boolean (true or false)"))
    }

    /// The raw integer, for callers with their own rules (e.g. file modes).
    pub fn i64(&self) -> Result<i64, ConfigError> {
        self.value().and_then(Value::as_integer).ok_or_else(|| self.expected("an integer"))
    }

    pub fn u64(&self, range: RangeInclusive<u64>) -> Result<u64, ConfigError> {
        self.int_in(range, u64::MAX)
    }

    pub fn u32(&self, range: RangeInclusive<u32>) -> Result<u32, ConfigError> {
        let wide = u64::from(*range.start())..=u64::from(*range.end());
        // int_in has checked the value against a range inside u32, so the cast is exact.
        self.int_in(wide, u64::from(u32::MAX)).map(|v| v as u32)
    }

    pub fn usize(&self, range: RangeInclusive<usize>) -> Result<usize, ConfigError> {
        let wide = *range.start() as u64..=*range.end() as u64;
        self.int_in(wide, usize::MAX as u64).map(|v| v as usize)
    }

    fn int_in(&self, range: RangeInclusive<u64>, type_max: u64) -> Result<u64, ConfigError> {
        let what = describe_int_range(&range, type_max);
        let Some(n) = self.value().and_then(Value::as_integer) else {
            return Err(self.expected(&what));
        };
        match u64::try_from(n) {
            Ok(v) if range.contains(&v) => Ok(v),
            Ok(v) if v > *range.end() && *range.end() == type_max => {
                Err(self.error(format!("expected {what}, found an integer {n} (the largest allowed is {type_max})")))
            }
            _ => Err(self.expected(&what)),
        }
    }

    /// A number (an integer is accepted and widened); must be finite and inside `range`.
    pub fn f64(&self, range: RangeInclusive<f64>) -> Result<f64, ConfigError> {
        let (lo, hi) = (*range.start(), *range.end());
        let what = if lo == f64::MIN && hi == f64::MAX {
            "a number".to_string()
        } else if hi == f64::MAX {
            format!("a number of at least {lo}")
        } else {
            format!("a number from {lo} to {hi}")
        };
        let v = match self.value() {
            Some(Value::Float(x)) => *x.value(),
            Some(Value::Integer(i)) => *i.value() as f64,
            _ => return Err(self.expected(&what)),
        };
        // TOML allows nan and inf; neither is a sensible setting anywhere.
        if v.is_finite() && range.contains(&v) {
            Ok(v)
        } else {
            Err(self.expected(&what))
        }
    }

    /// A string that must be one of `allowed`; returns the matching entry of `allowed`.
    pub fn one_of<'s>(&self, allowed: &[&'s str]) -> Result<&'s str, ConfigError> {
        let list = allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        let what = format!("one of {list}");
        let s = self.value().and_then(Value::as_str).ok_or_else(|| self.expected(&what))?;
        if let Some(a) = allowed.iter().find(|a| **a == s) {
            return Ok(a);
        }
        let mut message = format!("expected {what}, found {}", self.node.describe());
        if let Some(near) = suggest(s, allowed) {
            message.push_str(&format!(" (did you mean \"{near}\"?)"));
        }
        Err(self.error(message))
    }

    /// A socket address such as "0.0.0.0:9443" or "[::1]:9443" (no name resolution).
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        let what = "a socket address like \"0.0.0.0:9443\"";
        let s = self.value().and_then(Value::as_str).ok_or_else(|| self.expected(what))?;
        s.parse().map_err(|_| self.expected(what))
    }

    /// The elements of an array value, each a Field with path `key[i]`.
    pub fn array(&self) -> Result<Vec<Field<'a>>, ConfigError> {
        let arr = self.value().and_then(Value::as_array).ok_or_else(|| self.expected("an array"))?;
        Ok(arr
            .iter()
            .enumerate()
            .map(|(i, v)| Field {
                file: self.file,
                key: self.key,
                node: Node::Value(v),
                path: format!("{}[{i}]", self.path),
                key_span: self.key_span.clone(),
            })
            .collect())
    }

    /// An array of strings; a wrong element is reported as `key[i]`.
    pub fn string_array(&self) -> Result<Vec<String>, ConfigError> {
        if self.value().and_then(Value::as_array).is_none() {
            return Err(self.expected("an array of strings"));
        }
        self.array()?.iter().map(Field::string).collect()
    }

    pub fn is_table_like(&self) -> bool {
        self.node.table_like().is_some()
    }

    /// An inline array or an array of tables.
    pub fn is_array(&self) -> bool {
        matches!(self.node, Node::Item(Item::ArrayOfTables(_))) || self.value().is_some_and(Value::is_array)
    }

    /// This value as a table (a `[header]` table, a dotted-key table or an inline table).
    pub fn section(&self) -> Result<Section<'a>, ConfigError> {
        let table = self.node.table_like().ok_or_else(|| self.expected("a table"))?;
        Ok(Section {
            file: self.file,
            table,
            path: self.path.clone(),
            span: self.node.span().or_else(|| self.key_span.clone()),
        })
    }

    /// This value as a list of tables: an array of tables (`[[x]]`) or an inline array of
    /// inline tables (`x = [{...}, {...}]`). Element paths are `x[i]`.
    pub fn sections(&self) -> Result<Vec<Section<'a>>, ConfigError> {
        if let Node::Item(Item::ArrayOfTables(aot)) = self.node {
            return Ok(aot
                .iter()
                .enumerate()
                .map(|(i, t)| Section {
                    file: self.file,
                    table: t as &dyn TableLike,
                    path: format!("{}[{i}]", self.path),
                    span: t.span(),
                })
                .collect());
        }
        if self.value().and_then(Value::as_array).is_none() {
            return Err(self.expected("an array of tables"));
        }
        self.array()?.iter().map(Field::section).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# a comment
[journal]
listen_addr = "0.0.0.0:9443"
data_dir = "/var/lib/pact/journal"

[journal.raft]
members = ["1:a:9444", "2:b:9444"]
snapshot_interval = "ten"
ratio = 2.5
whole = 3
enabled = true
bad_list = ["a", 2]
mode = "fast"

[vcluster.x.mounts]
"/scratch" = { type = "nfs", source = "s:/x" }

[[svc]]
name = "a"
[[svc]]
name = "b"
"#;

    fn sample() -> TomlFile {
        TomlFile::parse("/etc/pact/journal.toml", SAMPLE).unwrap()
    }

    fn raft(f: &TomlFile) -> Section<'_> {
        f.root().section("journal").unwrap().unwrap().section("raft").unwrap().unwrap()
    }

    #[test]
    fn display_names_file_line_key_expected_found() {
        let f = sample();
        let e = raft(&f).u64("snapshot_interval", 1..=u64::MAX).unwrap_err();
        assert_eq!(e.file, "/etc/pact/journal.toml");
        assert_eq!(e.line, Some(8));
        assert_eq!(e.key, "journal.raft.snapshot_interval");
        assert_eq!(
            e.to_string(),
            "/etc/pact/journal.toml:8: key `journal.raft.snapshot_interval`: expected a positive integer, found a string \"ten\""
        );
    }

    #[test]
    fn display_without_line_or_key() {
        let e = ConfigError::new("f.toml", None, "", "cannot read config file: gone");
        assert_eq!(e.to_string(), "f.toml: cannot read config file: gone");
        let e = ConfigError::env("PACT_JOURNAL_PEERS", "expected id=host:port, found \"x\"");
        assert_eq!(e.key, "PACT_JOURNAL_PEERS");
        assert_eq!(e.to_string(), "environment variable PACT_JOURNAL_PEERS: expected id=host:port, found \"x\"");
        let e = ConfigError::flag("--listen", "expected a socket address");
        assert_eq!(e.to_string(), "flag --listen: expected a socket address");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = TomlFile::parse("bad.toml", "[a]\nb = 1\nc = \n").err().unwrap();
        assert_eq!(e.line, Some(3));
        assert!(e.message.starts_with("invalid TOML: "), "{e}");
        assert!(!e.message.contains('\n'));
        let e = TomlFile::parse("bad.toml", "x = 1\n\nx = 2\n").err().unwrap();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("duplicate key"), "{e}");
    }

    #[test]
    fn unreadable_path_names_file_and_os_error() {
        let e = TomlFile::load(Path::new("/nonexistent/pact/journal.toml")).err().unwrap();
        assert_eq!(e.file, "/nonexistent/pact/journal.toml");
        assert_eq!(e.line, None);
        assert!(e.message.contains("cannot read config file"), "{e}");
        assert!(e.message.contains("No such file"), "{e}");
        // A directory is not a file either.
        let e = TomlFile::load(Path::new("/")).err().unwrap();
        assert!(e.message.contains("cannot read config file"), "{e}");
    }

    #[test]
    fn load_reads_a_real_file() {
        let path = std::env::temp_dir().join(format!("pact-tomlcfg-{}.toml", std::process::id()));
        std::fs::write(&path, "a = 1\n").unwrap();
        let f = TomlFile::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(f.root().u64("a", 0..=10).unwrap(), Some(1));
        assert_eq!(f.path(), path.display().to_string());
    }

    #[test]
    fn typed_getters() {
        let f = sample();
        let j = f.root().section("journal").unwrap().unwrap();
        assert_eq!(j.string("data_dir").unwrap().as_deref(), Some("/var/lib/pact/journal"));
        assert_eq!(j.string("absent").unwrap(), None);
        assert_eq!(j.socket_addr("listen_addr").unwrap(), Some("0.0.0.0:9443".parse().unwrap()));
        let e = j.socket_addr("data_dir").unwrap_err();
        assert!(e.message.starts_with("expected a socket address"), "{e}");
        assert_eq!(e.line, Some(4));

        let r = raft(&f);
        assert_eq!(r.bool("enabled").unwrap(), Some(true));
        assert_eq!(r.f64("ratio", 0.0..=10.0).unwrap(), Some(2.5));
        assert_eq!(r.f64("whole", 0.0..=10.0).unwrap(), Some(3.0));
        assert!(r.f64("ratio", 0.0..=1.0).unwrap_err().message.contains("from 0 to 1"));
        assert_eq!(r.u32("whole", 1..=10).unwrap(), Some(3));
        assert_eq!(r.get("whole").unwrap().usize(0..=usize::MAX).unwrap(), 3);
        let e = r.u32("whole", 5..=10).unwrap_err();
        assert_eq!(e.message, "expected an integer from 5 to 10, found an integer 3");
        let e = r.bool("whole").unwrap_err();
        assert_eq!(e.message, "expected a boolean (true or false), found an integer 3");
        assert_eq!(r.string_array("members").unwrap().unwrap(), vec!["1:a:9444".to_string(), "2:b:9444".to_string()]);
        let e = r.string_array("bad_list").unwrap_err();
        assert_eq!(e.key, "journal.raft.bad_list[1]");
        assert_eq!(e.message, "expected a string, found an integer 2");
        assert_eq!(e.line, Some(12));
        let e = r.string_array("enabled").unwrap_err();
        assert_eq!(e.message, "expected an array of strings, found a boolean true");

        assert_eq!(r.one_of("mode", &["fast", "slow"]).unwrap(), Some("fast"));
        let e = r.one_of("mode", &["fasst", "slow"]).unwrap_err();
        assert_eq!(e.message, "expected one of \"fasst\", \"slow\", found a string \"fast\" (did you mean \"fasst\"?)");
    }

    #[test]
    fn integer_ranges_and_overflow() {
        let f = TomlFile::parse("t.toml", "neg = -1\nbig = 5000000000\nz = 0\n").unwrap();
        let r = f.root();
        assert_eq!(
            r.u64("neg", 0..=u64::MAX).unwrap_err().message,
            "expected a non-negative integer, found an integer -1"
        );
        assert_eq!(
            r.u32("big", 0..=u32::MAX).unwrap_err().message,
            "expected a non-negative integer, found an integer 5000000000 (the largest allowed is 4294967295)"
        );
        assert_eq!(r.u64("z", 1..=u64::MAX).unwrap_err().message, "expected a positive integer, found an integer 0");
        assert_eq!(
            r.u64("z", 3..=u64::MAX).unwrap_err().message,
            "expected an integer of at least 3, found an integer 0"
        );
        let f = TomlFile::parse("t.toml", "x = nan\ny = inf\n").unwrap();
        assert!(f.root().f64("x", f64::MIN..=f64::MAX).is_err());
        assert!(f.root().f64("y", f64::MIN..=f64::MAX).is_err());
    }

    #[test]
    fn unknown_key_with_suggestion() {
        let f = TomlFile::parse("/etc/pact/journal.toml", "[journal]\nlisten_adr = \"x\"\n").unwrap();
        let j = f.root().section("journal").unwrap().unwrap();
        let e = j.check_keys(&["listen_addr", "data_dir"]).unwrap_err();
        assert_eq!(e.key, "journal.listen_adr");
        assert_eq!(e.line, Some(2));
        assert_eq!(
            e.to_string(),
            "/etc/pact/journal.toml:2: unknown key `journal.listen_adr` (did you mean `journal.listen_addr`?)"
        );
        // Nothing close: no suggestion.
        let e = j.check_keys(&["peers"]).unwrap_err();
        assert_eq!(e.message, "unknown key `journal.listen_adr`");
        assert!(j.check_keys(&["listen_adr"]).is_ok());
    }

    #[test]
    fn unknown_table_is_reported_at_its_header() {
        let f = TomlFile::parse("t.toml", "a = 1\n\n[telemetri]\nx = 1\n").unwrap();
        let e = f.root().check_keys(&["a", "telemetry"]).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.message, "unknown key `telemetri` (did you mean `telemetry`?)");
    }

    #[test]
    fn levenshtein_and_suggest() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("listen_adr", "listen_addr"), 1);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(suggest("listen_adr", &["data_dir", "listen_addr"]), Some("listen_addr"));
        // Short words: distance up to 2 is still offered.
        assert_eq!(suggest("typ", &["type"]), Some("type"));
        // len 30 → limit 10; len 6 → limit 2.
        assert_eq!(suggest("qqqqqq", &["listen_addr"]), None);
        assert_eq!(suggest("snapshot_intervall_sec", &["snapshot_interval"]), Some("snapshot_interval"));
        assert_eq!(suggest("x", &[]), None);
    }

    #[test]
    fn quoted_keys_in_paths_and_inline_tables() {
        let f = sample();
        let mounts = f
            .root()
            .section("vcluster")
            .unwrap()
            .unwrap()
            .section("x")
            .unwrap()
            .unwrap()
            .section("mounts")
            .unwrap()
            .unwrap();
        let m = mounts.section("/scratch").unwrap().unwrap();
        assert_eq!(m.path(), "vcluster.x.mounts.\"/scratch\"");
        assert_eq!(m.line(), Some(16));
        let e = m.check_keys(&["type", "sorce"]).unwrap_err();
        assert_eq!(e.message, "unknown key `vcluster.x.mounts.\"/scratch\".source` (did you mean `vcluster.x.mounts.\"/scratch\".sorce`?)");
        assert_eq!(join_key("a", "vm.swappiness"), "a.\"vm.swappiness\"");
        assert_eq!(join_key("", "ml-training"), "ml-training");
        assert_eq!(join_key("a", "q\"x"), "a.\"q\\\"x\"");
    }

    #[test]
    fn require_and_sections() {
        let f = sample();
        let root = f.root();
        let j = root.section("journal").unwrap().unwrap();
        let e = j.require("nope").unwrap_err();
        assert_eq!(e.to_string(), "/etc/pact/journal.toml:2: missing required key `journal.nope`");
        let svc = root.require("svc").unwrap().sections().unwrap();
        assert_eq!(svc.len(), 2);
        assert_eq!(svc[1].path(), "svc[1]");
        assert_eq!(svc[1].line(), Some(20));
        assert_eq!(svc[1].string("name").unwrap().as_deref(), Some("b"));
        // An inline array of inline tables reads the same way.
        let f2 = TomlFile::parse("t.toml", "svc = [{ name = \"a\" }, { name = \"b\" }]\n").unwrap();
        let svc = f2.root().require("svc").unwrap().sections().unwrap();
        assert_eq!(svc[1].path(), "svc[1]");
        assert_eq!(svc[1].string("name").unwrap().as_deref(), Some("b"));
        // Not a table.
        let e = j.section("data_dir").err().unwrap();
        assert!(e.message.starts_with("expected a table, found a string"), "{e}");
        let e = j.require("data_dir").unwrap().sections().err().unwrap();
        assert!(e.message.starts_with("expected an array of tables"), "{e}");
    }

    #[test]
    fn scalar_string_and_raw() {
        let f = TomlFile::parse("t.toml", "a = 10\nb = \"x\"\nc = 0.5\nd = true\ne = 0o644\n").unwrap();
        let r = f.root();
        assert_eq!(r.get("a").unwrap().scalar_string().unwrap(), "10");
        assert_eq!(r.get("b").unwrap().scalar_string().unwrap(), "x");
        assert_eq!(r.get("c").unwrap().scalar_string().unwrap(), "0.5");
        assert!(r.get("d").unwrap().scalar_string().is_err());
        assert_eq!(r.get("e").unwrap().raw(), Some("0o644"));
        assert_eq!(r.get("e").unwrap().i64().unwrap(), 0o644);
        assert_eq!(r.keys(), vec!["a", "b", "c", "d", "e"]);
        assert_eq!(r.fields().len(), 5);
    }

    #[test]
    fn long_strings_are_cut_in_messages() {
        let long = "y".repeat(200);
        let f = TomlFile::parse("t.toml", format!("a = \"{long}\"\n")).unwrap();
        let e = f.root().u64("a", 0..=1).unwrap_err();
        assert!(e.message.len() < 140, "{e}");
        assert!(e.message.ends_with("...\""), "{e}");
    }
}
