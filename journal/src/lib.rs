//! pact-journal as a library: the binary (`main.rs`) wires these together; the deterministic
//! simulation and the tests use them directly. See ARCHITECTURE.md for the codemap.

pub mod approval;
pub mod audit;
pub mod authz;
pub mod boot;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod declared;
pub mod dev;
pub mod enroll;
pub mod enroll_rpc;
pub mod http;
pub mod log;
pub mod net;
pub mod peer;
pub mod pki;
pub mod policy;
pub mod raft_driver;
pub mod raft_log;
pub mod replica;
pub mod rpc;
pub mod server;
pub mod shard;
pub mod shared;
pub mod sim;
pub mod state;
pub mod store;
pub mod sys;
pub mod wal;
