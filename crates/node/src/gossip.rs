//! Transaction gossip: transactions admitted to this node's mempool are sent to every connected
//! peer in small batches; transactions received from peers are checked and admitted like any
//! submission (and not re-sent, since every peer sends to every peer).

use std::sync::Arc;
use std::time::Duration;

use bytes::BufMut;
use commonware_codec::{Buf, Copying, Decode, EncodeSize, Error as CodecError, RangeCfg, Read, Write};
use commonware_p2p::{Receiver, Recipients, Sender};
use commonware_runtime::{Clock, Metrics, Spawner, Storage};
use plexus_types::SignedTx;
use plexus_types::params::limits;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::chain::ChainState;

/// Most transactions in one gossip message.
pub const BATCH_TXS_MAX: usize = 256;
/// Longest a transaction waits for its batch to fill before it is sent anyway.
const BATCH_WAIT: Duration = Duration::from_millis(10);
/// Transactions waiting to be gossiped; more are dropped (they still reach this node's blocks).
pub const QUEUE_TXS_MAX: usize = 16_384;

/// A batch of transactions on the wire.
pub struct Batch(pub Vec<SignedTx>);

impl Write for Batch {
    fn write(&self, buf: &mut impl BufMut) {
        self.0.write(buf)
    }
}

impl EncodeSize for Batch {
    fn encode_size(&self) -> usize {
        self.0.encode_size()
    }
}

impl Read for Batch {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Batch(Vec::<SignedTx>::read_cfg(buf, &(RangeCfg::new(1..=BATCH_TXS_MAX), ()))?))
    }
}

/// Largest gossip message, in bytes.
pub const MESSAGE_BYTES_MAX: usize = BATCH_TXS_MAX * limits::TX_BYTES_MAX / 8;

/// Starts gossip on a p2p channel; returns the queue to feed new transactions into.
pub fn start<E, S, R>(
    context: &E,
    chain: ChainState<E>,
    (mut sender, mut receiver): (S, R),
) -> mpsc::Sender<Arc<SignedTx>>
where
    E: Storage + Clock + Metrics + Spawner + Send + Sync + 'static,
    S: Sender,
    R: Receiver,
{
    let (tx, mut rx) = mpsc::channel::<Arc<SignedTx>>(QUEUE_TXS_MAX);
    context.child("gossip_out").spawn(move |context| async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first.as_ref().clone()];
            let mut bytes = batch[0].encode_size();
            let deadline = context.current() + BATCH_WAIT;
            while batch.len() < BATCH_TXS_MAX && bytes < MESSAGE_BYTES_MAX - limits::TX_BYTES_MAX {
                let next = futures::select! {
                    next = futures::FutureExt::fuse(rx.recv()) => next,
                    _ = futures::FutureExt::fuse(context.sleep_until(deadline)) => None,
                };
                let Some(next) = next else { break };
                bytes += next.encode_size();
                batch.push(next.as_ref().clone());
            }
            let message = commonware_codec::Encode::encode(&Batch(batch));
            let _ = sender.send(Recipients::All, message, false);
        }
    });
    // Admission checks signatures: its own thread, so a burst of gossip cannot starve
    // consensus on the shared executor.
    context.child("gossip_in").dedicated().spawn(move |_| async move {
        loop {
            let Ok((peer, message)) = receiver.recv().await else {
                warn!("gossip channel closed");
                break;
            };
            if message.len() > MESSAGE_BYTES_MAX {
                continue;
            }
            let bytes = message.as_ref().to_vec();
            let Ok(Batch(txs)) = Batch::decode_cfg(Copying(&bytes[..]), &()) else {
                debug!(%peer, "undecodable gossip");
                continue;
            };
            for tx in txs {
                // Already-known and stale transactions are normal under gossip.
                let _ = chain.submit(tx, false);
            }
        }
    });
    tx
}
