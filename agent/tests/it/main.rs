//! The agent's integration tests, one binary with a module per area: the test API server is
//! faithful (`apiserver`), whole runs of the agent binary against it (`cluster`), the CRDs'
//! schemas (`crd_schema`, `examples`), a node group sharing a model (`group`), the agent
//! under KServe's memory limit (`memory`), the agent without a cluster (`no_cluster`), its
//! peer server read by the engine (`peer`), the exact requests it sends (`requests`), a
//! models root it cannot write (`unwritable_root`), what `deploy/` installs (`deploy`),
//! taking over a node from KServe's agent with its cache (`migration`), and a repair of
//! KServe's folder that the disk cannot hold (`repair_copy`). Shared pieces are in `util`;
//! servers and fixtures come from `modelpull-testkit`.

mod apiserver;
mod cluster;
mod crd_schema;
mod deploy;
mod examples;
mod group;
mod memory;
mod migration;
mod no_cluster;
mod peer;
mod repair_copy;
mod requests;
mod unwritable_root;
mod util;
