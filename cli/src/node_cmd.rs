//! `pact node assign|unassign|move`: a node's vCluster membership, recorded as journal entries
//! (NODE_ASSIGNED, NODE_UNASSIGNED, NODE_MOVED) on the node's scope. The journal checks them
//! against the current assignment and refuses what does not fit (FailedPrecondition, exit 1).
//! `pact node enroll|list|inspect|decommission` live in enroll_cmd.rs; this HELP covers both.

use crate::settings::Settings;
use crate::{spec, Failure};
use pact_proto::config::{scope::Target, ConfigEntry, EntryType, Scope};

pub const HELP: &str = "\
USAGE: pact node assign NODE --vcluster NAME
       pact node unassign NODE
       pact node move NODE --to-vcluster NAME
       pact node enroll NODE --mac MAC [--bmc-serial S] [--hardware-id HW ...]
       pact node enroll --batch FILE.csv
       pact node list [--state registered|active|inactive|revoked] [--vcluster NAME] [--unassigned]
       pact node inspect NODE
       pact node decommission NODE [--force]

assign    puts an unassigned node into vCluster NAME. --vcluster must be given on the
          command line here: the default vCluster (PACT_VCLUSTER, cli.toml) is not used,
          so a node never lands somewhere by accident.
unassign  removes the node from the vCluster it belongs to.
move      takes the node from its vCluster to NAME in one entry.

A node belongs to at most one vCluster. The journal refuses to assign a node that is
already assigned elsewhere (use move) and to move or unassign a node that is not
assigned (exit 1). Names: letters, digits, '-' and '_', starting with a letter or digit.

enroll        registers NODE by the MAC address of its boot interface (and its BMC
              serial; --hardware-id adds more fields, see `pact enroll --help`) so that it
              can obtain its certificate when it boots. Registering does not assign it.
enroll --batch
              registers every node of FILE.csv, one per line:
              node_id,mac[,bmc_serial[,hardware_id...]] (a header line, `#` comments and
              blank lines are skipped; at most 10000 nodes). The whole file is checked
              before anything is sent. Prints each node that failed and
              `enrolled N of M nodes (K failed)`; exit 1 when any failed.
list          the nodes the journal knows: NODE STATE VCLUSTER MAC LAST-SEEN; --state,
              --vcluster and --unassigned filter (--output json for scripts).
inspect       everything recorded about one node's enrollment: hardware identity,
              certificates, last seen, who enrolled (and decommissioned) it.
decommission  revokes the node's certificate; it may not enroll again. The journal refuses
              a node with active shell/exec sessions unless --force (they are terminated).";

/// What the command line gave besides the positionals.
pub struct Opts<'a> {
    /// `--vcluster` as typed on the command line (None when it would come from a default).
    pub vcluster_flag: Option<&'a str>,
    pub to_vcluster: Option<&'a str>,
}

pub fn run(args: &[String], opts: &Opts<'_>, s: &Settings) -> Result<String, Failure> {
    crate::commands::append(s, entry(args, opts)?)
}

pub(crate) fn checked_name<'a>(what: &str, v: &'a str) -> Result<&'a str, Failure> {
    if spec::is_valid_name(v) {
        Ok(v)
    } else {
        Err(Failure::usage(format!(
            "invalid {what} name {v:?}: use letters, digits, '-' and '_', starting with a letter or digit"
        )))
    }
}

/// The entry a `pact node ...` command line records; every usage error is found here, before
/// anything connects.
pub fn entry(args: &[String], opts: &Opts<'_>) -> Result<ConfigEntry, Failure> {
    let sub = args
        .first()
        .map(String::as_str)
        .ok_or_else(|| Failure::usage(format!("`pact node` needs a subcommand\n\n{HELP}")))?;
    if !matches!(sub, "assign" | "unassign" | "move") {
        return Err(Failure::usage(format!("unknown node subcommand {sub:?}\n\n{HELP}")));
    }
    let node = args.get(1).ok_or_else(|| Failure::usage(format!("`pact node {sub}` needs NODE, the node's id")))?;
    let node = checked_name("node", node)?;
    // Each subcommand takes exactly one way of naming a vCluster; any other is refused rather
    // than ignored, since ignoring it would record something other than what was typed.
    let (entry_type, target, policy_ref) = match sub {
        "assign" => {
            if opts.to_vcluster.is_some() {
                return Err(Failure::usage(
                    "`pact node assign` takes --vcluster NAME; --to-vcluster is for `pact node move`",
                ));
            }
            let vc = opts.vcluster_flag.ok_or_else(|| {
                Failure::usage(
                    "`pact node assign` needs --vcluster NAME on the command line (the default vCluster from PACT_VCLUSTER or cli.toml is not used for assignments)",
                )
            })?;
            let vc = checked_name("vCluster", vc)?;
            (EntryType::NodeAssigned, vc.to_string(), format!("assign to {vc}"))
        }
        "move" => {
            if opts.vcluster_flag.is_some() {
                return Err(Failure::usage(
                    "`pact node move` takes the destination as --to-vcluster NAME, not --vcluster (the journal knows where the node is now)",
                ));
            }
            let vc = opts
                .to_vcluster
                .ok_or_else(|| Failure::usage("`pact node move` needs --to-vcluster NAME, the destination"))?;
            let vc = checked_name("vCluster", vc)?;
            (EntryType::NodeMoved, vc.to_string(), format!("move to {vc}"))
        }
        _ => {
            if opts.vcluster_flag.is_some() || opts.to_vcluster.is_some() {
                return Err(Failure::usage(
                    "`pact node unassign` takes no vCluster: the journal knows which one the node belongs to",
                ));
            }
            (EntryType::NodeUnassigned, String::new(), "unassign".to_string())
        }
    };
    Ok(ConfigEntry {
        entry_type: entry_type as i32,
        scope: Some(Scope { target: Some(Target::NodeId(node.to_string())) }),
        target_vcluster: target,
        policy_ref,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn opts<'a>(vcluster_flag: Option<&'a str>, to_vcluster: Option<&'a str>) -> Opts<'a> {
        Opts { vcluster_flag, to_vcluster }
    }

    fn refused(a: &[&str], o: Opts<'_>) -> String {
        let f = entry(&args(a), &o).expect_err("should be refused");
        assert_eq!(f.code, crate::EXIT_ERROR);
        f.message
    }

    #[test]
    fn the_three_entries() {
        let e = entry(&args(&["assign", "n1"]), &opts(Some("ml"), None)).unwrap();
        assert_eq!(e.entry_type, EntryType::NodeAssigned as i32);
        assert_eq!(e.scope, Some(Scope { target: Some(Target::NodeId("n1".into())) }));
        assert_eq!((e.target_vcluster.as_str(), e.policy_ref.as_str()), ("ml", "assign to ml"));

        let e = entry(&args(&["move", "n1"]), &opts(None, Some("inference"))).unwrap();
        assert_eq!(e.entry_type, EntryType::NodeMoved as i32);
        assert_eq!((e.target_vcluster.as_str(), e.policy_ref.as_str()), ("inference", "move to inference"));

        let e = entry(&args(&["unassign", "n1"]), &opts(None, None)).unwrap();
        assert_eq!(e.entry_type, EntryType::NodeUnassigned as i32);
        assert_eq!((e.target_vcluster.as_str(), e.policy_ref.as_str()), ("", "unassign"));
        assert_eq!(e.scope, Some(Scope { target: Some(Target::NodeId("n1".into())) }));
    }

    #[test]
    fn argument_errors_say_what_is_wrong() {
        assert!(refused(&[], opts(None, None)).starts_with("`pact node` needs a subcommand"));
        assert!(refused(&["add", "n1"], opts(None, None)).starts_with("unknown node subcommand \"add\""));
        assert_eq!(refused(&["assign"], opts(Some("ml"), None)), "`pact node assign` needs NODE, the node's id");
        // No vCluster on the command line: the default is not good enough for an assignment.
        let m = refused(&["assign", "n1"], opts(None, None));
        assert!(m.contains("needs --vcluster NAME on the command line"), "{m}");
        assert!(m.contains("default vCluster"), "{m}");
        let m = refused(&["assign", "n1"], opts(Some("ml"), Some("ml")));
        assert!(m.contains("--to-vcluster is for `pact node move`"), "{m}");
        let m = refused(&["move", "n1"], opts(None, None));
        assert_eq!(m, "`pact node move` needs --to-vcluster NAME, the destination");
        let m = refused(&["move", "n1"], opts(Some("ml"), Some("x")));
        assert!(m.contains("not --vcluster"), "{m}");
        let m = refused(&["unassign", "n1"], opts(Some("ml"), None));
        assert!(m.starts_with("`pact node unassign` takes no vCluster"), "{m}");
        assert!(refused(&["unassign", "n1"], opts(None, Some("ml"))).starts_with("`pact node unassign` takes no"));
        let m = refused(&["assign", "n 1"], opts(Some("ml"), None));
        assert!(m.starts_with("invalid node name \"n 1\""), "{m}");
        let m = refused(&["assign", "n1"], opts(Some("ml/x"), None));
        assert!(m.starts_with("invalid vCluster name \"ml/x\""), "{m}");
        let m = refused(&["move", "n1"], opts(None, Some("")));
        assert!(m.starts_with("invalid vCluster name \"\""), "{m}");
    }
}
