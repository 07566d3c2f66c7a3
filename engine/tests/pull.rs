//! End-to-end pulls against the in-tree origin, on both drivers.

mod util;

use util::*;

#[test]
fn pulls_several_files_verified() {
    let big = data(1, 3 * 1024 * 1024 + 1234);
    let small = data(2, 100);
    let fx = Fixture::new(&[("big.bin", &big), ("small.json", &small), ("empty", b"")]);
    each_driver(|driver| {
        let dest = fx.dest(&format!("m-{}", driver.name()));
        let targets = vec![
            fx.target("big.bin", true),
            fx.target("small.json", false),
            fx.target("empty", false),
        ];
        let report = pull(targets, &dest, &options(driver)).unwrap();
        assert_file(&dest, "big.bin", &big);
        assert_file(&dest, "small.json", &small);
        assert_file(&dest, "empty", b"");
        assert_eq!(report.driver, Some(driver));
        assert_eq!(sha256_of(&report, "small.json"), sha256_hex(&small));
        assert_eq!(sha256_of(&report, "empty"), sha256_hex(b""));
        assert_clean(dest.parent().unwrap());
    });
}
