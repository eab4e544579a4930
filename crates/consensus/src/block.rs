//! The chain's block as the consensus engine sees it: a [`plexus_types::Block`] with its digest
//! computed once, implementing the engine's block traits.

use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error as CodecError, Read, ReadExt, Write};
use commonware_consensus::simplex::types::Context;
use commonware_consensus::types::{Epoch, Height, Round, View};
use commonware_consensus::{BoundedBlock, CertifiableBlock, Heightable};
use commonware_cryptography::Digestible;
use plexus_types::params::limits;

use crate::{Digest, PublicKey};

/// The consensus context a block was proposed in.
pub type Ctx = Context<Digest, PublicKey>;

/// A block with its digest (the SHA-256 of its header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsensusBlock {
    pub block: plexus_types::Block,
    digest: Digest,
}

impl ConsensusBlock {
    pub fn new(block: plexus_types::Block) -> Self {
        let digest = block.hash().0;
        ConsensusBlock { block, digest }
    }
}

impl Write for ConsensusBlock {
    fn write(&self, buf: &mut impl BufMut) {
        self.block.write(buf)
    }
}

impl EncodeSize for ConsensusBlock {
    fn encode_size(&self) -> usize {
        self.block.encode_size()
    }
}

impl Read for ConsensusBlock {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(ConsensusBlock::new(plexus_types::Block::read(buf)?))
    }
}

impl Digestible for ConsensusBlock {
    type Digest = Digest;
    fn digest(&self) -> Digest {
        self.digest
    }
}

impl Heightable for ConsensusBlock {
    fn height(&self) -> Height {
        Height::new(self.block.header.height)
    }
}

impl commonware_consensus::Block for ConsensusBlock {
    fn parent(&self) -> Digest {
        self.block.header.parent.0
    }
}

impl CertifiableBlock for ConsensusBlock {
    type Context = Ctx;

    /// Recovered from the header, which commits to epoch, view, proposer and parent view.
    fn context(&self) -> Ctx {
        let h = &self.block.header;
        Context {
            round: Round::new(Epoch::new(h.epoch), View::new(h.view)),
            leader: h.proposer.0.clone(),
            parent: (View::new(h.parent_view), h.parent.0),
        }
    }
}

impl BoundedBlock for ConsensusBlock {
    fn max_encode_size(_: &()) -> usize {
        limits::BLOCK_BYTES_MAX
    }
}
