//! Enrollment and mutual TLS against a real journal over real TLS (attack rows 15-19):
//! an admin registers a node's hardware; a node with the wrong hardware is refused (16); the
//! right one gets a certificate for its own key and uses it, without a token, on the client
//! port, for its own node only; the same CSR sent again is refused (15); renewal over mutual
//! TLS keeps the previous certificate valid until the next one; decommissioning refuses the
//! node's certificate at once, on an open connection and on new ones (17), and the Raft port
//! refuses it as well as a peer with no certificate at all (18); plaintext on either TLS port
//! gets nothing (19); a journal restart retires its enrollment CA, so the old certificate is
//! refused with a reason and the node enrolls again. Every refusal is on the record.

mod common;

use common::Journal;
use pact_agent::identity;
use pact_proto::auth::{HmacVerifier, DEV_ISSUER};
use pact_proto::client::{CallError, Client};
use pact_proto::config::{ConfigState, EntryType};
use pact_proto::enrollment::{
    DecommissionNodeRequest, DecommissionNodeResponse, EnrollRequest, EnrollResponse, EnrollmentState,
    HardwareIdentity, InspectNodeRequest, ListNodesRequest, ListNodesResponse, NodeEnrollment, RegisterNodeRequest,
    RegisterNodeResponse, RenewCertRequest, RenewCertResponse,
};
use pact_proto::journal::{ListEntriesRequest, SetNodeStateRequest, SetNodeStateResponse};
use pact_proto::Method;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAC: &str = "52:54:00:12:34:56";
const UUID: &str = "4c4c4544-0042-3510-8052-b2c04f4e3232";

fn client_as(j: &Journal, subject: &str, role: &str) -> Client {
    let token = HmacVerifier::new(&j.hmac_secret(), DEV_ISSUER, "pact").mint(subject, role, 600).unwrap();
    Client::connect(&j.endpoint(), j.tls(), &token, Duration::from_secs(10)).unwrap()
}

fn hw(mac: &str, uuid: &str) -> HardwareIdentity {
    HardwareIdentity { mac_address: mac.into(), smbios_uuid: Some(uuid.into()), ..Default::default() }
}

fn register(c: &mut Client, node: &str, h: HardwareIdentity) -> Result<RegisterNodeResponse, CallError> {
    c.call(Method::RegisterNode, &RegisterNodeRequest { node_id: node.into(), hardware_identity: Some(h) })
}

/// An enrollment as an agent makes it: no token, server-authenticated TLS only.
fn enroll(j: &Journal, h: HardwareIdentity, csr: &[u8]) -> Result<EnrollResponse, CallError> {
    let mut c = Client::connect(&j.endpoint(), j.tls(), "", Duration::from_secs(10))?;
    c.call(Method::Enroll, &EnrollRequest { hardware_identity: Some(h), csr: csr.to_vec(), node_id: String::new() })
}

/// A node's key and certificate chain on disk (what the agent keeps).
struct NodeCert {
    cert: PathBuf,
    key: PathBuf,
}

fn save(dir: &Path, name: &str, key_pem: &str, chain_pem: &str) -> NodeCert {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, chain_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    NodeCert { cert, key }
}

fn mtls(j: &Journal, c: &NodeCert) -> Result<Client, CallError> {
    let tls = pact_proto::tls::mtls_client_config(&c.cert, &c.key, &j.ca()).unwrap();
    Client::connect(&j.endpoint(), tls, "", Duration::from_secs(10))
}

fn set_state(c: &mut Client, node: &str) -> Result<SetNodeStateResponse, CallError> {
    c.call(
        Method::SetNodeState,
        &SetNodeStateRequest { node_id: node.into(), state: ConfigState::Committed as i32, author: None },
    )
}

fn refused<T: std::fmt::Debug>(r: Result<T, CallError>, want: &str) -> String {
    match r {
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains(want), "{m:?} should say {want:?}");
            m
        }
        Ok(v) => panic!("accepted ({v:?}); expected a refusal saying {want:?}"),
    }
}

fn record_of(admin: &mut Client, node: &str) -> NodeEnrollment {
    admin.call(Method::InspectNode, &InspectNodeRequest { node_id: node.into() }).expect("inspect")
}

/// TLS to the Raft port with `cert` (or none), the pact hello, then a RaftHello claiming to
/// be journal 1. Ok when the journal kept listening; Err with what ended the link.
fn raft_port_accepts(j: &Journal, cert: Option<&NodeCert>) -> Result<(), String> {
    let tls = match cert {
        Some(c) => pact_proto::tls::mtls_client_config(&c.cert, &c.key, &j.ca()).unwrap(),
        None => pact_proto::tls::client_config(&j.ca()).unwrap(),
    };
    let name = rustls::pki_types::ServerName::try_from("journal-1.raft.pact").unwrap();
    let conn = rustls::ClientConnection::new(tls, name).map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", j.raft_port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(&pact_proto::frame::client_hello()).map_err(|e| e.to_string())?;
    s.flush().map_err(|e| e.to_string())?;
    let mut answer = [0u8; pact_proto::frame::HANDSHAKE_LEN];
    s.read_exact(&mut answer).map_err(|e| format!("hello: {e}"))?;
    let me = pact_proto::journal::Member { id: 1, ..Default::default() };
    let f = pact_proto::frame::Frame::new(
        pact_proto::frame::FrameKind::Request,
        Method::RaftHello as u16,
        1,
        prost::Message::encode_to_vec(&me),
    );
    s.write_all(&f.encode().unwrap()).map_err(|e| e.to_string())?;
    s.flush().map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(()),
        Ok(0) => Err("closed".into()),
        other => Err(format!("{other:?}")),
    }
}

/// Plaintext (a pact hello, no TLS) to `port`: whatever comes back must not be a pact answer
/// (a TLS alert or a closed connection).
fn plaintext_gets_nothing(port: u16) {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(&pact_proto::frame::client_hello()).unwrap();
    let mut buf = [0u8; 64];
    let n = tcp.read(&mut buf).unwrap_or(0);
    // A TLS alert record starts with content type 21; anything else would be a pact answer.
    assert!(n == 0 || buf[0] == 21, "port {port} answered plaintext with {:?}", &buf[..n]);
}

#[test]
fn enrollment_mutual_tls_revocation_and_ca_rotation() {
    let mut j = Journal::start("enrollment");
    let dir = j.dir.join("node");
    std::fs::create_dir_all(&dir).unwrap();
    let mut admin = client_as(&j, "alice", "pact-platform-admin");

    // Only a platform admin registers; a conflicting MAC is refused.
    let mut ops = client_as(&j, "bob", "pact-ops-ml");
    refused(register(&mut ops, "n1", hw(MAC, UUID)), "pact-platform-admin");
    let r = register(&mut admin, "n1", hw(MAC, UUID)).expect("register n1");
    assert_eq!(r.enrollment_state, EnrollmentState::Registered as i32);
    register(&mut admin, "n1", hw(MAC, UUID)).expect("the same registration again is a no-op");
    refused(register(&mut admin, "n2", hw(MAC, "other")), "already registered to node n1");

    // Row 16: the right MAC with another SMBIOS UUID.
    let k1 = identity::new_key_and_csr("n1").unwrap();
    let m = refused(enroll(&j, hw(MAC, "00000000-1111-2222-3333-444444444444"), &k1.csr_der), "hardware mismatch");
    assert!(m.contains("SMBIOS UUID"), "{m}");
    // Found by its UUID, but the registered MAC is not among its interfaces.
    let m = refused(enroll(&j, hw("52:54:00:99:99:99", UUID), &k1.csr_der), "hardware mismatch");
    assert!(m.contains("MAC"), "{m}");
    refused(
        enroll(&j, hw("52:54:00:99:99:99", "00000000-9999-2222-3333-444444444444"), &k1.csr_der),
        "no node is registered",
    );

    // The right hardware: a certificate for the node's own key, from the enrollment CA.
    let mut presented = hw("", UUID);
    presented.mac_addresses = vec!["52:54:00:00:00:01".into(), MAC.to_uppercase()];
    let e1 = enroll(&j, presented.clone(), &k1.csr_der).expect("enroll");
    assert_eq!(e1.node_id, "n1");
    assert!(e1.signed_cert_pem.matches("BEGIN CERTIFICATE").count() == 2, "certificate and its CA");
    assert_eq!(e1.ca_chain_pem, std::fs::read_to_string(j.ca()).unwrap(), "the cluster CA is served");
    let (before, after) = identity::cert_validity(&e1.signed_cert_pem).unwrap();
    assert!((after - before - 259_200 - 300).abs() <= 5, "3 days (+5 min back-dating): {}", after - before);
    let c1 = save(&dir, "c1", &k1.key_pem, &e1.signed_cert_pem);

    // Row 15: the same CSR again.
    refused(enroll(&j, presented.clone(), &k1.csr_der), "replayed CSR");

    // The certificate alone authenticates the agent, for its own node only.
    let mut agent = mtls(&j, &c1).expect("mutual TLS with the enrolled certificate");
    set_state(&mut agent, "n1").expect("an agent records its own node's state");
    refused(set_state(&mut agent, "n2"), "its own node");

    // Renewal over mutual TLS: a new key; the renewed-from certificate stays valid until the
    // next renewal, then it is refused.
    let k2 = identity::new_key_and_csr("n1").unwrap();
    let r2: RenewCertResponse = agent
        .call(Method::RenewCert, &RenewCertRequest { current_cert_serial: String::new(), csr: k2.csr_der.clone() })
        .expect("renew");
    assert_ne!(r2.cert_serial, e1.cert_serial);
    let c2 = save(&dir, "c2", &k2.key_pem, &r2.signed_cert_pem);
    set_state(&mut agent, "n1").expect("the previous certificate still works");
    let mut agent2 = mtls(&j, &c2).unwrap();
    let k3 = identity::new_key_and_csr("n1").unwrap();
    let _r3: RenewCertResponse = agent2
        .call(Method::RenewCert, &RenewCertRequest { current_cert_serial: String::new(), csr: k3.csr_der })
        .expect("renew again");
    refused(set_state(&mut agent, "n1"), "is not one the journal accepts");
    // A token-authenticated caller cannot renew: RenewCert is for certificates.
    refused(
        admin.call::<_, RenewCertResponse>(
            Method::RenewCert,
            &RenewCertRequest { current_cert_serial: String::new(), csr: k2.csr_der },
        ),
        "current certificate",
    );
    let rec = record_of(&mut admin, "n1");
    assert_eq!(rec.enrollment_state, EnrollmentState::Active as i32);
    assert_eq!(rec.cert_serials.len(), 2);

    // Rows 18 and 19 on the Raft port, and 19 on the client port.
    raft_port_accepts(&j, None).expect_err("a peer without a certificate");
    raft_port_accepts(&j, Some(&c2)).expect_err("an agent certificate is no journal's");
    // The control: the journal's own certificate is accepted there.
    let own = NodeCert { cert: j.data_dir().join("tls/server.crt"), key: j.data_dir().join("tls/server.key") };
    raft_port_accepts(&j, Some(&own)).expect("a journal's own certificate");
    plaintext_gets_nothing(j.raft_port);
    plaintext_gets_nothing(j.port);

    // Row 17: decommissioning refuses the certificate on the open connection and on new ones.
    set_state(&mut agent2, "n1").expect("before decommissioning");
    let d: DecommissionNodeResponse = admin
        .call(Method::DecommissionNode, &DecommissionNodeRequest { node_id: "n1".into(), force: false })
        .expect("decommission");
    assert_eq!(d.enrollment_state, EnrollmentState::Revoked as i32);
    refused(set_state(&mut agent2, "n1"), "decommissioned");
    let mut fresh = mtls(&j, &c2).expect("TLS still completes: the refusal is pact's, with its reason");
    refused(set_state(&mut fresh, "n1"), "decommissioned");
    let k4 = identity::new_key_and_csr("n1").unwrap();
    refused(enroll(&j, presented.clone(), &k4.csr_der), "no node is registered");

    // Registered again (a replaced board): enrolls; the old certificates stay refused.
    register(&mut admin, "n1", hw(MAC, UUID)).expect("register again after decommissioning");
    let e5 = enroll(&j, presented.clone(), &k4.csr_der).expect("enroll after re-registration");
    refused(set_state(&mut fresh, "n1"), "is not one the journal accepts");
    let c5 = save(&dir, "c5", &k4.key_pem, &e5.signed_cert_pem);
    set_state(&mut mtls(&j, &c5).unwrap(), "n1").expect("the new certificate works");

    // A journal restart retires its enrollment CA: the certificate is refused with the
    // reason, and the node enrolls again.
    j.terminate();
    j.spawn();
    let mut admin = client_as(&j, "alice", "pact-platform-admin");
    let m = refused(set_state(&mut mtls(&j, &c5).unwrap(), "n1"), "enroll again");
    assert!(m.contains("no journal uses any more"), "{m}");
    let k6 = identity::new_key_and_csr("n1").unwrap();
    let e6 = enroll(&j, presented, &k6.csr_der).expect("re-enroll after the CA changed");
    let c6 = save(&dir, "c6", &k6.key_pem, &e6.signed_cert_pem);
    set_state(&mut mtls(&j, &c6).unwrap(), "n1").expect("the re-enrolled certificate works");
    // The old certificate with the current CA put second in its chain (the retired one third,
    // so TLS still finds a path): the journal checks which CA signed it, and refuses.
    let pems = |text: &str| -> Vec<String> {
        text.split_inclusive("-----END CERTIFICATE-----\n").map(str::to_string).collect()
    };
    let (old, new) = (pems(&e5.signed_cert_pem), pems(&e6.signed_cert_pem));
    let stuffed = save(&dir, "stuffed", &k4.key_pem, &format!("{}{}{}", old[0], new[1], old[1]));
    let m = refused(set_state(&mut mtls(&j, &stuffed).unwrap(), "n1"), "no journal uses any more");
    assert!(m.contains(&e5.cert_serial), "{m}");

    // Listing, and the record: every refusal above and each signing is an entry.
    let l: ListNodesResponse = admin.call(Method::ListNodes, &ListNodesRequest::default()).expect("list");
    assert_eq!(l.nodes.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), vec!["n1"]);
    let viewer_sees: ListNodesResponse =
        client_as(&j, "carol", "pact-viewer-ml").call(Method::ListNodes, &ListNodesRequest::default()).unwrap();
    assert!(viewer_sees.nodes.is_empty(), "n1 is in no vCluster a viewer of ml may read");
    let entries: Vec<pact_proto::config::ConfigEntry> = admin
        .call_stream(
            Method::ListEntries,
            &ListEntriesRequest { limit: 10_000, oldest_first: true, ..Default::default() },
        )
        .unwrap();
    let count = |t: EntryType| entries.iter().filter(|e| e.entry_type == t as i32).count();
    assert_eq!(count(EntryType::NodeEnrolled), 2);
    assert_eq!(count(EntryType::NodeDecommissioned), 1);
    assert_eq!(count(EntryType::CertSigned), 5, "enroll, 2 renewals, 2 re-enrollments");
    let text: String = entries.iter().map(|e| format!("{}\n", e.policy_ref)).collect();
    for want in ["hardware mismatch", "replayed CSR", "decommissioned", "no journal uses any more"] {
        assert!(text.contains(want), "no record saying {want:?} in:\n{text}");
    }
    // Clients cannot forge enrollment entries.
    let forged = pact_proto::config::ConfigEntry {
        entry_type: EntryType::CertSigned as i32,
        scope: Some(pact_proto::config::Scope { target: Some(pact_proto::config::scope::Target::NodeId("n1".into())) }),
        ..Default::default()
    };
    refused(
        admin.call::<_, pact_proto::journal::AppendEntryResponse>(
            Method::AppendEntry,
            &pact_proto::journal::AppendEntryRequest { entry: Some(forged) },
        ),
        "enrollment methods",
    );
}

/// `images/deploy/setup-ca.sh` (Step 1 of the guide) lays out the cluster CA and the agents'
/// `ca.crt`; a journal configured with that CA (`[journal.enrollment] ca_cert`/`ca_key`)
/// certifies its enrollment CA with it, and a node it enrolls authenticates by certificate.
#[test]
fn a_cluster_ca_from_setup_ca_sh_enrolls_nodes() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "openssl is missing (CI installs it)");
        println!("skipped: no openssl (setup-ca.sh needs it)");
        return;
    }
    let d = common::temp_dir("setup-ca");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/deploy/setup-ca.sh");
    let out = std::process::Command::new(&script)
        .arg(d.join("certs"))
        .arg("mgmt-1")
        .env("PACT_CA_DIR", d.join("ca"))
        .env("PACT_ETC", d.join("etc"))
        .output()
        .unwrap();
    assert!(out.status.success(), "setup-ca.sh: {}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(d.join("ca/ca.key")), 0o600);
    assert_eq!(mode(d.join("ca/ca.crt")), 0o644);
    assert_eq!(std::fs::read(d.join("etc/ca.crt")).unwrap(), std::fs::read(d.join("ca/ca.crt")).unwrap());
    assert!(d.join("certs/mgmt-1.crt").is_file() && mode(d.join("certs/mgmt-1.key")) == 0o600);
    let toml = d.join("journal.toml");
    std::fs::write(
        &toml,
        format!(
            "[journal.enrollment]\nca_cert = \"{}\"\nca_key = \"{}\"\n",
            d.join("ca/ca.crt").display(),
            d.join("ca/ca.key").display()
        ),
    )
    .unwrap();
    let j = Journal::start_with("enroll-setup-ca", &["--config", toml.to_str().unwrap()]);
    assert_eq!(std::fs::read(j.ca()).unwrap(), std::fs::read(d.join("ca/ca.crt")).unwrap(), "the cluster CA");
    let mut admin = client_as(&j, "alice", "pact-platform-admin");
    register(&mut admin, "n7", hw("52:54:00:77:77:77", UUID)).expect("register");
    let k = identity::new_key_and_csr("n7").unwrap();
    let e = enroll(&j, hw("52:54:00:77:77:77", UUID), &k.csr_der).expect("enroll under the setup-ca.sh CA");
    assert_eq!(e.ca_chain_pem, std::fs::read_to_string(d.join("ca/ca.crt")).unwrap());
    let c = save(&d, "n7", &k.key_pem, &e.signed_cert_pem);
    // Verified against the agents' copy of the CA, as a node would.
    let tls = pact_proto::tls::mtls_client_config(&c.cert, &c.key, &d.join("etc/ca.crt")).unwrap();
    let mut agent = Client::connect(&j.endpoint(), tls, "", Duration::from_secs(10)).unwrap();
    set_state(&mut agent, "n7").expect("the certificate authenticates the node");
}

/// Bad input on the one unauthenticated method: bodies that are not an EnrollRequest, CSRs
/// with random bytes changed, an oversized CSR, no hardware identity. Every answer is a clear
/// refusal (never Internal, never a certificate), and the journal keeps serving. The rate
/// limit is raised so that the parsing, not the limiter, answers.
#[test]
fn mangled_enrollment_requests_are_refused() {
    let d = common::temp_dir("enroll-fuzz");
    let toml = d.join("journal.toml");
    std::fs::write(&toml, "[journal.enrollment]\nrate_limit_per_minute = 6000000\n").unwrap();
    let j = Journal::start_with("enroll-fuzz", &["--config", toml.to_str().unwrap()]);
    let mut admin = client_as(&j, "alice", "pact-platform-admin");
    register(&mut admin, "f1", hw(MAC, UUID)).unwrap();
    let k = identity::new_key_and_csr("f1").unwrap();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut c = Client::connect(&j.endpoint(), j.tls(), "", Duration::from_secs(10)).unwrap();
    let mut codes = std::collections::BTreeMap::new();
    let mut signed: Option<EnrollResponse> = None;
    for i in 0..400 {
        let mut csr = k.csr_der.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % csr.len();
            csr[at] ^= 1 << (next() % 8);
        }
        if i % 50 == 0 {
            csr.truncate((next() as usize) % csr.len());
        }
        let req = EnrollRequest { hardware_identity: Some(hw(MAC, UUID)), csr, node_id: String::new() };
        match c.call::<_, EnrollResponse>(Method::Enroll, &req) {
            Err(CallError::Remote(e)) => *codes.entry(format!("{:?}", e.code)).or_insert(0) += 1,
            Err(e) => panic!("mangled CSR {i}: {e}"),
            // DER has bytes no signature covers (a BIT STRING's unused-bits count, say): a
            // change there leaves the same signed request for the same key, which may be
            // signed once; the same key again is then a replay.
            Ok(r) => {
                assert!(signed.is_none(), "a second certificate ({}) for one key", r.cert_serial);
                signed = Some(r);
            }
        }
    }
    let kinds: Vec<String> = codes.keys().cloned().collect();
    assert!(kinds.iter().all(|k| k == "InvalidArgument" || k == "PermissionDenied"), "{codes:?}");
    assert!(codes.get("InvalidArgument").copied().unwrap_or(0) > 300, "{codes:?}");
    if let Some(r) = &signed {
        // Certified for the node's own key: usable with it.
        let cert = save(&d, "mangled", &k.key_pem, &r.signed_cert_pem);
        set_state(&mut mtls(&j, &cert).unwrap(), "f1").expect("the certificate is for the node's own key");
        // The same key again, in its untouched CSR: a replay.
        refused(enroll(&j, hw(MAC, UUID), &k.csr_der), "replayed CSR");
    }
    // Raw bodies that are not an EnrollRequest at all.
    for n in [1usize, 7, 64, 1000] {
        let body: Vec<u8> = (0..n).map(|_| next() as u8).collect();
        match c.call_raw(Method::Enroll, body) {
            Err(CallError::Remote(e)) => assert!(
                matches!(e.code, pact_proto::ErrorCode::InvalidArgument | pact_proto::ErrorCode::NotFound),
                "{n} random bytes: {e:?}"
            ),
            other => panic!("{n} random bytes: {other:?}"),
        }
    }
    let big =
        EnrollRequest { hardware_identity: Some(hw(MAC, UUID)), csr: vec![0x30; 64 * 1024], node_id: String::new() };
    refused(c.call::<_, EnrollResponse>(Method::Enroll, &big), "at most 8192");
    let none = EnrollRequest { hardware_identity: None, csr: k.csr_der.clone(), node_id: String::new() };
    refused(c.call::<_, EnrollResponse>(Method::Enroll, &none), "hardware_identity is missing");
    // Still serving: a new key enrolls.
    let fresh = identity::new_key_and_csr("f1").unwrap();
    let e = enroll(&j, hw(MAC, UUID), &fresh.csr_der).expect("a fresh CSR enrolls");
    assert_eq!(e.node_id, "f1");
}
