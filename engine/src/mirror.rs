//! Mirrors: other servers that hold a copy of the origin's files, tried before the origin.
//!
//! A mirror is a base URL: the file the manifest lists at path `P` is also at `BASE/P`. A pull
//! spreads a file's ranges over its mirrors and turns to the origin only when no mirror can
//! serve a range (each refused it, failed, or was dropped). The origin stays the one trust
//! anchor: a file is published only when its bytes match the digest and size the origin's
//! store gave, whoever sent them — so mirrors are used only for files whose expected digests
//! include a cryptographic one ([`crate::Target::vouched`]); a size or a CRC alone could be
//! matched by forged bytes. What a mirror can do wrong is bounded:
//!
//! - it never sees credentials: requests to it carry none of the target's headers, and a base
//!   URL with user info is refused;
//! - a mirror that sends each chunk's CRC32C ([`CRC32C`], asked for with [`CHUNK_SIZE`]) is
//!   caught at the first chunk that does not match it, and dropped for the rest of the pull;
//! - a file whose whole digest fails after a mirror served part of it is fetched again from the
//!   origin alone, and its mirrors are set aside meanwhile; once the origin's copy verifies,
//!   its chunks are compared with what each mirror sent: a mirror whose chunks differ is
//!   dropped, one whose chunks all matched (it was not the culprit) is asked again;
//! - a mirror caught (by a CRC or by that comparison) can be remembered across pulls
//!   ([`Distrust`]), so that a pull tried again does not ask it;
//! - a mirror that answers a range with another size or another range is dropped; one that
//!   fails (an error, a stall mid-body) loses that range to the next source, and three failures
//!   in a row drop it; one that answers nothing at all within the connect or stall timeout (cut
//!   off, or hung) is dropped at once, so that no other range waits the same timeout on it.
//!
//! Some answers are no failure: 404 or 410 (it does not have the file: the file's ranges go
//! elsewhere), 416 (it does not hold these bytes, as a peer whose own pull has not reached
//! them: the range goes elsewhere, or, when the mirror is the one that fetches the block from
//! the origin ([`OriginGate::holder`]), waits for it and asks the others only now and then),
//! 429 or 503 (busy: its tuner gives it fewer connections). An answer without bytes keeps its
//! connection for the next request.
//!
//! The two headers are the whole protocol: any HTTP server that honours `Range` is a mirror
//! (one without them is checked by the file's digest alone), and the agent's peer server sends
//! the CRCs.

use url::Url;

use crate::digest::{Algorithm, crc};
use crate::error::{Error, Result};

/// Request header: the chunk size the client checks CRCs at, in bytes.
pub const CHUNK_SIZE: &str = "x-modelpull-chunk-size";

/// Response header: the CRC32C of each chunk of the body, as 8 lowercase hex digits each,
/// comma-separated. Chunks are [`CHUNK_SIZE`] bytes counted from the file's first byte; the
/// response's range starts at a chunk boundary and the last chunk may be shorter.
pub const CRC32C: &str = "x-modelpull-crc32c";

/// Mirrors a target may have: each is a bit in a range's set of sources to avoid.
pub const MAX_MIRRORS: usize = 32;

/// Which ranges a pull with mirrors takes from the origin. Without a gate, the mirrors are
/// asked first and the origin serves what none of them can. A node group that splits the
/// origin's work between its nodes ([`Stripes`]) gives each node's pull a gate: the ranges of
/// its own share go to the origin first (nobody else fetches them), the others wait for a
/// mirror (the peer whose share they are) instead of going to the origin, unless every mirror
/// of the file is gone or the range waited [`PATIENCE`] (see there).
pub trait OriginGate: Send + Sync + std::fmt::Debug {
    /// Whether the range starting at byte `offset` of the file at manifest path `path` is this
    /// pull's to take from the origin.
    fn allows(&self, path: &str, offset: u64) -> bool;

    /// The gate decides per block of this many bytes; a multiple of `Options::range_size`, so
    /// that no range of the pull spans two blocks (and two decisions).
    fn block(&self) -> u64;

    /// The mirror (its position in the target's mirrors) that fetches the block holding byte
    /// `offset` of `path` from the origin, if the gate knows one. Ranges of the block go to it
    /// first while it has a connection to spare: it is the one mirror sure to have the bytes
    /// soonest, and sending each node's blocks from that node spreads the serving evenly.
    fn holder(&self, path: &str, offset: u64) -> Option<usize> {
        let _ = (path, offset);
        None
    }
}

/// How long a range waits for mirrors before it goes to the origin, whatever the gate says,
/// once the mirror that fetches its block ([`OriginGate::holder`]) has sent this pull nothing
/// for as long either: the gate keeps the origin's load down, it must never keep a pull from
/// ending.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// A model's files cut into blocks, dealt to `count` stripes: the gate of a node that fetches
/// from the origin the stripes it holds, each node of a group one stripe at first. Blocks of
/// one file go round the stripes in turn, starting at a stripe that depends on the file's path,
/// so every node works near the same place of every file (each node's hash cursors move) and
/// small files spread over the stripes. Which stripes a node holds changes while it pulls (a
/// stripe whose holder stopped renewing its lease is taken over).
#[derive(Debug)]
pub struct Stripes {
    block: u64,
    held: Vec<std::sync::atomic::AtomicBool>,
    /// Per stripe, the mirror that fetches it from the origin, or [`NO_HOLDER`].
    holders: Vec<std::sync::atomic::AtomicUsize>,
}

/// A stripe whose holder among the mirrors is not known.
const NO_HOLDER: usize = usize::MAX;

impl Stripes {
    /// `count` stripes (at least one) of `block`-byte blocks, none held.
    pub fn new(count: usize, block: u64) -> Self {
        Self {
            block: block.max(1),
            held: (0..count.max(1))
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            holders: (0..count.max(1))
                .map(|_| std::sync::atomic::AtomicUsize::new(NO_HOLDER))
                .collect(),
        }
    }

    /// How many stripes there are.
    pub fn count(&self) -> usize {
        self.held.len()
    }

    /// The stripe of the block holding byte `offset` of the file at `path`.
    pub fn stripe_of(&self, path: &str, offset: u64) -> usize {
        // FNV-1a: stable across processes and versions, unlike the standard hasher.
        let start = path.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (start.wrapping_add(offset / self.block) % self.held.len() as u64) as usize
    }

    /// Takes (`true`) or gives up stripe `stripe`.
    pub fn hold(&self, stripe: usize, held: bool) {
        if let Some(s) = self.held.get(stripe) {
            s.store(held, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Says which mirror (its position in the targets' mirrors) fetches stripe `stripe` from
    /// the origin; `None`: none known (see [`OriginGate::holder`]).
    pub fn set_holder(&self, stripe: usize, mirror: Option<usize>) {
        if let Some(h) = self.holders.get(stripe) {
            h.store(
                mirror.unwrap_or(NO_HOLDER),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// The stripes held now.
    pub fn held(&self) -> Vec<usize> {
        (0..self.held.len())
            .filter(|&s| self.held[s].load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }
}

impl OriginGate for Stripes {
    fn allows(&self, path: &str, offset: u64) -> bool {
        self.held[self.stripe_of(path, offset)].load(std::sync::atomic::Ordering::Relaxed)
    }

    fn block(&self) -> u64 {
        self.block
    }

    fn holder(&self, path: &str, offset: u64) -> Option<usize> {
        let h =
            self.holders[self.stripe_of(path, offset)].load(std::sync::atomic::Ordering::Relaxed);
        (h != NO_HOLDER).then_some(h)
    }
}

/// Mirror hosts caught sending bytes that contradict the origin, remembered across pulls for a
/// while: a pull that failed for another reason and is tried again does not ask a mirror that
/// lied to it, while one that merely failed (an error, a stall) is asked again. A host is
/// remembered as the pull names it, `host:port`; one the pull finds here is never asked.
#[derive(Debug)]
pub struct Distrust {
    caught: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    term: std::time::Duration,
}

impl Distrust {
    /// Remembers each host caught for `term`.
    pub fn new(term: std::time::Duration) -> Self {
        Self {
            caught: std::sync::Mutex::default(),
            term,
        }
    }

    /// Remembers `host` as caught now.
    pub fn caught(&self, host: &str) {
        self.lock()
            .insert(host.to_owned(), std::time::Instant::now());
    }

    /// Whether `host` was caught within the term.
    pub fn is_distrusted(&self, host: &str) -> bool {
        let term = self.term;
        let mut caught = self.lock();
        caught.retain(|_, at| at.elapsed() < term);
        caught.contains_key(host)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::time::Instant>> {
        self.caught
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Checks a mirror base URL given by a user: http or https, no user info, query or fragment.
pub fn parse_base(base: &str) -> Result<Url> {
    let invalid = |reason: &str| {
        Error::InvalidOption(format!("mirror `{}`: {reason}", crate::redact_str(base)))
    };
    let url = Url::parse(base).map_err(|e| invalid(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("only http:// and https:// mirrors are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials never go to a mirror; remove the user info from its URL",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "a base URL takes neither a query string nor a fragment",
        ));
    }
    Ok(url)
}

/// Where the file at manifest path `path` (`/`-separated, already checked) is on the mirror at
/// `base`: `BASE/path`, each segment percent-encoded.
pub fn url_of(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().extend(path.split('/'));
    }
    url
}

/// The CRC32C of each `chunk`-byte piece of `bytes` (the last may be shorter): what
/// [`CRC32C`] lists for a body that starts at a chunk boundary.
pub fn chunk_crcs(bytes: &[u8], chunk: usize) -> Vec<u32> {
    bytes
        .chunks(chunk.max(1))
        .map(|piece| crc::checksum(Algorithm::Crc32c, piece) as u32)
        .collect()
}

/// Formats the [`CRC32C`] header's value.
pub fn format_crcs(crcs: &[u32]) -> String {
    let mut out = String::with_capacity(crcs.len() * 9);
    for (i, crc) in crcs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{crc:08x}"));
    }
    out
}

/// Parses the [`CRC32C`] header's value; `None` when it is malformed.
pub fn parse_crcs(value: &str) -> Option<Vec<u32>> {
    value
        .split(',')
        .map(|s| {
            let s = s.trim();
            (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_host_is_distrusted_for_its_term_only() {
        let d = Distrust::new(std::time::Duration::from_millis(50));
        d.caught("10.0.0.7:9000");
        assert!(d.is_distrusted("10.0.0.7:9000"));
        assert!(!d.is_distrusted("10.0.0.8:9000"));
        std::thread::sleep(std::time::Duration::from_millis(80));
        assert!(!d.is_distrusted("10.0.0.7:9000"));
    }

    #[test]
    fn a_file_is_at_its_path_under_the_base() {
        let base = parse_base("http://peer:9000/models/abc").unwrap();
        assert_eq!(
            url_of(&base, "sub/model 1.safetensors").as_str(),
            "http://peer:9000/models/abc/sub/model%201.safetensors"
        );
        let slash = parse_base("http://peer:9000/models/abc/").unwrap();
        assert_eq!(
            url_of(&slash, "a?b#c").as_str(),
            "http://peer:9000/models/abc/a%3Fb%23c"
        );
        let root = parse_base("https://mirror.example").unwrap();
        assert_eq!(
            url_of(&root, "x.bin").as_str(),
            "https://mirror.example/x.bin"
        );
    }

    #[test]
    fn bases_that_could_carry_secrets_or_mean_nothing_are_refused() {
        for bad in [
            "http://user:secret@peer/x",
            "http://token@peer/x",
            "http://peer/x?sig=1",
            "http://peer/x#frag",
            "ftp://peer/x",
            "file:///models",
            "peer:9000/x",
        ] {
            let err = parse_base(bad).unwrap_err().to_string();
            assert!(err.contains("mirror"), "{bad}: {err}");
            assert!(!err.contains("secret"), "{bad}: {err}");
        }
    }

    #[test]
    fn stripes_deal_blocks_round_and_gate_the_held_ones() {
        let stripes = Stripes::new(4, 100);
        let of = |path: &str| {
            (0..8)
                .map(|b| stripes.stripe_of(path, b * 100 + 7))
                .collect::<Vec<_>>()
        };
        let a = of("a.bin");
        // Consecutive blocks go to consecutive stripes: every stripe gets one in four.
        for w in a.windows(2) {
            assert_eq!(w[1], (w[0] + 1) % 4);
        }
        assert_eq!(
            stripes.stripe_of("a.bin", 0),
            stripes.stripe_of("a.bin", 99)
        );
        // Files start at different stripes (some pair of these four differs).
        let starts: std::collections::BTreeSet<usize> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|p| stripes.stripe_of(p, 0))
            .collect();
        assert!(starts.len() > 1, "{starts:?}");
        assert!(!stripes.allows("a.bin", 0));
        stripes.hold(a[0], true);
        assert!(stripes.allows("a.bin", 0));
        assert!(!stripes.allows("a.bin", 100));
        assert!(stripes.allows("a.bin", 400));
        assert_eq!(stripes.held(), [a[0]]);
        stripes.hold(a[0], false);
        assert!(stripes.held().is_empty());
        assert_eq!(Stripes::new(0, 0).count(), 1);
    }

    #[test]
    fn chunk_crcs_cut_at_the_chunk_size() {
        let bytes: Vec<u8> = (0..10u8).collect();
        let crcs = chunk_crcs(&bytes, 4);
        assert_eq!(crcs.len(), 3);
        assert_eq!(crcs[2], chunk_crcs(&bytes[8..], 4)[0]);
        // The check value of CRC-32C (RFC 3720) for "123456789".
        assert_eq!(chunk_crcs(b"123456789", 64), [0xe306_9283]);
    }

    #[test]
    fn crc_lists_round_trip_and_reject_garbage() {
        let crcs = [0, 0xdead_beef, 0x0000_00ff];
        let text = format_crcs(&crcs);
        assert_eq!(text, "00000000,deadbeef,000000ff");
        assert_eq!(parse_crcs(&text).unwrap(), crcs);
        assert_eq!(parse_crcs("deadbeef").unwrap(), [0xdead_beef]);
        for bad in [
            "",
            "dead",
            "deadbeef,",
            "xyzxyzxy",
            "deadbeef;00000000",
            "+eadbeef",
        ] {
            assert!(parse_crcs(bad).is_none(), "{bad}");
        }
    }
}
