//! A provider that lies, for tests only: built with the `dishonest` feature and told what to do
//! by `PLEXUS_DISHONEST`, it inflates its counts, strips or forges its attestations, pads its
//! token ids or streams forever — everything a cheating provider could do to get paid for work
//! it did not do. Tests use it to show that a client's gateway never pays for any of it. In
//! every other build [`Lie::from_env`] is always [`Lie::Honest`].

/// What the provider lies about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "dishonest"), allow(dead_code))]
pub(crate) enum Lie {
    Honest,
    /// Reports (and signs) a hundred times the tokens it processed.
    Inflate,
    /// Sends no attestation and no token ids.
    Strip,
    /// Signs its attestations with a key that is not its own.
    Forge,
    /// Lists more output token ids than it generated.
    Pad,
    /// Never ends a stream: repeats its last text, with its ids, forever.
    Endless,
    /// Adds 0.01 to every tensor output and attests to what it sends: the attestation checks,
    /// only an audit that re-runs the model can tell (a cheaper or broken computation).
    Perturb,
    /// Generates as if the request had no penalties or logit biases, and attests to the
    /// request as asked: only an audit that applies them can tell.
    Unpenalised,
    /// Generates as if the request had no grammar (structured output), and attests to the
    /// request as asked.
    Unconstrained,
}

impl Lie {
    pub(crate) fn from_env() -> Lie {
        #[cfg(feature = "dishonest")]
        {
            let lie = match std::env::var("PLEXUS_DISHONEST").unwrap_or_default().as_str() {
                "inflate" => Lie::Inflate,
                "strip" => Lie::Strip,
                "forge" => Lie::Forge,
                "pad" => Lie::Pad,
                "endless" => Lie::Endless,
                "perturb" => Lie::Perturb,
                "unpenalised" => Lie::Unpenalised,
                "unconstrained" => Lie::Unconstrained,
                _ => Lie::Honest,
            };
            if lie != Lie::Honest {
                tracing::warn!(target: "serve", ?lie, "this provider lies (PLEXUS_DISHONEST, a test build)");
            }
            lie
        }
        #[cfg(not(feature = "dishonest"))]
        Lie::Honest
    }
}

/// What a [`Lie::Perturb`] provider does to its tensor outputs.
pub(crate) fn perturb(lie: Lie, response: &mut plexus_inference::tensor::TensorResponse) {
    if lie == Lie::Perturb {
        response.outputs.iter_mut().flat_map(|t| t.data.iter_mut()).for_each(|v| *v += 0.01);
    }
}

/// What a [`Lie::Unpenalised`] or [`Lie::Unconstrained`] provider runs: the request without
/// its logit adjustment or its grammar, under the request hash of the one asked for.
pub(crate) fn tamper(lie: Lie, mut prepared: plexus_inference::Prepared) -> plexus_inference::Prepared {
    match lie {
        Lie::Unpenalised => prepared.adjust = plexus_inference::LogitAdjust::default(),
        Lie::Unconstrained => prepared.constraint = None,
        _ => {}
    }
    prepared
}
