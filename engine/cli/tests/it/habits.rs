//! The habits of `hf download` where they fit: `--include` / `--exclude` (over the
//! environment's `STORAGE_*_PATTERNS`) on `pull` and `ls`, `--revision`, `--quiet` with the
//! model's path alone on stdout, and shell completions.

use std::path::Path;
use std::process::{Command, Output};

use modelpull_testkit::hub::{Hub, HubRepo, RouteKind};
use modelpull_testkit::*;

fn modelpull() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelpull"));
    cmd.env_remove("RUST_LOG")
        .env_remove("STORAGE_ALLOW_PATTERNS")
        .env_remove("STORAGE_IGNORE_PATTERNS");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo() -> HubRepo {
    HubRepo::new("acme/tiny")
        .file("config.json", "{\"layers\": 2}\n")
        .file("README.md", "# tiny\n")
        .lfs_file("model.safetensors", data(1, 300_000))
        .lfs_file("original/consolidated.pth", data(2, 100_000))
        .branch("v1.0")
}

/// `modelpull ARGS` against `hub`, with extra environment variables.
fn run(hub: &Hub, env: &[(&str, &str)], args: &[&str]) -> Output {
    modelpull()
        .args(args)
        .env("HF_ENDPOINT", hub.endpoint())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The paths `ls --json` lists for the one source.
fn listed(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn include_and_exclude_select_what_ls_lists_and_pull_fetches() {
    let r = repo();
    let hub = Hub::start(vec![r.clone()]).unwrap();
    let uri = "hf://acme/tiny";
    let ls = |env: &[(&str, &str)], flags: &[&str]| {
        let mut args = vec!["ls", "--json"];
        args.extend(flags);
        args.push(uri);
        listed(&run(&hub, env, &args))
    };
    assert_eq!(ls(&[], &[]).len(), r.files().len());
    assert_eq!(
        ls(&[], &["--include", "*.json", "--include", "*.safetensors"]),
        ["config.json", "model.safetensors"]
    );
    assert_eq!(
        ls(&[], &["--exclude", "original/", "--exclude", "*.md"]),
        ["config.json", "model.safetensors"],
        "for hf://, `original/` is the folder, as in STORAGE_IGNORE_PATTERNS"
    );

    // Each flag replaces its variable; a variable without its flag still applies.
    let env = [
        ("STORAGE_ALLOW_PATTERNS", "README.md"),
        ("STORAGE_IGNORE_PATTERNS", "*.pth"),
    ];
    assert_eq!(ls(&env, &[]), ["README.md"]);
    assert_eq!(
        ls(&env, &["--include", "original/", "--include", "*.json"]),
        ["config.json"]
    );
    assert_eq!(
        ls(&env, &["--include", "original/", "--exclude", "*.json"]),
        ["original/consolidated.pth"]
    );

    // The text listing too.
    let out = run(&hub, &[], &["ls", "--include", "*.json", uri]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(shown.contains("config.json"), "{shown}");
    assert!(!shown.contains("model.safetensors"), "{shown}");
    assert!(shown.contains("3 skipped"), "{shown}");

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m");
    let out = run(
        &hub,
        &[],
        &[
            "pull",
            "--include",
            "*.safetensors",
            uri,
            dest.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let model = r
        .files()
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    assert_file(&dest, "model.safetensors", &model.bytes);
    let names: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names, ["model.safetensors"]);

    let nothing = run(
        &hub,
        &[],
        &[
            "pull",
            "--include",
            "*.gguf",
            uri,
            dir.path().join("n").to_str().unwrap(),
        ],
    );
    assert_eq!(nothing.status.code(), Some(3));
    assert!(
        text(&nothing.stderr).contains("no model files found (4 listed file(s) were left out"),
        "{}",
        text(&nothing.stderr)
    );
}

#[test]
fn revision_is_the_uri_revision_and_refused_where_it_cannot_apply() {
    let hub = Hub::start(vec![repo()]).unwrap();
    let commit = hub.commit_of("acme/tiny", "v1.0").unwrap();
    let ls = run(
        &hub,
        &[],
        &["ls", "--json", "--revision", "v1.0", "hf://acme/tiny"],
    );
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(v[0]["revision"], commit.as_str());
    assert_eq!(v[0]["uri"], "hf://acme/tiny:v1.0");
    assert!(
        hub.stats()
            .of(RouteKind::ModelInfo)
            .any(|r| r.path.ends_with("/revision/v1.0")),
        "the Hub was asked for v1.0"
    );
    // The same revision twice is no conflict.
    let same = run(
        &hub,
        &[],
        &["ls", "--revision", "v1.0", "hf://acme/tiny:v1.0"],
    );
    assert!(same.status.success(), "{}", text(&same.stderr));

    let missing = run(&hub, &[], &["ls", "--revision", "nope", "hf://acme/tiny"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(text(&missing.stderr).contains("revision `nope` does not exist"));

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m");
    let d = dest.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["pull", "--revision", "v2", "hf://acme/tiny:v1.0", d],
            "it names revision `v1.0` and --revision `v2`; give the revision once",
        ),
        (
            vec!["pull", "--revision", "v2", "s3://bucket/model", d],
            "--revision applies only to hf:// sources",
        ),
        (
            vec!["ls", "--revision", "v2", "https://example.com/m.bin"],
            "--revision applies only to hf:// sources",
        ),
    ] {
        let out = run(&hub, &[], &args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    assert!(!dest.exists());
    assert_eq!(
        hub.stats().count(RouteKind::Tree),
        2,
        "refused commands asked the Hub nothing"
    );
}

#[test]
fn stdout_gets_the_path_and_quiet_leaves_only_it() {
    let content = data(3, 200_000);
    let fx = Fixture::new(&[("model.bin", &content)]);
    let url = with_sha256(&fx.origin.url("model.bin"), &content);
    let pull = |args: &[&str], dest: &Path| {
        modelpull()
            .arg("pull")
            .args(args)
            .arg(&url)
            .arg(dest)
            .output()
            .unwrap()
    };
    let path_line = |dest: &Path| format!("{}\n", dest.display());

    let dest = fx.dest("m");
    let out = pull(&[], &dest);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), path_line(&dest));
    assert!(
        text(&out.stderr).starts_with("pulled 1 files"),
        "{}",
        text(&out.stderr)
    );
    assert_file(&dest, "model.bin", &content);

    let dest = fx.dest("q");
    let out = pull(&["-q"], &dest);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), path_line(&dest));
    assert_eq!(text(&out.stderr), "");
    // Complete already: the same path, still nothing on stderr.
    let again = pull(&["--quiet"], &dest);
    assert!(again.status.success());
    assert_eq!(text(&again.stdout), path_line(&dest));
    assert_eq!(text(&again.stderr), "");

    // A relative destination is printed absolute.
    let out = modelpull()
        .current_dir(fx.dir.path())
        .args(["pull", "-q", &url, "rel"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), path_line(&fx.dir.path().join("rel")));

    // Errors still reach stderr, and nothing reaches stdout.
    let bad = modelpull()
        .args(["pull", "-q", "--retries", "1", "http://127.0.0.1:9/x.bin"])
        .arg(fx.dest("bad"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(3));
    assert!(bad.stdout.is_empty());
    let err = text(&bad.stderr);
    assert!(
        err.starts_with("modelpull: error: fetching x.bin failed"),
        "{err}"
    );
    assert_eq!(
        err.lines().count(),
        1,
        "no warnings before the error: {err}"
    );

    let both = modelpull()
        .args(["pull", "-q", "-v", &url])
        .arg(fx.dest("v"))
        .output()
        .unwrap();
    assert_eq!(
        both.status.code(),
        Some(2),
        "--quiet and --verbose conflict"
    );
}

#[test]
fn completions_for_every_shell_and_bash_loads_them() {
    let script = |shell: &str| {
        let out = modelpull().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let bash = script("bash");
    for word in [
        "pull",
        "ls",
        "demo",
        "completions",
        "--include",
        "--revision",
        "--quiet",
    ] {
        assert!(bash.contains(word), "bash completions miss {word}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(script(shell).contains("modelpull"), "{shell}");
    }
    let loaded = Command::new("bash")
        .args([
            "-c",
            r#"source <("$MODELPULL" completions bash) && complete -p modelpull"#,
        ])
        .env("MODELPULL", env!("CARGO_BIN_EXE_modelpull"))
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{}", text(&loaded.stderr));
    assert!(
        text(&loaded.stdout).contains("modelpull"),
        "{}",
        text(&loaded.stdout)
    );
    let unknown = modelpull().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(2));
}
