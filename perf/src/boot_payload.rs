//! The boot-storm payload: a realistic vCluster spec whose boot form (prost, then zstd level 3)
//! is about a given size, and a small per-node spec. Everything is derived from a seed, so two
//! runs (and the journal setups of one run) write exactly the same bytes.
//!
//! The overlay mixes configuration text (which compresses 4-6x) with base64 of pseudo-random
//! bytes (a munge key, a CA bundle, a firmware blob: 6 bits of entropy per character, so zstd
//! keeps about 3/4 of it), so the compressed size is steered by the amount of random bytes and
//! does not collapse to nothing.

use pact_proto::config::{
    health_check::Check, FileSpec, HealthCheck, MountSpec, PolicySpec, RestartPolicy, ServiceSpec, VClusterSpec,
};
use prost::Message;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The vCluster every simulated node boots into.
pub const VCLUSTER: &str = "bench";

/// splitmix64: small, fast and good enough for filler bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648).
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if i <= c.len() {
                out.push(B64[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// base64 wrapped at 64 columns, the way PEM files are.
fn wrapped(data: &[u8]) -> String {
    let b = base64(data);
    let mut out = String::with_capacity(b.len() + b.len() / 64 + 1);
    for line in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push('\n');
    }
    out
}

fn file(path: &str, content: String, mode: u32, owner: &str) -> FileSpec {
    FileSpec {
        path: path.into(),
        content: Some(content),
        content_hash: None,
        mode: Some(mode),
        owner: Some(owner.into()),
        group: Some(owner.into()),
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[allow(clippy::too_many_arguments)]
fn service(
    name: &str,
    binary: &str,
    args: &[&str],
    env: &[(&str, &str)],
    order: u32,
    slice: &str,
    memory: &str,
    cpu_weight: u32,
    check: Check,
    depends_on: &[&str],
) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        binary: binary.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: map(env),
        restart: RestartPolicy::Always as i32,
        restart_delay_seconds: 5,
        depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
        order,
        cgroup_slice: Some(slice.into()),
        cgroup_memory_max: Some(memory.into()),
        cgroup_cpu_weight: Some(cpu_weight),
        cgroup_io_max: Some("259:0 rbps=209715200 wbps=104857600".into()),
        cgroup_pids_max: Some(1024),
        health_check: Some(HealthCheck { check: Some(check), interval_seconds: 30 }),
        state: "running".into(),
    }
}

fn services() -> Vec<ServiceSpec> {
    let infra = "pact.slice/infra";
    let gpu = "pact.slice/gpu";
    vec![
        service(
            "chronyd",
            "/usr/sbin/chronyd",
            &["-d", "-f", "/etc/chrony.conf"],
            &[("TZ", "UTC")],
            1,
            infra,
            "64M",
            100,
            Check::Process(true),
            &[],
        ),
        service(
            "rsyslogd",
            "/usr/sbin/rsyslogd",
            &["-n", "-iNONE"],
            &[("TZ", "UTC")],
            2,
            infra,
            "128M",
            50,
            Check::Process(true),
            &[],
        ),
        service(
            "munged",
            "/usr/sbin/munged",
            &["--foreground", "--key-file=/etc/munge/munge.key", "--num-threads=4"],
            &[("MUNGE_LOG", "/var/log/munge/munged.log")],
            3,
            infra,
            "64M",
            100,
            Check::Process(true),
            &["chronyd"],
        ),
        service(
            "sshd",
            "/usr/sbin/sshd",
            &["-D", "-e", "-f", "/etc/ssh/sshd_config"],
            &[("SSHD_OPTS", "")],
            4,
            infra,
            "256M",
            100,
            Check::TcpPort(22),
            &[],
        ),
        service(
            "cxi-rh",
            "/usr/bin/cxi_rh",
            &["-d", "cxi0", "--retry-interval", "10"],
            &[("CXI_RH_CONFIG", "/etc/cxi/rh.conf"), ("LD_LIBRARY_PATH", "/opt/cray/lib64")],
            5,
            "pact.slice/network",
            "128M",
            200,
            Check::Process(true),
            &[],
        ),
        service(
            "nvidia-persistenced",
            "/usr/bin/nvidia-persistenced",
            &["--no-persistence-mode", "--verbose"],
            &[("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")],
            6,
            gpu,
            "64M",
            100,
            Check::Process(true),
            &[],
        ),
        service(
            "nv-hostengine",
            "/usr/bin/nv-hostengine",
            &["-n", "--service-account", "nvidia-dcgm", "-b", "127.0.0.1"],
            &[("DCGM_HOME_DIR", "/var/log/nvidia-dcgm"), ("__DCGM_DBG_LVL", "ERROR")],
            7,
            gpu,
            "512M",
            100,
            Check::TcpPort(5555),
            &["nvidia-persistenced"],
        ),
        service(
            "dcgm-exporter",
            "/usr/bin/dcgm-exporter",
            &["-f", "/etc/dcgm-exporter/default-counters.csv", "-a", ":9400"],
            &[("DCGM_EXPORTER_INTERVAL", "30000"), ("DCGM_REMOTE_HOSTENGINE_INFO", "127.0.0.1:5555")],
            8,
            gpu,
            "256M",
            50,
            Check::HttpUrl("http://localhost:9400/metrics".into()),
            &["nv-hostengine"],
        ),
        service(
            "node-exporter",
            "/usr/bin/prometheus-node-exporter",
            &["--web.listen-address=:9100", "--collector.systemd", "--collector.infiniband", "--no-collector.wifi"],
            &[("GOMAXPROCS", "2")],
            9,
            infra,
            "128M",
            50,
            Check::HttpUrl("http://localhost:9100/metrics".into()),
            &[],
        ),
        service(
            "lustre-health",
            "/opt/site/bin/lustre-health",
            &["--interval", "60", "--fs", "/capstor", "--fs", "/scratch"],
            &[("LUSTRE_HEALTH_LOG", "warn")],
            10,
            infra,
            "64M",
            50,
            Check::Process(true),
            &[],
        ),
        service(
            "slurmd",
            "/usr/sbin/slurmd",
            &["-D", "-s", "--conf-server", "slurmctl1.mgmt,slurmctl2.mgmt"],
            &[
                ("SLURM_CONF", "/etc/slurm/slurm.conf"),
                ("SLURMD_OPTIONS", "-M"),
                ("PATH", "/usr/sbin:/usr/bin:/opt/slurm/bin"),
            ],
            11,
            "pact.slice/workload",
            "2G",
            400,
            Check::TcpPort(6818),
            &["munged", "chronyd"],
        ),
        service(
            "lattice-node-agent",
            "/usr/bin/lattice-node-agent",
            &["--config", "/etc/lattice/agent.toml", "--log-format", "json"],
            &[("RUST_LOG", "info"), ("LATTICE_ENDPOINT", "https://lattice.mgmt:8443"), ("LATTICE_NODE_CLASS", "gh200")],
            12,
            infra,
            "512M",
            200,
            Check::HttpUrl("http://localhost:9101/health".into()),
            &["chronyd", "munged"],
        ),
    ]
}

fn chrony_conf() -> String {
    let mut s = String::from("# Managed by pact: vCluster bench\n");
    for i in 1..=4 {
        let _ = writeln!(s, "server ntp{i}.mgmt iburst minpoll 4 maxpoll 6");
    }
    s.push_str(
        "driftfile /var/lib/chrony/drift\nmakestep 1.0 3\nrtcsync\nleapsectz right/UTC\nlogdir /var/log/chrony\n",
    );
    s
}

fn sshd_config() -> String {
    "# Managed by pact\nPort 22\nListenAddress 0.0.0.0\nHostKey /etc/ssh/ssh_host_ed25519_key\n\
     PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
     KbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding no\nPrintMotd no\nAcceptEnv LANG LC_*\n\
     Subsystem sftp /usr/lib/openssh/sftp-server\nMaxStartups 100:30:400\nClientAliveInterval 120\n"
        .into()
}

fn limits_conf() -> String {
    let mut s = String::from("# Managed by pact\n");
    for (item, soft, hard) in [
        ("memlock", "unlimited", "unlimited"),
        ("nofile", "65536", "1048576"),
        ("stack", "unlimited", "unlimited"),
        ("nproc", "65536", "65536"),
        ("core", "0", "unlimited"),
    ] {
        let _ = writeln!(s, "*    soft    {item:<8} {soft}");
        let _ = writeln!(s, "*    hard    {item:<8} {hard}");
    }
    s
}

/// A slurm.conf with a node line per chassis: long, repetitive, but each line differs.
fn slurm_conf(rng: &mut Rng) -> String {
    let mut s = String::from(
        "# Managed by pact\nClusterName=alps\nSlurmctldHost=slurmctl1(10.0.0.11)\nSlurmctldHost=slurmctl2(10.0.0.12)\n\
         AuthType=auth/munge\nCryptoType=crypto/munge\nMpiDefault=pmix\nProctrackType=proctrack/cgroup\n\
         TaskPlugin=task/affinity,task/cgroup\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n\
         GresTypes=gpu\nSchedulerType=sched/backfill\nPriorityType=priority/multifactor\nReturnToService=2\n",
    );
    for chassis in 0..160u32 {
        let first = chassis * 64 + 1;
        let _ = writeln!(
            s,
            "NodeName=nid[{:06}-{:06}] CPUs=288 Boards=1 SocketsPerBoard=4 CoresPerSocket=72 ThreadsPerCore=1 \
             RealMemory={} Gres=gpu:gh200:4 Features=gh200,rack{:03},cab{:02} Weight={}",
            first,
            first + 63,
            850_000 + rng.below(4096),
            chassis / 8,
            chassis % 8,
            10 + rng.below(20)
        );
    }
    for (p, nodes) in
        [("normal", "nid[000001-008192]"), ("debug", "nid[008193-008704]"), ("xfer", "nid[008705-010240]")]
    {
        let _ =
            writeln!(s, "PartitionName={p} Nodes={nodes} Default=NO MaxTime=24:00:00 State=UP OverSubscribe=EXCLUSIVE");
    }
    s
}

/// /etc/hosts for the management network.
fn hosts(rng: &mut Rng) -> String {
    let mut s = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
    for i in 0..1200u32 {
        let _ =
            writeln!(s, "10.{}.{}.{} nid{:06}.mgmt nid{:06}", 100 + i / 65536, (i / 256) % 256, i % 256, i + 1, i + 1);
        if rng.below(16) == 0 {
            let _ = writeln!(s, "10.200.{}.{} bmc-nid{:06}.mgmt", (i / 256) % 256, i % 256, i + 1);
        }
    }
    s
}

fn pem_bundle(rng: &mut Rng, certs: usize, der_len: usize) -> String {
    let mut s = String::new();
    for i in 0..certs {
        let _ = writeln!(s, "# site CA {i}");
        s.push_str("-----BEGIN CERTIFICATE-----\n");
        s.push_str(&wrapped(&rng.bytes(der_len)));
        s.push_str("-----END CERTIFICATE-----\n");
    }
    s
}

/// What zstd level 3 typically makes of the configuration text in the overlay (measured with
/// `zstd -3` on this generator's text: about 1/5); used only to size the random filler.
const TEXT_RATIO: f64 = 5.0;
/// Random bytes outside the filler (munge key, CA bundle).
const FIXED_RANDOM: usize = 1024 + 24 * 1100;
/// Compressed size of the wrapped base64 filler per random byte (measured the same way).
const FILLER_RATIO: f64 = 1.023;

/// The overlay spec whose boot form should compress to about `target_compressed` bytes.
pub fn overlay_spec(seed: u64, target_compressed: usize) -> VClusterSpec {
    let mut spec = overlay_without_filler(seed);
    let text = spec.encoded_len() - FIXED_RANDOM * 4 / 3;
    let estimate = text as f64 / TEXT_RATIO + FIXED_RANDOM as f64;
    let filler = ((target_compressed as f64 - estimate) / FILLER_RATIO).max(0.0) as usize;
    let mut rng = Rng::new(seed ^ 0xf111_e400);
    let mut blob = String::from("# cxi firmware image, base64 (pact file delivery test payload)\n");
    blob.push_str(&wrapped(&rng.bytes(filler)));
    spec.files.push(file("/opt/site/firmware/cxi-fw-1.5.2.bin.b64", blob, 0o644, "root"));
    spec
}

fn overlay_without_filler(seed: u64) -> VClusterSpec {
    let mut rng = Rng::new(seed);
    let sysctl = map(&[
        ("vm.nr_hugepages", "1024"),
        ("vm.swappiness", "10"),
        ("vm.overcommit_memory", "1"),
        ("vm.zone_reclaim_mode", "0"),
        ("vm.min_free_kbytes", "1048576"),
        ("vm.dirty_ratio", "10"),
        ("vm.dirty_background_ratio", "5"),
        ("vm.max_map_count", "1048576"),
        ("kernel.numa_balancing", "0"),
        ("kernel.pid_max", "4194304"),
        ("kernel.threads-max", "4194304"),
        ("kernel.panic", "10"),
        ("kernel.panic_on_oops", "1"),
        ("kernel.sched_autogroup_enabled", "0"),
        ("kernel.perf_event_paranoid", "2"),
        ("kernel.core_pattern", "/var/crash/core.%e.%p.%t"),
        ("fs.file-max", "16777216"),
        ("fs.inotify.max_user_watches", "1048576"),
        ("net.core.rmem_max", "268435456"),
        ("net.core.wmem_max", "268435456"),
        ("net.core.rmem_default", "16777216"),
        ("net.core.wmem_default", "16777216"),
        ("net.core.netdev_max_backlog", "250000"),
        ("net.core.somaxconn", "65535"),
        ("net.ipv4.tcp_rmem", "4096 87380 268435456"),
        ("net.ipv4.tcp_wmem", "4096 65536 268435456"),
        ("net.ipv4.tcp_congestion_control", "bbr"),
        ("net.ipv4.tcp_mtu_probing", "1"),
        ("net.ipv4.neigh.default.gc_thresh1", "32768"),
        ("net.ipv4.neigh.default.gc_thresh2", "65536"),
        ("net.ipv4.neigh.default.gc_thresh3", "131072"),
        ("net.ipv6.conf.all.disable_ipv6", "1"),
    ]);
    let modules = [
        "nvidia",
        "nvidia_uvm",
        "nvidia_modeset",
        "nvidia_peermem",
        "cxi_core",
        "cxi_user",
        "cxi_eth",
        "lnet",
        "lustre",
        "nfs",
        "nfsv4",
        "xpmem",
        "ib_core",
    ]
    .iter()
    .map(|m| m.to_string())
    .collect();
    let mount = |fs: &str, src: &str, opts: &str, ro: bool| MountSpec {
        fs_type: fs.into(),
        source: src.into(),
        options: opts.into(),
        read_only: ro,
    };
    let mut mounts = BTreeMap::new();
    mounts.insert(
        "/capstor".into(),
        mount("lustre", "10.10.0.1@kfi:10.10.0.2@kfi:/capstor", "flock,noatime,lazystatfs", false),
    );
    mounts.insert("/scratch".into(), mount("lustre", "10.10.1.1@kfi:10.10.1.2@kfi:/scratch", "flock,noatime", false));
    mounts.insert("/users".into(), mount("nfs", "vast01.mgmt:/users", "vers=4.2,noatime,nconnect=8,hard", false));
    mounts.insert("/apps".into(), mount("nfs", "vast01.mgmt:/apps", "vers=4.2,noatime,nconnect=4", true));
    mounts.insert(
        "/datasets".into(),
        mount("nfs", "storage02.mgmt:/shared-datasets", "vers=4.2,noatime,nconnect=16", true),
    );
    mounts.insert(
        "/user-environment".into(),
        mount("squashfs", "/capstor/uenv/prgenv-gnu-24.11.squashfs", "loop,nodev", true),
    );
    mounts.insert("/var/spool/slurmd".into(), mount("tmpfs", "tmpfs", "size=2G,mode=0755", false));
    mounts.insert("/tmp".into(), mount("tmpfs", "tmpfs", "size=64G,mode=1777,nosuid,nodev", false));
    let mut files = vec![
        file("/etc/motd", "Alps GH200 partition (vCluster bench). Jobs are scheduled by slurm.\n".into(), 0o644, "root"),
        file("/etc/chrony.conf", chrony_conf(), 0o644, "root"),
        file("/etc/ssh/sshd_config", sshd_config(), 0o600, "root"),
        file("/etc/security/limits.d/99-hpc.conf", limits_conf(), 0o644, "root"),
        file("/etc/modprobe.d/nvidia.conf", "options nvidia NVreg_EnableStreamMemOPs=1 NVreg_RegistryDwords=\"PeerMappingOverride=1;\"\noptions nvidia_uvm uvm_perf_prefetch_enable=1\n".into(), 0o644, "root"),
        file("/etc/lattice/agent.toml", "[agent]\nendpoint = \"https://lattice.mgmt:8443\"\nheartbeat_seconds = 15\nnode_class = \"gh200\"\n\n[telemetry]\nlisten = \"127.0.0.1:9101\"\nexport_interval_seconds = 30\n".into(), 0o644, "root"),
        file("/etc/slurm/slurm.conf", slurm_conf(&mut rng), 0o644, "slurm"),
        file("/etc/hosts", hosts(&mut rng), 0o644, "root"),
        file("/etc/munge/munge.key", wrapped(&rng.bytes(1024)), 0o400, "munge"),
        file("/etc/pki/tls/certs/site-ca-bundle.pem", pem_bundle(&mut rng, 24, 1100), 0o644, "root"),
    ];
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let network = map(&[
        ("hsn0", "mtu 9000"),
        ("hsn1", "mtu 9000"),
        ("hsn2", "mtu 9000"),
        ("hsn3", "mtu 9000"),
        ("nmn0", "dhcp"),
    ]);
    let packages = map(&[
        ("cuda-toolkit", "12.4"),
        ("nvidia-driver", "550.54.15"),
        ("datacenter-gpu-manager", "3.3.5"),
        ("slurm", "24.05.3"),
        ("munge", "0.5.15"),
        ("lustre-client", "2.15.5"),
        ("libfabric", "1.22.0"),
        ("cray-cxi-driver", "1.5.2"),
        ("prometheus-node-exporter", "1.8.2"),
        ("chrony", "4.5"),
    ]);
    let policy = PolicySpec {
        drift_sensitivity: Some(2.0),
        base_commit_window_seconds: Some(900),
        emergency_window_seconds: Some(14_400),
        enforcement_mode: Some("enforce".into()),
        auto_converge_categories: vec!["services".into(), "kernel".into()],
        require_ack_categories: vec!["mounts".into(), "network".into(), "gpu".into()],
        regulated: Some(false),
        two_person_approval: Some(false),
        approval_timeout_seconds: Some(1800),
        audit_retention_days: Some(2555),
        federation_template: Some("regulated-sensitive".into()),
        emergency_allowed: Some(true),
        ai_exec_allowed: Some(false),
        exec_whitelist: ["nvidia-smi", "ps", "journalctl", "dmesg", "ip", "lctl", "cxi_stat", "sinfo"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        shell_whitelist: vec!["bash".into()],
        blacklist_patterns: ["/tmp/**", "/var/log/**", "/proc/**", "/sys/**", "/dev/**", "/run/user/**"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    VClusterSpec {
        vcluster_id: VCLUSTER.into(),
        base_image: "alps-gh200-2026q1".into(),
        supervisor_backend: "pact".into(),
        sysctl,
        modules,
        mounts,
        files,
        services: services(),
        network,
        packages,
        policy: Some(policy),
        uenv: "prgenv-gnu/24.11".into(),
    }
}

/// Simulated node `i` (0-based) is called node-00001, node-00002, ...
pub fn node_name(i: usize) -> String {
    format!("node-{:05}", i + 1)
}

/// A node's own declared config: two sysctls, a local scratch mount and an identity file
/// with some per-node random bytes. Its prost encoding is about 1 KiB, and so is the node
/// delta the journal builds from it.
pub fn node_spec(seed: u64, i: usize) -> VClusterSpec {
    let name = node_name(i);
    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x00de_1a00);
    let sysctl = map(&[("vm.nr_hugepages", &(1024 + rng.below(64) * 16).to_string()), ("kernel.numa_balancing", "0")]);
    let mut mounts = BTreeMap::new();
    mounts.insert(
        "/local".to_string(),
        MountSpec {
            fs_type: "xfs".into(),
            source: format!("/dev/disk/by-id/nvme-SAMSUNG_MZ1L21T9-{:08x}", rng.next_u64() as u32),
            options: "noatime,nodiratime,logbufs=8".into(),
            read_only: false,
        },
    );
    let content = format!(
        "# Managed by pact: identity of {name}\nnode = \"{name}\"\nrack = \"x{:04}\"\nslot = {}\nbmc = \"10.200.{}.{}\"\nhsn_mac = \"02:00:{:02x}:{:02x}:{:02x}:{:02x}\"\nsecret = \"{}\"\n",
        i / 256,
        i % 64,
        (i / 256) % 256,
        i % 256,
        rng.below(256),
        rng.below(256),
        rng.below(256),
        rng.below(256),
        base64(&rng.bytes(480))
    );
    VClusterSpec {
        sysctl,
        mounts,
        files: vec![file("/etc/pact/node.toml", content, 0o600, "root")],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn payload_is_deterministic_per_seed() {
        let a = overlay_spec(7, 150 * 1024).encode_to_vec();
        assert_eq!(a, overlay_spec(7, 150 * 1024).encode_to_vec());
        assert_ne!(a, overlay_spec(8, 150 * 1024).encode_to_vec());
        assert_eq!(node_spec(7, 3).encode_to_vec(), node_spec(7, 3).encode_to_vec());
        assert_ne!(node_spec(7, 3).encode_to_vec(), node_spec(7, 4).encode_to_vec());
    }

    #[test]
    fn sizes_are_in_range() {
        // Base64 of random bytes dominates, so the encoding is well above the target, but
        // less than twice it.
        for target in [150 * 1024, 400 * 1024] {
            let spec = overlay_spec(1, target);
            let len = spec.encoded_len();
            assert!(len > target * 5 / 4 && len < target * 2, "target {target}: encoded {len}");
            assert_eq!(spec.services.len(), 12);
            assert!(spec.files.iter().all(|f| f.content.as_ref().is_some_and(|c| !c.is_empty())));
        }
        for i in [0, 9, 9999] {
            let n = node_spec(1, i).encoded_len();
            assert!((900..1100).contains(&n), "node spec {i}: {n} bytes");
        }
        assert_eq!(node_name(0), "node-00001");
        assert_eq!(node_name(9999), "node-10000");
    }
}
