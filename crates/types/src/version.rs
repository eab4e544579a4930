//! Per-layer protocol versions. Every layer of the chain (consensus, data, execution, network)
//! has its own active version, stored in state from genesis, so an upgrade of one layer adds a new
//! version beside the old one instead of editing it.

use bytes::BufMut;
use commonware_codec::{Buf, Error, FixedSize, Read, ReadExt, Write};
use serde::{Deserialize, Serialize};

/// A layer of the chain that is versioned and upgraded on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Consensus,
    Data,
    Execution,
    Network,
}

impl Layer {
    pub const ALL: [Layer; 4] = [Layer::Consensus, Layer::Data, Layer::Execution, Layer::Network];

    fn tag(self) -> u8 {
        match self {
            Layer::Consensus => 0,
            Layer::Data => 1,
            Layer::Execution => 2,
            Layer::Network => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layer::Consensus => "consensus",
            Layer::Data => "data",
            Layer::Execution => "execution",
            Layer::Network => "network",
        }
    }
}

impl std::str::FromStr for Layer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Layer::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| format!("unknown layer {s:?} (expected consensus, data, execution or network)"))
    }
}

impl Write for Layer {
    fn write(&self, buf: &mut impl BufMut) {
        self.tag().write(buf)
    }
}
impl FixedSize for Layer {
    const SIZE: usize = 1;
}
impl Read for Layer {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        match u8::read(buf)? {
            0 => Ok(Layer::Consensus),
            1 => Ok(Layer::Data),
            2 => Ok(Layer::Execution),
            3 => Ok(Layer::Network),
            other => Err(Error::InvalidEnum(other)),
        }
    }
}

/// The active version of every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector {
    pub consensus: u16,
    pub data: u16,
    pub execution: u16,
    pub network: u16,
}

impl VersionVector {
    /// Every layer at version 1: the genesis versions.
    pub const V1: VersionVector = VersionVector { consensus: 1, data: 1, execution: 1, network: 1 };

    /// [`VersionVector::V1`], for serde defaults.
    pub fn v1() -> Self {
        Self::V1
    }

    pub fn is_v1(&self) -> bool {
        *self == Self::V1
    }

    pub fn get(&self, layer: Layer) -> u16 {
        match layer {
            Layer::Consensus => self.consensus,
            Layer::Data => self.data,
            Layer::Execution => self.execution,
            Layer::Network => self.network,
        }
    }

    pub fn set(&mut self, layer: Layer, version: u16) {
        match layer {
            Layer::Consensus => self.consensus = version,
            Layer::Data => self.data = version,
            Layer::Execution => self.execution = version,
            Layer::Network => self.network = version,
        }
    }
}

impl Default for VersionVector {
    fn default() -> Self {
        Self::V1
    }
}

impl Write for VersionVector {
    fn write(&self, buf: &mut impl BufMut) {
        self.consensus.write(buf);
        self.data.write(buf);
        self.execution.write(buf);
        self.network.write(buf);
    }
}
impl FixedSize for VersionVector {
    const SIZE: usize = 8;
}
impl Read for VersionVector {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(VersionVector {
            consensus: u16::read(buf)?,
            data: u16::read(buf)?,
            execution: u16::read(buf)?,
            network: u16::read(buf)?,
        })
    }
}

/// An inclusive range of versions of one layer that a binary can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: u16,
    pub max: u16,
}

impl VersionRange {
    pub fn contains(&self, version: u16) -> bool {
        self.min <= version && version <= self.max
    }
}

/// The versions of every layer a binary can run, signalled on-chain by providers/validators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SupportedVersions {
    pub consensus: VersionRange,
    pub data: VersionRange,
    pub execution: VersionRange,
    pub network: VersionRange,
}

impl SupportedVersions {
    pub fn get(&self, layer: Layer) -> VersionRange {
        match layer {
            Layer::Consensus => self.consensus,
            Layer::Data => self.data,
            Layer::Execution => self.execution,
            Layer::Network => self.network,
        }
    }

    /// True when every active version in `active` is within this binary's ranges.
    pub fn supports(&self, active: &VersionVector) -> bool {
        Layer::ALL.iter().all(|&l| self.get(l).contains(active.get(l)))
    }

    /// Only version 1 of every layer.
    pub const V1_ONLY: SupportedVersions = SupportedVersions {
        consensus: VersionRange { min: 1, max: 1 },
        data: VersionRange { min: 1, max: 1 },
        execution: VersionRange { min: 1, max: 1 },
        network: VersionRange { min: 1, max: 1 },
    };
}

impl Write for VersionRange {
    fn write(&self, buf: &mut impl BufMut) {
        self.min.write(buf);
        self.max.write(buf);
    }
}
impl FixedSize for VersionRange {
    const SIZE: usize = 4;
}
impl Read for VersionRange {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        let min = u16::read(buf)?;
        let max = u16::read(buf)?;
        if min > max || min == 0 {
            return Err(Error::Invalid("version range", "min must be >= 1 and <= max"));
        }
        Ok(VersionRange { min, max })
    }
}

impl Write for SupportedVersions {
    fn write(&self, buf: &mut impl BufMut) {
        for l in Layer::ALL {
            self.get(l).write(buf);
        }
    }
}
impl FixedSize for SupportedVersions {
    const SIZE: usize = 16;
}
impl Read for SupportedVersions {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
        Ok(SupportedVersions {
            consensus: VersionRange::read(buf)?,
            data: VersionRange::read(buf)?,
            execution: VersionRange::read(buf)?,
            network: VersionRange::read(buf)?,
        })
    }
}
