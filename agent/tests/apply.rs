//! The agent's config apply, against the real kernel where that is safe.
//!
//! Files, sysctls and modules use temporary directories as the target root, `proc_sys` and
//! `modules_dir`. Mounts are real (tmpfs, bind, an unreachable NFS server) and happen in a
//! private mount namespace owned by one test thread, so nothing leaks into the host's mount
//! table even if a test fails half-way; the tests still unmount what they mounted and check
//! it. The hostname is only ever set inside a private UTS namespace. Sysctls are never
//! written for real with a valid value: no sysctl is harmless to change on a shared CI host,
//! so the real `/proc/sys` only gets reads and one value the kernel's parser rejects before
//! storing anything (checked by reading the value back).
//!
//! Tests that need root (mounts, chown, namespaces) print `skipped: <reason>` and do what
//! they can without it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nanoserde::DeJson;
use pact_agent::apply::{self, mounts, ItemResult, Outcome, Target};
use pact_agent::capability::{self, Capability};
use pact_proto::config::{FileSpec, MountSpec, PolicySpec, ServiceSpec, VClusterSpec};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::UnshareFlags;

// ---------------------------------------------------------------- helpers

fn is_root() -> bool {
    rustix::process::geteuid().as_raw() == 0
}

fn skipped(test: &str, reason: &str) {
    println!("skipped: {test}: {reason}");
}

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "pact-apply-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn target(root: &Path, proc_sys: &Path, modules_dir: &Path) -> Target {
    Target {
        root: root.to_path_buf(),
        proc_sys: proc_sys.to_path_buf(),
        modules_dir: modules_dir.to_path_buf(),
        nfs_timeout: Duration::from_secs(2),
    }
}

fn outcome<'a>(results: &'a [ItemResult], dimension: &str, item: &str) -> &'a Outcome {
    &results
        .iter()
        .find(|r| r.dimension == dimension && r.item == item)
        .unwrap_or_else(|| panic!("no result for {dimension} {item} in {results:#?}"))
        .outcome
}

fn assert_failed(results: &[ItemResult], dimension: &str, item: &str, needle: &str) {
    match outcome(results, dimension, item) {
        Outcome::Failed(why) => assert!(why.contains(needle), "{dimension} {item}: {why:?} lacks {needle:?}"),
        other => panic!("{dimension} {item}: expected Failed({needle}..), got {other:?}"),
    }
}

fn assert_all(results: &[ItemResult], want: &Outcome) {
    for r in results {
        assert_eq!(&r.outcome, want, "{} {}", r.dimension, r.item);
    }
}

fn file(path: &str, content: &str) -> FileSpec {
    FileSpec { path: path.into(), content: Some(content.into()), ..Default::default() }
}

fn mount(fs_type: &str, source: &str, options: &str, read_only: bool) -> MountSpec {
    MountSpec { fs_type: fs_type.into(), source: source.into(), options: options.into(), read_only }
}

/// Runs `f` on a thread with its own namespaces (`flags`): a mount namespace whose mounts
/// are all private (so nothing propagates back to the host), and/or a UTS namespace.
/// Err when the kernel refuses the namespace.
fn in_namespaces<R: Send + 'static>(flags: UnshareFlags, f: impl FnOnce() -> R + Send + 'static) -> Result<R, String> {
    std::thread::spawn(move || {
        unshare(flags)?;
        if flags.contains(UnshareFlags::NEWNS) {
            rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
                .map_err(|e| format!("making / private in the new mount namespace: {e}"))?;
        }
        Ok(f())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

#[allow(unsafe_code)]
fn unshare(flags: UnshareFlags) -> Result<(), String> {
    assert!(!flags.contains(UnshareFlags::FILES));
    // SAFETY: only namespace flags (NEWNS, NEWUTS) are passed, never FILES: no file
    // descriptor table is split, so every descriptor other threads hold stays valid. The
    // calling thread is a dedicated test thread that ends with the closure it runs.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|e| format!("unshare({flags:?}): {e}"))
}

fn mounted_at(p: &Path) -> Option<mounts::MountEntry> {
    let s = p.to_string_lossy();
    mounts::read_mountinfo().unwrap().into_iter().rev().find(|e| e.mount_point == s)
}

fn cap_effective(bit: u32) -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string())))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

// ---------------------------------------------------------------- files

#[test]
fn files_content_mode_owner_nested_and_hash_only() {
    let root = TempDir::new("files");
    let r = root.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\npactuser:x:4242:4243::/:/bin/false\n").unwrap();
    fs::write(r.join("etc/group"), "root:x:0:\npactgroup:x:4343:\n").unwrap();
    fs::write(r.join("etc/hash-ok"), "known\n").unwrap();
    fs::write(r.join("etc/hash-mismatch"), "something else\n").unwrap();
    let t = target(r, &r.join("no-proc-sys"), &r.join("no-modules"));
    let root_ok = is_root();
    if !root_ok {
        skipped("files owner", "not root: chown to other users is not possible; owners are left undeclared");
    }

    let mut spec = VClusterSpec::default();
    spec.files.push(FileSpec {
        mode: Some(0o640),
        owner: root_ok.then(|| "root".into()),
        group: root_ok.then(|| "4243".into()),
        ..file("/etc/pact/deep/nested/app.conf", "a = 1\n")
    });
    spec.files.push(file("/etc/motd", "welcome\n"));
    spec.files.push(FileSpec {
        mode: Some(0o4750),
        owner: root_ok.then(|| "pactuser".into()),
        group: root_ok.then(|| "pactgroup".into()),
        ..file("/opt/tool/bin/run", "#!/bin/sh\n")
    });
    spec.files.push(FileSpec {
        path: "/etc/hash-ok".into(),
        content_hash: Some(apply::files::sha256_tag(b"known\n")),
        ..Default::default()
    });
    spec.files.push(FileSpec {
        path: "/etc/hash-missing".into(),
        content_hash: Some(apply::files::sha256_tag(b"x")),
        ..Default::default()
    });
    spec.files.push(FileSpec {
        path: "/etc/hash-mismatch".into(),
        content_hash: Some(apply::files::sha256_tag(b"known\n")),
        ..Default::default()
    });
    spec.files.push(file("relative/path", "x"));
    spec.files.push(file("/etc/../escape", "x"));

    let first = apply::apply_all(&spec, None, &t);
    assert_eq!(first.len(), spec.files.len());
    assert!(first.iter().all(|x| x.dimension == "files"));
    for p in ["/etc/pact/deep/nested/app.conf", "/etc/motd", "/opt/tool/bin/run"] {
        assert_eq!(outcome(&first, "files", p), &Outcome::Applied, "{p}");
    }
    assert_eq!(outcome(&first, "files", "/etc/hash-ok"), &Outcome::Unchanged);
    assert_failed(&first, "files", "/etc/hash-missing", "content not in the overlay");
    assert_failed(&first, "files", "/etc/hash-mismatch", "content not in the overlay");
    assert_failed(&first, "files", "relative/path", "not an absolute path");
    assert_failed(&first, "files", "/etc/../escape", "'..'");
    assert!(!r.parent().unwrap().join("escape").exists());

    let app = r.join("etc/pact/deep/nested/app.conf");
    assert_eq!(fs::read_to_string(&app).unwrap(), "a = 1\n");
    let m = fs::metadata(&app).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    if root_ok {
        assert_eq!((m.uid(), m.gid()), (0, 4243));
    }
    assert_eq!(fs::metadata(r.join("etc/motd")).unwrap().mode() & 0o7777, 0o644);
    let run = fs::metadata(r.join("opt/tool/bin/run")).unwrap();
    // Set-uid survives because the owner is set before the mode.
    assert_eq!(run.mode() & 0o7777, 0o4750);
    if root_ok {
        assert_eq!((run.uid(), run.gid()), (4242, 4343));
    }
    // The hash-only file with the wrong content is left alone.
    assert_eq!(fs::read_to_string(r.join("etc/hash-mismatch")).unwrap(), "something else\n");
    // No temporary file is left next to what was written.
    for dir in ["etc", "etc/pact/deep/nested", "opt/tool/bin"] {
        for e in fs::read_dir(r.join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".pact-"), "temporary file {name} left in {dir}");
        }
    }

    // Re-applying changes nothing (the failures stay failures).
    let ino_before = fs::metadata(&app).unwrap().ino();
    let second = apply::apply_all(&spec, None, &t);
    for p in ["/etc/pact/deep/nested/app.conf", "/etc/motd", "/opt/tool/bin/run", "/etc/hash-ok"] {
        assert_eq!(outcome(&second, "files", p), &Outcome::Unchanged, "{p}");
    }
    assert_failed(&second, "files", "/etc/hash-missing", "content not in the overlay");

    // Only the mode changes: fixed in place, the file is not rewritten.
    let mut spec2 = VClusterSpec::default();
    spec2.files.push(FileSpec { mode: Some(0o600), ..spec.files[0].clone() });
    assert_eq!(apply::apply_all(&spec2, None, &t)[0].outcome, Outcome::Applied);
    let m = fs::metadata(&app).unwrap();
    assert_eq!((m.mode() & 0o7777, m.ino()), (0o600, ino_before));

    // New content: a new file renamed into place, undeclared metadata kept.
    let mut spec3 = VClusterSpec::default();
    spec3.files.push(FileSpec { content: Some("a = 2\n".into()), mode: None, ..spec.files[0].clone() });
    assert_eq!(apply::apply_all(&spec3, None, &t)[0].outcome, Outcome::Applied);
    let m = fs::metadata(&app).unwrap();
    assert_eq!(fs::read_to_string(&app).unwrap(), "a = 2\n");
    assert_ne!(m.ino(), ino_before);
    assert_eq!(m.mode() & 0o7777, 0o600);

    // Unknown names fail that file only.
    let mut spec4 = VClusterSpec::default();
    spec4.files.push(FileSpec { owner: Some("nobody-here".into()), ..file("/etc/a", "a") });
    spec4.files.push(FileSpec { group: Some("nogroup-here".into()), ..file("/etc/b", "b") });
    spec4.files.push(file("/etc/c", "c"));
    let res = apply::apply_all(&spec4, None, &t);
    assert_failed(&res, "files", "/etc/a", "unknown user \"nobody-here\"");
    assert_failed(&res, "files", "/etc/b", "unknown group \"nogroup-here\"");
    assert_eq!(outcome(&res, "files", "/etc/c"), &Outcome::Applied);
    assert!(!r.join("etc/a").exists());
}

// ---------------------------------------------------------------- sysctl

#[test]
fn sysctl_writes_compare_and_unknown_keys_in_a_temp_proc_sys() {
    let dir = TempDir::new("sysctl");
    let ps = dir.path().join("sys");
    fs::create_dir_all(ps.join("kernel")).unwrap();
    fs::create_dir_all(ps.join("net/ipv4/conf/eth0.100")).unwrap();
    fs::write(ps.join("kernel/pact_test"), "1\n").unwrap();
    fs::write(ps.join("net/ipv4/tcp_rmem"), "4096\t131072\t6291456\n").unwrap();
    fs::write(ps.join("net/ipv4/conf/eth0.100/rp_filter"), "0\n").unwrap();
    let t = target(dir.path(), &ps, &dir.path().join("m"));
    let mut spec = VClusterSpec::default();
    spec.sysctl.insert("kernel.pact_test".into(), "2".into());
    spec.sysctl.insert("net.ipv4.tcp_rmem".into(), "4096 131072   6291456".into());
    spec.sysctl.insert("net/ipv4/conf/eth0.100/rp_filter".into(), "1".into());
    spec.sysctl.insert("kernel.no_such_key".into(), "1".into());
    spec.sysctl.insert("kernel..bad".into(), "1".into());

    let first = apply::apply_all(&spec, None, &t);
    assert_eq!(first.len(), 5);
    assert_eq!(outcome(&first, "sysctl", "kernel.pact_test"), &Outcome::Applied);
    assert_eq!(fs::read_to_string(ps.join("kernel/pact_test")).unwrap(), "2");
    assert_eq!(outcome(&first, "sysctl", "net.ipv4.tcp_rmem"), &Outcome::Unchanged);
    assert_eq!(outcome(&first, "sysctl", "net/ipv4/conf/eth0.100/rp_filter"), &Outcome::Applied);
    assert_eq!(fs::read_to_string(ps.join("net/ipv4/conf/eth0.100/rp_filter")).unwrap(), "1");
    assert_failed(&first, "sysctl", "kernel.no_such_key", "no such sysctl kernel.no_such_key");
    assert_failed(&first, "sysctl", "kernel..bad", "invalid sysctl key");

    let second = apply::apply_all(&spec, None, &t);
    for k in ["kernel.pact_test", "net.ipv4.tcp_rmem", "net/ipv4/conf/eth0.100/rp_filter"] {
        assert_eq!(outcome(&second, "sysctl", k), &Outcome::Unchanged, "{k}");
    }
}

#[test]
fn sysctl_against_the_real_proc_sys_reads_and_a_rejected_value() {
    let dir = TempDir::new("realsys");
    let t = target(dir.path(), Path::new("/proc/sys"), &dir.path().join("m"));
    let mut spec = VClusterSpec::default();
    spec.sysctl.insert("kernel.ostype".into(), "Linux".into());
    spec.sysctl.insert("kernel.pact_no_such_key".into(), "1".into());
    let swappiness = Path::new("/proc/sys/vm/swappiness");
    let before = fs::read_to_string(swappiness).ok();
    if before.is_some() {
        // Not a number: the kernel's integer parser refuses it before storing anything.
        spec.sysctl.insert("vm.swappiness".into(), "not-a-number".into());
    } else {
        skipped("sysctl rejected value", "/proc/sys/vm/swappiness is not readable here");
    }
    let res = apply::apply_all(&spec, None, &t);
    assert_eq!(outcome(&res, "sysctl", "kernel.ostype"), &Outcome::Unchanged);
    assert_failed(&res, "sysctl", "kernel.pact_no_such_key", "no such sysctl");
    if let Some(before) = before {
        // EINVAL from the parser, or EROFS/EACCES where /proc/sys is read-only: an errno either way.
        assert_failed(&res, "sysctl", "vm.swappiness", "os error");
        assert_eq!(fs::read_to_string(swappiness).unwrap(), before, "the rejected write changed the value");
        println!("vm.swappiness: {:?}", outcome(&res, "sysctl", "vm.swappiness"));
    }
}

// ---------------------------------------------------------------- modules

#[test]
fn modules_missing_dependencies_and_builtin_are_reported_item_by_item() {
    let dir = TempDir::new("modules");
    let md = dir.path().join("lib/modules/test");
    fs::create_dir_all(md.join("kernel/pact")).unwrap();
    // pact_fake's file exists but its dependency's does not: the dependency is tried first
    // and fails, so nothing is handed to the kernel.
    fs::write(md.join("kernel/pact/pact_fake.ko"), b"not an ELF image").unwrap();
    fs::write(md.join("modules.dep"), "kernel/pact/pact_fake.ko: kernel/pact/pact-fake-dep.ko\n").unwrap();
    fs::write(md.join("modules.builtin"), "kernel/pact/pact_builtin.ko\n").unwrap();
    let t = target(dir.path(), &dir.path().join("ps"), &md);
    let spec = spec_with_modules(&["pact_test_no_such_module", "pact-fake", "pact-builtin", ""]);
    let res = apply::apply_all(&spec, None, &t);
    assert_eq!(res.len(), 4);
    assert!(res.iter().all(|r| r.dimension == "modules"));
    assert_failed(
        &res,
        "modules",
        "pact_test_no_such_module",
        &format!("module pact_test_no_such_module not found under {}", md.display()),
    );
    assert_failed(&res, "modules", "pact_test_no_such_module", "modules.dep");
    assert_failed(&res, "modules", "pact-fake", "dependency pact_fake_dep of pact-fake");
    assert_eq!(outcome(&res, "modules", "pact-builtin"), &Outcome::Unchanged);
    assert_failed(&res, "modules", "", "empty module name");

    // Without modules.dep the directory is searched; without the directory, that is said.
    let walk = dir.path().join("lib/modules/walk");
    fs::create_dir_all(walk.join("kernel/a/b")).unwrap();
    fs::write(walk.join("kernel/a/b/other.ko"), b"").unwrap();
    let res = apply::apply_all(
        &spec_with_modules(&["pact_test_no_such_module"]),
        None,
        &target(dir.path(), dir.path(), &walk),
    );
    assert_failed(&res, "modules", "pact_test_no_such_module", "no modules.dep; searched");
    let res = apply::apply_all(
        &spec_with_modules(&["pact_test_no_such_module"]),
        None,
        &target(dir.path(), dir.path(), &dir.path().join("absent")),
    );
    assert_failed(&res, "modules", "pact_test_no_such_module", "no such directory");
}

fn spec_with_modules(m: &[&str]) -> VClusterSpec {
    VClusterSpec { modules: m.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

/// Harmless library modules (checksums; no devices, no side effects) a real load may use.
const HARMLESS_MODULES: [&str; 4] = ["crc_itu_t", "crc7", "crc4", "crc8"];
const CAP_SYS_MODULE: u32 = 16;

#[test]
fn modules_real_kernel() {
    let proc_modules = match fs::read_to_string("/proc/modules") {
        Ok(s) => s,
        Err(e) => {
            skipped("modules real load", &format!("/proc/modules: {e} (a kernel without loadable modules)"));
            return;
        }
    };
    let t = Target::system(Duration::from_secs(2));
    // A module that is already loaded is Unchanged, and nothing is loaded for it.
    if let Some(loaded) = proc_modules.lines().filter_map(|l| l.split_whitespace().next()).next() {
        let res = apply::apply_all(&spec_with_modules(&[loaded]), None, &t);
        assert_eq!(res[0].outcome, Outcome::Unchanged, "{loaded}");
    }
    if !cap_effective(CAP_SYS_MODULE) {
        skipped("modules real load", "no CAP_SYS_MODULE in this process");
        return;
    }
    if !t.modules_dir.is_dir() {
        skipped("modules real load", &format!("{} does not exist", t.modules_dir.display()));
        return;
    }
    let loaded: Vec<String> =
        proc_modules.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect();
    let Some(name) =
        HARMLESS_MODULES.iter().find(|m| !loaded.iter().any(|l| l == *m) && !Path::new("/sys/module").join(m).exists())
    else {
        skipped("modules real load", "each harmless candidate module is already loaded or built in");
        return;
    };
    let res = apply::apply_all(&spec_with_modules(&[name]), None, &t);
    match &res[0].outcome {
        Outcome::Applied => {
            let again = apply::apply_all(&spec_with_modules(&[name]), None, &t);
            assert_eq!(again[0].outcome, Outcome::Unchanged);
            // Leave the kernel as it was.
            let c = std::ffi::CString::new(*name).unwrap();
            rustix::system::delete_module(&c, libc::O_NONBLOCK).unwrap();
        }
        Outcome::Failed(why) if why.contains("not found under") => {
            skipped("modules real load", &format!("{name}: {why}"));
        }
        other => panic!("loading {name}: {other:?}"),
    }
}

// ---------------------------------------------------------------- mounts

#[test]
fn mounts_tmpfs_bind_read_only_remount_and_unmount() {
    if !is_root() {
        skipped("mounts", "not root: mount(2) needs CAP_SYS_ADMIN");
        return;
    }
    let dir = TempDir::new("mounts");
    let r = std::fs::canonicalize(dir.path()).unwrap();
    let r2 = r.clone();
    let ran = in_namespaces(UnshareFlags::NEWNS, move || mount_checks(&r2));
    match ran {
        Ok(()) => {}
        Err(e) => skipped("mounts", &format!("no private mount namespace ({e}); not mounting in the host's")),
    }
    // The host's mount table never saw any of it.
    let host = mounts::read_mountinfo().unwrap();
    assert!(!host.iter().any(|e| Path::new(&e.mount_point).starts_with(&r)), "a test mount leaked to the host");
}

fn mount_checks(r: &Path) {
    fs::create_dir_all(r.join("srv/data")).unwrap();
    fs::write(r.join("srv/data/hello"), "hi\n").unwrap();
    fs::write(r.join("srv/one.conf"), "one\n").unwrap();
    let t = target(r, &r.join("ps"), &r.join("md"));
    let mut spec = VClusterSpec::default();
    spec.mounts.insert("/mnt/scratch".into(), mount("tmpfs", "", "size=1m,mode=0755,nosuid", false));
    spec.mounts.insert("/mnt/ro".into(), mount("tmpfs", "pact-ro", "", true));
    spec.mounts.insert("/mnt/bind".into(), mount("bind", "/srv/data", "", true));
    spec.mounts.insert("/mnt/bind2".into(), mount("none", "/srv/data", "bind,nodev", false));
    spec.mounts.insert("/mnt/one.conf".into(), mount("bind", "/srv/one.conf", "", false));

    let first = apply::apply_all(&spec, None, &t);
    assert_eq!(first.len(), 5);
    assert_all(&first, &Outcome::Applied);

    let scratch = r.join("mnt/scratch");
    let e = mounted_at(&scratch).expect("tmpfs mounted");
    assert_eq!((e.fs_type.as_str(), e.source.as_str()), ("tmpfs", "tmpfs"));
    assert!(e.options.split(',').any(|o| o == "nosuid"), "{e:?}");
    assert!(e.super_options.contains("size=1024k"), "{e:?}");
    fs::write(scratch.join("f"), "x").unwrap();

    let ro = r.join("mnt/ro");
    assert_eq!(mounted_at(&ro).unwrap().source, "pact-ro");
    assert!(mounted_at(&ro).unwrap().read_only());
    assert_eq!(fs::write(ro.join("f"), "x").unwrap_err().raw_os_error(), Some(libc::EROFS));

    let bind = r.join("mnt/bind");
    assert_eq!(fs::read_to_string(bind.join("hello")).unwrap(), "hi\n");
    assert!(mounted_at(&bind).unwrap().read_only());
    assert_eq!(fs::write(bind.join("new"), "x").unwrap_err().raw_os_error(), Some(libc::EROFS));
    // The source itself stays writable, and a read-write bind of it writes through.
    fs::write(r.join("mnt/bind2/through"), "y").unwrap();
    assert_eq!(fs::read_to_string(r.join("srv/data/through")).unwrap(), "y");
    assert!(mounted_at(&r.join("mnt/bind2")).unwrap().options.split(',').any(|o| o == "nodev"));
    assert_eq!(fs::read_to_string(r.join("mnt/one.conf")).unwrap(), "one\n");

    // Re-applying changes nothing.
    let second = apply::apply_all(&spec, None, &t);
    assert_all(&second, &Outcome::Unchanged);

    // A read-only bind of a nosuid,nodev mount keeps those restrictions (the remount that
    // makes it read-only must not clear them).
    let locked = r.join("srv/locked");
    fs::create_dir_all(&locked).unwrap();
    rustix::mount::mount("tmpfs", &locked, "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, None).unwrap();
    let mut lspec = VClusterSpec::default();
    lspec.mounts.insert("/mnt/locked".into(), mount("bind", "/srv/locked", "", true));
    assert_all(&apply::apply_all(&lspec, None, &t), &Outcome::Applied);
    let e = mounted_at(&r.join("mnt/locked")).unwrap();
    for o in ["ro", "nosuid", "nodev"] {
        assert!(e.options.split(',').any(|x| x == o), "{o} missing on the bind: {e:?}");
    }
    assert_all(&apply::apply_all(&lspec, None, &t), &Outcome::Unchanged);
    rustix::mount::unmount(r.join("mnt/locked"), UnmountFlags::empty()).unwrap();
    rustix::mount::unmount(&locked, UnmountFlags::empty()).unwrap();

    // Someone remounted the scratch read-only (which also dropped nosuid): apply puts
    // read-write and nosuid back, content intact.
    rustix::mount::mount_remount(&scratch, MountFlags::RDONLY, "").unwrap();
    assert!(mounted_at(&scratch).unwrap().read_only());
    let third = apply::apply_all(&spec, None, &t);
    assert_eq!(outcome(&third, "mounts", "/mnt/scratch"), &Outcome::Applied);
    let e = mounted_at(&scratch).unwrap();
    assert!(!e.read_only() && e.options.split(',').any(|o| o == "nosuid"), "{e:?}");
    assert_eq!(fs::read_to_string(scratch.join("f")).unwrap(), "x");
    assert_all(&apply::apply_all(&spec, None, &t), &Outcome::Unchanged);

    // A different file system already at a point is not replaced.
    let mut other = VClusterSpec::default();
    other.mounts.insert("/mnt/scratch".into(), mount("tmpfs", "someone-else", "", false));
    let res = apply::apply_all(&other, None, &t);
    assert_failed(&res, "mounts", "/mnt/scratch", "tmpfs (tmpfs) is already mounted there");
    // A bind of a missing source fails that item only.
    let mut missing = VClusterSpec::default();
    missing.mounts.insert("/mnt/nope".into(), mount("bind", "/srv/absent", "", false));
    assert_failed(&apply::apply_all(&missing, None, &t), "mounts", "/mnt/nope", "bind source");

    // Unmount in reverse order, then nothing under the root is mounted any more.
    for p in ["mnt/one.conf", "mnt/bind2", "mnt/bind", "mnt/ro", "mnt/scratch"] {
        rustix::mount::unmount(r.join(p), UnmountFlags::empty()).unwrap_or_else(|e| panic!("unmount {p}: {e}"));
    }
    let left: Vec<_> =
        mounts::read_mountinfo().unwrap().into_iter().filter(|e| Path::new(&e.mount_point).starts_with(r)).collect();
    assert!(left.is_empty(), "still mounted: {left:?}");
}

// ---------------------------------------------------------------- bad values

/// Unknown sysctl, missing module, unreachable NFS server and an unknown file system, each
/// reported on its own item while the good items of the same spec are applied; what lies
/// under the failed NFS mount point is skipped, not written beneath it.
#[test]
fn bad_values_are_reported_item_by_item_and_the_rest_is_applied() {
    let dir = TempDir::new("bad");
    let r = std::fs::canonicalize(dir.path()).unwrap();
    let with_mounts = is_root();
    if !with_mounts {
        skipped("bad values: mounts", "not root: the spec is applied without its mounts");
    }
    let r2 = r.clone();
    let run = move || bad_values(&r2, with_mounts);
    if with_mounts {
        if let Err(e) = in_namespaces(UnshareFlags::NEWNS, run) {
            skipped("bad values", &format!("no private mount namespace: {e}"));
        }
    } else {
        run();
    }
}

fn bad_values(r: &Path, with_mounts: bool) {
    let ps = r.join("proc-sys");
    fs::create_dir_all(ps.join("vm")).unwrap();
    fs::write(ps.join("vm/swappiness"), "60\n").unwrap();
    let t = target(r, &ps, &r.join("lib/modules/none"));
    let mut spec = VClusterSpec::default();
    spec.sysctl.insert("vm.swappiness".into(), "10".into());
    spec.sysctl.insert("kernel.pact_unknown".into(), "1".into());
    spec.modules = vec!["pact_missing_module".into()];
    if with_mounts {
        spec.mounts.insert("/good".into(), mount("tmpfs", "", "size=1m", false));
        // TEST-NET-1 (RFC 5737): never answers.
        spec.mounts.insert("/nfs".into(), mount("nfs", "192.0.2.1:/export", "vers=3,nolock", true));
        spec.mounts.insert("/nfs/sub".into(), mount("tmpfs", "", "", false));
        spec.mounts.insert("/weird".into(), mount("pactnosuchfs", "x", "", false));
        spec.files.push(file("/nfs/data/file", "under nfs\n"));
    }
    spec.files.push(file("/etc/good", "good\n"));

    let start = Instant::now();
    let res = apply::apply_all(&spec, Some(&current_hostname()), &t);
    let took = start.elapsed();
    println!("{}", apply::summary(&res));

    // Order: hostname, sysctl, modules, mounts, files.
    let dims: Vec<&str> = res.iter().map(|x| x.dimension).collect();
    let mut sorted = dims.clone();
    sorted.sort_by_key(|d| apply::DIMENSIONS.iter().position(|x| x == d));
    assert_eq!(dims, sorted);
    assert_eq!(outcome(&res, "hostname", &current_hostname()), &Outcome::Unchanged);
    assert_eq!(outcome(&res, "sysctl", "vm.swappiness"), &Outcome::Applied);
    assert_eq!(fs::read_to_string(ps.join("vm/swappiness")).unwrap(), "10");
    assert_failed(&res, "sysctl", "kernel.pact_unknown", "no such sysctl");
    assert_failed(&res, "modules", "pact_missing_module", "module pact_missing_module not found under");
    assert_eq!(outcome(&res, "files", "/etc/good"), &Outcome::Applied);
    assert_eq!(fs::read_to_string(r.join("etc/good")).unwrap(), "good\n");

    let summary = apply::summary(&res);
    assert!(summary.lines().any(|l| l.starts_with("FAILED sysctl kernel.pact_unknown: no such sysctl")), "{summary}");
    assert!(summary.lines().any(|l| l.starts_with("FAILED modules pact_missing_module:")), "{summary}");

    if !with_mounts {
        return;
    }
    assert_eq!(outcome(&res, "mounts", "/good"), &Outcome::Applied);
    assert_eq!(mounted_at(&r.join("good")).unwrap().fs_type, "tmpfs");
    let nfs = res.iter().find(|x| x.item == "/nfs").unwrap();
    match &nfs.outcome {
        // A kernel with NFS tries to reach the server and is cut off by the timeout, or
        // learns at once that there is no route; one without NFS has no such file system.
        Outcome::Failed(why) => println!("nfs 192.0.2.1 (took {:.2} s): {why}", nfs.took.as_secs_f64()),
        other => panic!("NFS to TEST-NET: {other:?}"),
    }
    assert!(nfs.took < Duration::from_millis(3500), "the NFS item took {:?} with a 2 s timeout", nfs.took);
    assert!(took < Duration::from_secs(10), "the whole apply took {took:?}");
    assert!(mounted_at(&r.join("nfs")).is_none());
    match outcome(&res, "mounts", "/nfs/sub") {
        Outcome::Skipped(why) => assert!(why.contains("/nfs"), "{why}"),
        other => panic!("/nfs/sub: {other:?}"),
    }
    match outcome(&res, "files", "/nfs/data/file") {
        Outcome::Skipped(_) => assert!(!r.join("nfs/data/file").exists()),
        other => panic!("/nfs/data/file: {other:?}"),
    }
    assert_failed(&res, "mounts", "/weird", "mount: ");
    assert!(summary.lines().any(|l| l.starts_with("FAILED mounts /nfs:")), "{summary}");
    assert!(summary.lines().any(|l| l.starts_with("SKIPPED files /nfs/data/file:")), "{summary}");

    rustix::mount::unmount(r.join("good"), UnmountFlags::empty()).unwrap();
    assert!(mounted_at(&r.join("good")).is_none());
}

// ---------------------------------------------------------------- hostname

fn current_hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

#[test]
fn hostname_unchanged_on_the_host_and_set_in_a_private_uts_namespace() {
    let host = current_hostname();
    let dir = TempDir::new("host");
    let t = target(dir.path(), dir.path(), dir.path());
    let res = apply::apply_all(&VClusterSpec::default(), Some(&host), &t);
    assert_eq!(res.len(), 1);
    assert_eq!(
        (res[0].dimension, res[0].item.as_str(), &res[0].outcome),
        ("hostname", host.as_str(), &Outcome::Unchanged)
    );
    let bad = apply::apply_all(&VClusterSpec::default(), Some("has space"), &t);
    assert_failed(&bad, "hostname", "has space", "invalid hostname");

    if !is_root() {
        skipped("hostname set", "not root: a UTS namespace needs CAP_SYS_ADMIN");
        return;
    }
    let ran = in_namespaces(UnshareFlags::NEWUTS, move || {
        let first = apply::apply_all(&VClusterSpec::default(), Some("pact-test-node-7"), &t);
        let now = current_hostname();
        let second = apply::apply_all(&VClusterSpec::default(), Some("pact-test-node-7"), &t);
        (first[0].outcome.clone(), now, second[0].outcome.clone())
    });
    match ran {
        Ok((first, now, second)) => {
            assert_eq!(first, Outcome::Applied);
            assert_eq!(now, "pact-test-node-7");
            assert_eq!(second, Outcome::Unchanged);
        }
        Err(e) => skipped("hostname set", &format!("no private UTS namespace: {e}")),
    }
    assert_eq!(current_hostname(), host, "the host's hostname changed");
}

// ---------------------------------------------------------------- every dimension, twice

#[test]
fn every_dimension_applied_then_unchanged_on_reapply() {
    if !is_root() {
        skipped("every dimension", "not root: mounts and the hostname need CAP_SYS_ADMIN");
        return;
    }
    let dir = TempDir::new("all");
    let r = std::fs::canonicalize(dir.path()).unwrap();
    let r2 = r.clone();
    let ran = in_namespaces(UnshareFlags::NEWNS | UnshareFlags::NEWUTS, move || {
        let r = r2;
        let ps = r.join("ps");
        fs::create_dir_all(ps.join("vm")).unwrap();
        fs::write(ps.join("vm/overcommit_memory"), "0\n").unwrap();
        let md = r.join("md");
        fs::create_dir_all(&md).unwrap();
        fs::write(md.join("modules.builtin"), "kernel/fs/pactfs.ko\n").unwrap();
        fs::write(md.join("modules.dep"), "").unwrap();
        let t = target(&r, &ps, &md);
        let mut spec = VClusterSpec::default();
        spec.sysctl.insert("vm.overcommit_memory".into(), "1".into());
        spec.modules = vec!["pactfs".into()];
        spec.mounts.insert("/scratch".into(), mount("tmpfs", "", "size=2m", false));
        spec.files.push(FileSpec {
            mode: Some(0o600),
            owner: Some("0".into()),
            ..file("/scratch/job.conf", "n = 1\n")
        });
        spec.files.push(file("/etc/motd", "hello\n"));
        let first = apply::apply_all(&spec, Some("pact-every-dim"), &t);
        let second = apply::apply_all(&spec, Some("pact-every-dim"), &t);
        let on_tmpfs = mounted_at(&r.join("scratch")).map(|e| e.fs_type);
        rustix::mount::unmount(r.join("scratch"), UnmountFlags::empty()).unwrap();
        (first, second, on_tmpfs)
    });
    let (first, second, on_tmpfs) = match ran {
        Ok(x) => x,
        Err(e) => {
            skipped("every dimension", &format!("no private namespaces: {e}"));
            return;
        }
    };
    let dims: Vec<&str> = first.iter().map(|x| x.dimension).collect();
    assert_eq!(dims, ["hostname", "sysctl", "modules", "mounts", "files", "files"]);
    for x in &first {
        // A built-in module is already there the first time too.
        let want = if x.dimension == "modules" { Outcome::Unchanged } else { Outcome::Applied };
        assert_eq!(x.outcome, want, "first apply: {} {}", x.dimension, x.item);
    }
    assert_all(&second, &Outcome::Unchanged);
    assert_eq!(on_tmpfs.as_deref(), Some("tmpfs"));
    // The file went onto the tmpfs, which is gone now.
    assert!(!r.join("scratch/job.conf").exists());
    assert_eq!(fs::read_to_string(r.join("etc/motd")).unwrap(), "hello\n");
    let s = apply::summary(&second);
    assert!(s.starts_with("apply: hostname 1 unchanged; sysctl 1 unchanged; modules 1 unchanged; mounts 1 unchanged; files 2 unchanged"), "{s}");
    assert_eq!(s.lines().count(), 1);
}

// ---------------------------------------------------------------- merge, diff, summary

#[test]
fn merge_the_node_wins_key_by_key() {
    let mut overlay = VClusterSpec {
        vcluster_id: "ml".into(),
        base_image: "img-a".into(),
        supervisor_backend: "pact".into(),
        uenv: "prgenv".into(),
        policy: Some(PolicySpec { enforcement_mode: Some("enforce".into()), ..Default::default() }),
        modules: vec!["nvidia".into(), "nfs".into()],
        ..Default::default()
    };
    overlay.sysctl = BTreeMap::from([("vm.swappiness".into(), "10".into()), ("kernel.a".into(), "1".into())]);
    overlay.mounts.insert("/scratch".into(), mount("nfs", "s1:/x", "", false));
    overlay.mounts.insert("/data".into(), mount("nfs", "s2:/d", "", true));
    overlay.network.insert("hsn0".into(), "mtu 9000".into());
    overlay.packages.insert("cuda".into(), "12.4".into());
    overlay.files = vec![file("/etc/motd", "overlay\n"), file("/etc/a", "a\n")];
    overlay.services = vec![
        ServiceSpec { name: "chronyd".into(), binary: "/usr/sbin/chronyd".into(), ..Default::default() },
        ServiceSpec { name: "agent".into(), binary: "/usr/bin/agent".into(), ..Default::default() },
    ];

    let mut node = VClusterSpec {
        vcluster_id: "node-001".into(),
        base_image: "img-node".into(),
        supervisor_backend: "systemd".into(),
        uenv: "other".into(),
        policy: Some(PolicySpec { enforcement_mode: Some("observe".into()), ..Default::default() }),
        modules: vec!["nfs".into(), "lustre".into()],
        ..Default::default()
    };
    node.sysctl = BTreeMap::from([("vm.swappiness".into(), "60".into()), ("kernel.b".into(), "2".into())]);
    node.mounts.insert("/scratch".into(), mount("tmpfs", "", "size=1g", false));
    node.network.insert("hsn0".into(), "mtu 1500".into());
    node.packages.insert("gdb".into(), "13".into());
    node.files = vec![file("/etc/motd", "node\n"), file("/etc/node-only", "n\n")];
    node.services = vec![
        ServiceSpec { name: "agent".into(), binary: "/opt/agent".into(), ..Default::default() },
        ServiceSpec { name: "extra".into(), binary: "/opt/extra".into(), ..Default::default() },
    ];

    let m = apply::merge(&overlay, Some(&node));
    assert_eq!(
        m.sysctl,
        BTreeMap::from([
            ("kernel.a".into(), "1".into()),
            ("kernel.b".into(), "2".into()),
            ("vm.swappiness".into(), "60".into()),
        ])
    );
    assert_eq!(m.mounts["/scratch"].fs_type, "tmpfs");
    assert_eq!(m.mounts["/data"].source, "s2:/d");
    assert_eq!(m.network["hsn0"], "mtu 1500");
    assert_eq!(m.packages.len(), 2);
    assert_eq!(m.modules, ["nvidia", "nfs", "lustre"]);
    let files: Vec<(&str, &str)> = m.files.iter().map(|f| (f.path.as_str(), f.content.as_deref().unwrap())).collect();
    assert_eq!(files, [("/etc/motd", "node\n"), ("/etc/a", "a\n"), ("/etc/node-only", "n\n")]);
    let services: Vec<(&str, &str)> = m.services.iter().map(|s| (s.name.as_str(), s.binary.as_str())).collect();
    assert_eq!(services, [("chronyd", "/usr/sbin/chronyd"), ("agent", "/opt/agent"), ("extra", "/opt/extra")]);
    assert_eq!(
        (m.vcluster_id.as_str(), m.base_image.as_str(), m.supervisor_backend.as_str(), m.uenv.as_str()),
        ("ml", "img-a", "pact", "prgenv")
    );
    assert_eq!(m.policy, overlay.policy);
    assert_eq!(apply::merge(&overlay, None), overlay);
}

#[test]
fn diff_lists_changed_and_removed_items() {
    let mut old = VClusterSpec::default();
    old.sysctl.insert("a".into(), "1".into());
    old.sysctl.insert("b".into(), "1".into());
    old.modules = vec!["m1".into(), "m2".into()];
    old.mounts.insert("/x".into(), mount("tmpfs", "", "size=1m", false));
    old.mounts.insert("/y".into(), mount("tmpfs", "", "", false));
    old.files = vec![file("/f1", "1"), file("/f2", "2")];
    let mut new = old.clone();
    new.sysctl.insert("a".into(), "2".into());
    new.sysctl.remove("b");
    new.sysctl.insert("c".into(), "3".into());
    new.modules = vec!["m1".into(), "m3".into()];
    new.mounts.insert("/x".into(), mount("tmpfs", "", "size=2m", false));
    new.mounts.remove("/y");
    new.files = vec![file("/f1", "1"), file("/f3", "3")];
    new.services.push(ServiceSpec { name: "ignored".into(), ..Default::default() });

    let d = apply::diff(&old, &new);
    assert_eq!(d.changed.sysctl.keys().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(d.changed.modules, ["m3"]);
    assert_eq!(d.changed.mounts.keys().collect::<Vec<_>>(), ["/x"]);
    assert_eq!(d.changed.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["/f3"]);
    assert!(d.changed.services.is_empty());
    let mut removed = d.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        [
            ("files", "/f2".to_string()),
            ("modules", "m2".to_string()),
            ("mounts", "/y".to_string()),
            ("sysctl", "b".to_string()),
        ]
    );
    assert!(!d.is_empty());
    assert!(apply::diff(&new, &new).is_empty());
}

#[test]
fn summary_counts_per_dimension_and_one_line_per_failure() {
    let item = |dimension, item: &str, outcome| ItemResult {
        dimension,
        item: item.into(),
        outcome,
        took: Duration::from_millis(5),
    };
    let res = vec![
        item("sysctl", "a", Outcome::Applied),
        item("sysctl", "b", Outcome::Unchanged),
        item("sysctl", "c", Outcome::Failed("no such sysctl c".into())),
        item("mounts", "/m", Outcome::Failed("timed out".into())),
        item("files", "/m/f", Outcome::Skipped("under /m".into())),
    ];
    let s = apply::summary(&res);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "apply: sysctl 1 applied, 1 unchanged, 1 failed; mounts 1 failed; files 1 skipped (0.025 s)");
    assert_eq!(
        &lines[1..],
        ["FAILED sysctl c: no such sysctl c", "FAILED mounts /m: timed out", "SKIPPED files /m/f: under /m"]
    );
    assert_eq!(apply::summary(&[]), "apply: nothing declared");
}

// ---------------------------------------------------------------- capability

#[test]
fn capability_json_parses_back_with_this_machines_facts() {
    let c = capability::collect();
    let dir = TempDir::new("cap");
    let path = dir.path().join("run/pact/capability.json");
    capability::write_json(&path, &c).unwrap();
    // Only the document, no temporary file, in the directory.
    let names: Vec<String> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["capability.json"]);
    let text = fs::read_to_string(&path).unwrap();
    let back = Capability::deserialize_json(&text).unwrap_or_else(|e| panic!("{e:?} in {text}"));
    assert_eq!(back, c);

    assert_eq!(back.schema_version, capability::SCHEMA_VERSION);
    assert!(back.cpu.logical_cores >= 1, "{:?}", back.cpu);
    assert!(!back.cpu.architecture.is_empty());
    assert!(back.memory.total_bytes > 0);
    assert!(back.memory.available_bytes > 0 && back.memory.available_bytes <= back.memory.total_bytes);
    let lo = back.network_interfaces.iter().find(|i| i.name == "lo").expect("an interface lo");
    assert!(lo.is_virtual && lo.mtu > 0, "{lo:?}");
    assert!(back.storage.mounts.iter().any(|m| m.path == "/"), "no / in {:?}", back.storage.mounts);
    assert!(back.storage.node_type == "diskless" || back.storage.node_type == "local_storage");
    // This machine has no GPU: every source says what it found, and how many (none).
    assert!(back.gpus.is_empty(), "{:?}", back.gpus);
    assert!(
        back.gpu_discovery.starts_with("nvml: ") && back.gpu_discovery.ends_with("; sysfs amd: 0"),
        "{}",
        back.gpu_discovery
    );
    let nvml = if cfg!(feature = "gpu") { "nvml: not available (" } else { "nvml: not built in" };
    assert!(back.gpu_discovery.starts_with(nvml), "{}", back.gpu_discovery);
    assert_eq!(back.hostname, current_hostname());
    println!(
        "capability: {} cpus ({} cores, {} sockets) {:?}, {} MiB, {} interfaces, {} block devices, {} mounts, errors {:?}",
        back.cpu.logical_cores,
        back.cpu.physical_cores,
        back.cpu.sockets,
        back.cpu.model,
        back.memory.total_bytes >> 20,
        back.network_interfaces.len(),
        back.storage.block_devices.len(),
        back.storage.mounts.len(),
        back.errors
    );

    // Overwriting is atomic too, and a missing directory is created.
    capability::write_json(&path, &Capability::default()).unwrap();
    assert_eq!(Capability::deserialize_json(&fs::read_to_string(&path).unwrap()).unwrap(), Capability::default());
    // A directory that cannot be created is an error, not a panic.
    assert!(capability::write_json(Path::new("/proc/pact-no-such/capability.json"), &c).is_err());
}

/// AMD GPUs from a DRM class directory laid out as amdgpu's sysfs is (a card, one of its
/// connectors, and a card of another vendor).
#[test]
fn amd_gpus_from_sysfs() {
    let dir = TempDir::new("drm");
    let root = dir.path();
    let pci = root.join("devices/0000:c1:00.0");
    fs::create_dir_all(&pci).unwrap();
    fs::write(pci.join("vendor"), "0x1002\n").unwrap();
    fs::write(pci.join("device"), "0x740f\n").unwrap();
    fs::write(pci.join("mem_info_vram_total"), "68702699520\n").unwrap();
    fs::write(pci.join("unique_id"), "a1b2c3\n").unwrap();
    let other = root.join("devices/0000:02:00.0");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("vendor"), "0x10de\n").unwrap();
    let drm = root.join("drm");
    for (card, dev) in [("card1", &pci), ("card1-DP-1", &pci), ("card0", &other)] {
        fs::create_dir_all(drm.join(card)).unwrap();
        std::os::unix::fs::symlink(dev, drm.join(card).join("device")).unwrap();
    }
    let gpus = capability::amd_gpus(&drm);
    assert_eq!(gpus.len(), 1, "{gpus:?}");
    let g = &gpus[0];
    assert_eq!((g.vendor.as_str(), g.model.as_str(), g.pci_bus_id.as_str()), ("amd", "0x740f", "0000:c1:00.0"));
    assert_eq!((g.memory_bytes, g.uuid.as_str()), (68_702_699_520, "a1b2c3"));
    assert!(capability::amd_gpus(&root.join("nowhere")).is_empty());
}
