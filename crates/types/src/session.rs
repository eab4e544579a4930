//! What clients, providers and the chain must compute alike about a payment session: its id,
//! and what tokens cost at its prices (with one rounding rule). Kept here so a gateway or a
//! provider agrees with the chain without depending on execution.

use crate::tx::ModelPrice;
use crate::{Address, Amount, Hash, hash_parts};

/// A session id: unique per (client, nonce) and therefore per opening transaction.
pub fn session_id(client: &Address, nonce: u64) -> Hash {
    hash_parts(&[b"plexus/session", client.as_bytes(), &nonce.to_be_bytes()])
}

/// The most a client can owe for these cumulative token counts at these prices per 1k tokens,
/// rounded up to a whole base unit (a provider is never paid less than a started unit).
pub fn max_cost(input_tokens: u64, output_tokens: u64, input_per_1k: Amount, output_per_1k: Amount) -> Option<Amount> {
    let numerator = (input_tokens as u128)
        .checked_mul(input_per_1k)?
        .checked_add((output_tokens as u128).checked_mul(output_per_1k)?)?;
    Some(numerator.div_ceil(1000))
}

/// Prices are per 1k tokens; kept here so the gateway and the chain agree on rounding.
pub fn price_of(price: &ModelPrice, input_tokens: u64, output_tokens: u64) -> Option<Amount> {
    max_cost(input_tokens, output_tokens, price.input_per_1k, price.output_per_1k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_round_up_to_a_started_base_unit_and_never_overflow() {
        assert_eq!(max_cost(0, 3, 0, 2000), Some(6));
        assert_eq!(max_cost(1, 0, 1, 0), Some(1), "a started unit is a unit");
        assert_eq!(max_cost(1000, 1000, 10, 40), Some(50));
        assert_eq!(max_cost(u64::MAX, 0, Amount::MAX, 0), None);
        let price = ModelPrice { model: Hash::ZERO, input_per_1k: 3, output_per_1k: 7 };
        assert_eq!(price_of(&price, 1010, 503), max_cost(1010, 503, 3, 7));
    }
}
