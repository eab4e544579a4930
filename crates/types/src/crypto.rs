//! Keys, signatures and hashes: thin newtypes over the ed25519 and SHA-256 primitives, with a
//! hex form for JSON, the CLI and logs.

use std::fmt;
use std::str::FromStr;

use bytes::BufMut;
use commonware_codec::{Buf, Copying, DecodeExt, Encode, Error, FixedSize, Read, ReadExt, Write};
use commonware_cryptography::{Hasher, Sha256, Signer as _, Verifier as _, ed25519, sha256};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An account, validator or provider identity: an ed25519 public key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(pub ed25519::PublicKey);

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub sha256::Digest);

/// An ed25519 signature.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sig(pub ed25519::Signature);

/// An ed25519 private key. Never serialized except to the key file.
#[derive(Clone)]
pub struct PrivateKey(pub ed25519::PrivateKey);

/// SHA-256 of one byte string.
pub fn hash(bytes: &[u8]) -> Hash {
    Hash(Sha256::hash(&[bytes]))
}

/// SHA-256 of the concatenation of several byte strings.
pub fn hash_parts(parts: &[&[u8]]) -> Hash {
    Hash(Sha256::hash(parts))
}

impl Hash {
    /// The all-zero hash, used for "nothing" (e.g. the parent of the genesis block).
    pub const ZERO: Hash = Hash(sha256::Digest([0u8; 32]));

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Hash(sha256::Digest(bytes))
    }
}

impl Default for Hash {
    fn default() -> Self {
        Hash::ZERO
    }
}

impl PrivateKey {
    /// A fresh random key from the operating system's randomness.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        fill_random(&mut seed);
        Self::from_secret_bytes(&seed).expect("32 random bytes are a valid ed25519 secret")
    }

    /// A deterministic key for tests and simulations. Never use for real funds.
    pub fn from_seed(seed: u64) -> Self {
        PrivateKey(ed25519::PrivateKey::from_seed(seed))
    }

    /// The key from its 32 secret bytes.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != 32 {
            return Err(Error::InvalidLength(bytes.len()));
        }
        ed25519::PrivateKey::decode(Copying(bytes)).map(PrivateKey)
    }

    /// The 32 secret bytes (for the key file only).
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.0.encode().to_vec()
    }

    pub fn address(&self) -> Address {
        Address(self.0.public_key())
    }

    pub fn sign(&self, namespace: &[u8], message: &[u8]) -> Sig {
        Sig(self.0.sign(namespace, message))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.address())
    }
}

impl Address {
    pub fn verify(&self, namespace: &[u8], message: &[u8], sig: &Sig) -> bool {
        self.0.verify(namespace, message, &sig.0)
    }

    /// Checks many signatures under one namespace at once, each `(signer, message, signature)`;
    /// true only if every one is valid (and the list is not empty). One multi-scalar
    /// multiplication with random weights instead of one per signature: about twice as fast on
    /// large batches, with the same acceptance rules as [`Address::verify`].
    pub fn verify_batch(namespace: &[u8], items: &[(&Address, &[u8], &Sig)]) -> bool {
        use commonware_cryptography::{BatchEntry, BatchVerifier as _};
        ed25519::PublicKey::verify_batch(
            &mut rand::rng(),
            items,
            |_, &(signer, message, sig)| BatchEntry { namespace, message, public_key: &signer.0, signature: &sig.0 },
            &commonware_parallel::Sequential,
        )
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// A short form for logs and tables: the first 8 hex digits.
    pub fn short(&self) -> String {
        hex::encode(&self.as_bytes()[..4])
    }
}

fn fill_random(out: &mut [u8]) {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(out))
        .expect("the operating system provides randomness");
}

fn decode_plain<T: DecodeExt<()>, const N: usize>(raw: [u8; N]) -> Result<T, Error> {
    T::decode(Copying(&raw[..]))
}

/// Public keys decoded recently on this thread, by their bytes, at most this many.
const PUBLIC_KEY_CACHE_MAX: usize = 8192;

thread_local! {
    static PUBLIC_KEYS: std::cell::RefCell<std::collections::HashMap<[u8; 32], ed25519::PublicKey>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Decodes an ed25519 public key, remembering the result: decoding decompresses a curve point
/// (a field exponentiation), and the same few thousand signers recur in every transaction,
/// block and receipt a node reads. Only valid keys are kept; a full cache starts over. Lookups
/// only, so the map's order never matters.
fn decode_public_key(raw: [u8; 32]) -> Result<ed25519::PublicKey, Error> {
    if let Some(key) = PUBLIC_KEYS.with(|c| c.borrow().get(&raw).cloned()) {
        return Ok(key);
    }
    let key: ed25519::PublicKey = decode_plain(raw)?;
    PUBLIC_KEYS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= PUBLIC_KEY_CACHE_MAX {
            c.clear();
        }
        c.insert(raw, key.clone());
    });
    Ok(key)
}

/// Implements the codec, hex `Display`/`FromStr`, `Debug` and serde (as a hex string) for a
/// fixed-size newtype.
macro_rules! fixed_newtype {
    ($name:ident, $inner:ty, $label:literal) => {
        fixed_newtype!($name, $inner, $label, decode_plain);
    };
    ($name:ident, $inner:ty, $label:literal, $decode:ident) => {
        impl Write for $name {
            fn write(&self, buf: &mut impl BufMut) {
                self.0.write(buf)
            }
        }
        impl FixedSize for $name {
            const SIZE: usize = <$inner as FixedSize>::SIZE;
        }
        impl Read for $name {
            type Cfg = ();
            fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, Error> {
                let raw = <[u8; <$inner as FixedSize>::SIZE]>::read(buf)?;
                $decode(raw).map($name)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0.encode()))
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", $label, self)
            }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let s = s.trim().trim_start_matches("0x");
                let bytes = hex::decode(s).map_err(|e| format!("{} is not hex: {e}", $label))?;
                if bytes.len() != <$inner as FixedSize>::SIZE {
                    return Err(format!(
                        "{} must be {} bytes ({} hex digits), got {} bytes",
                        $label,
                        <$inner as FixedSize>::SIZE,
                        2 * <$inner as FixedSize>::SIZE,
                        bytes.len()
                    ));
                }
                let mut raw = [0u8; <$inner as FixedSize>::SIZE];
                raw.copy_from_slice(&bytes);
                $decode(raw).map($name).map_err(|e| format!("invalid {}: {e}", $label))
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fixed_newtype!(Address, ed25519::PublicKey, "address", decode_public_key);
fixed_newtype!(Hash, sha256::Digest, "hash");
fixed_newtype!(Sig, ed25519::Signature, "signature");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_verification_accepts_only_all_valid() {
        let keys: Vec<PrivateKey> = (0..5).map(PrivateKey::from_seed).collect();
        let addrs: Vec<Address> = keys.iter().map(PrivateKey::address).collect();
        let msgs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1 + i as usize]).collect();
        let sigs: Vec<Sig> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(b"ns", m)).collect();
        let items: Vec<(&Address, &[u8], &Sig)> = (0..5).map(|i| (&addrs[i], &msgs[i][..], &sigs[i])).collect();
        assert!(Address::verify_batch(b"ns", &items));
        assert!(!Address::verify_batch(b"other", &items), "the namespace is bound");
        let mut swapped = items.clone();
        swapped[2].2 = &sigs[3];
        assert!(!Address::verify_batch(b"ns", &swapped), "one bad signature fails the batch");
        assert!(!Address::verify_batch(b"ns", &[]));
    }

    #[test]
    fn decoded_keys_are_the_same_from_the_cache() {
        let addr = PrivateKey::from_seed(9).address();
        let bytes = commonware_codec::Encode::encode(&addr);
        let first = Address::decode(Copying(&bytes[..])).unwrap();
        let again = Address::decode(Copying(&bytes[..])).unwrap();
        assert_eq!(first, addr);
        assert_eq!(again, addr);
        let sig = PrivateKey::from_seed(9).sign(b"ns", b"m");
        assert!(again.verify(b"ns", b"m", &sig));
        // Bytes that are no curve point are refused every time, not remembered.
        let mut refused = 0;
        for y in 2u8..18 {
            let mut raw = [0u8; 32];
            raw[0] = y;
            let once = Address::decode(Copying(&raw[..])).map(|a| a.as_bytes().to_vec());
            let twice = Address::decode(Copying(&raw[..])).map(|a| a.as_bytes().to_vec());
            assert_eq!(once.is_ok(), twice.is_ok());
            if let (Ok(a), Ok(b)) = (&once, &twice) {
                assert_eq!((a.as_slice(), b.as_slice()), (&raw[..], &raw[..]));
            }
            refused += usize::from(once.is_err());
        }
        assert!(refused > 0, "some of 16 small y coordinates are off the curve");
    }

    #[test]
    fn address_hex_roundtrip_and_errors() {
        let key = PrivateKey::from_seed(7);
        let addr = key.address();
        let text = addr.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<Address>().unwrap(), addr);
        assert!("zz".parse::<Address>().unwrap_err().contains("not hex"));
        assert!("abcd".parse::<Address>().unwrap_err().contains("32 bytes"));
    }

    #[test]
    fn signatures_are_bound_to_namespace_and_message() {
        let key = PrivateKey::from_seed(1);
        let sig = key.sign(b"ns", b"hello");
        assert!(key.address().verify(b"ns", b"hello", &sig));
        assert!(!key.address().verify(b"other", b"hello", &sig));
        assert!(!key.address().verify(b"ns", b"hellp", &sig));
        assert!(!PrivateKey::from_seed(2).address().verify(b"ns", b"hello", &sig));
    }

    #[test]
    fn secret_roundtrip() {
        let key = PrivateKey::generate();
        let again = PrivateKey::from_secret_bytes(&key.secret_bytes()).unwrap();
        assert_eq!(key.address(), again.address());
        assert!(PrivateKey::from_secret_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn hash_is_sha256() {
        // SHA-256("abc"), the FIPS 180-2 test vector.
        assert_eq!(hash(b"abc").to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hash_parts(&[b"a", b"bc"]), hash(b"abc"));
    }
}
