//! Small helpers for the canonical encoding: bounded strings and byte strings, and decoding from
//! untrusted slices with a clear error.

use bytes::BufMut;
use commonware_codec::{Buf, Copying, Decode, EncodeSize, Error, RangeCfg, Read, Write};

/// Writes a UTF-8 string as a length-prefixed byte string.
pub fn write_str(value: &str, buf: &mut impl BufMut) {
    value.as_bytes().to_vec().write(buf);
}

/// Encoded size of [`write_str`].
pub fn str_size(value: &str) -> usize {
    // Same layout as a `Vec<u8>`: varint length, then the bytes.
    commonware_codec::varint::UInt(value.len() as u32).encode_size() + value.len()
}

/// Reads a string written by [`write_str`], rejecting more than `max_bytes` bytes or bad UTF-8.
pub fn read_str(buf: &mut impl Buf, max_bytes: usize) -> Result<String, Error> {
    let bytes = Vec::<u8>::read_cfg(buf, &(RangeCfg::new(0..=max_bytes), ()))?;
    String::from_utf8(bytes).map_err(|_| Error::Invalid("string", "not UTF-8"))
}

/// Reads a length-prefixed byte string of at most `max_bytes`.
pub fn read_bytes(buf: &mut impl Buf, max_bytes: usize) -> Result<Vec<u8>, Error> {
    Vec::<u8>::read_cfg(buf, &(RangeCfg::new(0..=max_bytes), ()))
}

/// Reads a vector of at most `max_items` items with the given item config.
pub fn read_vec<T: Read>(buf: &mut impl Buf, max_items: usize, cfg: &T::Cfg) -> Result<Vec<T>, Error> {
    Vec::<T>::read_cfg(buf, &(RangeCfg::new(0..=max_items), cfg.clone()))
}

/// Decodes a whole value from an untrusted slice, which must not be longer than `max_bytes`.
/// Trailing bytes are an error, so every value has exactly one encoding.
pub fn decode_bounded<T: Decode>(bytes: &[u8], max_bytes: usize, cfg: &T::Cfg) -> Result<T, Error> {
    if bytes.len() > max_bytes {
        return Err(Error::Invalid("message", "too long"));
    }
    T::decode_cfg(Copying(bytes), cfg)
}

/// Encodes a value to a fresh vector.
pub fn to_vec<T: commonware_codec::Encode>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.encode_size());
    value.write(&mut out);
    out
}
