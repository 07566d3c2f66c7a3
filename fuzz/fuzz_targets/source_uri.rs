//! Source URIs and proxy settings as users and stores write them: a source that parses names
//! a safe relative path and an http(s) URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelpull::Target;
use modelpull::http::proxy::ProxyServer;
use modelpull::store::hf::Repo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Target::parse(text) {
        assert!(matches!(t.url.scheme(), "http" | "https"), "{text:?}");
        modelpull::target::check_relative_path(&t.path)
            .unwrap_or_else(|e| panic!("{text:?} gave path {:?} that {e}", t.path));
    }
    let _ = Repo::parse(text);
    let _ = ProxyServer::parse(text);
});
