//! The adapter between the engine's application interface and [`Chain`]: it walks a block's
//! ancestry back to a block whose state the chain knows, has the chain execute the missing
//! ancestors oldest first, then builds or verifies.

use commonware_consensus::marshal::ancestry::Ancestry;
use commonware_consensus::{Application, Epochable, Heightable};
use commonware_cryptography::Digested;
use commonware_runtime::{Clock, Metrics, Spawner};
use futures::StreamExt;
use plexus_types::{Address, Hash};
use tracing::{debug, info, warn};

use crate::block::{ConsensusBlock, Ctx};
use crate::{Chain, Round, Scheme};

/// Most unexecuted ancestors walked for one proposal or verification. A node further behind
/// than this waits for finalized blocks to catch up instead.
const ANCESTORS_MAX: usize = 1_024;

#[derive(Clone)]
pub(crate) struct Adapter<C: Chain> {
    pub chain: C,
    /// Shortest time between a block and its child.
    pub block_interval: std::time::Duration,
    /// This node's key.
    pub me: crate::PublicKey,
    /// Whom this node's votes reach (see [`crate::reach`]).
    pub reach: crate::reach::Reach,
    /// An epoch this node began late, in which it does not lead for a while.
    pub late: crate::reach::LateEntry,
}

impl<C: Chain> Adapter<C> {
    /// Makes sure the chain knows the post-state of `head` by executing, oldest first, the
    /// ancestors it has not seen. Returns false if one of them is invalid (so is `head`).
    async fn ensure_state(
        &self,
        head: Digested<ConsensusBlock>,
        ancestry: &mut impl Ancestry<ConsensusBlock>,
    ) -> Option<bool> {
        let mut missing = vec![head];
        loop {
            let oldest = missing.last().expect("never empty");
            if self.chain.has_state(&oldest.inner().block.header.parent) || oldest.height().get() == 0 {
                break;
            }
            if missing.len() >= ANCESTORS_MAX {
                warn!(height = oldest.height().get(), "too many unexecuted ancestors; waiting for finalized blocks");
                return None;
            }
            let parent = ancestry.next().await?;
            missing.push(parent);
        }
        for block in missing.iter().rev() {
            if self.chain.has_state(&Hash(block.inner().digest_value())) {
                continue;
            }
            if !self.chain.verify(&block.inner().block).await {
                return Some(false);
            }
        }
        Some(true)
    }
}

impl<C: Chain> Adapter<C> {
    /// Whether a proposal of this node's would reach enough of the epoch's validators to be
    /// notarized (see [`crate::reach`]); if not, the view is let go at once.
    fn reaches_a_quorum(&self, epoch: u64, view: u64) -> bool {
        let Some(peers) = self.chain.epoch_peers(epoch) else { return true };
        let validators: Vec<crate::PublicKey> = peers.validators.iter().map(|(a, _)| a.0.clone()).collect();
        match self.reach.count(&self.me, &validators) {
            Some((reached, needed)) if reached >= needed => true,
            Some((reached, needed)) => {
                info!(
                    epoch,
                    view,
                    reached,
                    needed,
                    "not proposing: connected to too few validators yet; the view goes on without a block"
                );
                false
            }
            None if validators.len() == 1 => true,
            None => {
                info!(
                    epoch,
                    view,
                    "not proposing: nothing sent yet, so whom a proposal would reach is unknown; the view goes on without a block"
                );
                false
            }
        }
    }
}

impl ConsensusBlock {
    fn digest_value(&self) -> crate::Digest {
        commonware_cryptography::Digestible::digest(self)
    }
}

impl<E, C> Application<E> for Adapter<C>
where
    E: Clock + Metrics + Spawner + rand::Rng + Send + 'static,
    C: Chain,
{
    type SigningScheme = Scheme;
    type Context = Ctx;
    type Block = ConsensusBlock;
    type Input = ();

    async fn propose(
        &mut self,
        (runtime, context): (E, Ctx),
        mut ancestry: impl Ancestry<ConsensusBlock>,
        _: (),
    ) -> Option<Digested<ConsensusBlock>> {
        let (epoch, view) = (context.epoch().get(), context.round.view().get());
        if self.late.holds(epoch, runtime.current()) {
            info!(
                epoch,
                view,
                "not proposing: this node began the epoch after its peers, which may not have seen its votes yet; the view goes on without a block"
            );
            return None;
        }
        if !self.reaches_a_quorum(epoch, view) {
            return None;
        }
        let parent = ancestry.next().await?;
        let parent_block = parent.inner().block.clone();
        if !self.chain.has_state(&parent_block.hash()) {
            let head = parent.clone();
            // The parent itself is executed by ensure_state (it is the head of the walk).
            if self.ensure_state(head, &mut ancestry).await != Some(true) {
                return None;
            }
        }
        // Before pacing: a node about to stop at an activation it cannot follow must let its
        // view go while it still runs, or its peers wait out the leader timeout.
        if let Err(why) = self.chain.can_extend(&parent_block.hash()) {
            info!(
                epoch,
                view,
                height = parent_block.header.height + 1,
                "not proposing: {why}; the view goes on without a block"
            );
            return None;
        }
        // Pace an idle chain: wait until the block interval has passed since the parent.
        let due = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(parent_block.header.timestamp_ms)
            + self.block_interval;
        if parent_block.header.height > 0 && runtime.current() < due {
            let wait = due.duration_since(runtime.current()).unwrap_or_default().min(self.block_interval);
            runtime.sleep(wait).await;
        }
        let round = Round {
            epoch: context.epoch().get(),
            view: context.round.view().get(),
            parent_view: context.parent.0.get(),
            leader: Address(context.leader.clone()),
        };
        let block = self.chain.propose(&parent_block, round).await?;
        debug!(height = block.header.height, txs = block.txs.len(), "proposed");
        let block = ConsensusBlock::new(block);
        let digest = block.digest_value();
        Some(Digested::precomputed(block, digest))
    }

    async fn verify(&mut self, (_, _context): (E, Ctx), mut ancestry: impl Ancestry<ConsensusBlock>) -> bool {
        let Some(block) = ancestry.next().await else { return false };
        match self.ensure_state(block, &mut ancestry).await {
            Some(valid) => valid,
            // Too far behind to judge: abstain (never resolve) rather than vote against.
            None => futures::future::pending().await,
        }
    }
}
