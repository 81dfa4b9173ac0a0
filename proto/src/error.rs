//! Error codes carried in Error frames, and the CLI exit code each one maps to.

use std::fmt;

macro_rules! codes {
    ($($name:ident = $id:literal => $exit:literal, $doc:literal;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum ErrorCode {
            $(#[doc = $doc] $name = $id,)*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// Unknown numbers (from a newer peer) read as Internal.
            pub fn from_u32(v: u32) -> ErrorCode {
                match v {
                    $($id => ErrorCode::$name,)*
                    _ => ErrorCode::Internal,
                }
            }

            /// The CLI's exit code for this error (DESIGN.md §8: 0 ok, 1 error, 2 auth,
            /// 3 policy rejection, 4 conflict, 5 journal unreachable/timeout,
            /// 6 not whitelisted, 10 rollback blocked).
            pub fn cli_exit_code(self) -> u8 {
                match self {
                    $(ErrorCode::$name => $exit,)*
                }
            }
        }
    };
}

codes! {
    InvalidArgument = 1 => 1, "The request was well-formed on the wire but its content is wrong.";
    Unauthenticated = 2 => 2, "No token, or a token that failed verification.";
    PermissionDenied = 3 => 2, "A verified caller whose role does not allow this.";
    NotFound = 4 => 1, "The thing asked for does not exist.";
    FailedPrecondition = 5 => 1, "The journal's state does not allow this (e.g. a parent that is not an earlier entry).";
    Conflict = 6 => 4, "Concurrent modification.";
    Unavailable = 7 => 5, "No leader, no quorum, or shutting down.";
    Timeout = 8 => 5, "The operation did not finish in time.";
    Busy = 9 => 5, "Over a concurrency cap; retry after retry_after_ms.";
    Internal = 10 => 1, "A bug or an I/O failure on the server.";
    Unimplemented = 11 => 1, "A known method this server does not serve.";
    NotWhitelisted = 12 => 6, "The command is not on the exec whitelist.";
    RollbackBlocked = 13 => 10, "Rollback refused (active consumers).";
    PolicyRejected = 14 => 3, "The policy engine said no.";
    MalformedFrame = 15 => 1, "Bytes that do not decode as a frame or message.";
    FrameTooLarge = 16 => 1, "A frame over the maximum size.";
    UnknownMethod = 17 => 1, "A method id this server does not know.";
    VersionMismatch = 18 => 1, "No common protocol version.";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A remote error: code plus message, as decoded from an Error frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: u32,
}

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError { code, message: message.into(), retry_after_ms: 0 }
    }

    pub fn to_body(&self) -> crate::wire::ErrorBody {
        crate::wire::ErrorBody {
            code: self.code as u32,
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }

    pub fn from_body(b: crate::wire::ErrorBody) -> RemoteError {
        RemoteError { code: ErrorCode::from_u32(b.code), message: b.message, retry_after_ms: b.retry_after_ms }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for RemoteError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_map_to_documented_exits() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u32(*c as u32), *c);
            assert!([1, 2, 3, 4, 5, 6, 10].contains(&c.cli_exit_code()));
        }
        assert_eq!(ErrorCode::Unauthenticated.cli_exit_code(), 2);
        assert_eq!(ErrorCode::PolicyRejected.cli_exit_code(), 3);
        assert_eq!(ErrorCode::Conflict.cli_exit_code(), 4);
        assert_eq!(ErrorCode::Unavailable.cli_exit_code(), 5);
        assert_eq!(ErrorCode::NotWhitelisted.cli_exit_code(), 6);
        assert_eq!(ErrorCode::RollbackBlocked.cli_exit_code(), 10);
        assert_eq!(ErrorCode::from_u32(777), ErrorCode::Internal);
    }
}
