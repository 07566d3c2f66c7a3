//! The tools compared, and how each is asked to pull a data set.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::data::DataSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Modelpull,
    /// `modelpull storage-initializer SRC DEST…`, KServe's init-container contract.
    ModelpullInitializer,
    Aria2c,
    Curl,
    HfTransfer,
    Kserve,
    /// `s5cmd cp 's3://bucket/prefix/*' DEST/`: S3 only.
    S5cmd,
    /// boto3's TransferManager (`peers/boto3_pull.py`): S3 only.
    Boto3,
}

impl Tool {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "modelpull" => Tool::Modelpull,
            "modelpull-initializer" => Tool::ModelpullInitializer,
            "aria2c" => Tool::Aria2c,
            "curl" => Tool::Curl,
            "hf_transfer" => Tool::HfTransfer,
            "kserve" => Tool::Kserve,
            "s5cmd" => Tool::S5cmd,
            "boto3" => Tool::Boto3,
            other => bail!(
                "unknown tool {other} (modelpull, modelpull-initializer, aria2c, curl, \
                 hf_transfer, kserve, s5cmd, boto3)"
            ),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Tool::Modelpull => "modelpull",
            Tool::ModelpullInitializer => "modelpull-initializer",
            Tool::Aria2c => "aria2c",
            Tool::Curl => "curl",
            Tool::HfTransfer => "hf_transfer",
            Tool::Kserve => "kserve",
            Tool::S5cmd => "s5cmd",
            Tool::Boto3 => "boto3",
        }
    }

    /// How the tool appears in tables.
    pub fn title(self) -> &'static str {
        match self {
            Tool::Modelpull => "modelpull (verified)",
            Tool::ModelpullInitializer => "modelpull storage-initializer (verified)",
            Tool::Aria2c => "aria2c -x16 -s16",
            Tool::Curl => "curl",
            Tool::HfTransfer => "hf_transfer (16 connections)",
            Tool::Kserve => "KServe storage initializer",
            Tool::S5cmd => "s5cmd cp (256 workers, 5 × 50 MiB parts per file)",
            Tool::Boto3 => "boto3 TransferManager (10 threads, 8 MiB parts)",
        }
    }

    /// Whether the tool pulls from S3 only (not from a plain HTTP origin).
    pub fn s3_only(self) -> bool {
        matches!(self, Tool::S5cmd | Tool::Boto3)
    }
}

/// Everything a command line needs.
pub struct Ctx<'a> {
    pub modelpull: &'a Path,
    pub python: &'a Path,
    pub s5cmd: &'a Path,
    pub peers: &'a Path,
    pub base_url: &'a str,
    pub work: &'a Path,
}

/// The command that pulls `set` into `dest` with `tool`.
pub fn command(tool: Tool, set: &DataSet, dest: &Path, cx: &Ctx<'_>) -> Result<Vec<String>> {
    let base = format!("{}/{}", cx.base_url, set.name);
    let manifest = cx.work.join(format!("manifest-{}.json", set.name));
    std::fs::write(
        &manifest,
        serde_json::to_vec(
            &serde_json::json!({ "base": base, "files": set.files.iter().map(|f| &f.path).collect::<Vec<_>>() }),
        )?,
    )?;
    let d = dest.display().to_string();
    Ok(match tool {
        Tool::Curl => {
            let mut v = vec![
                "curl".to_string(),
                "-sS".into(),
                "--fail".into(),
                "--create-dirs".into(),
            ];
            for f in &set.files {
                v.extend([
                    "-o".into(),
                    format!("{d}/{}", f.path),
                    format!("{base}/{}", f.path),
                ]);
            }
            v
        }
        Tool::Aria2c => {
            let input = cx.work.join(format!("aria2-{}.txt", set.name));
            let mut text = String::new();
            for f in &set.files {
                text.push_str(&format!("{base}/{}\n  out={}\n", f.path, f.path));
            }
            std::fs::write(&input, text)?;
            [
                "aria2c",
                "-x16",
                "-s16",
                "-j16",
                "--file-allocation=falloc",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                "--console-log-level=warn",
                "--summary-interval=0",
                "--download-result=hide",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(["-d".into(), d, "-i".into(), input.display().to_string()])
            .collect()
        }
        Tool::HfTransfer | Tool::Kserve => {
            let script = if tool == Tool::HfTransfer {
                "hf_transfer_pull.py"
            } else {
                "kserve_pull.py"
            };
            vec![
                cx.python.display().to_string(),
                cx.peers.join(script).display().to_string(),
                manifest.display().to_string(),
                d,
            ]
        }
        Tool::Modelpull => {
            // --json: the report says how many connections the pull settled on.
            let mut v = vec![
                cx.modelpull.display().to_string(),
                "pull".into(),
                "--json".into(),
            ];
            for f in &set.files {
                v.push(format!("{base}/{}#sha256={}", f.path, f.sha256));
            }
            v.push(d);
            v
        }
        Tool::ModelpullInitializer => {
            // KServe's script calls `Storage.download(url, out_dir)` per file (see
            // kserve_pull.py); here one `SRC DEST` pair per file, DEST its folder, so both
            // tools lay the data set out alike. Pairs are pulled in order, as KServe's are.
            let mut v = vec![
                cx.modelpull.display().to_string(),
                "storage-initializer".into(),
            ];
            for f in &set.files {
                v.push(format!("{base}/{}#sha256={}", f.path, f.sha256));
                v.push(match f.path.rsplit_once('/') {
                    Some((folder, _)) => format!("{d}/{folder}"),
                    None => d.clone(),
                });
            }
            v
        }
        Tool::S5cmd | Tool::Boto3 => bail!("{} pulls from S3 only", tool.name()),
    })
}

/// Where `tool` puts a data set's file (modelpull names http sources by their last segment).
pub fn output(tool: Tool, dest: &Path, path: &str) -> PathBuf {
    match tool {
        Tool::Modelpull => dest.join(path.rsplit('/').next().unwrap_or(path)),
        _ => dest.join(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::File;

    #[test]
    fn the_initializer_gets_one_verified_pair_per_file_into_its_folder() {
        let set = DataSet {
            name: "mixed",
            title: String::new(),
            files: ["extra/00/a.json", "model.bin"]
                .into_iter()
                .map(|p| File {
                    path: p.into(),
                    size: 1,
                    sha256: "ab".into(),
                })
                .collect(),
        };
        let work = tempfile::tempdir().unwrap();
        let cx = Ctx {
            modelpull: Path::new("/bin/modelpull"),
            python: Path::new("python"),
            s5cmd: Path::new("s5cmd"),
            peers: Path::new("peers"),
            base_url: "http://127.0.0.1:1",
            work: work.path(),
        };
        let tool = Tool::parse("modelpull-initializer").unwrap();
        let argv = command(tool, &set, Path::new("/d"), &cx).unwrap();
        assert_eq!(
            argv,
            [
                "/bin/modelpull",
                "storage-initializer",
                "http://127.0.0.1:1/mixed/extra/00/a.json#sha256=ab",
                "/d/extra/00",
                "http://127.0.0.1:1/mixed/model.bin#sha256=ab",
                "/d",
            ]
        );
        assert_eq!(
            output(tool, Path::new("/d"), "extra/00/a.json"),
            Path::new("/d/extra/00/a.json")
        );
    }
}
