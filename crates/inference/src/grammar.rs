//! Constrained decoding: outputs that follow a JSON schema or a grammar.
//!
//! The grammar engine is llguidance (what llama.cpp and vLLM use): it compiles a JSON schema
//! or a Lark grammar against a model's vocabulary, then gives, after any prefix of an output,
//! the set of tokens that keep the output inside the grammar (the mask). The sampler picks only
//! among those; the end-of-generation tokens are allowed exactly where the grammar may end, and
//! they are all that is allowed once it must.
//!
//! The mask is a function of the grammar's source, the vocabulary and the output before the
//! position alone: llguidance bounds its work by counted fuel, never by time, and the limits
//! are fixed here ([`LIMITS`]). So a constrained generation stays replayable: the grammar joins
//! the sampling the request hash commits to, a client checks every answer's ids against it
//! ([`Constraint::check`]), and an audit re-derives each position's mask before it scores the
//! position.
//!
//! A JSON schema is compiled strictly (a keyword llguidance cannot enforce is an error, never
//! ignored) with the separators `", "` and `": "` and no other whitespace between tokens, so
//! a small model cannot fill its answer with blank lines.

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use plexus_types::receipt::{GRAMMAR_BYTES_MAX, GrammarKind, GrammarSpec};
use serde_json::Value;

use crate::{Error, TokenId};

/// The grammar engine's work bounds: fixed, so every machine derives the same masks (a bound
/// hit is an error of the request's grammar, the same everywhere). llguidance's defaults,
/// which its authors measured to allow every schema of their test suite of real ones.
pub const LIMITS: ParserLimits = ParserLimits {
    max_items_in_row: 2000,
    initial_lexer_fuel: 1_000_000,
    step_lexer_fuel: 200_000,
    step_max_items: 50_000,
    max_lexer_states: 250_000,
    max_grammar_size: 500_000,
    precompute_large_lexemes: true,
    verbose_errors: false,
};

/// The request parameter a grammar of `kind` came from, for error messages.
pub fn param_of(kind: GrammarKind) -> &'static str {
    match kind {
        GrammarKind::JsonSchema => "response_format",
        GrammarKind::Lark => "grammar",
    }
}

/// A model's vocabulary as the grammar engine reads it, and the compiler built over it (once
/// per model: it indexes every token's bytes).
pub struct Vocabulary {
    factory: ParserFactory,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary").field("tokens", &self.factory.tok_env().tok_trie().vocab_size()).finish()
    }
}

impl Vocabulary {
    /// `tokens[i]` is token `i`'s bytes as the engine streams them, or `None` for a control
    /// token (it spells nothing and no grammar admits it); `ends` are the ids that end a
    /// generation, allowed where the grammar may end.
    pub fn new(tokens: Vec<Option<Vec<u8>>>, ends: &[TokenId]) -> Result<Vocabulary, Error> {
        let n = tokens.len();
        let end = |t: TokenId| usize::try_from(t).ok().filter(|&t| t < n).map(|t| t as u32);
        let ends: Vec<u32> = ends.iter().filter_map(|&t| end(t)).collect();
        let Some(&eos) = ends.first() else {
            return Err(Error::Engine("the vocabulary has no end-of-generation token".into()));
        };
        // llguidance marks special tokens with a leading 0xFF byte (never in UTF-8 text).
        let words: Vec<Vec<u8>> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| match bytes {
                Some(b) if !b.is_empty() => b,
                _ => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(format!("<special_{i}>").as_bytes());
                    w
                }
            })
            .collect();
        let info = TokRxInfo::new(n as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory =
            ParserFactory::new(&env, InferenceCapabilities::default(), &SlicedBiasComputer::general_slices())
                .map_err(|e| Error::Engine(format!("the grammar engine: {e}")))?;
        factory.quiet();
        *factory.limits_mut() = LIMITS;
        Ok(Vocabulary { factory })
    }

    /// Compiles `spec` into a fresh constraint (positioned before the first output token).
    /// A grammar that does not compile is the request's fault: an invalid-parameter error
    /// naming `response_format` or `grammar`.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Constraint, Error> {
        let param = param_of(spec.kind);
        if spec.source.len() > GRAMMAR_BYTES_MAX {
            return Err(Error::invalid(param, format!("the grammar is longer than {GRAMMAR_BYTES_MAX} bytes")));
        }
        let grammar = match spec.kind {
            GrammarKind::JsonSchema => {
                let mut schema: Value = serde_json::from_str(&spec.source)
                    .map_err(|e| Error::invalid(param, format!("the JSON schema is not JSON: {e}")))?;
                let Some(object) = schema.as_object_mut() else {
                    return Err(Error::invalid(param, "the JSON schema must be an object"));
                };
                // The compiler's options travel in the schema; these, never the request's.
                object.insert(
                    "x-guidance".into(),
                    serde_json::json!({
                        "whitespace_flexible": false,
                        "item_separator": ", ",
                        "key_separator": ": ",
                        "lenient": false,
                    }),
                );
                TopLevelGrammar::from_json_schema(schema)
            }
            GrammarKind::Lark => TopLevelGrammar::from_lark(spec.source.clone()),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| {
            let why = e.to_string();
            Error::invalid(param, format!("the grammar cannot be used: {}", &why[..why.floor_char_boundary(300)]))
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::invalid(param, format!("the grammar cannot be used: {e}")));
        }
        Ok(Constraint { spec: spec.clone(), matcher, steps: 0 })
    }
}

/// The tokens a grammar allows at one position.
pub struct TokenMask(SimpleVob);

impl TokenMask {
    pub fn allows(&self, token: TokenId) -> bool {
        usize::try_from(token).is_ok_and(|t| t < self.0.len() && self.0.is_allowed(t as u32))
    }

    /// Sets every logit the mask does not allow to `-inf`.
    pub fn apply(&self, logits: &mut [f32]) {
        for (i, l) in logits.iter_mut().enumerate() {
            if !(i < self.0.len() && self.0.is_allowed(i as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.0.num_set()
    }
}

/// A compiled grammar following one output, token by token.
#[derive(Clone)]
pub struct Constraint {
    spec: GrammarSpec,
    matcher: Matcher,
    /// Tokens consumed so far.
    steps: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("spec", &self.spec).field("steps", &self.steps).finish()
    }
}

impl Constraint {
    pub fn spec(&self) -> &GrammarSpec {
        &self.spec
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> Error {
        let why = e.to_string();
        Error::invalid(
            param_of(self.spec.kind),
            format!("the grammar {what} after {} tokens: {}", self.steps, &why[..why.floor_char_boundary(300)]),
        )
    }

    /// The tokens allowed next: the grammar's, or only the ends of generation once it is
    /// complete. An error (the grammar's work bound hit, or nothing allowed) is the request's:
    /// the same grammar fails the same way everywhere.
    pub fn mask(&mut self) -> Result<TokenMask, Error> {
        let mask = self.matcher.compute_mask_or_eos().map_err(|e| self.failed("cannot go on", e))?;
        if mask.is_zero() {
            return Err(self.failed("cannot go on", "no token is allowed"));
        }
        Ok(TokenMask(mask))
    }

    /// Moves past `token`, which must be one [`Constraint::mask`] allowed.
    pub fn advance(&mut self, token: TokenId) -> Result<(), Error> {
        let t = u32::try_from(token).map_err(|_| self.failed("refuses a token", "a negative id"))?;
        if self.matcher.is_stopped() {
            // Complete: only an end may follow, and it changes nothing.
            if !self.is_end(t) {
                return Err(self.failed("refuses a token", "the grammar is complete"));
            }
        } else {
            self.matcher.consume_token(t).map_err(|e| self.failed("refuses a token", e))?;
        }
        self.steps += 1;
        Ok(())
    }

    fn is_end(&self, token: u32) -> bool {
        self.matcher.tok_env().is_ok_and(|e| e.tok_trie().eos_tokens().contains(&token))
    }

    /// Whether `output` (ids, ends of generation included) is one the grammar allows token by
    /// token: `Err(i)` names the first position it refuses. Cheaper than a mask per position:
    /// each token is only tested against the grammar.
    pub fn check(mut self, output: &[TokenId]) -> Result<(), usize> {
        let Ok(ids) = output.iter().map(|&t| u32::try_from(t)).collect::<Result<Vec<u32>, _>>() else {
            return Err(output.iter().position(|&t| t < 0).unwrap_or(0));
        };
        let n_vocab = self.matcher.tok_env().map(|e| e.tok_trie().vocab_size()).unwrap_or(0);
        if let Some(i) = ids.iter().position(|&t| t as usize >= n_vocab) {
            return Err(i);
        }
        for (i, &t) in ids.iter().enumerate() {
            // Once the grammar is complete only an end may follow (what the mask allows then).
            if self.matcher.is_stopped() {
                if self.is_end(t) {
                    continue;
                }
                return Err(i);
            }
            match self.matcher.try_consume_tokens(&[t]) {
                Ok(1) => {}
                _ => return Err(i),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte as a token, a few multi-byte ones, two control tokens; 260 is the end.
    fn vocabulary() -> Vocabulary {
        let mut tokens: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
        tokens.push(Some(b"{\"".to_vec())); // 256
        tokens.push(Some(b"\": ".to_vec())); // 257
        tokens.push(Some(b"true".to_vec())); // 258
        tokens.push(None); // 259, a control token that is not an end
        tokens.push(None); // 260, the end
        Vocabulary::new(tokens, &[260]).unwrap()
    }

    fn json(schema: &str) -> GrammarSpec {
        GrammarSpec { kind: GrammarKind::JsonSchema, source: schema.into() }
    }

    fn ids(text: &str) -> Vec<TokenId> {
        text.bytes().map(TokenId::from).collect()
    }

    #[test]
    fn a_schema_allows_its_json_and_the_end_only_where_it_may_end() {
        let v = vocabulary();
        let schema = json(
            r#"{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"],"additionalProperties":false}"#,
        );
        let mut c = v.compile(&schema).unwrap();
        let first = c.mask().unwrap();
        assert!(first.allows(b'{' as TokenId) && first.allows(256));
        assert!(!first.allows(b' ' as TokenId) && !first.allows(b'x' as TokenId), "no leading space, no text");
        assert!(!first.allows(260) && !first.allows(259), "neither the end nor a control token");
        // Walk an answer through, with the multi-byte tokens where they fit.
        let answer: Vec<TokenId> = [vec![256], ids("ok"), vec![257, 258], ids("}"), vec![260]].concat();
        for &t in &answer {
            let mask = c.mask().unwrap();
            assert!(mask.allows(t), "token {t} refused");
            c.advance(t).unwrap();
        }
        // Complete: only the end may follow.
        let done = c.mask().unwrap();
        assert!(done.allows(260) && done.count() == 1);
        // The same answer checks; a changed one is refused where it leaves the grammar.
        assert_eq!(v.compile(&schema).unwrap().check(&answer), Ok(()));
        let bad: Vec<TokenId> = [vec![256], ids("ok\": 1")].concat();
        assert_eq!(v.compile(&schema).unwrap().check(&bad), Err(6), "a number where a boolean must be");
        let extra: Vec<TokenId> = [vec![256], ids("ok\": true}x")].concat();
        assert_eq!(v.compile(&schema).unwrap().check(&extra), Err(11), "nothing but an end after the object");
        let early: Vec<TokenId> = [vec![256], ids("ok\": "), vec![260]].concat();
        assert_eq!(v.compile(&schema).unwrap().check(&early), Err(6), "no end before the object closes");
        // Cut by max_tokens mid-object is fine: every token was allowed where it stands.
        assert_eq!(v.compile(&schema).unwrap().check(&answer[..4]), Ok(()));
        assert_eq!(v.compile(&schema).unwrap().check(&[-1]), Err(0));
        assert_eq!(v.compile(&schema).unwrap().check(&[999]), Err(0));
    }

    #[test]
    fn the_mask_is_applied_to_logits_and_masks_are_the_same_each_time() {
        let v = vocabulary();
        let spec = json(r#"{"enum":["yes","no"]}"#);
        let mut a = v.compile(&spec).unwrap();
        let mut b = v.compile(&spec).unwrap();
        let mut logits = vec![1.0f32; 261];
        let mask = a.mask().unwrap();
        mask.apply(&mut logits);
        let allowed: Vec<usize> = (0..261).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(allowed, vec![b'"' as usize]);
        // Determinism: a second compile of the same source gives the same masks along a path.
        for &t in &ids("\"no\"") {
            let (ma, mb) = (a.mask().unwrap(), b.mask().unwrap());
            assert_eq!(
                (0..261).map(|i| ma.allows(i)).collect::<Vec<_>>(),
                (0..261).map(|i| mb.allows(i)).collect::<Vec<_>>()
            );
            a.advance(t).unwrap();
            b.advance(t).unwrap();
        }
        assert!(a.advance(b'x' as TokenId).is_err(), "a token the grammar refuses");
    }

    #[test]
    fn bad_grammars_are_the_requests_fault_and_name_their_parameter() {
        let v = vocabulary();
        for (spec, param) in [
            (json("not json"), "response_format"),
            (json("[1, 2]"), "response_format"),
            (json(r#"{"type":"object","properties":{"a":{"type":"strin"}}}"#), "response_format"),
            (GrammarSpec { kind: GrammarKind::Lark, source: "start: missing_rule".into() }, "grammar"),
            (GrammarSpec { kind: GrammarKind::Lark, source: "x".repeat(GRAMMAR_BYTES_MAX + 1) }, "grammar"),
        ] {
            let e = v.compile(&spec).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::BadRequest, "{e}");
            assert!(e.to_string().contains(param), "{e}");
        }
        // A Lark grammar that compiles constrains as written.
        let lark = GrammarSpec { kind: GrammarKind::Lark, source: "start: \"a\" \"b\"+".into() };
        let c = v.compile(&lark).unwrap();
        assert_eq!(c.clone().check(&[97, 98, 98, 260]), Ok(()));
        assert_eq!(c.check(&[98]), Err(0));
    }
}
