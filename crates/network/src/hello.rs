//! Protocol-version negotiation with each peer.
//!
//! Every node announces, on its own channel and every few seconds, the range of network
//! protocol versions its binary speaks. For each peer the node keeps the negotiated version —
//! the highest both speak — and blocks a peer that cannot speak the chain's active network
//! version: the minimum a node accepts is raised only by an activated upgrade, never by a
//! binary alone, so mixed binaries keep talking until the network has moved on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commonware_codec::{Copying, DecodeExt as _, Encode as _};
use commonware_p2p::{Blocker, Receiver, Recipients, Sender};
use plexus_types::version::VersionRange;
use tracing::{debug, warn};

use crate::PublicKey;

/// How often a node announces its range.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);
/// Most peers remembered as answered (more than any peer set holds).
const REPLIED_MAX: usize = 4096;
/// Announcements are exactly one encoded [`VersionRange`].
const HELLO_BYTES: usize = 4;

/// What is known of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerVersion {
    pub range: VersionRange,
    /// The highest version both speak; `None` if the ranges do not overlap.
    pub negotiated: Option<u16>,
    pub last_seen: Instant,
}

/// The highest version two ranges share.
pub fn negotiate(ours: VersionRange, theirs: VersionRange) -> Option<u16> {
    let low = ours.min.max(theirs.min);
    let high = ours.max.min(theirs.max);
    (low <= high).then_some(high)
}

/// Peers' versions, shared with the API.
#[derive(Clone, Default)]
pub struct PeerVersions(Arc<Mutex<BTreeMap<PublicKey, PeerVersion>>>);

impl PeerVersions {
    pub fn snapshot(&self) -> Vec<(PublicKey, PeerVersion)> {
        self.0.lock().expect("peer versions lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Runs the exchange until the channel closes. `active` reads the chain's active network
/// version; `ours` is this binary's range.
pub async fn run<S, R, B>(
    ours: VersionRange,
    active: impl Fn() -> u16 + Send + 'static,
    (mut sender, mut receiver): (S, R),
    mut blocker: B,
    peers: PeerVersions,
) where
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
    B: Blocker<PublicKey = PublicKey>,
{
    let mut next_announce = tokio::time::Instant::now();
    let mut replied: std::collections::HashMap<PublicKey, Instant> = std::collections::HashMap::new();
    loop {
        if tokio::time::Instant::now() >= next_announce {
            let _ = sender.send(Recipients::All, ours.encode(), false);
            next_announce = tokio::time::Instant::now() + ANNOUNCE_EVERY;
        }
        let message = tokio::select! {
            m = receiver.recv() => m,
            _ = tokio::time::sleep_until(next_announce) => continue,
        };
        let Ok((peer, bytes)) = message else {
            warn!(target: "network::hello", "version channel closed");
            return;
        };
        let bytes = bytes.as_ref();
        let Some(range) = (bytes.len() == HELLO_BYTES).then(|| VersionRange::decode(Copying(bytes)).ok()).flatten()
        else {
            debug!(target: "network::hello", %peer, "malformed version announcement");
            continue;
        };
        let negotiated = negotiate(ours, range);
        let required = active();
        let compatible = range.contains(required);
        peers
            .0
            .lock()
            .expect("peer versions lock")
            .insert(peer.clone(), PeerVersion { range, negotiated, last_seen: Instant::now() });
        // Answer each peer directly, at most once per announcement period: announcements to
        // all reach only the validators, so followers (secondary peers) would otherwise never
        // hear from them. A reply to a reply comes only after a period, so this cannot echo.
        if compatible && replied.get(&peer).is_none_or(|at| at.elapsed() >= ANNOUNCE_EVERY) {
            if replied.len() >= REPLIED_MAX {
                replied.retain(|_, at| at.elapsed() < ANNOUNCE_EVERY);
            }
            if replied.len() < REPLIED_MAX {
                replied.insert(peer.clone(), Instant::now());
                let _ = sender.send(Recipients::One(peer.clone()), ours.encode(), false);
            }
        }
        if !compatible {
            warn!(target: "network::hello", %peer, min = range.min, max = range.max, required, "blocking a peer that cannot speak the active network version");
            let _ = blocker.block(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn negotiation_takes_the_highest_common_version() {
        assert_eq!(negotiate(r(1, 1), r(1, 1)), Some(1));
        assert_eq!(negotiate(r(1, 3), r(2, 5)), Some(3));
        assert_eq!(negotiate(r(2, 3), r(1, 2)), Some(2));
        assert_eq!(negotiate(r(1, 1), r(2, 3)), None);
    }
}
