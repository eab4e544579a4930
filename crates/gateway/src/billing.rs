//! What the gateway pays for: only what it can count and check itself.
//!
//! Before a request goes out the gateway tokenizes it with its own copy of the model's
//! tokenizer ([`Expect`]): the prompt's tokens, the output bound (`max_tokens`, always set by
//! the gateway) and the canonical request hash the provider must attest to. A response is then
//! paid only if
//! - the attestation is signed by the provider (for this chain), names the model asked for,
//!   the request hash the gateway computed and the prompt length it counted;
//! - the output token ids it commits to are the ids the provider sent, at most `max_tokens` of
//!   them, and they spell exactly the text the gateway received (a stop string may cut the
//!   end; an end-of-generation token only last);
//! and then it is paid for the gateway's prompt count and the number of those ids — never for
//! the provider's `usage` numbers, which the gateway replaces in what the app sees.
//!
//! Streams are checked as they arrive ([`StreamMeter`]): every chunk's ids must keep spelling
//! what was received (up to text held back for a stop string), so receipts can be signed
//! mid-stream for verified tokens only, and a stream that runs past `max_tokens` is cut.
//!
//! Embeddings: the prompt tokens the gateway counts, and the request hash it computes.
//!
//! Tensor models: the rows the gateway counts in the request (one inference each), the request
//! hash it computes, and outputs with exactly those rows that hash to what was attested.

use plexus_inference::{Spelled, TokenId};
use plexus_types::receipt::{GrammarSpec, SamplingSpec, Transcript};
use plexus_types::{Attestation, Hash, ModelId};

/// Bytes of text a provider may hold back before sending (a stop string that might still
/// complete, or a UTF-8 character cut between tokens).
pub const HELD_BYTES_MAX: usize = plexus_inference::text::STOP_STRING_BYTES_MAX + 8;

/// What the gateway computed about a request before sending it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub model: ModelId,
    /// Prompt tokens, counted by the gateway's own tokenizer.
    pub prompt_tokens: u32,
    /// The most output tokens the request allows.
    pub max_tokens: u32,
    /// The canonical request hash ([`plexus_inference::Prepared::request_hash`]).
    pub request_hash: Hash,
    /// Stop strings of the request (a stop may cut the text short of what the ids spell).
    pub stop: Vec<String>,
    /// The prompt's tokens (empty for embeddings), kept to audit the response.
    pub prompt: Vec<TokenId>,
    /// How the output is sampled (the request hash covers it).
    pub sampling: SamplingSpec,
}

/// What a checked response is paid for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The attestation's hash, chained into the receipt's `outputs_root`.
    pub attestation: Hash,
    /// The generation as a verifier re-runs it (none for embeddings).
    pub transcript: Option<Transcript>,
}

/// Why a response is not paid (and its provider is marked).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Lie {
    #[error("no valid attestation: {0}")]
    Attestation(String),
    #[error("the attestation names {field} {got}, not {expected}")]
    Mismatch { field: &'static str, got: String, expected: String },
    #[error("{0} output tokens, more than the {1} the request allows")]
    TooMany(u64, u32),
    #[error("the output token ids do not spell the text received ({0})")]
    Spelling(String),
    #[error("the output leaves the request's grammar ({0})")]
    Grammar(String),
}

/// Checks ids against text: what the gateway's tokenizer says the ids spell.
pub trait Speller {
    fn spell(&self, ids: &[TokenId]) -> Result<Spelled, String>;

    /// Whether `ids` follow `grammar` token by token: `Err` names the first that does not (or
    /// why the grammar cannot be read here, which refuses the answer too: it was checked before
    /// the request left).
    fn follows(&self, grammar: &GrammarSpec, ids: &[TokenId]) -> Result<(), String> {
        let _ = (grammar, ids);
        Err("this gateway cannot check grammars for the model".into())
    }
}

impl Speller for plexus_inference::Tokenizer {
    fn spell(&self, ids: &[TokenId]) -> Result<Spelled, String> {
        plexus_inference::Tokenizer::spell(self, ids).map_err(|e| e.to_string())
    }

    fn follows(&self, grammar: &GrammarSpec, ids: &[TokenId]) -> Result<(), String> {
        let constraint = self.grammar(grammar).map_err(|e| e.to_string())?;
        constraint.check(ids).map_err(|at| format!("token {} at output position {at} is not allowed there", ids[at]))
    }
}

fn mismatch(field: &'static str, got: impl ToString, expected: impl ToString) -> Lie {
    Lie::Mismatch { field, got: got.to_string(), expected: expected.to_string() }
}

/// Checks the attestation's fields against what the gateway knows (the signature is checked
/// by the caller, who knows the provider's key).
fn check_request(expect: &Expect, att: &Attestation) -> Result<(), Lie> {
    if att.model != expect.model {
        return Err(mismatch("model", att.model, expect.model));
    }
    if att.request_hash != expect.request_hash {
        return Err(mismatch("request", att.request_hash, expect.request_hash));
    }
    if att.input_tokens != expect.prompt_tokens {
        return Err(mismatch("prompt length", att.input_tokens, expect.prompt_tokens));
    }
    Ok(())
}

/// Whether `received` is what `spelled` spells, allowing the end to have been cut by one of
/// `stop` (the text stops before the stop string the ids go on to spell).
fn spells(spelled: &[u8], received: &[u8], stop: &[String]) -> Result<(), Lie> {
    if spelled == received {
        return Ok(());
    }
    let Some(rest) = spelled.strip_prefix(received) else {
        return Err(Lie::Spelling("the ids spell different text".into()));
    };
    let cut_by_stop = stop.iter().any(|s| !s.is_empty() && rest.starts_with(s.as_bytes()));
    if cut_by_stop && rest.len() <= HELD_BYTES_MAX {
        return Ok(());
    }
    Err(Lie::Spelling(format!("the ids spell {} bytes more than were sent", rest.len())))
}

/// Checks a whole generated response (non-streamed, or a stream's end).
pub fn check_generation(
    speller: &dyn Speller,
    expect: &Expect,
    att: &Attestation,
    ids: &[TokenId],
    text: &str,
) -> Result<Verified, Lie> {
    check_request(expect, att)?;
    if ids.len() as u64 > u64::from(expect.max_tokens) {
        return Err(Lie::TooMany(ids.len() as u64, expect.max_tokens));
    }
    if att.output_tokens as usize != ids.len() {
        return Err(mismatch("output length", att.output_tokens, ids.len()));
    }
    if att.output_ids_hash != plexus_types::receipt::output_ids_hash(ids) {
        return Err(Lie::Spelling("the ids are not those the attestation commits to".into()));
    }
    if att.output_hash != plexus_types::hash(text.as_bytes()) {
        return Err(Lie::Spelling("the attestation's output hash is not the text received".into()));
    }
    let spelled = speller.spell(ids).map_err(Lie::Spelling)?;
    // An end-of-generation token spells nothing and can only be the last.
    if spelled.ends > 1 || (spelled.ends == 1 && speller.spell(&ids[ids.len() - 1..]).map_err(Lie::Spelling)?.ends != 1)
    {
        return Err(Lie::Spelling("end-of-generation tokens before the end".into()));
    }
    // Token bytes need not be UTF-8 (a byte token alone, a character cut by max_tokens): the
    // text is what they spell with each invalid or unfinished sequence made U+FFFD, as the
    // provider decodes them.
    spells(String::from_utf8_lossy(&spelled.bytes).as_bytes(), text.as_bytes(), &expect.stop)?;
    // A constrained request: every id must be one the grammar allowed where it stands (a
    // function of the ids alone, checked on every answer, not only on audited ones).
    if let Some(grammar) = expect.sampling.grammar() {
        speller.follows(grammar, ids).map_err(Lie::Grammar)?;
    }
    Ok(Verified {
        input_tokens: u64::from(expect.prompt_tokens),
        output_tokens: ids.len() as u64,
        attestation: att.hash(),
        transcript: Some(Transcript {
            model: expect.model,
            prompt: expect.prompt.clone(),
            max_tokens: expect.max_tokens,
            sampling: expect.sampling.clone(),
            stop: expect.stop.clone(),
            output: ids.to_vec(),
        }),
    })
}

/// Checks an embeddings response: the request and the prompt count the gateway computed.
pub fn check_embeddings(expect: &Expect, att: &Attestation) -> Result<Verified, Lie> {
    check_request(expect, att)?;
    if att.output_tokens != 0 {
        return Err(mismatch("output length", att.output_tokens, 0));
    }
    Ok(Verified {
        input_tokens: u64::from(expect.prompt_tokens),
        output_tokens: 0,
        attestation: att.hash(),
        transcript: None,
    })
}

/// Checks a tensor model's response: the request the gateway hashed, exactly the rows it
/// counted (one inference each, `expect.max_tokens`), and outputs that are the ones attested —
/// at least one, every one with that many rows, all of them hashing to the attestation's
/// output hash (a provider attests exactly the outputs it sends).
pub fn check_infer(expect: &Expect, att: &Attestation, body: &serde_json::Value) -> Result<Verified, Lie> {
    check_request(expect, att)?;
    if att.output_tokens != expect.max_tokens {
        return Err(mismatch("inferences", att.output_tokens, expect.max_tokens));
    }
    let outputs = plexus_serve::kserve::parse_outputs(body, expect.max_tokens as usize).map_err(Lie::Attestation)?;
    if outputs.outputs.is_empty() {
        return Err(Lie::Attestation("no outputs".into()));
    }
    let got = plexus_serve::kserve::output_hash(&outputs);
    if got != att.output_hash {
        return Err(mismatch("outputs", att.output_hash, got));
    }
    Ok(Verified {
        input_tokens: 0,
        output_tokens: u64::from(expect.max_tokens),
        attestation: att.hash(),
        transcript: None,
    })
}

/// A stream, checked chunk by chunk.
pub struct StreamMeter {
    pub expect: Expect,
    ids: Vec<TokenId>,
    /// What the ids spell, decoded as the provider decodes them (invalid sequences as U+FFFD)...
    spelled: String,
    /// ...but for the bytes of a character not finished yet.
    pending: Vec<u8>,
    received: Vec<u8>,
}

impl StreamMeter {
    pub fn new(expect: Expect) -> Self {
        StreamMeter { expect, ids: Vec::new(), spelled: String::new(), pending: Vec::new(), received: Vec::new() }
    }

    /// Output tokens verified so far: ids that spell what was received (or is held back).
    pub fn verified_output(&self) -> u64 {
        self.ids.len() as u64
    }

    /// The text received so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }

    /// One chunk: its text and the ids generated since the previous chunk.
    pub fn on_chunk(&mut self, speller: &dyn Speller, text: &str, ids: &[TokenId]) -> Result<(), Lie> {
        let total = self.ids.len() as u64 + ids.len() as u64;
        if total > u64::from(self.expect.max_tokens) {
            return Err(Lie::TooMany(total, self.expect.max_tokens));
        }
        let spelled = speller.spell(ids).map_err(Lie::Spelling)?;
        if spelled.ends > 0 {
            return Err(Lie::Spelling("an end-of-generation token in the middle of a stream".into()));
        }
        self.ids.extend_from_slice(ids);
        self.pending.extend_from_slice(&spelled.bytes);
        plexus_inference::text::decode_utf8_prefix(&mut self.pending, &mut self.spelled);
        self.received.extend_from_slice(text.as_bytes());
        let held = match self.spelled.as_bytes().strip_prefix(&self.received[..]) {
            Some(held) => held.len() + self.pending.len(),
            // The provider's last chunk ends an unfinished character as U+FFFD.
            None if !self.pending.is_empty() => {
                let ended = format!("{}{}", self.spelled, String::from_utf8_lossy(&self.pending));
                match ended.as_bytes().strip_prefix(&self.received[..]) {
                    Some(held) => held.len(),
                    None => return Err(Lie::Spelling("the ids spell different text".into())),
                }
            }
            None => return Err(Lie::Spelling("the ids spell different text".into())),
        };
        if held > HELD_BYTES_MAX {
            return Err(Lie::Spelling(format!("{held} bytes spelled but not sent")));
        }
        Ok(())
    }

    /// The end of the stream: the attestation and every id, which must extend the ids seen.
    pub fn finish(&self, speller: &dyn Speller, att: &Attestation, all_ids: &[TokenId]) -> Result<Verified, Lie> {
        if !all_ids.starts_with(&self.ids) {
            return Err(Lie::Spelling("the final ids do not extend the streamed ones".into()));
        }
        check_generation(speller, &self.expect, att, all_ids, &self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: id n spells the letter `a + n` (0..26); 99 ends generation.
    struct Letters;

    impl Speller for Letters {
        fn spell(&self, ids: &[TokenId]) -> Result<Spelled, String> {
            let mut bytes = Vec::new();
            let mut ends = 0;
            for &id in ids {
                match id {
                    0..=25 => bytes.push(b'a' + id as u8),
                    99 => ends += 1,
                    _ => return Err(format!("{id} is not in the vocabulary")),
                }
            }
            Ok(Spelled { bytes, ends })
        }
    }

    fn expect(max_tokens: u32) -> Expect {
        Expect {
            model: plexus_types::hash(b"m"),
            prompt_tokens: 12,
            max_tokens,
            request_hash: plexus_types::hash(b"request"),
            stop: vec!["xy".into()],
            prompt: (0..12).collect(),
            sampling: SamplingSpec::Greedy,
        }
    }

    fn attest(e: &Expect, ids: &[TokenId], text: &str) -> Attestation {
        Attestation {
            request_hash: e.request_hash,
            output_hash: plexus_types::hash(text.as_bytes()),
            model: e.model,
            input_tokens: e.prompt_tokens,
            output_tokens: ids.len() as u32,
            output_ids_hash: plexus_types::receipt::output_ids_hash(ids),
            logits_fingerprint: Hash::ZERO,
        }
    }

    /// Letters, and byte tokens that are not UTF-8 alone: 30 is 0xFF (never valid), 31 and 32
    /// are the first two and the last byte of "€".
    struct Bytes;

    impl Speller for Bytes {
        fn spell(&self, ids: &[TokenId]) -> Result<Spelled, String> {
            let mut bytes = Vec::new();
            for &id in ids {
                match id {
                    0..=25 => bytes.push(b'a' + id as u8),
                    30 => bytes.push(0xFF),
                    31 => bytes.extend_from_slice(&[0xE2, 0x82]),
                    32 => bytes.push(0xAC),
                    _ => return Err(format!("{id} is not in the vocabulary")),
                }
            }
            Ok(Spelled { bytes, ends: 0 })
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_spell_what_an_honest_provider_sends() {
        let e = expect(8);
        // Whole answers: an invalid byte and an unfinished character are U+FFFD in the text.
        for (ids, text) in [(&[0, 30, 1][..], "a\u{FFFD}b"), (&[0, 31][..], "a\u{FFFD}"), (&[0, 31, 32][..], "a€")] {
            assert!(check_generation(&Bytes, &e, &attest(&e, ids, text), ids, text).is_ok(), "{ids:?}");
        }
        // Another text for the same ids is still a lie.
        let ids = [0, 30, 1];
        assert!(check_generation(&Bytes, &e, &attest(&e, &ids, "a?b"), &ids, "a?b").is_err());
        // Streamed: the unfinished character is held back until its last byte comes...
        let mut m = StreamMeter::new(e.clone());
        for (text, ids) in [("a", &[0][..]), ("", &[31][..]), ("€", &[32][..]), ("\u{FFFD}", &[30][..])] {
            m.on_chunk(&Bytes, text, ids).unwrap_or_else(|l| panic!("{text:?}: {l}"));
        }
        assert_eq!(m.text(), "a€\u{FFFD}");
        // ...or ends the stream as U+FFFD, and the end checks out.
        let mut m = StreamMeter::new(e.clone());
        m.on_chunk(&Bytes, "b", &[1]).unwrap();
        m.on_chunk(&Bytes, "\u{FFFD}", &[31]).unwrap();
        let all = [1, 31];
        assert!(m.finish(&Bytes, &attest(&e, &all, "b\u{FFFD}"), &all).is_ok());
        let mut m = StreamMeter::new(e);
        assert!(m.on_chunk(&Bytes, "a?", &[0, 30]).is_err(), "a lie streamed");
    }

    #[test]
    fn an_honest_response_is_paid_for_the_gateways_counts() {
        let e = expect(8);
        let ids = [7, 4, 11, 11, 14, 99]; // "hello" and the end
        let v = check_generation(&Letters, &e, &attest(&e, &ids, "hello"), &ids, "hello").unwrap();
        assert_eq!((v.input_tokens, v.output_tokens), (12, 6));
        // What was paid for is what an auditor re-runs: the counted prompt and the ids.
        let t = v.transcript.unwrap();
        assert_eq!((t.prompt.len(), &t.output[..], t.max_tokens), (12, &ids[..], 8));
        // A stop string cut the text: "ab" received, the ids went on to spell "abxy".
        let ids = [0, 1, 23, 24];
        assert!(check_generation(&Letters, &e, &attest(&e, &ids, "ab"), &ids, "ab").is_ok());
    }

    #[test]
    fn every_lie_is_refused() {
        let e = expect(8);
        let ids = [7, 4, 11, 11, 14];
        let good = attest(&e, &ids, "hello");
        let lie = |att: Attestation, ids: &[TokenId], text: &str| check_generation(&Letters, &e, &att, ids, text);
        // Inflated counts: the prompt, or output beyond the ids.
        assert!(matches!(
            lie(Attestation { input_tokens: 1_000_000, ..good.clone() }, &ids, "hello"),
            Err(Lie::Mismatch { .. })
        ));
        assert!(matches!(
            lie(Attestation { output_tokens: 500, ..good.clone() }, &ids, "hello"),
            Err(Lie::Mismatch { .. })
        ));
        // Ids padded with tokens that spell more than was sent.
        let padded = [7, 4, 11, 11, 14, 0, 0];
        assert!(matches!(lie(attest(&e, &padded, "hello"), &padded, "hello"), Err(Lie::Spelling(_))));
        // More ids than max_tokens.
        let long = [0; 9];
        assert!(matches!(lie(attest(&e, &long, "aaaaaaaaa"), &long, "aaaaaaaaa"), Err(Lie::TooMany(9, 8))));
        // Another request, another model, text the ids do not spell, ends in the middle.
        assert!(lie(Attestation { request_hash: Hash::ZERO, ..good.clone() }, &ids, "hello").is_err());
        assert!(lie(Attestation { model: Hash::ZERO, ..good.clone() }, &ids, "hello").is_err());
        let other = attest(&e, &ids, "world");
        assert!(matches!(lie(other, &ids, "world"), Err(Lie::Spelling(_))));
        let early_end = [7, 99, 4];
        assert!(lie(attest(&e, &early_end, "he"), &early_end, "he").is_err());
        // Ids the attestation does not commit to.
        assert!(lie(good, &[7, 4, 11, 11, 15], "hellp").is_err());
    }

    #[test]
    fn streams_are_checked_as_they_come_and_cut_at_max_tokens() {
        let e = expect(6);
        let mut m = StreamMeter::new(e.clone());
        m.on_chunk(&Letters, "he", &[7, 4]).unwrap();
        // Held back for a possible stop string: ids ahead of the text, within bounds.
        m.on_chunk(&Letters, "", &[23]).unwrap();
        m.on_chunk(&Letters, "xl", &[11]).unwrap();
        assert_eq!(m.verified_output(), 4);
        assert!(matches!(m.on_chunk(&Letters, "zz", &[11]), Err(Lie::Spelling(_))), "text the ids do not spell");
        let mut m = StreamMeter::new(e.clone());
        m.on_chunk(&Letters, "aaaa", &[0, 0, 0, 0]).unwrap();
        // An endless stream: past max_tokens it is cut.
        assert!(matches!(m.on_chunk(&Letters, "aaa", &[0, 0, 0]), Err(Lie::TooMany(7, 6))));
        // The end must extend what was streamed and be attested.
        let mut m = StreamMeter::new(e.clone());
        m.on_chunk(&Letters, "ab", &[0, 1]).unwrap();
        let all = [0, 1, 99];
        assert!(m.finish(&Letters, &attest(&e, &all, "ab"), &all).is_ok());
        assert!(m.finish(&Letters, &attest(&e, &[2, 1, 99], "ab"), &[2, 1, 99]).is_err());
    }

    #[test]
    fn a_tensor_response_is_paid_only_for_the_counted_rows_and_the_attested_outputs() {
        use plexus_inference::tensor::{Tensor, TensorResponse};
        let expect = Expect { prompt_tokens: 0, max_tokens: 2, stop: vec![], prompt: vec![], ..expect(2) };
        let outputs = |rows: usize, values: Vec<f32>| TensorResponse {
            outputs: vec![Tensor { name: "p".into(), shape: vec![rows, values.len() / rows.max(1)], data: values }],
            rows: rows as u32,
        };
        let body = |r: &TensorResponse| {
            let outs: Vec<serde_json::Value> = r
                .outputs
                .iter()
                .map(|t| serde_json::json!({"name": t.name, "shape": t.shape, "datatype": "FP32", "data": t.data}))
                .collect();
            serde_json::json!({ "outputs": outs })
        };
        let att = |r: &TensorResponse, rows: u32| Attestation {
            request_hash: expect.request_hash,
            output_hash: plexus_serve::kserve::output_hash(r),
            model: expect.model,
            input_tokens: 0,
            output_tokens: rows,
            output_ids_hash: Hash::ZERO,
            logits_fingerprint: Hash::ZERO,
        };
        let honest = outputs(2, vec![0.25, 0.75, 0.5, 0.5]);
        let v = check_infer(&expect, &att(&honest, 2), &body(&honest)).unwrap();
        assert_eq!((v.input_tokens, v.output_tokens), (0, 2));
        // More rows attested than the request had: not paid.
        let err = check_infer(&expect, &att(&honest, 3), &body(&honest)).unwrap_err();
        assert!(matches!(err, Lie::Mismatch { field: "inferences", .. }), "{err}");
        // Outputs changed after attesting (or attested and sent differently): not paid.
        let other = outputs(2, vec![0.25, 0.75, 0.5, 0.4]);
        assert!(matches!(check_infer(&expect, &att(&honest, 2), &body(&other)), Err(Lie::Mismatch { .. })));
        // Fewer rows in the outputs than were paid for, or none at all: not paid.
        let short = outputs(1, vec![0.25, 0.75]);
        assert!(check_infer(&expect, &att(&short, 2), &body(&short)).is_err());
        let empty = TensorResponse { outputs: vec![], rows: 2 };
        assert!(check_infer(&expect, &att(&empty, 2), &body(&empty)).is_err());
        // Another request's attestation: not paid.
        let mut replayed = att(&honest, 2);
        replayed.request_hash = plexus_types::hash(b"another request");
        assert!(matches!(check_infer(&expect, &replayed, &body(&honest)), Err(Lie::Mismatch { field: "request", .. })));
    }
}
