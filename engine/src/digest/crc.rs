//! CRCs computed per chunk, in whatever order chunks arrive, and combined at the end.
//!
//! A file's CRC is the ordered combination of its chunks' CRCs (`crc(A‖B)` from `crc(A)`,
//! `crc(B)` and `len(B)`), so parallel ranges never wait for each other. Every chunk also gets a
//! crc32c, whatever the store offers: the resume journal records it, and on restart a chunk
//! written after the last checkpoint is read back and compared before it is trusted.

use crc_fast::CrcAlgorithm;

use super::{Algorithm, Digest};

fn crc_algorithm(a: Algorithm) -> Option<CrcAlgorithm> {
    match a {
        Algorithm::Crc32 => Some(CrcAlgorithm::Crc32IsoHdlc),
        Algorithm::Crc32c => Some(CrcAlgorithm::Crc32Iscsi),
        Algorithm::Crc64nvme => Some(CrcAlgorithm::Crc64Nvme),
        _ => None,
    }
}

/// CRC of one buffer.
pub fn checksum(a: Algorithm, data: &[u8]) -> u64 {
    crc_fast::checksum(crc_algorithm(a).expect("a CRC algorithm"), data)
}

/// The CRCs of one chunk, updated slice by slice as its bytes arrive from the socket, while
/// they are still in the CPU's cache (one pass over a whole chunk afterwards reads it back
/// from memory).
#[derive(Debug)]
pub struct Running(Vec<crc_fast::Digest>);

impl Running {
    pub fn new(algorithms: &[Algorithm]) -> Self {
        Running(
            algorithms
                .iter()
                .map(|&a| crc_fast::Digest::new(crc_algorithm(a).expect("a CRC algorithm")))
                .collect(),
        )
    }

    pub fn update(&mut self, data: &[u8]) {
        for d in &mut self.0 {
            d.update(data);
        }
    }

    /// The CRCs, in the order of the algorithms given to [`Running::new`].
    pub fn finish(&self) -> Vec<u64> {
        self.0.iter().map(crc_fast::Digest::finalize).collect()
    }
}

/// The crc32c every chunk carries in the journal.
pub fn chunk_crc32c(data: &[u8]) -> u32 {
    checksum(Algorithm::Crc32c, data) as u32
}

/// Combines per-chunk CRCs, given in file order with their lengths, into the file's CRC.
pub fn combine(a: Algorithm, parts: impl IntoIterator<Item = (u64, u64)>) -> Digest {
    let alg = crc_algorithm(a).expect("a CRC algorithm");
    let mut acc: Option<u64> = None;
    for (crc, len) in parts {
        acc = Some(match acc {
            None => crc,
            Some(prev) => crc_fast::checksum_combine(alg, prev, crc, len),
        });
    }
    Digest::from_crc(a, acc.unwrap_or_else(|| crc_fast::checksum(alg, &[])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The standard check value over "123456789" for each CRC.
        assert_eq!(checksum(Algorithm::Crc32, b"123456789"), 0xcbf43926);
        assert_eq!(checksum(Algorithm::Crc32c, b"123456789"), 0xe3069283);
        assert_eq!(
            checksum(Algorithm::Crc64nvme, b"123456789"),
            0xae8b14860a799888
        );
    }

    #[test]
    fn combined_equals_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for a in [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64nvme] {
            let whole = Digest::from_crc(a, checksum(a, &data));
            let parts = data
                .chunks(4096 * 3 + 5)
                .map(|c| (checksum(a, c), c.len() as u64));
            assert_eq!(combine(a, parts), whole, "{a}");
            assert_eq!(combine(a, []), Digest::from_crc(a, checksum(a, &[])));
        }
    }

    #[test]
    fn running_over_slices_equals_one_pass() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let algorithms = [Algorithm::Crc32c, Algorithm::Crc64nvme, Algorithm::Crc32];
        let mut running = Running::new(&algorithms);
        for slice in data.chunks(1000 * 7 + 3) {
            running.update(slice);
        }
        let one_pass: Vec<u64> = algorithms.iter().map(|&a| checksum(a, &data)).collect();
        assert_eq!(running.finish(), one_pass);
        assert_eq!(
            Running::new(&algorithms).finish(),
            algorithms.map(|a| checksum(a, &[]))
        );
    }
}
