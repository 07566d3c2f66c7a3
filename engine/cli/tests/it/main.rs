//! The `modelpull` binary's tests, one binary with a module per area: folders another tool
//! wrote taken over with `--adopt` (`adopt`), flags, output and exit codes (`commands`), kills at any moment (`crash`), what reaches the disk and when
//! (`durability`), the habits of `hf download` (`habits`: file patterns, revisions, quiet
//! output, completions), request headers from the environment (`headers`), the Hugging Face
//! cache layout read back by `huggingface_hub` (`hf_cache`), the storage-initializer KServe
//! runs (`initializer`), the progress display on a pseudo-terminal (`progress`), and
//! credentials against real stores (`stores`). Fixtures come
//! from `modelpull-testkit`.

mod adopt;
mod commands;
mod crash;
mod durability;
mod habits;
mod headers;
mod hf_cache;
mod initializer;
mod mirror;
mod progress;
mod stores;
