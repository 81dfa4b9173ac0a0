//! Early boot: what PID 1 does before the journal is reachable.
//!
//! - [`load_modules`]: the kernel modules the node needs to reach the network (and, for the
//!   SquashFS root, its disk), from a list file (`/etc/pact/early-modules`), with
//!   `finit_module(2)`. A diskless initramfs has no modprobe and no `modules.dep`, so the list
//!   names each `.ko` file, dependencies first.
//! - [`parse_ip_param`] / [`configure_network`]: the kernel's `ip=` parameter, done by PID 1
//!   because Debian's kernels are built without `CONFIG_IP_PNP` (nothing in the kernel reads it).
//!   Static addresses only; the interface, its address and prefix and the default route are set
//!   with the classic `SIOC*` ioctls on an `AF_INET` socket (one small `unsafe` module below).
//! - [`cmdline_value`] / [`read_cmdline`]: kernel parameters with a dot (`pact.node_id=`) never
//!   reach init's argv or environment, so they are read from `/proc/cmdline`.
//! - [`switch_root_from_squashfs`]: the SquashFS-root variant. The small initramfs's `/init` (this
//!   binary) mounts the SquashFS from a block device read-only, puts a tmpfs overlay over it,
//!   moves `/dev`, `/proc`, `/sys`, `/run` and `/tmp` into it, frees the initramfs, switches
//!   root and execs the new root's `/sbin/init` (the same agent) as PID 1.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The kernel command line (`/proc/cmdline`), or an empty string when /proc is not mounted.
pub fn read_cmdline() -> String {
    fs::read_to_string("/proc/cmdline").unwrap_or_default().trim_end().to_string()
}

/// Splits a kernel command line into parameters the way the kernel does (`next_arg` in
/// lib/cmdline.c): separated by whitespace, double quotes group spaces and are removed, `--`
/// ends the kernel's parameters (what follows belongs to init).
fn cmdline_params(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut in_quote, mut has) = (false, false);
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                has = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if has {
                    if cur == "--" {
                        return out;
                    }
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has && cur != "--" {
        out.push(cur);
    }
    out
}

/// The value of `key=` on a kernel command line (the last one wins, as for the kernel's own
/// parameters); quotes are removed. A bare `key` (no `=`) gives `Some("")`.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    let mut found = None;
    for p in cmdline_params(cmdline) {
        match p.split_once('=') {
            Some((k, v)) if k == key => found = Some(v.to_string()),
            None if p == key => found = Some(String::new()),
            _ => {}
        }
    }
    found
}

/// One line of an early-modules list: the `.ko` path, then optional module parameters
/// (`/lib/modules/…/foo.ko opt=1 other=x`). Blank lines and `#` comments are skipped.
pub fn parse_module_list(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((path, params)) => (path.to_string(), params.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// Loads one module file with `finit_module(2)`; a module that is already loaded (or built
/// in and so already registered) is success.
pub fn load_module(path: &Path, params: &str) -> Result<(), String> {
    let f = fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let params = std::ffi::CString::new(params).map_err(|_| "parameters contain a NUL byte".to_string())?;
    match rustix::system::finit_module(&f, &params, 0) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(format!("finit_module: {e}")),
    }
}

/// Loads every module listed in `list` (one `.ko` path per line, in order, `#` comments,
/// optional parameters after the path), and reports each one: `(path, outcome)`. A failure does
/// not stop the rest (a later module that needed it fails too, and says so). A list file that
/// does not exist means nothing to load (empty result); one that cannot be read is reported as
/// one failed entry named after the list.
pub fn load_modules(list: &Path) -> Vec<(String, Result<(), String>)> {
    let text = match fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => return vec![(list.display().to_string(), Err(format!("read module list: {e}")))],
    };
    parse_module_list(&text)
        .into_iter()
        .map(|(path, params)| {
            let r = load_module(Path::new(&path), &params);
            (path, r)
        })
        .collect()
}

/// A static IPv4 configuration from the kernel's `ip=` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    /// The interface; empty means the first interface other than `lo` (as the kernel does).
    pub device: String,
    pub hostname: Option<String>,
}

/// `ip=` from a kernel command line, in the kernel's own format
/// (Documentation/admin-guide/nfs/nfsroot.rst):
/// `ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>:<ntp0>`.
///
/// `None`: no `ip=`, or `ip=off`/`ip=none` (nothing to configure). `Some(Err)`: a value this
/// agent cannot honour, such as DHCP (`ip=dhcp`, or an autoconf field other than
/// `off`/`none`), which is not supported yet, or a malformed address. The server IP and the
/// DNS/NTP fields are accepted and ignored. An empty netmask takes the address's class default,
/// as the kernel does.
pub fn parse_ip_param(cmdline: &str) -> Option<Result<IpConfig, String>> {
    let v = cmdline_value(cmdline, "ip")?;
    if v == "off" || v == "none" {
        return None;
    }
    Some(parse_ip_value(&v))
}

const AUTOCONF_DYNAMIC: &[&str] = &["on", "any", "dhcp", "bootp", "rarp", "both"];

fn parse_ip_value(v: &str) -> Result<IpConfig, String> {
    if AUTOCONF_DYNAMIC.contains(&v) {
        return Err(format!("ip={v}: dynamic configuration (DHCP/BOOTP/RARP) is not supported, only static"));
    }
    let f: Vec<&str> = v.split(':').collect();
    let field = |i: usize| f.get(i).copied().unwrap_or("");
    let autoconf = field(6);
    if AUTOCONF_DYNAMIC.contains(&autoconf) {
        return Err(format!("ip=: autoconf {autoconf:?} is not supported, only static (off/none)"));
    }
    if !["", "off", "none"].contains(&autoconf) {
        return Err(format!("ip=: unknown autoconf {autoconf:?}"));
    }
    let ip = |i: usize, what: &str| -> Result<Option<Ipv4Addr>, String> {
        match field(i) {
            "" => Ok(None),
            s => s.parse().map(Some).map_err(|_| format!("ip=: bad {what} {s:?}")),
        }
    };
    let addr = ip(0, "client address")?.ok_or("ip=: no client address (static configuration needs one)")?;
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
        return Err(format!("ip=: {addr} is not a usable client address"));
    }
    ip(1, "server address")?;
    let gateway = ip(2, "gateway")?.filter(|g| !g.is_unspecified());
    let prefix = match ip(3, "netmask")? {
        Some(m) => mask_to_prefix(m).ok_or_else(|| format!("ip=: netmask {m} is not contiguous"))?,
        None => match addr.octets()[0] {
            0..=127 => 8,
            128..=191 => 16,
            _ => 24,
        },
    };
    let hostname = match field(4) {
        "" => None,
        h if h.len() > 64 => return Err("ip=: hostname longer than 64 bytes".into()),
        h => Some(h.to_string()),
    };
    let device = field(5).to_string();
    if device.len() >= libc::IFNAMSIZ || device.contains('/') {
        return Err(format!("ip=: bad device name {device:?}"));
    }
    Ok(IpConfig { addr, prefix, gateway, device, hostname })
}

fn mask_to_prefix(m: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(m);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

fn prefix_to_mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) })
}

/// Brings up `lo` and `c.device` (waiting up to 5 s for the device to appear, since a NIC
/// driver loaded a moment ago may still be probing), sets the address and prefix, and adds the
/// default route via the gateway when there is one. Idempotent: running it twice changes
/// nothing (the second default route is reported as already there and accepted). The hostname
/// in `c` is not set here (it is the apply step's job).
pub fn configure_network(c: &IpConfig) -> Result<(), String> {
    if c.prefix > 32 {
        return Err(format!("prefix /{} is longer than 32", c.prefix));
    }
    // Any AF_INET socket carries the interface ioctls; a UDP socket bound to port 0 is the one
    // std makes without unsafe code.
    let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| format!("AF_INET socket: {e}"))?;
    let fd = std::os::fd::AsFd::as_fd(&sock);

    let lo = ifreq_named("lo")?;
    set_up(fd, lo).map_err(|e| format!("bring up lo: {e}"))?;

    let device = if c.device.is_empty() { first_interface()? } else { c.device.clone() };
    let dev = ifreq_named(&device)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = sys::get_flags(fd, dev) {
        if e != rustix::io::Errno::NODEV || Instant::now() >= deadline {
            return Err(format!("{device}: {e}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    sys::set_addr(fd, dev, sys::SIOCSIFADDR, c.addr).map_err(|e| format!("{device}: set address {}: {e}", c.addr))?;
    sys::set_addr(fd, dev, sys::SIOCSIFNETMASK, prefix_to_mask(c.prefix))
        .map_err(|e| format!("{device}: set netmask /{}: {e}", c.prefix))?;
    set_up(fd, dev).map_err(|e| format!("bring up {device}: {e}"))?;
    if let Some(gw) = c.gateway {
        match sys::add_default_route(fd, gw, &device) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(format!("default route via {gw} dev {device}: {e}")),
        }
    }
    Ok(())
}

fn set_up(fd: std::os::fd::BorrowedFd<'_>, name: [libc::c_char; libc::IFNAMSIZ]) -> Result<(), rustix::io::Errno> {
    let flags = sys::get_flags(fd, name)?;
    let want = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    if want != flags {
        sys::set_flags(fd, name, want)?;
    }
    Ok(())
}

fn ifreq_named(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(format!("bad interface name {name:?}"));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

/// The first interface other than `lo` in /sys/class/net (sorted by name), waiting up to 5 s
/// for one to appear.
fn first_interface() -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut names: Vec<String> = fs::read_dir("/sys/class/net")
            .map_err(|e| format!("no device named in ip= and /sys/class/net unreadable: {e}"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        if let Some(n) = names.into_iter().next() {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            return Err("no network interface other than lo".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The interface ioctls. Each function passes the kernel a pointer to a fully initialised
/// struct that lives for the whole call; nothing else is unsafe in this file.
#[allow(unsafe_code)]
mod sys {
    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, BorrowedFd};

    pub const SIOCSIFADDR: libc::Ioctl = libc::SIOCSIFADDR as libc::Ioctl;
    pub const SIOCSIFNETMASK: libc::Ioctl = libc::SIOCSIFNETMASK as libc::Ioctl;

    type Name = [libc::c_char; libc::IFNAMSIZ];

    fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
        // struct sockaddr_in laid over struct sockaddr: family, port (0), address, zero padding.
        let mut data = [0 as libc::c_char; 14];
        for (d, b) in data[2..6].iter_mut().zip(a.octets()) {
            *d = b as libc::c_char;
        }
        libc::sockaddr { sa_family: libc::AF_INET as libc::sa_family_t, sa_data: data }
    }

    fn last_errno() -> rustix::io::Errno {
        rustix::io::Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(rustix::io::Errno::IO)
    }

    fn ifreq_ioctl(fd: BorrowedFd<'_>, req: libc::Ioctl, ifr: &mut libc::ifreq) -> Result<(), rustix::io::Errno> {
        // SAFETY: `req` is one of SIOCGIFFLAGS/SIOCSIFFLAGS/SIOCSIFADDR/SIOCSIFNETMASK, each of
        // which reads (and for SIOCGIFFLAGS writes) exactly one `struct ifreq`; `ifr` is a valid,
        // initialised, exclusively borrowed ifreq for the duration of the call, and `fd` is an open
        // socket.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, ifr as *mut libc::ifreq) };
        if r < 0 {
            return Err(last_errno());
        }
        Ok(())
    }

    pub fn get_flags(fd: BorrowedFd<'_>, name: Name) -> Result<libc::c_short, rustix::io::Errno> {
        let mut ifr = libc::ifreq { ifr_name: name, ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: 0 } };
        ifreq_ioctl(fd, libc::SIOCGIFFLAGS as libc::Ioctl, &mut ifr)?;
        // SAFETY: SIOCGIFFLAGS succeeded, so the kernel wrote the union's `ifru_flags` member
        // (and it was initialised as that member before the call anyway).
        Ok(unsafe { ifr.ifr_ifru.ifru_flags })
    }

    pub fn set_flags(fd: BorrowedFd<'_>, name: Name, flags: libc::c_short) -> Result<(), rustix::io::Errno> {
        let mut ifr = libc::ifreq { ifr_name: name, ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: flags } };
        ifreq_ioctl(fd, libc::SIOCSIFFLAGS as libc::Ioctl, &mut ifr)
    }

    pub fn set_addr(fd: BorrowedFd<'_>, name: Name, req: libc::Ioctl, a: Ipv4Addr) -> Result<(), rustix::io::Errno> {
        debug_assert!(req == SIOCSIFADDR || req == SIOCSIFNETMASK);
        let mut ifr =
            libc::ifreq { ifr_name: name, ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_addr: sockaddr_in(a) } };
        ifreq_ioctl(fd, req, &mut ifr)
    }

    pub fn add_default_route(fd: BorrowedFd<'_>, gw: Ipv4Addr, dev: &str) -> Result<(), rustix::io::Errno> {
        let mut dev = std::ffi::CString::new(dev).map_err(|_| rustix::io::Errno::INVAL)?.into_bytes_with_nul();
        let mut rt = libc::rtentry {
            rt_pad1: 0,
            rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_in(gw),
            rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_tos: 0,
            rt_class: 0,
            rt_pad4: [0; 3],
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr() as *mut libc::c_char,
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: SIOCADDRT reads one `struct rtentry`; `rt` is fully initialised and borrowed
        // for the call, and `rt_dev` points at a NUL-terminated name in `dev`, which outlives
        // the call. `fd` is an open AF_INET socket.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCADDRT as libc::Ioctl, &mut rt as *mut libc::rtentry) };
        if r < 0 {
            return Err(last_errno());
        }
        Ok(())
    }
}

/// The overlay's source name in /proc/mounts: how a re-exec'd agent knows the root is
/// already switched.
pub const ROOT_OVERLAY_SOURCE: &str = "pact-root";
/// What the switched root execs as PID 1 (the agent, in the SquashFS image).
pub const SWITCHED_INIT: &str = "/sbin/init";
const STAGE_DIR: &str = "/.pact-root";
const RAMFS_MAGIC: u64 = 0x8584_58f6;
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// The environment variable that carries the initramfs stage's boot phases across the exec
/// into the SquashFS root: `<CLOCK_MONOTONIC ns at its start>;<name>=<µs>,...`.
pub const STAGE1_ENV: &str = "PACT_BOOT_STAGE1";

/// CLOCK_MONOTONIC in nanoseconds: the same clock on both sides of an exec.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

pub fn stage1_record(start_ns: u64, phases: &[(String, std::time::Duration)]) -> String {
    let list: Vec<String> = phases.iter().map(|(n, d)| format!("{n}={}", d.as_micros())).collect();
    format!("{start_ns};{}", list.join(","))
}

pub fn stage1_parse(v: &str) -> Option<(u64, Vec<(String, std::time::Duration)>)> {
    let (start, list) = v.split_once(';')?;
    let start = start.parse().ok()?;
    let mut phases = Vec::new();
    for item in list.split(',').filter(|i| !i.is_empty()) {
        let (name, us) = item.split_once('=')?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
        phases.push((name.to_string(), std::time::Duration::from_micros(us.parse().ok()?)));
    }
    Some((start, phases))
}

/// Is `/` already the overlay [`switch_root_from_squashfs`] makes?
pub fn root_is_switched() -> bool {
    fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .rfind(|l| l.split(' ').nth(1) == Some("/"))
                .is_some_and(|l| l.starts_with(&format!("{ROOT_OVERLAY_SOURCE} / overlay ")))
        })
        .unwrap_or(false)
}

fn mkdir_p(p: &Path) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

fn mount(src: &str, target: &Path, fstype: &str, flags: rustix::mount::MountFlags, data: &str) -> Result<(), String> {
    let data = std::ffi::CString::new(data).map_err(|_| "mount options contain NUL".to_string())?;
    rustix::mount::mount(src, target, fstype, flags, Some(data.as_c_str()))
        .map_err(|e| format!("mount {fstype} {src} on {}: {e}", target.display()))
}

fn is_mountpoint(p: &Path, root_dev: u64) -> bool {
    fs::symlink_metadata(p).map(|m| m.is_dir() && m.dev() != root_dev).unwrap_or(false)
}

/// Deletes everything under `dir` that lives on the device `dev`, never crossing into another
/// file system (mount points are left alone). Errors are ignored: this only frees memory.
fn remove_same_fs(dir: &Path, dev: u64) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        if m.dev() != dev {
            continue;
        }
        if m.is_dir() {
            remove_same_fs(&p, dev);
            let _ = fs::remove_dir(&p);
        } else {
            let _ = fs::remove_file(&p);
        }
    }
}

/// The SquashFS root: run as PID 1 from the small initramfs, after the block, squashfs and
/// overlay modules are loaded. Mounts the SquashFS on `dev` (e.g. `/dev/vda`) read-only, a tmpfs
/// for the writable layer, and an overlay of both (source [`ROOT_OVERLAY_SOURCE`]); moves the
/// mounted `/dev`, `/proc`, `/sys`, `/run` and `/tmp` into it (with what is mounted below
/// them); deletes the initramfs's files to free their memory; makes the overlay `/` (a mount
/// move, then chroot); and execs [`SWITCHED_INIT`] with this process's arguments, keeping PID 1.
///
/// It mounts /proc and devtmpfs itself when they are not mounted yet, and waits up to 10 s for
/// `dev` to appear. Returns `Ok(())` without doing anything when `/` is already that overlay (the
/// re-exec'd agent sees the same `pact.root=` on the command line); on success it otherwise does
/// not return. Before anything is deleted it checks that `/` is an initramfs (ramfs/tmpfs) and
/// that the new root has an executable `/sbin/init`; an error after that point leaves a
/// half-switched system and is reported as such.
pub fn switch_root_from_squashfs(dev: &str) -> Result<(), String> {
    use rustix::mount::MountFlags;
    if !Path::new("/proc/self/mounts").exists() {
        mkdir_p(Path::new("/proc"))?;
        mount("proc", Path::new("/proc"), "proc", MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC, "")?;
    }
    if root_is_switched() {
        return Ok(());
    }
    let root_dev = fs::metadata("/").map_err(|e| format!("stat /: {e}"))?.dev();
    if !Path::new(dev).exists() && !is_mountpoint(Path::new("/dev"), root_dev) {
        mkdir_p(Path::new("/dev"))?;
        mount("devtmpfs", Path::new("/dev"), "devtmpfs", MountFlags::NOSUID, "mode=0755")?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(dev).exists() {
        if Instant::now() >= deadline {
            return Err(format!("{dev} did not appear within 10 s (is virtio_blk loaded?)"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = rustix::fs::statfs("/").map_err(|e| format!("statfs /: {e}"))?;
    let magic = st.f_type as u64;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        return Err(format!("/ is not an initramfs (file system magic {magic:#x}); refusing to switch root"));
    }

    let stage = PathBuf::from(STAGE_DIR);
    let (lower, rw, newroot) = (stage.join("ro"), stage.join("rw"), stage.join("root"));
    for d in [&lower, &rw, &newroot] {
        mkdir_p(d)?;
    }
    mount(dev, &lower, "squashfs", MountFlags::RDONLY, "")?;
    mount("pact-rw", &rw, "tmpfs", MountFlags::empty(), "mode=0755")?;
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    mkdir_p(&upper)?;
    mkdir_p(&work)?;
    mount(
        ROOT_OVERLAY_SOURCE,
        &newroot,
        "overlay",
        MountFlags::empty(),
        &format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display()),
    )?;
    let init = newroot.join(SWITCHED_INIT.trim_start_matches('/'));
    let executable = fs::metadata(&init).map(|m| m.is_file() && m.mode() & 0o111 != 0).unwrap_or(false);
    if !executable {
        let _ = rustix::mount::unmount(&newroot, rustix::mount::UnmountFlags::DETACH);
        return Err(format!("the SquashFS on {dev} has no executable {SWITCHED_INIT}"));
    }

    // Point of no return: from here a failure leaves a half-switched system.
    let half = |e: String| format!("switch root half done: {e}");
    for m in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        if is_mountpoint(Path::new(m), root_dev) {
            let target = newroot.join(&m[1..]);
            mkdir_p(&target).map_err(half)?;
            rustix::mount::mount_move(m, &target).map_err(|e| half(format!("move {m}: {e}")))?;
        }
    }
    rustix::process::chdir(&newroot).map_err(|e| half(format!("chdir {}: {e}", newroot.display())))?;
    remove_same_fs(Path::new("/"), root_dev);
    rustix::mount::mount_move(".", "/").map_err(|e| half(format!("move the new root to /: {e}")))?;
    rustix::process::chroot(".").map_err(|e| half(format!("chroot: {e}")))?;
    rustix::process::chdir("/").map_err(|e| half(format!("chdir /: {e}")))?;

    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(SWITCHED_INIT).args(std::env::args_os().skip(1)).exec();
    Err(half(format!("exec {SWITCHED_INIT}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage1_phases_round_trip() {
        let phases = vec![
            ("init".to_string(), std::time::Duration::from_micros(1500)),
            ("early".to_string(), std::time::Duration::from_millis(279)),
        ];
        let v = stage1_record(42, &phases);
        assert_eq!(stage1_parse(&v), Some((42, phases)));
        assert_eq!(stage1_parse("7;"), Some((7, vec![])));
        for bad in ["", "x;init=1", "1;init", "1;in it=3", "1;init=-1"] {
            assert_eq!(stage1_parse(bad), None, "{bad}");
        }
        assert!(monotonic_ns() > 0);
    }

    const QEMU: &str = "console=ttyS0 panic=-1 ip=10.0.2.15::10.0.2.2:255.255.255.0:node-001:eth0:off \
                        pact.node_id=node-001 pact.test_check=sysctl:vm.swappiness,file:/etc/motd quiet";

    #[test]
    fn cmdline_values() {
        assert_eq!(cmdline_value(QEMU, "pact.node_id").as_deref(), Some("node-001"));
        assert_eq!(cmdline_value(QEMU, "pact.test_check").as_deref(), Some("sysctl:vm.swappiness,file:/etc/motd"));
        assert_eq!(cmdline_value(QEMU, "quiet").as_deref(), Some(""));
        assert_eq!(cmdline_value(QEMU, "pact.node"), None);
        assert_eq!(cmdline_value(QEMU, "node_id"), None);
        // last wins, quotes removed, `--` ends the kernel's part
        assert_eq!(cmdline_value("a=1 a=2", "a").as_deref(), Some("2"));
        assert_eq!(cmdline_value("x=\"two words\" y=1", "x").as_deref(), Some("two words"));
        assert_eq!(cmdline_value("\"x=two words\" y=1", "x").as_deref(), Some("two words"));
        assert_eq!(cmdline_value("a=1 -- a=2 b=3", "a").as_deref(), Some("1"));
        assert_eq!(cmdline_value("a=1 -- b=3", "b"), None);
        assert_eq!(cmdline_value("  \n", "a"), None);
        assert_eq!(cmdline_value("a=b=c", "a").as_deref(), Some("b=c"));
        assert_eq!(cmdline_value("a=1\n", "a").as_deref(), Some("1"));
    }

    #[test]
    fn ip_param_static() {
        let c = parse_ip_param(QEMU).unwrap().unwrap();
        assert_eq!(
            c,
            IpConfig {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                device: "eth0".into(),
                hostname: Some("node-001".into()),
            }
        );
        // short forms, class defaults, no gateway, trailing DNS/NTP fields
        let c = parse_ip_param("ip=10.1.2.3").unwrap().unwrap();
        assert_eq!((c.prefix, c.gateway, c.device.as_str(), c.hostname), (8, None, "", None));
        assert_eq!(parse_ip_param("ip=172.16.0.9::::").unwrap().unwrap().prefix, 16);
        assert_eq!(parse_ip_param("ip=192.168.7.9:::::eth1").unwrap().unwrap().prefix, 24);
        let c = parse_ip_param("ip=192.168.7.9:1.2.3.4:0.0.0.0:255.255.0.0::eth1:none:8.8.8.8:1.1.1.1:9.9.9.9")
            .unwrap()
            .unwrap();
        assert_eq!((c.prefix, c.gateway, c.device.as_str()), (16, None, "eth1"));
        assert_eq!(parse_ip_param("ip=10.0.0.1:::255.255.255.255:::").unwrap().unwrap().prefix, 32);
        assert_eq!(parse_ip_param("ip=10.0.0.1:::0.0.0.0").unwrap().unwrap().prefix, 0);
    }

    #[test]
    fn ip_param_absent_off_and_errors() {
        assert_eq!(parse_ip_param("console=ttyS0"), None);
        assert_eq!(parse_ip_param("ip=off"), None);
        assert_eq!(parse_ip_param("ip=none"), None);
        for bad in [
            "ip=dhcp",
            "ip=on",
            "ip=bootp",
            "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:dhcp",
            "ip=:::::eth0:dhcp",
            "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:bogus",
            "ip=",
            "ip=:::",
            "ip=10.0.0.300",
            "ip=10.0.0.2::10.0.0.x",
            "ip=10.0.0.2:::255.0.255.0",
            "ip=0.0.0.0:::255.0.0.0",
            "ip=10.0.0.2:::::averyveryverylongname",
            "ip=10.0.0.2:::::a/b",
        ] {
            let r = parse_ip_param(bad);
            assert!(matches!(r, Some(Err(_))), "{bad} gave {r:?}");
        }
        assert!(parse_ip_param("ip=dhcp").unwrap().unwrap_err().contains("not supported"));
    }

    #[test]
    fn masks() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 128, 0)), Some(17));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        for p in 0..=32u8 {
            assert_eq!(mask_to_prefix(prefix_to_mask(p)), Some(p));
        }
    }

    #[test]
    fn module_list() {
        let l = parse_module_list(
            "# the virtio_net chain\n/lib/a.ko\n\n  /lib/b.ko   opt=1 x=y  # trailing\n\t# only a comment\n/lib/c.ko\n",
        );
        assert_eq!(
            l,
            vec![
                ("/lib/a.ko".to_string(), String::new()),
                ("/lib/b.ko".to_string(), "opt=1 x=y".to_string()),
                ("/lib/c.ko".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn load_modules_reports_each_item() {
        let dir = std::env::temp_dir().join(format!("pact-early-mods-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(load_modules(&dir.join("absent")).is_empty());
        // Not a module: the kernel refuses it (or, unprivileged, refuses us); a missing file is
        // reported by name; neither stops the next line.
        let junk = dir.join("junk.ko");
        fs::write(&junk, b"not an ELF module").unwrap();
        let list = dir.join("list");
        fs::write(&list, format!("{}\n{}\n", dir.join("missing.ko").display(), junk.display())).unwrap();
        let r = load_modules(&list);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, dir.join("missing.ko").display().to_string());
        assert!(r[0].1.as_ref().unwrap_err().starts_with("open:"), "{r:?}");
        assert!(r[1].1.as_ref().unwrap_err().starts_with("finit_module:"), "{r:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Runs `f` on a new thread inside a new network namespace (only that thread's), or returns
    /// the reason it cannot.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        std::thread::spawn(move || {
            #[allow(unsafe_code)]
            // SAFETY: CLONE_NEWNET only changes this thread's network namespace; it does not
            // unshare the file table, the file system context or memory, which is what makes
            // `unshare` unsafe in general (other code relying on them being shared).
            let r = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) };
            r.map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| "netns thread panicked".to_string())?
    }

    /// The default route in this thread's namespace (/proc/thread-self/net/route: the main
    /// table, hex little-endian addresses), as (device, gateway).
    fn default_route() -> Option<(String, Ipv4Addr)> {
        let t = fs::read_to_string("/proc/thread-self/net/route").ok()?;
        t.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000")).then(|| {
                let gw = u32::from_str_radix(f[2], 16).unwrap();
                (f[0].to_string(), Ipv4Addr::from(gw.to_le_bytes()))
            })
        })
    }

    #[test]
    fn configure_network_in_a_netns() {
        if !rustix::process::geteuid().is_root() {
            println!("skipped: not root (configure_network needs CAP_NET_ADMIN in a new network namespace)");
            return;
        }
        let r = in_new_netns(|| {
            // A veth pair when `ip` can make one (the namespace is this thread's, and children
            // spawned from it inherit it); else only `lo`.
            let veth = std::process::Command::new("ip")
                .args(["link", "add", "pv0", "type", "veth", "peer", "name", "pv1"])
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !veth {
                println!("note: no veth (no `ip` or no veth support): testing on lo only");
                let c = IpConfig {
                    addr: Ipv4Addr::new(127, 0, 0, 7),
                    prefix: 8,
                    gateway: None,
                    device: "lo".into(),
                    hostname: None,
                };
                configure_network(&c).unwrap();
                configure_network(&c).unwrap();
                let s = std::net::UdpSocket::bind((c.addr, 0)).expect("address set on lo");
                s.send_to(b"x", s.local_addr().unwrap()).unwrap();
                let mut b = [0u8; 1];
                s.recv(&mut b).unwrap();
                return "lo";
            }
            let c = IpConfig {
                addr: Ipv4Addr::new(10, 77, 0, 2),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
                device: "pv0".into(),
                hostname: Some("node-x".into()),
            };
            configure_network(&c).unwrap();
            // idempotent
            configure_network(&c).unwrap();
            // lo is up and usable
            let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            s.send_to(b"x", s.local_addr().unwrap()).unwrap();
            // the address is on pv0 (a socket can bind it), the prefix and default route are set
            std::net::UdpSocket::bind((c.addr, 0)).expect("10.77.0.2 assigned");
            assert_eq!(default_route(), Some(("pv0".to_string(), Ipv4Addr::new(10, 77, 0, 1))));
            let route = fs::read_to_string("/proc/thread-self/net/route").unwrap();
            assert!(
                route.lines().any(|l| l.starts_with("pv0\t00004D0A\t00000000\t") && l.contains("\t00FFFFFF\t")),
                "no 10.77.0.0/24 route on pv0:\n{route}"
            );
            let ip = std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "pv0"]).output().unwrap();
            let ip = String::from_utf8_lossy(&ip.stdout);
            assert!(ip.contains("inet 10.77.0.2/24"), "{ip}");
            // the link is up (through the ioctl: /sys shows the namespace that mounted it)
            let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            let flags = sys::get_flags(std::os::fd::AsFd::as_fd(&sock), ifreq_named("pv0").unwrap()).unwrap();
            assert!(flags & libc::IFF_UP as libc::c_short != 0);
            // errors name the device
            let e = configure_network(&IpConfig { device: "nosuch0".into(), ..c.clone() }).unwrap_err();
            assert!(e.contains("nosuch0"), "{e}");
            // a gateway off every connected prefix is refused and reported
            let e = configure_network(&IpConfig { gateway: Some(Ipv4Addr::new(192, 0, 2, 1)), ..c }).unwrap_err();
            assert!(e.contains("default route via 192.0.2.1"), "{e}");
            "veth"
        });
        match r {
            Ok(which) => println!("configure_network verified on {which} in a new network namespace"),
            Err(e) => println!("skipped: {e}"),
        }
    }
}
