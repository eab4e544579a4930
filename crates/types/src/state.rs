//! How the layers exchange state: execution reads committed state through [`StateRead`] and
//! hands the data layer a sorted [`ChangeSet`] to commit. Both live here so the data layer
//! depends on this vocabulary, not on execution.

use std::collections::BTreeMap;

/// Read access to committed state. Implemented by the data layer (and by in-memory maps in tests).
pub trait StateRead {
    /// The value stored under `key`, if any. Storage failures are fatal to the node and are not
    /// reported here: a node must not execute on state it could not read.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;

    /// Every record of one table, in key order (deterministic on every node). Only schema
    /// migrations scan: blocks never do, so block work stays bounded.
    fn scan(&self, table: u8) -> Vec<(Vec<u8>, Vec<u8>)>;
}

/// A set of writes: `None` deletes. Sorted, so applying it is deterministic.
pub type ChangeSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

impl StateRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        BTreeMap::get(self, key).cloned()
    }

    fn scan(&self, table: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        let range = match table.checked_add(1) {
            Some(end) => self.range(vec![table]..vec![end]),
            None => self.range(vec![table]..),
        };
        range.map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_reads_one_table_in_key_order() {
        let map: BTreeMap<Vec<u8>, Vec<u8>> =
            [(vec![1, 2], vec![b'b']), (vec![1, 1], vec![b'a']), (vec![2, 0], vec![b'c']), (vec![255, 9], vec![b'z'])]
                .into_iter()
                .collect();
        assert_eq!(map.scan(1), vec![(vec![1, 1], vec![b'a']), (vec![1, 2], vec![b'b'])]);
        assert_eq!(map.scan(255), vec![(vec![255, 9], vec![b'z'])]);
        assert!(map.scan(7).is_empty());
        assert_eq!(StateRead::get(&map, &[2, 0]), Some(vec![b'c']));
    }
}
