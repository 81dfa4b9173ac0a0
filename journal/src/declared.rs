//! Declared state: what each vCluster and each node should look like, as the committed
//! entries say. Applied with every entry (deterministic, so every replica stores the same
//! bytes), and what boot streaming serves.
//!
//! - A vCluster's overlay is its `VClusterSpec`: replaced by a COMMIT that carries a
//!   `declared` spec (`pact apply`), changed by a COMMIT that carries only a state delta (a
//!   change committed on a node), set back by a ROLLBACK to the version in force right after
//!   its target sequence, and its policy replaced by a POLICY_UPDATE. Its version is the
//!   sequence of the last entry that changed it; entries that change nothing (a bare
//!   `pact commit -m`, an AUTO_CONVERGE) leave the version alone, so nodes do not refetch.
//! - A node's record is its vCluster assignment plus its own declared config, changed the
//!   same way by node-scoped entries and by NODE_ASSIGNED / NODE_MOVED / NODE_UNASSIGNED.
//!
//! Every version is kept (`overlay_hist`, node history) so a rollback can find its target
//! and a subscription can report the checksum of the version an entry produced.

use crate::state::StateTxn;
use crate::store::{Result, StoreError};
use pact_proto::config::{scope::Target, ConfigEntry, DeltaAction, EntryType, FileSpec, StateDelta, VClusterSpec};
use pact_proto::journal::{NodeRecord, OverlayRecord};
use pact_proto::stream::NodeDeltaBody;
use prost::Message as _;

/// zstd level of the boot form: fast to build, and a boot storm is bound by TLS, not by bytes.
pub const ZSTD_LEVEL: i32 = 3;
/// Largest overlay (prost-encoded, before compression) the journal builds; a node also
/// refuses to decompress past the raw size the journal announces.
pub const MAX_OVERLAY_RAW: usize = 64 << 20;

pub use pact_proto::sha256_hex;

/// The boot form of a vCluster's spec: the prost encoding (canonical: maps are BTreeMaps,
/// lists keep their declared order) compressed with zstd, and the record that describes it.
pub fn build_overlay(vcluster: &str, version: u64, mut spec: VClusterSpec) -> Result<(OverlayRecord, Vec<u8>)> {
    spec.vcluster_id = vcluster.to_string();
    let raw = spec.encode_to_vec();
    if raw.len() > MAX_OVERLAY_RAW {
        return Err(StoreError::Corrupt(format!(
            "vCluster {vcluster}'s overlay is {} bytes encoded, over the {MAX_OVERLAY_RAW}-byte limit",
            raw.len()
        )));
    }
    let blob = zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(StoreError::Io)?;
    let record = OverlayRecord {
        vcluster_id: vcluster.to_string(),
        version,
        checksum: sha256_hex(&blob),
        compressed_size: blob.len() as u32,
        raw_size: raw.len() as u32,
        spec: Some(spec),
    };
    Ok((record, blob))
}

/// What a node delta's `data` holds for a node record.
pub fn node_delta_bytes(rec: &NodeRecord) -> Vec<u8> {
    NodeDeltaBody {
        entries: Vec::new(),
        node_spec: rec.declared.clone(),
        assigned_vcluster: rec.assigned_vcluster.clone(),
    }
    .encode_to_vec()
}

/// A node that the journal has never heard of: no assignment, nothing declared.
pub fn empty_node_record(node_id: &str) -> NodeRecord {
    let mut rec = NodeRecord { node_id: node_id.to_string(), ..Default::default() };
    rec.checksum = sha256_hex(&node_delta_bytes(&rec));
    rec
}

/// Updates the declared state for one applied entry (already validated and sequenced).
pub fn on_entry<T: StateTxn>(t: &mut T, e: &ConfigEntry) -> Result<()> {
    if !t.keeps_declared() {
        return Ok(());
    }
    let Ok(kind) = EntryType::try_from(e.entry_type) else { return Ok(()) };
    if crate::enroll::is_enrollment_type(e.entry_type) {
        return crate::enroll::on_entry(t, e);
    }
    match e.scope.as_ref().and_then(|s| s.target.as_ref()) {
        Some(Target::VclusterId(vc)) => on_vcluster_entry(t, vc, kind, e),
        Some(Target::NodeId(node)) => on_node_entry(t, node, kind, e),
        _ => Ok(()),
    }
}

fn on_vcluster_entry<T: StateTxn>(t: &mut T, vc: &str, kind: EntryType, e: &ConfigEntry) -> Result<()> {
    let current = || -> Result<VClusterSpec> { Ok(t.get_overlay(vc)?.and_then(|o| o.spec).unwrap_or_default()) };
    let spec = match kind {
        EntryType::Commit => match (&e.declared, &e.state_delta) {
            (Some(declared), _) => declared.clone(),
            (None, Some(d)) if !delta_is_empty(d) => {
                let mut spec = current()?;
                apply_delta(&mut spec, d);
                spec
            }
            _ => return Ok(()),
        },
        EntryType::Rollback => {
            let target = e.parent.unwrap_or(0);
            t.overlay_at(vc, target)?.and_then(|o| o.spec).unwrap_or_default()
        }
        EntryType::PolicyUpdate => match e.declared.as_ref().and_then(|d| d.policy.clone()) {
            Some(policy) => {
                let mut spec = current()?;
                spec.policy = Some(policy);
                spec
            }
            None => return Ok(()),
        },
        _ => return Ok(()),
    };
    let (record, blob) = build_overlay(vc, e.sequence, spec)?;
    t.put_overlay(&record, &blob)
}

fn on_node_entry<T: StateTxn>(t: &mut T, node: &str, kind: EntryType, e: &ConfigEntry) -> Result<()> {
    let mut rec = t.get_node_record(node)?.unwrap_or_else(|| empty_node_record(node));
    match kind {
        EntryType::Commit => match (&e.declared, &e.state_delta) {
            (Some(declared), _) => {
                let mut d = declared.clone();
                d.vcluster_id.clear();
                rec.declared = Some(d);
            }
            (None, Some(d)) if !delta_is_empty(d) => {
                let mut spec = rec.declared.take().unwrap_or_default();
                apply_delta(&mut spec, d);
                rec.declared = Some(spec);
            }
            _ => return Ok(()),
        },
        // The node's declared config goes back; its assignment is not config and stays.
        EntryType::Rollback => {
            let target = e.parent.unwrap_or(0);
            rec.declared = t.node_record_at(node, target)?.and_then(|r| r.declared);
        }
        EntryType::NodeAssigned | EntryType::NodeMoved => rec.assigned_vcluster = e.target_vcluster.clone(),
        EntryType::NodeUnassigned => rec.assigned_vcluster.clear(),
        _ => return Ok(()),
    }
    rec.version = e.sequence;
    rec.checksum = sha256_hex(&node_delta_bytes(&rec));
    t.put_node_record(&rec)
}

pub fn delta_is_empty(d: &StateDelta) -> bool {
    d.mounts.is_empty()
        && d.files.is_empty()
        && d.network.is_empty()
        && d.services.is_empty()
        && d.kernel.is_empty()
        && d.packages.is_empty()
        && d.gpu.is_empty()
}

fn removes(action: i32) -> bool {
    action == DeltaAction::Remove as i32
}

/// Folds a committed state delta into a declared spec. The GPU dimension has no declared
/// form (GPUs are observed, not configured), so its deltas only stay in the journal entry.
/// A service delta can change the desired state of a declared service or remove it; it
/// cannot create one (a delta does not carry a binary), so it is ignored for an unknown name.
pub fn apply_delta(spec: &mut VClusterSpec, d: &StateDelta) {
    for k in &d.kernel {
        if let Some(module) = k.key.strip_prefix("module:") {
            spec.modules.retain(|m| m != module);
            if !removes(k.action) {
                spec.modules.push(module.to_string());
            }
        } else if removes(k.action) {
            spec.sysctl.remove(&k.key);
        } else if let Some(v) = &k.declared_value {
            spec.sysctl.insert(k.key.clone(), v.clone());
        }
    }
    for m in &d.mounts {
        if removes(m.action) {
            spec.mounts.remove(&m.path);
        } else if let Some(declared) = &m.declared {
            spec.mounts.insert(m.path.clone(), declared.clone());
        }
    }
    for f in &d.files {
        let pos = spec.files.iter().position(|x| x.path == f.path);
        if removes(f.action) {
            if let Some(i) = pos {
                spec.files.remove(i);
            }
            continue;
        }
        let mut file = pos
            .map(|i| spec.files[i].clone())
            .unwrap_or_else(|| FileSpec { path: f.path.clone(), ..Default::default() });
        if let Some(c) = &f.content {
            file.content = Some(c.clone());
            file.content_hash = None;
        } else if f.content_hash.is_some() && f.content_hash != declared_hash(&file) {
            // The content changed and only its hash was committed.
            file.content = None;
            file.content_hash = f.content_hash.clone();
        }
        file.mode = f.mode.or(file.mode);
        file.owner = f.owner.clone().or(file.owner);
        file.group = f.group.clone().or(file.group);
        match pos {
            Some(i) => spec.files[i] = file,
            None => spec.files.push(file),
        }
    }
    spec.files.sort_by(|a, b| a.path.cmp(&b.path));
    for s in &d.services {
        let pos = spec.services.iter().position(|x| x.name == s.name);
        match (pos, removes(s.action)) {
            (Some(i), true) => {
                spec.services.remove(i);
            }
            (Some(i), false) => {
                if let Some(state) = &s.declared_state {
                    spec.services[i].state = state.clone();
                }
            }
            (None, _) => {}
        }
    }
    for n in &d.network {
        if removes(n.action) {
            spec.network.remove(&n.interface);
        } else if let Some(detail) = &n.detail {
            spec.network.insert(n.interface.clone(), detail.clone());
        }
    }
    for p in &d.packages {
        if removes(p.action) {
            spec.packages.remove(&p.name);
        } else {
            spec.packages.insert(p.name.clone(), p.version.clone().unwrap_or_default());
        }
    }
}

/// The `sha256:<hex>` hash a declared file's content has (what FileDelta.content_hash holds).
fn declared_hash(f: &FileSpec) -> Option<String> {
    match &f.content {
        Some(c) => Some(pact_proto::content_hash(c.as_bytes())),
        None => f.content_hash.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pact_proto::config::{FileDelta, KernelDelta, MountDelta, MountSpec, ServiceDelta, ServiceSpec};

    fn spec() -> VClusterSpec {
        let mut s = VClusterSpec { vcluster_id: "ml".into(), ..Default::default() };
        s.sysctl.insert("vm.swappiness".into(), "10".into());
        s.modules = vec!["nvidia".into()];
        s.files.push(FileSpec { path: "/etc/motd".into(), content: Some("hi\n".into()), ..Default::default() });
        s.services.push(ServiceSpec {
            name: "chronyd".into(),
            binary: "/usr/sbin/chronyd".into(),
            ..Default::default()
        });
        s
    }

    #[test]
    fn the_boot_form_is_deterministic_and_checksummed() {
        let (a, blob_a) = build_overlay("ml", 7, spec()).unwrap();
        let (b, blob_b) = build_overlay("ml", 7, spec()).unwrap();
        assert_eq!(blob_a, blob_b);
        assert_eq!(a, b);
        assert_eq!(a.checksum, sha256_hex(&blob_a));
        assert_eq!(a.compressed_size as usize, blob_a.len());
        let raw = zstd::bulk::decompress(&blob_a, a.raw_size as usize).unwrap();
        assert_eq!(VClusterSpec::decode(&raw[..]).unwrap(), spec());
        // A different spec gives a different checksum.
        let mut other = spec();
        other.sysctl.insert("vm.swappiness".into(), "11".into());
        assert_ne!(build_overlay("ml", 7, other).unwrap().0.checksum, a.checksum);
    }

    #[test]
    fn deltas_fold_into_every_dimension() {
        let mut s = spec();
        let d = StateDelta {
            kernel: vec![
                KernelDelta {
                    key: "vm.swappiness".into(),
                    action: DeltaAction::Modify as i32,
                    declared_value: Some("60".into()),
                    actual_value: None,
                },
                KernelDelta { key: "module:nvidia".into(), action: DeltaAction::Remove as i32, ..Default::default() },
                KernelDelta { key: "module:lustre".into(), action: DeltaAction::Add as i32, ..Default::default() },
            ],
            mounts: vec![MountDelta {
                path: "/scratch".into(),
                action: DeltaAction::Add as i32,
                declared: Some(MountSpec { fs_type: "tmpfs".into(), source: "tmpfs".into(), ..Default::default() }),
                actual: None,
            }],
            files: vec![
                FileDelta {
                    path: "/etc/motd".into(),
                    action: DeltaAction::Modify as i32,
                    content: Some("bye\n".into()),
                    mode: Some(0o600),
                    ..Default::default()
                },
                FileDelta {
                    path: "/etc/a".into(),
                    action: DeltaAction::Add as i32,
                    content_hash: Some("sha256:00".into()),
                    ..Default::default()
                },
            ],
            services: vec![
                ServiceDelta {
                    name: "chronyd".into(),
                    action: DeltaAction::Modify as i32,
                    declared_state: Some("stopped".into()),
                    actual_state: None,
                },
                ServiceDelta {
                    name: "unknown".into(),
                    action: DeltaAction::Add as i32,
                    declared_state: Some("running".into()),
                    actual_state: None,
                },
            ],
            ..Default::default()
        };
        apply_delta(&mut s, &d);
        assert_eq!(s.sysctl["vm.swappiness"], "60");
        assert_eq!(s.modules, vec!["lustre".to_string()]);
        assert_eq!(s.mounts["/scratch"].fs_type, "tmpfs");
        assert_eq!(s.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), vec!["/etc/a", "/etc/motd"]);
        assert_eq!(s.files[1].content.as_deref(), Some("bye\n"));
        assert_eq!(s.files[1].mode, Some(0o600));
        assert_eq!(s.files[0].content_hash.as_deref(), Some("sha256:00"));
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.services[0].state, "stopped");
    }
}
