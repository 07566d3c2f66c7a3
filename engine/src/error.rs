//! The engine's error type. Every variant names what failed and hints at what to do; each maps
//! to one of the documented process exit codes through [`Error::exit_code`].

use std::path::PathBuf;

use crate::digest::{Digest, DigestError};
use crate::http::HttpError;

/// Process exit codes of `modelpull`, also used by the agent to classify failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Ok = 0,
    Internal = 1,
    BadInput = 2,
    Source = 3,
    Verify = 4,
    LocalIo = 5,
    Auth = 6,
    Interrupted = 130,
}

/// Where a digest mismatch most likely comes from: the same wrong bytes every time point at
/// the store's copy, different ones at whatever carries them.
fn corruption_hint(varied: bool) -> &'static str {
    if varied {
        "the downloads did not all give the same bytes: something between the store and this machine corrupts data (a proxy, the network, memory)"
    } else {
        "the store's copy may be corrupt"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid source `{input}`: {reason}")]
    InvalidSource { input: String, reason: String },
    #[error("invalid digest for `{input}`: {source}")]
    Digest {
        input: String,
        #[source]
        source: DigestError,
    },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("{path} already exists and holds other files; pull into a new or empty directory")]
    DestinationOccupied { path: PathBuf },
    #[error("fetching {file} failed after {attempts} attempt(s): {source}")]
    Source {
        file: String,
        attempts: u32,
        #[source]
        source: HttpError,
    },
    #[error("{file}: {message}")]
    Remote { file: String, message: String },
    #[error("{uri}: {message}")]
    Store { uri: String, message: String },
    #[error("{uri}: access denied: {message}")]
    Auth { uri: String, message: String },
    #[error("unpacking {file} failed: {message}")]
    Archive { file: String, message: String },
    #[error(
        "{file} failed verification after {attempts} download(s): expected {expected}, got {actual}; {}",
        corruption_hint(*.varied)
    )]
    Verify {
        file: String,
        attempts: u32,
        expected: Digest,
        actual: Digest,
        /// Not every download gave the same wrong digest: bytes change on the way, not at the store.
        varied: bool,
    },
    #[error(
        "{file} has {actual} bytes but the store lists {expected} (after {attempts} download(s)); the store's listing and object disagree"
    )]
    SizeMismatch {
        file: String,
        attempts: u32,
        expected: u64,
        actual: u64,
    },
    #[error("{op} {path} failed: {source}")]
    Local {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is locked by another modelpull process (pid {pid}); wait for it or stop it")]
    Locked { path: PathBuf, pid: String },
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(String),
    #[error("interrupted; run the same command again to resume")]
    Interrupted,
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::InvalidSource { .. }
            | Error::Digest { .. }
            | Error::InvalidOption(_)
            | Error::DestinationOccupied { .. } => ExitCode::BadInput,
            Error::Source { .. }
            | Error::Remote { .. }
            | Error::Store { .. }
            | Error::Archive { .. } => ExitCode::Source,
            Error::Auth { .. } => ExitCode::Auth,
            Error::Verify { .. } | Error::SizeMismatch { .. } => ExitCode::Verify,
            Error::Local { .. } | Error::Locked { .. } => ExitCode::LocalIo,
            Error::Runtime(_) => ExitCode::Internal,
            Error::Interrupted => ExitCode::Interrupted,
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self.exit_code() {
            ExitCode::BadInput => "bad_input",
            ExitCode::Source => "source",
            ExitCode::Verify => "verify",
            ExitCode::LocalIo => "local_io",
            ExitCode::Auth => "auth",
            ExitCode::Interrupted => "interrupted",
            ExitCode::Ok | ExitCode::Internal => "internal",
        }
    }

    /// A failed operation on a local path (`op` is what was tried, e.g. "create").
    pub fn local(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Local {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
