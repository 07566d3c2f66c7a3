//! The engine library's integration tests, one binary with a module per area. Each runs real
//! pulls against real servers on 127.0.0.1 (the test origin, nginx-like faults, moto,
//! gcp-storage-emulator, tinyproxy, the Hub fixture), on io_uring and on epoll. Fixtures come
//! from `modelpull-testkit`.

mod adopt;
mod aws_credentials;
mod chaos;
mod faults;
mod gcs;
mod hf;
mod hostile;
mod hub;
mod listings;
mod mirror;
mod proxy;
mod pull;
mod s3;
mod tls;
mod tune;
