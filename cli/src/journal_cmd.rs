//! `pact journal ...`: the journal quorum's status and membership.

use crate::commands::connect;
use crate::output::Format;
use crate::settings::Settings;
use crate::Failure;
use nanoserde::SerJson;
use pact_proto::client::Client;
use pact_proto::journal::{
    ChangeMembershipRequest, ChangeMembershipResponse, JournalStatus, JournalStatusRequest, MembershipAction,
};
use pact_proto::Method;
use std::time::Duration;

pub const HELP: &str = "\
USAGE: pact journal status
       pact journal add-voter ID --raft-addr HOST:PORT --client-addr HOST:PORT
       pact journal add-learner ID --raft-addr HOST:PORT --client-addr HOST:PORT
       pact journal promote ID
       pact journal remove ID

status asks the journal at --endpoint for the membership, then asks every member for its own
view: Raft role, term, commit and applied index, and lag (how far its applied index is behind
the highest commit index seen). Members that do not answer are shown as unreachable, and the
command exits 5 if any voter is unreachable or no leader is known.

Membership changes need pact-platform-admin; they go to the leader through any journal and
return once applied. Add a journal (learner first, then promote, for a large catch-up) after
starting it with an empty data dir and the cluster CA.";

#[derive(SerJson, Debug, Clone)]
pub struct MemberRow {
    pub id: u64,
    pub membership: String,
    pub client_addr: String,
    pub raft_addr: String,
    pub reachable: bool,
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub lag: u64,
    pub error: String,
}

#[derive(SerJson, Debug, Clone)]
pub struct QuorumJson {
    pub leader_id: u64,
    pub healthy: bool,
    pub members: Vec<MemberRow>,
}

fn member_client(addr: &str, s: &Settings) -> Result<Client, String> {
    let tls = pact_proto::tls::client_config(&s.ca_cert).map_err(|e| e.to_string())?;
    let token = s.token.clone().unwrap_or_default();
    Client::connect(addr, tls, &token, Duration::from_secs(3).min(s.timeout)).map_err(|e| e.to_string())
}

pub struct Opts {
    pub raft_addr: Option<String>,
    pub client_addr: Option<String>,
}

#[derive(SerJson, Debug, Clone)]
pub struct MemberJson {
    pub id: u64,
    pub role: String,
    pub raft_addr: String,
    pub client_addr: String,
}

pub fn run(
    args: &[String],
    opts: &Opts,
    s: &Settings,
    connect_first: impl Fn() -> Result<Client, Failure>,
) -> Result<String, Failure> {
    let sub = args
        .first()
        .map(String::as_str)
        .ok_or_else(|| Failure::usage(format!("`pact journal` needs a subcommand\n\n{HELP}")))?;
    let id = || -> Result<u64, Failure> {
        let v = args.get(1).ok_or_else(|| Failure::usage(format!("`pact journal {sub}` needs a journal ID")))?;
        v.parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Failure::usage(format!("journal ID {v:?}: expected a positive integer")))
    };
    match sub {
        "status" => status(s, connect_first()?),
        "add-voter" | "add-learner" => {
            let action = if sub == "add-voter" { MembershipAction::AddVoter } else { MembershipAction::AddLearner };
            let need = |v: &Option<String>, flag: &str| {
                v.clone().ok_or_else(|| Failure::usage(format!("`pact journal {sub}` needs {flag} HOST:PORT")))
            };
            let raft_addr = need(&opts.raft_addr, "--raft-addr")?;
            let client_addr = need(&opts.client_addr, "--client-addr")?;
            change(s, ChangeMembershipRequest { action: action as i32, node_id: id()?, raft_addr, client_addr })
        }
        "promote" => change(
            s,
            ChangeMembershipRequest { action: MembershipAction::Promote as i32, node_id: id()?, ..Default::default() },
        ),
        "remove" => change(
            s,
            ChangeMembershipRequest { action: MembershipAction::Remove as i32, node_id: id()?, ..Default::default() },
        ),
        other => Err(Failure::usage(format!("unknown journal subcommand {other:?}\n\n{HELP}"))),
    }
}

fn change(s: &Settings, req: ChangeMembershipRequest) -> Result<String, Failure> {
    let mut c = connect(s)?;
    let r: ChangeMembershipResponse = c.call(Method::ChangeMembership, &req)?;
    Ok(match s.output {
        Format::Json => r
            .members
            .iter()
            .map(|m| MemberJson {
                id: m.id,
                role: m.role.clone(),
                raft_addr: m.raft_addr.clone(),
                client_addr: m.client_addr.clone(),
            })
            .collect::<Vec<_>>()
            .serialize_json(),
        Format::Text => {
            let mut out = String::from("membership now:\n");
            for m in &r.members {
                out.push_str(&format!("  {:>3}  {:<8} raft {}  client {}\n", m.id, m.role, m.raft_addr, m.client_addr));
            }
            out
        }
    })
}

fn status(s: &Settings, mut first: Client) -> Result<String, Failure> {
    let st: JournalStatus = first.call(Method::JournalStatus, &JournalStatusRequest {})?;
    let mut rows = Vec::new();
    for m in &st.members {
        let member = m.member.clone().unwrap_or_default();
        let mut row = MemberRow {
            id: m.id,
            membership: m.role.clone(),
            client_addr: member.client_addr.clone(),
            raft_addr: member.raft_addr.clone(),
            reachable: false,
            role: "unreachable".into(),
            term: 0,
            leader_id: 0,
            commit_index: 0,
            applied_index: 0,
            lag: 0,
            error: String::new(),
        };
        let answer = if m.id == st.node_id {
            Ok(st.clone())
        } else if member.client_addr.is_empty() {
            Err("no client address recorded".to_string())
        } else {
            member_client(&member.client_addr, s).and_then(|mut c| {
                c.call::<_, JournalStatus>(Method::JournalStatus, &JournalStatusRequest {}).map_err(|e| e.to_string())
            })
        };
        match answer {
            Ok(x) => {
                row.reachable = true;
                row.role = x.role;
                row.term = x.term;
                row.leader_id = x.leader_id;
                row.commit_index = x.commit_index;
                row.applied_index = x.applied_index;
            }
            Err(e) => row.error = e,
        }
        rows.push(row);
    }
    let top_commit = rows.iter().map(|r| r.commit_index).max().unwrap_or(0);
    for r in rows.iter_mut().filter(|r| r.reachable) {
        r.lag = top_commit.saturating_sub(r.applied_index);
    }
    let leader_id = rows.iter().find(|r| r.role == "leader").map(|r| r.id).unwrap_or(0);
    let healthy = leader_id != 0 && rows.iter().filter(|r| r.membership == "voter").all(|r| r.reachable);
    let q = QuorumJson { leader_id, healthy, members: rows };
    let out = match s.output {
        Format::Json => q.serialize_json(),
        Format::Text => {
            let mut out = format!(
                "{:>4}  {:<8} {:<13} {:>6} {:>10} {:>10} {:>6}  {}\n",
                "ID", "MEMBER", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "CLIENT ADDRESS"
            );
            for r in &q.members {
                out.push_str(&format!(
                    "{:>4}  {:<8} {:<13} {:>6} {:>10} {:>10} {:>6}  {}{}\n",
                    r.id,
                    r.membership,
                    r.role,
                    r.term,
                    r.commit_index,
                    r.applied_index,
                    r.lag,
                    r.client_addr,
                    if r.error.is_empty() { String::new() } else { format!("  ({})", r.error) }
                ));
            }
            out.push_str(&match (q.leader_id, q.healthy) {
                (0, _) => "no leader\n".to_string(),
                (l, true) => format!("leader: {l}; quorum healthy\n"),
                (l, false) => format!("leader: {l}; some voters are unreachable\n"),
            });
            out
        }
    };
    if !q.healthy {
        // The table still goes out (on stderr with the failure) so scripts see why.
        return Err(Failure::new(5, format!("the journal quorum is not healthy\n{out}")));
    }
    Ok(out)
}
