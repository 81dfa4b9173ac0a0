//! The enrollment methods on the client port (see `enroll` for the design).
//!
//! - `Enroll`: the one method that needs no credentials. A node sends its hardware identity
//!   and a CSR; rate-limited per source address and in all, checked against the registration,
//!   signed by this journal's enrollment CA, recorded (CERT_SIGNED) before it is answered.
//! - `RenewCert`: an agent authenticated by its current certificate gets a new one for a new
//!   key, without showing its hardware again.
//! - `RegisterNode`, `BatchRegisterNodes`, `DecommissionNode`: platform admins only.
//! - `ListNodes`, `InspectNode`: what the caller may read of each node.

use crate::audit::{identity_of, journal_identity};
use crate::authz;
use crate::enroll::{self, Authority};
use crate::rpc::{decode, err, internal, Conn, Reply};
use crate::shard::ShardRef;
use pact_proto::auth::Caller;
use pact_proto::config::EntryType;
use pact_proto::enrollment::{
    enrollment_event::Event, BatchNodeResult, BatchRegisterNodesRequest, BatchRegisterNodesResponse, CertIssued,
    DecommissionNodeRequest, DecommissionNodeResponse, EnrollRequest, EnrollResponse, EnrollmentState,
    InspectNodeRequest, ListNodesRequest, ListNodesResponse, NodeEnrollment, NodeSummary, RegisterNodeRequest,
    RegisterNodeResponse, RenewCertRequest, RenewCertResponse,
};
use pact_proto::journal::{apply_result, command};
use pact_proto::wire::Request;
use pact_proto::{ErrorCode, Method, RemoteError};
use prost::Message;
use std::net::IpAddr;

/// How long a refused-for-rate enrollment is told to wait.
const RATE_RETRY_MS: u32 = 5_000;

/// `Enroll`, which comes without credentials; None for every other method.
pub async fn handle_unauthenticated(
    shard: &ShardRef,
    conn: &Conn,
    method: Method,
    req: &Request,
) -> Option<Result<Reply, RemoteError>> {
    if method != Method::Enroll {
        return None;
    }
    let r = enroll_node(shard, conn, req).await;
    if let Err(e) = &r {
        if matches!(e.code, ErrorCode::PermissionDenied | ErrorCode::NotFound) {
            let source = conn.peer.map(|p| p.ip().to_string()).unwrap_or_else(|| "?".into());
            crate::rpc::record_denial(shard, None, method, &format!("enrollment from {source}: {}", e.message));
        }
    }
    Some(r)
}

/// The enrollment methods that need a verified caller; None for the others.
pub async fn handle(
    shard: &ShardRef,
    conn: &Conn,
    method: Method,
    req: &Request,
    caller: &Caller,
) -> Option<Result<Reply, RemoteError>> {
    let body = &req.body[..];
    Some(match method {
        Method::RenewCert => renew(shard, conn, body, caller).await,
        Method::RegisterNode => match admin(caller, "register nodes") {
            Ok(()) => {
                async {
                    let r: RegisterNodeRequest = decode(method, body)?;
                    let out = register(shard, caller, r).await?;
                    Ok(Reply::One(out.encode_to_vec()))
                }
                .await
            }
            Err(e) => Err(e),
        },
        Method::BatchRegisterNodes => match admin(caller, "register nodes") {
            Ok(()) => batch(shard, caller, body).await,
            Err(e) => Err(e),
        },
        Method::DecommissionNode => match admin(caller, "decommission nodes") {
            Ok(()) => decommission(shard, caller, body).await,
            Err(e) => Err(e),
        },
        Method::ListNodes => list(shard, caller, body).await,
        Method::InspectNode => inspect(shard, caller, body).await,
        _ => return None,
    })
}

fn admin(caller: &Caller, what: &str) -> Result<(), RemoteError> {
    match authz::role(caller) {
        authz::Role::Admin => Ok(()),
        _ => Err(err(
            ErrorCode::PermissionDenied,
            format!("{} ({}) may not {what}: that is for pact-platform-admin", caller.principal, caller.role),
        )),
    }
}

fn authority(shard: &ShardRef) -> Result<&Authority, RemoteError> {
    shard.authority.as_deref().ok_or_else(|| {
        err(
            ErrorCode::Unavailable,
            "this journal has no enrollment CA (it could not read the cluster CA's key at start)",
        )
    })
}

/// One enrollment or renewal from the rate limits, or Busy with when to come back.
fn admit(a: &Authority, source: Option<IpAddr>) -> Result<(), RemoteError> {
    a.admit(source).map_err(|m| {
        let mut e = err(ErrorCode::Busy, m);
        e.retry_after_ms = RATE_RETRY_MS;
        e
    })
}

fn source_of(conn: &Conn) -> Option<IpAddr> {
    conn.peer.map(|p| p.ip())
}

/// Publishes this journal's enrollment CA through raft unless the store already has it.
pub async fn ensure_published(shard: &ShardRef) -> Result<(), RemoteError> {
    let a = authority(shard)?;
    let present = {
        let r = shard.store.read_txn().map_err(internal)?;
        shard.store.enrollment_cas(&r).map_err(internal)?.iter().any(|c| c.fingerprint == a.published.fingerprint)
    };
    if present {
        return Ok(());
    }
    shard.propose(command::Op::PublishCa(a.published.clone())).await?;
    shard.wait_stored().await
}

fn read_record(shard: &ShardRef, node: &str) -> Result<Option<NodeEnrollment>, RemoteError> {
    let r = shard.store.read_txn().map_err(internal)?;
    shard.store.get_enrollment(&r, node).map_err(internal)
}

async fn enroll_node(shard: &ShardRef, conn: &Conn, req: &Request) -> Result<Reply, RemoteError> {
    let a = authority(shard)?;
    let source = source_of(conn);
    admit(a, source)?;
    let r: EnrollRequest = decode(Method::Enroll, &req.body)?;
    let hw = r.hardware_identity.ok_or_else(|| err(ErrorCode::InvalidArgument, "hardware_identity is missing"))?;
    shard.wait_stored().await?;
    // The node the hardware is registered to: every presented key that is registered must
    // name the same node.
    let mut owner: Option<String> = None;
    {
        let txn = shard.store.read_txn().map_err(internal)?;
        for k in enroll::hardware_keys(&hw) {
            if let Some(n) = shard.store.hardware_owner(&txn, &k).map_err(internal)? {
                match &owner {
                    Some(o) if *o != n => {
                        return Err(err(
                            ErrorCode::PermissionDenied,
                            format!("enrollment refused: this hardware matches two registered nodes ({o} and {n})"),
                        ))
                    }
                    _ => owner = Some(n),
                }
            }
        }
    }
    let Some(node) = owner else {
        let named = if r.node_id.is_empty() { String::new() } else { format!(" (it says it is {})", r.node_id) };
        return Err(err(
            ErrorCode::NotFound,
            format!(
                "enrollment refused: no node is registered with this hardware identity{named}; register it with `pact enroll NODE --hardware-id ...`"
            ),
        ));
    };
    if !r.node_id.is_empty() && r.node_id != node {
        return Err(err(
            ErrorCode::PermissionDenied,
            format!("enrollment refused: the node says it is {} but its hardware is registered to {node}", r.node_id),
        ));
    }
    let rec =
        read_record(shard, &node)?.ok_or_else(|| err(ErrorCode::NotFound, format!("node {node} is not enrolled")))?;
    if rec.enrollment_state == EnrollmentState::Revoked as i32 {
        return Err(err(ErrorCode::PermissionDenied, format!("enrollment refused: node {node} was decommissioned")));
    }
    let registered = rec.hardware_identity.clone().unwrap_or_default();
    enroll::hardware_matches(&registered, &hw).map_err(|m| {
        err(ErrorCode::PermissionDenied, format!("enrollment refused for node {node}: hardware mismatch: {m}"))
    })?;
    let (chain_pem, issued) = issue(shard, a, &node, &r.csr, source, false, &rec).await?;
    let vcluster = assigned_vcluster(shard, &node)?;
    let out = EnrollResponse {
        node_id: node,
        domain_id: String::new(),
        signed_cert_pem: chain_pem,
        ca_chain_pem: a.root_pem.clone(),
        vcluster_id: vcluster,
        cert_serial: issued.serial,
        cert_expires_at: issued.expires_at,
    };
    Ok(Reply::One(out.encode_to_vec()))
}

/// Signs, records (CERT_SIGNED) and confirms that the record took: a certificate the state
/// machine did not accept (a race with decommissioning, a key certified twice) is not handed out.
async fn issue(
    shard: &ShardRef,
    a: &Authority,
    node: &str,
    csr: &[u8],
    source: Option<IpAddr>,
    renewal: bool,
    rec: &NodeEnrollment,
) -> Result<(String, CertIssued), RemoteError> {
    ensure_published(shard).await?;
    let signed = a.sign(node, csr, source, renewal).map_err(|m| err(ErrorCode::InvalidArgument, m))?;
    if rec.key_hashes.contains(&signed.issued.key_hash) {
        return Err(err(
            ErrorCode::PermissionDenied,
            format!(
                "enrollment refused for node {node}: the CSR's key was certified before (a replayed CSR); the agent must generate a new key"
            ),
        ));
    }
    let why = format!(
        "{} {} for {node}, expires {}",
        if renewal { "renewed certificate" } else { "certificate" },
        signed.issued.serial,
        signed.issued.expires_at.map(|t| t.seconds).unwrap_or_default()
    );
    let entry = enroll::entry(
        EntryType::CertSigned,
        node,
        journal_identity(shard.shared.node_id),
        Event::Issued(signed.issued.clone()),
        why,
    );
    appended(shard.propose(command::Op::AppendEntry(entry)).await?)?;
    shard.wait_stored().await?;
    let now = read_record(shard, node)?.unwrap_or_default();
    if !now.cert_serials.contains(&signed.issued.serial) {
        return Err(err(
            ErrorCode::FailedPrecondition,
            format!("node {node} changed while its certificate was signed (decommissioned, or the same key enrolled at once); not issued"),
        ));
    }
    Ok((signed.chain_pem, signed.issued))
}

fn appended(r: pact_proto::journal::ApplyResult) -> Result<u64, RemoteError> {
    match r.result {
        Some(apply_result::Result::Appended(a)) => Ok(a.sequence),
        Some(apply_result::Result::Rejected(m)) => Err(err(ErrorCode::FailedPrecondition, m)),
        other => Err(internal(format!("unexpected apply result {other:?}"))),
    }
}

fn assigned_vcluster(shard: &ShardRef, node: &str) -> Result<String, RemoteError> {
    let r = shard.store.read_txn().map_err(internal)?;
    Ok(shard.store.get_node_record(&r, node).map_err(internal)?.map(|n| n.assigned_vcluster).unwrap_or_default())
}

async fn renew(shard: &ShardRef, conn: &Conn, body: &[u8], caller: &Caller) -> Result<Reply, RemoteError> {
    let a = authority(shard)?;
    // Only the certificate itself renews: a token-authenticated agent enrolls instead.
    let node =
        match enroll::check_client_chain(&shard.store, &conn.chain, &conn.memo) {
            Ok(n) if n == caller.principal && authz::role(caller) == authz::Role::ServiceAgent => n,
            _ => return Err(err(
                ErrorCode::PermissionDenied,
                "RenewCert needs the node's current certificate on the connection (an enrolled agent); enroll instead",
            )),
        };
    admit(a, source_of(conn))?;
    let r: RenewCertRequest = decode(Method::RenewCert, body)?;
    let rec =
        read_record(shard, &node)?.ok_or_else(|| err(ErrorCode::NotFound, format!("node {node} is not enrolled")))?;
    let (chain_pem, issued) = issue(shard, a, &node, &r.csr, source_of(conn), true, &rec).await?;
    let out = RenewCertResponse {
        signed_cert_pem: chain_pem,
        ca_chain_pem: a.root_pem.clone(),
        cert_serial: issued.serial,
        cert_expires_at: issued.expires_at,
    };
    Ok(Reply::One(out.encode_to_vec()))
}

/// What one registration comes to, checked against the store and against `claimed` (the
/// hardware keys earlier registrations of the same batch take): the entry to record, or None
/// when the same registration is already there.
fn prepare_register(
    shard: &ShardRef,
    caller: &Caller,
    mut r: RegisterNodeRequest,
    claimed: &mut std::collections::HashMap<String, String>,
) -> Result<(RegisterNodeResponse, Option<pact_proto::config::ConfigEntry>), RemoteError> {
    let bad = |m: String| err(ErrorCode::InvalidArgument, m);
    crate::state::validate_id(&r.node_id, "node id").map_err(bad)?;
    let hw = r.hardware_identity.as_mut().ok_or_else(|| bad("hardware_identity is missing".into()))?;
    // Stored normalised, so that matching and the hardware index agree.
    hw.mac_address = enroll::normalize_mac(&hw.mac_address).unwrap_or_else(|| hw.mac_address.clone());
    for m in hw.mac_addresses.iter_mut() {
        *m = enroll::normalize_mac(m).unwrap_or_else(|| m.clone());
    }
    if !hw.mac_address.is_empty() && !hw.mac_addresses.contains(&hw.mac_address) {
        hw.mac_addresses.insert(0, hw.mac_address.clone());
    }
    let existing = read_record(shard, &r.node_id)?;
    let keys = enroll::hardware_keys(hw);
    {
        let txn = shard.store.read_txn().map_err(internal)?;
        for k in &keys {
            let owner = match claimed.get(k) {
                Some(o) => Some(o.clone()),
                None => shard.store.hardware_owner(&txn, k).map_err(internal)?,
            };
            if let Some(owner) = owner.filter(|o| *o != r.node_id) {
                return Err(err(ErrorCode::Conflict, format!("{k} is already registered to node {owner}")));
            }
        }
    }
    if let Some(e) = existing.filter(|e| e.enrollment_state != EnrollmentState::Revoked as i32) {
        if e.hardware_identity.as_ref() == Some(&*hw) {
            // The same registration again (a re-run import): nothing to record.
            return Ok((RegisterNodeResponse { node_id: r.node_id, enrollment_state: e.enrollment_state }, None));
        }
        return Err(err(
            ErrorCode::Conflict,
            format!(
                "node {} is already registered with another hardware identity; decommission it first (pact node decommission {})",
                r.node_id, r.node_id
            ),
        ));
    }
    if claimed.values().any(|n| *n == r.node_id) {
        return Err(err(ErrorCode::Conflict, format!("node {} is twice in this batch", r.node_id)));
    }
    for k in &keys {
        claimed.insert(k.clone(), r.node_id.clone());
    }
    let node = r.node_id.clone();
    let why = format!("registered {}", keys.join(" "));
    let entry = enroll::entry(EntryType::NodeEnrolled, &node, identity_of(caller), Event::Register(r), why);
    crate::state::validate_entry(&entry).map_err(bad)?;
    Ok((RegisterNodeResponse { node_id: node, enrollment_state: EnrollmentState::Registered as i32 }, Some(entry)))
}

async fn register(
    shard: &ShardRef,
    caller: &Caller,
    r: RegisterNodeRequest,
) -> Result<RegisterNodeResponse, RemoteError> {
    shard.wait_stored().await?;
    let (answer, entry) = prepare_register(shard, caller, r, &mut Default::default())?;
    if let Some(entry) = entry {
        appended(shard.propose(command::Op::AppendEntry(entry)).await?)?;
    }
    Ok(answer)
}

/// Registrations of one batch proposed at once, at most this many in flight.
const BATCH_IN_FLIGHT: usize = 256;

async fn batch(shard: &ShardRef, caller: &Caller, body: &[u8]) -> Result<Reply, RemoteError> {
    let r: BatchRegisterNodesRequest = decode(Method::BatchRegisterNodes, body)?;
    if r.nodes.len() > enroll::MAX_BATCH {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("{} nodes in one batch; at most {}", r.nodes.len(), enroll::MAX_BATCH),
        ));
    }
    shard.wait_stored().await?;
    // Every row is checked first, against the store and the rows before it (two rows with one
    // MAC conflict); then the accepted ones are proposed together, so raft batches them.
    let mut claimed = std::collections::HashMap::new();
    let mut results: Vec<BatchNodeResult> = Vec::with_capacity(r.nodes.len());
    let mut pending: Vec<(usize, pact_proto::config::ConfigEntry)> = Vec::new();
    for n in r.nodes {
        let id = n.node_id.clone();
        match prepare_register(shard, caller, n, &mut claimed) {
            Ok((ok, entry)) => {
                if let Some(e) = entry {
                    pending.push((results.len(), e));
                }
                results.push(BatchNodeResult {
                    node_id: id,
                    success: true,
                    enrollment_state: ok.enrollment_state,
                    error: None,
                });
            }
            Err(e) => results.push(BatchNodeResult {
                node_id: id,
                success: false,
                enrollment_state: 0,
                error: Some(e.message),
            }),
        }
    }
    for chunk in pending.chunks(BATCH_IN_FLIGHT) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|(i, e)| {
                let (s, e, i) = (shard.clone(), e.clone(), *i);
                glommio::spawn_local(async move { (i, s.propose(command::Op::AppendEntry(e)).await) })
            })
            .collect();
        for t in tasks {
            let (i, r) = t.await;
            if let Err(e) = r.and_then(appended) {
                if e.code == ErrorCode::Unavailable {
                    return Err(e);
                }
                results[i].success = false;
                results[i].enrollment_state = 0;
                results[i].error = Some(e.message);
            }
        }
    }
    let succeeded = results.iter().filter(|r| r.success).count() as u32;
    let out = BatchRegisterNodesResponse { failed: results.len() as u32 - succeeded, succeeded, results };
    Ok(Reply::One(out.encode_to_vec()))
}

async fn decommission(shard: &ShardRef, caller: &Caller, body: &[u8]) -> Result<Reply, RemoteError> {
    let r: DecommissionNodeRequest = decode(Method::DecommissionNode, body)?;
    crate::state::validate_id(&r.node_id, "node id").map_err(|m| err(ErrorCode::InvalidArgument, m))?;
    shard.wait_stored().await?;
    let rec = read_record(shard, &r.node_id)?
        .ok_or_else(|| err(ErrorCode::NotFound, format!("node {} is not enrolled", r.node_id)))?;
    if rec.enrollment_state == EnrollmentState::Revoked as i32 {
        return Err(err(ErrorCode::FailedPrecondition, format!("node {} is already decommissioned", r.node_id)));
    }
    let node = r.node_id.clone();
    let why = format!("decommissioned; certificates {} revoked", rec.cert_serials.join(", "));
    let entry = enroll::entry(EntryType::NodeDecommissioned, &node, identity_of(caller), Event::Decommission(r), why);
    appended(shard.propose(command::Op::AppendEntry(entry)).await?)?;
    let out = DecommissionNodeResponse {
        node_id: node,
        enrollment_state: EnrollmentState::Revoked as i32,
        // Shell and exec sessions live on the agents; the journal holds none to end.
        sessions_terminated: 0,
        cert_serial_revoked: rec.cert_serial,
    };
    Ok(Reply::One(out.encode_to_vec()))
}

/// The record as the caller may see it (with the node's current vCluster), or None.
fn visible(shard: &ShardRef, txn: &heed::RoTxn, caller: &Caller, mut e: NodeEnrollment) -> Option<NodeEnrollment> {
    let vc =
        shard.store.get_node_record(txn, &e.node_id).ok().flatten().map(|n| n.assigned_vcluster).unwrap_or_default();
    let target = authz::Target::Node { node: &e.node_id, vcluster: Some(vc.clone()).filter(|v| !v.is_empty()) };
    authz::check(caller, authz::Need::Read, &target).ok()?;
    e.vcluster_id = vc;
    Some(e)
}

async fn list(shard: &ShardRef, caller: &Caller, body: &[u8]) -> Result<Reply, RemoteError> {
    let r: ListNodesRequest = decode(Method::ListNodes, body)?;
    shard.wait_stored().await?;
    let txn = shard.store.read_txn().map_err(internal)?;
    let all = shard
        .store
        .list_enrollments(&txn, enroll::MAX_LIST, &|e| r.state_filter.is_none_or(|s| s == e.enrollment_state))
        .map_err(internal)?;
    let nodes = all
        .into_iter()
        .filter_map(|e| visible(shard, &txn, caller, e))
        .filter(|e| r.vcluster_filter.as_ref().is_none_or(|v| *v == e.vcluster_id))
        .filter(|e| !r.unassigned_only || e.vcluster_id.is_empty())
        .map(|e| NodeSummary {
            mac_address: e.hardware_identity.as_ref().map(|h| h.mac_address.clone()).unwrap_or_default(),
            node_id: e.node_id,
            enrollment_state: e.enrollment_state,
            vcluster_id: e.vcluster_id,
            last_seen: e.last_seen,
        })
        .collect();
    Ok(Reply::One(ListNodesResponse { nodes }.encode_to_vec()))
}

async fn inspect(shard: &ShardRef, caller: &Caller, body: &[u8]) -> Result<Reply, RemoteError> {
    let r: InspectNodeRequest = decode(Method::InspectNode, body)?;
    shard.wait_stored().await?;
    let txn = shard.store.read_txn().map_err(internal)?;
    let Some(rec) = shard.store.get_enrollment(&txn, &r.node_id).map_err(internal)? else {
        // Whether a node exists is itself for those who may read it.
        let target = authz::Target::Node { node: &r.node_id, vcluster: None };
        authz::check(caller, authz::Need::Read, &target).map_err(|m| err(ErrorCode::PermissionDenied, m))?;
        return Err(err(ErrorCode::NotFound, format!("node {} is not enrolled", r.node_id)));
    };
    let rec = visible(shard, &txn, caller, rec).ok_or_else(|| {
        err(ErrorCode::PermissionDenied, format!("{} may not read node {}", caller.principal, r.node_id))
    })?;
    Ok(Reply::One(rec.encode_to_vec()))
}
