//! `plexus-bench certificates`: what a finalized block's certificate costs under consensus v1
//! (one ed25519 signature per signer) and v2 (one aggregated BLS12-381 signature), at several
//! validator counts: bytes of the certificate and of the finalization message, time to decode
//! and verify one finalization, and time to verify a quorum's votes (what every validator does
//! each view before a certificate exists). The committees are in-process (no network), so 64
//! validators cost what 4 do to set up. v1 is the anchor v2 is measured against, in the same run.

use std::path::PathBuf;
use std::time::Instant;

use plexus_consensus::committee::Committee;

#[derive(clap::Args)]
pub struct Args {
    /// Validator counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [4usize, 16, 64])]
    validators: Vec<usize>,
    /// Verifications timed per measurement (the median is reported).
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Write the results into this file's "## Consensus certificates" section.
    #[arg(long)]
    docs: Option<PathBuf>,
}

struct Row {
    version: u16,
    validators: usize,
    quorum: usize,
    certificate_bytes: usize,
    finalization_bytes: usize,
    verify_finalization_us: f64,
    verify_votes_us: f64,
}

/// Median wall time of `rounds` calls of `f`, in microseconds.
fn median_us(rounds: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    crate::report::quantile(&times, 0.5)
}

fn measure(version: u16, validators: usize, rounds: usize) -> anyhow::Result<Row> {
    let committee = Committee::new(version, validators);
    let finalization = committee.finalization();
    let votes = committee.votes();
    // Check before timing: a benchmark of something that does not verify measures nothing.
    anyhow::ensure!(committee.verify_finalization(&finalization), "v{version} finalization does not verify");
    anyhow::ensure!(committee.verify_votes(&votes) == committee.quorum(), "v{version} votes do not verify");
    let verify_finalization_us = median_us(rounds, || assert!(committee.verify_finalization(&finalization)));
    let verify_votes_us = median_us(rounds, || assert_eq!(committee.verify_votes(&votes), votes.len()));
    Ok(Row {
        version,
        validators,
        quorum: committee.quorum(),
        certificate_bytes: committee.certificate_bytes(&finalization),
        finalization_bytes: finalization.len(),
        verify_finalization_us,
        verify_votes_us,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.validators.iter().all(|&n| (1..=1024).contains(&n)),
        "--validators takes counts from 1 to 1024"
    );
    let mut rows = Vec::new();
    for &n in &args.validators {
        for version in [1, 2] {
            let row = measure(version, n, args.rounds)?;
            eprintln!(
                "v{} n={:>3}: certificate {:>5} B, finalization {:>5} B, verify finalization {:>8.0} us, verify {} votes {:>8.0} us",
                row.version,
                row.validators,
                row.certificate_bytes,
                row.finalization_bytes,
                row.verify_finalization_us,
                row.quorum,
                row.verify_votes_us
            );
            rows.push(row);
        }
    }
    let mut table = String::from(
        "| validators | version | certificate | finalization message | decode + verify a finalization | verify a quorum of votes (batch) |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} (quorum {}) | v{} | {} B | {} B | {:.0} us | {:.0} us |\n",
            r.validators,
            r.quorum,
            r.version,
            r.certificate_bytes,
            r.finalization_bytes,
            r.verify_finalization_us,
            r.verify_votes_us
        ));
    }
    // What the rows say, computed from them (never written ahead of the measurement).
    let mut summary = String::new();
    for pair in rows.chunks(2) {
        if let [one, two] = pair {
            summary.push_str(&format!(
                "At {} validators v2's certificate is {:.1}x smaller than v1's ({} B against {} B) and takes {:.1}x \
                 v1's time to verify ({:.0} us against {:.0} us); verifying a quorum of individual votes takes {:.1}x \
                 ({:.0} us against {:.0} us). ",
                one.validators,
                one.certificate_bytes as f64 / two.certificate_bytes.max(1) as f64,
                two.certificate_bytes,
                one.certificate_bytes,
                two.verify_finalization_us / one.verify_finalization_us.max(1e-9),
                two.verify_finalization_us,
                one.verify_finalization_us,
                two.verify_votes_us / one.verify_votes_us.max(1e-9),
                two.verify_votes_us,
                one.verify_votes_us,
            ));
        }
    }
    summary.push_str(
        "v2 trades CPU for bytes: certificates stop growing with the validator set (every node stores one per \
         block and sends it to every peer that backfills or lags), while each vote costs a pairing instead of \
         an ed25519 check.",
    );
    let body = format!(
        "Command: `bench/certificates/run.sh` (`plexus-bench certificates --validators {} --rounds {}`), \
         commit {}, on {}.\n\n\
         One finalized block's certificate under consensus v1 (one ed25519 signature per signer) and v2 \
         (one aggregated BLS12-381 signature, `MinSig`: 48-byte signatures, plus the signers' bitmap), \
         for a minimal quorum of signers. Committees are built in one process from fixed seeds (64 \
         validators are simulated this way; no network). Times are medians of {} runs on one thread; \
         v1 is the anchor, measured in the same run.\n\n{table}\n\
         {summary}\n",
        args.validators.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
        args.rounds,
        crate::report::commit(),
        crate::report::machine(),
        args.rounds,
    );
    println!("{body}");
    if let Some(docs) = &args.docs {
        crate::report::write_section(docs, "Consensus certificates", &body)?;
    }
    Ok(())
}
