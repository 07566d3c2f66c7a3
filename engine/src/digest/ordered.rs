//! The in-order digests (sha256, sha1, md5) of one file, with state that can be saved.
//!
//! The journal stores the serialised state at the hash cursor, so a resumed pull continues the
//! digest instead of reading the finished part of the file back.

use digest::Digest as _;
use digest::common::hazmat::SerializableState;
use serde::{Deserialize, Serialize};

use super::{Algorithm, Digest};

/// One running digest.
#[derive(Clone)]
enum Running {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
    GitSha1(sha1::Sha1),
}

impl Running {
    /// `size` is the file's size, which git's blob id hashes first.
    fn new(a: Algorithm, size: u64) -> Self {
        match a {
            Algorithm::Sha256 => Running::Sha256(sha2::Sha256::new()),
            Algorithm::Sha1 => Running::Sha1(sha1::Sha1::new()),
            Algorithm::Md5 => Running::Md5(md5::Md5::new()),
            Algorithm::GitSha1 => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Running::GitSha1(h)
            }
            other => unreachable!("{other} is not an ordered digest"),
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            Running::Sha256(_) => Algorithm::Sha256,
            Running::Sha1(_) => Algorithm::Sha1,
            Running::Md5(_) => Algorithm::Md5,
            Running::GitSha1(_) => Algorithm::GitSha1,
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Running::Sha256(h) => h.update(data),
            Running::Sha1(h) => h.update(data),
            Running::Md5(h) => h.update(data),
            Running::GitSha1(h) => h.update(data),
        }
    }

    fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        let value = match self {
            Running::Sha256(h) => h.finalize().to_vec(),
            Running::Sha1(h) => h.finalize().to_vec(),
            Running::Md5(h) => h.finalize().to_vec(),
            Running::GitSha1(h) => h.finalize().to_vec(),
        };
        Digest { algorithm, value }
    }

    fn save(&self) -> Vec<u8> {
        match self {
            Running::Sha256(h) => h.serialize().to_vec(),
            Running::Sha1(h) => h.serialize().to_vec(),
            Running::Md5(h) => h.serialize().to_vec(),
            Running::GitSha1(h) => h.serialize().to_vec(),
        }
    }

    fn load(a: Algorithm, state: &[u8]) -> Option<Self> {
        Some(match a {
            Algorithm::Sha256 => {
                Running::Sha256(sha2::Sha256::deserialize(state.try_into().ok()?).ok()?)
            }
            Algorithm::Sha1 => Running::Sha1(sha1::Sha1::deserialize(state.try_into().ok()?).ok()?),
            Algorithm::Md5 => Running::Md5(md5::Md5::deserialize(state.try_into().ok()?).ok()?),
            Algorithm::GitSha1 => {
                Running::GitSha1(sha1::Sha1::deserialize(state.try_into().ok()?).ok()?)
            }
            _ => return None,
        })
    }
}

/// The ordered digests of one file and how many bytes they have seen.
#[derive(Clone)]
pub struct OrderedHashers {
    position: u64,
    running: Vec<Running>,
}

/// The saved form of [`OrderedHashers`], as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHashers {
    pub position: u64,
    pub states: Vec<(Algorithm, String)>,
}

impl OrderedHashers {
    /// Starts the digests in `algorithms` that need order (others are ignored) for a file of
    /// `size` bytes.
    pub fn new(algorithms: impl IntoIterator<Item = Algorithm>, size: u64) -> Self {
        let mut algs: Vec<Algorithm> = algorithms.into_iter().filter(|a| a.is_ordered()).collect();
        algs.sort();
        algs.dedup();
        Self {
            position: 0,
            running: algs.into_iter().map(|a| Running::new(a, size)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Bytes hashed so far: the file offset of the cursor.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn update(&mut self, data: &[u8]) {
        for r in &mut self.running {
            r.update(data);
        }
        self.position += data.len() as u64;
    }

    pub fn finish(self) -> Vec<Digest> {
        self.running.into_iter().map(Running::finish).collect()
    }

    pub fn save(&self) -> SavedHashers {
        SavedHashers {
            position: self.position,
            states: self
                .running
                .iter()
                .map(|r| (r.algorithm(), hex::encode(r.save())))
                .collect(),
        }
    }

    /// Restores saved digests; `None` when the saved states do not match `algorithms` or are
    /// damaged, in which case the caller starts the file's digests over.
    pub fn load(
        saved: &SavedHashers,
        algorithms: impl IntoIterator<Item = Algorithm>,
    ) -> Option<Self> {
        let fresh = Self::new(algorithms, 0);
        let wanted: Vec<Algorithm> = fresh.running.iter().map(Running::algorithm).collect();
        let got: Vec<Algorithm> = saved.states.iter().map(|(a, _)| *a).collect();
        if wanted != got {
            return None;
        }
        let running = saved
            .states
            .iter()
            .map(|(a, state)| Running::load(*a, &hex::decode(state).ok()?))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            position: saved.position,
            running,
        })
    }
}

impl std::fmt::Debug for OrderedHashers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedHashers")
            .field("position", &self.position)
            .field(
                "algorithms",
                &self
                    .running
                    .iter()
                    .map(Running::algorithm)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Algorithm; 4] = [
        Algorithm::Sha256,
        Algorithm::Sha1,
        Algorithm::Md5,
        Algorithm::GitSha1,
    ];

    #[test]
    fn known_digests() {
        let mut h = OrderedHashers::new(ALL, 3);
        h.update(b"abc");
        let d: Vec<String> = h.finish().iter().map(Digest::hex).collect();
        assert_eq!(
            d,
            [
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "a9993e364706816aba3e25717850c26c9cd0d89d",
                "900150983cd24fb0d6963f7d28e17f72",
                // `printf abc | git hash-object --stdin`
                "f2ba8f84ab5c1bce84a7b441cb1959cfc7093b7f",
            ]
        );
    }

    #[test]
    fn save_and_load_continue_the_digest() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut whole = OrderedHashers::new(ALL, data.len() as u64);
        whole.update(&data);

        let mut first = OrderedHashers::new(ALL, data.len() as u64);
        first.update(&data[..4321]);
        let saved = first.save();
        let json = serde_json::to_string(&saved).unwrap();
        let mut resumed = OrderedHashers::load(&serde_json::from_str(&json).unwrap(), ALL).unwrap();
        assert_eq!(resumed.position(), 4321);
        resumed.update(&data[4321..]);
        assert_eq!(resumed.finish(), whole.finish());
    }

    #[test]
    fn load_refuses_other_algorithms_or_damage() {
        let saved = OrderedHashers::new([Algorithm::Sha256], 0).save();
        assert!(OrderedHashers::load(&saved, [Algorithm::Md5]).is_none());
        let mut damaged = saved.clone();
        damaged.states[0].1.truncate(10);
        assert!(OrderedHashers::load(&damaged, [Algorithm::Sha256]).is_none());
        assert!(OrderedHashers::load(&saved, [Algorithm::Sha256, Algorithm::Crc32c]).is_some());
    }
}
