//! Micro-benchmarks of the engine's per-byte and per-chunk work, each with its throughput set
//! so results read in bytes per second (or manifests per second for planning).
//!
//! `cargo bench -p benches` runs them fully; `scripts/test.sh` runs each once in test mode
//! (`cargo test --benches`) so they cannot rot.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use modelpull::buf::AlignedBuf;
use modelpull::digest::ordered::OrderedHashers;
use modelpull::digest::{Algorithm, crc};
use modelpull::runtime::{Driver, block_on};

const CHUNK: usize = 4 << 20;
const CHUNKS: usize = 16;

/// sha256 in file order over chunks that arrive out of order, through a reorder window as the
/// engine's hash cursor does.
fn hash_window(c: &mut Criterion) {
    let chunks: Vec<Vec<u8>> = (0..CHUNKS).map(|i| vec![i as u8; CHUNK]).collect();
    // Arrival order: pairs swapped, every fourth chunk late.
    let mut order: Vec<usize> = (0..CHUNKS).collect();
    for pair in order.chunks_mut(2) {
        pair.reverse();
    }
    order.rotate_left(3);
    let mut g = c.benchmark_group("hash_window");
    g.throughput(Throughput::Bytes((CHUNK * CHUNKS) as u64));
    g.bench_function("sha256_out_of_order_64MiB", |b| {
        b.iter(|| {
            let mut h = OrderedHashers::new([Algorithm::Sha256], 0);
            let mut window: BTreeMap<usize, &[u8]> = BTreeMap::new();
            let mut cursor = 0;
            for &i in &order {
                window.insert(i, &chunks[i]);
                while let Some(data) = window.remove(&cursor) {
                    h.update(data);
                    cursor += 1;
                }
            }
            black_box(h.finish())
        })
    });
    g.finish();
}

/// Per-chunk CRCs and their combination into the file's CRC.
fn combined_crcs(c: &mut Criterion) {
    let data = vec![0x5au8; CHUNK * CHUNKS];
    let mut g = c.benchmark_group("crc");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for alg in [Algorithm::Crc32c, Algorithm::Crc64nvme, Algorithm::Crc32] {
        g.bench_function(format!("{alg}_per_chunk_and_combine_64MiB"), |b| {
            b.iter(|| {
                let parts: Vec<(u64, u64)> = data
                    .chunks(CHUNK)
                    .map(|ch| (crc::checksum(alg, ch), ch.len() as u64))
                    .collect();
                black_box(crc::combine(alg, parts))
            })
        });
    }
    g.finish();
}

/// Parsing a typical object-store 206 response head.
fn head_parsing(c: &mut Criterion) {
    let head = b"HTTP/1.1 206 Partial Content\r\nServer: AmazonS3\r\nDate: Fri, 27 Nov 2026 10:00:00 GMT\r\n\
Last-Modified: Thu, 26 Nov 2026 09:00:00 GMT\r\nETag: \"9b2cf535f27731c974343645a3985328\"\r\n\
x-amz-request-id: 4442587FB7D0A2F9\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n\
Content-Range: bytes 16777216-33554431/4294967296\r\nContent-Length: 16777216\r\n\r\n";
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Bytes(head.len() as u64));
    g.bench_function("response_head_206", |b| {
        b.iter(|| black_box(modelpull::http::head::parse(black_box(head)).unwrap()))
    });
    g.finish();
}

/// Planning ranges for a 1 TB file and for a 200-file model.
fn range_planning(c: &mut Criterion) {
    let chunk: u64 = 4 << 20;
    let step = 4;
    let mut g = c.benchmark_group("plan");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_1TB_file", |b| {
        let chunks = (1u64 << 40).div_ceil(chunk);
        b.iter(|| black_box(modelpull::pull::plan::ranges(0, chunks, step, |_| false)))
    });
    g.bench_function("200_files_4_shards", |b| {
        let sizes: Vec<u64> = (0..200)
            .map(|i| 1000 + i * 37)
            .chain([5u64 << 30; 4])
            .collect();
        b.iter(|| {
            let n: usize = sizes
                .iter()
                .map(|s| modelpull::pull::plan::ranges(0, s.div_ceil(chunk), step, |_| false).len())
                .sum();
            black_box(n)
        })
    });
    g.finish();
}

/// The aligned chunk writer against a file in tmpfs (buffered fallback there) and on the
/// temporary directory's filesystem (O_DIRECT where it allows), on each driver.
fn aligned_writer(c: &mut Criterion) {
    let mut g = c.benchmark_group("writer");
    g.throughput(Throughput::Bytes((CHUNK * CHUNKS) as u64));
    let dirs: Vec<(&str, tempfile::TempDir)> = [
        ("tmpfs", "/dev/shm"),
        ("tmpdir", std::env::temp_dir().to_str().unwrap_or("/tmp")),
    ]
    .into_iter()
    .filter_map(|(name, base)| tempfile::tempdir_in(base).ok().map(|d| (name, d)))
    .collect();
    for driver in modelpull::runtime::test_drivers() {
        for (name, dir) in &dirs {
            let path = dir.path().join(format!("w-{}", driver.name()));
            g.bench_function(format!("{}_{name}_64MiB", driver.name()), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += write_once(driver, &path);
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

fn write_once(driver: Driver, path: &std::path::Path) -> Duration {
    let _ = std::fs::remove_file(path);
    let direct = modelpull::disk::part::create(path, Some((CHUNK * CHUNKS) as u64)).unwrap();
    block_on(driver, async {
        let f = modelpull::disk::part::open(path, direct).unwrap();
        let mut buf = AlignedBuf::new(CHUNK);
        buf.full_mut().fill(0xa5);
        buf.set_len(CHUNK);
        let started = Instant::now();
        for i in 0..CHUNKS {
            let (res, b) =
                modelpull::disk::part::write_chunk(&f, buf, (i * CHUNK) as u64, direct).await;
            res.unwrap();
            buf = b;
        }
        f.sync_data().await.unwrap();
        started.elapsed()
    })
    .unwrap()
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = hash_window, combined_crcs, head_parsing, range_planning, aligned_writer
}
criterion_main!(benches);
