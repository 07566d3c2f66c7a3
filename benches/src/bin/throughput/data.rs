//! The data sets: generated once into the origin directory (tmpfs), each file's sha256 kept
//! in a sidecar so later runs reuse them.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// One file of a data set.
#[derive(Debug, Clone)]
pub struct File {
    /// Path relative to the data set's directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// A data set: a directory of files served by the origin.
#[derive(Debug, Clone)]
pub struct DataSet {
    pub name: &'static str,
    pub title: String,
    pub files: Vec<File>,
}

impl DataSet {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

const MIB: u64 = 1 << 20;

/// The file layouts of each data set, by name.
fn layout(name: &str, big: u64) -> Vec<(String, u64)> {
    match name {
        "file" => vec![("model.bin".into(), big)],
        // Pulled through each model store (Hub fixture, Garage, GCS emulator); the fixture
        // and the emulator keep it in memory: smaller, with the small files every model has.
        "store" => {
            let mut v: Vec<(String, u64)> = (0..20)
                .map(|i| {
                    let size = 1024 + (i as u64 * 7919 * 131) % (3 * MIB);
                    (format!("extra/file-{i:02}.json"), size)
                })
                .collect();
            v.extend((1..=4).map(|i| (format!("model-{i:05}-of-00004.safetensors"), 256 * MIB)));
            v
        }
        "shards" => (1..=8)
            .map(|i| (format!("model-{i:05}-of-00008.safetensors"), 512 * MIB))
            .collect(),
        _ => {
            let mut v: Vec<(String, u64)> = (0..200)
                .map(|i| {
                    // Configs, tokenizers, vocabularies: 1 KiB to about 3 MiB.
                    let size = 1024 + (i as u64 * 7919 * 131) % (3 * MIB);
                    (format!("extra/{:02}/file-{i:03}.json", i % 10), size)
                })
                .collect();
            v.extend((1..=4).map(|i| (format!("model-{i:05}-of-00004.safetensors"), 512 * MIB)));
            v
        }
    }
}

/// Generates (or reuses) data set `name` under `root/name`.
pub fn prepare(root: &Path, name: &'static str, big: u64) -> Result<DataSet> {
    let dir = root.join(name);
    let mut files = Vec::new();
    for (seed, (path, size)) in layout(name, big).into_iter().enumerate() {
        let full = dir.join(&path);
        let sidecar = sidecar(&full);
        let sha = match (std::fs::metadata(&full), std::fs::read_to_string(&sidecar)) {
            (Ok(m), Ok(sha)) if m.len() == size => sha.trim().to_owned(),
            _ => {
                std::fs::create_dir_all(full.parent().expect("a parent"))?;
                let sha = modelpull_origin::synthetic::write_random(&full, seed as u64 + 1, size)?;
                std::fs::write(&sidecar, &sha)?;
                sha
            }
        };
        files.push(File {
            path,
            size,
            sha256: sha,
        });
    }
    let title = match name {
        "file" => format!("one {} file", crate::human(big)),
        "shards" => "8 × 512 MiB shards".to_owned(),
        "store" => "20 small files + 4 × 256 MiB shards".to_owned(),
        _ => "200 small files + 4 × 512 MiB shards".to_owned(),
    };
    Ok(DataSet { name, title, files })
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}
