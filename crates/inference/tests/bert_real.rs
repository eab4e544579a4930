//! The candle BERT engine with the real all-MiniLM-L6-v2, pulled into the shared cache.

mod common;
use common::serial;
use std::sync::{Arc, OnceLock};

use plexus_inference::models::{ModelCache, Progress};
use plexus_inference::{Engine, EngineConfig, Error, load_engine};

fn engine() -> Arc<dyn Engine> {
    static ENGINE: OnceLock<Arc<dyn Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let model = ModelCache::from_env().pull("all-minilm-l6-v2", Progress::Hide).expect("pull all-minilm-l6-v2");
            load_engine(&model, &EngineConfig::default()).expect("load")
        })
        .clone()
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

const SENTENCES: [&str; 4] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A cheetah is running behind its prey.",
];

/// Cosines from an independent float64 numpy implementation of BERT + masked mean pooling +
/// L2 norm over the same safetensors and tokenizer (the first pair is the well-known
/// sentence-transformers example value 0.7553).
const REFERENCE: [[f32; 4]; 4] = [
    [1.0, 0.755337, -0.04605, 0.141925],
    [0.755337, 1.0, -0.05829, 0.062202],
    [-0.04605, -0.05829, 1.0, 0.023554],
    [0.141925, 0.062202, 0.023554, 1.0],
];

#[test]
fn cosines_match_the_reference_to_four_decimals() {
    let _serial = serial();
    let e = engine();
    assert_eq!(e.info().embedding_dims, Some(384));
    let inputs: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    let out = e.embed(&inputs).unwrap();
    assert_eq!(out.vectors.len(), 4);
    for v in &out.vectors {
        assert_eq!(v.len(), 384);
        assert!((cos(v, v) - 1.0).abs() < 1e-5);
    }
    for (i, row) in REFERENCE.iter().enumerate() {
        for (j, &reference) in row.iter().enumerate() {
            let c = cos(&out.vectors[i], &out.vectors[j]);
            assert!((c - reference).abs() < 1e-4, "cos({i},{j}) = {c}, reference {reference}");
        }
    }
    // The first vector's leading values, too.
    let head = [0.033242f32, 0.004406, -0.006277, 0.048379];
    for (x, r) in out.vectors[0].iter().zip(head) {
        assert!((x - r).abs() < 1e-4, "{x} vs {r}");
    }
    // Related sentences rank above unrelated ones.
    assert!(cos(&out.vectors[0], &out.vectors[1]) > cos(&out.vectors[0], &out.vectors[2]));
    assert!(cos(&out.vectors[0], &out.vectors[1]) > cos(&out.vectors[0], &out.vectors[3]));
    // "[CLS] a man is eating food . [SEP]" is 8; "cheetah" is che ##eta ##h.
    assert_eq!(out.prompt_tokens, 8 + 11 + 8 + 12);
}

#[test]
fn batching_and_order_do_not_change_vectors() {
    let _serial = serial();
    let e = engine();
    let inputs: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    let together = e.embed(&inputs).unwrap();
    for (i, s) in inputs.iter().enumerate() {
        let alone = e.embed(std::slice::from_ref(s)).unwrap();
        for (a, b) in alone.vectors[0].iter().zip(&together.vectors[i]) {
            assert!((a - b).abs() < 1e-5);
        }
    }
    let same = e.embed(&inputs).unwrap();
    assert_eq!(same.output_hash, together.output_hash);
    assert_eq!(same.request_hash, together.request_hash);
}

#[test]
fn long_inputs_and_bad_inputs_are_refused() {
    let _serial = serial();
    let e = engine();
    // 254 words and the two special tokens: exactly what the model reads (max_seq_length 256).
    let fits = "word ".repeat(254);
    assert_eq!(e.embed(std::slice::from_ref(&fits)).unwrap().prompt_tokens, 256);
    // One more is refused, naming the input, not embedded as a text the client did not send.
    let long = "word ".repeat(255);
    let err = e.embed(&[fits, long]).unwrap_err();
    assert!(matches!(err, Error::InputTooLong { index: 1, tokens: 257, max: 256 }), "{err}");
    assert_eq!(err.kind(), plexus_inference::ErrorKind::BadRequest);
    assert!(matches!(e.embed(&[]), Err(Error::EmptyInput)));
    assert!(matches!(e.embed(&[String::new()]), Err(Error::InvalidParam { param: "input", .. })));
    let huge = "x".repeat(100_000);
    assert!(matches!(e.embed(&[huge]), Err(Error::InvalidParam { param: "input", .. })));
}
