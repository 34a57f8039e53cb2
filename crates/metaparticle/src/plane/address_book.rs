//! The address book: where every replica of every node listens.
//!
//! A runner writes it (local ports, container names, cluster DNS names) and hands it to each node
//! in `MP_ADDRESS_BOOK`; the data plane reads only this, never which runner started it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::launch_error::LaunchError;
use crate::model::rescale::Rescale;
use crate::model::Target;

/// Node name → the address (`host:port`) of each replica, in replica order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AddressBook {
    nodes: BTreeMap<String, Vec<String>>,
}

/// One replica a target resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedReplica {
    /// `node-replica`, used in error messages and metrics.
    pub name: String,
    /// `host:port`.
    pub address: String,
}

impl AddressBook {
    /// Records where the replicas of `node` listen.
    pub fn insert(&mut self, node: impl Into<String>, addresses: Vec<String>) {
        self.nodes.insert(node.into(), addresses);
    }

    /// The addresses of a node's replicas.
    pub fn addresses(&self, node: &str) -> Option<&[String]> {
        self.nodes.get(node).map(Vec::as_slice)
    }

    /// This book after `changes`: each rescaled node keeps the addresses of the replicas that
    /// stay, in order, followed by `added(node)`, the addresses of the replicas it gains.
    pub(crate) fn rescaled(&self, changes: &[Rescale], added: impl Fn(&str) -> Vec<String>) -> AddressBook {
        let mut book = self.clone();
        for change in changes {
            let mut addresses = book.addresses(&change.node).unwrap_or_default().to_vec();
            addresses.truncate(change.to);
            addresses.extend(added(&change.node));
            book.insert(change.node.clone(), addresses);
        }
        book
    }

    /// Every address of every node.
    pub fn all_addresses(&self) -> impl Iterator<Item = &String> {
        self.nodes.values().flatten()
    }

    /// How many replica addresses the book holds.
    pub fn addresses_count(&self) -> usize {
        self.nodes.values().map(Vec::len).sum()
    }

    /// The replicas a target names: one for an indexed target, all for a balanced one.
    pub fn resolve(&self, target: &Target) -> Result<Vec<ResolvedReplica>, LaunchError> {
        let addresses = self
            .addresses(&target.node)
            .ok_or_else(|| LaunchError::Unaddressed(format!("node '{}'", target.node)))?;
        let replica = |(i, address): (usize, &String)| ResolvedReplica {
            name: format!("{}-{i}", target.node),
            address: address.clone(),
        };
        match target.replica {
            None => Ok(addresses.iter().enumerate().map(replica).collect()),
            Some(i) => addresses
                .get(i)
                .map(|a| vec![replica((i, a))])
                .ok_or_else(|| LaunchError::Unaddressed(format!("replica {i} of node '{}'", target.node))),
        }
    }
}
