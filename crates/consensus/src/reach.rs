//! Whom a leader's votes reach, known before it proposes.
//!
//! A proposal that reaches fewer validators than can notarize it costs more than no proposal at
//! all: the peers that got it vote for it, and a peer that voted gives the view up only at the
//! certification timeout (2 s on the devnet), while a view its leader does not propose is
//! nullified at once (the leader's own nullify lets its peers skip the view) or at the leader
//! timeout. A node that has just restarted is in that state for up to a second, while its peers
//! redial it, and it is often elected at once: it joins in the current view, which may be its
//! own. So a leader connected to too few of its epoch's validators lets its view go.
//!
//! What is connected comes from the vote channel itself: a broadcast is checked against the
//! connected peers (the p2p layer drops a message to a peer it has no connection with), and
//! [`Watched`] keeps the last answer. Before its first broadcast a node knows nothing and does
//! not propose.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use commonware_p2p::{CheckedSender as _, LimitedSender, Recipients};
use commonware_utils::{Faults as _, N3f1};

use crate::PublicKey;

/// The peers the last broadcast on the vote channel went to (`None` before the first one).
#[derive(Clone, Default)]
pub(crate) struct Reach(Arc<Mutex<Option<Vec<PublicKey>>>>);

impl Reach {
    fn record(&self, peers: Vec<PublicKey>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(peers);
    }

    /// How many of `validators` other than `me` the last broadcast reached, and how many a
    /// proposal of `me` needs to reach to be notarized: `None` before any broadcast.
    pub(crate) fn count(&self, me: &PublicKey, validators: &[PublicKey]) -> Option<(usize, usize)> {
        let reached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let reached = reached.as_ref()?;
        Some(reach_of(reached, me, validators))
    }
}

/// How many of `validators` other than `me` are in `reached`, and how many must be: a quorum
/// (`n - f`) counts the leader's own vote, so it needs `quorum - 1` others.
fn reach_of(reached: &[PublicKey], me: &PublicKey, validators: &[PublicKey]) -> (usize, usize) {
    let others = validators.iter().filter(|v| *v != me && reached.contains(v)).count();
    let needed = if validators.is_empty() { 0 } else { N3f1::quorum(validators.len()) as usize - 1 };
    (others, needed)
}

/// An epoch this node began after its peers, and until when it does not lead in it.
///
/// Each epoch's engine starts with no record of anyone's activity, and a peer that enters a
/// view whose leader it has not heard from in this epoch times the view out at once
/// (Commonware's skip policy), while a peer that did hear from it votes for its proposal and
/// holds the view until the certification timeout: a split that cost 2 s in the rolling
/// upgrade, each time a restarted node caught up across an epoch boundary and led one of the
/// epoch's first views before its votes reached everyone. A node that finds votes of an epoch
/// waiting when it begins it was late; it lets its views go (each at once: its own nullify
/// lets the others skip them) for twice the leader timeout, time for its votes to be seen.
#[derive(Clone, Default)]
pub(crate) struct LateEntry(Arc<Mutex<Option<(u64, SystemTime)>>>);

impl LateEntry {
    pub(crate) fn mark(&self, epoch: u64, until: SystemTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((epoch, until));
    }

    /// Whether this node holds back from leading in `epoch` at `now`.
    pub(crate) fn holds(&self, epoch: u64, now: SystemTime) -> bool {
        matches!(*self.0.lock().unwrap_or_else(|e| e.into_inner()), Some((e, until)) if e == epoch && now < until)
    }
}

/// A sender that remembers whom each broadcast (`Recipients::All`) was sent to, if given a
/// [`Reach`] (the engine's three channels share one sender type; only votes are watched).
#[derive(Clone)]
pub(crate) struct Watched<S> {
    pub inner: S,
    pub reach: Option<Reach>,
}

impl<S: LimitedSender<PublicKey = PublicKey>> LimitedSender for Watched<S> {
    type PublicKey = PublicKey;
    type Checked<'a>
        = S::Checked<'a>
    where
        Self: 'a;

    fn check(&mut self, recipients: Recipients<PublicKey>) -> Result<Self::Checked<'_>, SystemTime> {
        let all = matches!(recipients, Recipients::All);
        let checked = self.inner.check(recipients)?;
        if let (true, Some(reach)) = (all, &self.reach) {
            reach.record(checked.recipients());
        }
        Ok(checked)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::num::NonZeroUsize;

    use commonware_cryptography::{Signer as _, ed25519};
    use commonware_p2p::{Sender as _, simulated};
    use commonware_runtime::{Quota, Runner as _, Supervisor as _, deterministic};

    use super::*;

    fn keys(n: u64) -> Vec<PublicKey> {
        (0..n).map(|i| ed25519::PrivateKey::from_seed(i).public_key()).collect()
    }

    /// `peers[me]`'s end of channel 0 of a simulated network of `peers` (all known from the start).
    pub(crate) async fn simulated_channel(
        context: &deterministic::Context,
        peers: &[PublicKey],
        me: usize,
    ) -> (impl LimitedSender<PublicKey = PublicKey>, impl commonware_p2p::Receiver<PublicKey = PublicKey>) {
        let (network, oracle) = simulated::Network::new_with_peers(
            context.child("network"),
            simulated::Config {
                max_size: 1 << 16,
                max_peers_per_set: NonZeroUsize::new(peers.len() + 4).unwrap(),
                disconnect_on_block: false,
                tracked_peer_sets: NonZeroUsize::new(2).unwrap(),
            },
            peers.to_vec(),
        )
        .await;
        network.start();
        let quota = Quota::per_second(commonware_utils::NZU32!(1_000));
        oracle.control(peers[me].clone()).register(0, quota).await.unwrap()
    }

    #[test]
    fn a_leader_needs_a_quorum_less_itself() {
        let v = keys(7);
        // n = 4: quorum 3, so two others.
        assert_eq!(reach_of(&v[1..2], &v[0], &v[..4]), (1, 2));
        assert_eq!(reach_of(&v[1..3], &v[0], &v[..4]), (2, 2));
        // Peers outside the validator set and the leader itself do not count.
        assert_eq!(reach_of(&[v[0].clone(), v[5].clone(), v[6].clone()], &v[0], &v[..4]), (0, 2));
        // n = 7: quorum 5, so four others; a lone validator needs nobody.
        assert_eq!(reach_of(&v[1..5], &v[0], &v), (4, 4));
        assert_eq!(reach_of(&[], &v[0], &v[..1]), (0, 0));
        // Before any broadcast nothing is known.
        assert_eq!(Reach::default().count(&v[0], &v[..4]), None);
    }

    #[test]
    fn a_late_entry_holds_only_its_epoch_and_only_until_its_time() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let late = LateEntry::default();
        assert!(!late.holds(3, t));
        late.mark(3, t);
        assert!(late.holds(3, t - std::time::Duration::from_millis(1)));
        assert!(!late.holds(3, t));
        assert!(!late.holds(4, t - std::time::Duration::from_millis(1)));
    }

    /// Through the simulated p2p network (whose peers are all known from the start): a broadcast
    /// records whom it went to, a message to one peer does not change what is known.
    #[test]
    fn a_broadcast_records_whom_it_went_to() {
        deterministic::Runner::default().start(|context| async move {
            let peers = keys(3);
            let (sender, _receiver) = simulated_channel(&context, &peers, 0).await;
            let reach = Reach::default();
            let mut watched = Watched { inner: sender, reach: Some(reach.clone()) };

            let one = watched.send(Recipients::One(peers[1].clone()), b"one".as_slice(), false);
            assert_eq!(one, vec![peers[1].clone()]);
            assert_eq!(reach.count(&peers[0], &peers), None);

            let sent = watched.send(Recipients::All, b"all".as_slice(), false);
            let mut sent_sorted = sent.clone();
            sent_sorted.sort();
            let mut others = peers[1..].to_vec();
            others.sort();
            assert_eq!(sent_sorted, others);
            assert_eq!(reach.count(&peers[0], &peers), Some((2, 2)));
        });
    }
}
