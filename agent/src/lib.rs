//! `localmodelnode-agent`: a drop-in replacement for KServe's LocalModelNode agent that
//! downloads models in-process with the modelpull engine instead of launching a Kubernetes
//! Job with a Python storage-initializer per model.
//!
//! It reads the same `LocalModelNode` (only its own node's), writes the same status values,
//! uses the same folder layout (`<root>/models/<storage key>`), environment, flags and ports.
//! The layers, from the pure to the effectful:
//!
//! - [`crd`], [`keys`], [`config`]: KServe's objects and names;
//! - [`plan`]: spec + disk + downloads → status + actions, a pure function;
//! - [`disk`]: the models root, verified state and safe garbage collection; [`root_watch`]:
//!   a root that refuses new files, waited for;
//! - [`jobs`]: the in-process downloads, through the [`fetch`] seam (the engine in production);
//!   [`error`]: why one failed, sorted into classes; [`retry`]: what each class waits for;
//!   [`fit`]: their memory and threads sized under the pod's limits;
//! - [`credentials`]: Secrets and ServiceAccounts → env;
//! - [`controller`]: the kube-rs controller, and [`events`] for as long as it may send them;
//!   [`server`], [`metrics`], [`throttling`]: ports 8080 and 8081; [`peer`]: the models this
//!   node holds, served to the other agents of its node group; [`group`]: the downloads shared
//!   with them;
//! - [`cli`], [`logging`]: KServe's flags, read as Go reads them, and zap-shaped logs.

pub mod cli;
pub mod config;
pub mod controller;
pub mod crd;
pub mod credentials;
pub mod disk;
pub mod error;
pub mod events;
pub mod fetch;
pub mod fit;
pub mod group;
pub mod jobs;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod peer;
pub mod plan;
pub mod retry;
pub mod root_watch;
pub mod server;
pub mod throttling;
