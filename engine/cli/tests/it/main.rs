//! The `modelpull` binary's tests, one binary with a module per area: flags, output and exit
//! codes (`commands`), kills at any moment (`crash`), what reaches the disk and when
//! (`durability`), request headers from the environment (`headers`), the storage-initializer
//! KServe runs (`initializer`), and credentials against real stores (`stores`). Fixtures come
//! from `modelpull-testkit`.

mod commands;
mod crash;
mod durability;
mod headers;
mod initializer;
mod stores;
