//! `coordination.k8s.io` Leases, held by a node name: taken with a create, renewed and taken
//! over with a replace that carries the resourceVersion it read (the API server answers 409 to
//! whoever comes second), so two agents never both believe they hold one.
//!
//! Whether another holder's lease has expired is judged from what this agent saw, not from the
//! clocks in it (as ModelExpress does): a lease whose resourceVersion has not changed for its
//! duration, by this process's monotonic clock, was not renewed, whatever the holder's clock
//! says. A lease marked complete (its holder has the whole model and serves it) is not taken
//! over while its holder is of the group; the mark is dropped when the lease is held for a
//! pull again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

/// Annotation of a lease whose holder has finished: it is not to be taken over.
pub const COMPLETE: &str = "modelpull.io/complete";

/// Annotation of a model's plan lease: the nodes its stripes are dealt to, comma separated.
pub const NODES: &str = "modelpull.io/nodes";

/// The nodes a model's stripes are dealt to, agreed through the lease `name`: the first agent
/// to pull the model writes the group as it sees it, every later one reads it. Nodes that see
/// the group at different moments (one's LocalModelNode written a moment later, a node added
/// while the others pull) must still cut the model the same way and name the same leases.
pub async fn agree(
    api: &Api<Lease>,
    name: &str,
    labels: &BTreeMap<String, String>,
    proposal: &[String],
) -> kube::Result<Vec<String>> {
    let read = |lease: &Lease| -> Option<Vec<String>> {
        let nodes = lease.metadata.annotations.as_ref()?.get(NODES)?;
        let nodes: Vec<String> = nodes
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        (!nodes.is_empty()).then_some(nodes)
    };
    if let Some(lease) = api.get_opt(name).await?
        && let Some(nodes) = read(&lease)
    {
        return Ok(nodes);
    }
    let plan = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels.clone()),
            annotations: Some([(NODES.to_owned(), proposal.join(","))].into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec::default()),
    };
    match api.create(&PostParams::default(), &plan).await {
        Ok(_) => Ok(proposal.to_vec()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let lease = api.get(name).await?;
            Ok(read(&lease).unwrap_or_else(|| proposal.to_vec()))
        }
        Err(e) => Err(e),
    }
}

/// Deletes every lease of `api`'s namespace that `selector` picks; returns how many it
/// deleted (one gone already, deleted by another agent at the same moment, is not counted).
pub async fn delete_all(api: &Api<Lease>, selector: &str) -> kube::Result<usize> {
    let leases = api.list(&ListParams::default().labels(selector)).await?;
    let mut deleted = 0;
    for name in leases
        .items
        .iter()
        .filter_map(|l| l.metadata.name.as_deref())
    {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// What this agent knows of the leases it deals with.
#[derive(Debug)]
pub struct Leases {
    api: Api<Lease>,
    holder: String,
    duration: Duration,
    /// The nodes of the group: a complete mark counts only while its holder is one of them.
    members: BTreeSet<String>,
    /// Per lease: the resourceVersion last seen (`None`: absent) and since when.
    seen: HashMap<String, (Option<String>, Instant)>,
}

impl Leases {
    /// Leases in `api`'s namespace held as `holder`, each for `duration` between renewals, in
    /// a group of `members`.
    pub fn new(
        api: Api<Lease>,
        holder: &str,
        duration: Duration,
        members: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            api,
            holder: holder.to_owned(),
            duration,
            members: members.into_iter().collect(),
            seen: HashMap::new(),
        }
    }

    /// Takes the lease `name` when it is free: already this holder's, not renewed for its
    /// duration as seen from here, or absent — at once when `own` (the stripe is this node's to
    /// begin with), else once it has stayed absent for the duration (its owner may be about to
    /// create it). `true`: this holder holds it now.
    pub async fn acquire(
        &mut self,
        name: &str,
        labels: &BTreeMap<String, String>,
        own: bool,
    ) -> kube::Result<bool> {
        let Some(lease) = self.api.get_opt(name).await? else {
            if !own && !self.unchanged_for_duration(name, None) {
                return Ok(false);
            }
            return self.create(name, labels).await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() == Some(&self.holder) {
            return self.renew_from(lease).await;
        }
        let rv = lease.metadata.resource_version.clone();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        // A holder that has the whole model serves it: its stripe needs nobody, as long as it
        // is still of the group (a replaced node's mark is void).
        let complete = lease
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(COMPLETE))
            && self.members.contains(holder);
        let held = !holder.is_empty();
        if complete || (held && !self.unchanged_for_duration(name, rv)) {
            return Ok(false);
        }
        let mut taken = lease;
        if let Some(a) = taken.metadata.annotations.as_mut() {
            a.remove(COMPLETE);
        }
        let spec = taken.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.holder.clone());
        spec.lease_duration_seconds = Some(self.duration.as_secs().max(1) as i32);
        spec.acquire_time = Some(now());
        spec.renew_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        self.replace(name, &taken).await
    }

    /// Renews the lease `name` if this holder still holds it. `false`: it does not (another
    /// took it over, or it is gone).
    pub async fn renew(&mut self, name: &str) -> kube::Result<bool> {
        match self.api.get_opt(name).await? {
            Some(lease)
                if lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    == Some(&self.holder) =>
            {
                self.renew_from(lease).await
            }
            _ => Ok(false),
        }
    }

    /// Marks the lease `name`, held by this holder, complete: its holder has the whole model.
    pub async fn complete(&mut self, name: &str) -> kube::Result<bool> {
        let Some(mut lease) = self.api.get_opt(name).await? else {
            return Ok(false);
        };
        if lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            != Some(&self.holder)
        {
            return Ok(false);
        }
        lease
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(COMPLETE.to_owned(), "true".to_owned());
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(now());
        }
        self.replace(name, &lease).await
    }

    async fn renew_from(&mut self, mut lease: Lease) -> kube::Result<bool> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        // Held for a pull again: an earlier pull's complete mark no longer says anything.
        if let Some(a) = lease.metadata.annotations.as_mut() {
            a.remove(COMPLETE);
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(self.duration.as_secs().max(1) as i32);
        self.replace(&name, &lease).await
    }

    async fn create(
        &mut self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> kube::Result<bool> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.holder.clone()),
                lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(l) => {
                self.saw(name, l.metadata.resource_version);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces `name` with `lease`, whose resourceVersion is the one read: `false` when
    /// another writer came first.
    async fn replace(&mut self, name: &str, lease: &Lease) -> kube::Result<bool> {
        match self.api.replace(name, &PostParams::default(), lease).await {
            Ok(l) => {
                self.saw(name, l.metadata.resource_version);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn saw(&mut self, name: &str, rv: Option<String>) {
        self.seen.insert(name.to_owned(), (rv, Instant::now()));
    }

    /// Whether the lease `name` has shown resourceVersion `rv` (`None`: absent) for its
    /// duration; a new version starts the count again.
    fn unchanged_for_duration(&mut self, name: &str, rv: Option<String>) -> bool {
        match self.seen.get(name) {
            Some((seen, since)) if *seen == rv => since.elapsed() >= self.duration,
            _ => {
                self.saw(name, rv);
                false
            }
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}
