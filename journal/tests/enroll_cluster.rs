//! Enrollment on a quorum: every journal holds an enrollment CA of its own, certified by the
//! cluster CA and published through raft, so a certificate one journal signs is accepted by
//! all of them; restarting that journal retires its CA everywhere (its certificates are then
//! refused on every journal, with the reason), while certificates another journal signed stay
//! good, and the node enrolls again anywhere.

mod cluster;

use cluster::{wait_for, Cluster, Opts};
use pact_proto::client::{CallError, Client};
use pact_proto::config::ConfigState;
use pact_proto::enrollment::{
    EnrollRequest, EnrollResponse, HardwareIdentity, RegisterNodeRequest, RegisterNodeResponse,
};
use pact_proto::journal::{SetNodeStateRequest, SetNodeStateResponse};
use pact_proto::Method;
use std::path::PathBuf;
use std::time::Duration;

const MAC: &str = "52:54:00:ab:cd:01";

fn hw() -> HardwareIdentity {
    HardwareIdentity { mac_address: MAC.into(), ..Default::default() }
}

/// Enrolls through journal `id` (retried while it has not published its CA or not yet
/// applied the registration); the certificate's files.
fn enroll_via(c: &Cluster, id: u64, name: &str) -> (PathBuf, PathBuf) {
    let k = pact_agent::identity::new_key_and_csr("n1").unwrap();
    let r: EnrollResponse = wait_for(&format!("an enrollment through journal {id}"), Duration::from_secs(20), || {
        let mut cl = Client::connect(&c.nodes[&id].endpoint(), c.tls.clone(), "", Duration::from_secs(5)).ok()?;
        let req = EnrollRequest { hardware_identity: Some(hw()), csr: k.csr_der.clone(), node_id: "n1".into() };
        match cl.call(Method::Enroll, &req) {
            Ok(r) => Some(r),
            Err(e) => {
                c.say(&format!("enroll via {id}: {e}"));
                std::thread::sleep(Duration::from_millis(200));
                None
            }
        }
    });
    let (cert, key) = (c.dir.join(format!("{name}.crt")), c.dir.join(format!("{name}.key")));
    std::fs::write(&cert, r.signed_cert_pem).unwrap();
    std::fs::write(&key, k.key_pem).unwrap();
    (cert, key)
}

/// The node's own state written through journal `id` with the certificate alone.
fn use_cert(c: &Cluster, id: u64, files: &(PathBuf, PathBuf)) -> Result<SetNodeStateResponse, CallError> {
    let tls = pact_proto::tls::mtls_client_config(&files.0, &files.1, &c.ca_cert).unwrap();
    let mut cl = Client::connect(&c.nodes[&id].endpoint(), tls, "", Duration::from_secs(5))?;
    cl.call(
        Method::SetNodeState,
        &SetNodeStateRequest { node_id: "n1".into(), state: ConfigState::Committed as i32, author: None },
    )
}

#[test]
fn a_certificate_from_one_journal_is_good_on_all_until_that_journal_restarts() {
    let mut c = Cluster::start("enroll", 3, Opts::default());
    let r: RegisterNodeResponse = c
        .client(c.leader().unwrap())
        .unwrap()
        .call(Method::RegisterNode, &RegisterNodeRequest { node_id: "n1".into(), hardware_identity: Some(hw()) })
        .expect("register");
    assert_eq!(r.node_id, "n1");

    let from2 = enroll_via(&c, 2, "from2");
    for id in [1, 2, 3] {
        wait_for(&format!("journal {id} to accept journal 2's certificate"), Duration::from_secs(10), || {
            use_cert(&c, id, &from2).ok()
        });
    }
    let from3 = enroll_via(&c, 3, "from3");

    // Journal 2 restarts: a new enrollment CA replaces the one that signed `from2`, everywhere.
    c.terminate(2);
    c.start_node(2);
    for id in [1, 2, 3] {
        let why =
            wait_for(&format!("journal {id} to refuse journal 2's old certificate"), Duration::from_secs(20), || {
                match use_cert(&c, id, &from2) {
                    Err(e) if e.to_string().contains("no journal uses any more") => Some(e.to_string()),
                    _ => {
                        std::thread::sleep(Duration::from_millis(200));
                        None
                    }
                }
            });
        assert!(why.contains("client certificate refused"), "{why}");
    }
    // Journal 3's certificate is the node's newest: still good, on the restarted journal too.
    for id in [1, 2, 3] {
        wait_for(&format!("journal {id} to accept journal 3's certificate"), Duration::from_secs(10), || {
            use_cert(&c, id, &from3).ok()
        });
    }
    // And the restarted journal signs again.
    let again = enroll_via(&c, 2, "again");
    for id in [1, 2, 3] {
        wait_for(&format!("journal {id} to accept the new certificate"), Duration::from_secs(10), || {
            use_cert(&c, id, &again).ok()
        });
    }
}
