//! The model price table: LiteLLM's MIT-licensed table (see `data/model_prices.LICENSE.txt`),
//! vendored in compact form by `scripts/vendor-prices.py`, parsed once on first use. Prices are
//! USD per token. Every price carries the table's version stamp.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tollgate_core::config::PriceOverride;
use tollgate_core::glob::Glob;

static TABLE: &str = include_str!("../data/model_prices.json");

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Price {
    #[serde(default)]
    pub input: f64,
    #[serde(default)]
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
    pub reasoning: Option<f64>,
    pub request: Option<f64>,
    pub max_input: Option<u64>,
    pub max_output: Option<u64>,
}

impl Price {
    /// One number to rank deployments by: a token in plus a token out.
    pub fn blended(&self) -> f64 {
        self.input + self.output
    }

    /// USD for one request's usage: uncached prompt tokens at the input price, cached ones at
    /// the cache-read price, ones written to the cache at the cache-write price, reasoning tokens at their own price when the table has one, the
    /// rest of the output at the output price, plus any per-request fee.
    pub fn cost(&self, u: &crate::provider::Usage) -> f64 {
        let cached = u.cached.min(u.prompt);
        let written = u.cache_write.min(u.prompt - cached);
        let reasoning = u.reasoning.min(u.completion);
        let (reasoning_price, plain_output) = match self.reasoning {
            Some(p) => (p, u.completion - reasoning),
            None => (0.0, u.completion),
        };
        (u.prompt - cached - written) as f64 * self.input
            + cached as f64 * self.cache_read.unwrap_or(self.input)
            + written as f64 * self.cache_write.unwrap_or(self.input)
            + plain_output as f64 * self.output
            + if self.reasoning.is_some() {
                reasoning as f64 * reasoning_price
            } else {
                0.0
            }
            + self.request.unwrap_or(0.0)
    }

    /// The most a request can cost: every prompt token uncached (or written to the cache, if
    /// that is dearer) and every output token at the dearer of the output and reasoning
    /// prices.
    pub fn upper_bound(&self, prompt_tokens: u64, output_tokens: u64) -> f64 {
        let input = self.input.max(self.cache_write.unwrap_or(0.0));
        let output = self.output.max(self.reasoning.unwrap_or(0.0));
        prompt_tokens as f64 * input + output_tokens as f64 * output + self.request.unwrap_or(0.0)
    }

    /// The dearer of two prices, field by field: a bound for a request that may go to either.
    pub fn max(&self, o: &Price) -> Price {
        let opt = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Price {
            input: self.input.max(o.input),
            output: self.output.max(o.output),
            cache_read: opt(self.cache_read, o.cache_read),
            cache_write: opt(self.cache_write, o.cache_write),
            reasoning: opt(self.reasoning, o.reasoning),
            request: opt(self.request, o.request),
            max_input: self.max_input.max(o.max_input),
            max_output: self.max_output.max(o.max_output),
        }
    }
}

/// A price and the version of the table it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Priced {
    pub price: Price,
    pub version: Arc<str>,
}

struct Override {
    model: Glob,
    provider: Option<String>,
    price: Price,
}

/// The prices in force: the operator's overrides from config (the last matching entry wins),
/// then the vendored table.
pub struct Prices {
    overrides: Vec<Override>,
    /// `config-<hash of the overrides>`: changes whenever an override does.
    override_version: Arc<str>,
    builtin_version: Arc<str>,
}

impl Prices {
    pub fn new(config: &[PriceOverride]) -> Prices {
        let per_token = |v: f64| v / 1_000_000.0;
        let overrides = config
            .iter()
            .map(|o| Override {
                model: Glob::new(o.model.as_str()),
                provider: o.provider.clone(),
                price: Price {
                    input: per_token(o.input_per_mtok),
                    output: per_token(o.output_per_mtok),
                    cache_read: o.cache_read_per_mtok.map(per_token),
                    cache_write: o.cache_write_per_mtok.map(per_token),
                    reasoning: o.reasoning_per_mtok.map(per_token),
                    request: o.per_request,
                    max_input: None,
                    max_output: o.max_output_tokens,
                },
            })
            .collect();
        let digest = Sha256::digest(serde_json::to_vec(config).unwrap_or_default());
        let hex = tollgate_core::hex::encode(&digest[..4]);
        Prices {
            overrides,
            override_version: Arc::from(format!("config-{hex}")),
            builtin_version: Arc::from(PriceTable::builtin().version.as_str()),
        }
    }

    /// The price of an upstream model served by a provider (its name and kind).
    pub fn lookup(&self, provider: &str, provider_kind: &str, model: &str) -> Option<Priced> {
        let over = self.overrides.iter().rev().find(|o| {
            o.provider.as_deref().is_none_or(|p| p == provider) && o.model.matches(model)
        });
        if let Some(o) = over {
            return Some(Priced {
                price: o.price,
                version: self.override_version.clone(),
            });
        }
        PriceTable::builtin()
            .lookup(provider_kind, model)
            .map(|p| Priced {
                price: *p,
                version: self.builtin_version.clone(),
            })
    }
}

#[derive(Debug, Deserialize)]
pub struct PriceTable {
    pub version: String,
    models: HashMap<String, Price>,
}

impl PriceTable {
    /// The vendored table. An unreadable table (a build defect, caught by tests) is empty.
    pub fn builtin() -> &'static PriceTable {
        static PARSED: OnceLock<PriceTable> = OnceLock::new();
        PARSED.get_or_init(|| {
            serde_json::from_str(TABLE).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the vendored price table is unreadable");
                PriceTable {
                    version: "none".into(),
                    models: HashMap::new(),
                }
            })
        })
    }

    /// The price of an upstream model: by its exact name, then with the provider's prefix
    /// (`azure/gpt-4o`), then with any `vendor/` prefix removed.
    pub fn lookup(&self, provider_kind: &str, model: &str) -> Option<&Price> {
        self.models
            .get(model)
            .or_else(|| self.models.get(&format!("{provider_kind}/{model}")))
            .or_else(|| {
                model
                    .rsplit_once('/')
                    .and_then(|(_, bare)| self.models.get(bare))
            })
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendored_table_parses_and_prices_known_models() {
        let t = PriceTable::builtin();
        assert!(t.len() > 1000, "{} models", t.len());
        assert!(t.version.starts_with("litellm-"));
        let mini = t.lookup("openai", "gpt-4o-mini").expect("gpt-4o-mini");
        assert!(mini.input > 0.0 && mini.output > mini.input);
        assert_eq!(mini.max_input, Some(128_000));
        let big = t.lookup("openai", "gpt-4o").expect("gpt-4o");
        assert!(big.blended() > mini.blended());
        assert!(t.lookup("openai", "openai/gpt-4o-mini").is_some());
        assert!(t.lookup("openai", "no-such-model").is_none());
    }

    #[test]
    fn cost_prices_each_kind_of_token() {
        let p = Price {
            input: 1.0,
            output: 10.0,
            cache_read: Some(0.1),
            request: Some(100.0),
            ..Price::default()
        };
        let u = crate::provider::Usage {
            prompt: 1000,
            completion: 50,
            cached: 400,
            reasoning: 20,
            ..Default::default()
        };
        // 600 uncached + 400 cached x 0.1 + 50 out x 10 + the request fee.
        assert!((p.cost(&u) - (600.0 + 40.0 + 500.0 + 100.0)).abs() < 1e-9);
        let with_reasoning = Price {
            reasoning: Some(20.0),
            ..p
        };
        assert!((with_reasoning.cost(&u) - (600.0 + 40.0 + 300.0 + 400.0 + 100.0)).abs() < 1e-9);
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;

    fn over(model: &str, provider: Option<&str>, input: f64) -> PriceOverride {
        PriceOverride {
            model: model.into(),
            provider: provider.map(Into::into),
            input_per_mtok: input,
            output_per_mtok: 2.0 * input,
            cache_read_per_mtok: None,
            cache_write_per_mtok: None,
            reasoning_per_mtok: None,
            per_request: None,
            max_output_tokens: Some(100),
        }
    }

    #[test]
    fn overrides_win_later_entries_first_then_the_table() {
        let prices = Prices::new(&[
            over("gpt-4o*", None, 1.0),
            over("gpt-4o", Some("azure"), 3.0),
            over("llama-*", None, 0.5),
        ]);
        let azure = prices.lookup("azure", "openai", "gpt-4o").unwrap();
        assert!((azure.price.input - 3e-6).abs() < 1e-15);
        assert!(azure.version.starts_with("config-"));
        let other = prices.lookup("openai", "openai", "gpt-4o").unwrap();
        assert!((other.price.input - 1e-6).abs() < 1e-15);
        assert_eq!(other.price.max_output, Some(100));
        let table = prices.lookup("openai", "openai", "gpt-4.1-mini").unwrap();
        assert!(table.version.starts_with("litellm-"));
        assert!(prices.lookup("local", "openai", "nothing-known").is_none());
        // The version changes with the overrides.
        let changed = Prices::new(&[over("llama-*", None, 0.6)]);
        assert_ne!(
            changed.lookup("x", "openai", "llama-3").unwrap().version,
            prices.lookup("x", "openai", "llama-3").unwrap().version
        );
    }

    #[test]
    fn upper_bound_covers_every_kind_of_token() {
        let p = Price {
            input: 1.0,
            output: 10.0,
            cache_write: Some(1.25),
            reasoning: Some(12.0),
            request: Some(5.0),
            ..Price::default()
        };
        assert!((p.upper_bound(100, 10) - (125.0 + 120.0 + 5.0)).abs() < 1e-9);
        let u = crate::provider::Usage {
            prompt: 100,
            completion: 10,
            cache_write: 100,
            reasoning: 10,
            ..Default::default()
        };
        assert!(p.cost(&u) <= p.upper_bound(100, 10) + 1e-9);
    }
}
