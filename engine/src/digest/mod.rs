//! Digests: which algorithms a store can vouch for, and how modelpull computes them while the
//! bytes stream past, without reading a file back.
//!
//! Two families behave differently. Cryptographic digests (sha256, sha1, md5) must see the bytes
//! in order, so each file keeps a cursor ([`ordered`]). CRCs can be computed per chunk in any
//! order and combined at the end ([`crc`]).

pub mod crc;
pub mod ordered;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A digest algorithm modelpull can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// SHA-256, the Hub's LFS oid and S3's `SHA256` checksum.
    Sha256,
    /// SHA-1, the Hub's git blob id for small files.
    Sha1,
    /// MD5, GCS's `md5Hash` and a single-part S3 ETag.
    Md5,
    /// Git's blob id: sha1 of `blob <size>\0` followed by the content (the Hugging Face
    /// Hub's `oid` for files not in LFS).
    #[serde(rename = "git-sha1")]
    GitSha1,
    /// CRC-32 (ISO-HDLC), S3's `CRC32`.
    Crc32,
    /// CRC-32C (Castagnoli), GCS's `crc32c` and S3's `CRC32C`.
    Crc32c,
    /// CRC-64/NVME, S3's `CRC64NVME`.
    Crc64nvme,
}

impl Algorithm {
    /// Every algorithm, in the order their names are tried when parsing.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::Sha256,
        Algorithm::Sha1,
        Algorithm::Md5,
        Algorithm::GitSha1,
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Crc64nvme,
    ];

    /// The algorithm's lower-case name, as in `#sha256=` fragments and reports.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha1 => "sha1",
            Algorithm::Md5 => "md5",
            Algorithm::GitSha1 => "git-sha1",
            Algorithm::Crc32 => "crc32",
            Algorithm::Crc32c => "crc32c",
            Algorithm::Crc64nvme => "crc64nvme",
        }
    }

    /// Length of the digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha1 | Algorithm::GitSha1 => 20,
            Algorithm::Md5 => 16,
            Algorithm::Crc32 | Algorithm::Crc32c => 4,
            Algorithm::Crc64nvme => 8,
        }
    }

    /// Whether the algorithm needs the bytes in file order.
    pub fn is_ordered(self) -> bool {
        matches!(
            self,
            Algorithm::Sha256 | Algorithm::Sha1 | Algorithm::Md5 | Algorithm::GitSha1
        )
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| DigestError::UnknownAlgorithm(s.to_owned()))
    }
}

/// A digest value of a known algorithm.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Digest {
    /// Which algorithm computed the value.
    pub algorithm: Algorithm,
    /// The raw digest bytes (hex in JSON).
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
}

impl Digest {
    /// Parses `HEX` for `algorithm`, checking the length.
    pub fn from_hex(algorithm: Algorithm, hex_value: &str) -> Result<Self, DigestError> {
        let value = hex::decode(hex_value.trim()).map_err(|_| DigestError::NotHex {
            algorithm,
            value: hex_value.to_owned(),
        })?;
        if value.len() != algorithm.digest_len() {
            return Err(DigestError::WrongLength {
                algorithm,
                expected: algorithm.digest_len() * 2,
                actual: hex_value.trim().len(),
            });
        }
        Ok(Self { algorithm, value })
    }

    /// Parses `ALGO=HEX`, the form used in URL fragments (`#sha256=…`) and on the command line.
    pub fn parse_pair(s: &str) -> Result<Self, DigestError> {
        let (algo, value) = s
            .split_once('=')
            .ok_or_else(|| DigestError::Malformed(s.to_owned()))?;
        Self::from_hex(algo.parse()?, value)
    }

    /// A CRC's value as a digest (big-endian bytes, as stores publish them).
    pub fn from_crc(algorithm: Algorithm, crc: u64) -> Self {
        let value = match algorithm.digest_len() {
            4 => (crc as u32).to_be_bytes().to_vec(),
            _ => crc.to_be_bytes().to_vec(),
        };
        Self { algorithm, value }
    }

    /// The value in lower-case hex.
    pub fn hex(&self) -> String {
        hex::encode(&self.value)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a digest given by a user or a store could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// An algorithm name the engine does not know.
    #[error("unknown digest algorithm `{0}` (use sha256, sha1, md5, crc32, crc32c or crc64nvme)")]
    UnknownAlgorithm(String),
    /// A value that is not hexadecimal.
    #[error("{algorithm} digest `{value}` is not hexadecimal")]
    NotHex {
        /// The algorithm named.
        algorithm: Algorithm,
        /// The value given.
        value: String,
    },
    /// A value of the wrong length for its algorithm.
    #[error("{algorithm} digest must be {expected} hex digits, got {actual}")]
    WrongLength {
        /// The algorithm named.
        algorithm: Algorithm,
        /// Hex digits the algorithm gives.
        expected: usize,
        /// Hex digits given.
        actual: usize,
    },
    /// Text that is not `ALGORITHM=HEX`.
    #[error("digest `{0}` is not of the form ALGORITHM=HEX")]
    Malformed(String),
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs() {
        let d = Digest::parse_pair(&format!("sha256={}", "ab".repeat(32))).unwrap();
        assert_eq!(d.algorithm, Algorithm::Sha256);
        assert_eq!(d.value, vec![0xab; 32]);
        assert_eq!(
            Digest::parse_pair("CRC32C=0a0b0c0d").unwrap().value,
            vec![10, 11, 12, 13]
        );
    }

    #[test]
    fn rejects_bad_digests() {
        assert_eq!(
            Digest::parse_pair("sha256=abcd"),
            Err(DigestError::WrongLength {
                algorithm: Algorithm::Sha256,
                expected: 64,
                actual: 4
            })
        );
        assert!(matches!(
            Digest::parse_pair("sha3=00"),
            Err(DigestError::UnknownAlgorithm(_))
        ));
        assert!(matches!(
            Digest::parse_pair("md5=zz"),
            Err(DigestError::NotHex { .. })
        ));
        assert!(matches!(
            Digest::parse_pair("nothing"),
            Err(DigestError::Malformed(_))
        ));
    }

    #[test]
    fn crc_values_are_big_endian() {
        assert_eq!(
            Digest::from_crc(Algorithm::Crc32c, 0xe3069283).hex(),
            "e3069283"
        );
        assert_eq!(
            Digest::from_crc(Algorithm::Crc64nvme, 1).hex(),
            "0000000000000001"
        );
    }
}
