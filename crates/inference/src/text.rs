//! Turning a stream of token pieces (raw bytes) into text that is safe to send: never split a
//! UTF-8 character, and never send the beginning of a stop string that may still complete.

/// Most stop strings per request (OpenAI allows 4).
pub const STOP_STRINGS_MAX: usize = 4;
/// Longest stop string, in bytes.
pub const STOP_STRING_BYTES_MAX: usize = 256;

/// What one step of decoding produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Text that can be sent now (possibly empty).
    Text(String),
    /// A stop string matched: the text before it, and generation must end.
    Stop(String),
}

/// Incremental detokenizer with UTF-8 and stop-string hold-back.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes of an incomplete UTF-8 character at the end of the last piece.
    pending: Vec<u8>,
    /// Decoded text not yet sent because it could be the start of a stop string.
    held: String,
    stops: Vec<String>,
}

impl TextStream {
    /// A stream that ends at the first occurrence of any of `stops` (empty strings ignored).
    pub fn new(stops: &[String]) -> Self {
        TextStream { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), ..Default::default() }
    }

    /// Adds the bytes of one token.
    pub fn push(&mut self, piece: &[u8]) -> Step {
        self.pending.extend_from_slice(piece);
        decode_utf8_prefix(&mut self.pending, &mut self.held);
        if let Some(at) = self.first_stop() {
            self.held.truncate(at);
            return Step::Stop(std::mem::take(&mut self.held));
        }
        let keep = self.stop_prefix_suffix_len();
        let send = self.held.len() - keep;
        let rest = self.held.split_off(send);
        Step::Text(std::mem::replace(&mut self.held, rest))
    }

    /// Everything still held back, at the end of generation. Incomplete UTF-8 becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        out
    }

    fn first_stop(&self) -> Option<usize> {
        self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min()
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn stop_prefix_suffix_len(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            let max = stop.len().saturating_sub(1).min(self.held.len());
            for len in (best + 1..=max).rev() {
                let start = self.held.len() - len;
                if self.held.is_char_boundary(start) && stop.starts_with(&self.held[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

/// Moves the longest valid UTF-8 prefix of `bytes` into `out`, replacing invalid sequences with
/// U+FFFD and leaving an incomplete trailing character in `bytes`. This is how a provider turns
/// token bytes into the text it sends (and [`TextStream::finish`] makes what is left one U+FFFD,
/// as `String::from_utf8_lossy` does), so a gateway checking that token ids spell the text
/// decodes them the same way.
pub fn decode_utf8_prefix(bytes: &mut Vec<u8>, out: &mut String) {
    let mut start = 0;
    loop {
        match std::str::from_utf8(&bytes[start..]) {
            Ok(s) => {
                out.push_str(s);
                bytes.clear();
                return;
            }
            Err(e) => {
                let valid = start + e.valid_up_to();
                // SAFETY-free: from_utf8 just told us this range is valid.
                out.push_str(std::str::from_utf8(&bytes[start..valid]).unwrap_or_default());
                match e.error_len() {
                    None => {
                        bytes.drain(..valid);
                        return;
                    }
                    Some(n) => {
                        out.push('\u{FFFD}');
                        start = valid + n;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, Option<String>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(&stops);
        let mut sent = Vec::new();
        for p in pieces {
            match s.push(p) {
                Step::Text(t) => sent.push(t),
                Step::Stop(t) => return (sent, Some(t), String::new()),
            }
        }
        let tail = s.finish();
        (sent, None, tail)
    }

    #[test]
    fn splits_multibyte_characters_safely() {
        let euro = "€".as_bytes(); // 3 bytes
        let (sent, stop, tail) = run(&[], &[b"a", &euro[..1], &euro[1..2], &euro[2..], b"b"]);
        assert_eq!(sent, vec!["a", "", "", "€", "b"]);
        assert_eq!(stop, None);
        assert_eq!(tail, "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (sent, _, tail) = run(&[], &[b"a\xffb", b"\xe2\x82"]);
        assert_eq!(sent, vec!["a\u{FFFD}b", ""]);
        assert_eq!(tail, "\u{FFFD}");
    }

    #[test]
    fn holds_back_possible_stop_prefix_and_stops() {
        let (sent, stop, _) = run(&["END"], &[b"hello E", b"N", b"D more"]);
        assert_eq!(sent, vec!["hello ", ""]);
        assert_eq!(stop.as_deref(), Some(""));
        let (sent, stop, tail) = run(&["END"], &[b"hello E", b"NX"]);
        assert_eq!(sent, vec!["hello ", "ENX"]);
        assert_eq!(stop, None);
        assert_eq!(tail, "");
    }

    #[test]
    fn earliest_of_several_stops_wins_inside_one_piece() {
        let (sent, stop, _) = run(&["zz", "b"], &[b"aab zz"]);
        assert!(sent.is_empty());
        assert_eq!(stop.as_deref(), Some("aa"));
    }

    #[test]
    fn held_text_is_flushed_at_the_end() {
        let (sent, stop, tail) = run(&["\n\n"], &[b"line\n"]);
        assert_eq!(sent, vec!["line"]);
        assert_eq!(stop, None);
        assert_eq!(tail, "\n");
    }
}
