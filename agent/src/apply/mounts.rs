//! Mounts: tmpfs, bind (`fs_type = "bind"`, or `bind`/`rbind` among the options), NFS and any
//! other file system the kernel knows, with their options and `read_only`.
//!
//! - **Mount point and bind source** are declared absolute paths taken under [`Target::root`].
//!   The mount point is created (a directory, or an empty file when a file is bind-mounted).
//! - **Options:** the flag options (`ro rw nosuid nodev noexec noatime nodiratime relatime
//!   strictatime sync dirsync lazytime` and their opposites) become mount flags, the userspace
//!   ones (`defaults auto noauto nofail _netdev user nouser users x-*`) are dropped, and the rest
//!   go to the file system as its data (`size=1m`, `vers=4.2`, ...). `read_only = true` adds `ro`.
//!   A bind mount takes its flags in a second step (`MS_REMOUNT|MS_BIND`), as the kernel
//!   ignores them on the first; if that step fails the bind is undone rather than left writable.
//! - **Unchanged:** the mount table of the calling thread's namespace
//!   (`/proc/thread-self/mountinfo`; `/proc/self/...` names the main thread's, which differs
//!   when the caller unshared its mount namespace) has, at that exact point, the declared file
//!   system type (`nfs` and `nfs4` count as one) and source, or for a bind the same inode as
//!   the source. If its per-mount flags differ from the declared ones (read-only; nosuid,
//!   nodev, noexec, nodiratime where declared on or off) it is remounted. File-system options
//!   of an existing mount are not compared (the kernel rewrites them, `size=1m` reads back as
//!   `size=1024k`), so changing e.g. a tmpfs size needs the mount removed first ([`super::diff`]
//!   tells the live-update path which mounts changed). Something else mounted at the point is
//!   a failure: it is never unmounted or covered behind the admin's back.
//! - **NFS:** mounted with `mount(2)` directly, no `mount.nfs` (an initramfs has none, and it
//!   would be a process to supervise). The kernel needs the server's address, so the server in
//!   `host:/export` is resolved here and `addr=<ip>` added (unless given), plus for NFSv4 the
//!   local address facing the server as `clientaddr=` (what mount.nfs does; a UDP `connect`,
//!   no packet sent). What mount.nfs adds beyond that is not done: no version negotiation (the
//!   kernel's default for `nfs` is v3; say `vers=4.2` for v4), no `retry=` loop (the next apply
//!   is the retry).
//! - **Timeouts:** tmpfs, ramfs, bind and the kernel's pseudo file systems mount inline. Every
//!   other type (NFS, CIFS, Lustre, and disks too) mounts, server name resolution included, in
//!   a worker thread given [`Target::nfs_timeout`]. On time-out the item fails and the worker is
//!   left behind, blocked in the kernel: a thread cannot be cancelled, and the mount may still
//!   succeed later (then the next apply finds it and reports Unchanged). At most one worker per
//!   mount point exists at a time; while one is still blocked, further attempts at that point
//!   fail at once with "still pending" instead of stacking up threads.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use pact_proto::config::MountSpec;
use rustix::mount::{MountFlags, UnmountFlags};

use super::{errno_text, Outcome, Target};

/// One line of `/proc/<pid>/mountinfo`, escapes (`\040` ...) undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    /// The path inside the mounted file system that appears at the mount point.
    pub root: String,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// Options of the file system itself (`rw,size=1024k`).
    pub super_options: String,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// The calling thread's mount table.
pub fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/thread-self/mountinfo")
        .or_else(|_| std::fs::read_to_string("/proc/self/mountinfo"))?;
    Ok(parse_mountinfo(&text))
}

/// Parses mountinfo text (proc(5)): `id parent maj:min root point options [optional...] - type
/// source super_options`. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
        if sep < 6 || f.len() < sep + 3 {
            continue;
        }
        out.push(MountEntry {
            root: unescape(f[3]),
            mount_point: unescape(f[4]),
            options: f[5].to_string(),
            fs_type: f[sep + 1].to_string(),
            source: unescape(f[sep + 2]),
            super_options: f.get(sep + 3).copied().unwrap_or("").to_string(),
        });
    }
    out
}

/// Undoes the kernel's octal escapes of space, tab, newline and backslash.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A declared option string split into mount flags and file-system data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Flags to set.
    pub flags: MountFlags,
    /// Flags the options explicitly turn off (`rw`, `suid`, `dev`, `exec`, ...).
    pub clear: MountFlags,
    pub data: Vec<String>,
    pub bind: bool,
    pub recursive: bool,
}

pub fn parse_options(options: &str, read_only: bool) -> Options {
    let mut o = Options {
        flags: MountFlags::empty(),
        clear: MountFlags::empty(),
        data: Vec::new(),
        bind: false,
        recursive: false,
    };
    for opt in options.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (set, clear) = match opt {
            "ro" => (MountFlags::RDONLY, MountFlags::empty()),
            "rw" => (MountFlags::empty(), MountFlags::RDONLY),
            "nosuid" => (MountFlags::NOSUID, MountFlags::empty()),
            "suid" => (MountFlags::empty(), MountFlags::NOSUID),
            "nodev" => (MountFlags::NODEV, MountFlags::empty()),
            "dev" => (MountFlags::empty(), MountFlags::NODEV),
            "noexec" => (MountFlags::NOEXEC, MountFlags::empty()),
            "exec" => (MountFlags::empty(), MountFlags::NOEXEC),
            "noatime" => (MountFlags::NOATIME, MountFlags::empty()),
            "atime" => (MountFlags::empty(), MountFlags::NOATIME),
            "nodiratime" => (MountFlags::NODIRATIME, MountFlags::empty()),
            "diratime" => (MountFlags::empty(), MountFlags::NODIRATIME),
            "relatime" => (MountFlags::RELATIME, MountFlags::empty()),
            "norelatime" => (MountFlags::empty(), MountFlags::RELATIME),
            "strictatime" => (MountFlags::STRICTATIME, MountFlags::empty()),
            "sync" => (MountFlags::SYNCHRONOUS, MountFlags::empty()),
            "async" => (MountFlags::empty(), MountFlags::SYNCHRONOUS),
            "dirsync" => (MountFlags::DIRSYNC, MountFlags::empty()),
            "lazytime" => (MountFlags::LAZYTIME, MountFlags::empty()),
            "nolazytime" => (MountFlags::empty(), MountFlags::LAZYTIME),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                continue;
            }
            "defaults" | "auto" | "noauto" | "nofail" | "_netdev" | "user" | "nouser" | "users" => continue,
            x if x.starts_with("x-") || x.starts_with("comment=") => continue,
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
        o.clear = (o.clear | clear) & !set;
    }
    if read_only {
        o.flags |= MountFlags::RDONLY;
        o.clear -= MountFlags::RDONLY;
    }
    o
}

const ATIME_FLAGS: MountFlags = MountFlags::NOATIME.union(MountFlags::RELATIME).union(MountFlags::STRICTATIME);

/// Per-mount flags the mount table shows reliably, and so are compared with the declaration.
const COMPARED_FLAGS: [MountFlags; 5] =
    [MountFlags::RDONLY, MountFlags::NOSUID, MountFlags::NODEV, MountFlags::NOEXEC, MountFlags::NODIRATIME];

/// Whether a mount's per-mount options (`current`) have what the declaration asks for:
/// read-only exactly as declared; nosuid/nodev/noexec/nodiratime present when declared and
/// absent when declared off (`suid`, ...), and free otherwise (a bind inherits them).
fn flags_match(current: &str, o: &Options) -> bool {
    let cur = parse_options(current, false).flags;
    COMPARED_FLAGS.iter().all(|&f| {
        if o.flags.contains(f) {
            cur.contains(f)
        } else if o.clear.contains(f) || f == MountFlags::RDONLY {
            !cur.contains(f)
        } else {
            true
        }
    })
}

/// The flags to remount a bind mount with. `MS_REMOUNT|MS_BIND` sets the mount's flags to
/// exactly what it is given, so the flags the bind inherited from its source (`nosuid`, `nodev`
/// of the source's mount, in `current`, the mount's per-mount options) are kept unless the
/// options turn them off; a bind must not quietly become less restricted than its source.
/// Read-only comes from the declaration alone, and declared atime flags replace inherited ones.
fn bind_flags(current: &str, o: &Options) -> MountFlags {
    let mut base = parse_options(current, false).flags - o.clear - MountFlags::RDONLY;
    if o.flags.intersects(ATIME_FLAGS) {
        base -= ATIME_FLAGS;
    }
    base | o.flags
}

/// File systems that cannot block on I/O: mounted inline, without a worker thread.
const LOCAL_TYPES: &[&str] = &[
    "tmpfs",
    "ramfs",
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "mqueue",
    "hugetlbfs",
    "bpf",
    "tracefs",
    "debugfs",
    "securityfs",
    "configfs",
    "pstore",
    "efivarfs",
    "binfmt_misc",
    "fusectl",
];

fn is_nfs(fs_type: &str) -> bool {
    fs_type == "nfs" || fs_type == "nfs4"
}

fn same_type(a: &str, b: &str) -> bool {
    a == b || (is_nfs(a) && is_nfs(b))
}

pub fn apply(t: &Target, path: &str, m: &MountSpec) -> Outcome {
    match apply_inner(t, path, m) {
        Ok(o) => o,
        Err(e) => Outcome::Failed(e),
    }
}

fn apply_inner(t: &Target, path: &str, m: &MountSpec) -> Result<Outcome, String> {
    let opts = parse_options(&m.options, m.read_only);
    let bind = m.fs_type == "bind" || opts.bind;
    let fs_type = m.fs_type.as_str();
    if !bind && (fs_type.is_empty() || fs_type == "none") {
        return Err("no file system type declared".into());
    }
    // Lexically under the root first: stat'ing a mount point can hang when a dead NFS server
    // is mounted there, and the mount table answers without touching it.
    let root = std::fs::canonicalize(&t.root).unwrap_or_else(|_| t.root.clone());
    let target = Target { root, ..t.clone() }.resolve(path)?;
    let bind_source = if bind {
        let s = t.resolve(&m.source).map_err(|e| format!("bind source: {e}"))?;
        let meta = std::fs::metadata(&s).map_err(|e| format!("bind source {}: {e}", s.display()))?;
        Some((s, meta))
    } else {
        None
    };
    let source = if bind {
        m.source.clone()
    } else if m.source.is_empty() {
        // tmpfs and friends have no device; their type is the conventional source name.
        fs_type.to_string()
    } else {
        m.source.clone()
    };

    let table = read_mountinfo().map_err(|e| format!("reading the mount table: {e}"))?;
    let mut existing = find(&table, &target);
    // Where the mount table shows (or will show) this mount.
    let mut point = target.clone();
    if existing.is_none() {
        match &bind_source {
            Some((_, meta)) if !meta.is_dir() => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
                }
                if std::fs::symlink_metadata(&target).is_err() {
                    std::fs::File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
                }
            }
            _ => std::fs::create_dir_all(&target).map_err(|e| format!("creating {}: {e}", target.display()))?,
        }
        // The kernel records the path with symlinks resolved.
        if let Ok(canon) = std::fs::canonicalize(&target) {
            if canon != target {
                existing = find(&table, &canon);
                point = canon;
            }
        }
    }

    if let Some(e) = existing {
        let same = match &bind_source {
            Some((_, src_meta)) => {
                !is_nfs(&e.fs_type)
                    && std::fs::metadata(&target)
                        .map(|tm| tm.dev() == src_meta.dev() && tm.ino() == src_meta.ino())
                        .unwrap_or(false)
            }
            None => same_type(&e.fs_type, fs_type) && e.source == source,
        };
        if !same {
            return Err(format!("{} ({}) is already mounted there; it is not replaced", e.source, e.fs_type));
        }
        if flags_match(&e.options, &opts) {
            return Ok(Outcome::Unchanged);
        }
        let remount_flags = if bind { bind_flags(&e.options, &opts) | MountFlags::BIND } else { opts.flags };
        let data = opts.data.join(",");
        let tgt = target.clone();
        let remount = move || {
            rustix::mount::mount_remount(&tgt, remount_flags, data.as_str())
                .map_err(|e| format!("remount: {}", errno_text(e)))
        };
        return if bind || LOCAL_TYPES.contains(&fs_type) {
            remount().map(|()| Outcome::Applied)
        } else {
            Ok(with_timeout(target.clone(), t.nfs_timeout, remount))
        };
    }

    if let Some((src, _)) = &bind_source {
        let r = if opts.recursive {
            rustix::mount::mount_bind_recursive(src, &target)
        } else {
            rustix::mount::mount_bind(src, &target)
        };
        r.map_err(|e| format!("bind mount of {}: {}", src.display(), errno_text(e)))?;
        if !opts.flags.is_empty() {
            let inherited = read_mountinfo().ok().and_then(|t| find(&t, &point)).map(|e| e.options).unwrap_or_default();
            let flags = bind_flags(&inherited, &opts) | MountFlags::BIND;
            if let Err(e) = rustix::mount::mount_remount(&target, flags, "") {
                // A bind declared read-only must not stay mounted writable.
                let undone = rustix::mount::unmount(&target, UnmountFlags::empty());
                return Err(format!(
                    "applying flags to the bind mount: {}{}",
                    errno_text(e),
                    if undone.is_ok() { " (bind undone)" } else { " (and the bind could not be undone)" }
                ));
            }
        }
        return Ok(Outcome::Applied);
    }

    let fs_type = fs_type.to_string();
    let flags = opts.flags;
    let data = opts.data;
    let tgt = target.clone();
    let mount = move || -> Result<(), String> {
        let data = if is_nfs(&fs_type) { nfs_data(&source, &fs_type, data)? } else { data.join(",") };
        let cdata = CString::new(data).map_err(|_| "options contain a NUL byte".to_string())?;
        rustix::mount::mount(source.as_str(), &tgt, fs_type.as_str(), flags, cdata.as_c_str()).map_err(|e| match e {
            rustix::io::Errno::NODEV => {
                format!("mount: the kernel has no {fs_type} file system (is its module loaded?): {}", errno_text(e))
            }
            e => format!("mount: {}", errno_text(e)),
        })
    };
    if LOCAL_TYPES.contains(&m.fs_type.as_str()) {
        mount().map(|()| Outcome::Applied)
    } else {
        Ok(with_timeout(target, t.nfs_timeout, mount))
    }
}

fn find(table: &[MountEntry], target: &Path) -> Option<MountEntry> {
    let t = target.to_string_lossy();
    // The last entry at a point is the one on top, the one a path lookup sees.
    table.iter().rev().find(|e| e.mount_point == t).cloned()
}

/// NFS options with the server's address (`addr=`) and, for v4, `clientaddr=` added.
fn nfs_data(source: &str, fs_type: &str, mut data: Vec<String>) -> Result<String, String> {
    let has = |data: &[String], k: &str| data.iter().any(|o| o.starts_with(k));
    let host = nfs_host(source)?;
    let addr: IpAddr = match data.iter().find_map(|o| o.strip_prefix("addr=")) {
        Some(a) => a.parse().map_err(|_| format!("addr={a} is not an IP address"))?,
        None => {
            let ip = match host.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => (host.as_str(), 2049)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve NFS server {host}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("NFS server {host} has no address"))?
                    .ip(),
            };
            data.push(format!("addr={ip}"));
            ip
        }
    };
    let v4 = fs_type == "nfs4" || data.iter().any(|o| o.starts_with("vers=4") || o.starts_with("nfsvers=4"));
    if v4 && !has(&data, "clientaddr=") {
        // The address this node reaches the server from, for the server's callbacks.
        let local = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        if let Ok(me) = UdpSocket::bind(local)
            .and_then(|s| s.connect(SocketAddr::new(addr, 2049)).map(|()| s))
            .and_then(|s| s.local_addr())
        {
            data.push(format!("clientaddr={}", me.ip()));
        }
    }
    Ok(data.join(","))
}

/// The server of `host:/export` or `[v6addr]:/export`.
fn nfs_host(source: &str) -> Result<String, String> {
    let bad = || format!("NFS source {source:?} is not server:/path");
    if let Some(rest) = source.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
        if !tail.starts_with(':') || h.is_empty() {
            return Err(bad());
        }
        return Ok(h.to_string());
    }
    match source.split_once(':') {
        Some((h, p)) if !h.is_empty() && p.starts_with('/') => Ok(h.to_string()),
        _ => Err(bad()),
    }
}

/// Mount points with a worker still blocked in the kernel.
static PENDING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Removes a mount point from [`PENDING`] when its worker ends, however it ends.
struct PendingGuard(PathBuf);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        PENDING.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.0);
    }
}

/// Runs `f` (a mount that may block) in a worker thread and waits at most `timeout`.
pub(crate) fn with_timeout(
    key: PathBuf,
    timeout: Duration,
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Outcome {
    {
        let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
        if pending.contains(&key) {
            return Outcome::Failed(format!(
                "an earlier mount attempt at {} has not returned yet; not starting another",
                key.display()
            ));
        }
        pending.insert(key.clone());
    }
    let guard = PendingGuard(key);
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("pact-mount".into())
        // Enough for getaddrinfo; the default 2 MiB would be idle weight on a stuck thread.
        .stack_size(256 << 10)
        .spawn(move || {
            let _guard = guard;
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        // The closure (and the guard in it) was dropped, so the key is free again.
        return Outcome::Failed(format!("cannot start a mount worker: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Outcome::Applied,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(mpsc::RecvTimeoutError::Timeout) => Outcome::Failed(format!(
            "timed out after {:.1} s (the server did not answer); the attempt goes on in the background",
            timeout.as_secs_f64()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Outcome::Failed("the mount worker died".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn mountinfo_lines() {
        let text = "36 35 98:0 /mnt1 /mnt/par\\040ent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 36 0:50 / /data ro shared:3 - nfs4 srv:/x ro,vers=4.2\nbroken line\n";
        let t = parse_mountinfo(text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].mount_point, "/mnt/par ent");
        assert_eq!((t[0].fs_type.as_str(), t[0].source.as_str(), t[0].root.as_str()), ("ext3", "/dev/root", "/mnt1"));
        assert!(!t[0].read_only());
        assert!(t[1].read_only());
        assert_eq!(t[1].super_options, "ro,vers=4.2");
    }

    #[test]
    fn option_parsing() {
        let o = parse_options("defaults,nosuid,size=1m,ro,rw,_netdev,x-systemd.automount,mode=0755", false);
        assert_eq!(o.flags, MountFlags::NOSUID);
        assert_eq!(o.data, vec!["size=1m", "mode=0755"]);
        assert_eq!(o.clear, MountFlags::RDONLY);
        let o = parse_options("rbind,suid", true);
        assert!(o.bind && o.recursive);
        assert_eq!((o.flags, o.clear), (MountFlags::RDONLY, MountFlags::NOSUID));
        // A bind keeps its source's restrictions unless told otherwise, and ro is declared only.
        assert_eq!(
            bind_flags("ro,nosuid,nodev,relatime", &o),
            MountFlags::RDONLY | MountFlags::NODEV | MountFlags::RELATIME
        );
        assert!(flags_match("ro,nodev,noexec,relatime", &o));
        assert!(!flags_match("ro,nosuid,nodev,relatime", &o));
        assert!(!flags_match("rw,nosuid,relatime", &o));
        assert!(!flags_match("ro,relatime", &parse_options("nosuid", true)));
        assert!(!flags_match("ro,nosuid", &parse_options("suid", true)));
        let o = parse_options("noatime", false);
        assert_eq!(bind_flags("rw,nosuid,relatime", &o), MountFlags::NOSUID | MountFlags::NOATIME);
    }

    #[test]
    fn nfs_servers() {
        assert_eq!(nfs_host("storage01:/ml-scratch").unwrap(), "storage01");
        assert_eq!(nfs_host("[fd00::1]:/x").unwrap(), "fd00::1");
        assert!(nfs_host("storage01").is_err());
        assert!(nfs_host(":/x").is_err());
        assert_eq!(nfs_data("192.0.2.1:/x", "nfs", vec!["vers=3".into()]).unwrap(), "vers=3,addr=192.0.2.1");
        let v4 = nfs_data("127.0.0.1:/x", "nfs", vec!["vers=4.2".into()]).unwrap();
        assert_eq!(v4, "vers=4.2,addr=127.0.0.1,clientaddr=127.0.0.1");
    }

    /// A blocked worker fails its item after the timeout, blocks a second attempt at the same
    /// point while it is stuck, and frees the point once it returns.
    #[test]
    fn worker_timeout_and_pending() {
        let key = PathBuf::from("/pact-test/worker-timeout");
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let start = Instant::now();
        let o = with_timeout(key.clone(), Duration::from_millis(200), move || {
            let _ = release_rx.recv();
            Ok(())
        });
        let waited = start.elapsed();
        match o {
            Outcome::Failed(e) => assert!(e.contains("timed out after 0.2 s"), "{e}"),
            other => panic!("expected a time-out, got {other:?}"),
        }
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2), "{waited:?}");
        match with_timeout(key.clone(), Duration::from_secs(5), || Ok(())) {
            Outcome::Failed(e) => assert!(e.contains("has not returned yet"), "{e}"),
            other => panic!("expected pending, got {other:?}"),
        }
        release_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while PENDING.lock().unwrap().contains(&key) {
            assert!(Instant::now() < deadline, "the worker never released its mount point");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(with_timeout(key, Duration::from_secs(5), || Ok(())), Outcome::Applied);
        assert_eq!(
            with_timeout(PathBuf::from("/pact-test/err"), Duration::from_secs(5), || Err("no".into())),
            Outcome::Failed("no".into())
        );
    }
}
