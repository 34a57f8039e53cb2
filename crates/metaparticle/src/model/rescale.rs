//! Which redeploys are a rescale: the same nodes, only more or fewer replicas of nodes that their
//! callers reach through a balancer.
//!
//! Such a change needs no new version: a runner starts the added replicas, hands the app's
//! processes the new address book (see `plane::live_book`), and stops the removed ones, while
//! every replica that stays keeps running. Anything else is a new version. In particular a shard
//! or a scatter leaf is addressed by its index: more shards move keys to other shards, more leaves
//! change what a merge sees, so their counts are never rescaled in place. Nor is an exposed node's,
//! whose replicas each own a published port.

use super::plan::Plan;

/// One node whose replica count changes in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rescale {
    /// The node's name.
    pub(crate) node: String,
    /// Its replicas now.
    pub(crate) from: usize,
    /// Its replicas after the rescale.
    pub(crate) to: usize,
}

/// `greeter.replica 3 -> 5 replicas, ...`: what a rescale changes, as `up` announces it.
pub(crate) fn describe(changes: &[Rescale]) -> String {
    let counts: Vec<String> =
        changes.iter().map(|c| format!("{} {} -> {} replicas", c.node, c.from, c.to)).collect();
    counts.join(", ")
}

/// How many replicas of the rescaled nodes keep running through it.
pub(crate) fn kept(changes: &[Rescale]) -> usize {
    changes.iter().map(|c| c.from.min(c.to)).sum()
}

/// How `next` differs from `running` if it is a rescale of it: the nodes whose replica count
/// changes (none if the plans are equal). `None` if the change needs a new version.
pub(crate) fn rescale_of(next: &Plan, running: &Plan) -> Option<Vec<Rescale>> {
    if next.nodes.len() != running.nodes.len() {
        return None;
    }
    let mut changes = Vec::new();
    for (new, old) in next.nodes.iter().zip(&running.nodes) {
        let mut same_but_count = old.clone();
        same_but_count.replicas = new.replicas;
        if *new != same_but_count {
            return None;
        }
        if new.replicas == old.replicas {
            continue;
        }
        if new.exposed || !balanced_only(next, &new.name) || !balanced_only(running, &new.name) {
            return None;
        }
        changes.push(Rescale { node: new.name.clone(), from: old.replicas, to: new.replicas });
    }
    Some(changes)
}

/// Whether every caller of `node` in `plan` reaches it through a balancer (any replica), none by
/// index, and something does call it (an uncalled node is a front, reached from outside).
fn balanced_only(plan: &Plan, node: &str) -> bool {
    let mut called = false;
    for caller in &plan.nodes {
        for target in plan.callees(caller).into_iter().filter(|t| t.node == node) {
            if target.replica.is_some() {
                return false;
            }
            called = true;
        }
    }
    called
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compile;
    use crate::model::topology::{scatter, service, shard, spread};
    use crate::Service;
    use serde_json::Value;

    fn plan(services: Vec<Service>) -> Plan {
        compile(&services).unwrap().0
    }

    fn spread_of(n: usize) -> Plan {
        plan(vec![service("greeter", spread(n, |r: Value| r)).expose()])
    }

    #[test]
    fn more_or_fewer_replicas_behind_a_balancer_is_a_rescale() {
        let grown = rescale_of(&spread_of(5), &spread_of(3)).unwrap();
        assert_eq!(grown, [Rescale { node: "greeter.replica".into(), from: 3, to: 5 }]);
        let shrunk = rescale_of(&spread_of(1), &spread_of(3)).unwrap();
        assert_eq!(shrunk, [Rescale { node: "greeter.replica".into(), from: 3, to: 1 }]);
        assert_eq!(rescale_of(&spread_of(3), &spread_of(3)), Some(Vec::new()), "nothing changed");
    }

    #[test]
    fn shards_leaves_and_anything_but_a_count_need_a_new_version() {
        let sharded =
            |n| plan(vec![service("s", shard(n, |r: &Value| r.to_string(), |r: Value| r)).expose()]);
        assert_eq!(rescale_of(&sharded(4), &sharded(3)), None, "keys would move");
        let scattered =
            |n| plan(vec![service("h", scatter(n, |r: Value| r, |parts: Vec<Value>| parts)).expose()]);
        assert_eq!(rescale_of(&scattered(4), &scattered(3)), None, "merges would see more parts");
        let renamed = plan(vec![service("other", spread(3, |r: Value| r)).expose()]);
        assert_eq!(rescale_of(&renamed, &spread_of(3)), None);
        let not_exposed = plan(vec![service("greeter", spread(3, |r: Value| r))]);
        assert_eq!(rescale_of(&not_exposed, &spread_of(3)), None);
    }

    #[test]
    fn the_replicas_of_a_spread_inside_each_shard_rescale_in_place() {
        let nested = |n| {
            plan(vec![service("s", shard(2, |r: &Value| r.to_string(), spread(n, |r: Value| r))).expose()])
        };
        let changes = rescale_of(&nested(4), &nested(2)).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes.iter().all(|c| (c.from, c.to) == (2, 4)), "{changes:?}");
    }
}
