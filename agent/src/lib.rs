//! pact-agent's library: what the agent binary is built from. So far the journal client
//! (boot stream and live subscription); the agent's init, supervisor and servers arrive
//! with the agent issue.

pub mod journal_client;
