//! What every listing target asserts once a page parsed: the listing check accepts only
//! relative, normalised, distinct paths that cannot clash (a file where another entry needs a
//! folder), so no accepted entry can land outside the destination.

use std::collections::HashSet;

pub fn check(paths: Vec<String>) {
    if modelpull::fuzzing::check_listing(&paths).is_err() {
        return;
    }
    let mut seen = HashSet::new();
    for p in &paths {
        modelpull::target::check_relative_path(p)
            .unwrap_or_else(|e| panic!("accepted a path that {e}"));
        assert!(
            !p.split('/').any(|s| s == ".." || s == "." || s.is_empty()),
            "{p:?}"
        );
        assert!(seen.insert(p.as_str()), "accepted a duplicate {p:?}");
    }
    for p in &paths {
        let mut prefix = String::new();
        for segment in p.split('/') {
            if !prefix.is_empty() {
                assert!(
                    !seen.contains(prefix.as_str()),
                    "{prefix:?} is a file and a folder"
                );
                prefix.push('/');
            }
            prefix.push_str(segment);
        }
    }
}
