#!/usr/bin/env python3
"""Turns bench.py's results.json into the "## Inference" section of docs/benchmarks.md."""

import argparse
import datetime
import json
import re
import sys


def section(r, commit):
    ll, px = r["llama-server"], r["plexus"]
    m = r["machine"]

    def row(name, a, b, unit, higher_better=True, fmt="{:.1f}"):
        ratio = b / a if a else float("nan")
        goal = ""
        return f"| {name} | {fmt.format(a)} {unit} | {fmt.format(b)} {unit} | {ratio:.2f}x{goal} |"

    lines = [
        "## Inference",
        "",
        "`plexus serve` against llama.cpp's own `llama-server`, both from llama.cpp b11434, in one run of",
        "`bench/inference/run.sh`. Same GGUF (SmolLM2-135M-Instruct Q4_1), same prompts, greedy with explicit",
        f"sampling parameters in every request, {r['threads']} threads each, {r['ctx']} unified KV cells with one slot",
        "per concurrent stream (`llama-server -c 8192 -np N -kvu -t 2 -tb 2 -b 2048 -ub 512 --fit off`,",
        "`plexus serve --ctx 8192 --parallel N --threads 2 --threads-batch 2 --batch 2048 --ubatch 512`). Every",
        "scenario starts fresh servers and runs on each server twice, in A-B-B-A order (llama-server, plexus,",
        "plexus, llama-server), so drift in the machine's speed weighs on both alike; the figures pool both",
        "passes. Ratio = plexus / llama-server (for TTFT, lower is better).",
        "",
        f"Machine: {m.get('Model name', '?')}, {m.get('CPU(s)', '?')} CPUs, {m.get('memory_gb', '?')} GB, SIMD {m.get('simd', '?')},",
        f"kernel {m.get('kernel', '?')}. Commit {commit}, {datetime.date.today().isoformat()}.",
        "",
        "| measure | llama-server | plexus | ratio |",
        "|---|---|---|---|",
        row("single-stream decode (256 tokens, median of 2 x 5)", ll["single"]["decode_tok_s"], px["single"]["decode_tok_s"], "tok/s"),
        row("time to first token, single stream", ll["single"]["ttft_ms"], px["single"]["ttft_ms"], "ms"),
        row("aggregate, 1 stream (2 x 3 x 128 tokens)", ll["agg1"]["tok_s"], px["agg1"]["tok_s"], "tok/s"),
        row("aggregate, 4 concurrent streams", ll["agg4"]["tok_s"], px["agg4"]["tok_s"], "tok/s"),
        row("aggregate, 8 concurrent streams", ll["agg8"]["tok_s"], px["agg8"]["tok_s"], "tok/s"),
        row("TTFT, shared ~600-token system prompt, 1 at a time (median of 2 x 8)",
            ll["shared1"]["ttft_ms_median"], px["shared1"]["ttft_ms_median"], "ms"),
        row("TTFT, shared system prompt, 4 at a time (median of 2 x 8)",
            ll["shared4"]["ttft_ms_median"], px["shared4"]["ttft_ms_median"], "ms"),
        f"| embeddings, all-MiniLM-L6-v2, batches of 64 | n/a | {px['embed']['sentences_s']:.1f} sentences/s | |",
        "",
        f"Greedy replies identical between the two servers in the single-stream runs: {r['same_greedy_texts']}.",
        "Single-stream decode by pass: llama-server "
        + ", ".join(f"{x:.1f}" for x in ll["single"]["decode_tok_s_passes"]) + " tok/s; plexus "
        + ", ".join(f"{x:.1f}" for x in px["single"]["decode_tok_s_passes"]) + " tok/s (the spread between passes of",
        "one server is this machine's noise at the time of the run).",
        "",
        "Goals (issue 4): single stream >= 0.98x, aggregate at 8 streams >= 1.0x, and lower TTFT than",
        "llama-server when requests share a system prompt. Status: "
        + "; ".join([
            f"single stream {'met' if px['single']['decode_tok_s'] >= 0.98 * ll['single']['decode_tok_s'] else 'NOT met'}",
            f"8 streams {'met' if px['agg8']['tok_s'] >= ll['agg8']['tok_s'] else 'NOT met'}",
            f"shared-prompt TTFT {'met' if px['shared1']['ttft_ms_median'] < ll['shared1']['ttft_ms_median'] and px['shared4']['ttft_ms_median'] < ll['shared4']['ttft_ms_median'] else 'NOT met'}",
        ])
        + ".",
        "",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--docs", required=True)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    with open(args.results) as f:
        r = json.load(f)
    text = section(r, args.commit)
    print(text)
    if args.no_docs:
        return 0
    try:
        with open(args.docs) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = "# Benchmarks\n\n"
    pattern = re.compile(r"^## Inference\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text + "\n", doc)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    with open(args.docs, "w") as f:
        f.write(doc)
    print(f"wrote {args.docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
