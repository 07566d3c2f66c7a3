//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by default): the
//! parsers of untrusted input that are not public API, each returning what the targets'
//! invariants need, and nothing the engine itself uses.

use crate::store::{gs, hf, s3};

/// Object names with their sizes, and the token of the next page.
pub type ListingPage = (Vec<(String, u64)>, Option<String>);

/// Keys and sizes of one S3 ListObjectsV2 page, and its continuation token.
pub fn s3_listing_page(xml: &[u8]) -> Result<ListingPage, String> {
    s3::parse_page(xml).map(|p| {
        (
            p.objects.into_iter().map(|o| (o.key, o.size)).collect(),
            p.next,
        )
    })
}

/// Type, path and size of each entry of one Hugging Face tree page.
pub fn hf_tree_page(json: &[u8]) -> Result<Vec<(String, String, u64)>, String> {
    hf::parse_tree_page(json).map(|entries| {
        entries
            .into_iter()
            .map(|e| (e.kind, e.path, e.size))
            .collect()
    })
}

/// Names and sizes of one GCS object listing page, and its next page token.
pub fn gcs_listing_page(json: &[u8]) -> Result<ListingPage, String> {
    gs::parse_page(json).map(|p| {
        (
            p.items.into_iter().map(|o| (o.name, o.size)).collect(),
            p.next_page_token,
        )
    })
}

/// The check every listing passes before a byte is fetched: unsafe, duplicate or clashing
/// relative paths are refused.
pub fn check_listing(paths: &[String]) -> crate::Result<()> {
    let url = url::Url::parse("http://127.0.0.1/f").expect("a fixed URL");
    let targets: Vec<crate::Target> = paths
        .iter()
        .map(|p| crate::Target {
            url: url.clone(),
            path: p.clone(),
            expected: Vec::new(),
            size: None,
            checksum: None,
            auth: Default::default(),
            mirrors: Vec::new(),
        })
        .collect();
    crate::store::check_listing("fuzz://listing", &targets)
}
