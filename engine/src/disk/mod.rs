//! Everything that touches the destination filesystem.
//!
//! - [`part`]: one file being written, with O_DIRECT positioned writes from aligned buffers and
//!   a buffered fallback where the filesystem refuses O_DIRECT (tmpfs).
//! - [`journal`]: the resume record beside each `.part`.
//! - [`staging`]: the hidden directory a pull writes into, its lock, and the atomic publish.

pub mod journal;
pub mod part;
pub mod staging;
