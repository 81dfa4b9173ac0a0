//! Files: content, mode, owner and group, written atomically.
//!
//! - The path is a declared absolute path under [`Target::root`]; missing parent directories
//!   are created (mode 0755, owned by the agent).
//! - New content goes to a temporary file in the same directory (`.<name>.pact-<pid>-<n>`),
//!   gets its owner, then its mode (in that order: `chown` clears set-id bits), is fsync'd and
//!   renamed over the path, so a reader sees the old file or the new one, never a torn one.
//! - Unchanged: the path is a regular file with the declared bytes, and the declared mode
//!   (permission bits incl. set-id/sticky), owner and group where they are declared. When
//!   only the metadata differs it is fixed in place, without rewriting the content.
//! - Undeclared mode/owner/group: kept as the existing file has them; a new file gets 0644
//!   and the agent's own user and group.
//! - Owner and group: numeric, or names looked up in the target root's `etc/passwd` and
//!   `etc/group` (not through NSS: the root may be an image and the agent may be static).
//!   `root` is uid/gid 0 even where the root has no passwd file.
//! - A file declared by `content_hash` only (`sha256:<hex>`: a node committed a change larger
//!   than the journal keeps, or the content lives elsewhere) cannot be written: it is Unchanged
//!   when the file on disk has that hash (its metadata is still applied), else it fails.
//!   When both content and a hash are declared, a mismatch between them fails the item.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use pact_proto::config::FileSpec;

use super::{Outcome, Target};

/// What is to be set, with names already resolved.
struct Want {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
}

pub fn apply(t: &Target, f: &FileSpec) -> Outcome {
    match apply_inner(t, f) {
        Ok(o) => o,
        Err(e) => Outcome::Failed(e),
    }
}

fn apply_inner(t: &Target, f: &FileSpec) -> Result<Outcome, String> {
    let path = t.resolve(&f.path)?;
    let want = Want {
        mode: f.mode.map(|m| m & 0o7777),
        uid: f.owner.as_deref().map(|o| resolve_id(&t.root, "etc/passwd", "user", o)).transpose()?,
        gid: f.group.as_deref().map(|g| resolve_id(&t.root, "etc/group", "group", g)).transpose()?,
    };
    if let (Some(c), Some(h)) = (&f.content, &f.content_hash) {
        let actual = sha256_tag(c.as_bytes());
        if !h.eq_ignore_ascii_case(&actual) {
            return Err(format!("declared content has {actual}, not the declared {h}"));
        }
    }
    let existing = match fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => Some(m),
        Ok(m) if m.is_dir() => return Err(format!("{} is a directory", path.display())),
        // A symlink, fifo, ... is replaced by the rename like a missing file.
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };

    let Some(content) = &f.content else {
        let Some(hash) = &f.content_hash else {
            return Err("neither content nor content_hash is declared".into());
        };
        if !hash.starts_with("sha256:") {
            return Err(format!("unsupported content_hash {hash:?} (want sha256:<hex>)"));
        }
        let Some(meta) = &existing else {
            return Err(format!(
                "content not in the overlay (only its hash {hash}) and {} does not exist",
                path.display()
            ));
        };
        let on_disk = sha256_file(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if !on_disk.eq_ignore_ascii_case(hash) {
            return Err(format!("content not in the overlay (only its hash {hash}); the file on disk has {on_disk}"));
        }
        return fix_metadata(&path, meta, &want);
    };

    if let Some(meta) = &existing {
        if meta.len() == content.len() as u64 && read_equals(&path, content.as_bytes())? {
            return fix_metadata(&path, meta, &want);
        }
    }
    // New content keeps the existing file's undeclared metadata.
    let mode = want.mode.or(existing.as_ref().map(|m| m.mode() & 0o7777)).unwrap_or(0o644);
    let uid = want.uid.or(existing.as_ref().map(|m| m.uid()));
    let gid = want.gid.or(existing.as_ref().map(|m| m.gid()));
    write_atomic(&path, content.as_bytes(), mode, uid, gid)?;
    Ok(Outcome::Applied)
}

fn fix_metadata(path: &Path, meta: &fs::Metadata, want: &Want) -> Result<Outcome, String> {
    let owner_ok = want.uid.is_none_or(|u| u == meta.uid()) && want.gid.is_none_or(|g| g == meta.gid());
    let mode_ok = want.mode.is_none_or(|m| m == meta.mode() & 0o7777);
    if owner_ok && mode_ok {
        return Ok(Outcome::Unchanged);
    }
    if !owner_ok {
        std::os::unix::fs::lchown(path, want.uid, want.gid).map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    // Also after a chown, which may have cleared set-id bits the mode keeps.
    let mode = want.mode.unwrap_or(meta.mode() & 0o7777);
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(Outcome::Applied)
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `path` whole or not at all: a unique temporary file beside it, mode and owner set,
/// synced, renamed over it.
pub(crate) fn write_atomic(
    path: &Path,
    content: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), String> {
    let dir = path.parent().ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".pact-{}-{}", std::process::id(), TMP_SEQ.fetch_add(1, Ordering::Relaxed)));
    let tmp = dir.join(name);
    let result = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(content)?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&file, uid, gid)?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

fn read_equals(path: &Path, want: &[u8]) -> Result<bool, String> {
    let mut file = File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut buf = [0u8; 64 << 10];
    let mut off = 0;
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            return Ok(off == want.len());
        }
        if off + n > want.len() || buf[..n] != want[off..off + n] {
            return Ok(false);
        }
        off += n;
    }
}

/// `sha256:<hex>` of some bytes, the form FileSpec.content_hash uses.
pub fn sha256_tag(bytes: &[u8]) -> String {
    pact_proto::content_hash(bytes)
}

fn hex_tag(d: &[u8]) -> String {
    format!("sha256:{}", pact_proto::hex(d))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut file = File::open(path)?;
    let mut buf = [0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex_tag(ctx.finish().as_ref()));
        }
        ctx.update(&buf[..n]);
    }
}

/// A user or group: a number, or a name in `<root>/<db>` (passwd/group format: name:x:id:...).
fn resolve_id(root: &Path, db: &str, what: &str, name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let file = root.join(db);
    match fs::read_to_string(&file) {
        Ok(text) => {
            for line in text.lines() {
                let mut f = line.split(':');
                if f.next() == Some(name) {
                    if let Some(id) = f.nth(1).and_then(|s| s.trim().parse().ok()) {
                        return Ok(id);
                    }
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", file.display())),
    }
    if name == "root" {
        return Ok(0);
    }
    Err(format!("unknown {what} {name:?} (not in {})", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes() {
        assert_eq!(sha256_tag(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
