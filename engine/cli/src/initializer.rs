//! `modelpull` as KServe's storage-initializer: the init container that puts a model in
//! `/mnt/models` before an InferenceService's server starts.
//!
//! KServe sets only the container's arguments and runs the image's entrypoint,
//! `/storage-initializer/scripts/initializer-entrypoint`; modelpull's image makes that path
//! a link to `/modelpull`, so the program's name selects this mode (`modelpull
//! storage-initializer SRC DEST…` does the same by hand). It is chosen before the flags are
//! parsed because KServe's arguments are bare `SRC DEST` pairs that no flag parser should
//! reinterpret.
//!
//! The contract is the Python entrypoint's (`docs/decisions.md`, "Storage-initializer"): one
//! or more `SRC DEST` pairs, else usage on stdout and exit 1; every DEST created first; pairs
//! pulled in order; exit 1 at the first failure with one line on stderr that says why (the
//! pod's `FallbackToLogsOnError` makes it the InferenceService's failure message), 0 when all
//! succeed. Credentials and settings come from the variables KServe's credential builder
//! injects, `STORAGE_CONFIG` included; a source under `/mnt/models` is already in place.
//! Sources only KServe's own image reads (PVCs, OCI, ModelScope, Azure, HDFS, git, local
//! paths), and its decryption of confidential models, are refused before anything is
//! downloaded, naming that image.
//!
//! DEST is usually a mount point (KServe's emptyDir), which cannot be renamed over, so each
//! pull is staged and published inside it, in `.modelpull-initializer/`, then moved up into
//! DEST. The staging survives a restart of the container (the emptyDir outlives it), so a
//! pull stopped half-way resumes. Files are made readable by every user (umask 022): the
//! serving container may run as another uid.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use modelpull::limits::Limits;
use modelpull::store::{self, Control, Env};
use modelpull::units::human_bytes;
use modelpull::{Context, Options, PullRequest, Report};
use sha2::Digest as _;

/// The file name of the path KServe's image runs.
const ENTRYPOINT: &str = "initializer-entrypoint";
/// The subcommand that selects this mode by hand.
const SUBCOMMAND: &str = "storage-initializer";
/// KServe's own image, for the sources this one leaves to it.
const KSERVE_IMAGE: &str = "kserve/storage-initializer";
/// Where KServe mounts the model; a source there is already in place.
const MODEL_MOUNT: &str = "/mnt/models";
/// Inside DEST: where pulls are staged and published before they move up into DEST.
const WORK_DIR: &str = ".modelpull-initializer";

const USAGE: &str = "\
Usage: initializer-entrypoint SRC_URI DEST_PATH [SRC_URI DEST_PATH ...]
   or: modelpull storage-initializer SRC_URI DEST_PATH [SRC_URI DEST_PATH ...]
KServe's storage-initializer, served by modelpull: pulls each SRC_URI (hf://, s3://, gs://,
http(s)://) into DEST_PATH, in order, every file verified. Exit 0 when all succeed, else 1.";

/// Runs the storage-initializer when this process was started as one, and gives its exit
/// code.
pub fn main_if_invoked() -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    invoked(&args).map(main)
}

/// The arguments after the program's name (and the subcommand) when this process was
/// started as the storage-initializer; `None` otherwise.
fn invoked(args: &[OsString]) -> Option<&[OsString]> {
    let program = Path::new(args.first()?).file_name()?;
    if program == ENTRYPOINT {
        return Some(&args[1..]);
    }
    (args.get(1)? == SUBCOMMAND).then(|| &args[2..])
}

/// Runs the storage-initializer on `args` (`SRC DEST` pairs) and gives its exit code.
fn main(args: &[OsString]) -> ExitCode {
    let Some(pairs) = pairs(args) else {
        println!("{USAGE}");
        return ExitCode::FAILURE;
    };
    // Files must be readable by the serving container, whatever the runtime's umask.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    init_logging();
    match run(&pairs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Storage initialization failed: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// One `SRC DEST` argument pair.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pair {
    source: String,
    dest: PathBuf,
}

/// The pairs, or `None` for a count KServe's entrypoint refuses (fewer than 2, or odd) or an
/// argument that is not UTF-8.
fn pairs(args: &[OsString]) -> Option<Vec<Pair>> {
    if args.len() < 2 || !args.len().is_multiple_of(2) {
        return None;
    }
    args.chunks(2)
        .map(|p| {
            Some(Pair {
                source: p[0].to_str()?.to_owned(),
                dest: PathBuf::from(&p[1]),
            })
        })
        .collect()
}

fn run(pairs: &[Pair]) -> anyhow::Result<()> {
    for pair in pairs {
        std::fs::create_dir_all(&pair.dest)
            .with_context(|| format!("creating {}", pair.dest.display()))?;
    }
    for pair in pairs {
        if let Some(what) = left_to_kserve(&pair.source) {
            anyhow::bail!(
                "{}: {what} is not supported by modelpull's storage-initializer; use KServe's image {KSERVE_IMAGE} for this URI",
                modelpull::redact_str(&pair.source)
            );
        }
    }
    let env = Env::from_process().with_storage_config()?;
    // KServe's image decrypts the models afterwards; serving them still encrypted would fail
    // later and less clearly.
    if env.flag("CONFIDENTIAL_ENABLED") == Some(true) {
        anyhow::bail!(
            "CONFIDENTIAL_ENABLED: decrypting models is not supported by modelpull's storage-initializer; use KServe's image {KSERVE_IMAGE}"
        );
    }
    let limits = Limits::detect();
    let mut opts = Options::default();
    opts.fit(&limits);
    opts.proxy = env.proxy().map_err(modelpull::Error::InvalidOption)?;
    opts.validate()?;
    eprintln!(
        "modelpull storage-initializer: {} pair(s); {} core(s), {} of buffers, up to {} connections ({})",
        pairs.len(),
        opts.cores,
        human_bytes(opts.memory_limit as u64),
        opts.connection_cap(),
        describe(&limits)
    );
    let cx = Context {
        cancel: crate::cancel_on_signals(1),
        ..Context::default()
    };
    for pair in pairs {
        let source = modelpull::redact_str(&pair.source);
        let dest = pair.dest.display();
        if pair.source.starts_with(MODEL_MOUNT) {
            eprintln!(
                "modelpull storage-initializer: {source} is already in place; nothing to download"
            );
            continue;
        }
        let report = pull(pair, &env, &opts, &cx)
            .with_context(|| format!("pulling {source} into {dest}"))?;
        let driver = report.driver.map_or("none", |d| d.name());
        let note = report
            .driver_note
            .as_deref()
            .map_or(String::new(), |n| format!(": {n}"));
        let unpacked = report.unpacked.as_ref().map_or(String::new(), |u| {
            format!(", {} unpacked into {} file(s)", u.archive, u.files)
        });
        eprintln!(
            "modelpull storage-initializer: {source} → {dest}: {} file(s), {} in {:.1} s ({:.2} GB/s), each verified{unpacked}; driver {driver}{note}",
            report.files.len(),
            human_bytes(report.total_bytes),
            report.seconds,
            report.gigabytes_per_second,
        );
    }
    Ok(())
}

/// Lists and pulls one pair, staged in DEST's work folder, then moves the model up into DEST.
fn pull(pair: &Pair, env: &Env, opts: &Options, cx: &Context) -> anyhow::Result<Report> {
    let mut opts = opts.clone();
    if let Some(bundle) = ca_bundle(&pair.source, env)? {
        opts.ca_bundle = Some(bundle.into());
    }
    let control = Control::new(&opts.client())?.with_cancel(cx.cancel.clone());
    let manifest = store::resolve(&pair.source, env, &control)?;
    opts.apply_tls(&manifest);
    let work = pair.dest.join(WORK_DIR);
    let staged = work.join(hex::encode(
        &sha2::Sha256::digest(pair.source.as_bytes())[..8],
    ));
    let request = PullRequest {
        targets: manifest.files,
        dest: staged.clone(),
        unpack: true,
        adopt: false,
        sources: vec![modelpull::redact_str(&pair.source)],
    };
    let report = modelpull::pull(&request, &opts, cx)?;
    move_into(&staged, &pair.dest, true)?;
    std::fs::remove_dir_all(&staged).with_context(|| format!("removing {}", staged.display()))?;
    // Other sources' unfinished pulls into the same DEST may still be in there.
    let _ = std::fs::remove_dir(&work);
    std::fs::File::open(&pair.dest)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("flushing {}", pair.dest.display()))?;
    Ok(report)
}

/// What kind of source `source` is when only KServe's own image reads it.
fn left_to_kserve(source: &str) -> Option<&'static str> {
    if source.starts_with(MODEL_MOUNT) {
        return None;
    }
    let Some((scheme, _)) = source.split_once("://") else {
        return Some("a local path");
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => Some("a local path"),
        "pvc" => Some("a PersistentVolumeClaim"),
        "oci" | "oci+fetch" => Some("an OCI image"),
        "modelscope" => Some("ModelScope"),
        "hdfs" | "webhdfs" => Some("HDFS"),
        "http" | "https" => {
            let rest = &source[scheme.len() + 3..];
            let rest = rest.split(['?', '#']).next().unwrap_or_default();
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit('@').next().unwrap_or_default();
            let host = host
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let azure = |service: &str| {
                host.ends_with(&format!(".{service}.core.windows.net"))
                    || host.split('.').rev().take(4).collect::<Vec<_>>()
                        == ["net", "azure", "storage", service]
            };
            if azure("blob") {
                Some("Azure Blob Storage")
            } else if azure("file") {
                Some("Azure Files")
            } else if path.ends_with(".git") {
                Some("a git repository")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The CA bundle to trust for `source`: the one KServe mounts from its ConfigMap, except
/// for S3 when `AWS_CA_BUNDLE` names one (the S3 store reads that, as KServe's does). A
/// bundle KServe says is mounted but is not there fails the pull, as in KServe.
fn ca_bundle(source: &str, env: &Env) -> anyhow::Result<Option<PathBuf>> {
    if source.starts_with("s3://") && env.get("AWS_CA_BUNDLE").is_some() {
        return Ok(None);
    }
    let Some(path) = env.kserve_ca_bundle() else {
        return Ok(None);
    };
    anyhow::ensure!(
        path.is_file(),
        "the CA bundle {} (CA_BUNDLE_CONFIGMAP_NAME) does not exist",
        path.display()
    );
    Ok(Some(path))
}

/// Moves every entry of `from` into `into`: a file replaces one of the same name (as KServe
/// overwrites), folders merge. The completion marker at the top is left behind: DEST holds
/// the model's files only, as KServe's would.
fn move_into(from: &Path, into: &Path, top: bool) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        if top && entry.file_name() == modelpull::MARKER {
            continue;
        }
        let (src, dst) = (entry.path(), into.join(entry.file_name()));
        let src_dir = entry.file_type()?.is_dir();
        match std::fs::symlink_metadata(&dst) {
            Ok(m) if m.is_dir() && src_dir => move_into(&src, &dst, false)?,
            Ok(m) if m.is_dir() != src_dir => anyhow::bail!(
                "{} exists and is {}, but the model has {} there",
                dst.display(),
                if m.is_dir() { "a folder" } else { "a file" },
                if src_dir { "a folder" } else { "a file" },
            ),
            _ => std::fs::rename(&src, &dst)
                .with_context(|| format!("moving {} to {}", src.display(), dst.display()))?,
        }
    }
    Ok(())
}

/// The error and its causes on one line, each once: the engine's messages already end with
/// their causes, the contexts added here do not.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// `cgroup: 1 CPU, 1.0 GiB memory`-style: what the limits were read as.
fn describe(limits: &Limits) -> String {
    let cpu = limits
        .cpu
        .map_or("no CPU limit".to_owned(), |c| format!("{} CPU", c.cpus()));
    let memory = limits.memory.map_or("no memory limit".to_owned(), |m| {
        format!("{} memory", human_bytes(m))
    });
    format!("cgroup: {cpu}, {memory}")
}

/// The engine's warnings (a retried file, an unverified host) on stderr, without colours
/// unless it is a terminal: a pod's log becomes the failure message. `RUST_LOG` asks for more.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn chosen_by_the_entrypoints_name_or_the_subcommand() {
        let kserve = args(&[
            "/storage-initializer/scripts/initializer-entrypoint",
            "s3://b/m",
            "/mnt/models",
        ]);
        assert_eq!(invoked(&kserve).unwrap(), &kserve[1..]);
        let by_hand = args(&[
            "modelpull",
            "storage-initializer",
            "s3://b/m",
            "/mnt/models",
        ]);
        assert_eq!(invoked(&by_hand).unwrap(), &by_hand[2..]);
        assert_eq!(
            invoked(&args(&["modelpull", "storage-initializer"]))
                .unwrap()
                .len(),
            0
        );
        for other in [
            args(&["modelpull", "pull", "s3://b/m", "/tmp/m"]),
            args(&["/usr/bin/modelpull"]),
            args(&["initializer-entrypoint-not"]),
        ] {
            assert_eq!(invoked(&other), None, "{other:?}");
        }
    }

    #[test]
    fn arguments_are_pairs() {
        let two = pairs(&args(&[
            "hf://a/b",
            "/mnt/models",
            "s3://b/m",
            "/mnt/extra",
        ]))
        .unwrap();
        assert_eq!(
            two,
            [
                Pair {
                    source: "hf://a/b".into(),
                    dest: "/mnt/models".into()
                },
                Pair {
                    source: "s3://b/m".into(),
                    dest: "/mnt/extra".into()
                }
            ]
        );
        for bad in [&[][..], &["hf://a/b"], &["a", "b", "c"]] {
            assert_eq!(pairs(&args(bad)), None, "{bad:?}");
        }
        use std::os::unix::ffi::OsStringExt;
        let not_utf8 = vec![
            OsString::from_vec(vec![0xff]),
            OsString::from("/mnt/models"),
        ];
        assert_eq!(pairs(&not_utf8), None);
    }

    #[test]
    fn sources_only_kserve_reads_are_named() {
        for (source, what) in [
            ("pvc://claim/models/m", "a PersistentVolumeClaim"),
            ("oci://registry/model:1", "an OCI image"),
            ("oci+fetch://registry/model:1", "an OCI image"),
            ("modelscope://org/model", "ModelScope"),
            ("hdfs://nn/models/m", "HDFS"),
            ("webhdfs://nn/models/m", "HDFS"),
            (
                "https://acct.blob.core.windows.net/c/m",
                "Azure Blob Storage",
            ),
            (
                "https://acct.z13.blob.storage.azure.net/c/m",
                "Azure Blob Storage",
            ),
            ("https://acct.file.core.windows.net/share/m", "Azure Files"),
            ("https://github.com/org/model.git", "a git repository"),
            ("/mnt/pvc/models/m", "a local path"),
            ("file:///models/m", "a local path"),
            ("models/m", "a local path"),
        ] {
            assert_eq!(left_to_kserve(source), Some(what), "{source}");
        }
        for ours in [
            "hf://org/model",
            "s3://bucket/m",
            "gs://bucket/m",
            "https://models.example/m.tar.gz",
            "http://blob.core.windows.net.example/m",
            "/mnt/models",
            "/mnt/models/m",
            "ftp://h/f",
        ] {
            assert_eq!(left_to_kserve(ours), None, "{ours}");
        }
    }

    #[test]
    fn the_configmaps_ca_bundle_must_exist_and_yields_to_aws_ca_bundle_for_s3() {
        let dir = tempfile::tempdir().unwrap();
        let mut env: Env = [
            ("CA_BUNDLE_CONFIGMAP_NAME", "global-ca-bundle"),
            ("CA_BUNDLE_VOLUME_MOUNT_POINT", dir.path().to_str().unwrap()),
        ]
        .into_iter()
        .collect();
        let err = ca_bundle("hf://a/b", &env).unwrap_err().to_string();
        assert!(
            err.contains("cabundle.crt (CA_BUNDLE_CONFIGMAP_NAME) does not exist"),
            "{err}"
        );
        std::fs::write(dir.path().join("cabundle.crt"), "PEM").unwrap();
        let bundle = dir.path().join("cabundle.crt");
        assert_eq!(ca_bundle("hf://a/b", &env).unwrap(), Some(bundle.clone()));
        assert_eq!(ca_bundle("s3://b/m", &env).unwrap(), Some(bundle.clone()));
        env.set("AWS_CA_BUNDLE", "/etc/s3.pem");
        assert_eq!(ca_bundle("s3://b/m", &env).unwrap(), None);
        assert_eq!(ca_bundle("gs://b/m", &env).unwrap(), Some(bundle));
        assert_eq!(ca_bundle("gs://b/m", &Env::default()).unwrap(), None);
    }

    #[test]
    fn errors_read_as_one_line_with_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = anyhow::Error::new(io).context("creating /mnt/models");
        assert_eq!(one_line(&err), "creating /mnt/models: permission denied");
        let engine = modelpull::Error::local(
            "create",
            "/mnt/models/x",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        let err = anyhow::Error::new(engine).context("pulling s3://b/m into /mnt/models");
        assert_eq!(
            one_line(&err),
            "pulling s3://b/m into /mnt/models: create /mnt/models/x failed: no storage space"
        );
    }

    #[test]
    fn the_model_moves_up_merging_folders_and_replacing_files() {
        let dir = tempfile::tempdir().unwrap();
        let (from, into) = (dir.path().join("from"), dir.path().join("into"));
        for (path, content) in [
            ("from/config.json", "new"),
            ("from/sub/a.bin", "a"),
            ("from/.modelpull.json", "marker"),
            ("into/config.json", "old"),
            ("into/sub/b.bin", "b"),
        ] {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        move_into(&from, &into, true).unwrap();
        let read = |p: &str| std::fs::read_to_string(into.join(p)).unwrap();
        assert_eq!(read("config.json"), "new");
        assert_eq!(
            (read("sub/a.bin"), read("sub/b.bin")),
            ("a".into(), "b".into())
        );
        assert!(!into.join(".modelpull.json").exists());
        assert!(from.join(".modelpull.json").exists());

        std::fs::create_dir_all(from.join("config.json")).unwrap();
        let err = move_into(&from, &into, true).unwrap_err().to_string();
        assert!(
            err.ends_with("config.json exists and is a file, but the model has a folder there"),
            "{err}"
        );
    }
}
