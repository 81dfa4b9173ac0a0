//! RPC method ids. Stable: a number, once shipped, keeps its meaning forever.
//! Ranges: 1-19 config/log service, 20-39 boot streaming, 40-59 policy, 60-79 enrollment,
//! 80-99 agent shell/exec (port 9445), 100+ journal peer port (9444).

macro_rules! methods {
    ($($name:ident = $id:literal, $streaming:literal, $doc:literal;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Method {
            $(#[doc = $doc] $name = $id,)*
        }

        impl Method {
            pub const ALL: &'static [Method] = &[$(Method::$name,)*];

            pub fn from_u16(v: u16) -> Option<Method> {
                match v {
                    $($id => Some(Method::$name),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(Method::$name => stringify!($name),)*
                }
            }

            /// Whether the answer is a stream of StreamItem frames ended by EndOfStream.
            pub fn is_streaming(self) -> bool {
                match self {
                    $(Method::$name => $streaming,)*
                }
            }
        }
    };
}

methods! {
    AppendEntry = 1, false, "Append a ConfigEntry; answers AppendEntryResponse.";
    GetEntry = 2, false, "One entry by sequence.";
    ListEntries = 3, true, "Entries filtered by scope and sequence range, streamed.";
    GetNodeState = 4, false, "A node's recorded config state.";
    SetNodeState = 5, false, "Record a node's config state (through Raft).";
    GetOverlay = 6, false, "A vCluster's overlay record.";
    JournalStatus = 7, false, "This replica's Raft role, term and indexes.";
    ChangeMembership = 8, false, "Add or remove a voter or learner, promote a learner.";
    StreamBootConfig = 20, true, "Boot config: overlay chunks, node delta, completion.";
    SubscribeConfigUpdates = 21, true, "Live config updates for one node.";
    Evaluate = 40, false, "Policy evaluation.";
    GetEffectivePolicy = 41, false, "A vCluster's policy.";
    UpdatePolicy = 42, false, "Set a vCluster's policy.";
    ListPendingApprovals = 43, false, "Two-person approvals.";
    DecideApproval = 44, false, "Approve or reject a pending request.";
    Enroll = 60, false, "Agent enrollment with a CSR.";
    RegisterNode = 61, false, "Admin: enroll a node's hardware identity.";
    BatchRegisterNodes = 62, false, "Admin: enroll many nodes.";
    DecommissionNode = 63, false, "Admin: revoke a node.";
    AssignNode = 64, false, "Assign a node to a vCluster.";
    UnassignNode = 65, false, "Remove a node's vCluster assignment.";
    MoveNode = 66, false, "Move a node between vClusters.";
    RenewCert = 67, false, "Agent certificate renewal.";
    ListNodes = 68, false, "Enrolled nodes.";
    InspectNode = 69, false, "One node's enrollment record.";
    Exec = 80, true, "Agent: run a whitelisted command.";
    Shell = 81, true, "Agent: interactive shell (bidirectional).";
    ListCommands = 82, false, "Agent: the exec whitelist.";
    ExtendCommitWindow = 83, false, "Agent: extend the open commit window.";
    CollectDiag = 84, true, "Agent: logs and diagnostics.";
    ServiceControl = 85, false, "Agent: start/stop/restart/status of services.";
    Power = 86, false, "Agent: reboot or power off the node.";
    RaftMessage = 100, false, "Journal peers: one raft-rs message.";
    RaftHello = 101, false, "Journal peers: the dialer's id and Raft address (a pact.journal.Member), first on a link.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for m in Method::ALL {
            assert!(seen.insert(*m as u16), "duplicate id {}", *m as u16);
            assert_eq!(Method::from_u16(*m as u16), Some(*m));
        }
        assert_eq!(Method::from_u16(0), None);
        assert_eq!(Method::from_u16(9999), None);
    }
}
