//! The built-in sentence embedder: all-MiniLM-L6-v2 (a 6-layer BERT), run in process with
//! candle from a directory holding `model.safetensors` and `tokenizer.json`. Mean pooling over
//! the tokens, then unit length, as the model was trained.

use std::path::Path;

#[cfg(feature = "local-embedder")]
mod imp {
    use std::path::Path;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;
    use candle_transformers::models::bert::{BertModel, Config};
    use tokenizers::{Tokenizer, TruncationParams};

    /// all-MiniLM-L6-v2's own configuration, for a directory without `config.json`.
    const MINILM_CONFIG: &str = r#"{"vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,
        "num_attention_heads":12,"intermediate_size":1536,"hidden_act":"gelu",
        "hidden_dropout_prob":0.1,"max_position_embeddings":512,"type_vocab_size":2,
        "initializer_range":0.02,"layer_norm_eps":1e-12,"pad_token_id":0,
        "position_embedding_type":"absolute","model_type":"bert"}"#;

    /// The longest input embedded, in tokens (the model was trained on 256).
    const MAX_TOKENS: usize = 256;

    pub struct LocalEmbedder {
        model: BertModel,
        tokenizer: Tokenizer,
        dim: usize,
    }

    fn fail(what: &str, e: impl std::fmt::Display) -> String {
        format!("{what}: {e}")
    }

    impl LocalEmbedder {
        pub fn load(dir: &Path) -> Result<LocalEmbedder, String> {
            let config = match std::fs::read_to_string(dir.join("config.json")) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => MINILM_CONFIG.to_owned(),
                Err(e) => return Err(fail(&format!("{}/config.json", dir.display()), e)),
            };
            let config: Config =
                serde_json::from_str(&config).map_err(|e| fail("model config", e))?;
            let weights_path = dir.join("model.safetensors");
            let weights = std::fs::read(&weights_path)
                .map_err(|e| fail(&weights_path.display().to_string(), e))?;
            let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
                .map_err(|e| fail("model weights", e))?;
            let model = BertModel::load(vb, &config).map_err(|e| fail("model weights", e))?;
            let tokenizer_path = dir.join("tokenizer.json");
            let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
                .map_err(|e| fail(&tokenizer_path.display().to_string(), e))?;
            tokenizer
                .with_truncation(Some(TruncationParams {
                    max_length: MAX_TOKENS,
                    ..Default::default()
                }))
                .map_err(|e| fail("tokenizer", e))?;
            tokenizer.with_padding(None);
            Ok(LocalEmbedder {
                model,
                tokenizer,
                dim: config.hidden_size,
            })
        }

        pub fn dim(&self) -> usize {
            self.dim
        }

        /// The unit embedding of a text. CPU-bound (milliseconds): call off the async runtime.
        pub fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
            let enc = self
                .tokenizer
                .encode(text, true)
                .map_err(|e| fail("tokenize", e))?;
            let run = || -> candle_core::Result<Vec<f32>> {
                let ids = Tensor::new(enc.get_ids(), &Device::Cpu)?.unsqueeze(0)?;
                let types = ids.zeros_like()?;
                let mask = Tensor::new(enc.get_attention_mask(), &Device::Cpu)?.unsqueeze(0)?;
                let hidden = self.model.forward(&ids, &types, Some(&mask))?;
                let tokens = hidden.dim(1)?.max(1);
                (hidden.sum(1)? / tokens as f64)?
                    .squeeze(0)?
                    .to_vec1::<f32>()
            };
            let mut v = run().map_err(|e| fail("embed", e))?;
            super::super::hnsw::normalise(&mut v);
            Ok(v)
        }
    }
}

#[cfg(not(feature = "local-embedder"))]
mod imp {
    use std::path::Path;

    /// Stands in when the binary was built without the `local-embedder` feature: loading says so.
    pub struct LocalEmbedder;

    impl LocalEmbedder {
        pub fn load(_dir: &Path) -> Result<LocalEmbedder, String> {
            Err(
                "this build has no built-in embedder (build with the local-embedder feature)"
                    .into(),
            )
        }

        pub fn dim(&self) -> usize {
            0
        }

        pub fn embed(&self, _text: &str) -> Result<Vec<f32>, String> {
            Err("no built-in embedder in this build".into())
        }
    }
}

pub use imp::LocalEmbedder;

/// Makes the model's matrix kernels run on the calling thread, unless `RAYON_NUM_THREADS` says
/// otherwise. A prompt is a few small matrices: splitting them across cores only adds
/// contention with the threads serving requests (and the p99 with it), while each embedding
/// already runs on a blocking thread of its own. Call at process start, before any other
/// thread exists (it sets an environment variable, which is what the kernels read).
pub fn single_threaded_kernels() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

/// Loads the built-in model, logging how long it took.
pub fn load(dir: &Path) -> Result<LocalEmbedder, String> {
    let started = std::time::Instant::now();
    let e = LocalEmbedder::load(dir)
        .map_err(|e| format!("cache.embedding_model {}: {e}", dir.display()))?;
    tracing::info!(
        dir = %dir.display(),
        dim = e.dim(),
        ms = started.elapsed().as_millis() as u64,
        "built-in embedding model loaded"
    );
    Ok(e)
}

#[cfg(all(test, feature = "local-embedder"))]
mod tests {
    use super::*;

    /// The model directory the test command installs (`TOLLGATE_TEST_EMBEDDING_MODEL`).
    fn model_dir() -> Option<std::path::PathBuf> {
        match std::env::var_os("TOLLGATE_TEST_EMBEDDING_MODEL") {
            Some(d) => Some(d.into()),
            None => {
                assert_ne!(
                    std::env::var("TOLLGATE_REQUIRE_SERVICES").as_deref(),
                    Ok("1"),
                    "TOLLGATE_TEST_EMBEDDING_MODEL is not set"
                );
                eprintln!(
                    "SKIPPED: TOLLGATE_TEST_EMBEDDING_MODEL is not set (scripts/test.sh sets it)"
                );
                None
            }
        }
    }

    #[test]
    fn paraphrases_are_close_and_unrelated_texts_are_not() {
        let Some(dir) = model_dir() else { return };
        let e = load(&dir).unwrap();
        assert_eq!(e.dim(), 384);
        let a = e.embed("What is the capital of France?").unwrap();
        let b = e.embed("Tell me France's capital city").unwrap();
        let c = e.embed("How do I bake sourdough bread?").unwrap();
        let d = e.embed("What is the capital of Germany?").unwrap();
        let sim = super::super::hnsw::dot;
        assert!((sim(&a, &a) - 1.0).abs() < 1e-4);
        let (ab, ac, ad) = (sim(&a, &b), sim(&a, &c), sim(&a, &d));
        eprintln!("paraphrase {ab}, unrelated {ac}, other country {ad}");
        assert!(ab > 0.85, "paraphrase {ab}");
        assert!(ac < 0.3, "unrelated {ac}");
        assert!(ad < ab, "another country {ad} vs paraphrase {ab}");
        // Long inputs are truncated, not refused.
        assert_eq!(e.embed(&"word ".repeat(2000)).unwrap().len(), 384);
        assert_eq!(e.embed("").unwrap().len(), 384);
    }
}
