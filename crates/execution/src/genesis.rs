//! The state at height 0, built from a genesis file.

use plexus_types::genesis::Genesis;

use crate::state::{
    Account, AddressList, ChainMeta, ChangeSet, Overlay, Stake, Store, Supply, ValidatorEntry, ValidatorSet, keys,
};

/// The writes that make up genesis state. The genesis file must already be validated.
pub fn genesis_changes(genesis: &Genesis) -> ChangeSet {
    let empty = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let mut overlay = Overlay::new(&empty);
    let mut store = Store::new(&mut overlay);

    let mut supply = Supply::default();
    for a in &genesis.accounts {
        store.set_account(&a.address, &Account { balance: a.balance, nonce: 0 });
        supply.balances += a.balance;
    }
    let mut stakers: Vec<_> = Vec::new();
    let mut set = Vec::new();
    for v in &genesis.validators {
        store.write(keys::stake(&v.address), &Stake { bonded: v.stake, p2p_address: v.p2p_address.clone() });
        supply.bonded += v.stake;
        stakers.push(v.address.clone());
        set.push(ValidatorEntry { address: v.address.clone(), stake: v.stake, p2p_address: v.p2p_address.clone() });
    }
    stakers.sort();
    set.sort_by(|a, b| b.stake.cmp(&a.stake).then_with(|| a.address.cmp(&b.address)));
    supply.total = supply.balances + supply.bonded;
    assert!(supply.is_conserved());

    store.write(keys::STAKERS.to_vec(), &AddressList(stakers));
    store.write(keys::validators(0), &ValidatorSet(set));
    store.set_supply(&supply);
    store.write(keys::VERSIONS.to_vec(), &genesis.versions);
    store.write(keys::GENESIS.to_vec(), &genesis.hash());
    store.write(keys::CHAIN.to_vec(), &ChainMeta { chain_id: genesis.chain_id.clone(), height: 0, epoch: 0 });
    // Parameters of later execution versions are written only by genesis files that start
    // there: older chains' genesis states stay what they were.
    for (name, _) in plexus_types::Params::NAMES {
        if plexus_types::params::SINCE_V3.contains(name) && genesis.versions.execution < 3 {
            continue;
        }
        store.set_param(name, genesis.params.get(name).expect("every name has a value"));
    }
    overlay.into_changes()
}
