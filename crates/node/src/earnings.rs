//! What each provider earned, from the chain's own settlement events: per session (tokens at the
//! session's prices, less the protocol fee, is what the provider was paid) and per UTC day.
//!
//! Kept beside the state like [`crate::index`], but built from finalized blocks' results (the
//! fee of each claim exists only in its `session_settled` event), and caught up on demand: each
//! query first reads the blocks finalized since the last one. It changes nothing any other node
//! computes.

use std::collections::BTreeMap;

use plexus_types::{Address, Amount, Hash, Height};
use serde::{Deserialize, Serialize};

/// One provider's settlements of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionEarnings {
    /// Paid out of the session's escrow (the provider's share and the fee).
    pub gross: Amount,
    /// Of which to the treasury.
    pub fee: Amount,
    /// Claims settled.
    pub claims: u64,
    /// Cumulative tokens of the newest settled receipt.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub first_height: Height,
    pub last_height: Height,
}

/// Settlements on one UTC day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DayEarnings {
    pub gross: Amount,
    pub fee: Amount,
    pub claims: u64,
}

/// Every provider's settlements up to `height`.
#[derive(Default)]
pub struct Earnings {
    /// The newest block read.
    pub height: Height,
    sessions: BTreeMap<(Address, Hash), SessionEarnings>,
    /// (provider, days since 1970-01-01 UTC).
    days: BTreeMap<(Address, i64), DayEarnings>,
}

/// The parts of a block's results this reads (amounts as u128 numbers, never through floats).
#[derive(Deserialize)]
struct Results {
    header: ResultsHeader,
    #[serde(default)]
    txs: Vec<TxEvents>,
    #[serde(default)]
    events: Vec<EventFields>,
}

#[derive(Deserialize)]
struct ResultsHeader {
    timestamp_ms: u64,
}

#[derive(Deserialize)]
struct TxEvents {
    #[serde(default)]
    events: Vec<EventFields>,
}

#[derive(Deserialize)]
struct EventFields {
    #[serde(rename = "type")]
    kind: String,
    session: Option<Hash>,
    provider: Option<Address>,
    amount: Option<Amount>,
    fee: Option<Amount>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl Earnings {
    /// Reads block `height`'s results (the JSON the node archives with each block). Blocks must
    /// come in order; results that do not parse are an error, and nothing of them is counted.
    pub fn add_block(&mut self, height: Height, results_json: &[u8]) -> Result<(), String> {
        let results: Results =
            serde_json::from_slice(results_json).map_err(|e| format!("results of block {height}: {e}"))?;
        let day = (results.header.timestamp_ms / 86_400_000) as i64;
        let mut settled = Vec::new();
        for e in results.txs.iter().flat_map(|t| t.events.iter()).chain(results.events.iter()) {
            if e.kind != "session_settled" {
                continue;
            }
            match (e.session, e.provider.clone(), e.amount, e.fee) {
                (Some(session), Some(provider), Some(amount), Some(fee)) if fee <= amount => {
                    settled.push((session, provider, amount, fee, e.input_tokens, e.output_tokens))
                }
                _ => return Err(format!("block {height}: a session_settled event without its fields")),
            }
        }
        for (session, provider, amount, fee, input_tokens, output_tokens) in settled {
            let s = self.sessions.entry((provider.clone(), session)).or_default();
            if s.claims == 0 {
                s.first_height = height;
            }
            s.gross = s.gross.saturating_add(amount);
            s.fee = s.fee.saturating_add(fee);
            s.claims += 1;
            s.input_tokens = input_tokens.unwrap_or(s.input_tokens);
            s.output_tokens = output_tokens.unwrap_or(s.output_tokens);
            s.last_height = height;
            let d = self.days.entry((provider, day)).or_default();
            d.gross = d.gross.saturating_add(amount);
            d.fee = d.fee.saturating_add(fee);
            d.claims += 1;
        }
        self.height = height;
        Ok(())
    }

    /// `provider`'s sessions with settlements, by session id.
    pub fn sessions(&self, provider: &Address) -> impl Iterator<Item = (&Hash, &SessionEarnings)> {
        self.sessions
            .range((provider.clone(), Hash::ZERO)..)
            .take_while(move |((p, _), _)| p == provider)
            .map(|((_, id), s)| (id, s))
    }

    /// `provider`'s settlements per UTC day, as (YYYY-MM-DD, totals), oldest first.
    pub fn days(&self, provider: &Address) -> Vec<(String, DayEarnings)> {
        self.days
            .range((provider.clone(), i64::MIN)..)
            .take_while(|((p, _), _)| p == provider)
            .map(|((_, day), d)| (date(*day), d.clone()))
            .collect()
    }
}

/// The UTC calendar date `days` after 1970-01-01 (proleptic Gregorian), as YYYY-MM-DD.
pub fn date(days: i64) -> String {
    // Shift to an era starting on 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_types::PrivateKey;
    use serde_json::json;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(59), "1970-03-01");
        assert_eq!(date(11_016), "2000-02-29");
        assert_eq!(date(20_789), "2026-12-02");
        assert_eq!(date(-1), "1969-12-31");
    }

    fn block(ts: u64, events: serde_json::Value) -> Vec<u8> {
        // Amounts as raw JSON numbers: the largest u128 must come through exactly.
        json!({ "height": 1, "header": { "timestamp_ms": ts }, "txs": [{ "events": events }], "events": [] })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn settlements_add_up_per_session_and_day_to_the_base_unit() {
        let (p, q) = (PrivateKey::from_seed(1).address(), PrivateKey::from_seed(2).address());
        let s1 = Hash::from_bytes([1; 32]);
        let s2 = Hash::from_bytes([2; 32]);
        let settled = |p: &Address, s: &Hash, amount: u128, fee: u128, out: u64| {
            json!({ "type": "session_settled", "session": s, "provider": p, "seq": 1, "input_tokens": 3,
                    "output_tokens": out, "amount": amount, "fee": fee })
        };
        let day = 86_400_000;
        let mut e = Earnings::default();
        e.add_block(
            1,
            &block(day * 20_790 + 5, json!([settled(&p, &s1, 100, 2, 10), {"type": "transfer", "amount": 7}])),
        )
        .unwrap();
        e.add_block(2, &block(day * 20_791, json!([settled(&p, &s1, 49, 0, 15), settled(&q, &s2, 1_000, 20, 4)])))
            .unwrap();
        // Amounts beyond u64 (a JSON value cannot hold them; the archived results can).
        let big =
            settled(&p, &s2, 1, 1, 9).to_string().replace("\"amount\":1", &format!("\"amount\":{}", u128::MAX / 4));
        let raw = format!(
            r#"{{"height":3,"header":{{"timestamp_ms":{}}},"txs":[{{"events":[{big}]}}],"events":[]}}"#,
            day * 20_791 + 1
        );
        e.add_block(3, raw.as_bytes()).unwrap();
        assert_eq!(e.height, 3);

        let mine: Vec<_> = e.sessions(&p).collect();
        assert_eq!(mine.len(), 2);
        assert_eq!(*mine[0].0, s1);
        assert_eq!(
            *mine[0].1,
            SessionEarnings {
                gross: 149,
                fee: 2,
                claims: 2,
                input_tokens: 3,
                output_tokens: 15,
                first_height: 1,
                last_height: 2
            }
        );
        assert_eq!(mine[1].1.gross, u128::MAX / 4, "u128 amounts come through exactly");
        let days = e.days(&p);
        assert_eq!(days.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(), ["2026-12-03", "2026-12-04"]);
        assert_eq!(days[0].1, DayEarnings { gross: 100, fee: 2, claims: 1 });
        assert_eq!(days[1].1.gross, 49 + u128::MAX / 4);
        assert_eq!(e.sessions(&q).map(|(_, s)| s.gross - s.fee).sum::<u128>(), 980);

        // Garbage is refused whole.
        assert!(e.add_block(4, b"{").is_err());
        assert!(e.add_block(4, &block(0, json!([settled(&q, &s1, 5, 0, 1), { "type": "session_settled" }]))).is_err());
        assert_eq!(e.sessions(&q).count(), 1, "nothing of a refused block is counted");
        assert_eq!(e.height, 3);
    }
}
