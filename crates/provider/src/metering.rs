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
        let owed = plexus_execution::price_of(&view.price, r.cum_input_tokens, r.cum_output_tokens)
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
        let unacked = entry.unacknowledged();
        if unacked > credit {
            return Err(payment(format!(
                "{unacked} delivered tokens of session {session} are not acknowledged (credit is {credit}); send a newer receipt"
            )));
        }
        let worst = plexus_execution::price_of(
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
        entry.inflight_prompt += u64::from(req.prompt_tokens);
        entry.inflight += 1;
        let ticket = Ticket {
            session,
            prompt: req.prompt_tokens,
            max_tokens: req.max_tokens,
            counted_output: 0,
            counted_prompt: false,
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
        if unacked > credit + entry.inflight_prompt {
            return Err(payment(format!(
                "stopped: {unacked} delivered tokens are not acknowledged (credit is {credit}); the client stopped sending receipts"
            )));
        }
        Ok(())
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
        entry.inflight_prompt = entry.inflight_prompt.saturating_sub(u64::from(t.prompt));
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
