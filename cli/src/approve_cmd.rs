//! `pact approve list|accept|deny`: two-person approvals (ListPendingApprovals,
//! DecideApproval). The journal decides who may decide: the requester never, a viewer, an
//! agent or the AI never (exit 2); an approval already decided or expired is exit 1.

use crate::output::{self, Format};
use crate::settings::Settings;
use crate::Failure;
use nanoserde::SerJson;
use pact_proto::policy::{
    DecideApprovalRequest, DecideApprovalResponse, ListApprovalsRequest, ListApprovalsResponse, PendingApproval,
};
use pact_proto::Method;

pub const HELP: &str = "\
USAGE: pact approve list [--all] [--scope node:ID|vc:NAME|global]
       pact approve accept ID
       pact approve deny ID -m REASON

Two-person approval. A change by pact-regulated-<vc>, or by pact-ops-<vc> on a vCluster whose
policy sets two_person_approval (or regulated), is not applied at once: the journal holds it
and `pact commit`, `pact apply` ... print `pending approval ID` (exit 0). A second person
decides it before it expires (the policy's approval_timeout_seconds, default 1800 s):

list      approvals waiting for a decision (--all: decided and expired ones too), newest
          first, those of vCluster(s) you may read; --output json for scripts.
accept    approve ID: the journal records the decision and applies the held change, with
          the requester as its author, in one step.
deny      reject ID; -m REASON is required and recorded.

Deciders: pact-platform-admin, pact-ops-<vc> or pact-regulated-<vc> of the change's
vCluster, never the person who asked. Exit codes: 0 done, 1 unknown/decided/expired ID,
2 not allowed to decide, 5 journal unreachable.";

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct ApprovalJson {
    pub id: String,
    pub status: String,
    pub scope: String,
    pub action: String,
    pub requester: String,
    pub approver: String,
    pub reason: String,
    pub created_at: String,
    pub expires_at: String,
}

#[derive(SerJson, Debug, Clone, PartialEq)]
pub struct DecisionJson {
    pub id: String,
    pub decision: String,
    /// The APPROVAL_DECISION entry; an accepted change is the entry right after it.
    pub sequence: u64,
}

#[derive(Clone, Copy)]
pub struct Opts<'a> {
    pub all: bool,
    pub scope: Option<&'a str>,
    pub message: Option<&'a str>,
}

use pact_proto::approval_status_text as status_text;

fn json(a: &PendingApproval) -> ApprovalJson {
    ApprovalJson {
        id: a.approval_id.clone(),
        status: status_text(a.status).into(),
        scope: output::scope_text(a.scope.as_ref()),
        action: a.action.clone(),
        requester: a.requester.as_ref().map(|r| format!("{} ({})", r.principal, r.role)).unwrap_or_default(),
        approver: a.approver.as_ref().map(|r| format!("{} ({})", r.principal, r.role)).unwrap_or_default(),
        reason: a.reason.clone(),
        created_at: output::rfc3339(a.created_at.as_ref()),
        expires_at: output::rfc3339(a.expires_at.as_ref()),
    }
}

/// Checks the command line; nothing connects before it passes.
pub fn check(args: &[String], opts: &Opts<'_>) -> Result<(), Failure> {
    let sub = args
        .first()
        .map(String::as_str)
        .ok_or_else(|| Failure::usage(format!("`pact approve` needs a subcommand\n\n{HELP}")))?;
    match sub {
        "list" => {
            if args.len() > 1 || opts.message.is_some() {
                return Err(Failure::usage("`pact approve list` takes only --all and --scope"));
            }
        }
        "accept" | "deny" => {
            let id = args.get(1).ok_or_else(|| Failure::usage(format!("`pact approve {sub}` needs ID")))?;
            if id.parse::<u64>().map_or(true, |v| v == 0) {
                return Err(Failure::usage(format!(
                    "{id:?} is not an approval id (the number `pact approve list` shows)"
                )));
            }
            if args.len() > 2 || opts.all || opts.scope.is_some() {
                return Err(Failure::usage(format!(
                    "`pact approve {sub}` takes ID{}",
                    if sub == "deny" { " -m REASON" } else { "" }
                )));
            }
            match (sub, opts.message) {
                ("deny", None) => return Err(Failure::usage("`pact approve deny ID` needs -m REASON")),
                ("deny", Some(m)) if m.trim().is_empty() => return Err(Failure::usage("the reason is empty")),
                ("accept", Some(_)) => return Err(Failure::usage("`pact approve accept` takes no -m")),
                _ => {}
            }
        }
        other => return Err(Failure::usage(format!("unknown approve subcommand {other:?}\n\n{HELP}"))),
    }
    Ok(())
}

pub fn run(args: &[String], opts: &Opts<'_>, s: &Settings) -> Result<String, Failure> {
    check(args, opts)?;
    let scope = opts.scope.map(crate::commands::parse_scope).transpose()?;
    let mut c = crate::commands::connect(s)?;
    let sub = args[0].as_str();
    if sub == "list" {
        let r: ListApprovalsResponse = c.call(
            Method::ListPendingApprovals,
            &ListApprovalsRequest { scope_filter: scope, include_decided: opts.all },
        )?;
        let rows: Vec<ApprovalJson> = r.approvals.iter().map(json).collect();
        return Ok(match s.output {
            Format::Json => rows.serialize_json(),
            Format::Text if rows.is_empty() => {
                if opts.all { "no approvals\n" } else { "no pending approvals\n" }.to_string()
            }
            Format::Text => {
                let mut out = String::new();
                for a in rows {
                    out.push_str(&format!(
                        "{:>6}  {:<8}  {:<16}  by {}  expires {}\n        {}\n",
                        a.id, a.status, a.scope, a.requester, a.expires_at, a.action
                    ));
                    if !a.approver.is_empty() {
                        let why = if a.reason.is_empty() { String::new() } else { format!(": {}", a.reason) };
                        out.push_str(&format!("        {} by {}{why}\n", a.status, a.approver));
                    }
                }
                out
            }
        });
    }
    let id = args[1].clone();
    let decision = if sub == "accept" { "approved" } else { "rejected" };
    let r: DecideApprovalResponse = c.call(
        Method::DecideApproval,
        &DecideApprovalRequest {
            approval_id: id.clone(),
            decision: decision.into(),
            reason: opts.message.map(str::to_string),
        },
    )?;
    Ok(match s.output {
        Format::Json => DecisionJson { id, decision: decision.into(), sequence: r.sequence }.serialize_json(),
        Format::Text if sub == "accept" => format!(
            "approval {id} approved (seq:{}); the held change is applied (seq:{})\n",
            r.sequence,
            r.sequence + 1
        ),
        Format::Text => format!("approval {id} rejected (seq:{})\n", r.sequence),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_lines() {
        let none = Opts { all: false, scope: None, message: None };
        assert!(check(&a(&["list"]), &none).is_ok());
        assert!(check(&a(&["accept", "12"]), &none).is_ok());
        assert!(check(&a(&["deny", "12"]), &Opts { message: Some("no"), ..none }).is_ok());
        assert!(check(&a(&["deny", "12"]), &none).unwrap_err().message.contains("-m REASON"));
        assert!(check(&a(&["deny", "12"]), &Opts { message: Some(" "), ..none }).is_err());
        assert!(check(&a(&["accept"]), &none).unwrap_err().message.contains("needs ID"));
        assert!(check(&a(&["accept", "x"]), &none).unwrap_err().message.contains("not an approval id"));
        assert!(check(&a(&["accept", "0"]), &none).is_err());
        assert!(check(&a(&["accept", "1", "2"]), &none).is_err());
        assert!(check(&a(&["frobnicate"]), &none).is_err());
        assert!(check(&a(&[]), &none).is_err());
    }
}
