//! The agent's side of certificate enrollment: who this node is, a fresh key and CSR, and when
//! the certificate it gets back is due for renewal.
//!
//! Hardware identity ([`read_hardware_identity`]), read under a root directory (`/` in
//! production, a synthetic tree in tests):
//!
//! - `smbios_uuid`: `/sys/class/dmi/id/product_uuid`, lower-cased; left out when firmware never
//!   set it (all zeros, all `f`, a well-known OEM placeholder) or when it does not look like a
//!   UUID.
//! - `board_serial`: `/sys/class/dmi/id/board_serial`; left out when it is an OEM placeholder
//!   ("To be filled by O.E.M.", "Default string", ...). Both DMI files are readable by root
//!   only, which the agent is.
//! - `bmc_serial`: never set; there is no portable way to read it from the host side.
//! - `mac_addresses`: the Ethernet MACs in `/sys/class/net/*/address` of interfaces backed by a
//!   device (bridges, veths and bonds are skipped; a bonded port contributes its permanent
//!   address), or of every interface but `lo` when that finds none; sorted and deduplicated.
//!   InfiniBand's 20-byte hardware addresses are not MACs and are not reported.
//! - `mac_address`, the boot interface: PXE's `BOOTIF=01-aa-bb-..` on `/proc/cmdline`, else the
//!   first of `mac_addresses`, else empty.
//! - `tpm_ek_hash`: SHA-256 of the TPM's endorsement key ([`tpm_ek_hash`]), when there is one.
//!
//! None of this is a secret: MACs are on every frame the node sends, serials and UUIDs are
//! printed on the box or readable by anyone with the BMC. The journal's match of an enrolling
//! node to its registration is therefore only as strong as the identity it matches on; the TPM
//! EK hash is the strongest of them (it names one chip), but here it is an identifier read
//! from the TPM, not an attestation: nothing proves that the key is present in this node.
//!
//! [`new_key_and_csr`] makes the node's key pair and a CSR for it. The private key never
//! leaves the node: only the CSR, which proves possession of the key, is sent; the journal
//! decides the certificate's real names. [`cert_validity`] and [`renew_at`] schedule the
//! renewal at two thirds of the certificate's lifetime.
//!
//! Every read is bounded (4 KiB per file, a cap on interfaces), odd content (non-UTF-8,
//! garbage) is treated as absent, and the TPM exchange runs on a thread the caller waits at
//! most 2 s for: a hung TPM must not hang the boot.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use pact_proto::enrollment::HardwareIdentity;

/// The most bytes read from any one file.
const MAX_FILE: u64 = 4096;
/// The most entries of `/sys/class/net` looked at (a container host can have thousands).
const MAX_INTERFACES: usize = 1024;
/// How long the TPM has to answer.
const TPM_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes of a TPM response read.
const TPM_MAX_RESPONSE: usize = 4096;
/// TPM_ST_NO_SESSIONS.
const TPM_ST_NO_SESSIONS: u16 = 0x8001;
/// TPM_CC_ReadPublic.
const TPM_CC_READ_PUBLIC: u32 = 0x0000_0173;
/// The EK's persistent handle (TCG EK Credential Profile: the RSA 2048 EK).
const EK_HANDLE: u32 = 0x8101_0001;

/// Board serials firmware writes when the vendor never filled the field in (compared
/// case-insensitively).
const SERIAL_PLACEHOLDERS: &[&str] = &["to be filled by o.e.m.", "default string", "not specified", "0", "none"];

/// A product UUID many boards ship with (its bytes count 00 to 09 in SMBIOS order), so it names
/// no particular node.
const UUID_PLACEHOLDER: &str = "03000200-0400-0500-0006-000700080009";

/// This node's hardware identity, read under `root` ("/" in production). Never fails: what
/// cannot be read, or reads as a placeholder, is left out.
pub fn read_hardware_identity(root: &Path) -> HardwareIdentity {
    let mut macs = interface_macs(root);
    let boot = read_small(&root.join("proc/cmdline")).and_then(|c| bootif(&c));
    let mac_address = match boot {
        Some(m) => {
            // `mac_addresses` is every interface's MAC "including the boot one".
            if let Err(at) = macs.binary_search(&m) {
                macs.insert(at, m.clone());
            }
            m
        }
        None => macs.first().cloned().unwrap_or_default(),
    };
    HardwareIdentity {
        mac_address,
        // No portable source: the BMC's serial is only reachable through IPMI/Redfish.
        bmc_serial: None,
        smbios_uuid: smbios_uuid(root),
        board_serial: board_serial(root),
        mac_addresses: macs,
        tpm_ek_hash: tpm_ek_hash(root),
        extra: Default::default(),
    }
}

/// At most [`MAX_FILE`] bytes of a file, when they are UTF-8.
fn read_small(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    let mut b = Vec::new();
    f.take(MAX_FILE).read_to_end(&mut b).ok()?;
    String::from_utf8(b).ok()
}

fn smbios_uuid(root: &Path) -> Option<String> {
    let s = read_small(&root.join("sys/class/dmi/id/product_uuid"))?.trim().to_ascii_lowercase();
    let digits: Vec<char> = s.chars().filter(|c| *c != '-').collect();
    let well_formed = digits.len() == 32 && digits.iter().all(|c| c.is_ascii_hexdigit());
    let unset = digits.iter().all(|c| *c == '0') || digits.iter().all(|c| *c == 'f');
    if !well_formed || unset || s == UUID_PLACEHOLDER {
        return None;
    }
    Some(s)
}

fn board_serial(root: &Path) -> Option<String> {
    let s = read_small(&root.join("sys/class/dmi/id/board_serial"))?;
    let s = s.trim();
    if s.is_empty() || SERIAL_PLACEHOLDERS.iter().any(|p| s.eq_ignore_ascii_case(p)) {
        return None;
    }
    Some(s.to_string())
}

/// `aa:bb:cc:dd:ee:ff` lower-cased, when `s` is six hex octets and not all zero.
fn normalise_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 || !parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())) {
        return None;
    }
    if parts.iter().all(|p| *p == "00") {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

/// The MACs of device-backed interfaces, else of every interface but `lo`; sorted, unique.
fn interface_macs(root: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir(root.join("sys/class/net")) else {
        return Vec::new();
    };
    let mut physical = BTreeSet::new();
    let mut all = BTreeSet::new();
    for entry in dir.flatten().take(MAX_INTERFACES) {
        if entry.file_name() == "lo" {
            continue;
        }
        let p = entry.path();
        // A bonded port's `address` is the bond's; its own is `bonding_slave/perm_hwaddr`.
        let mac = read_small(&p.join("bonding_slave/perm_hwaddr"))
            .and_then(|s| normalise_mac(s.trim()))
            .or_else(|| read_small(&p.join("address")).and_then(|s| normalise_mac(s.trim())));
        let Some(mac) = mac else { continue };
        // `device` is a link to the backing hardware; virtual interfaces have none.
        if p.join("device").symlink_metadata().is_ok() {
            physical.insert(mac.clone());
        }
        all.insert(mac);
    }
    if physical.is_empty() { all } else { physical }.into_iter().collect()
}

/// The boot interface PXE names on the kernel command line (`BOOTIF=01-aa-bb-cc-dd-ee-ff`,
/// the `01-` being ARP's hardware type for Ethernet); the last `BOOTIF=` counts.
fn bootif(cmdline: &str) -> Option<String> {
    let v = cmdline.split_whitespace().filter_map(|t| t.strip_prefix("BOOTIF=")).next_back()?;
    let v = match v.strip_prefix("01-") {
        Some(rest) if v.len() == 20 => rest,
        _ => v,
    };
    normalise_mac(&v.replace('-', ":"))
}

/// Lower-case hex SHA-256 of the TPM's endorsement key (the `TPMT_PUBLIC` that
/// `TPM2_ReadPublic` returns for the persistent EK handle 0x81010001), when `<root>/dev/tpmrm0`
/// (or `<root>/dev/tpm0`) exists and answers within 2 s. A TPM without a persisted EK at that
/// handle (or one with only an ECC EK at 0x81010002) gives `None`, as does any error.
pub fn tpm_ek_hash(root: &Path) -> Option<String> {
    let dev = ["dev/tpmrm0", "dev/tpm0"].iter().map(|d| root.join(d)).find(|d| d.exists())?;
    let resp = with_timeout(TPM_TIMEOUT, move || tpm_exchange(&dev, &read_public_command(EK_HANDLE)))?;
    parse_read_public(&resp).map(pact_proto::sha256_hex)
}

/// TPM2_ReadPublic for `handle`, no sessions.
fn read_public_command(handle: u32) -> [u8; 14] {
    let mut c = [0u8; 14];
    c[0..2].copy_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    c[2..6].copy_from_slice(&14u32.to_be_bytes());
    c[6..10].copy_from_slice(&TPM_CC_READ_PUBLIC.to_be_bytes());
    c[10..14].copy_from_slice(&handle.to_be_bytes());
    c
}

/// Runs `f` on its own thread and waits at most `limit` for it. A thread that does not
/// answer in time is left behind (blocked in the kernel, nothing to cancel it with).
fn with_timeout<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> Option<T> + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name("pact-tpm".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    rx.recv_timeout(limit).ok().flatten()
}

/// Writes a command to a TPM character device and reads its response (at most
/// [`TPM_MAX_RESPONSE`] bytes, up to the size its header gives).
fn tpm_exchange(dev: &Path, cmd: &[u8]) -> Option<Vec<u8>> {
    let mut f = OpenOptions::new().read(true).write(true).open(dev).ok()?;
    f.write_all(cmd).ok()?;
    let mut buf = vec![0u8; TPM_MAX_RESPONSE];
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
        if got >= 6 {
            let want = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
            if got >= want {
                break;
            }
        }
    }
    buf.truncate(got);
    Some(buf)
}

/// The `outPublic` area (the `TPMT_PUBLIC` bytes, without their size) of a TPM2_ReadPublic
/// response: tag(2) size(4) responseCode(4), then `TPM2B_PUBLIC` (u16 size, bytes), then the
/// names, which are not needed. `None` for an error code or a short or malformed response.
fn parse_read_public(resp: &[u8]) -> Option<&[u8]> {
    let u16_at = |i: usize| resp.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let u32_at = |i: usize| resp.get(i..i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    if u16_at(0)? != TPM_ST_NO_SESSIONS {
        return None;
    }
    let size = usize::try_from(u32_at(2)?).ok()?;
    if size < 10 || size > resp.len() {
        return None;
    }
    if u32_at(6)? != 0 {
        return None;
    }
    let resp = &resp[..size];
    let n = usize::from(u16::from_be_bytes(resp.get(10..12)?.try_into().ok()?));
    if n == 0 {
        return None;
    }
    resp.get(12..12 + n)
}

/// A fresh key pair (PEM, PKCS#8) and a CSR for it (DER).
pub struct KeyAndCsr {
    /// The private key; it never leaves the node.
    pub key_pem: String,
    /// PKCS#10 request, signed with the key.
    pub csr_der: Vec<u8>,
}

/// Makes an ECDSA P-256 key pair and a CSR for it with the subject
/// `CN=pact-service-agent/<node_id>` and `node_id` as its one DNS name. The journal decides
/// the certificate's real names; the CSR only proves possession of the key.
pub fn new_key_and_csr(node_id: &str) -> Result<KeyAndCsr, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("generating the key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![node_id.to_string()])
        .map_err(|e| format!("node id {node_id:?} as a certificate name: {e}"))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("pact-service-agent/{node_id}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(|e| format!("building the CSR: {e}"))?;
    Ok(KeyAndCsr { key_pem: key.serialize_pem(), csr_der: csr.der().to_vec() })
}

/// (not_before, not_after) as Unix seconds, of the first certificate in a PEM file's content.
pub fn cert_validity(pem: &str) -> Result<(i64, i64), String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or("no certificate in the PEM")?
        .map_err(|e| format!("certificate PEM: {e:?}"))?;
    der_validity(&der).ok_or_else(|| "the certificate's DER has no readable validity".to_string())
}

/// One DER TLV: (tag, content, what follows). Lengths up to 4 bytes; anything else is None.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |a, &x| (a << 8) | usize::from(x)), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// notBefore and notAfter of a certificate (RFC 5280: Certificate → tbsCertificate →
/// [version], serialNumber, signature, issuer, validity), as Unix seconds. A reader of its own
/// rather than an X.509 library: the agent needs these two dates and nothing else from it.
fn der_validity(der: &[u8]) -> Option<(i64, i64)> {
    let (0x30, cert, _) = tlv(der)? else { return None };
    let (0x30, mut tbs, _) = tlv(cert)? else { return None };
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2; // version
    }
    for want in [0x02, 0x30, 0x30] {
        let (tag, _, rest) = tlv(tbs)?; // serial, signature algorithm, issuer
        if tag != want {
            return None;
        }
        tbs = rest;
    }
    let (0x30, validity, _) = tlv(tbs)? else { return None };
    let (t1, nb, rest) = tlv(validity)?;
    let (t2, na, _) = tlv(rest)?;
    Some((der_time(t1, nb)?, der_time(t2, na)?))
}

/// UTCTime (tag 0x17, `YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (0x18,
/// `YYYYMMDDHHMMSSZ`), as RFC 5280 requires them, to Unix seconds.
fn der_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    if !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        (0x18, 14) => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (mo, d, h, mi, se) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y = if mo <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3_600 + mi * 60 + se)
}

/// When to renew: not_before + 2/3 of (not_after - not_before). A certificate whose
/// not_after is not after its not_before is due at once (at not_before).
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    if not_after <= not_before {
        return not_before;
    }
    let at = i128::from(not_before) + (i128::from(not_after) - i128::from(not_before)) * 2 / 3;
    // Between the two bounds, so it fits.
    i64::try_from(at).unwrap_or(not_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// A synthetic root under the temp dir, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("pact-identity-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Tree(p)
        }
        fn file(&self, rel: &str, content: impl AsRef<[u8]>) -> &Tree {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
            self
        }
        fn dir(&self, rel: &str) -> &Tree {
            fs::create_dir_all(self.0.join(rel)).unwrap();
            self
        }
        /// An interface with an address; `physical` gives it a `device` entry.
        fn iface(&self, name: &str, mac: &str, physical: bool) -> &Tree {
            self.file(&format!("sys/class/net/{name}/address"), format!("{mac}\n"));
            if physical {
                self.dir(&format!("sys/class/net/{name}/device"));
            }
            self
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const DMI: &str = "sys/class/dmi/id";

    #[test]
    fn uuid_and_serial_are_read() {
        let t = Tree::new("dmi");
        t.file(&format!("{DMI}/product_uuid"), "  4C4C4544-0042-3510-8052-B4C04F4E4E32\n");
        t.file(&format!("{DMI}/board_serial"), " .7XK2P93.CN1296 \n");
        let id = read_hardware_identity(&t.0);
        assert_eq!(id.smbios_uuid.as_deref(), Some("4c4c4544-0042-3510-8052-b4c04f4e4e32"));
        assert_eq!(id.board_serial.as_deref(), Some(".7XK2P93.CN1296"));
        assert_eq!(id.bmc_serial, None);
    }

    #[test]
    fn placeholders_and_garbage_are_rejected() {
        let uuids: &[&[u8]] = &[
            b"00000000-0000-0000-0000-000000000000\n",
            b"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF\n",
            b"ffffffff-ffff-ffff-ffff-ffffffffffff",
            b"03000200-0400-0500-0006-000700080009\n",
            b"",
            b"  \n",
            b"not-a-uuid",
            b"4c4c4544-0042-3510-8052-b4c04f4e4e3\n",
            b"\xff\xfe4c4c4544-0042-3510-8052-b4c04f4e4e32",
        ];
        for u in uuids {
            let t = Tree::new("uuid");
            t.file(&format!("{DMI}/product_uuid"), u);
            assert_eq!(smbios_uuid(&t.0), None, "{:?}", String::from_utf8_lossy(u));
        }
        let serials: &[&[u8]] = &[
            b"To be filled by O.E.M.\n",
            b"TO BE FILLED BY O.E.M.",
            b"Default string\n",
            b"DEFAULT STRING",
            b"Not Specified\n",
            b"not specified",
            b"0\n",
            b"None\n",
            b"NONE",
            b"",
            b" \t\n",
            b"\xc3\x28serial",
        ];
        for s in serials {
            let t = Tree::new("serial");
            t.file(&format!("{DMI}/board_serial"), s);
            assert_eq!(board_serial(&t.0), None, "{:?}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn macs_skip_lo_virtual_and_zero() {
        let t = Tree::new("macs");
        t.iface("lo", "00:00:00:00:00:00", false)
            .iface("eno2", "B4:96:91:00:00:02", true)
            .iface("eno1", "b4:96:91:00:00:01", true)
            .iface("dead0", "00:00:00:00:00:00", true)
            .iface("br0", "02:42:ac:11:00:01", false)
            .iface("veth1a2b", "5e:aa:bb:cc:dd:ee", false)
            .iface("ib0", "80:00:00:48:fe:80:00:00:00:00:00:00:b8:59:9f:03:00:a1:b2:c3", true)
            .iface("odd", "zz:zz:zz:zz:zz:zz", true);
        let id = read_hardware_identity(&t.0);
        assert_eq!(id.mac_addresses, vec!["b4:96:91:00:00:01", "b4:96:91:00:00:02"]);
        assert_eq!(id.mac_address, "b4:96:91:00:00:01");
    }

    #[test]
    fn macs_fall_back_to_virtual_when_no_physical() {
        let t = Tree::new("virt");
        t.iface("lo", "00:00:00:00:00:00", false)
            .iface("br0", "02:42:AC:11:00:01", false)
            .iface("eth0", "52:54:00:12:34:56", false)
            .iface("dummy", "00:00:00:00:00:00", false);
        let id = read_hardware_identity(&t.0);
        assert_eq!(id.mac_addresses, vec!["02:42:ac:11:00:01", "52:54:00:12:34:56"]);
        assert_eq!(id.mac_address, "02:42:ac:11:00:01");
    }

    #[test]
    fn macs_are_deduplicated_and_bond_ports_give_their_own() {
        let t = Tree::new("bond");
        // Both ports show the bond's MAC in `address`; the second's own is its perm_hwaddr.
        t.iface("ens1f0", "aa:00:00:00:00:01", true)
            .iface("ens1f1", "aa:00:00:00:00:01", true)
            .file("sys/class/net/ens1f1/bonding_slave/perm_hwaddr", "aa:00:00:00:00:02\n")
            .iface("bond0", "aa:00:00:00:00:01", false)
            .iface("ens2", "AA:00:00:00:00:01", true);
        let id = read_hardware_identity(&t.0);
        assert_eq!(id.mac_addresses, vec!["aa:00:00:00:00:01", "aa:00:00:00:00:02"]);
    }

    #[test]
    fn bootif_wins_and_is_normalised() {
        let t = Tree::new("bootif");
        t.iface("eno1", "b4:96:91:00:00:01", true)
            .iface("eno2", "b4:96:91:00:00:02", true)
            .file("proc/cmdline", "quiet BOOTIF=01-B4-96-91-00-00-02 ip=dhcp\n");
        let id = read_hardware_identity(&t.0);
        assert_eq!(id.mac_address, "b4:96:91:00:00:02");
        assert_eq!(id.mac_addresses, vec!["b4:96:91:00:00:01", "b4:96:91:00:00:02"]);

        // One no interface reports still counts, and joins the list.
        t.file("proc/cmdline", "BOOTIF=01-0c-c4-7a-00-00-09");
        let id = read_hardware_identity(&t.0);
        assert_eq!(id.mac_address, "0c:c4:7a:00:00:09");
        assert_eq!(id.mac_addresses, vec!["0c:c4:7a:00:00:09", "b4:96:91:00:00:01", "b4:96:91:00:00:02"]);

        assert_eq!(bootif("BOOTIF=AA:BB:CC:DD:EE:FF").as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!(
            bootif("BOOTIF=01-aa-bb-cc-dd-ee-ff BOOTIF=01-11-22-33-44-55-66").as_deref(),
            Some("11:22:33:44:55:66")
        );
        for bad in [
            "",
            "BOOTIF=",
            "BOOTIF=01-00-00-00-00-00-00",
            "BOOTIF=01-aa-bb",
            "BOOTIF=01-é-bb-cc-dd-ee-f",
            "XBOOTIF=01-aa-bb-cc-dd-ee-ff",
        ] {
            assert_eq!(bootif(bad), None, "{bad}");
        }

        // An unusable BOOTIF falls back to the first interface.
        t.file("proc/cmdline", "BOOTIF=01-zz-bb-cc-dd-ee-ff");
        assert_eq!(read_hardware_identity(&t.0).mac_address, "b4:96:91:00:00:01");
    }

    #[test]
    fn empty_or_missing_root_gives_empty_identity() {
        let t = Tree::new("empty");
        assert_eq!(read_hardware_identity(&t.0), HardwareIdentity::default());
        assert_eq!(read_hardware_identity(&t.0.join("does/not/exist")), HardwareIdentity::default());
    }

    #[test]
    fn huge_and_binary_files_do_not_panic() {
        let t = Tree::new("huge");
        let big = vec![b'a'; 1 << 20];
        t.file(&format!("{DMI}/product_uuid"), &big)
            .file(&format!("{DMI}/board_serial"), [0xffu8, 0x00, 0xfe, 0x80])
            .file("proc/cmdline", &big)
            .file("sys/class/net/eth0/address", &big)
            .dir("sys/class/net/eth0/device")
            .file("sys/class/net/eth1/address", [0xc3u8, 0x28])
            .dir("sys/class/net/eth2") // no address at all
            .file("sys/class/net/stray-file", "x");
        assert_eq!(read_hardware_identity(&t.0), HardwareIdentity::default());
        // A long serial is cut at 4 KiB, not refused.
        t.file(&format!("{DMI}/board_serial"), &big);
        assert_eq!(board_serial(&t.0).map(|s| s.len()), Some(4096));
    }

    #[test]
    fn tpm_absent_is_none() {
        let t = Tree::new("notpm");
        assert_eq!(tpm_ek_hash(&t.0), None);
        assert_eq!(read_hardware_identity(&t.0).tpm_ek_hash, None);
    }

    /// A TPM2_ReadPublic response: header, TPM2B_PUBLIC `area`, then two names.
    fn response(rc: u32, area: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(area.len() as u16).to_be_bytes());
        body.extend_from_slice(area);
        for name in [&[0x00u8, 0x0b, 1, 2, 3][..], &[0x00, 0x0b, 4, 5, 6]] {
            body.extend_from_slice(&(name.len() as u16).to_be_bytes());
            body.extend_from_slice(name);
        }
        let mut r = Vec::new();
        r.extend_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
        r.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
        r.extend_from_slice(&rc.to_be_bytes());
        r.extend_from_slice(&body);
        r
    }

    #[test]
    fn parse_read_public_cases() {
        let area: Vec<u8> = (0..=255u8).cycle().take(314).collect();
        let good = response(0, &area);
        assert_eq!(parse_read_public(&good), Some(&area[..]));

        // An error code (TPM_RC_HANDLE for handle 1: no EK persisted there).
        let mut err = good[..10].to_vec();
        err[2..6].copy_from_slice(&10u32.to_be_bytes());
        err[6..10].copy_from_slice(&0x0000_018bu32.to_be_bytes());
        assert_eq!(parse_read_public(&err), None);
        assert_eq!(parse_read_public(&response(0x18b, &area)), None);

        // Truncated anywhere.
        for n in 0..good.len() {
            assert_eq!(parse_read_public(&good[..n]), None, "truncated to {n}");
        }

        // A size field larger than the buffer.
        let mut big = good.clone();
        big[2..6].copy_from_slice(&(good.len() as u32 + 1).to_be_bytes());
        assert_eq!(parse_read_public(&big), None);
        let mut huge = good.clone();
        huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_read_public(&huge), None);

        // An outPublic size past the response's end.
        let mut inner = good.clone();
        inner[10..12].copy_from_slice(&(good.len() as u16).to_be_bytes());
        assert_eq!(parse_read_public(&inner), None);

        // The wrong tag, a size under a header, an empty area.
        let mut tag = good.clone();
        tag[0..2].copy_from_slice(&0x8002u16.to_be_bytes());
        assert_eq!(parse_read_public(&tag), None);
        let mut small = good.clone();
        small[2..6].copy_from_slice(&4u32.to_be_bytes());
        assert_eq!(parse_read_public(&small), None);
        assert_eq!(parse_read_public(&response(0, &[])), None);

        // Trailing bytes beyond the declared size are ignored.
        let mut extra = good.clone();
        extra.extend_from_slice(&[0xaa; 7]);
        assert_eq!(parse_read_public(&extra), Some(&area[..]));
    }

    #[test]
    fn tpm_exchange_through_a_device_file() {
        // A regular file stands in for the device: the command overwrites its first 14 bytes,
        // and the read goes on from there.
        let t = Tree::new("tpm");
        let area = b"an EK's TPMT_PUBLIC".to_vec();
        let mut content = vec![0u8; 14];
        content.extend_from_slice(&response(0, &area));
        t.file("dev/tpmrm0", &content);
        assert_eq!(tpm_ek_hash(&t.0).as_deref(), Some(pact_proto::sha256_hex(&area).as_str()));
        let written = fs::read(t.0.join("dev/tpmrm0")).unwrap();
        assert_eq!(written[..14], [0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x73, 0x81, 0x01, 0x00, 0x01]);
        assert_eq!(read_hardware_identity(&t.0).tpm_ek_hash, tpm_ek_hash(&t.0));

        // tpm0 when there is no resource manager; an error response gives None.
        let t = Tree::new("tpm0");
        let mut content = vec![0u8; 14];
        content.extend_from_slice(&response(0x18b, &area));
        t.file("dev/tpm0", &content);
        assert_eq!(tpm_ek_hash(&t.0), None);

        // A device that cannot be opened for writing (a directory).
        let t = Tree::new("tpmdir");
        t.dir("dev/tpmrm0");
        assert_eq!(tpm_ek_hash(&t.0), None);
    }

    #[test]
    fn a_hung_exchange_is_given_up() {
        let start = Instant::now();
        let r = with_timeout(Duration::from_millis(50), || {
            thread::sleep(Duration::from_secs(5));
            Some(1)
        });
        assert_eq!(r, None);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(with_timeout(Duration::from_secs(2), || Some(7)), Some(7));
    }

    #[test]
    fn key_and_csr() {
        let k = new_key_and_csr("node-042").unwrap();
        assert!(k.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{}", k.key_pem);
        let key = rcgen::KeyPair::from_pem(&k.key_pem).unwrap();
        // from_der verifies the CSR's signature.
        let csr = rcgen::CertificateSigningRequestParams::from_der(&k.csr_der.clone().into()).unwrap();
        match csr.params.distinguished_name.get(&rcgen::DnType::CommonName) {
            Some(rcgen::DnValue::Utf8String(cn)) => assert_eq!(cn, "pact-service-agent/node-042"),
            other => panic!("CN: {other:?}"),
        }
        use rcgen::PublicKeyData;
        assert_eq!(csr.public_key.der_bytes(), key.public_key_raw());
        assert_eq!(csr.public_key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        // Each call makes a new key.
        assert_ne!(new_key_and_csr("node-042").unwrap().key_pem, k.key_pem);
        // A name that cannot be a certificate name is an error, not a panic.
        assert!(new_key_and_csr("nöde").is_err());
    }

    #[test]
    fn validity_and_renewal() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node-042".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 4, 1);
        let cert = params.self_signed(&key).unwrap();
        let (nb, na) = cert_validity(&cert.pem()).unwrap();
        assert_eq!(nb, 1_767_225_600); // 2026-01-01T00:00:00Z
        assert_eq!(na, nb + 90 * 86_400);
        assert_eq!(renew_at(nb, na), nb + 60 * 86_400);

        // The first certificate counts, after a key or before another certificate.
        let other = {
            let mut p = rcgen::CertificateParams::new(vec!["ca".to_string()]).unwrap();
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2030, 1, 1);
            p.self_signed(&key).unwrap().pem()
        };
        let bundle = format!("{}{}{}", key.serialize_pem(), cert.pem(), other);
        assert_eq!(cert_validity(&bundle), Ok((nb, na)));

        // Years from 2050 are GeneralizedTime; before, UTCTime.
        let long = {
            let mut p = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
            p.not_before = rcgen::date_time_ymd(1999, 12, 31);
            p.not_after = rcgen::date_time_ymd(2051, 3, 1);
            p.self_signed(&key).unwrap()
        };
        assert_eq!(cert_validity(&long.pem()), Ok((946_598_400, 2_561_241_600)));
        // Truncated anywhere: None, never a panic.
        let der = long.der().to_vec();
        for cut in 0..der.len() {
            assert_eq!(der_validity(&der[..cut]), None, "cut at {cut}");
        }
        assert!(cert_validity("").is_err());
        assert!(cert_validity(&key.serialize_pem()).is_err());
        assert!(cert_validity("-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
        assert!(cert_validity("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn renew_at_arithmetic() {
        assert_eq!(renew_at(0, 300), 200);
        assert_eq!(renew_at(1000, 1003), 1002);
        assert_eq!(renew_at(1000, 1001), 1000);
        assert_eq!(renew_at(1000, 1000), 1000);
        assert_eq!(renew_at(1000, 10), 1000);
        assert_eq!(renew_at(-300, 0), -100);
        let far = renew_at(i64::MIN, i64::MAX);
        assert_eq!(i128::from(far), i128::from(i64::MIN) + i128::from(u64::MAX) * 2 / 3);
        let (nb, na) = (1_767_225_600, 1_767_225_600 + 3600);
        assert_eq!(renew_at(nb, na), nb + 2400);
    }
}
