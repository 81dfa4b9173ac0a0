//! The policy engine: asked after the built-in role rules (`authz`) allowed a request, it may
//! only refuse more, never allow what they refused (they are the floor).
//!
//! Two kinds, one interface ([`PolicyEngine::evaluate`]):
//! - `rego` (the default): every `*.rego` file of the policy directory
//!   (`[policy.engine] policy_dir`, `PACT_POLICY_DIR`, default [`DEFAULT_POLICY_DIR`]), loaded
//!   once at start into the embedded evaluator (regorus, Rego v1 syntax). A syntax error stops
//!   `--check` and the start with the file and line. Each evaluation is bounded by
//!   [`EVAL_LIMIT`] of wall-clock time.
//! - `opa`: `POST {opa_endpoint}` with `{"input": ...}`, reading `result`, within
//!   [`OPA_TIMEOUT`].
//!
//! The decision is the document `data.pact` (for OPA: the `result` of the endpoint, e.g.
//! `/v1/data/pact`): `allow` true, or absent (no rule, or the package undefined), lets the
//! request through; any other value of `allow` (false, undefined-with-default, a non-boolean)
//! refuses it, with `deny_reason` (a string) as the message when there is one. An allowed
//! request with `require_approval` true is [`Decision::RequireApproval`]: an appended entry is
//! then held for a second person, other writes are refused. An engine that
//! cannot answer (OPA unreachable, an evaluation error or timeout) gives
//! [`Decision::Unavailable`]: `rpc` then refuses writes and lets reads fall back to the floor.

use crate::authz::Need;
use regorus::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the Rego files are read from unless configured otherwise.
pub const DEFAULT_POLICY_DIR: &str = "/etc/pact/policies";
/// The longest one Rego evaluation may run.
pub const EVAL_LIMIT: Duration = Duration::from_millis(250);
/// The longest one OPA exchange may take.
pub const OPA_TIMEOUT: Duration = Duration::from_secs(2);
/// The query whose value is the decision.
pub const QUERY: &str = "data.pact";
/// Most policy files loaded from the directory.
pub const MAX_FILES: usize = 1000;

/// What a request asks, as the policy sees it (`input`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Input {
    pub principal: String,
    pub role: String,
    pub principal_type: String,
    /// The wire method's name (`AppendEntry`, `GetOverlay`, ...).
    pub method: String,
    pub write: bool,
    /// The entry's type, lower case without its prefix (`commit`, `emergency_start`), when
    /// the request is about one entry.
    pub entry_type: Option<String>,
    /// `(kind, id)`: kind `global`, `vcluster` or `node`; None for requests not about a scope
    /// (a listing without a scope filter, the journal's status, membership).
    pub scope: Option<(String, String)>,
    /// The vCluster the request touches (a node's assigned vCluster).
    pub vcluster: Option<String>,
    pub node: Option<String>,
}

impl Input {
    pub fn action(&self) -> &'static str {
        if self.write {
            "write"
        } else {
            "read"
        }
    }

    pub fn need(&self) -> Need {
        if self.write {
            Need::Write
        } else {
            Need::Read
        }
    }

    /// The input document: `{principal, role, principal_type, method, action, entry_type,
    /// scope: {kind, id}, vcluster, node}`, absent values as null.
    pub fn to_value(&self) -> Value {
        let s = |v: &str| Value::from(v);
        let opt = |v: &Option<String>| v.as_deref().map(Value::from).unwrap_or(Value::Null);
        let mut m = BTreeMap::new();
        m.insert(s("principal"), s(&self.principal));
        m.insert(s("role"), s(&self.role));
        m.insert(s("principal_type"), s(&self.principal_type));
        m.insert(s("method"), s(&self.method));
        m.insert(s("action"), s(self.action()));
        m.insert(s("entry_type"), opt(&self.entry_type));
        let scope = match &self.scope {
            Some((kind, id)) => {
                let mut o = BTreeMap::new();
                o.insert(s("kind"), s(kind));
                o.insert(s("id"), s(id));
                Value::from(o)
            }
            None => Value::Null,
        };
        m.insert(s("scope"), scope);
        m.insert(s("vcluster"), opt(&self.vcluster));
        m.insert(s("node"), opt(&self.node));
        Value::from(m)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed, but only with a second person's approval (`data.pact.require_approval`).
    RequireApproval,
    /// Refused; the policy's reason.
    Deny(String),
    /// The engine did not answer (unreachable, an evaluation error); why.
    Unavailable(String),
}

/// The decision a `data.pact` document gives (Undefined: no such package).
pub fn decide(doc: &Value) -> Decision {
    let allow = match doc {
        Value::Object(o) => o.get(&Value::from("allow")).cloned().unwrap_or(Value::Undefined),
        Value::Undefined | Value::Null => Value::Undefined,
        other => {
            return Decision::Unavailable(format!(
                "{QUERY} is not an object but {}",
                other.to_json_str().unwrap_or_default()
            ))
        }
    };
    match allow {
        Value::Bool(true) | Value::Undefined if doc["require_approval"] == Value::Bool(true) => {
            Decision::RequireApproval
        }
        Value::Bool(true) | Value::Undefined => Decision::Allow,
        _ => {
            let reason = match &doc["deny_reason"] {
                Value::String(r) if !r.is_empty() => r.chars().filter(|c| !c.is_control()).take(300).collect(),
                _ => "denied by policy (data.pact.allow is not true)".to_string(),
            };
            Decision::Deny(reason)
        }
    }
}

/// One engine; cheap to clone for `opa`, a copy of the loaded policies for `rego`.
#[derive(Clone)]
pub enum PolicyEngine {
    Rego(Box<Rego>),
    Opa(Arc<Opa>),
}

#[derive(Clone)]
pub struct Rego {
    engine: regorus::Engine,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

pub struct Opa {
    pub endpoint: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
}

impl PolicyEngine {
    /// The engine `[policy]` asks for: None when evaluation is off (`enabled = false`, or
    /// `type = "builtin"`). Loads and parses the Rego files now.
    pub fn from_config(p: &crate::config::PolicyConfig) -> Result<Option<PolicyEngine>, String> {
        use crate::config::PolicyEngineType as T;
        if !p.enabled {
            return Ok(None);
        }
        match p.engine.engine_type.unwrap_or(T::Rego) {
            T::Builtin => Ok(None),
            T::Rego => {
                let dir = p.engine.policy_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_DIR));
                Ok(Some(PolicyEngine::Rego(Box::new(Rego::load(&dir)?))))
            }
            T::Opa => {
                let endpoint = p.engine.opa_endpoint.clone().ok_or_else(|| {
                    "[policy.engine] type = \"opa\" needs opa_endpoint (e.g. http://localhost:8181/v1/data/pact)"
                        .to_string()
                })?;
                Ok(Some(PolicyEngine::Opa(Arc::new(Opa::new(&endpoint, OPA_TIMEOUT)?))))
            }
        }
    }

    /// What the engine is, for logs and `--check`.
    pub fn describe(&self) -> String {
        match self {
            PolicyEngine::Rego(r) => format!("rego, {} file(s) from {}", r.files.len(), r.dir.display()),
            PolicyEngine::Opa(o) => format!("opa at {}", o.endpoint),
        }
    }

    pub fn evaluate(&mut self, input: &Input) -> Decision {
        match self {
            PolicyEngine::Rego(r) => r.evaluate(input),
            PolicyEngine::Opa(o) => o.evaluate(input),
        }
    }
}

impl Rego {
    /// Every `*.rego` in `dir` (not its subdirectories), in name order.
    pub fn load(dir: &Path) -> Result<Rego, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            format!(
                "policy directory {}: {e} (set [policy.engine] policy_dir or PACT_POLICY_DIR, or [policy] enabled = false)",
                dir.display()
            )
        })?;
        let mut files = Vec::new();
        for e in entries {
            let p = e.map_err(|e| format!("policy directory {}: {e}", dir.display()))?.path();
            if p.extension().is_some_and(|x| x == "rego") && p.is_file() {
                files.push(p);
            }
        }
        if files.len() > MAX_FILES {
            return Err(format!("policy directory {}: more than {MAX_FILES} .rego files", dir.display()));
        }
        files.sort();
        let mut sources = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            sources.push((f.display().to_string(), text));
        }
        let mut r = Rego::from_sources(&sources)?;
        r.dir = dir.to_path_buf();
        r.files = files;
        Ok(r)
    }

    /// Policies from `(name, text)` pairs; a parse error names the file and line.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Rego, String> {
        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: EVAL_LIMIT,
            check_interval: std::num::NonZeroU32::new(64).expect("non-zero"),
        });
        for (name, text) in sources {
            engine.add_policy(name.clone(), text.clone()).map_err(|e| format!("policy {name}: {e}"))?;
        }
        Ok(Rego { engine, dir: PathBuf::new(), files: Vec::new() })
    }

    pub fn evaluate(&mut self, input: &Input) -> Decision {
        self.engine.set_input(input.to_value());
        match self.engine.eval_query(QUERY.to_string(), false) {
            Ok(r) => match r.result.first().and_then(|r| r.expressions.first()) {
                Some(e) => decide(&e.value),
                None => Decision::Allow,
            },
            Err(e) => Decision::Unavailable(format!("rego evaluation failed: {e}")),
        }
    }
}

impl Opa {
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Opa, String> {
        let u = pact_proto::httpget::Url::parse(endpoint).map_err(|e| format!("[policy.engine] opa_endpoint: {e}"))?;
        let tls = if u.https {
            Some(pact_proto::httpget::tls_for_bundle(Path::new(pact_proto::httpget::SYSTEM_CA_BUNDLE))?)
        } else {
            None
        };
        Ok(Opa { endpoint: endpoint.to_string(), tls, timeout })
    }

    /// Blocking: one POST of `{"input": ...}`, reading `result` (absent: the package is
    /// undefined, so no rule refuses).
    pub fn evaluate(&self, input: &Input) -> Decision {
        let mut body = BTreeMap::new();
        body.insert(Value::from("input"), input.to_value());
        let body = match Value::from(body).to_json_str() {
            Ok(b) => b,
            Err(e) => return Decision::Unavailable(format!("the OPA request does not encode: {e}")),
        };
        let r = match pact_proto::httpget::post_json(&self.endpoint, self.tls.as_ref(), body.as_bytes(), self.timeout) {
            Ok(r) => r,
            Err(e) => return Decision::Unavailable(e.message),
        };
        if r.status != 200 {
            let text: String = r.text().chars().take(200).collect();
            return Decision::Unavailable(format!("{}: HTTP {}: {text}", self.endpoint, r.status));
        }
        match Value::from_json_str(&r.text()) {
            Ok(v) => decide(&v["result"]),
            Err(e) => Decision::Unavailable(format!("{}: the answer is not JSON: {e}", self.endpoint)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
package pact

default allow := true

# Writes to vc:secret are for platform admins only.
allow := false if {
    input.action == "write"
    input.vcluster == "secret"
    input.role != "pact-platform-admin"
}

deny_reason := "vc:secret is written by platform admins only" if {
    input.action == "write"
    input.vcluster == "secret"
    input.role != "pact-platform-admin"
}

# mallory may do nothing at all.
allow := false if input.principal == "mallory"

deny_reason := "mallory is suspended" if input.principal == "mallory"
"#;

    fn input(principal: &str, role: &str, write: bool, vc: &str) -> Input {
        Input {
            principal: principal.into(),
            role: role.into(),
            principal_type: "human".into(),
            method: if write { "AppendEntry" } else { "GetOverlay" }.into(),
            write,
            entry_type: write.then(|| "commit".to_string()),
            scope: Some(("vcluster".into(), vc.into())),
            vcluster: Some(vc.into()),
            node: None,
        }
    }

    fn rego(text: &str) -> Rego {
        Rego::from_sources(&[("test.rego".into(), text.into())]).unwrap()
    }

    #[test]
    fn the_input_document() {
        let mut i = input("alice", "pact-ops-ml", true, "ml");
        let j = i.to_value().to_json_str().unwrap();
        let v = Value::from_json_str(&j).unwrap();
        assert_eq!(v["principal"], Value::from("alice"));
        assert_eq!(v["role"], Value::from("pact-ops-ml"));
        assert_eq!(v["principal_type"], Value::from("human"));
        assert_eq!(v["method"], Value::from("AppendEntry"));
        assert_eq!(v["action"], Value::from("write"));
        assert_eq!(v["entry_type"], Value::from("commit"));
        assert_eq!(v["scope"]["kind"], Value::from("vcluster"));
        assert_eq!(v["scope"]["id"], Value::from("ml"));
        assert_eq!(v["vcluster"], Value::from("ml"));
        assert_eq!(v["node"], Value::Null);
        i.scope = None;
        i.write = false;
        let v = i.to_value();
        assert_eq!((v["scope"].clone(), v["action"].clone()), (Value::Null, Value::from("read")));
    }

    #[test]
    fn a_policy_refuses_what_it_says() {
        let mut r = rego(POLICY);
        assert_eq!(r.evaluate(&input("alice", "pact-ops-ml", true, "ml")), Decision::Allow);
        assert_eq!(
            r.evaluate(&input("alice", "pact-ops-secret", true, "secret")),
            Decision::Deny("vc:secret is written by platform admins only".into())
        );
        assert_eq!(r.evaluate(&input("root", "pact-platform-admin", true, "secret")), Decision::Allow);
        assert_eq!(r.evaluate(&input("alice", "pact-ops-secret", false, "secret")), Decision::Allow);
        assert_eq!(
            r.evaluate(&input("mallory", "pact-ops-ml", false, "ml")),
            Decision::Deny("mallory is suspended".into())
        );
    }

    #[test]
    fn missing_rules_allow_and_a_bare_false_denies() {
        // No package pact at all, or one without `allow`: the floor already decided.
        let mut r = rego("package other\n\nallow := false\n");
        assert_eq!(r.evaluate(&input("a", "pact-ops-ml", true, "ml")), Decision::Allow);
        let mut r = rego("package pact\n\ndeny_reason := \"x\"\n");
        assert_eq!(r.evaluate(&input("a", "pact-ops-ml", true, "ml")), Decision::Allow);
        let mut r = Rego::from_sources(&[]).unwrap();
        assert_eq!(r.evaluate(&input("a", "pact-ops-ml", true, "ml")), Decision::Allow);
        // `default allow := false` and no rule matching: refused, with a generic reason.
        let mut r = rego("package pact\n\ndefault allow := false\n\nallow if input.action == \"read\"\n");
        assert_eq!(r.evaluate(&input("a", "pact-ops-ml", false, "ml")), Decision::Allow);
        match r.evaluate(&input("a", "pact-ops-ml", true, "ml")) {
            Decision::Deny(m) => assert!(m.contains("data.pact.allow is not true"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A non-boolean allow refuses.
        let mut r = rego("package pact\n\nallow := \"yes\"\n");
        assert!(matches!(r.evaluate(&input("a", "b", true, "ml")), Decision::Deny(_)));
    }

    #[test]
    fn an_evaluation_error_is_unavailable() {
        // Two complete definitions with different values: a conflict at evaluation time.
        let mut r = rego("package pact\n\nallow := true if input.role\nallow := false if input.principal\n");
        match r.evaluate(&input("a", "b", true, "ml")) {
            Decision::Unavailable(m) => assert!(m.contains("rego evaluation failed"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = Rego::from_sources(&[("/p/bad.rego".into(), "package pact\n\nallow := if {\n".into())]).err().unwrap();
        assert!(e.contains("/p/bad.rego") && e.contains(":3"), "{e}");
        let dir = std::env::temp_dir().join(format!("pact-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.rego"), POLICY).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a policy").unwrap();
        let r = Rego::load(&dir).unwrap();
        assert_eq!(r.files, vec![dir.join("a.rego")]);
        std::fs::write(dir.join("b.rego"), "package pact\nallow :=\n").unwrap();
        let e = Rego::load(&dir).err().unwrap();
        assert!(e.contains("b.rego"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Rego::load(&dir).err().unwrap().contains("policy directory"));
    }

    #[test]
    fn opa_documents() {
        let v = Value::from_json_str(r#"{"allow": false, "deny_reason": "no"}"#).unwrap();
        assert_eq!(decide(&v), Decision::Deny("no".into()));
        assert_eq!(decide(&Value::from_json_str(r#"{"allow": true}"#).unwrap()), Decision::Allow);
        assert_eq!(decide(&Value::Undefined), Decision::Allow);
        let v = Value::from_json_str(r#"{"require_approval": true}"#).unwrap();
        assert_eq!(decide(&v), Decision::RequireApproval);
        let v = Value::from_json_str(r#"{"allow": false, "require_approval": true}"#).unwrap();
        assert!(matches!(decide(&v), Decision::Deny(_)));
        assert!(matches!(decide(&Value::from(3u64)), Decision::Unavailable(_)));
    }

    #[test]
    fn opa_over_http() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&req).contains("\"node\"") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let body = br#"{"result": {"allow": false, "deny_reason": "opa says no"}}"#;
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).unwrap();
            s.write_all(body).unwrap();
            String::from_utf8_lossy(&req).to_string()
        });
        let opa = Opa::new(&format!("http://127.0.0.1:{port}/v1/data/pact"), Duration::from_secs(2)).unwrap();
        assert_eq!(opa.evaluate(&input("a", "pact-ops-ml", true, "ml")), Decision::Deny("opa says no".into()));
        let req = t.join().unwrap();
        assert!(req.starts_with("POST /v1/data/pact HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Type: application/json"), "{req}");
        let sent = Value::from_json_str(req.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(sent["input"]["principal"], Value::from("a"), "{req}");
        assert_eq!(sent["input"]["action"], Value::from("write"), "{req}");
        // Nothing listening any more: unavailable, not allowed.
        assert!(matches!(opa.evaluate(&input("a", "b", false, "ml")), Decision::Unavailable(_)));
    }
}
