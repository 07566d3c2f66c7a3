//! Mirrors: ranges go to them first, the origin answers only what they cannot, credentials
//! never reach them, and nothing they send is published unless the origin's digest agrees.
//! Each mirror is a second test origin serving the same files (it sends chunk CRCs when asked,
//! as the agent's peer server does, unless told to omit them). With an origin gate, a node's
//! own share goes to the origin and the rest waits for the mirrors. A file that fails its
//! digest catches only the mirror whose chunks differ from the origin's.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use modelpull::mirror::{Distrust, OriginGate, Stripes};
use modelpull::report::HostConnections;
use modelpull::runtime::Driver;
use modelpull::target::{Auth, StaticHeaders};
use modelpull::{Context, Options, PullRequest, Report, Target};
use modelpull_testkit::origin::Faults;
use modelpull_testkit::*;

const KIB: usize = 1024;

/// An origin and a mirror serving the same `files`.
fn origin_and_mirror(files: &[(&str, &[u8])]) -> (Fixture, Fixture) {
    (Fixture::new(files), Fixture::new(files))
}

/// Targets of `names` on `fx`'s origin with their sha256, each also on every base in `mirrors`.
fn targets(fx: &Fixture, names: &[&str], mirrors: &[url::Url]) -> Vec<Target> {
    names
        .iter()
        .map(|name| {
            let mut t = fx.target(name, true);
            // Where the manifest puts it, as a store's listing would.
            (*name).clone_into(&mut t.path);
            t.add_mirrors(mirrors);
            t
        })
        .collect()
}

fn base(fx: &Fixture) -> url::Url {
    modelpull::mirror::parse_base(&fx.origin.url("")).unwrap()
}

fn pull_with(targets: Vec<Target>, dest: &std::path::Path, opts: &Options) -> (Report, Context) {
    let cx = Context::default();
    let request = PullRequest {
        targets,
        dest: dest.to_owned(),
        unpack: false,
        adopt: false,
        sources: Vec::new(),
    };
    let report = modelpull::pull(&request, opts, &cx).unwrap_or_else(|e| panic!("pull: {e}"));
    (report, cx)
}

fn mirror_host(report: &Report) -> &HostConnections {
    report
        .connections
        .iter()
        .find(|h| h.mirror)
        .unwrap_or_else(|| panic!("no mirror in {:?}", report.connections))
}

fn origin_host(report: &Report) -> &HostConnections {
    report
        .connections
        .iter()
        .find(|h| !h.mirror)
        .unwrap_or_else(|| panic!("no origin in {:?}", report.connections))
}

/// A mirror on a port nothing listens on.
fn down_mirror() -> url::Url {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    modelpull::mirror::parse_base(&base).unwrap()
}

fn body_bytes(fx: &Fixture) -> u64 {
    fx.origin.stats().body_bytes.load(Relaxed)
}

#[test]
fn mirrors_carry_the_bytes_and_the_origin_answers_only_probes() {
    let big = data(1, 1536 * KIB + 77);
    let small = data(2, 300 * KIB);
    let files: &[(&str, &[u8])] = &[("big.bin", &big), ("dir/small.bin", &small), ("empty", b"")];
    each_driver(|driver| {
        let (fx, mirror) = origin_and_mirror(files);
        let dest = fx.dest("m");
        let names = ["big.bin", "dir/small.bin", "empty"];
        let (report, cx) = pull_with(
            targets(&fx, &names, &[base(&mirror)]),
            &dest,
            &options(driver),
        );
        for (name, content) in files {
            assert_file(&dest, name, content);
        }
        // One byte per non-empty file: the probe that gives size and validator.
        assert_eq!(
            body_bytes(&fx),
            2,
            "origin sent {:?}",
            fx.origin.stats().served
        );
        let total = (big.len() + small.len()) as u64;
        assert_eq!(mirror_host(&report).bytes, total);
        assert!(!mirror_host(&report).dropped);
        // The probes' byte is sent but not read.
        assert_eq!(origin_host(&report).bytes, 0);
        assert_eq!(cx.metrics.mirror_bytes.get(), total);
        assert_eq!(cx.metrics.verify_failures.get(), 0);
    });
}

#[test]
fn credentials_go_to_the_origin_only() {
    let content = data(3, 700 * KIB);
    let (fx, mirror) = origin_and_mirror(&[("model.bin", &content)]);
    let mut opts = options(Driver::Epoll);
    opts.headers = vec![("Authorization".into(), "Bearer caller-secret".into())];
    let mut target = targets(&fx, &["model.bin"], &[base(&mirror)]).remove(0);
    target.auth = Auth::new(StaticHeaders(vec![(
        "X-Store-Token".into(),
        "store-secret".into(),
    )]));
    let dest = fx.dest("m");
    pull_with(vec![target], &dest, &opts);
    assert_file(&dest, "model.bin", &content);
    let home = fx.origin.requests_seen();
    assert!(!home.is_empty());
    assert!(
        home.iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer caller-secret"))
    );
    let seen = mirror.origin.requests_seen();
    assert!(!seen.is_empty(), "the mirror was never asked");
    assert!(
        seen.iter().all(|(_, a)| a.is_none()),
        "credentials reached the mirror: {seen:?}"
    );
}

#[test]
fn s3_signatures_and_session_tokens_never_reach_a_mirror() {
    let Some(venv) = modelpull_testkit::servers::venv() else {
        return;
    };
    let server = modelpull_testkit::servers::moto(&venv, true);
    let content = data(16, 3 * 1024 * KIB);
    let env = modelpull_testkit::stores::session_bucket(
        &venv,
        &server,
        "m/w.bin",
        &content,
        serde_json::json!({"checksum": "SHA256"}),
    );
    let dir = tempfile::tempdir().unwrap();
    // A mirror of the bucket's layout: the file at its manifest path.
    let mirror = Fixture::new(&[("w.bin", &content)]);
    let opts = store_options();
    let control = modelpull::store::Control::new(&opts.client()).unwrap();
    let mut manifest = modelpull::store::resolve("s3://models/m", &env, &control).unwrap();
    for t in &mut manifest.files {
        assert!(
            t.vouched(),
            "S3's sha256 is a digest to check a mirror's bytes by"
        );
        t.add_mirrors(&[base(&mirror)]);
    }
    let dest = dir.path().join("out");
    let (report, _) = pull_with(manifest.files, &dest, &opts);
    assert_file(&dest, "w.bin", &content);
    assert!(mirror_host(&report).bytes > 0, "{:?}", report.connections);
    let names = mirror.origin.header_names_seen();
    let leaked: Vec<&String> = names
        .iter()
        .filter(|n| *n == "authorization" || n.starts_with("x-amz-") || *n == "cookie")
        .collect();
    assert!(
        leaked.is_empty(),
        "the mirror was sent {leaked:?}; it saw {names:?}"
    );
}

#[test]
fn a_chunk_that_fails_the_mirrors_own_crc_drops_it_at_that_chunk() {
    let content = data(4, 2 * 1024 * KIB);
    let (fx, mirror) = origin_and_mirror(&[("model.bin", &content)]);
    mirror.origin.set_faults(Faults {
        corrupt_offset: Some(1024 * KIB as u64 + 5),
        corrupt_times: u32::MAX,
        ..Faults::default()
    });
    let dest = fx.dest("m");
    let opts = Options {
        verify_attempts: 1,
        ..options(Driver::Epoll)
    };
    let (report, cx) = pull_with(targets(&fx, &["model.bin"], &[base(&mirror)]), &dest, &opts);
    assert_file(&dest, "model.bin", &content);
    assert!(mirror_host(&report).dropped, "{:?}", report.connections);
    // Caught as it arrived: the file never failed verification, and what the mirror sent
    // before the bad chunk was kept.
    assert_eq!(cx.metrics.verify_failures.get(), 0);
    assert_eq!(cx.metrics.mirrors_dropped.get(), 1);
    assert!(
        body_bytes(&fx) < content.len() as u64,
        "the origin sent the whole file"
    );
}

#[test]
fn a_file_whose_digest_fails_after_a_mirror_served_it_comes_again_from_the_origin_alone() {
    let content = data(5, 1024 * KIB + 3);
    let (fx, mirror) = origin_and_mirror(&[("model.bin", &content)]);
    // A plain server sends no CRCs: only the file's digest can tell.
    mirror.origin.set_faults(Faults {
        corrupt_offset: Some(300 * KIB as u64),
        corrupt_times: u32::MAX,
        omit_crcs: true,
        ..Faults::default()
    });
    let dest = fx.dest("m");
    // One download from the origin is all it gets: the mirror's failure does not spend it.
    let opts = Options {
        verify_attempts: 1,
        ..options(Driver::Epoll)
    };
    let (report, cx) = pull_with(targets(&fx, &["model.bin"], &[base(&mirror)]), &dest, &opts);
    assert_file(&dest, "model.bin", &content);
    assert_eq!(cx.metrics.verify_failures.get(), 1);
    assert!(mirror_host(&report).dropped);
    let sent = fx.origin.stats().served.lock().unwrap().clone();
    let from_origin: u64 = sent.iter().map(|(_, _, n)| n).sum();
    assert!(
        from_origin > content.len() as u64,
        "the origin sent {from_origin} bytes: {sent:?}"
    );
}

/// Three stripes of `block`-byte blocks, as in a node group of three: this node holds the
/// stripe of `model.bin`'s first byte, mirrors 0 and 1 fetch the next two. Returns the three
/// in that order.
fn three_stripes(block: u64) -> (Arc<Stripes>, [usize; 3]) {
    let stripes = Arc::new(Stripes::new(3, block));
    let first = stripes.stripe_of("model.bin", 0);
    let order = [first, (first + 1) % 3, (first + 2) % 3];
    stripes.hold(order[0], true);
    stripes.set_holder(order[1], Some(0));
    stripes.set_holder(order[2], Some(1));
    (stripes, order)
}

/// The host of a fixture as a pull names it (and [`Distrust`] remembers it).
fn host_of(fx: &Fixture) -> String {
    let url = base(fx);
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
}

#[test]
fn only_the_mirror_whose_chunks_differ_from_the_origins_is_caught() {
    let content = data(15, 3 * 1024 * KIB);
    let files = [("model.bin", content.as_slice())];
    let (fx, liar) = origin_and_mirror(&files);
    let honest = Fixture::new(&files);
    let block = 256 * KIB as u64;
    // As in a node group of three: this node's stripe, the liar's and the honest peer's,
    // each mirror sending the blocks of its own stripe.
    let (stripes, [_, liar_stripe, _]) = three_stripes(block);
    let liars_block = (0..content.len() as u64 / block)
        .find(|&k| stripes.stripe_of("model.bin", k * block) == liar_stripe)
        .unwrap();
    // Flipped bytes, and no CRCs to catch them by: only the file's digest can tell.
    liar.origin.set_faults(Faults {
        corrupt_offset: Some(liars_block * block + 1000),
        corrupt_times: u32::MAX,
        omit_crcs: true,
        ..Faults::default()
    });
    let distrust = Arc::new(Distrust::new(Duration::from_secs(600)));
    let opts = Options {
        origin_gate: Some(stripes.clone()),
        distrust: Some(distrust.clone()),
        verify_attempts: 1,
        ..options(Driver::Epoll)
    };
    let mirrors = [base(&liar), base(&honest)];
    let dest = fx.dest("m");
    let (report, cx) = pull_with(targets(&fx, &["model.bin"], &mirrors), &dest, &opts);
    assert_file(&dest, "model.bin", &content);
    assert_eq!(cx.metrics.verify_failures.get(), 1);
    assert!(body_bytes(&honest) > 0 && body_bytes(&liar) > 0);
    let host = |name: String| {
        report
            .connections
            .iter()
            .find(|h| h.mirror && h.host == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", report.connections))
            .clone()
    };
    assert!(host(host_of(&liar)).dropped, "{:?}", report.connections);
    assert!(
        !host(host_of(&honest)).dropped,
        "the honest mirror's chunks matched the origin's: {:?}",
        report.connections
    );
    assert!(distrust.is_distrusted(&host_of(&liar)));
    assert!(!distrust.is_distrusted(&host_of(&honest)));

    // The pull tried again (here: another one sharing the distrust) never asks the liar.
    let asked = liar.origin.requests_seen().len();
    let again = fx.dest("again");
    let (report, _) = pull_with(targets(&fx, &["model.bin"], &mirrors), &again, &opts);
    assert_file(&again, "model.bin", &content);
    assert_eq!(liar.origin.requests_seen().len(), asked);
    let honest_host = report
        .connections
        .iter()
        .find(|h| h.host == host_of(&honest))
        .unwrap();
    assert!(honest_host.bytes > 0, "{:?}", report.connections);
}

#[test]
fn a_mirror_that_is_down_leaves_the_work_to_the_origin() {
    let content = data(6, 900 * KIB);
    let fx = Fixture::new(&[("model.bin", &content)]);
    let down = down_mirror();
    let dest = fx.dest("m");
    let (report, _) = pull_with(
        targets(&fx, &["model.bin"], &[down]),
        &dest,
        &options(Driver::Epoll),
    );
    assert_file(&dest, "model.bin", &content);
    assert!(mirror_host(&report).dropped);
    assert_eq!(mirror_host(&report).bytes, 0);
}

#[test]
fn a_mirror_without_a_file_is_not_asked_for_it_again() {
    let a = data(7, 600 * KIB);
    // Twenty ranges: asked once per range, the mirror would see twenty requests for it.
    let b = data(8, 5 * 1024 * KIB);
    let fx = Fixture::new(&[("a.bin", &a), ("b.bin", &b)]);
    let mirror = Fixture::new(&[("a.bin", &a)]);
    let dest = fx.dest("m");
    let opts = options(Driver::Epoll);
    let (report, _) = pull_with(
        targets(&fx, &["a.bin", "b.bin"], &[base(&mirror)]),
        &dest,
        &opts,
    );
    assert_file(&dest, "a.bin", &a);
    assert_file(&dest, "b.bin", &b);
    assert!(
        !mirror_host(&report).dropped,
        "a missing file is no failure"
    );
    let asked_for_b = mirror
        .origin
        .requests_seen()
        .iter()
        .filter(|(path, _)| path == "/b.bin")
        .count();
    // Only the ranges already on their way when the first 404 came back.
    assert!(
        (1..=opts.max_connections).contains(&asked_for_b),
        "asked {asked_for_b} times for b.bin"
    );
    assert_eq!(mirror_host(&report).bytes, a.len() as u64);
}

#[test]
fn a_stalled_mirror_loses_its_range_within_the_stall_timeout() {
    let content = data(9, 1024 * KIB);
    let (fx, mirror) = origin_and_mirror(&[("model.bin", &content)]);
    mirror.origin.set_faults(Faults {
        stall_after: Some(100 * KIB as u64),
        stall_times: 1,
        ..Faults::default()
    });
    let dest = fx.dest("m");
    let opts = options(Driver::Epoll);
    let started = Instant::now();
    let (report, _) = pull_with(targets(&fx, &["model.bin"], &[base(&mirror)]), &dest, &opts);
    assert_file(&dest, "model.bin", &content);
    assert!(
        started.elapsed() < opts.stall_timeout + Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // One stall is no reason to drop it; the stalled range went elsewhere.
    assert!(!mirror_host(&report).dropped);
    assert!(report.retries >= 1);
}

#[test]
fn a_mirror_that_answers_nothing_is_dropped_at_its_first_stall() {
    let content = data(19, 1024 * KIB);
    let fx = Fixture::new(&[("model.bin", &content)]);
    // A peer cut off under its kernel: connections are accepted, and nothing comes back.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute =
        modelpull::mirror::parse_base(&format!("http://{}/", listener.local_addr().unwrap()))
            .unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    // One connection at a time: counting three failures would take three stall timeouts.
    let opts = Options {
        connections: Some(1),
        ..options(Driver::Epoll)
    };
    let dest = fx.dest("m");
    let started = Instant::now();
    let (report, _) = pull_with(targets(&fx, &["model.bin"], &[mute]), &dest, &opts);
    assert_file(&dest, "model.bin", &content);
    assert!(mirror_host(&report).dropped, "{:?}", report.connections);
    assert!(
        started.elapsed() < opts.stall_timeout * 2,
        "took {:?}, stall timeout {:?}",
        started.elapsed(),
        opts.stall_timeout
    );
}

/// Bytes of `content` in the blocks of `stripes` that `held` says are this node's.
fn bytes_of_held_blocks(stripes: &Stripes, path: &str, len: u64, block: u64) -> u64 {
    (0..len.div_ceil(block))
        .filter(|b| stripes.allows(path, b * block))
        .map(|b| (len - b * block).min(block))
        .sum()
}

#[test]
fn a_striped_pull_takes_its_own_blocks_from_the_origin_and_waits_for_the_others() {
    let content = data(12, 2 * 1024 * KIB + 300);
    let (fx, mirror) = origin_and_mirror(&[("model.bin", &content)]);
    // The mirror does not hold these bytes yet the first few times it is asked.
    mirror.origin.set_faults(Faults {
        status: Some(416),
        status_times: 4,
        ..Faults::default()
    });
    let block = 256 * KIB as u64;
    let stripes = Arc::new(Stripes::new(2, block));
    stripes.hold(stripes.stripe_of("model.bin", 0), true);
    let opts = Options {
        origin_gate: Some(stripes.clone()),
        ..options(Driver::Epoll)
    };
    let dest = fx.dest("m");
    let (report, _) = pull_with(targets(&fx, &["model.bin"], &[base(&mirror)]), &dest, &opts);
    assert_file(&dest, "model.bin", &content);
    let len = content.len() as u64;
    let own = bytes_of_held_blocks(&stripes, "model.bin", len, block);
    assert!(own > 0 && own < len);
    // Its own blocks, and the probe's byte; not one byte of the other stripe.
    assert_eq!(body_bytes(&fx), own + 1, "{:?}", fx.origin.stats().served);
    assert_eq!(mirror_host(&report).bytes, len - own);
    assert!(!mirror_host(&report).dropped, "'not yet' is no failure");
}

#[test]
fn a_mirrors_not_yet_answers_keep_their_connections() {
    let content = data(17, 2 * 1024 * KIB);
    let (fx, mirror) = origin_and_mirror(&[("model.bin", &content)]);
    // A peer whose pull is behind: "not these bytes yet", many times over.
    let not_yet = 40;
    mirror.origin.set_faults(Faults {
        status: Some(416),
        status_times: not_yet,
        ..Faults::default()
    });
    let stripes = Arc::new(Stripes::new(2, 256 * KIB as u64));
    stripes.hold(stripes.stripe_of("model.bin", 0), true);
    let opts = Options {
        origin_gate: Some(stripes),
        ..options(Driver::Epoll)
    };
    let dest = fx.dest("m");
    pull_with(targets(&fx, &["model.bin"], &[base(&mirror)]), &dest, &opts);
    assert_file(&dest, "model.bin", &content);
    let stats = mirror.origin.stats();
    let (asked, connections) = (
        stats.requests.load(Relaxed),
        stats.connections.load(Relaxed),
    );
    assert!(asked > u64::from(not_yet), "asked {asked} times");
    // Each answer's connection served the next request: no more connections than the pull
    // may have open at once on each of its cores (each core keeps its own).
    assert!(
        connections <= (opts.cores * opts.max_connections) as u64,
        "{connections} connections for {asked} requests"
    );
}

#[test]
fn while_a_blocks_holder_says_not_yet_the_others_are_asked_now_and_then() {
    let content = data(18, 256 * KIB);
    let files = [("model.bin", content.as_slice())];
    let (fx, holder) = origin_and_mirror(&files);
    let other = Fixture::new(&files);
    // The mirror that fetches the block from the origin has not got it for 12 rounds of
    // "not yet" (a quarter second each); the other gets it from that one, so never before.
    let rounds = 12;
    holder.origin.set_faults(Faults {
        status: Some(416),
        status_times: rounds,
        ..Faults::default()
    });
    other.origin.set_faults(Faults {
        status: Some(416),
        status_times: u32::MAX,
        ..Faults::default()
    });
    let block = 256 * KIB as u64;
    let stripes = Arc::new(Stripes::new(2, block));
    stripes.set_holder(stripes.stripe_of("model.bin", 0), Some(0));
    let opts = Options {
        origin_gate: Some(stripes),
        ..options(Driver::Epoll)
    };
    let dest = fx.dest("m");
    pull_with(
        targets(&fx, &["model.bin"], &[base(&holder), base(&other)]),
        &dest,
        &opts,
    );
    assert_file(&dest, "model.bin", &content);
    let asked = |fx: &Fixture| fx.origin.stats().requests.load(Relaxed);
    assert_eq!(asked(&holder), u64::from(rounds) + 1);
    // Every eighth "not yet" of the holder: once, where it used to be asked every round.
    assert!(
        asked(&other) <= 2,
        "the other mirror was asked {} times",
        asked(&other)
    );
    assert_eq!(body_bytes(&fx), 1, "only the probe's byte from the origin");
}

#[test]
fn each_block_goes_to_the_mirror_that_fetches_it_from_the_origin() {
    let content = data(14, 3 * 1024 * KIB);
    let files = [("model.bin", content.as_slice())];
    let (fx, a) = origin_and_mirror(&files);
    let b = Fixture::new(&files);
    let block = 256 * KIB as u64;
    let (stripes, [first, a_stripe, b_stripe]) = three_stripes(block);
    let opts = Options {
        origin_gate: Some(stripes.clone()),
        ..options(Driver::Epoll)
    };
    let dest = fx.dest("m");
    let (report, _) = pull_with(
        targets(&fx, &["model.bin"], &[base(&a), base(&b)]),
        &dest,
        &opts,
    );
    assert_file(&dest, "model.bin", &content);
    // Both mirrors have every byte and connections to spare: each sends exactly the blocks
    // of its own stripe, none of the other's.
    let len = content.len() as u64;
    let of = |stripe: usize| -> u64 {
        (0..len.div_ceil(block))
            .filter(|&k| stripes.stripe_of("model.bin", k * block) == stripe)
            .map(|k| (len - k * block).min(block))
            .sum()
    };
    assert_eq!(
        (body_bytes(&a), body_bytes(&b)),
        (of(a_stripe), of(b_stripe)),
        "{:?}",
        report.connections
    );
    assert_eq!(body_bytes(&fx), of(first) + 1);
}

#[test]
fn a_striped_pull_whose_mirrors_are_gone_takes_everything_from_the_origin() {
    let content = data(13, 1024 * KIB);
    let fx = Fixture::new(&[("model.bin", &content)]);
    let down = down_mirror();
    let stripes = Arc::new(Stripes::new(4, 256 * KIB as u64));
    let opts = Options {
        origin_gate: Some(stripes),
        ..options(Driver::Epoll)
    };
    let dest = fx.dest("m");
    let (report, _) = pull_with(targets(&fx, &["model.bin"], &[down]), &dest, &opts);
    assert_file(&dest, "model.bin", &content);
    assert!(mirror_host(&report).dropped);
}
