//! The engine's error type. Every variant names what failed and hints at what to do; each maps
//! to one of the documented process exit codes through [`Error::exit_code`].

use std::path::PathBuf;

use crate::digest::{Digest, DigestError};
use crate::http::HttpError;

/// Process exit codes of `modelpull`, also used by the agent to classify failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// A bug or an unexpected state; the message says what.
    Internal = 1,
    /// The command line, a URI, a digest or an option is malformed: fix the input.
    BadInput = 2,
    /// The source failed (network, HTTP status, listing, archive) after every retry.
    Source = 3,
    /// A file's bytes did not match what the store vouches for, after every retry.
    Verify = 4,
    /// A local file or folder could not be read or written (disk full, permissions, lock).
    LocalIo = 5,
    /// The store refused the credentials, or none were found where it needs some.
    Auth = 6,
    /// Stopped by a signal or a cancel; running again resumes.
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

/// Why a resolve or a pull failed. Each variant's message names what failed and what to do;
/// [`Error::exit_code`] gives its class.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source URI or URL that cannot be used.
    #[error("invalid source `{input}`: {reason}")]
    InvalidSource {
        /// The source as given (redacted).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An expected digest that does not parse.
    #[error("invalid digest for `{input}`: {source}")]
    Digest {
        /// The source the digest was given for.
        input: String,
        /// What is wrong with it.
        #[source]
        source: DigestError,
    },
    /// An option or setting out of range or malformed.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The destination holds files of something else.
    #[error("{path} already exists and holds other files; pull into a new or empty directory")]
    DestinationOccupied {
        /// The destination directory.
        path: PathBuf,
    },
    /// A file could not be fetched within its retries.
    #[error("fetching {file} failed after {attempts} attempt(s): {source}")]
    Source {
        /// The file's path in the model.
        file: String,
        /// Requests made for the failing range.
        attempts: u32,
        /// The last request's failure.
        #[source]
        source: HttpError,
    },
    /// The source answered in a way that cannot be used for this file.
    #[error("{file}: {message}")]
    Remote {
        /// The file's path in the model.
        file: String,
        /// What the source did.
        message: String,
    },
    /// The store's listing or metadata failed.
    #[error("{uri}: {message}")]
    Store {
        /// The model URI.
        uri: String,
        /// What the store said.
        message: String,
    },
    /// The store refused the credentials (or needs some).
    #[error("{uri}: access denied: {message}")]
    Auth {
        /// The model URI.
        uri: String,
        /// What the store said, and which credential was used.
        message: String,
    },
    /// A downloaded archive could not be unpacked safely.
    #[error("unpacking {file} failed: {message}")]
    Archive {
        /// The archive's path in the model.
        file: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file's digest did not match after every download allowed.
    #[error(
        "{file} failed verification after {attempts} download(s): expected {expected}, got {actual}; {}",
        corruption_hint(*.varied)
    )]
    Verify {
        /// The file's path in the model.
        file: String,
        /// Whole downloads of the file.
        attempts: u32,
        /// What the store vouches for.
        expected: Digest,
        /// What the last download gave.
        actual: Digest,
        /// Not every download gave the same wrong digest: bytes change on the way, not at the store.
        varied: bool,
    },
    /// A file's size differs from the listing's.
    #[error(
        "{file} has {actual} bytes but the store lists {expected} (after {attempts} download(s)); the store's listing and object disagree"
    )]
    SizeMismatch {
        /// The file's path in the model.
        file: String,
        /// Whole downloads of the file.
        attempts: u32,
        /// The listed size.
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// A local file or folder operation failed.
    #[error("{op} {path} failed: {source}")]
    Local {
        /// What was tried (`create`, `rename`, …).
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Another process pulls into the same destination.
    #[error("{path} is locked by another modelpull process (pid {pid}); wait for it or stop it")]
    Locked {
        /// The destination directory.
        path: PathBuf,
        /// The holder's pid, as its lock file says.
        pid: String,
    },
    /// The I/O runtime could not start (io_uring refused, threads, …).
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(String),
    /// Cancelled; the work done so far is kept for the next run.
    #[error("interrupted; run the same command again to resume")]
    Interrupted,
}

impl Error {
    /// The process exit code (and failure class) this error maps to.
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

/// A result whose error is the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
