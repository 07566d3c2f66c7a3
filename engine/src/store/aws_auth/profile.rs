//! The shared files of the AWS CLI and SDKs: `AWS_SHARED_CREDENTIALS_FILE` (default
//! `~/.aws/credentials`) and `AWS_CONFIG_FILE` (default `~/.aws/config`), profile
//! `AWS_PROFILE` (else `AWS_DEFAULT_PROFILE`, else `default`). A profile's settings in the
//! credentials file win over the same profile's in the config file.
//!
//! Supported: static keys (`aws_access_key_id`, `aws_secret_access_key`,
//! `aws_session_token`) and `credential_process` (a command printing the credentials JSON).
//! Not supported: `role_arn` (with `source_profile` or `credential_source`) and SSO profiles;
//! such a profile is passed over with a warning, and the chain goes on to the instance role.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};

use super::{CredentialError, Creds, JsonCreds, Provider};
use crate::store::env::Env;

/// A `credential_process` that has not answered by then is killed, with every process it
/// started: the AWS SDK for Go's bound (`processcreds.DefaultTimeout`, one minute).
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// A profile's `credential_process`.
#[derive(Debug, Clone)]
pub struct Process {
    profile: String,
    command: String,
}

/// The settings of one profile, lower-cased keys.
type Settings = BTreeMap<String, String>;

/// Where the shared files are and which profile is read from them.
struct Files<'a> {
    credentials: Option<PathBuf>,
    config: Option<PathBuf>,
    profile: &'a str,
}

impl<'a> Files<'a> {
    fn from_env(env: &'a Env) -> Self {
        let home = env.get("HOME");
        let expand = |path: &str| match (path.strip_prefix("~/"), home) {
            (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => PathBuf::from(path),
        };
        let file = |var: &str, default: &str| {
            env.get(var)
                .map(expand)
                .or_else(|| home.map(|h| PathBuf::from(h).join(default)))
        };
        Self {
            credentials: file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            config: file("AWS_CONFIG_FILE", ".aws/config"),
            profile: env
                .first(&["AWS_PROFILE", "AWS_DEFAULT_PROFILE"])
                .unwrap_or("default"),
        }
    }
}

/// Where the shared files were looked for, for a refusal: "profile `default` in … and …".
pub(super) fn searched(env: &Env) -> String {
    let files = Files::from_env(env);
    let paths: Vec<String> = [&files.credentials, &files.config]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect();
    if paths.is_empty() {
        format!(
            "profile `{}` (no HOME, AWS_SHARED_CREDENTIALS_FILE or AWS_CONFIG_FILE)",
            files.profile
        )
    } else {
        format!("profile `{}` in {}", files.profile, paths.join(" and "))
    }
}

/// The provider the selected profile configures, if any.
pub(super) fn from_env(env: &Env) -> Option<Provider> {
    let Files {
        credentials: credentials_file,
        config: config_file,
        profile: name,
    } = Files::from_env(env);
    let profile = |path: &Option<PathBuf>, config: bool| {
        let text = std::fs::read_to_string(path.as_ref()?).ok()?;
        parse(&text, config).remove(name)
    };
    let from_config = profile(&config_file, true);
    let from_credentials = profile(&credentials_file, false);
    let origin = match (&from_credentials, &credentials_file, &config_file) {
        (Some(_), Some(path), _) | (None, _, Some(path)) => path.display().to_string(),
        _ => return None,
    };
    if from_config.is_none() && from_credentials.is_none() {
        return None;
    }
    let mut settings = from_config.unwrap_or_default();
    settings.extend(from_credentials.unwrap_or_default());
    choose(name, &settings, &origin)
}

/// What a profile's settings configure.
fn choose(name: &str, settings: &Settings, origin: &str) -> Option<Provider> {
    let get = |k: &str| settings.get(k).filter(|v| !v.is_empty());
    if let (Some(id), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key")) {
        return Some(Provider::Static {
            creds: Creds {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: get("aws_session_token").cloned(),
                expires: None,
            },
            origin: format!("profile `{name}` of {origin}"),
        });
    }
    if let Some(command) = get("credential_process") {
        return Some(Provider::Process(Process {
            profile: name.to_owned(),
            command: command.clone(),
        }));
    }
    if let Some(kind) = ["role_arn", "sso_session", "sso_start_url"]
        .into_iter()
        .find(|k| get(k).is_some())
    {
        tracing::warn!(profile = %name, setting = kind, "this AWS profile needs {kind}, which modelpull does not support (it reads static keys and credential_process); trying the next credential source");
    }
    None
}

/// Profiles of an INI file by name. In the config file a section is `[profile NAME]` (or
/// `[default]`); in the credentials file, `[NAME]`. Indented lines continue a nested
/// setting (such as `s3 =`), which no credential setting is, and are skipped.
fn parse(text: &str, config: bool) -> BTreeMap<String, Settings> {
    let mut profiles: BTreeMap<String, Settings> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            current = if !config {
                Some(section.to_owned())
            } else if section == "default" {
                Some("default".to_owned())
            } else {
                section
                    .strip_prefix("profile ")
                    .map(|n| n.trim().to_owned())
            };
            continue;
        }
        let (Some(profile), Some((key, value))) = (&current, line.split_once('=')) else {
            continue;
        };
        profiles
            .entry(profile.clone())
            .or_default()
            .insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    profiles
}

impl Process {
    pub fn describe(&self) -> String {
        format!("credential_process of profile `{}`", self.profile)
    }

    /// Runs the command with `sh -c`, as the SDKs do on Unix, and reads the JSON it prints.
    pub fn fetch(&self) -> Result<Creds, CredentialError> {
        self.run(PROCESS_TIMEOUT)
    }

    /// [`Self::fetch`] within `timeout`: the command and its output both. The command runs in
    /// a process group of its own, killed whole on timeout, so that a process it left behind
    /// holding its output open (`cmd &`) cannot hold the pull either.
    fn run(&self, timeout: Duration) -> Result<Creds, CredentialError> {
        let fail = |message: String| CredentialError::Process {
            profile: self.profile.clone(),
            message,
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| fail(format!("cannot start `sh`: {e}")))?;
        let group = Pid::from_child(&child);
        let timed_out = |child: &mut Child, what: &str| {
            // The group may be gone already (ESRCH): nothing left to stop.
            let _ = kill_process_group(group, Signal::KILL);
            let _ = child.wait();
            fail(format!(
                "{what} within {} s; its processes were killed",
                timeout.as_secs_f32()
            ))
        };
        // Read both pipes on threads of their own so a chatty command cannot block on a full
        // one; they answer on a channel, so the wait for them is bounded too.
        let (tx, rx) = mpsc::channel();
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out_tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let read = stdout.read_to_end(&mut buf).map(|_| buf);
            let _ = out_tx.send(Output::Stdout(read));
        });
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            let _ = tx.send(Output::Stderr(String::from_utf8_lossy(&buf).into_owned()));
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| fail(format!("waiting for it failed: {e}")))?
            {
                break status;
            }
            if Instant::now() >= deadline {
                return Err(timed_out(&mut child, "it did not finish"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (mut stdout, mut stderr) = (None, None);
        while stdout.is_none() || stderr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Output::Stdout(read)) => stdout = Some(read),
                Ok(Output::Stderr(text)) => stderr = Some(text),
                Err(_) => {
                    return Err(timed_out(
                        &mut child,
                        "it exited, but a process it started kept its output open",
                    ));
                }
            }
        }
        let stdout = stdout
            .unwrap_or_else(|| Ok(Vec::new()))
            .map_err(|e| fail(format!("reading its output failed: {e}")))?;
        let stderr = stderr.unwrap_or_default();
        if !status.success() {
            let said = stderr.trim();
            return Err(fail(format!(
                "it exited with {status}{}",
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {}", said.chars().take(300).collect::<String>())
                }
            )));
        }
        JsonCreds::parse(&stdout, "credential_process", &self.describe())
    }
}

/// What a pipe reader thread hands back.
enum Output {
    Stdout(std::io::Result<Vec<u8>>),
    Stderr(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    const CONFIG: &str = "\
# comment
[default]
region = us-west-2
aws_access_key_id = CONFIG-AK
aws_secret_access_key = CONFIG-SK

[profile proc]
credential_process = printf '{\"Version\": 1, \"AccessKeyId\": \"PROC-AK\", \"SecretAccessKey\": \"PROC-SK\", \"SessionToken\": \"PROC-T\", \"Expiration\": \"2030-01-01T00:00:00Z\"}'
s3 =
  max_concurrent_requests = 20

[profile assumed]
role_arn = arn:aws:iam::1:role/r
source_profile = default

[profile failing]
credential_process = sh -c 'echo nope >&2; exit 3'

[ignored]
aws_access_key_id = NOT-A-PROFILE
";

    const CREDENTIALS: &str = "\
[default]
aws_access_key_id = CRED-AK
aws_secret_access_key = CRED-SK
aws_session_token = CRED-T
";

    fn provider(dir: &std::path::Path, profile: Option<&str>) -> Option<Provider> {
        let mut env: Env = [
            ("AWS_CONFIG_FILE", write(dir, "config", CONFIG)),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                write(dir, "credentials", CREDENTIALS),
            ),
        ]
        .into_iter()
        .collect();
        if let Some(p) = profile {
            env.set("AWS_PROFILE", p);
        }
        from_env(&env)
    }

    #[test]
    fn the_credentials_file_wins_for_the_same_profile() {
        let dir = tempfile::tempdir().unwrap();
        let Some(Provider::Static { creds, origin }) = provider(dir.path(), None) else {
            panic!("static keys expected");
        };
        assert_eq!(creds.access_key_id, "CRED-AK");
        assert_eq!(creds.session_token.as_deref(), Some("CRED-T"));
        assert!(origin.starts_with("profile `default` of "), "{origin}");
        assert!(origin.ends_with("credentials"), "{origin}");
    }

    #[test]
    fn credential_process_runs_and_its_failures_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let Some(Provider::Process(p)) = provider(dir.path(), Some("proc")) else {
            panic!("credential_process expected");
        };
        let creds = p.fetch().unwrap();
        assert_eq!(creds.access_key_id, "PROC-AK");
        assert_eq!(creds.session_token.as_deref(), Some("PROC-T"));
        assert!(creds.expires.is_some());
        let Some(Provider::Process(failing)) = provider(dir.path(), Some("failing")) else {
            panic!("credential_process expected");
        };
        let err = failing.fetch().unwrap_err().to_string();
        assert!(
            err.starts_with("credential_process of profile `failing` failed: it exited with"),
            "{err}"
        );
        assert!(err.contains("nope"), "{err}");
    }

    fn process(command: &str) -> Process {
        Process {
            profile: "slow".into(),
            command: command.into(),
        }
    }

    /// Whether `pid` still runs (a zombie waiting for its reaper does not).
    fn running(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    #[test]
    fn a_process_that_never_answers_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let timeout = Duration::from_millis(500);
        // Never exits.
        let started = Instant::now();
        let err = process(&format!("sleep 30 & echo $! > {}; wait", pids.display()))
            .run(timeout)
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        assert!(err.contains("did not finish within 0.5 s"), "{err}");
        let sleeper = std::fs::read_to_string(&pids).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!running(sleeper.trim()), "the command's child still runs");
        // Exits, but leaves a process holding its stdout open.
        let started = Instant::now();
        let err = process(&format!("sleep 30 & echo $! > {}; exit 0", pids.display()))
            .run(timeout)
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        assert!(err.contains("kept its output open"), "{err}");
        let sleeper = std::fs::read_to_string(&pids).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!running(sleeper.trim()), "the leftover process still runs");
    }

    #[test]
    fn unsupported_and_absent_profiles_pass_to_the_next_source() {
        let dir = tempfile::tempdir().unwrap();
        assert!(provider(dir.path(), Some("assumed")).is_none());
        assert!(provider(dir.path(), Some("absent")).is_none());
        assert!(
            provider(dir.path(), Some("ignored")).is_none(),
            "no `profile ` prefix in config"
        );
        assert!(from_env(&Env::default()).is_none(), "no HOME, no files");
        let home: Env = [("HOME", dir.path().to_str().unwrap())]
            .into_iter()
            .collect();
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        write(&dir.path().join(".aws"), "credentials", CREDENTIALS);
        assert!(matches!(from_env(&home), Some(Provider::Static { .. })));
    }
}
