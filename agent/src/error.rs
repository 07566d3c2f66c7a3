//! Why a model's download failed, kept typed so that what follows depends on why.
//!
//! The engine already sorts its failures ([`modelpull::Error::exit_code`]); the agent keeps the
//! engine's error whole, adds its own (credentials, disk space, the models root), and sorts
//! every failure into one of four [`Class`]es. The class decides the retry
//! ([`crate::retry::RetryPolicy`]), the `result` label of `modelpull_model_downloads_total`
//! and what the failure's Event adds:
//!
//! | class | failures | retry | `result` | Event adds |
//! |---|---|---|---|---|
//! | bad input | malformed or unsupported URI, unsafe listing, invalid option or digest, bad proxy settings, a store whose copy disagrees with its own listing every time | none until the entry or the LocalModelNode's spec changes | `bad_input` | that it waits for a change |
//! | access denied | 401/403 and gated repositories, missing or unusable credentials, a Secret the agent may not read | the longer backoff | `access_denied` | the Secret or ServiceAccount used (names only) |
//! | no space | the model's missing bytes do not fit on the disk (checked before the pull); the whole copy that repairs a folder the agent cannot write to did not fit | the no-space backoff, or at once when the entry or the spec changes (a removed model frees its space) | `no_space` | how much is needed and free, and the fix |
//! | transient | network, timeouts, 5xx and other store answers, bytes corrupted on the way, other local I/O (a disk filled while writing, a locked folder) | the normal backoff | `transient` | when it is tried again |
//!
//! A repair copy that does not fit is not retried at the normal pace: every attempt reads the
//! whole model again, fetches the damaged files and copies the rest before the disk fills up,
//! and nothing changes that by itself; giving the folder to the agent (`chown -R 65532:65532`)
//! lets it repair the folder file by file instead, with no copy.
//!
//! Two engine errors are classed apart from their exit code. `DestinationOccupied` is bad input
//! for the CLI (the user named the folder) but transient here: the folder is the agent's own,
//! and the next pull adopts what is in the way. A digest mismatch (exit code 4) is bad
//! input when every download gave the same wrong bytes (the engine's `varied: false`) or the
//! size disagrees with the listing: the store's copy is wrong, and fetching it again from this
//! node only spends the origin's bandwidth; it is transient when the bytes varied (something on
//! the way corrupts them).

use modelpull::ExitCode;

use crate::credentials::CredentialError;

/// What a failure means for the download: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Trying again as is cannot succeed: something someone writes must change.
    BadInput,
    /// The store or the cluster refused the credentials (or there were none).
    AccessDenied,
    /// The disk cannot hold what the download needs: space is freed by people, or by a model
    /// removed from the spec.
    NoSpace,
    /// Trying again later may succeed.
    Transient,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::BadInput,
        Class::AccessDenied,
        Class::NoSpace,
        Class::Transient,
    ];

    /// The `result` label of `modelpull_model_downloads_total` for a failure of this class.
    pub fn metric_label(self) -> &'static str {
        match self {
            Class::BadInput => "bad_input",
            Class::AccessDenied => "access_denied",
            Class::NoSpace => "no_space",
            Class::Transient => "transient",
        }
    }
}

/// Why the download of a model failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] modelpull::Error),
    /// Boxed: a Kubernetes client error is large, and every `Result` carries the largest variant.
    #[error("credentials: {0}")]
    Credentials(Box<CredentialError>),
    /// The proxy variables the model's environment inherits from the node cannot be used.
    #[error("proxy settings: {0}")]
    Proxy(String),
    /// The listed model does not fit; the message says how much it needs and how much is free.
    #[error("{0}")]
    NoSpace(String),
    /// A folder the agent cannot write to needs a whole verified copy to be repaired, and the
    /// copy did not fit on the disk; the message says how to repair it in place instead.
    #[error("{0}")]
    CopyDoesNotFit(String),
    #[error("models root: {0}")]
    ModelsRoot(#[source] std::io::Error),
}

impl From<CredentialError> for Error {
    fn from(e: CredentialError) -> Self {
        Error::Credentials(Box::new(e))
    }
}

impl Error {
    pub fn class(&self) -> Class {
        match self {
            Error::Engine(e) => engine_class(e),
            Error::Credentials(e) => match &**e {
                CredentialError::Read {
                    source: kube::Error::Api(status),
                    ..
                } if matches!(status.code, 401 | 403) => Class::AccessDenied,
                CredentialError::Read { .. } => Class::Transient,
                CredentialError::MissingSecret { .. }
                | CredentialError::MissingKey { .. }
                | CredentialError::StorageSpec { .. } => Class::AccessDenied,
                CredentialError::CaBundle { .. } => Class::BadInput,
            },
            Error::Proxy(_) => Class::BadInput,
            Error::NoSpace(_) | Error::CopyDoesNotFit(_) => Class::NoSpace,
            Error::ModelsRoot(_) => Class::Transient,
        }
    }
}

/// The engine's own classification ([`modelpull::Error::exit_code`]), with the two exceptions
/// the module documentation gives.
fn engine_class(e: &modelpull::Error) -> Class {
    use modelpull::Error as E;
    match e {
        E::DestinationOccupied { .. } => return Class::Transient,
        E::Verify { varied: false, .. } | E::SizeMismatch { .. } => return Class::BadInput,
        _ => {}
    }
    match e.exit_code() {
        ExitCode::BadInput => Class::BadInput,
        ExitCode::Auth => Class::AccessDenied,
        ExitCode::Source
        | ExitCode::Verify
        | ExitCode::LocalIo
        | ExitCode::Internal
        | ExitCode::Interrupted
        | ExitCode::Ok => Class::Transient,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use modelpull::HttpError;
    use modelpull::{Algorithm, Digest};

    use super::*;

    fn digest(byte: u8) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            value: vec![byte; 32],
        }
    }

    fn io() -> std::io::Error {
        std::io::Error::from_raw_os_error(28)
    }

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("no", "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    fn read(code: u16) -> Error {
        Error::from(CredentialError::Read {
            kind: "Secret",
            namespace: "jobs".into(),
            name: "s3".into(),
            source: api(code),
        })
    }

    fn engine(e: modelpull::Error) -> Error {
        Error::Engine(e)
    }

    #[test]
    fn every_failure_has_its_class() {
        use modelpull::Error as E;
        let uri = || "s3://b/m".to_owned();
        let verify = |varied| E::Verify {
            file: "w.bin".into(),
            attempts: 3,
            expected: digest(1),
            actual: digest(2),
            varied,
        };
        let cases: Vec<(Error, Class)> = vec![
            (
                engine(E::InvalidSource {
                    input: "ftp://x/m".into(),
                    reason: "unsupported scheme `ftp`".into(),
                }),
                Class::BadInput,
            ),
            (
                engine(E::InvalidOption("connections".into())),
                Class::BadInput,
            ),
            (
                engine(E::DestinationOccupied {
                    path: PathBuf::from("/m"),
                }),
                Class::Transient,
            ),
            (
                engine(E::Auth {
                    uri: uri(),
                    message: "HTTP 403".into(),
                }),
                Class::AccessDenied,
            ),
            (
                engine(E::Source {
                    file: "w.bin".into(),
                    attempts: 5,
                    source: HttpError::Closed { host: "h".into() },
                }),
                Class::Transient,
            ),
            (
                engine(E::Store {
                    uri: uri(),
                    message: "HTTP 503".into(),
                }),
                Class::Transient,
            ),
            (engine(verify(false)), Class::BadInput),
            (engine(verify(true)), Class::Transient),
            (
                engine(E::SizeMismatch {
                    file: "w.bin".into(),
                    attempts: 3,
                    expected: 10,
                    actual: 9,
                }),
                Class::BadInput,
            ),
            (
                engine(E::Local {
                    op: "write",
                    path: PathBuf::from("/m/w.bin"),
                    source: io(),
                }),
                Class::Transient,
            ),
            (engine(E::Runtime("no io_uring".into())), Class::Transient),
            (engine(E::Interrupted), Class::Transient),
            (read(403), Class::AccessDenied),
            (read(401), Class::AccessDenied),
            (read(500), Class::Transient),
            (
                Error::from(CredentialError::MissingSecret {
                    namespace: "jobs".into(),
                    name: "storage-config".into(),
                }),
                Class::AccessDenied,
            ),
            (
                Error::from(CredentialError::MissingKey {
                    namespace: "jobs".into(),
                    name: "storage-config".into(),
                    key: "s3".into(),
                }),
                Class::AccessDenied,
            ),
            (
                Error::from(CredentialError::StorageSpec {
                    namespace: "jobs".into(),
                    name: "storage-config".into(),
                    key: "s3".into(),
                    source: crate::credentials::StorageSpecError::NoType,
                }),
                Class::AccessDenied,
            ),
            (
                Error::from(CredentialError::CaBundle {
                    namespace: "jobs".into(),
                    name: "minio-ca".into(),
                    reason: "it does not exist".into(),
                }),
                Class::BadInput,
            ),
            (
                Error::Proxy("HTTPS_PROXY is not a URL".into()),
                Class::BadInput,
            ),
            (
                Error::NoSpace("not enough disk space".into()),
                Class::NoSpace,
            ),
            (
                Error::CopyDoesNotFit("not enough disk space to repair".into()),
                Class::NoSpace,
            ),
            (Error::ModelsRoot(io()), Class::Transient),
        ];
        for (error, class) in cases {
            assert_eq!(error.class(), class, "{error}");
        }
    }

    #[test]
    fn each_class_has_its_own_metric_label() {
        let labels: Vec<&str> = Class::ALL.iter().map(|c| c.metric_label()).collect();
        assert_eq!(
            labels,
            ["bad_input", "access_denied", "no_space", "transient"]
        );
    }

    #[test]
    fn the_engine_error_is_kept_whole() {
        let e = Error::from(modelpull::Error::Auth {
            uri: "hf://acme/gated".into(),
            message: "acme/gated is a gated repository".into(),
        });
        assert_eq!(
            e.to_string(),
            "hf://acme/gated: access denied: acme/gated is a gated repository"
        );
        assert!(matches!(e, Error::Engine(modelpull::Error::Auth { .. })));
    }
}
