//! Synthetic model files: pseudo-random bytes that do not compress, written fast, with their
//! sha256 computed as they are written. `modelpull demo` and the benchmark harness generate
//! what they serve with it.

use std::io::Write;
use std::path::Path;

use sha2::Digest as _;

/// Writes `len` pseudo-random bytes (xorshift64 from `seed`) to `path` and returns their
/// sha256 in hex.
pub fn write_random(path: &Path, seed: u64, len: u64) -> std::io::Result<String> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut hasher = sha2::Sha256::new();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    f.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    #[test]
    fn the_returned_digest_is_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let sha = super::write_random(&path, 7, (3 << 20) + 5).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), (3 << 20) + 5);
        assert_eq!(sha, hex::encode(sha2::Sha256::digest(&bytes)));
        let other = super::write_random(&dir.path().join("g"), 8, 64).unwrap();
        assert_ne!(
            &bytes[..64],
            &std::fs::read(dir.path().join("g")).unwrap()[..]
        );
        assert_ne!(sha, other);
    }
}
