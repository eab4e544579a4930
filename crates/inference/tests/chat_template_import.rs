//! `plexus model import --chat-template` with the real SmolLM2 GGUF: the chosen template renders
//! the prompts of the engine and of the client's tokenizer alike, is part of the model's id, is
//! checked against the manifest when loaded, and bad choices are refused clearly.

mod common;
use common::{nz, serial};

use plexus_inference::models::{CHAT_TEMPLATE_FILE, ModelCache, Progress};
use plexus_inference::template::{CHATML, LLAMA3};
use plexus_inference::{
    ChatMessage, EngineConfig, Error, FinishReason, GenerateRequest, LlamaConfig, Prompt, Sampling, Tokenizer,
    load_engine,
};

fn hello() -> GenerateRequest {
    GenerateRequest {
        grammar: None,
        prompt: Prompt::Chat { messages: vec![ChatMessage::new("user", "Hello")], continue_final_message: false },
        max_tokens: Some(16),
        sampling: Sampling::Greedy,
        adjust: Default::default(),
        stop: vec![],
        logprobs: None,
    }
}

#[test]
fn an_imported_template_renders_every_prompt_and_names_the_model() {
    let _serial = serial();
    let pulled = ModelCache::from_env().pull("smollm2-135m-instruct", Progress::Hide).expect("pull smollm2");
    let gguf = pulled.weights_path();
    // Inside the shared cache's directory, so imports hard-link the weights instead of copying.
    let dir = tempfile::tempdir_in(ModelCache::from_env().root()).unwrap();
    let cache = ModelCache::new(dir.path());

    // Plain ChatML instead of SmolLM2's own template (which adds its default system prompt).
    let chatml = cache.import_with(&gguf, Some("smol-chatml"), Some("chatml")).expect("import with chatml");
    assert_ne!(chatml.id, pulled.id, "another template is another model");
    assert_eq!(chatml.manifest.template_sha256, plexus_types::hash(CHATML.as_bytes()));
    assert_eq!(chatml.manifest.weights_sha256, pulled.manifest.weights_sha256);
    assert_eq!(std::fs::read_to_string(chatml.dir.join(CHAT_TEMPLATE_FILE)).unwrap(), CHATML);
    // Found again by name, and importing it the same way again is a no-op.
    assert_eq!(cache.find("smol-chatml").unwrap().unwrap(), chatml);
    assert_eq!(cache.import_with(&gguf, Some("smol-chatml"), Some("chatml")).unwrap(), chatml);

    // The provider's engine and the gateway's tokenizer render the same prompt with it:
    // <|im_start|> user \n Hello <|im_end|> \n <|im_start|> ass istant \n, no system prompt.
    let want = vec![1, 4093, 198, 19556, 2, 198, 1, 520, 9531, 198];
    let tokenizer = Tokenizer::load(&chatml).expect("tokenizer");
    assert_eq!(tokenizer.prepare(hello()).unwrap().tokens, want);
    let config = EngineConfig {
        llama: LlamaConfig { threads: nz(2), threads_batch: nz(2), ..LlamaConfig::default() },
        ..EngineConfig::default()
    };
    let engine = load_engine(&chatml, &config).expect("engine");
    let prepared = engine.prepare(hello()).unwrap();
    assert_eq!(prepared.tokens, want);
    assert_eq!(prepared.model, chatml.id);
    let f = engine.submit(prepared).unwrap().blocking_collect().expect("generate");
    assert!(!f.text.trim().is_empty(), "the model answers under the chosen template");
    assert!(!f.text.contains("<|im"), "{:?}", f.text);
    if f.reason == FinishReason::Stop {
        assert_eq!(f.tokens.last(), Some(&2), "a reply ends at <|im_end|>");
    }
    drop(engine);

    // The same template from a file is the same model; so is the template a model has anyway.
    let file = dir.path().join("chatml.jinja");
    std::fs::write(&file, CHATML).unwrap();
    assert_eq!(cache.import_with(&gguf, Some("smol-chatml"), Some(file.to_str().unwrap())).unwrap().id, chatml.id);
    let gemma = ModelCache::from_env().pull("gemma3-270m", Progress::Hide).expect("pull gemma3-270m");
    let again = cache.import_with(&gemma.weights_path(), Some("gemma"), Some("gemma")).unwrap();
    assert_eq!(again.id, gemma.id, "Gemma's own turns, named, change nothing");
    assert!(!again.dir.join(CHAT_TEMPLATE_FILE).exists());

    // A template file changed after import does not load: it is not the one the id names.
    std::fs::write(chatml.dir.join(CHAT_TEMPLATE_FILE), LLAMA3).unwrap();
    let reread = cache.find("smol-chatml").unwrap().unwrap();
    assert!(matches!(Tokenizer::load(&reread), Err(Error::HashMismatch { .. })), "a swapped template is refused");

    // Bad choices: an unknown name, a template that loses messages, one that does not compile,
    // a model that takes no template; and the same name for a different template is refused.
    let refused = |choice: &str| cache.import_with(&gguf, Some("smol-x"), Some(choice)).unwrap_err().to_string();
    let e = refused("vicuna");
    assert!(e.contains("chatml, gemma, llama3, mistral, phi3"), "{e}");
    let lossy = dir.path().join("lossy.jinja");
    std::fs::write(&lossy, "{{ messages[-1]['content'] }}").unwrap();
    assert!(refused(lossy.to_str().unwrap()).contains("drops"));
    let broken = dir.path().join("broken.jinja");
    std::fs::write(&broken, "{% for %}").unwrap();
    assert!(refused(broken.to_str().unwrap()).contains("chat-template"));
    assert!(cache.find("smol-x").unwrap().is_none(), "nothing is cached by a refused import");
    assert_eq!(cache.import(&gguf, Some("smol")).unwrap().id, pulled.id);
    let e = cache.import_with(&gguf, Some("smol"), Some("llama3")).unwrap_err().to_string();
    assert!(e.contains("already cached"), "{e}");
}
