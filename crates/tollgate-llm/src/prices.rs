//! The model price table: LiteLLM's MIT-licensed table (see `data/model_prices.LICENSE.txt`),
//! vendored in compact form by `scripts/vendor-prices.py`, parsed once on first use. Prices are
//! USD per token. Every price carries the table's version stamp.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

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
    /// the cache-read price, reasoning tokens at their own price when the table has one, the
    /// rest of the output at the output price, plus any per-request fee.
    pub fn cost(&self, u: &crate::provider::Usage) -> f64 {
        let cached = u.cached.min(u.prompt);
        let reasoning = u.reasoning.min(u.completion);
        let (reasoning_price, plain_output) = match self.reasoning {
            Some(p) => (p, u.completion - reasoning),
            None => (0.0, u.completion),
        };
        (u.prompt - cached) as f64 * self.input
            + cached as f64 * self.cache_read.unwrap_or(self.input)
            + plain_output as f64 * self.output
            + if self.reasoning.is_some() {
                reasoning as f64 * reasoning_price
            } else {
                0.0
            }
            + self.request.unwrap_or(0.0)
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
