//! The server's [`Metering`] over on-chain sessions: admission, credit, and accounting.

use axum::http::HeaderMap;
use plexus_serve::{MeterRequest, MeterTicket, Metering, ServeError, Usage};
use plexus_types::{Attestation, Hash, Sig, SignedReceipt};

use crate::{ChainView, HEADER_RECEIPT, HEADER_SESSION, HEADER_TOKEN, Provider, SessionView};

/// What a ticket remembers about its request.
#[derive(Debug)]
struct Ticket {
    session: Hash,
    prompt: u32,
    max_tokens: u32,
    /// Output tokens already added to the session's delivered count.
    counted_output: u32,
    /// Whether the prompt was added to the delivered count yet.
    counted_prompt: bool,
    /// Admitted with nothing else outstanding on its session: its own prompt may exceed the
    /// credit (one request at a time is always served).
    alone: bool,
}

pub(crate) struct ChainMetering<C: ChainView> {
    pub(crate) provider: Provider<C>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn payment(message: impl Into<String>) -> ServeError {
    ServeError::PaymentRequired(message.into())
}

impl<C: ChainView> Provider<C> {
    /// The on-chain session for `id`, checked to be open, this provider's and still taking work.
    pub(crate) fn live_session(&self, id: &Hash) -> Result<SessionView, ServeError> {
        let view = self.chain().session(id).ok_or_else(|| payment(format!("session {id} does not exist on-chain")))?;
        if !view.open {
            return Err(payment(format!("session {id} is closed; open a new one")));
        }
        if &view.provider != self.address() {
            return Err(payment(format!("session {id} is with provider {}, not this one", view.provider)));
        }
        let region = &self.config().region;
        if !view.regions.is_empty() && !view.regions.contains(region) {
            return Err(ServeError::Forbidden(format!(
                "session {id} is restricted to regions {:?}; this provider serves from {region:?}",
                view.regions
            )));
        }
        Ok(view)
    }

    /// Checks and stores a receipt from the session's client. Returns the session's state.
    pub fn accept_receipt(&self, signed: SignedReceipt) -> Result<crate::ledger::SessionState, ServeError> {
        let r = &signed.receipt;
        let view = self.chain().session(&r.session).ok_or_else(|| ServeError::bad("receipt", "unknown session"))?;
        if &view.provider != self.address() {
            return Err(ServeError::bad("receipt", "the session is with another provider"));
        }
        let mut ledger = self.ledger();
        let latest = ledger.get(&r.session).and_then(|e| e.receipt.clone());
        if let Some(old) = &latest {
            // Not newer than what we hold: already superseded (receipts race each other when a
            // client runs requests in parallel). Nothing to check or store.
            if r.seq <= old.receipt.seq {
                return Ok(ledger.state(&r.session).expect("entry exists"));
            }
            let o = &old.receipt;
            if r.cum_input_tokens < o.cum_input_tokens
                || r.cum_output_tokens < o.cum_output_tokens
                || r.cum_amount < o.cum_amount
            {
                return Err(ServeError::bad("receipt", "cumulative totals go backwards"));
            }
        }
        if !signed.verify(&view.client, self.chain().chain_id()) {
            return Err(ServeError::Unauthorized("the receipt is not signed by the session's client".into()));
        }
        let owed = plexus_types::session::price_of(&view.price, r.cum_input_tokens, r.cum_output_tokens)
            .ok_or_else(|| ServeError::bad("receipt", "token counts overflow"))?;
        if r.cum_amount < owed {
            return Err(ServeError::bad(
                "receipt",
                format!("the receipt pays {} for tokens that cost {owed} at the session's prices", r.cum_amount),
            ));
        }
        if r.cum_amount > view.deposit {
            return Err(payment(format!(
                "the receipt's {} exceeds the session's escrow of {}; top the session up first",
                r.cum_amount, view.deposit
            )));
        }
        let session = r.session;
        ledger.store_receipt(signed).map_err(|e| ServeError::Internal(format!("cannot store the receipt: {e}")))?;
        Ok(ledger.state(&session).expect("entry exists"))
    }

    /// Verifies a client's [`plexus_types::receipt::SessionAuth`] and issues a bearer token.
    pub fn authenticate(&self, session: &Hash, nonce: u64, signature: &Sig) -> Result<[u8; 32], ServeError> {
        let view = self.live_session(session)?;
        let auth = plexus_types::receipt::SessionAuth { session: *session, provider: self.address().clone(), nonce };
        if !auth.verify(&view.client, signature, self.chain().chain_id()) {
            return Err(ServeError::Unauthorized("the proof is not signed by the session's client".into()));
        }
        let mut ledger = self.ledger();
        let last = ledger.get(session).map_or(0, |e| e.auth_nonce);
        if nonce <= last {
            return Err(ServeError::Unauthorized(format!(
                "nonce {nonce} was used before (last {last}); use a larger one"
            )));
        }
        let token: [u8; 32] = rand::random();
        ledger
            .store_auth(session, nonce, token)
            .map_err(|e| ServeError::Internal(format!("cannot store the nonce: {e}")))?;
        Ok(token)
    }
}

impl<C: ChainView> Metering for ChainMetering<C> {
    fn begin(&self, req: &MeterRequest<'_>) -> Result<MeterTicket, ServeError> {
        let p = &self.provider;
        let (Some(session), Some(token)) = (header(req.headers, HEADER_SESSION), header(req.headers, HEADER_TOKEN))
        else {
            return Err(payment(format!(
                "this provider serves paid sessions only: send {HEADER_SESSION} and {HEADER_TOKEN} (use `plexus gateway`)"
            )));
        };
        let session: Hash = session.parse().map_err(|e| ServeError::bad(HEADER_SESSION, format!("{e}")))?;
        let token: [u8; 32] = hex::decode(token)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ServeError::Unauthorized(format!("{HEADER_TOKEN} is not a 32-byte hex token")))?;
        let view = p.live_session(&session)?;
        if view.model != req.model {
            return Err(ServeError::bad(
                "model",
                format!("session {session} is for model {}, not {}", view.model, req.model),
            ));
        }
        let height = p.chain().height();
        if height >= view.expiry_height {
            return Err(payment(format!("session {session} stopped taking work at height {}", view.expiry_height)));
        }
        if let Some(receipt) = header(req.headers, HEADER_RECEIPT) {
            let signed = SignedReceipt::from_hex(receipt).map_err(|e| ServeError::bad(HEADER_RECEIPT, e))?;
            if signed.receipt.session != session {
                return Err(ServeError::bad(HEADER_RECEIPT, "the receipt is for another session"));
            }
            p.accept_receipt(signed)?;
        }
        let credit = p.config().credit_tokens;
        let mut ledger = p.ledger();
        let entry = ledger.entry(&session).ok_or_else(|| ServeError::Busy {
            message: "this provider is tracking as many sessions as it can; try another".into(),
            retry_after_secs: 5,
        })?;
        if !entry.tokens.contains(&token) {
            return Err(ServeError::Unauthorized(format!(
                "unknown token for session {session}; authenticate again (POST /plexus/v1/sessions/{session}/token)"
            )));
        }
        // The credit bound holds whatever the concurrency: what is delivered and unacknowledged,
        // plus the worst case of every request in flight, plus this one's worst case, must fit
        // the credit, unless nothing else is outstanding (one request at a time is always served;
        // the context length bounds it).
        let unacked = entry.unacknowledged();
        if unacked > credit {
            return Err(payment(format!(
                "{unacked} delivered tokens of session {session} are not acknowledged (credit is {credit}); send a newer receipt"
            )));
        }
        let outstanding = unacked.saturating_add(entry.reserved_input).saturating_add(entry.reserved_output);
        let this = u64::from(req.prompt_tokens) + u64::from(req.max_tokens);
        let alone = outstanding == 0 && entry.inflight == 0;
        if !alone && outstanding.saturating_add(this) > credit {
            return Err(payment(format!(
                "session {session} has {outstanding} tokens delivered without a receipt or reserved by requests in flight, \
                 and this request could add {this} (credit is {credit}); send a newer receipt or wait for a request to finish"
            )));
        }
        let worst = plexus_types::session::price_of(
            &view.price,
            entry.delivered_input + entry.reserved_input + u64::from(req.prompt_tokens),
            entry.delivered_output + entry.reserved_output + u64::from(req.max_tokens),
        )
        .unwrap_or(u128::MAX);
        if worst > view.deposit {
            return Err(payment(format!(
                "session {session} has {} in escrow, and this request could bring it to {worst}; top the session up",
                view.deposit
            )));
        }
        entry.reserved_input += u64::from(req.prompt_tokens);
        entry.reserved_output += u64::from(req.max_tokens);
        entry.inflight += 1;
        let ticket = Ticket {
            session,
            prompt: req.prompt_tokens,
            max_tokens: req.max_tokens,
            counted_output: 0,
            counted_prompt: false,
            alone,
        };
        Ok(MeterTicket { request_id: req.request_id, data: Some(Box::new(std::sync::Mutex::new(ticket))) })
    }

    fn progress(&self, ticket: &MeterTicket, _input_tokens: u32, output_tokens: u32) -> Result<(), ServeError> {
        let Some(t) = ticket_of(ticket) else { return Ok(()) };
        let mut t = t.lock().expect("ticket lock");
        let credit = self.provider.config().credit_tokens;
        let mut ledger = self.provider.ledger();
        let Some(entry) = ledger.entry(&t.session) else { return Ok(()) };
        let prompt = t.prompt;
        count(entry, &mut t, prompt, output_tokens);
        let unacked = entry.unacknowledged();
        let allowance = if t.alone { u64::from(t.prompt) } else { 0 };
        if unacked > credit + allowance {
            return Err(payment(format!(
                "stopped: {unacked} delivered tokens are not acknowledged (credit is {credit}); the client stopped sending receipts"
            )));
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        self.provider.render_metrics()
    }

    fn finish(&self, ticket: MeterTicket, usage: &Usage, _attestation: &Attestation, _signature: &Sig) {
        let Some(t) = ticket_of(&ticket) else { return };
        let mut t = t.lock().expect("ticket lock");
        let mut ledger = self.provider.ledger();
        let Some(entry) = ledger.entry(&t.session) else { return };
        // The prompt counts once the engine got that far; for embeddings the real count is
        // known only now (`begin` had an upper bound).
        if usage.completion_tokens > 0 || usage.complete {
            count(entry, &mut t, usage.prompt_tokens, usage.completion_tokens);
        }
        if !t.counted_prompt {
            entry.reserved_input = entry.reserved_input.saturating_sub(u64::from(t.prompt));
        }
        entry.reserved_output =
            entry.reserved_output.saturating_sub(u64::from(t.max_tokens.saturating_sub(t.counted_output)));
        entry.inflight = entry.inflight.saturating_sub(1);
    }
}

fn ticket_of(ticket: &MeterTicket) -> Option<&std::sync::Mutex<Ticket>> {
    ticket.data.as_ref()?.as_any().downcast_ref::<std::sync::Mutex<Ticket>>()
}

/// Moves a request's newly delivered tokens from reserved to delivered.
fn count(entry: &mut crate::ledger::Entry, t: &mut Ticket, prompt_tokens: u32, output_tokens: u32) {
    if !t.counted_prompt {
        t.counted_prompt = true;
        entry.delivered_input += u64::from(prompt_tokens);
        entry.reserved_input = entry.reserved_input.saturating_sub(u64::from(t.prompt));
    }
    let new = output_tokens.saturating_sub(t.counted_output);
    t.counted_output += new;
    entry.delivered_output += u64::from(new);
    entry.reserved_output = entry.reserved_output.saturating_sub(u64::from(new));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChainView, ProviderConfig};
    use axum::http::HeaderValue;
    use plexus_serve::Endpoint;
    use plexus_types::tx::{ModelPrice, Payload};
    use plexus_types::{Height, PrivateKey, Receipt};

    const CHAIN: &str = "plexus-test";

    struct OneSession {
        id: Hash,
        view: SessionView,
    }

    impl ChainView for OneSession {
        fn chain_id(&self) -> &str {
            CHAIN
        }
        fn session(&self, id: &Hash) -> Option<SessionView> {
            (id == &self.id).then(|| self.view.clone())
        }
        fn height(&self) -> Height {
            1
        }
        fn submit(&self, _: Payload) -> Result<Hash, String> {
            Err("no chain here".into())
        }
    }

    #[test]
    fn the_credit_bound_holds_whatever_the_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let (provider_key, client) = (PrivateKey::from_seed(1), PrivateKey::from_seed(2));
        let model = plexus_types::hash(b"model");
        let id = plexus_types::hash(b"session");
        let price = ModelPrice { model, input_per_1k: 1_000, output_per_1k: 1_000 };
        let view = SessionView {
            client: client.address(),
            provider: provider_key.address(),
            model,
            deposit: 1_000_000,
            price,
            expiry_height: 100,
            refund_height: 200,
            settled_seq: 0,
            open: true,
            regions: Vec::new(),
        };
        let config = ProviderConfig { credit_tokens: 1_000, ..ProviderConfig::new(dir.path().join("ledger.log")) };
        let provider = Provider::open(OneSession { id, view }, provider_key.address(), config).unwrap();
        let proof = plexus_types::receipt::SessionAuth { session: id, provider: provider_key.address(), nonce: 1 }
            .sign(&client, CHAIN);
        let token = provider.authenticate(&id, 1, &proof).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(crate::HEADER_SESSION, HeaderValue::from_str(&id.to_string()).unwrap());
        headers.insert(crate::HEADER_TOKEN, HeaderValue::from_str(&hex::encode(token)).unwrap());
        let metering = provider.metering();
        let request = |n: u64| MeterRequest {
            request_id: n,
            model,
            endpoint: Endpoint::ChatCompletions,
            headers: &headers,
            prompt_tokens: 100,
            max_tokens: 200,
        };
        // A client racing requests: each may cost 300 tokens; three fit the 1,000-token credit,
        // the fourth does not, however they arrive.
        let tickets: Vec<MeterTicket> = (0..3).map(|n| metering.begin(&request(n)).unwrap()).collect();
        let refused = metering.begin(&request(3)).unwrap_err();
        assert!(matches!(refused, ServeError::PaymentRequired(_)), "{refused:?}");
        // One finishes having delivered 150 tokens: 150 unacknowledged + 600 reserved + 300 > 1,000.
        let usage = Usage { prompt_tokens: 100, completion_tokens: 50, cached_tokens: 0, complete: true };
        let att = plexus_types::Attestation {
            request_hash: Hash::ZERO,
            output_hash: Hash::ZERO,
            model,
            input_tokens: 100,
            output_tokens: 50,
            output_ids_hash: Hash::ZERO,
            logits_fingerprint: Hash::ZERO,
        };
        let sig = att.sign(&provider_key, CHAIN);
        let mut tickets = tickets.into_iter();
        metering.finish(tickets.next().unwrap(), &usage, &att, &sig);
        assert!(metering.begin(&request(4)).is_err());
        // The client pays for those 150: room again.
        let receipt = Receipt {
            session: id,
            seq: 1,
            cum_input_tokens: 100,
            cum_output_tokens: 50,
            cum_amount: 150,
            outputs_root: Hash::ZERO,
        }
        .sign(&client, CHAIN);
        provider.accept_receipt(receipt).unwrap();
        let fifth = metering.begin(&request(5)).unwrap();
        // Exposure never went above the credit: 150 delivered + 3 x 300 reserved at the peak.
        for t in tickets.chain([fifth]) {
            metering.finish(t, &Usage::default(), &att, &sig);
        }
        let state = provider.session_state(&id).unwrap();
        assert_eq!(state.requests_in_flight, 0);
    }

    #[test]
    fn a_provider_outside_a_sessions_regions_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let (provider_key, client) = (PrivateKey::from_seed(1), PrivateKey::from_seed(2));
        let model = plexus_types::hash(b"model");
        let id = plexus_types::hash(b"session");
        let view = SessionView {
            client: client.address(),
            provider: provider_key.address(),
            model,
            deposit: 1_000_000,
            price: ModelPrice { model, input_per_1k: 0, output_per_1k: 1_000 },
            expiry_height: 100,
            refund_height: 200,
            settled_seq: 0,
            open: true,
            regions: vec!["eu-west".into(), "eu-central".into()],
        };
        let proof = |nonce| {
            plexus_types::receipt::SessionAuth { session: id, provider: provider_key.address(), nonce }
                .sign(&client, CHAIN)
        };
        for (region, ok) in [("us-east", false), ("", false), ("eu-central", true)] {
            let config = ProviderConfig {
                region: region.into(),
                ..ProviderConfig::new(dir.path().join(format!("ledger-{region}.log")))
            };
            let view = view.clone();
            let provider = Provider::open(OneSession { id, view }, provider_key.address(), config).unwrap();
            match provider.authenticate(&id, 1, &proof(1)) {
                Ok(_) => assert!(ok, "{region:?} is outside the session's regions and must refuse"),
                Err(e) => {
                    assert!(!ok, "{region:?} is inside: {e}");
                    assert!(matches!(e, ServeError::Forbidden(_)), "{e:?}");
                    assert!(e.to_string().contains("restricted to regions"), "{e}");
                }
            }
        }
    }
}
