//! The OpenAI wire format: request bodies as clients send them, responses as the official SDKs
//! parse them. A field this server does not know is refused with a 400 that names it, as
//! OpenAI's own API does ("unrecognized request argument"), and so is a known field it cannot
//! honour (tools, a response format, ...): a request is never run with part of it
//! silently ignored. Fields that change nothing about the output (`user`, `metadata`, `store`,
//! `service_tier`) are accepted.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ServeError;

/// `"stop"`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// Sampling and length fields shared by chat and completions.
#[derive(Debug, Deserialize)]
pub(crate) struct CommonParams {
    pub(crate) max_tokens: Option<u32>,
    pub(crate) max_completion_tokens: Option<u32>,
    pub(crate) temperature: Option<f32>,
    pub(crate) top_p: Option<f32>,
    /// Not OpenAI; llama-server and vLLM accept it.
    pub(crate) top_k: Option<u32>,
    /// Not OpenAI; llama-server and vLLM accept it.
    pub(crate) min_p: Option<f32>,
    pub(crate) seed: Option<i64>,
    pub(crate) stop: Option<StopField>,
    pub(crate) n: Option<u32>,
    #[serde(default)]
    pub(crate) stream: bool,
    pub(crate) stream_options: Option<StreamOptions>,
    pub(crate) logprobs: Option<Value>,
    pub(crate) top_logprobs: Option<Value>,
    pub(crate) tools: Option<Value>,
    pub(crate) response_format: Option<Value>,
    /// Not OpenAI; llama-server's: a grammar the output must follow (here in llguidance's Lark
    /// dialect).
    pub(crate) grammar: Option<Value>,
    pub(crate) presence_penalty: Option<f64>,
    pub(crate) frequency_penalty: Option<f64>,
    pub(crate) logit_bias: Option<serde_json::Map<String, Value>>,
}

/// The most choices one request may ask for (`n`): each is a whole generation, run and billed
/// as its own.
pub const CHOICES_MAX: u32 = 8;

impl CommonParams {
    /// Refuses the parameters this server cannot honour.
    pub(crate) fn check_supported(&self) -> Result<(), ServeError> {
        if let Some(n) = self.n {
            if !(1..=CHOICES_MAX).contains(&n) {
                return Err(ServeError::bad("n", format!("`n` must be from 1 to {CHOICES_MAX}")));
            }
            if n > 1 && self.stream {
                return Err(ServeError::bad("n", "`n` above 1 cannot be streamed; ask without `stream`"));
            }
        }
        if self.tools.as_ref().is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(ServeError::bad("tools", "tool calling is not supported"));
        }
        Ok(())
    }

    /// The grammar the output must follow: `response_format` (`json_object`, or `json_schema`
    /// with its `schema`), or a Lark grammar in `grammar`, not both. The schema's text is its
    /// compact JSON, keys in the order the client wrote them (the order the output follows).
    pub(crate) fn grammar(&self) -> Result<Option<plexus_types::receipt::GrammarSpec>, ServeError> {
        use plexus_types::receipt::{GrammarKind, GrammarSpec};
        let bad = |m: &str| ServeError::bad("response_format", m);
        let format = match self.response_format.as_ref().filter(|v| !v.is_null()) {
            None => None,
            Some(rf) => match rf.get("type").and_then(Value::as_str) {
                Some("text") => None,
                Some("json_object") => Some(r#"{"type":"object"}"#.to_owned()),
                Some("json_schema") => {
                    let schema = rf
                        .get("json_schema")
                        .and_then(|j| j.get("schema"))
                        .filter(|s| s.is_object())
                        .ok_or_else(|| bad("`response_format.json_schema.schema` must be a JSON schema object"))?;
                    Some(serde_json::to_string(schema).map_err(|e| bad(&e.to_string()))?)
                }
                Some(other) => {
                    return Err(bad(&format!(
                        "`response_format` type `{}` is not `text`, `json_object` or `json_schema`",
                        &other[..other.floor_char_boundary(64)]
                    )));
                }
                None => return Err(bad("`response_format` needs a `type`")),
            },
        };
        let lark = match self.grammar.as_ref().filter(|v| !v.is_null()) {
            None => None,
            Some(Value::String(g)) if is_gbnf(g) => {
                return Err(ServeError::bad(
                    "grammar",
                    "this looks like GBNF (`rule ::= ...`); write the grammar in Lark (`rule: ...`), llguidance's dialect, \
                     or send a JSON schema as `response_format`",
                ));
            }
            Some(Value::String(g)) => Some(g.clone()),
            Some(_) => return Err(ServeError::bad("grammar", "`grammar` must be a string (a Lark grammar)")),
        };
        match (format, lark) {
            (Some(_), Some(_)) => {
                Err(ServeError::bad("grammar", "give either `response_format` or `grammar`, not both"))
            }
            (Some(source), None) => Ok(Some(GrammarSpec { kind: GrammarKind::JsonSchema, source })),
            (None, Some(source)) => Ok(Some(GrammarSpec { kind: GrammarKind::Lark, source })),
            (None, None) => Ok(None),
        }
    }

    /// The penalties and logit biases, as the sampler applies them. `logit_bias` maps token ids
    /// (as strings, OpenAI's form) to numbers from -100 to 100.
    pub(crate) fn adjust(&self) -> Result<plexus_inference::LogitAdjust, ServeError> {
        let mut bias = Vec::new();
        for (key, value) in self.logit_bias.iter().flatten() {
            let token = key.parse::<plexus_inference::TokenId>().map_err(|_| {
                ServeError::bad(
                    "logit_bias",
                    format!("`logit_bias` key `{key}` is not a token id (a non-negative integer)"),
                )
            })?;
            let value = value.as_f64().ok_or_else(|| {
                ServeError::bad(
                    "logit_bias",
                    format!("`logit_bias`: the bias of token {key} must be a number from -100 to 100"),
                )
            })?;
            bias.push((token, value));
        }
        Ok(plexus_inference::LogitAdjust::from_openai(self.presence_penalty, self.frequency_penalty, bias)?)
    }

    /// The alternatives per token the request asks log-probabilities for, if it asks for them:
    /// chat takes `logprobs: true` and `top_logprobs` (0 to 20, which needs `logprobs`),
    /// completions `logprobs: N` (0 to 20; OpenAI's legacy API stops at 5).
    pub(crate) fn logprobs(&self, chat: bool) -> Result<Option<u8>, ServeError> {
        let max = plexus_inference::TOP_LOGPROBS_MAX;
        let count = |name: &'static str, v: &Value| match v.as_u64() {
            Some(n) if n <= u64::from(max) => Ok(n as u8),
            _ => Err(ServeError::bad(name, format!("`{name}` must be an integer from 0 to {max}"))),
        };
        let top = self.top_logprobs.as_ref().filter(|v| !v.is_null());
        let asked = self.logprobs.as_ref().filter(|v| !v.is_null());
        if !chat {
            if top.is_some() {
                return Err(ServeError::bad("top_logprobs", "completions take `logprobs: N` instead"));
            }
            return asked.map(|v| count("logprobs", v)).transpose();
        }
        match asked {
            None | Some(Value::Bool(false)) if top.is_some() => {
                Err(ServeError::bad("top_logprobs", "`top_logprobs` needs `logprobs: true`"))
            }
            None | Some(Value::Bool(false)) => Ok(None),
            Some(Value::Bool(true)) => Ok(Some(top.map(|v| count("top_logprobs", v)).transpose()?.unwrap_or(0))),
            Some(_) => Err(ServeError::bad("logprobs", "`logprobs` must be true or false")),
        }
    }

    pub(crate) fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    pub(crate) fn max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// Whether a grammar is written in GBNF (a line `name ::= ...`), which Lark does not read.
fn is_gbnf(grammar: &str) -> bool {
    grammar.lines().any(|l| {
        l.split_once("::=").is_some_and(|(name, _)| {
            let name = name.trim();
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
    })
}

/// Message content: a string, or a list of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    pub(crate) role: String,
    pub(crate) content: Option<Content>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) messages: Vec<Message>,
    #[serde(flatten)]
    pub(crate) params: CommonParams,
    /// vLLM's extension: continue the final assistant message instead of starting a new turn.
    #[serde(default)]
    pub(crate) continue_final_message: bool,
}

/// `"prompt"` of a completion: a string or a one-element list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptField {
    One(String),
    Many(Vec<Value>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    pub(crate) model: String,
    pub(crate) prompt: PromptField,
    #[serde(flatten)]
    pub(crate) params: CommonParams,
    #[serde(default)]
    pub(crate) echo: bool,
    pub(crate) suffix: Option<String>,
    pub(crate) best_of: Option<u32>,
}

/// `"input"` of embeddings: a string, a list of strings, or token ids (refused).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum EmbeddingInput {
    One(String),
    Many(Vec<Value>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingRequest {
    pub(crate) model: String,
    pub(crate) input: EmbeddingInput,
    pub(crate) encoding_format: Option<String>,
    pub(crate) dimensions: Option<u32>,
}

// ---- what a request asks for ----

/// A text-generation request as the OpenAI routes read it. Public so a client (the gateway)
/// derives from a body exactly the request a provider will run, and so the same request hash.
#[derive(Clone, Debug)]
pub struct ParsedGeneration {
    /// The model, as named in the body (a name or a hex id).
    pub model: String,
    pub request: plexus_inference::GenerateRequest,
    pub stream: bool,
    pub include_usage: bool,
    /// How many choices to generate (`n`, 1 to [`CHOICES_MAX`]); choice `i` samples with the
    /// seed plus `i` ([`plexus_inference::Sampling::for_choice`]).
    pub n: u32,
}

/// Fields of chat and completion requests that every route reads ([`CommonParams`]), and those
/// that ask nothing of the output; anything else is refused.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "tools",
    "response_format",
    "grammar",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "metadata",
    "store",
    "service_tier",
];
const CHAT_FIELDS: &[&str] = &["messages", "continue_final_message"];
const COMPLETION_FIELDS: &[&str] = &["prompt", "echo", "suffix", "best_of"];
const EMBEDDING_FIELDS: &[&str] = &["model", "input", "encoding_format", "dimensions", "user"];

/// Refuses a body with a top-level field outside `known` (and `extra`), naming it.
fn known_fields(body: &[u8], known: &[&str], extra: &[&str]) -> Result<(), ServeError> {
    let fields: std::collections::BTreeMap<String, serde::de::IgnoredAny> = json(body)?;
    match fields.keys().find(|k| !known.contains(&k.as_str()) && !extra.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => {
            let name = k[..k.floor_char_boundary(64)].to_string();
            Err(ServeError::BadRequest {
                message: format!("unrecognized request argument `{name}`: this endpoint does not take it"),
                param: Some(name),
                code: Some("unknown_parameter"),
            })
        }
    }
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ServeError> {
    serde_json::from_slice(body).map_err(|e| ServeError::BadRequest {
        message: format!("the request body is not valid JSON for this endpoint: {e}"),
        param: None,
        code: None,
    })
}

fn sampling(p: &CommonParams) -> Result<plexus_inference::Sampling, ServeError> {
    let seed = p.seed.map(|s| s as u64);
    Ok(plexus_inference::Sampling::from_openai(p.temperature, p.top_p, p.top_k, p.min_p, seed)?)
}

fn to_messages(messages: Vec<Message>) -> Result<Vec<plexus_inference::ChatMessage>, ServeError> {
    if messages.is_empty() {
        return Err(ServeError::bad("messages", "messages must not be empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(ServeError::bad("messages", format!("messages[{i}].role `{other}` is not supported")));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(s)) => s,
                Some(Content::Parts(parts)) => {
                    let mut out = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => out.push_str(&t),
                            (kind, _) => {
                                return Err(ServeError::bad(
                                    "messages",
                                    format!("messages[{i}]: content parts of type `{kind}` are not supported"),
                                ));
                            }
                        }
                    }
                    out
                }
            };
            Ok(plexus_inference::ChatMessage { role: role.to_owned(), content })
        })
        .collect()
}

/// Reads a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> Result<ParsedGeneration, ServeError> {
    let mut req: ChatRequest = json(body)?;
    known_fields(body, COMMON_FIELDS, CHAT_FIELDS)?;
    req.params.check_supported()?;
    let messages = to_messages(req.messages)?;
    let request = plexus_inference::GenerateRequest {
        grammar: req.params.grammar()?,
        prompt: plexus_inference::Prompt::Chat { messages, continue_final_message: req.continue_final_message },
        max_tokens: req.params.max_tokens(),
        sampling: sampling(&req.params)?,
        adjust: req.params.adjust()?,
        stop: req.params.stop.take().map(StopField::into_vec).unwrap_or_default(),
        logprobs: req.params.logprobs(true)?,
    };
    Ok(ParsedGeneration {
        model: req.model,
        request,
        stream: req.params.stream,
        include_usage: req.params.include_usage(),
        n: req.params.n.unwrap_or(1),
    })
}

/// Reads a `/v1/completions` body (one prompt string; `max_tokens` defaults to 16 as OpenAI's).
pub fn parse_completion(body: &[u8]) -> Result<ParsedGeneration, ServeError> {
    let mut req: CompletionRequest = json(body)?;
    known_fields(body, COMMON_FIELDS, COMPLETION_FIELDS)?;
    req.params.check_supported()?;
    if req.echo {
        return Err(ServeError::bad("echo", "echo is not supported"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ServeError::bad("suffix", "suffix is not supported"));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ServeError::bad("best_of", "only best_of=1 is supported"));
    }
    let prompt = match req.prompt {
        PromptField::One(s) => s,
        PromptField::Many(mut v) if v.len() == 1 && v[0].is_string() => match v.remove(0) {
            Value::String(s) => s,
            _ => return Err(ServeError::bad("prompt", "prompt must be one string")),
        },
        PromptField::Many(_) => {
            return Err(ServeError::bad(
                "prompt",
                "prompt must be one string (batches and token ids are not supported)",
            ));
        }
    };
    let request = plexus_inference::GenerateRequest {
        grammar: req.params.grammar()?,
        prompt: plexus_inference::Prompt::Text(prompt),
        max_tokens: Some(req.params.max_tokens().unwrap_or(16)),
        sampling: sampling(&req.params)?,
        adjust: req.params.adjust()?,
        stop: req.params.stop.take().map(StopField::into_vec).unwrap_or_default(),
        logprobs: req.params.logprobs(false)?,
    };
    Ok(ParsedGeneration {
        model: req.model,
        request,
        stream: req.params.stream,
        include_usage: req.params.include_usage(),
        n: req.params.n.unwrap_or(1),
    })
}

/// An embeddings request as `/v1/embeddings` reads it.
#[derive(Clone, Debug)]
pub struct ParsedEmbeddings {
    pub model: String,
    pub inputs: Vec<String>,
    pub dimensions: Option<u32>,
    pub base64: bool,
}

/// Reads a `/v1/embeddings` body.
pub fn parse_embeddings(body: &[u8]) -> Result<ParsedEmbeddings, ServeError> {
    let req: EmbeddingRequest = json(body)?;
    known_fields(body, EMBEDDING_FIELDS, &[])?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(ServeError::bad("encoding_format", format!("`{other}` is not `float` or `base64`"))),
    };
    let inputs: Vec<String> = match req.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(values) => values
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ServeError::bad(
                    "input",
                    "input must be a string or a list of strings (token ids are not supported)",
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    if inputs.is_empty() {
        return Err(ServeError::bad("input", "input must not be empty"));
    }
    Ok(ParsedEmbeddings { model: req.model, inputs, dimensions: req.dimensions, base64 })
}

// ---- responses ----

#[derive(Debug, Serialize)]
pub(crate) struct PromptTokensDetails {
    pub(crate) cached_tokens: u32,
}

#[derive(Debug, Serialize)]
pub(crate) struct UsageBody {
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
    pub(crate) total_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) prompt_tokens_details: Option<PromptTokensDetails>,
}

impl UsageBody {
    pub(crate) fn new(prompt: u32, completion: u32, cached: u32) -> Self {
        UsageBody {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: cached }),
        }
    }
}

/// The attestation block of a stream's final chunk (and of a whole response's body).
#[derive(Debug, Serialize)]
pub(crate) struct PlexusBlock {
    pub(crate) attestation: plexus_types::Attestation,
    /// Hex of the canonical encoding, as in the `x-plexus-attestation` header.
    pub(crate) attestation_hex: String,
    pub(crate) signature: String,
    pub(crate) provider: String,
    pub(crate) model_id: String,
    /// Every generated token id, in order (what the attestation's `output_ids_hash` commits
    /// to); absent for embeddings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output_ids: Option<Vec<i32>>,
}

/// Running token counts on each streamed chunk, sent when the request asked for them with
/// [`crate::HEADER_PROGRESS`] (a gateway signing receipts mid-stream needs them).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProgressBlock {
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
    /// The ids generated since the previous chunk (they spell this chunk's text, plus any text
    /// held back for a stop string).
    pub(crate) ids: Vec<i32>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AssistantMessage {
    pub(crate) role: &'static str,
    pub(crate) content: String,
    pub(crate) refusal: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ChatChoice {
    pub(crate) index: u32,
    pub(crate) message: AssistantMessage,
    pub(crate) logprobs: Option<Value>,
    pub(crate) finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct ChatCompletion {
    pub(crate) id: String,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) system_fingerprint: String,
    pub(crate) choices: Vec<ChatChoice>,
    pub(crate) usage: UsageBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plexus: Option<PlexusBlock>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ChunkChoice {
    pub(crate) index: u32,
    pub(crate) delta: Delta,
    pub(crate) logprobs: Option<Value>,
    pub(crate) finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ChatChunk<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) system_fingerprint: &'a str,
    pub(crate) choices: Vec<ChunkChoice>,
    /// Present (possibly null) when the client asked for usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Option<UsageBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plexus: Option<PlexusBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plexus_usage: Option<ProgressBlock>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CompletionChoice {
    pub(crate) index: u32,
    pub(crate) text: String,
    pub(crate) logprobs: Option<Value>,
    pub(crate) finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct TextCompletion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) system_fingerprint: &'a str,
    pub(crate) choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Option<UsageBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plexus: Option<PlexusBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plexus_usage: Option<ProgressBlock>,
}

#[derive(Debug, Serialize)]
pub(crate) struct EmbeddingData {
    pub(crate) object: &'static str,
    pub(crate) index: u32,
    pub(crate) embedding: EmbeddingVector,
}

/// A vector as floats, or as base64 of little-endian f32 (what the Python SDK asks for by
/// default).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub(crate) struct EmbeddingUsage {
    pub(crate) prompt_tokens: u32,
    pub(crate) total_tokens: u32,
}

#[derive(Debug, Serialize)]
pub(crate) struct EmbeddingList {
    pub(crate) object: &'static str,
    pub(crate) data: Vec<EmbeddingData>,
    pub(crate) model: String,
    pub(crate) usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
pub(crate) struct ModelObject {
    pub(crate) id: String,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) owned_by: &'static str,
    /// Plexus details: content id, engine, context, manifest.
    pub(crate) plexus: Value,
}

#[derive(Debug, Serialize)]
pub(crate) struct ModelList {
    pub(crate) object: &'static str,
    pub(crate) data: Vec<ModelObject>,
}

/// One token's entry in a chat `logprobs.content` list (OpenAI's shape: the token's text, its
/// UTF-8 bytes, which may hold part of a character, and the alternatives).
fn chat_logprob(t: &plexus_inference::TokenLogprob) -> Value {
    let entry = |bytes: &[u8], logprob: f32| serde_json::json!({ "token": String::from_utf8_lossy(bytes), "logprob": logprob, "bytes": bytes });
    let mut v = entry(&t.bytes, t.logprob);
    v["top_logprobs"] = t.top.iter().map(|a| entry(&a.bytes, a.logprob)).collect();
    v
}

/// A chat choice's `logprobs`: `{"content": [...], "refusal": null}`.
pub(crate) fn chat_logprobs(entries: &[plexus_inference::TokenLogprob]) -> Value {
    serde_json::json!({ "content": entries.iter().map(chat_logprob).collect::<Vec<_>>(), "refusal": null })
}

/// A completion choice's `logprobs` (the legacy shape): parallel lists of tokens, their
/// log-probabilities, a map of the alternatives per token and each token's offset in
/// characters of the generated text. `chars` is the count of characters before the first
/// entry, advanced past the last (a stream's chunks continue the count).
pub(crate) fn completion_logprobs(entries: &[plexus_inference::TokenLogprob], chars: &mut usize) -> Value {
    let mut offsets = Vec::with_capacity(entries.len());
    for t in entries {
        offsets.push(*chars);
        // A character starts at every byte that is not a UTF-8 continuation byte.
        *chars += t.bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count();
    }
    let top: Vec<serde_json::Map<String, Value>> = entries
        .iter()
        .map(|t| {
            t.top.iter().map(|a| (String::from_utf8_lossy(&a.bytes).into_owned(), Value::from(a.logprob))).collect()
        })
        .collect();
    serde_json::json!({
        "tokens": entries.iter().map(|t| String::from_utf8_lossy(&t.bytes)).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

/// Joins the answers of the choices of one request (each a whole `chat.completion` or
/// `text_completion` body, in choice order) into one body: choice `i` gets index `i` and keeps
/// its own `plexus` block (its attestation, signature and token ids), and the usage is the sum of
/// the choices' (each choice read and was billed for the prompt).
pub fn merge_choices(answers: Vec<Value>) -> Value {
    let mut merged = Value::Null;
    let mut choices = Vec::with_capacity(answers.len());
    let mut usage = [0u64; 4];
    for mut answer in answers {
        let u = &answer["usage"];
        let counts = [
            &u["prompt_tokens"],
            &u["completion_tokens"],
            &u["total_tokens"],
            &u["prompt_tokens_details"]["cached_tokens"],
        ];
        for (sum, v) in usage.iter_mut().zip(counts) {
            *sum = sum.saturating_add(v.as_u64().unwrap_or(0));
        }
        let plexus = answer.as_object_mut().and_then(|o| o.remove("plexus"));
        if let Some(Value::Array(list)) = answer.get_mut("choices").map(Value::take) {
            for mut choice in list {
                choice["index"] = Value::from(choices.len());
                if let Some(p) = &plexus {
                    choice["plexus"] = p.clone();
                }
                choices.push(choice);
            }
        }
        if merged.is_null() {
            merged = answer;
        }
    }
    if merged.is_object() {
        merged["choices"] = Value::Array(choices);
        merged["usage"] = serde_json::json!({
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[2],
            "prompt_tokens_details": { "cached_tokens": usage[3] },
        });
    }
    merged
}

/// Standard base64 (RFC 4648, with padding).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn parses_sdk_shaped_requests() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],
                "max_completion_tokens":5,"stream":true,"stream_options":{"include_usage":true},
                "stop":"x","seed":3,"user":"ignored","frequency_penalty":0}"#,
        )
        .unwrap();
        assert_eq!(r.params.max_tokens(), Some(5));
        assert!(r.params.include_usage());
        assert_eq!(r.params.stop.unwrap().into_vec(), vec!["x"]);
        for (n, stream, ok) in [
            (1, true, true),
            (2, false, true),
            (8, false, true),
            (0, false, false),
            (9, false, false),
            (2, true, false),
        ] {
            let body = format!(r#"{{"model":"m","messages":[],"n":{n},"stream":{stream}}}"#);
            let r: ChatRequest = serde_json::from_str(&body).unwrap();
            let e = r.params.check_supported();
            assert_eq!(e.is_ok(), ok, "n={n} stream={stream}");
            if let Err(e) = e {
                assert_eq!(e.param().as_deref(), Some("n"));
            }
        }
    }

    #[test]
    fn merged_choices_keep_their_attestations_and_sum_their_usage() {
        let answer = |text: &str, prompt: u64, completion: u64, cached: u64, att: &str| {
            serde_json::json!({
                "id": format!("chatcmpl-{att}"), "object": "chat.completion", "model": "m",
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
                "usage": { "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                           "prompt_tokens_details": { "cached_tokens": cached } },
                "plexus": { "attestation_hex": att },
            })
        };
        let merged =
            merge_choices(vec![answer("a", 10, 3, 0, "aa"), answer("b", 10, 5, 9, "bb"), answer("c", 10, 1, 9, "cc")]);
        assert_eq!(merged["id"], "chatcmpl-aa");
        assert!(merged.get("plexus").is_none());
        let choices = merged["choices"].as_array().unwrap();
        let got: Vec<_> = choices
            .iter()
            .map(|c| {
                (
                    c["index"].as_u64().unwrap(),
                    c["message"]["content"].as_str().unwrap(),
                    c["plexus"]["attestation_hex"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, [(0, "a", "aa"), (1, "b", "bb"), (2, "c", "cc")]);
        assert_eq!(merged["usage"]["prompt_tokens"], 30);
        assert_eq!(merged["usage"]["completion_tokens"], 9);
        assert_eq!(merged["usage"]["total_tokens"], 39);
        assert_eq!(merged["usage"]["prompt_tokens_details"]["cached_tokens"], 18);
        assert_eq!(merge_choices(vec![]), Value::Null);
    }

    #[test]
    fn response_formats_and_grammars_become_one_grammar() {
        use plexus_types::receipt::{GrammarKind, GrammarSpec};
        let chat = |extra: &str| {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
            parse_chat(body.as_bytes()).map(|p| p.request.grammar)
        };
        let json = |source: &str| Some(GrammarSpec { kind: GrammarKind::JsonSchema, source: source.into() });
        assert_eq!(chat("").unwrap(), None);
        assert_eq!(chat(r#","response_format":{"type":"text"}"#).unwrap(), None);
        assert_eq!(chat(r#","response_format":{"type":"json_object"}"#).unwrap(), json(r#"{"type":"object"}"#));
        // The schema's text is compact, with its keys in the client's order (the output's order).
        let sdk = r#","response_format":{"type":"json_schema","json_schema":{"name":"P","strict":true,
            "schema":{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}},"required":["zeta","alpha"]}}}"#;
        assert_eq!(
            chat(sdk).unwrap(),
            json(
                r#"{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}},"required":["zeta","alpha"]}"#
            )
        );
        assert_eq!(
            chat(r#","grammar":"start: \"a\"""#).unwrap(),
            Some(GrammarSpec { kind: GrammarKind::Lark, source: r#"start: "a""#.into() })
        );
        assert!(
            parse_completion(br#"{"model":"m","prompt":"p","grammar":"start: \"a\""}"#)
                .unwrap()
                .request
                .grammar
                .is_some()
        );
        for (extra, param) in [
            (r#","response_format":{"type":"xml"}"#, "response_format"),
            (r#","response_format":{}"#, "response_format"),
            (r#","response_format":{"type":"json_schema","json_schema":{"name":"x"}}"#, "response_format"),
            (
                r#","response_format":{"type":"json_schema","json_schema":{"name":"x","schema":true}}"#,
                "response_format",
            ),
            (r#","grammar":"root ::= \"a\"""#, "grammar"),
            (r#","grammar":"root::=[a-z]+""#, "grammar"),
            (r#","grammar":5"#, "grammar"),
            (r#","grammar":"start: \"a\"","response_format":{"type":"json_object"}"#, "grammar"),
        ] {
            let e = chat(extra).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{extra}");
            assert!(e.to_string().contains(param), "{extra}: {e}");
        }
        // A Lark string literal that holds `::=` is not GBNF.
        assert!(chat(r#","grammar":"start: \"a ::= b\"""#).unwrap().is_some());
    }

    #[test]
    fn unknown_and_unhonoured_fields_are_refused_by_name() {
        let chat = |extra: &str| {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
            parse_chat(body.as_bytes())
        };
        // What SDKs send is taken, incl. zero penalties and fields that do not touch the output.
        assert!(chat(r#","user":"u","metadata":{"a":"b"},"store":false,"presence_penalty":0,"logit_bias":{}"#).is_ok());
        // Penalties and biases are the sampler's to apply.
        let adjust = chat(r#","frequency_penalty":0.5,"presence_penalty":-1,"logit_bias":{"42":-100,"7":3.5}"#)
            .unwrap()
            .request
            .adjust;
        assert_eq!(
            adjust,
            plexus_inference::LogitAdjust { presence: -1.0, frequency: 0.5, bias: vec![(7, 3.5), (42, -100.0)] }
        );
        for (extra, param) in [
            (r#","bogus":1"#, "bogus"),
            (r#","frequency_penalty":2.5"#, "frequency_penalty"),
            (r#","presence_penalty":-3"#, "presence_penalty"),
            (r#","logit_bias":{"42":-101}"#, "logit_bias"),
            (r#","logit_bias":{"x":1}"#, "logit_bias"),
            (r#","logit_bias":{"-3":1}"#, "logit_bias"),
            (r#","logit_bias":{"3":"a"}"#, "logit_bias"),
        ] {
            let e = chat(extra).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{extra}");
            assert!(e.to_string().contains(param), "{extra}: {e}");
        }
        assert!(parse_completion(br#"{"model":"m","prompt":"p","messages":[]}"#).is_err(), "a chat field");
        assert!(parse_embeddings(br#"{"model":"m","input":"x","max_tokens":3}"#).is_err());
        assert!(parse_embeddings(br#"{"model":"m","input":"x","user":"u"}"#).is_ok());
        // A long unknown name is cut in the message, on a character boundary.
        let long = format!(r#","{}":1"#, "é".repeat(100));
        assert!(chat(&long).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn logprobs_are_asked_for_in_each_endpoints_own_way() {
        let chat = |extra: &str| {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
            parse_chat(body.as_bytes()).map(|p| p.request.logprobs)
        };
        let completion = |extra: &str| {
            let body = format!(r#"{{"model":"m","prompt":"p"{extra}}}"#);
            parse_completion(body.as_bytes()).map(|p| p.request.logprobs)
        };
        assert_eq!(chat("").unwrap(), None);
        assert_eq!(chat(r#","logprobs":false"#).unwrap(), None);
        assert_eq!(chat(r#","logprobs":null,"top_logprobs":null"#).unwrap(), None);
        assert_eq!(chat(r#","logprobs":true"#).unwrap(), Some(0));
        assert_eq!(chat(r#","logprobs":true,"top_logprobs":20"#).unwrap(), Some(20));
        assert_eq!(completion(r#","logprobs":3"#).unwrap(), Some(3));
        assert_eq!(completion(r#","logprobs":null"#).unwrap(), None);
        for (e, param) in [
            (chat(r#","logprobs":true,"top_logprobs":21"#), "top_logprobs"),
            (chat(r#","logprobs":true,"top_logprobs":-1"#), "top_logprobs"),
            (chat(r#","logprobs":true,"top_logprobs":1.5"#), "top_logprobs"),
            (chat(r#","top_logprobs":2"#), "top_logprobs"),
            (chat(r#","logprobs":false,"top_logprobs":2"#), "top_logprobs"),
            (chat(r#","logprobs":5"#), "logprobs"),
            (completion(r#","logprobs":21"#), "logprobs"),
            (completion(r#","logprobs":true"#), "logprobs"),
            (completion(r#","logprobs":1,"top_logprobs":1"#), "top_logprobs"),
        ] {
            let e = e.unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
            assert_eq!(e.param().as_deref(), Some(param), "{e}");
        }
    }
}
