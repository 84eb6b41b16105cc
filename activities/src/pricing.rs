//! What a model call costs at Anthropic's list prices, so each chat turn can say what it
//! cost. Worker jobs do not need this: the Claude Code CLI reports their cost itself.
//!
//! Prices are per million tokens. Prompt-cache writes (5-minute) cost 1.25 times the input
//! price and cache reads 0.1 times. A model not listed here has no known price: its turns
//! show tokens but no cost, rather than a guess.

/// Tokens of one or more model calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: i64,
    pub output: i64,
    pub cache_write: i64,
    pub cache_read: i64,
}

impl Tokens {
    pub fn add(&mut self, other: Tokens) {
        self.input += other.input;
        self.output += other.output;
        self.cache_write += other.cache_write;
        self.cache_read += other.cache_read;
    }

    pub fn cache(&self) -> i64 {
        self.cache_write + self.cache_read
    }
}

/// (model id prefix, input $/MTok, output $/MTok); the first matching prefix wins, so longer
/// prefixes come first.
const PRICES: &[(&str, f64, f64)] = &[
    ("claude-opus-4-5", 5.0, 25.0),
    ("claude-opus-4-6", 5.0, 25.0),
    ("claude-opus-4", 15.0, 75.0),
    ("claude-3-opus", 15.0, 75.0),
    ("claude-sonnet-4", 3.0, 15.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-3-5-sonnet", 3.0, 15.0),
    ("claude-haiku-4", 1.0, 5.0),
    ("claude-3-5-haiku", 0.8, 4.0),
    ("claude-3-haiku", 0.25, 1.25),
];

/// The list price of `tokens` on `model` in US dollars, if the model's price is known.
pub fn cost_usd(model: &str, tokens: Tokens) -> Option<f64> {
    let (_, input, output) = PRICES
        .iter()
        .find(|(prefix, _, _)| model.starts_with(prefix))?;
    let per_token = |tokens: i64, price: f64| tokens as f64 * price / 1_000_000.0;
    Some(
        per_token(tokens.input, *input)
            + per_token(tokens.output, *output)
            + per_token(tokens.cache_write, input * 1.25)
            + per_token(tokens.cache_read, input * 0.1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn sonnet_prices_input_output_and_the_cache() {
        let tokens = Tokens {
            input: 1_000_000,
            output: 100_000,
            cache_write: 200_000,
            cache_read: 1_000_000,
        };
        // 3 + 1.5 + 0.75 + 0.3
        let cost = cost_usd("claude-sonnet-4-5-20250929", tokens).unwrap();
        assert!(close(cost, 5.55), "{cost}");
    }

    #[test]
    fn the_longest_matching_prefix_decides() {
        let tokens = Tokens {
            input: 1_000_000,
            ..Tokens::default()
        };
        assert!(close(cost_usd("claude-opus-4-5", tokens).unwrap(), 5.0));
        assert!(close(
            cost_usd("claude-opus-4-1-20250805", tokens).unwrap(),
            15.0
        ));
        assert!(close(cost_usd("claude-haiku-4-5", tokens).unwrap(), 1.0));
    }

    #[test]
    fn an_unknown_model_has_no_price() {
        assert_eq!(cost_usd("my-own-model", Tokens::default()), None);
    }
}
