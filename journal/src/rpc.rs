//! The config/log service: one function per method. Every request is authenticated first;
//! reads are served from this replica's store, writes go through raft.

use crate::audit::{self, identity_of};
use crate::authz;
use crate::shard::ShardRef;
use crate::shared::Shared;
use crate::state;
use pact_proto::auth::{AuthError, Caller};
use pact_proto::config::{scope::Target, ConfigEntry, PolicySpec, Scope};
use pact_proto::journal::{
    apply_result, command, AppendEntryRequest, ChangeMembershipRequest, GetEntryRequest, GetNodeStateRequest,
    GetOverlayRequest, JournalStatus, ListEntriesRequest, Member, MemberStatus, MembershipAction, SetNodeStateRequest,
};
use pact_proto::policy::{
    ApprovalStatus, DecideApprovalRequest, DecideApprovalResponse, ListApprovalsRequest, ListApprovalsResponse,
    PendingApproval,
};
use pact_proto::wire::Request;
use pact_proto::{ErrorCode, Method, RemoteError};
use prost::Message;
use std::sync::atomic::Ordering;

/// ListEntries returns at most this many entries per call.
pub const MAX_LIST_LIMIT: u32 = 10_000;
pub const DEFAULT_LIST_LIMIT: u32 = 100;

pub enum Reply {
    One(Vec<u8>),
    Stream(Vec<Vec<u8>>),
}

pub(crate) fn err(code: ErrorCode, msg: impl Into<String>) -> RemoteError {
    RemoteError::new(code, msg)
}

pub(crate) fn decode<M: Message + Default>(method: Method, body: &[u8]) -> Result<M, RemoteError> {
    M::decode(body)
        .map_err(|e| err(ErrorCode::InvalidArgument, format!("{} request does not decode: {e}", method.name())))
}

pub(crate) fn internal(e: impl std::fmt::Display) -> RemoteError {
    err(ErrorCode::Internal, e.to_string())
}

/// What the connection a request came on says about its sender.
#[derive(Clone, Debug, Default)]
pub struct Conn {
    pub peer: Option<std::net::SocketAddr>,
    /// The client certificate chain TLS verified against the cluster CA (empty: none).
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// What checking that certificate once found (see `enroll::CertMemo`).
    pub memo: crate::enroll::CertMemo,
}

/// Who sent a request: the bearer token's subject when there is a token; else, on a
/// connection with an agent certificate, that node's agent (`enroll::check_client_chain`,
/// checked on every request, so a decommissioned node is refused on open connections too).
/// A token signed with a key the cached JWKS does not hold makes one refresh (rate-limited
/// by the verifier) on the executor's blocking pool, so the shard keeps serving while the
/// IdP answers.
pub async fn authenticate(shard: &ShardRef, conn: &Conn, token: &str, method: Method) -> Result<Caller, RemoteError> {
    let r = if token.is_empty() && !conn.chain.is_empty() {
        // As of this journal's latest acknowledged write: a decommissioning acknowledged here
        // is in force for the very next request.
        shard.wait_stored().await?;
        match crate::enroll::check_client_chain(&shard.store, &conn.chain, &conn.memo) {
            Ok(node) => Ok(Caller {
                principal: node,
                role: authz::SERVICE_AGENT.to_string(),
                principal_type: "agent".to_string(),
            }),
            Err(crate::enroll::CertRefusal::Refused(why)) => {
                Err(err(ErrorCode::Unauthenticated, format!("client certificate refused: {why}")))
            }
            // A certificate that names no agent (a host certificate from setup-ca.sh, say) and
            // no token: refused as a certificate, so an agent holding one enrolls for its own.
            Err(crate::enroll::CertRefusal::NotAgent) => Err(err(
                ErrorCode::Unauthenticated,
                "client certificate refused: it names no enrolled agent (pact-service-agent/NODE) and the request carries no token",
            )),
        }
    } else {
        verify_token(shard, token).await
    };
    if let Err(e) = &r {
        record_denial(shard, None, method, &e.message);
    }
    r
}

/// Puts a refused request on the record (bounded: see `audit`), without delaying the answer.
pub fn record_denial(shard: &ShardRef, caller: Option<&Caller>, method: Method, why: &str) {
    record(shard, caller, method, audit::Kind::Denied, why);
}

/// Appends an audit record in the background: the answer to the request does not wait.
fn record(shard: &ShardRef, caller: Option<&Caller>, method: Method, kind: audit::Kind, why: &str) {
    let Some(entry) = audit::record(&shard.audit, shard.shared.node_id, caller, method.name(), kind, why) else {
        Shared::inc(&shard.shared.denials_unrecorded_total);
        return;
    };
    if kind == audit::Kind::Denied {
        Shared::inc(&shard.shared.denials_recorded_total);
    }
    let s = shard.clone();
    glommio::spawn_local(async move {
        if let Err(e) = s.propose(command::Op::AppendEntry(entry)).await {
            crate::debug!("an audit record was not appended: {e}");
        }
    })
    .detach();
}

/// What a policy engine must be asked about, so that without one it is refused: deciding an
/// approval, an emergency, writes by a regulated role, and writes to a vCluster whose policy
/// asks for two-person approval or marks it regulated.
fn policy_dependent(
    shard: &ShardRef,
    caller: &Caller,
    method: Method,
    entry_type: Option<i32>,
    target: Option<&authz::Target<'_>>,
) -> bool {
    use pact_proto::config::EntryType;
    if method == Method::DecideApproval || matches!(authz::role(caller), authz::Role::Regulated(_)) {
        return true;
    }
    let kind = entry_type.and_then(|t| EntryType::try_from(t).ok());
    if matches!(
        kind,
        Some(
            EntryType::EmergencyStart
                | EntryType::EmergencyEnd
                | EntryType::PendingApproval
                | EntryType::ApprovalDecision
        )
    ) {
        return true;
    }
    // A policy that cannot be read counts as one that asks for approval.
    vcluster_policy(shard, target.and_then(authz::vcluster_of))
        .map(|p| p.is_some_and(|p| p.two_person_approval == Some(true) || p.regulated == Some(true)))
        .unwrap_or(true)
}

/// The target a node-scoped request touches: the node and the vCluster it is assigned to.
fn node_target<'a>(shard: &ShardRef, node: &'a str) -> Result<authz::Target<'a>, RemoteError> {
    let txn = shard.store.read_txn().map_err(internal)?;
    let vc = shard.store.get_node_record(&txn, node).map_err(internal)?.map(|r| r.assigned_vcluster);
    Ok(authz::Target::Node { node, vcluster: vc.filter(|v| !v.is_empty()) })
}

/// The target of an entry's scope.
fn scope_target<'a>(shard: &ShardRef, scope: Option<&'a Scope>) -> Result<authz::Target<'a>, RemoteError> {
    match scope.and_then(|s| s.target.as_ref()) {
        Some(Target::NodeId(n)) => node_target(shard, n),
        Some(Target::VclusterId(v)) => Ok(authz::Target::VCluster(v)),
        Some(Target::Global(_)) | None => Ok(authz::Target::Global),
    }
}

fn denied(m: String) -> RemoteError {
    err(ErrorCode::PermissionDenied, m)
}

/// Most policy queries to OPA in flight per shard; past it a query counts as unanswered.
pub const MAX_OPA_IN_FLIGHT: u32 = 64;

/// Asks the policy engine, when one is configured, about a request the built-in role rules
/// already allowed: it may refuse (`PolicyRejected`), never allow more. While the engine does
/// not answer, the built-in rules decide alone, except that what depends on policy
/// (`policy_dependent`) is refused; each such decision is recorded (`degraded:` or
/// `denied:`). `Ok(true)`: the policy asks for two-person approval, which only an appended
/// entry can have (`can_hold`); another write is then refused, a read ignores it.
async fn consult_hold(
    shard: &ShardRef,
    caller: &Caller,
    method: Method,
    need: authz::Need,
    entry_type: Option<i32>,
    target: Option<&authz::Target<'_>>,
    can_hold: bool,
) -> Result<bool, RemoteError> {
    match evaluate(shard, caller, method, need, entry_type, target).await? {
        crate::policy::Decision::RequireApproval if need == authz::Need::Write && !can_hold => Err(err(
            ErrorCode::PolicyRejected,
            format!(
                "the policy asks for two-person approval, which only appended entries can have; {} is refused",
                method.name()
            ),
        )),
        crate::policy::Decision::RequireApproval => Ok(need == authz::Need::Write),
        _ => Ok(false),
    }
}

/// [`consult_hold`] for requests that cannot be held.
async fn consult(
    shard: &ShardRef,
    caller: &Caller,
    method: Method,
    need: authz::Need,
    entry_type: Option<i32>,
    target: Option<&authz::Target<'_>>,
) -> Result<(), RemoteError> {
    consult_hold(shard, caller, method, need, entry_type, target, false).await.map(|_| ())
}

/// The engine's decision: Allow or RequireApproval, else the refusal.
async fn evaluate(
    shard: &ShardRef,
    caller: &Caller,
    method: Method,
    need: authz::Need,
    entry_type: Option<i32>,
    target: Option<&authz::Target<'_>>,
) -> Result<crate::policy::Decision, RemoteError> {
    use crate::policy::{Decision, Input, PolicyEngine};
    refresh_policy(shard);
    let Some(engine) = &shard.policy else { return Ok(Decision::Allow) };
    let input = Input {
        principal: caller.principal.clone(),
        role: caller.role.clone(),
        principal_type: caller.principal_type.clone(),
        method: method.name().to_string(),
        write: need == authz::Need::Write,
        entry_type: entry_type
            .and_then(|t| pact_proto::config::EntryType::try_from(t).ok())
            .map(|t| t.as_str_name().trim_start_matches("ENTRY_TYPE_").to_ascii_lowercase()),
        scope: target.map(|t| match t {
            authz::Target::Global => ("global".to_string(), String::new()),
            authz::Target::VCluster(v) => ("vcluster".to_string(), v.to_string()),
            authz::Target::Node { node, .. } => ("node".to_string(), node.to_string()),
        }),
        vcluster: target.and_then(authz::vcluster_of).map(str::to_string),
        node: match target {
            Some(authz::Target::Node { node, .. }) => Some(node.to_string()),
            _ => None,
        },
    };
    let opa = match &*engine.borrow() {
        PolicyEngine::Opa(o) => Some(o.clone()),
        PolicyEngine::Rego(_) => None,
    };
    let decision = match opa {
        // Rego runs here, bounded by its evaluation time limit.
        None => engine.borrow_mut().evaluate(&input),
        Some(o) => opa_decision(shard, o, input.clone()).await,
    };
    match decision {
        Decision::Allow | Decision::RequireApproval => Ok(decision),
        Decision::Deny(why) => Err(err(ErrorCode::PolicyRejected, format!("denied by policy: {why}"))),
        Decision::Unavailable(why) => {
            // Degraded: the built-in role rules (the cached bindings) still decide, except for
            // what depends on policy itself, which is refused. Either way it is on the record.
            Shared::inc(&shard.shared.policy_degraded_total);
            if input.write && policy_dependent(shard, caller, method, entry_type, target) {
                // Recorded as a refusal by `handle` (PolicyRejected).
                return Err(err(
                    ErrorCode::PolicyRejected,
                    format!(
                        "policy engine unavailable ({why}): {} depends on policy (two-person approval, a regulated vCluster, an emergency) and is refused until it answers",
                        method.name()
                    ),
                ));
            }
            let line = format!(
                "{} allowed on the built-in role rules alone; policy engine unavailable ({why})",
                input.action()
            );
            // On the record (`degraded:`), within the same bound as refusals.
            record(shard, Some(caller), method, audit::Kind::Degraded, &line);
            let now = std::time::Instant::now();
            if shard.policy_warned.get().is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(10)) {
                shard.policy_warned.set(Some(now));
                crate::warn!("{} {line} (by {})", method.name(), caller.principal);
            }
            Ok(Decision::Allow)
        }
    }
}

/// Takes the policies a SIGHUP reloaded, once per reload.
fn refresh_policy(shard: &ShardRef) {
    let g = shard.shared.policy_generation.load(Ordering::Relaxed);
    if g == shard.policy_seen.get() {
        return;
    }
    if let (Some(cell), Ok(slot)) = (&shard.policy, shard.shared.policy_reload.lock()) {
        if let Some(p) = slot.as_ref() {
            *cell.borrow_mut() = p.clone();
        }
    }
    shard.policy_seen.set(g);
}

/// One OPA query on a thread of its own (the exchange blocks for up to its timeout; the
/// shard's blocking pool also carries the store's commits), polled from the shard.
async fn opa_decision(
    shard: &ShardRef,
    opa: std::sync::Arc<crate::policy::Opa>,
    input: crate::policy::Input,
) -> crate::policy::Decision {
    use crate::policy::Decision;
    if shard.opa_in_flight.get() >= MAX_OPA_IN_FLIGHT {
        return Decision::Unavailable(format!("{MAX_OPA_IN_FLIGHT} policy queries already in flight on this shard"));
    }
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    let out = slot.clone();
    let spawned = std::thread::Builder::new().name("opa".into()).spawn(move || {
        let d = opa.evaluate(&input);
        if let Ok(mut s) = out.lock() {
            *s = Some(d);
        }
    });
    let Ok(thread) = spawned else { return Decision::Unavailable("cannot start a thread for the OPA query".into()) };
    shard.opa_in_flight.set(shard.opa_in_flight.get() + 1);
    let mut pause = std::time::Duration::from_micros(100);
    let d = loop {
        let finished = thread.is_finished();
        if let Some(d) = slot.lock().ok().and_then(|mut s| s.take()) {
            break d;
        }
        if finished {
            break Decision::Unavailable("the OPA query ended without an answer".into());
        }
        glommio::timer::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(5));
    };
    shard.opa_in_flight.set(shard.opa_in_flight.get() - 1);
    d
}

/// `caller` may `need` on what `scope` names.
fn allow(shard: &ShardRef, caller: &Caller, need: authz::Need, scope: Option<&Scope>) -> Result<(), RemoteError> {
    authz::check(caller, need, &scope_target(shard, scope)?).map_err(denied)
}

/// A listing filtered to `scope` (None: everything, narrowed later to what the caller may
/// read): the role check on the scope, then the policy engine.
async fn check_scope_read(
    shard: &ShardRef,
    caller: &Caller,
    method: Method,
    scope: Option<&Scope>,
) -> Result<(), RemoteError> {
    let target = scope.map(|s| scope_target(shard, Some(s))).transpose()?;
    if let Some(t) = &target {
        authz::check(caller, authz::Need::Read, t).map_err(denied)?;
    }
    consult(shard, caller, method, authz::Need::Read, None, target.as_ref()).await
}

/// Whether `caller` may see entry `e` (reads of lists are filtered by this).
/// One node's assignment is read once per listing, from the listing's own transaction.
fn may_read(
    shard: &ShardRef,
    txn: &heed::RoTxn,
    assigned: &std::cell::RefCell<std::collections::HashMap<String, Option<String>>>,
    caller: &Caller,
    e: &ConfigEntry,
) -> bool {
    let target = match e.scope.as_ref().and_then(|s| s.target.as_ref()) {
        Some(Target::NodeId(n)) => {
            let vcluster = assigned
                .borrow_mut()
                .entry(n.clone())
                .or_insert_with(|| {
                    let rec = shard.store.get_node_record(txn, n).ok().flatten();
                    rec.map(|r| r.assigned_vcluster).filter(|v| !v.is_empty())
                })
                .clone();
            authz::Target::Node { node: n, vcluster }
        }
        Some(Target::VclusterId(v)) => authz::Target::VCluster(v),
        Some(Target::Global(_)) | None => authz::Target::Global,
    };
    authz::check(caller, authz::Need::Read, &target).is_ok()
}

async fn verify_token(shard: &ShardRef, token: &str) -> Result<Caller, RemoteError> {
    let Some(v) = &shard.verifier else {
        return Err(err(
            ErrorCode::Unauthenticated,
            "this journal has no token key source configured (set [policy.iam] jwks_url or oidc_issuer for JWKS, or PACT_OIDC_HMAC_SECRET / [policy.iam] hmac_secret, or start with --dev)",
        ));
    };
    let unauthenticated = |e: AuthError| err(ErrorCode::Unauthenticated, e.to_string());
    match v.verify(token) {
        Err(AuthError::UnknownKey(_)) => {
            let fetcher = v.clone();
            match glommio::executor().spawn_blocking(move || fetcher.refresh()).await {
                Ok(n) => crate::info!("token keys refreshed: {n} key(s) from the issuer's JWKS"),
                Err(e) => crate::debug!("token keys not refreshed: {e}"),
            }
            v.verify(token).map_err(unauthenticated)
        }
        r => r.map_err(unauthenticated),
    }
}

fn is_read(m: Method) -> bool {
    matches!(
        m,
        Method::GetEntry
            | Method::ListEntries
            | Method::GetNodeState
            | Method::GetOverlay
            | Method::JournalStatus
            | Method::ListPendingApprovals
    )
}

pub async fn handle(shard: &ShardRef, conn: &Conn, method: Method, req: &Request) -> Result<Reply, RemoteError> {
    if let Some(r) = crate::enroll_rpc::handle_unauthenticated(shard, conn, method, req).await {
        return r;
    }
    let caller = authenticate(shard, conn, &req.bearer_token, method).await?;
    let r = match crate::enroll_rpc::handle(shard, conn, method, req, &caller).await {
        Some(r) => r,
        None => handle_as(shard, method, req, &caller).await,
    };
    if let Err(e) = &r {
        if matches!(e.code, ErrorCode::PermissionDenied | ErrorCode::PolicyRejected) {
            record_denial(shard, Some(&caller), method, &e.message);
        }
    }
    r
}

async fn handle_as(shard: &ShardRef, method: Method, req: &Request, caller: &Caller) -> Result<Reply, RemoteError> {
    let body = &req.body[..];
    if req.linearizable && is_read(method) {
        // Read index: wait until this replica has applied what the leader had committed.
        shard.read_barrier().await?;
    }
    if is_read(method) {
        // Writes are answered at commit time, a moment before their applied state is stored:
        // a read waits for that, so a client always reads what it was told was written.
        shard.wait_stored().await?;
    }
    match method {
        Method::AppendEntry => {
            let r: AppendEntryRequest = decode(method, body)?;
            let mut entry: ConfigEntry = r.entry.ok_or_else(|| err(ErrorCode::InvalidArgument, "entry is missing"))?;
            // The author is whoever the verified token says; the body cannot claim otherwise.
            entry.author = Some(identity_of(caller));
            entry.sequence = 0;
            entry.timestamp = None;
            if crate::enroll::is_enrollment_type(entry.entry_type) || !entry.enrollment.is_empty() {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    "NODE_ENROLLED, CERT_SIGNED and NODE_DECOMMISSIONED entries are made by the enrollment methods (pact enroll, pact node enroll|decommission), not appended",
                ));
            }
            state::validate_entry(&entry).map_err(|m| err(ErrorCode::InvalidArgument, m))?;
            let kind = pact_proto::config::EntryType::try_from(entry.entry_type)
                .map_err(|_| err(ErrorCode::InvalidArgument, "unknown entry type"))?;
            if !entry.approval.is_empty() {
                return Err(err(ErrorCode::InvalidArgument, "approval records are set by the journal, not by clients"));
            }
            // What a non-admin may do depends on stored state (the node's assignment, the
            // vCluster's policy): read it as of the caller's own last write. A platform admin's
            // append depends on none of it, so it does not wait for the previous write's
            // applied state to be stored (that wait costs a lone client about a millisecond).
            if authz::role(caller) != authz::Role::Admin {
                shard.wait_stored().await?;
            }
            let target = scope_target(shard, entry.scope.as_ref())?;
            let policy = vcluster_policy(shard, authz::vcluster_of(&target))?;
            let two_person =
                policy.as_ref().is_some_and(|p| p.two_person_approval == Some(true) || p.regulated == Some(true));
            let mut gate = authz::check_append(caller, kind, &target, two_person).map_err(denied)?;
            if let Some(vc) = (kind == pact_proto::config::EntryType::NodeMoved).then_some(&entry.target_vcluster) {
                // Moving a node also acts on the vCluster it goes to.
                authz::check(caller, authz::Need::Write, &authz::Target::VCluster(vc)).map_err(denied)?;
            }
            let w = authz::Need::Write;
            if consult_hold(shard, caller, method, w, Some(entry.entry_type), Some(&target), true).await? {
                gate = authz::Gate::Approval;
            }
            if let Some(p) = entry.parent {
                let mut next = next_sequence(shard)?;
                if p >= next {
                    // A platform admin's append did not wait for the store above: the parent
                    // may be a write acknowledged a moment ago and not stored yet. Look again
                    // as of it before refusing (apply checks the parent again either way).
                    shard.wait_stored().await?;
                    next = next_sequence(shard)?;
                }
                if p == 0 || p >= next {
                    return Err(err(
                        ErrorCode::FailedPrecondition,
                        format!("parent {p} is not an earlier entry (the next sequence is {next})"),
                    ));
                }
            }
            check_assignment(shard, &entry).await?;
            let held = gate == authz::Gate::Approval;
            if held {
                let timeout = policy.and_then(|p| p.approval_timeout_seconds).filter(|t| *t > 0);
                entry = pending_entry(shard, entry, caller, timeout.unwrap_or(crate::approval::DEFAULT_TIMEOUT_SECS))?;
            }
            let result = shard.propose(command::Op::AppendEntry(entry)).await?;
            match result.result {
                Some(apply_result::Result::Appended(mut a)) => {
                    shard.shared.last_sequence.fetch_max(a.sequence, Ordering::Relaxed);
                    if held {
                        a.pending_approval_id = crate::approval::id_of(a.sequence);
                    }
                    Ok(Reply::One(a.encode_to_vec()))
                }
                Some(apply_result::Result::Rejected(m)) => Err(err(ErrorCode::FailedPrecondition, m)),
                other => Err(internal(format!("unexpected apply result {other:?}"))),
            }
        }
        Method::GetEntry => {
            let r: GetEntryRequest = decode(method, body)?;
            let found = {
                let txn = shard.store.read_txn().map_err(internal)?;
                shard.store.get_entry(&txn, r.sequence).map_err(internal)?
            };
            match found {
                Some(e) => {
                    let target = scope_target(shard, e.scope.as_ref())?;
                    authz::check(caller, authz::Need::Read, &target).map_err(denied)?;
                    consult(shard, caller, method, authz::Need::Read, Some(e.entry_type), Some(&target)).await?;
                    Ok(Reply::One(e.encode_to_vec()))
                }
                None => Err(err(ErrorCode::NotFound, format!("no entry with sequence {}", r.sequence))),
            }
        }
        Method::ListEntries => {
            let r: ListEntriesRequest = decode(method, body)?;
            let limit = match r.limit {
                0 => DEFAULT_LIST_LIMIT,
                n => n.min(MAX_LIST_LIMIT),
            } as usize;
            let scope = r.scope.as_ref().filter(|s| s.target.is_some());
            check_scope_read(shard, caller, method, scope).await?;
            let txn = shard.store.read_txn().map_err(internal)?;
            // Without a scope, a caller who may not read everything sees what it may read.
            let everything = scope.is_some() || authz::role(caller) == authz::Role::Admin;
            let assigned = Default::default();
            let keep = |e: &ConfigEntry| {
                (r.entry_types.is_empty() || r.entry_types.contains(&e.entry_type))
                    && (r.author.is_empty() || e.author.as_ref().is_some_and(|a| a.principal == r.author))
                    && (everything || may_read(shard, &txn, &assigned, caller, e))
            };
            let entries = shard
                .store
                .list_entries(
                    &txn,
                    scope,
                    r.from_sequence.unwrap_or(1)..=r.to_sequence.unwrap_or(u64::MAX),
                    limit,
                    r.oldest_first,
                    &keep,
                )
                .map_err(internal)?;
            Ok(Reply::Stream(entries.iter().map(|e| e.encode_to_vec()).collect()))
        }
        Method::GetNodeState => {
            let r: GetNodeStateRequest = decode(method, body)?;
            state::validate_id(&r.node_id, "node id").map_err(|m| err(ErrorCode::InvalidArgument, m))?;
            let target = node_target(shard, &r.node_id)?;
            authz::check(caller, authz::Need::Read, &target).map_err(denied)?;
            consult(shard, caller, method, authz::Need::Read, None, Some(&target)).await?;
            let txn = shard.store.read_txn().map_err(internal)?;
            match shard.store.get_node_state(&txn, &r.node_id).map_err(internal)? {
                Some(s) => Ok(Reply::One(s.encode_to_vec())),
                None => Err(err(ErrorCode::NotFound, format!("no config state recorded for node {}", r.node_id))),
            }
        }
        Method::SetNodeState => {
            let mut r: SetNodeStateRequest = decode(method, body)?;
            state::validate_id(&r.node_id, "node id").map_err(|m| err(ErrorCode::InvalidArgument, m))?;
            shard.wait_stored().await?;
            let target = node_target(shard, &r.node_id)?;
            authz::check(caller, authz::Need::Write, &target).map_err(denied)?;
            consult(shard, caller, method, authz::Need::Write, None, Some(&target)).await?;
            r.author = Some(identity_of(caller));
            let result = shard.propose(command::Op::SetNodeState(r)).await?;
            match result.result {
                Some(apply_result::Result::NodeStateSet(s)) => Ok(Reply::One(s.encode_to_vec())),
                Some(apply_result::Result::Rejected(m)) => Err(err(ErrorCode::InvalidArgument, m)),
                other => Err(internal(format!("unexpected apply result {other:?}"))),
            }
        }
        Method::GetOverlay => {
            let r: GetOverlayRequest = decode(method, body)?;
            state::validate_id(&r.vcluster_id, "vcluster id").map_err(|m| err(ErrorCode::InvalidArgument, m))?;
            let target = authz::Target::VCluster(&r.vcluster_id);
            authz::check(caller, authz::Need::Read, &target).map_err(denied)?;
            consult(shard, caller, method, authz::Need::Read, None, Some(&target)).await?;
            let txn = shard.store.read_txn().map_err(internal)?;
            match shard.store.get_overlay(&txn, &r.vcluster_id).map_err(internal)? {
                Some(o) => Ok(Reply::One(o.encode_to_vec())),
                None => Err(err(ErrorCode::NotFound, format!("no overlay recorded for vCluster {}", r.vcluster_id))),
            }
        }
        Method::JournalStatus => {
            consult(shard, caller, method, authz::Need::Read, None, None).await?;
            Ok(Reply::One(status(shard)?.encode_to_vec()))
        }
        Method::ChangeMembership => {
            if authz::role(caller) != authz::Role::Admin {
                return Err(err(
                    ErrorCode::PermissionDenied,
                    "changing the journal membership needs pact-platform-admin",
                ));
            }
            consult(shard, caller, method, authz::Need::Write, None, None).await?;
            let r: ChangeMembershipRequest = decode(method, body)?;
            let action = MembershipAction::try_from(r.action).unwrap_or(MembershipAction::Unspecified);
            if r.node_id == 0 {
                return Err(err(ErrorCode::InvalidArgument, "node_id must be 1 or more"));
            }
            // As of the latest acknowledged change (a promotion right after the add-learner).
            shard.wait_stored().await?;
            let current = shard.store.members().map_err(internal)?;
            let existing = current.iter().find(|m| m.id == r.node_id).cloned();
            let member = match action {
                MembershipAction::Unspecified => {
                    return Err(err(ErrorCode::InvalidArgument, "no membership action given"))
                }
                MembershipAction::AddVoter | MembershipAction::AddLearner => {
                    if r.raft_addr.is_empty() || r.client_addr.is_empty() {
                        return Err(err(
                            ErrorCode::InvalidArgument,
                            "adding a journal needs its raft and client addresses",
                        ));
                    }
                    Member { id: r.node_id, raft_addr: r.raft_addr, client_addr: r.client_addr, role: String::new() }
                }
                MembershipAction::Promote => {
                    let m = existing
                        .ok_or_else(|| err(ErrorCode::NotFound, format!("journal {} is not a member", r.node_id)))?;
                    if m.role != "learner" {
                        return Err(err(
                            ErrorCode::FailedPrecondition,
                            format!("journal {} is not a learner", r.node_id),
                        ));
                    }
                    m
                }
                MembershipAction::Remove => existing
                    .ok_or_else(|| err(ErrorCode::NotFound, format!("journal {} is not a member", r.node_id)))?,
            };
            let result = shard.change_membership(action, r.node_id, member).await?;
            match result.result {
                Some(apply_result::Result::Membership(m)) => Ok(Reply::One(m.encode_to_vec())),
                Some(apply_result::Result::Rejected(m)) => Err(err(ErrorCode::FailedPrecondition, m)),
                other => Err(internal(format!("unexpected apply result {other:?}"))),
            }
        }
        Method::ListPendingApprovals => {
            let r: ListApprovalsRequest = decode(method, body)?;
            let scope = r.scope_filter.as_ref().filter(|s| s.target.is_some());
            check_scope_read(shard, caller, method, scope).await?;
            let txn = shard.store.read_txn().map_err(internal)?;
            let all = shard.store.list_approvals(&txn, r.include_decided, MAX_LIST_LIMIT as usize).map_err(internal)?;
            let mut out = ListApprovalsResponse::default();
            let mut size = 0usize;
            for mut a in all {
                if scope.is_some_and(|s| a.scope.as_ref() != Some(s)) {
                    continue;
                }
                if scope.is_none()
                    && authz::role(caller) != authz::Role::Admin
                    && allow(shard, caller, authz::Need::Read, a.scope.as_ref()).is_err()
                {
                    continue;
                }
                // One answer is one frame (4 MiB): held requests ride along while they fit.
                size += a.encoded_len();
                if size > MAX_APPROVAL_LIST_BYTES {
                    size -= a.original_request.len();
                    a.original_request.clear();
                }
                out.approvals.push(a);
            }
            Ok(Reply::One(out.encode_to_vec()))
        }
        Method::DecideApproval => {
            let r: DecideApprovalRequest = decode(method, body)?;
            let id = crate::approval::parse_id(&r.approval_id)
                .ok_or_else(|| err(ErrorCode::InvalidArgument, format!("{:?} is not an approval id", r.approval_id)))?;
            let status = match r.decision.trim().to_ascii_lowercase().as_str() {
                "approved" | "approve" | "accept" => ApprovalStatus::Approved,
                "rejected" | "reject" | "deny" => ApprovalStatus::Rejected,
                other => {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("decision {other:?}: expected approved or rejected"),
                    ))
                }
            };
            let reason = r.reason.unwrap_or_default();
            if reason.len() > crate::approval::MAX_REASON {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("the reason is longer than {} bytes", crate::approval::MAX_REASON),
                ));
            }
            shard.wait_stored().await?;
            let a = {
                let txn = shard.store.read_txn().map_err(internal)?;
                shard.store.get_approval(&txn, id).map_err(internal)?
            };
            let a = a.ok_or_else(|| err(ErrorCode::NotFound, format!("no approval {id}")))?;
            let requester = a.requester.as_ref().map(|r| r.principal.as_str()).unwrap_or_default();
            let target = scope_target(shard, a.scope.as_ref())?;
            authz::check_decide(caller, requester, &target).map_err(denied)?;
            let decision = pact_proto::config::EntryType::ApprovalDecision as i32;
            consult(shard, caller, method, authz::Need::Write, Some(decision), Some(&target)).await?;
            if a.status != ApprovalStatus::Pending as i32 {
                return Err(err(
                    ErrorCode::FailedPrecondition,
                    format!("approval {id} is already {}", crate::approval::status_text(a.status)),
                ));
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            if a.expires_at.unwrap_or_default().seconds <= now.as_secs() as i64 {
                return Err(err(ErrorCode::FailedPrecondition, format!("approval {id} has expired")));
            }
            let entry = crate::approval::decision_entry(&a, id, status, &reason, identity_of(caller));
            let result = shard.propose(command::Op::AppendEntry(entry)).await?;
            match result.result {
                Some(apply_result::Result::Appended(d)) => {
                    let executed = if status == ApprovalStatus::Approved { d.sequence + 1 } else { d.sequence };
                    shard.shared.last_sequence.fetch_max(executed, Ordering::Relaxed);
                    Ok(Reply::One(
                        DecideApprovalResponse { success: true, error: None, sequence: d.sequence }.encode_to_vec(),
                    ))
                }
                Some(apply_result::Result::Rejected(m)) => Err(err(ErrorCode::FailedPrecondition, m)),
                other => Err(internal(format!("unexpected apply result {other:?}"))),
            }
        }
        other => Err(err(ErrorCode::Unimplemented, format!("{} is not served by this journal yet", other.name()))),
    }
}

/// Largest approval listing (encoded) that still carries every held request; past it the
/// rest are listed without (their `action` still says what they do).
pub const MAX_APPROVAL_LIST_BYTES: usize = 2 << 20;

/// A vCluster's current policy, as its overlay holds it.
fn vcluster_policy(shard: &ShardRef, vc: Option<&str>) -> Result<Option<PolicySpec>, RemoteError> {
    let Some(vc) = vc else { return Ok(None) };
    let txn = shard.store.read_txn().map_err(internal)?;
    Ok(shard.store.get_overlay(&txn, vc).map_err(internal)?.and_then(|o| o.spec).and_then(|s| s.policy))
}

/// The PENDING_APPROVAL entry that holds `held` (author already the caller) for a second person.
fn pending_entry(
    shard: &ShardRef,
    held: ConfigEntry,
    caller: &Caller,
    timeout: u32,
) -> Result<ConfigEntry, RemoteError> {
    let txn = shard.store.read_txn().map_err(internal)?;
    let pending = shard.store.pending_approval_count(&txn).map_err(internal)?;
    if pending >= crate::approval::MAX_PENDING {
        return Err(err(
            ErrorCode::FailedPrecondition,
            format!(
                "{pending} approvals are pending, the most this journal holds ({}); decide some (`pact approve list`) or let them expire",
                crate::approval::MAX_PENDING
            ),
        ));
    }
    let kind = pact_proto::config::EntryType::try_from(held.entry_type)
        .map(|t| t.as_str_name().trim_start_matches("ENTRY_TYPE_").to_ascii_lowercase())
        .unwrap_or_default();
    let what: String = held.policy_ref.chars().filter(|c| !c.is_control()).take(200).collect();
    let action = if what.is_empty() { kind } else { format!("{kind}: {what}") };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let a = PendingApproval {
        original_method: Method::AppendEntry as u32,
        action: action.clone(),
        scope: held.scope.clone(),
        requester: Some(identity_of(caller)),
        status: ApprovalStatus::Pending as i32,
        created_at: Some(pact_proto::config::Timestamp { seconds: now, nanos: 0 }),
        expires_at: Some(pact_proto::config::Timestamp { seconds: now + i64::from(timeout), nanos: 0 }),
        original_request: AppendEntryRequest { entry: Some(held.clone()) }.encode_to_vec(),
        ..Default::default()
    };
    Ok(ConfigEntry {
        entry_type: pact_proto::config::EntryType::PendingApproval as i32,
        scope: held.scope,
        author: held.author,
        policy_ref: format!("pending approval: {action}"),
        approval: a.encode_to_vec(),
        ..Default::default()
    })
}

/// Assignments that contradict the node's current one are refused before proposing, with
/// the command that does what was probably meant. The check reads this replica's state, so
/// two racing admins can still both succeed; the state machine then applies both in order,
/// which is well defined (the later one wins).
async fn check_assignment(shard: &ShardRef, e: &ConfigEntry) -> Result<(), RemoteError> {
    use pact_proto::config::{scope::Target, EntryType};
    let kind = EntryType::try_from(e.entry_type);
    if !matches!(kind, Ok(EntryType::NodeAssigned | EntryType::NodeMoved | EntryType::NodeUnassigned)) {
        return Ok(());
    }
    let Some(Target::NodeId(node)) = e.scope.as_ref().and_then(|s| s.target.as_ref()) else {
        return Ok(()); // validate_entry already refused it
    };
    shard.wait_stored().await?;
    let txn = shard.store.read_txn().map_err(internal)?;
    let current =
        shard.store.get_node_record(&txn, node).map_err(internal)?.map(|r| r.assigned_vcluster).unwrap_or_default();
    let refuse = |m: String| Err(err(ErrorCode::FailedPrecondition, m));
    match kind {
        Ok(EntryType::NodeAssigned) if !current.is_empty() && current != e.target_vcluster => refuse(format!(
            "node {node} is already assigned to vCluster {current}; use `pact node move {node} --to-vcluster {}`",
            e.target_vcluster
        )),
        Ok(EntryType::NodeMoved | EntryType::NodeUnassigned) if current.is_empty() => {
            refuse(format!("node {node} is not assigned to any vCluster; use `pact node assign {node} --vcluster V`"))
        }
        _ => Ok(()),
    }
}

fn next_sequence(shard: &ShardRef) -> Result<u64, RemoteError> {
    let txn = shard.store.read_txn().map_err(internal)?;
    shard.store.next_sequence(&txn).map_err(internal)
}

pub fn status(shard: &ShardRef) -> Result<JournalStatus, RemoteError> {
    let s: &Shared = &shard.shared;
    let conf = shard.store.conf_state().map_err(internal)?;
    let book = shard.store.members().map_err(internal)?;
    let matched = s.matched.lock().map(|m| m.clone()).unwrap_or_default();
    let leads = s.role.load(Ordering::Relaxed) == crate::shared::ROLE_LEADER;
    let mut ids: Vec<u64> = conf.voters.iter().chain(conf.learners.iter()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let members = ids
        .into_iter()
        .map(|id| {
            let role = if conf.learners.contains(&id) { "learner" } else { "voter" };
            let member = book.iter().find(|m| m.id == id).cloned();
            MemberStatus {
                id,
                role: role.into(),
                address: member.as_ref().map(|m| m.raft_addr.clone()).unwrap_or_default(),
                member,
                matched_index: if leads { matched.get(&id).copied().unwrap_or(0) } else { 0 },
            }
        })
        .collect();
    let first_log_index = s.first_index.load(Ordering::Relaxed);
    let last_log_index = s.last_index.load(Ordering::Relaxed);
    let snapshot_index = s.snapshot_index.load(Ordering::Relaxed);
    let txn = shard.store.read_txn().map_err(internal)?;
    let entries = shard.store.entry_count(&txn).map_err(internal)?;
    let last_sequence = shard.store.next_sequence(&txn).map_err(internal)? - 1;
    Ok(JournalStatus {
        node_id: s.node_id,
        role: s.role_name().into(),
        term: s.term.load(Ordering::Relaxed),
        leader_id: s.leader_id.load(Ordering::Relaxed),
        commit_index: s.commit_index.load(Ordering::Relaxed),
        applied_index: s.applied_index.load(Ordering::Relaxed),
        last_sequence,
        entries,
        members,
        version: pact_proto::VERSION.into(),
        snapshot_index,
        first_log_index,
        last_log_index,
    })
}
