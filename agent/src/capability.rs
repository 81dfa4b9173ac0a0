//! Node capability facts for `/run/pact/capability.json`: CPU, memory, network interfaces and
//! storage, read from `/proc` and `/sys` only.
//!
//! Bounded and safe to run anywhere: no process is started, nothing touches the network,
//! every read has a size cap and every list a length cap, and a file that cannot be read leaves
//! its fields at zero/empty with the failure recorded in [`Capability::errors`] (never a
//! panic). Attributes that legitimately do not exist everywhere (cpufreq, a NIC's speed while
//! it is down, a virtual disk's model, NUMA and per-size huge page directories) are left at
//! zero/empty without an error. Mount sizes are not collected: `statvfs` on a dead NFS mount
//! blocks, and this runs on the boot path.
//!
//! Field names follow `proto/proto/capability.proto` where the same fact exists there
//! (`logical_cores`, `total_bytes`, `speed_mbps`, ...).
//!
//! GPUs: NVIDIA ones through NVML (feature `gpu`, which both release variants build with; the
//! library is loaded at run time, so a node without the driver reports why instead of
//! failing), AMD ones through sysfs (`/sys/class/drm/card*/device` with vendor 0x1002).
//! `gpu_discovery` says what was looked at and what each source answered, so a consumer can
//! tell "no GPUs" from "not looked for". Health, utilisation and the polling of
//! `gpu_poll_interval_seconds` come with the capability issue.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nanoserde::{DeJson, SerJson};

/// Version of this document's layout; bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest file read (a 512-CPU `/proc/cpuinfo` is about 1 MiB).
const MAX_FILE: u64 = 8 << 20;
/// Most entries taken from one directory or table (interfaces, block devices, mounts, CPUs).
const MAX_ENTRIES: usize = 16_384;

#[derive(Debug, Clone, Default, PartialEq, SerJson, DeJson)]
pub struct Capability {
    pub schema_version: u32,
    /// Milliseconds since the Unix epoch when the facts were read.
    pub collected_at_unix_ms: u64,
    pub hostname: String,
    pub kernel_release: String,
    pub cpu: Cpu,
    pub memory: Memory,
    pub network_interfaces: Vec<NetworkInterface>,
    pub storage: Storage,
    pub gpus: Vec<Gpu>,
    /// Each source and its answer: `"nvml: 2 device(s); sysfs amd: 0"`,
    /// `"nvml: not available (...); sysfs amd: 0"`, `"nvml: not built in; ..."`.
    pub gpu_discovery: String,
    /// Files that could not be read or parsed, as `"<path>: <error>"`.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, SerJson, DeJson)]
pub struct Cpu {
    /// `uname -m`: x86_64, aarch64, ...
    pub architecture: String,
    pub model: String,
    /// Online CPUs (hardware threads).
    pub logical_cores: u32,
    /// Distinct (socket, core) pairs; 0 when the topology is unknown.
    pub physical_cores: u32,
    /// Distinct physical packages; 0 when unknown.
    pub sockets: u32,
    /// 0 when the kernel has no NUMA directory.
    pub numa_nodes: u32,
    /// From cpufreq; 0 when there is none (e.g. in a VM).
    pub max_frequency_mhz: u32,
    /// Instruction set features (`flags`/`Features` of cpuinfo's first CPU).
    pub features: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, SerJson, DeJson)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub hugepages: HugePages,
}

/// Huge page pools, in pages.
#[derive(Debug, Clone, Default, PartialEq, SerJson, DeJson)]
pub struct HugePages {
    /// `Hugepagesize`: the size `HugePages_Total`/`_Free` count in.
    pub default_size_bytes: u64,
    pub total: u64,
    pub free: u64,
    pub size_2mb_total: u64,
    pub size_2mb_free: u64,
    pub size_1gb_total: u64,
    pub size_1gb_free: u64,
}

#[derive(Debug, Clone, Default, PartialEq, SerJson, DeJson)]
pub struct NetworkInterface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// The kernel's operstate: up, down, unknown, dormant, ...
    pub operstate: String,
    /// 0 when unknown (the link is down, or the driver does not say).
    pub speed_mbps: u64,
    /// Kernel driver name; empty for virtual interfaces.
    pub driver: String,
    /// No backing device (lo, bridges, veth, tunnels, ...).
    pub is_virtual: bool,
}

#[derive(Debug, Clone, Default, PartialEq, SerJson, DeJson)]
pub struct Storage {
    /// `"local_storage"` when a non-removable, non-virtual disk exists, else `"diskless"`.
    pub node_type: String,
    pub block_devices: Vec<BlockDevice>,
    pub mounts: Vec<Mount>,
}

#[derive(Debug, Clone, Default, PartialEq, SerJson, DeJson)]
pub struct BlockDevice {
    pub name: String,
    pub model: String,
    pub size_bytes: u64,
    pub rotational: bool,
    pub removable: bool,
    /// No backing device (loop, zram, ram, dm-*, md*).
    pub is_virtual: bool,
}

#[derive(Debug, Clone, Default, PartialEq, SerJson, DeJson)]
pub struct Mount {
    pub path: String,
    pub fs_type: String,
    pub source: String,
}

/// Reserved for GPU discovery; never filled yet.
#[derive(Debug, Clone, Default, PartialEq, SerJson, DeJson)]
pub struct Gpu {
    pub index: u32,
    pub vendor: String,
    pub model: String,
    pub memory_bytes: u64,
    pub pci_bus_id: String,
    pub uuid: String,
}

/// Reads files with caps, collecting failures.
struct Reader {
    errors: Vec<String>,
}

impl Reader {
    /// A file that should exist: any failure is recorded.
    fn must(&mut self, path: &str) -> Option<String> {
        match read_capped(Path::new(path)) {
            Ok(s) => Some(s),
            Err(e) => {
                self.errors.push(format!("{path}: {e}"));
                None
            }
        }
    }

    /// A file that may be absent (or refuse reading, like a down NIC's speed): only other
    /// failures are recorded.
    fn may(&mut self, path: &Path) -> Option<String> {
        match read_capped(path) {
            Ok(s) => Some(s.trim().to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::EINVAL) => None,
            Err(e) => {
                self.errors.push(format!("{}: {e}", path.display()));
                None
            }
        }
    }

    /// A directory's entry names, sorted and capped.
    fn list(&mut self, dir: &str, required: bool) -> Vec<String> {
        match fs::read_dir(dir) {
            Ok(rd) => {
                let mut v: Vec<String> = rd
                    .filter_map(Result::ok)
                    .take(MAX_ENTRIES)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            }
            Err(e) => {
                if required || e.kind() != ErrorKind::NotFound {
                    self.errors.push(format!("{dir}: {e}"));
                }
                Vec::new()
            }
        }
    }
}

fn read_capped(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    File::open(path)?.take(MAX_FILE).read_to_string(&mut s)?;
    Ok(s)
}

/// Reads the node's facts now.
pub fn collect() -> Capability {
    let mut r = Reader { errors: Vec::new() };
    let uts = rustix::system::uname();
    let collected_at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut cpu = cpu(&mut r);
    cpu.architecture = uts.machine().to_string_lossy().into_owned();
    let memory = memory(&mut r);
    let network_interfaces = network(&mut r);
    let storage = storage(&mut r);
    let (mut gpus, nvml) = nvidia_gpus();
    let amd = amd_gpus(Path::new("/sys/class/drm"));
    let gpu_discovery = format!("nvml: {nvml}; sysfs amd: {}", amd.len());
    gpus.extend(amd);
    for (i, g) in gpus.iter_mut().enumerate() {
        g.index = i as u32;
    }
    Capability {
        schema_version: SCHEMA_VERSION,
        collected_at_unix_ms,
        hostname: uts.nodename().to_string_lossy().into_owned(),
        kernel_release: uts.release().to_string_lossy().into_owned(),
        cpu,
        memory,
        network_interfaces,
        storage,
        gpus,
        gpu_discovery,
        errors: r.errors,
    }
}

/// NVIDIA GPUs through NVML, and what NVML answered.
#[cfg(feature = "gpu")]
fn nvidia_gpus() -> (Vec<Gpu>, String) {
    use nvml_wrapper::Nvml;
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => return (Vec::new(), format!("not available ({e})")),
    };
    let count = match nvml.device_count() {
        Ok(c) => c.min(MAX_ENTRIES as u32),
        Err(e) => return (Vec::new(), format!("device count failed ({e})")),
    };
    let mut gpus = Vec::new();
    let mut failed = Vec::new();
    for i in 0..count {
        match nvml.device_by_index(i) {
            Ok(d) => gpus.push(Gpu {
                index: i,
                vendor: "nvidia".into(),
                model: d.name().unwrap_or_default(),
                memory_bytes: d.memory_info().map(|m| m.total).unwrap_or(0),
                pci_bus_id: d.pci_info().map(|p| p.bus_id).unwrap_or_default(),
                uuid: d.uuid().unwrap_or_default(),
            }),
            Err(e) => failed.push(format!("device {i}: {e}")),
        }
    }
    let mut said = format!("{} device(s)", gpus.len());
    if !failed.is_empty() {
        said.push_str(&format!(" ({})", failed.join(", ")));
    }
    (gpus, said)
}

#[cfg(not(feature = "gpu"))]
fn nvidia_gpus() -> (Vec<Gpu>, String) {
    (Vec::new(), "not built in (feature gpu)".into())
}

/// AMD GPUs under a DRM class directory (`/sys/class/drm`): each `cardN` (not its connectors,
/// `cardN-DP-1`) whose PCI vendor is 0x1002. The model is the PCI device id, the memory
/// `mem_info_vram_total` (amdgpu), the bus id the device's PCI address.
pub fn amd_gpus(drm: &Path) -> Vec<Gpu> {
    let Ok(dir) = fs::read_dir(drm) else { return Vec::new() };
    let mut cards: Vec<(u32, std::path::PathBuf)> = dir
        .filter_map(|e| e.ok())
        .take(MAX_ENTRIES)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("card")?.parse::<u32>().ok()?;
            Some((n, e.path().join("device")))
        })
        .collect();
    cards.sort();
    let read = |p: std::path::PathBuf| read_capped(&p).map(|s| s.trim().to_string()).unwrap_or_default();
    cards
        .into_iter()
        .filter(|(_, dev)| read(dev.join("vendor")) == "0x1002")
        .map(|(_, dev)| Gpu {
            index: 0,
            vendor: "amd".into(),
            model: read(dev.join("device")),
            memory_bytes: read(dev.join("mem_info_vram_total")).parse().unwrap_or(0),
            pci_bus_id: fs::canonicalize(&dev)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default(),
            uuid: read(dev.join("unique_id")),
        })
        .collect()
}

fn cpu(r: &mut Reader) -> Cpu {
    let mut c = Cpu::default();
    let mut online = Vec::new();
    // (physical id, core id) per CPU from cpuinfo, used when sysfs has no topology.
    let mut info_topology = Vec::new();
    if let Some(text) = r.must("/proc/cpuinfo") {
        let (mut pkg, mut core) = (None::<u32>, None::<u32>);
        for line in text.lines().chain(std::iter::once("")) {
            if line.trim().is_empty() {
                if let (Some(p), Some(k)) = (pkg.take(), core.take()) {
                    info_topology.push((p, k));
                }
                continue;
            }
            let Some((k, v)) = line.split_once(':') else { continue };
            let (k, v) = (k.trim(), v.trim());
            match k {
                "processor" => {
                    if let Ok(n) = v.parse::<u32>() {
                        if online.len() < MAX_ENTRIES {
                            online.push(n);
                        }
                    }
                }
                // x86, then the names arm64 and others use.
                "model name" | "Model" | "Hardware" | "cpu model" if c.model.is_empty() => c.model = v.to_string(),
                "flags" | "Features" if c.features.is_empty() => {
                    c.features = v.split_whitespace().take(1024).map(str::to_string).collect();
                }
                "physical id" => pkg = v.parse().ok(),
                "core id" => core = v.parse().ok(),
                _ => {}
            }
        }
    }
    c.logical_cores = online.len() as u32;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    for n in &online {
        let base = format!("/sys/devices/system/cpu/cpu{n}/topology");
        let p = r.may(Path::new(&format!("{base}/physical_package_id"))).and_then(|s| s.parse::<i64>().ok());
        let k = r.may(Path::new(&format!("{base}/core_id"))).and_then(|s| s.parse::<i64>().ok());
        if let (Some(p), Some(k)) = (p, k) {
            sockets.insert(p);
            cores.insert((p, k));
        }
    }
    if cores.is_empty() {
        for (p, k) in info_topology {
            sockets.insert(i64::from(p));
            cores.insert((i64::from(p), i64::from(k)));
        }
    }
    c.sockets = sockets.len() as u32;
    c.physical_cores = cores.len() as u32;
    c.numa_nodes = r
        .list("/sys/devices/system/node", false)
        .iter()
        .filter(|n| n.strip_prefix("node").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())))
        .count() as u32;
    if let Some(khz) = online
        .first()
        .and_then(|n| r.may(Path::new(&format!("/sys/devices/system/cpu/cpu{n}/cpufreq/cpuinfo_max_freq"))))
        .and_then(|s| s.parse::<u64>().ok())
    {
        c.max_frequency_mhz = (khz / 1000) as u32;
    }
    c
}

fn memory(r: &mut Reader) -> Memory {
    let mut m = Memory::default();
    if let Some(text) = r.must("/proc/meminfo") {
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else { continue };
            let mut words = v.split_whitespace();
            let n: u64 = words.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            let bytes = if words.next() == Some("kB") { n * 1024 } else { n };
            match k {
                "MemTotal" => m.total_bytes = bytes,
                "MemAvailable" => m.available_bytes = bytes,
                "HugePages_Total" => m.hugepages.total = n,
                "HugePages_Free" => m.hugepages.free = n,
                "Hugepagesize" => m.hugepages.default_size_bytes = bytes,
                _ => {}
            }
        }
        if m.total_bytes == 0 {
            r.errors.push("/proc/meminfo: no MemTotal".into());
        }
    }
    let pool = |r: &mut Reader, size: &str, file: &str| {
        r.may(Path::new(&format!("/sys/kernel/mm/hugepages/hugepages-{size}/{file}")))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    m.hugepages.size_2mb_total = pool(r, "2048kB", "nr_hugepages");
    m.hugepages.size_2mb_free = pool(r, "2048kB", "free_hugepages");
    m.hugepages.size_1gb_total = pool(r, "1048576kB", "nr_hugepages");
    m.hugepages.size_1gb_free = pool(r, "1048576kB", "free_hugepages");
    m
}

fn network(r: &mut Reader) -> Vec<NetworkInterface> {
    let mut out = Vec::new();
    for name in r.list("/sys/class/net", true) {
        let base = Path::new("/sys/class/net").join(&name);
        if !base.join("address").exists() {
            // bonding_masters and other non-interface files.
            continue;
        }
        let is_virtual = !base.join("device").exists();
        let driver = fs::read_link(base.join("device/driver"))
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default();
        out.push(NetworkInterface {
            mac: r.may(&base.join("address")).unwrap_or_default(),
            mtu: r.may(&base.join("mtu")).and_then(|s| s.parse().ok()).unwrap_or(0),
            operstate: r.may(&base.join("operstate")).unwrap_or_default(),
            // -1 (unknown) does not parse as u64 and becomes 0.
            speed_mbps: r.may(&base.join("speed")).and_then(|s| s.parse().ok()).unwrap_or(0),
            driver,
            is_virtual,
            name,
        });
    }
    out
}

fn storage(r: &mut Reader) -> Storage {
    let mut s = Storage::default();
    for name in r.list("/sys/block", true) {
        let base = Path::new("/sys/block").join(&name);
        let flag = |r: &mut Reader, f: &str| r.may(&base.join(f)).as_deref() == Some("1");
        s.block_devices.push(BlockDevice {
            model: r.may(&base.join("device/model")).unwrap_or_default(),
            size_bytes: r.may(&base.join("size")).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0) * 512,
            rotational: flag(r, "queue/rotational"),
            removable: flag(r, "removable"),
            is_virtual: !base.join("device").exists(),
            name,
        });
    }
    let local = s.block_devices.iter().any(|d| !d.is_virtual && !d.removable && d.size_bytes > 0);
    s.node_type = if local { "local_storage" } else { "diskless" }.into();
    if let Some(text) = r.must("/proc/self/mounts") {
        for line in text.lines().take(MAX_ENTRIES) {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 3 {
                continue;
            }
            s.mounts.push(Mount {
                source: crate::apply::mounts::unescape(f[0]),
                path: crate::apply::mounts::unescape(f[1]),
                fs_type: f[2].to_string(),
            });
        }
    }
    s
}

/// Writes `c` as JSON to `path` atomically (a temporary file in the same directory, fsync'd,
/// then renamed), creating the directory if needed. Readers never see a partial document.
pub fn write_json(path: &Path, c: &Capability) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(c.serialize_json().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
