//! The signing scheme of consensus votes and certificates, by consensus version.
//!
//! - **Version 1**: every vote is an ed25519 signature by the validator's identity key, and a
//!   certificate carries one signature per signer (a quorum of 64-byte signatures: certificates
//!   grow with the validator set).
//! - **Version 2**: every vote is a BLS12-381 signature (the `MinSig` variant: 48-byte
//!   signatures in G1, 96-byte keys in G2) by a key the validator registered on chain with a proof
//!   of possession, and a certificate carries one aggregated signature plus the signers' bitmap:
//!   its size stays the same whatever the number of validators, and verifying it is two pairings
//!   after adding the signers' public keys.
//!
//! One engine type runs every epoch, so [`Scheme`] is the two behind one face: each epoch's
//! scheme is one version or the other, chosen when the epoch starts. The wire encodings are laid
//! out so a version-1 epoch is byte-for-byte what it was before version 2 existed (old binaries
//! and recorded evidence keep decoding):
//! - a vote's [`Signature`] is 64 bytes: an ed25519 signature, or a BLS signature followed by
//!   16 zero bytes; which one it is comes from the epoch's version, never from the bytes;
//! - a [`Certificate`] is the signers' bitmap followed by the list of individual signatures
//!   (version 1), or by an empty list and the aggregated signature (version 2), so its bytes
//!   alone say which it is.
//!
//! A scheme of one version refuses the votes and certificates of the other: they never verify.

use std::collections::BTreeMap;

use bytes::BufMut;
use commonware_codec::types::lazy::Lazy;
use commonware_codec::{
    Buf, Copying, DecodeExt, Encode, EncodeSize, Error as CodecError, FixedSize, Read, ReadExt, ReadRangeExt, Write,
};
use commonware_consensus::simplex::scheme::{bls12381_multisig, ed25519 as simplex_ed25519};
use commonware_consensus::simplex::types::Subject;
use commonware_cryptography::bls12381::certificate::multisig::Certificate as AggregateCertificate;
use commonware_cryptography::bls12381::primitives::group::Private;
use commonware_cryptography::bls12381::primitives::ops;
use commonware_cryptography::bls12381::primitives::variant::{MinSig, Variant};
use commonware_cryptography::certificate::{self, AssemblyError, Attestation, Membership, Signers, Verification};
use commonware_cryptography::ed25519;
use commonware_cryptography::ed25519::certificate::Certificate as IndividualCertificate;
use commonware_parallel::Strategy;
use commonware_utils::N3f1;
use commonware_utils::iter::NonEmpty;
use commonware_utils::ordered::{BiMap, Set};
use rand::CryptoRng;

/// Version 1's scheme: ed25519 votes, certificates of individual signatures.
type V1 = simplex_ed25519::Scheme;
/// Version 2's scheme: BLS12-381 votes, certificates of one aggregated signature.
type V2 = bls12381_multisig::Scheme<ed25519::PublicKey, MinSig>;

/// A validator's BLS public key (consensus version 2): 96 bytes, a point in G2.
pub type BlsPublicKey = <MinSig as Variant>::Public;
/// A BLS signature: 48 bytes, a point in G1 (votes and proofs of possession).
pub type BlsSignature = <MinSig as Variant>::Signature;
/// A validator's BLS private key.
pub type BlsPrivateKey = Private;

/// Bytes of an encoded BLS public key.
pub const BLS_PUBLIC_KEY_BYTES: usize = <BlsPublicKey as FixedSize>::SIZE;
/// Bytes of an encoded BLS signature.
pub const BLS_SIGNATURE_BYTES: usize = <BlsSignature as FixedSize>::SIZE;
const ED25519_SIGNATURE_BYTES: usize = <ed25519::Signature as FixedSize>::SIZE;

/// The consensus versions this crate can run.
pub const SUPPORTED: std::ops::RangeInclusive<u16> = 1..=2;

/// The signing scheme of one epoch: consensus version 1 or 2.
#[derive(Clone, Debug)]
pub enum Scheme {
    V1(V1),
    V2(V2),
}

impl Scheme {
    /// A version-1 scheme that signs as `key` (`None` if `key` is not in `validators`).
    pub fn ed25519_signer(
        namespace: &[u8],
        validators: Set<ed25519::PublicKey>,
        key: ed25519::PrivateKey,
    ) -> Option<Self> {
        V1::signer(namespace, validators, key).map(Scheme::V1)
    }

    /// A version-1 scheme that only verifies.
    pub fn ed25519_verifier(namespace: &[u8], validators: Set<ed25519::PublicKey>) -> Self {
        Scheme::V1(V1::verifier(namespace, validators))
    }

    /// A version-2 scheme that signs as `key` (`None` if its public key is not a validator's).
    ///
    /// Every BLS key in `validators` must have had its proof of possession verified
    /// ([`verify_possession`]); otherwise one validator could pick a key that cancels the others'
    /// in an aggregate and forge certificates alone.
    pub fn bls_signer(
        namespace: &[u8],
        validators: BiMap<ed25519::PublicKey, BlsPublicKey>,
        key: BlsPrivateKey,
    ) -> Option<Self> {
        V2::signer(namespace, validators, key).map(Scheme::V2)
    }

    /// A version-2 scheme that only verifies (same proof-of-possession requirement).
    pub fn bls_verifier(namespace: &[u8], validators: BiMap<ed25519::PublicKey, BlsPublicKey>) -> Self {
        Scheme::V2(V2::verifier(namespace, validators))
    }

    /// The consensus version this scheme belongs to.
    pub fn version(&self) -> u16 {
        match self {
            Scheme::V1(_) => 1,
            Scheme::V2(_) => 2,
        }
    }
}

/// The namespace proofs of possession are signed in: the chain and the address registering the
/// key. Binding the address means a registration seen in the mempool cannot be replayed by
/// another address to take the key first (which would shut its owner out of consensus v2 for
/// good, keys being derived from identities and registered once).
pub fn possession_namespace(chain_id: &str, owner: &ed25519::PublicKey) -> Vec<u8> {
    let mut ns = crate::namespace(chain_id);
    ns.extend_from_slice(b"/bls-possession/");
    ns.extend_from_slice(&owner.encode());
    ns
}

/// Proves that `owner`, registering `key`'s public key, holds `key` (on chain `chain_id` only).
pub fn prove_possession(chain_id: &str, owner: &ed25519::PublicKey, key: &BlsPrivateKey) -> BlsSignature {
    ops::sign_proof_of_possession::<MinSig>(key, &possession_namespace(chain_id, owner))
}

/// Checks a proof of possession. Deterministic: the same verdict on every node.
pub fn verify_possession(
    chain_id: &str,
    owner: &ed25519::PublicKey,
    public: &BlsPublicKey,
    proof: &BlsSignature,
) -> bool {
    ops::verify_proof_of_possession::<MinSig>(public, &possession_namespace(chain_id, owner), proof).is_ok()
}

/// The registration of `identity`'s derived BLS key, with a proof of possession naming `owner` on
/// `chain_id` (a node registers with `owner` = its own address; tests also make mismatched ones).
pub fn key_registration(
    chain_id: &str,
    identity: &ed25519::PrivateKey,
    owner: &ed25519::PublicKey,
) -> plexus_types::tx::Payload {
    let key = derive_bls_key(identity);
    plexus_types::tx::Payload::RegisterConsensusKey {
        key: bls_public(&key).encode().to_vec(),
        proof: prove_possession(chain_id, owner, &key).encode().to_vec(),
    }
}

/// The public key of a BLS private key.
pub fn bls_public(key: &BlsPrivateKey) -> BlsPublicKey {
    ops::compute_public::<MinSig>(key)
}

/// Derives a validator's BLS key from its ed25519 identity key, so an operator has one secret to
/// keep: SHA-256 over a domain tag and the ed25519 seed, brought below the group order by
/// clearing the top three bits (zero, with negligible probability, is refused by decoding and
/// retried with a counter).
pub fn derive_bls_key(identity: &ed25519::PrivateKey) -> BlsPrivateKey {
    use commonware_cryptography::Hasher as _;
    let seed = identity.encode();
    for counter in 0u8..=u8::MAX {
        let digest = commonware_cryptography::Sha256::hash(&[b"plexus/consensus-v2/bls-key", &[counter], &seed]);
        let mut bytes: [u8; 32] = digest.as_ref().try_into().expect("sha256 is 32 bytes");
        // The group order's top byte is 0x73: a top byte of at most 0x1f keeps the value below it.
        bytes[0] &= 0x1f;
        if let Ok(key) = BlsPrivateKey::decode(Copying(&bytes[..])) {
            return key;
        }
    }
    unreachable!("256 SHA-256 outputs are all zero below 2^253")
}

/// A vote's signature: 64 bytes, read as the epoch's version says (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Signature([u8; ED25519_SIGNATURE_BYTES]);

impl Signature {
    fn from_ed25519(signature: &ed25519::Signature) -> Self {
        let mut bytes = [0u8; ED25519_SIGNATURE_BYTES];
        bytes.copy_from_slice(&signature.encode());
        Signature(bytes)
    }

    fn from_bls(signature: &BlsSignature) -> Self {
        let mut bytes = [0u8; ED25519_SIGNATURE_BYTES];
        bytes[..BLS_SIGNATURE_BYTES].copy_from_slice(&signature.encode());
        Signature(bytes)
    }

    fn ed25519(&self) -> Option<ed25519::Signature> {
        ed25519::Signature::decode(Copying(&self.0[..])).ok()
    }

    fn bls(&self) -> Option<BlsSignature> {
        let (point, padding) = self.0.split_at(BLS_SIGNATURE_BYTES);
        if padding.iter().any(|&b| b != 0) {
            return None;
        }
        BlsSignature::decode(Copying(point)).ok()
    }
}

impl Write for Signature {
    fn write(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }
}

impl FixedSize for Signature {
    const SIZE: usize = ED25519_SIGNATURE_BYTES;
}

impl Read for Signature {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Signature(<[u8; ED25519_SIGNATURE_BYTES]>::read(buf)?))
    }
}

/// A certificate: individual signatures (version 1) or one aggregate (version 2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Certificate {
    Individual(IndividualCertificate),
    Aggregate(AggregateCertificate<MinSig>),
}

impl Write for Certificate {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            Certificate::Individual(c) => c.write(buf),
            Certificate::Aggregate(c) => {
                c.signers.write(buf);
                no_signatures().write(buf);
                c.signature.write(buf);
            }
        }
    }
}

impl EncodeSize for Certificate {
    fn encode_size(&self) -> usize {
        match self {
            Certificate::Individual(c) => c.encode_size(),
            Certificate::Aggregate(c) => {
                c.signers.encode_size() + no_signatures().encode_size() + c.signature.encode_size()
            }
        }
    }
}

fn no_signatures() -> Vec<Lazy<ed25519::Signature>> {
    Vec::new()
}

impl Read for Certificate {
    /// The most participants a certificate may name.
    type Cfg = usize;

    fn read_cfg(buf: &mut impl Buf, participants: &usize) -> Result<Self, CodecError> {
        const WHAT: &str = "plexus::consensus::Certificate";
        let signers = Signers::read_cfg(buf, participants)?;
        if signers.count() == 0 {
            return Err(CodecError::Invalid(WHAT, "certificate names no signers"));
        }
        let signatures = Vec::<Lazy<ed25519::Signature>>::read_range(buf, ..=*participants)?;
        if signatures.is_empty() {
            let signature = Lazy::read(buf)?;
            return Ok(Certificate::Aggregate(AggregateCertificate { signers, signature }));
        }
        if signatures.len() != signers.count() {
            return Err(CodecError::Invalid(WHAT, "signers and signatures counts differ"));
        }
        Ok(Certificate::Individual(IndividualCertificate { signers, signatures }))
    }
}

fn to_v1(attestation: &Attestation<Scheme>) -> Option<Attestation<V1>> {
    let signature = attestation.signature.get()?.ed25519()?;
    Some(Attestation { signer: attestation.signer, signature: Lazy::from(signature) })
}

fn to_v2(attestation: &Attestation<Scheme>) -> Option<Attestation<V2>> {
    let signature = attestation.signature.get()?.bls()?;
    Some(Attestation { signer: attestation.signer, signature: Lazy::from(signature) })
}

fn from_v1(attestation: Attestation<V1>) -> Option<Attestation<Scheme>> {
    let signature = Signature::from_ed25519(attestation.signature.get()?);
    Some(Attestation { signer: attestation.signer, signature: Lazy::from(signature) })
}

fn from_v2(attestation: Attestation<V2>) -> Option<Attestation<Scheme>> {
    let signature = Signature::from_bls(attestation.signature.get()?);
    Some(Attestation { signer: attestation.signer, signature: Lazy::from(signature) })
}

/// Verifies attestations with an inner scheme: those whose bytes are not a signature of that
/// version are invalid without a check; the verified ones are returned as they came.
fn verify_with<I, T, R, D>(
    attestations: I,
    convert: impl Fn(&Attestation<Scheme>) -> Option<Attestation<T>>,
    verify: impl FnOnce(Vec<Attestation<T>>, &mut R) -> Verification<T>,
    rng: &mut R,
) -> Verification<Scheme>
where
    I: IntoIterator<Item = Attestation<Scheme>>,
    T: certificate::Scheme,
    R: CryptoRng,
    D: commonware_cryptography::Digest,
{
    let mut originals = BTreeMap::new();
    let mut invalid = Vec::new();
    let mut inner = Vec::new();
    for attestation in attestations {
        match convert(&attestation) {
            Some(converted) => {
                inner.push(converted);
                originals.insert(attestation.signer, attestation);
            }
            None => invalid.push(attestation.signer),
        }
    }
    let result = verify(inner, rng);
    invalid.extend(result.invalid);
    invalid.sort();
    let verified = result.verified.iter().filter_map(|a| originals.remove(&a.signer)).collect();
    Verification::new(verified, invalid)
}

impl certificate::Verifier for Scheme {
    type Subject<'a, D: commonware_cryptography::Digest> = Subject<'a, D>;
    type Faults = N3f1;
    type PublicKey = ed25519::PublicKey;
    type Certificate = Certificate;

    fn verify_certificate<R, D>(
        &self,
        rng: &mut R,
        subject: Subject<'_, D>,
        certificate: &Certificate,
        strategy: &impl Strategy,
    ) -> bool
    where
        R: CryptoRng,
        D: commonware_cryptography::Digest,
    {
        match (self, certificate) {
            (Scheme::V1(s), Certificate::Individual(c)) => s.verify_certificate(rng, subject, c, strategy),
            (Scheme::V2(s), Certificate::Aggregate(c)) => s.verify_certificate(rng, subject, c, strategy),
            _ => false,
        }
    }

    fn verify_certificates<'a, R, D, I>(&self, rng: &mut R, certificates: NonEmpty<I>, strategy: &impl Strategy) -> bool
    where
        R: CryptoRng,
        D: commonware_cryptography::Digest,
        I: Iterator<Item = (Subject<'a, D>, &'a Certificate)>,
    {
        // Version 1 verifies a batch of ed25519 signatures at once; a certificate of the other
        // version anywhere in the batch fails it.
        match self {
            Scheme::V1(s) => {
                let mut inner = Vec::new();
                for (subject, certificate) in certificates {
                    let Certificate::Individual(c) = certificate else { return false };
                    inner.push((subject, c));
                }
                match NonEmpty::try_new(inner.into_iter()) {
                    Some(batch) => s.verify_certificates(rng, batch, strategy),
                    None => true,
                }
            }
            Scheme::V2(_) => {
                certificates.into_iter().all(|(subject, c)| self.verify_certificate(rng, subject, c, strategy))
            }
        }
    }

    fn is_batchable() -> bool {
        V1::is_batchable() && V2::is_batchable()
    }

    fn max_certificate_size(participants: u32) -> usize {
        let aggregate = V2::max_certificate_size(participants) + no_signatures().encode_size();
        V1::max_certificate_size(participants).max(aggregate)
    }

    fn certificate_codec_config(&self) -> usize {
        match self {
            Scheme::V1(s) => s.certificate_codec_config(),
            Scheme::V2(s) => s.certificate_codec_config(),
        }
    }

    fn certificate_codec_config_unbounded() -> usize {
        V1::certificate_codec_config_unbounded().max(V2::certificate_codec_config_unbounded())
    }
}

impl certificate::Scheme for Scheme {
    type Signature = Signature;

    fn me(&self) -> Option<Membership> {
        match self {
            Scheme::V1(s) => s.me(),
            Scheme::V2(s) => s.me(),
        }
    }

    fn participants(&self) -> &Set<ed25519::PublicKey> {
        match self {
            Scheme::V1(s) => s.participants(),
            Scheme::V2(s) => s.participants(),
        }
    }

    fn sign<D: commonware_cryptography::Digest>(&self, subject: Subject<'_, D>) -> Option<Attestation<Self>> {
        match self {
            Scheme::V1(s) => from_v1(s.sign(subject)?),
            Scheme::V2(s) => from_v2(s.sign(subject)?),
        }
    }

    fn verify_attestation<R, D>(
        &self,
        rng: &mut R,
        subject: Subject<'_, D>,
        attestation: &Attestation<Self>,
        strategy: &impl Strategy,
    ) -> bool
    where
        R: CryptoRng,
        D: commonware_cryptography::Digest,
    {
        match self {
            Scheme::V1(s) => to_v1(attestation).is_some_and(|a| s.verify_attestation(rng, subject, &a, strategy)),
            Scheme::V2(s) => to_v2(attestation).is_some_and(|a| s.verify_attestation(rng, subject, &a, strategy)),
        }
    }

    fn verify_attestations<R, D, I>(
        &self,
        rng: &mut R,
        subject: Subject<'_, D>,
        attestations: I,
        strategy: &impl Strategy,
    ) -> Verification<Self>
    where
        R: CryptoRng,
        D: commonware_cryptography::Digest,
        I: IntoIterator<Item = Attestation<Self>>,
        I::IntoIter: Send,
    {
        match self {
            Scheme::V1(s) => verify_with::<_, _, _, D>(
                attestations,
                to_v1,
                |inner, rng| s.verify_attestations(rng, subject, inner, strategy),
                rng,
            ),
            Scheme::V2(s) => verify_with::<_, _, _, D>(
                attestations,
                to_v2,
                |inner, rng| s.verify_attestations(rng, subject, inner, strategy),
                rng,
            ),
        }
    }

    fn optimistic_assemble<'a, R, D, I, J>(
        &self,
        rng: &mut R,
        subject: Subject<'_, D>,
        pending: I,
        verified: J,
        strategy: &impl Strategy,
    ) -> Result<Certificate, Verification<Self>>
    where
        R: CryptoRng,
        D: commonware_cryptography::Digest,
        I: IntoIterator<Item = Attestation<Self>>,
        I::IntoIter: ExactSizeIterator + Send,
        J: IntoIterator<Item = &'a Attestation<Self>>,
        J::IntoIter: Send,
    {
        // Each version assembles as its own scheme does (ed25519 verifies before assembling,
        // multisig checks the aggregate first); pending votes whose bytes are not a signature of
        // this version are invalid without a check.
        macro_rules! delegate {
            ($inner:expr, $convert:expr, $wrap:path) => {{
                let mut originals = BTreeMap::new();
                let mut malformed = Vec::new();
                let mut inner_pending = Vec::new();
                for attestation in pending {
                    match $convert(&attestation) {
                        Some(converted) => {
                            inner_pending.push(converted);
                            originals.insert(attestation.signer, attestation);
                        }
                        None => malformed.push(attestation.signer),
                    }
                }
                let inner_verified: Vec<_> = verified.into_iter().filter_map(|a| $convert(a)).collect();
                match $inner.optimistic_assemble(rng, subject, inner_pending, inner_verified.iter(), strategy) {
                    Ok(certificate) => Ok($wrap(certificate)),
                    Err(result) => {
                        let mut invalid = malformed;
                        invalid.extend(result.invalid);
                        invalid.sort();
                        let verified = result.verified.iter().filter_map(|a| originals.remove(&a.signer)).collect();
                        Err(Verification::new(verified, invalid))
                    }
                }
            }};
        }
        match self {
            Scheme::V1(s) => delegate!(s, to_v1, Certificate::Individual),
            Scheme::V2(s) => delegate!(s, to_v2, Certificate::Aggregate),
        }
    }

    fn assemble<I>(&self, attestations: NonEmpty<I>, strategy: &impl Strategy) -> Result<Certificate, AssemblyError>
    where
        I: Iterator<Item = Attestation<Self>> + Send,
    {
        fn convert<T: certificate::Scheme>(
            attestations: impl Iterator<Item = Attestation<Scheme>>,
            convert: impl Fn(&Attestation<Scheme>) -> Option<Attestation<T>>,
        ) -> Result<NonEmpty<std::vec::IntoIter<Attestation<T>>>, AssemblyError> {
            let inner = attestations
                .map(|a| convert(&a).ok_or(AssemblyError::MalformedSignature(a.signer)))
                .collect::<Result<Vec<_>, _>>()?;
            NonEmpty::try_new(inner.into_iter()).ok_or(AssemblyError::InsufficientAttestations(1, 0))
        }
        match self {
            Scheme::V1(s) => {
                s.assemble(convert(attestations.into_iter(), to_v1)?, strategy).map(Certificate::Individual)
            }
            Scheme::V2(s) => {
                s.assemble(convert(attestations.into_iter(), to_v2)?, strategy).map(Certificate::Aggregate)
            }
        }
    }

    fn is_attributable() -> bool {
        V1::is_attributable() && V2::is_attributable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_codec::Decode as _;
    use commonware_consensus::simplex::types::{Finalization, Finalize, Proposal};
    use commonware_consensus::types::{Epoch, Round, View};
    use commonware_cryptography::certificate::Verifier as _;
    use commonware_cryptography::sha256::Digest;
    use commonware_cryptography::{Hasher as _, Sha256, Signer as _};
    use commonware_parallel::Sequential;

    const NS: &[u8] = b"plexus-test";

    fn identities(n: u64) -> Vec<ed25519::PrivateKey> {
        let mut keys: Vec<_> = (0..n).map(ed25519::PrivateKey::from_seed).collect();
        keys.sort_by_key(|k| k.public_key());
        keys
    }

    fn v1(keys: &[ed25519::PrivateKey]) -> Vec<Scheme> {
        let set = Set::from_iter_dedup(keys.iter().map(|k| k.public_key()));
        keys.iter().map(|k| Scheme::ed25519_signer(NS, set.clone(), k.clone()).expect("member")).collect()
    }

    fn bls_set(keys: &[ed25519::PrivateKey]) -> BiMap<ed25519::PublicKey, BlsPublicKey> {
        let pairs: Vec<_> = keys.iter().map(|k| (k.public_key(), bls_public(&derive_bls_key(k)))).collect();
        BiMap::try_from(pairs).expect("distinct keys")
    }

    fn v2(keys: &[ed25519::PrivateKey]) -> Vec<Scheme> {
        let set = bls_set(keys);
        keys.iter().map(|k| Scheme::bls_signer(NS, set.clone(), derive_bls_key(k)).expect("member")).collect()
    }

    fn finalization(schemes: &[Scheme], epoch: u64) -> Finalization<Scheme, Digest> {
        let proposal =
            Proposal::new(Round::new(Epoch::new(epoch), View::new(7)), View::new(6), Sha256::hash(&[b"block"]));
        let votes: Vec<_> = schemes.iter().map(|s| Finalize::sign(s, proposal.clone()).expect("signs")).collect();
        Finalization::from_finalizes(&schemes[0], NonEmpty::try_new(votes.iter()).expect("votes"), &Sequential)
            .expect("a quorum")
    }

    fn verifies(scheme: &Scheme, f: &Finalization<Scheme, Digest>) -> bool {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        f.verify(&mut rng, scheme, &Sequential)
    }

    #[test]
    fn both_versions_certify_and_refuse_each_other() {
        let keys = identities(4);
        let (one, two) = (v1(&keys), v2(&keys));
        let (f1, f2) = (finalization(&one, 0), finalization(&two, 0));
        assert!(verifies(&one[1], &f1) && verifies(&two[1], &f2));
        // A certificate of one version never verifies under the other, on the same validators.
        assert!(!verifies(&one[1], &f2) && !verifies(&two[1], &f1));
        // Nor under another namespace (another chain).
        let other = Scheme::bls_verifier(b"another-chain", bls_set(&keys));
        assert!(!verifies(&other, &f2));
        // Both round-trip through their encoding and stay the version they were.
        let cfg = two[0].certificate_codec_config();
        let back = Finalization::<Scheme, Digest>::decode_cfg(f2.encode(), &cfg).expect("decodes");
        assert!(matches!(back.certificate, Certificate::Aggregate(_)) && verifies(&two[2], &back));
        let back = Finalization::<Scheme, Digest>::decode_cfg(f1.encode(), &cfg).expect("decodes");
        assert!(matches!(back.certificate, Certificate::Individual(_)) && verifies(&one[2], &back));
    }

    #[test]
    fn version_one_bytes_are_the_plain_ed25519_scheme_bytes() {
        // Old binaries and recorded evidence decode version-1 votes and certificates as plain
        // ed25519: the encoding must not have changed.
        let keys = identities(4);
        let set = Set::from_iter_dedup(keys.iter().map(|k| k.public_key()));
        let plain: Vec<V1> = keys.iter().map(|k| V1::signer(NS, set.clone(), k.clone()).expect("member")).collect();
        let proposal = Proposal::new(Round::new(Epoch::new(3), View::new(9)), View::new(8), Sha256::hash(&[b"b"]));
        let ours: Vec<_> = v1(&keys).iter().map(|s| Finalize::sign(s, proposal.clone()).expect("signs")).collect();
        let theirs: Vec<_> = plain.iter().map(|s| Finalize::sign(s, proposal.clone()).expect("signs")).collect();
        assert_eq!(ours[0].encode(), theirs[0].encode());
        let ours =
            Finalization::from_finalizes(&v1(&keys)[0], NonEmpty::try_new(ours.iter()).expect("votes"), &Sequential)
                .expect("quorum");
        let theirs =
            Finalization::from_finalizes(&plain[0], NonEmpty::try_new(theirs.iter()).expect("votes"), &Sequential)
                .expect("quorum");
        assert_eq!(ours.encode(), theirs.encode());
    }

    #[test]
    fn aggregate_certificates_do_not_grow_with_the_validator_set() {
        let sizes: Vec<usize> = [4, 16, 64]
            .iter()
            .map(|&n| {
                let keys = identities(n);
                finalization(&v2(&keys), 0).certificate.encode_size()
            })
            .collect();
        // Only the signers' bitmap grows (one bit per validator).
        assert!(sizes[2] - sizes[0] <= 8, "{sizes:?}");
        let keys = identities(16);
        let individual = finalization(&v1(&keys), 0).certificate.encode_size();
        assert!(individual > 11 * 64 && sizes[1] < 64, "{individual} vs {}", sizes[1]);
    }

    #[test]
    fn forged_and_malformed_votes_are_refused() {
        let keys = identities(4);
        let two = v2(&keys);
        let proposal = Proposal::new(Round::new(Epoch::new(0), View::new(2)), View::new(1), Sha256::hash(&[b"x"]));
        let vote = Finalize::sign(&two[0], proposal.clone()).expect("signs");
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(2);
        assert!(vote.verify(&mut rng, &two[3], &Sequential));
        // Non-zero padding after the BLS point: not a version-2 signature.
        let mut bytes = vote.encode().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let bad = Finalize::<Scheme, Digest>::decode(Copying(&bytes[..])).expect("64 bytes decode");
        assert!(!bad.verify(&mut rng, &two[3], &Sequential));
        // An ed25519 vote in a version-2 epoch is refused, and the other way round.
        let ed = Finalize::sign(&v1(&keys)[0], proposal).expect("signs");
        assert!(!ed.verify(&mut rng, &two[3], &Sequential));
        assert!(!vote.verify(&mut rng, &v1(&keys)[3], &Sequential));
    }

    #[test]
    fn certificates_from_garbage_are_errors_not_panics() {
        // Pseudo-random bytes of every length up to 200, and the same with a valid-looking
        // signers prefix (length 4, all set) so decoding gets past the bitmap.
        for len in 0..200u32 {
            let bytes: Vec<u8> = (0..len)
                .flat_map(|i| Sha256::hash(&[&len.to_be_bytes(), &i.to_be_bytes()]).as_ref()[..1].to_vec())
                .collect();
            let _ = Certificate::decode_cfg(Copying(&bytes[..]), &64);
            let mut prefixed = vec![4u8, 0x0f];
            prefixed.extend_from_slice(&bytes);
            let _ = Certificate::decode_cfg(Copying(&prefixed[..]), &64);
        }
    }

    #[test]
    fn possession_proofs_bind_the_key_and_the_chain() {
        let keys = identities(2);
        let (a, b) = (derive_bls_key(&keys[0]), derive_bls_key(&keys[1]));
        assert_ne!(bls_public(&a), bls_public(&b));
        // Deterministic: the same identity gives the same BLS key.
        assert_eq!(bls_public(&a), bls_public(&derive_bls_key(&keys[0])));
        let (me, other) = (keys[0].public_key(), keys[1].public_key());
        let proof = prove_possession("chain-a", &me, &a);
        assert!(verify_possession("chain-a", &me, &bls_public(&a), &proof));
        assert!(!verify_possession("chain-b", &me, &bls_public(&a), &proof));
        assert!(!verify_possession("chain-a", &me, &bls_public(&b), &proof));
        // Replayed by another address: refused.
        assert!(!verify_possession("chain-a", &other, &bls_public(&a), &proof));
    }
}
