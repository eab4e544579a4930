#!/usr/bin/env python3
"""Side-by-side inference benchmark: `plexus serve` against llama.cpp's own `llama-server`.

Both servers get the same GGUF, the same prompts, greedy sampling with explicit parameters in
every request, the same thread count, and the same KV layout (8192 unified cells, one slot per
concurrent stream). Each scenario starts fresh server processes, and the two servers take turns
in A-B-B-A order (llama-server, plexus, plexus, llama-server), so that drift in the machine's
speed over the run weighs on both alike. Only the Python standard library is used, so the
client costs the same for both.

Run through bench/inference/run.sh, which builds both servers first.
"""

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

SAMPLING = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": 42}

STORY_PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Write a long story about a robot learning to paint.",
    "Write a long story about two friends crossing a desert.",
    "Write a long story about a village that forgot how to sing.",
    "Write a long story about a dragon who collects books.",
    "Write a long story about a sailor lost in a storm.",
    "Write a long story about a clockmaker and a magic watch.",
    "Write a long story about a fox who becomes a detective.",
]

QUESTIONS = [
    "What should I pack for a three-day hike?",
    "How do I keep basil alive indoors?",
    "Explain what a leap year is.",
    "Why do cats purr?",
    "Give me a tip for learning to juggle.",
    "What is the difference between weather and climate?",
    "How do airplanes stay in the air?",
    "Suggest a name for a bakery.",
]

SYSTEM_PROMPT = (
    "You are the support assistant of Northwind Outdoor Supply, a shop for hiking, camping and "
    "climbing gear. Always answer politely and briefly. Our opening hours are Monday to Friday "
    "from 9 to 18 and Saturday from 10 to 16; we are closed on Sunday. Returns are accepted "
    "within 30 days with a receipt; worn climbing shoes and opened gas canisters cannot be "
    "returned. Shipping inside the country is free above 50 euros and takes two to four working "
    "days. We repair tents, sleeping bags and jackets in our own workshop; a repair takes about "
    "two weeks. Gift cards are valid for three years. Members of our club get ten percent off "
    "everything except sale items and get an invitation to our monthly guided hike. If a customer "
    "asks about something you do not know, say so and suggest calling the shop. Never invent "
    "prices. Recommend safety equipment whenever a customer mentions climbing, glacier travel or "
    "winter hiking, and remind them to check the weather forecast and tell someone their route. "
) * 3

EMBED_SENTENCES = [
    f"Sentence number {i}: the quick brown fox jumps over the lazy dog near the river bank."
    for i in range(64)
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a free port, stopped on exit."""

    def __init__(self, name, argv, port, log_path):
        self.name, self.port = name, port
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{name} did not become healthy; see {log_path}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def stream_chat(port, model, messages, max_tokens):
    """One streamed chat request. Returns (ttft_s, decode_s, completion_tokens, text)."""
    body = dict(SAMPLING, model=model, messages=messages, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    usage = None
    text = []
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj:
                raise RuntimeError(obj["error"])
            if obj.get("usage"):
                usage = obj["usage"]
            for c in obj.get("choices", []):
                piece = (c.get("delta") or {}).get("content")
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
                    text.append(piece)
    tokens = usage["completion_tokens"] if usage else chunks
    if first is None:
        return None, 0.0, tokens, ""
    return first - t0, last - first, tokens, "".join(text)


def single_stream(port, model, runs=5, max_tokens=256):
    ttfts, rates, texts = [], [], []
    for i in range(runs):
        prompt = STORY_PROMPTS[i % len(STORY_PROMPTS)]
        ttft, decode, n, text = stream_chat(port, model, [{"role": "user", "content": prompt}], max_tokens)
        ttfts.append(ttft)
        if n > 1 and decode > 0:
            rates.append((n - 1) / decode)
        texts.append(text)
    return {"ttfts": ttfts, "rates": rates, "texts": texts}


def concurrent(port, model, streams, requests_per_stream=3, max_tokens=128):
    total = [0] * streams
    errors = []

    def client(k):
        try:
            for r in range(requests_per_stream):
                prompt = STORY_PROMPTS[(k + r * streams) % len(STORY_PROMPTS)]
                _, _, n, _ = stream_chat(port, model, [{"role": "user", "content": prompt}], max_tokens)
                total[k] += n
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    return {"tok_s": sum(total) / wall, "tokens": sum(total), "wall_s": wall}


def shared_system(port, model, concurrency):
    """TTFT of requests sharing a long system prompt: waves of `concurrency` requests."""
    ttfts = []
    lock = threading.Lock()

    def one(q):
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}]
        ttft, _, _, _ = stream_chat(port, model, msgs, 8)
        with lock:
            ttfts.append(ttft)

    for wave in range(0, len(QUESTIONS), concurrency):
        threads = [threading.Thread(target=one, args=(q,)) for q in QUESTIONS[wave:wave + concurrency]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return ttfts


def embeddings(port, model, rounds=10):
    body = json.dumps({"model": model, "input": EMBED_SENTENCES, "encoding_format": "float"}).encode()
    req = lambda: urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", data=body,  # noqa: E731
                                         headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req(), timeout=600) as r:  # warm-up
        r.read()
    t0 = time.perf_counter()
    for _ in range(rounds):
        with urllib.request.urlopen(req(), timeout=600) as r:
            json.loads(r.read())
    return {"sentences_s": rounds * len(EMBED_SENTENCES) / (time.perf_counter() - t0)}


def machine_info():
    info = {"python": platform.python_version(), "kernel": platform.release()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Flags"):
                info[k.strip()] = v.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = set(info.pop("Flags", "").split())
    info["simd"] = " ".join(f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "neon") if f in flags)
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 1e6, 1)
    except OSError:
        pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plexus", required=True)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--embed-model", default="all-minilm-l6-v2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--logs", default="/tmp")
    ap.add_argument("--json-out", required=True)
    args = ap.parse_args()

    model = "smollm2-135m-instruct"

    def plexus(np):
        port = free_port()
        argv = [args.plexus, "serve", "-m", args.gguf, "--port", str(port), "--threads", str(args.threads),
                "--threads-batch", str(args.threads), "--ctx", str(args.ctx), "--parallel", str(np),
                "--batch", "2048", "--ubatch", "512"]
        return Server("plexus", argv, port, os.path.join(args.logs, f"bench-plexus-np{np}.log"))

    def llama(np):
        port = free_port()
        argv = [args.llama_server, "-m", args.gguf, "--port", str(port), "--host", "127.0.0.1",
                "-c", str(args.ctx), "-np", str(np), "-kvu", "-t", str(args.threads), "-tb", str(args.threads),
                "-b", "2048", "-ub", "512", "--fit", "off", "--no-ui", "--alias", model]
        return Server("llama-server", argv, port, os.path.join(args.logs, f"bench-llama-np{np}.log"))

    # The plexus server names a GGUF path after its file; ask it.
    def served_name(port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as r:
            return json.loads(r.read())["data"][0]["id"]

    results = {"machine": machine_info(), "threads": args.threads, "ctx": args.ctx}
    servers = (("llama-server", llama), ("plexus", plexus))
    raw = {label: {} for label, _ in servers}
    # (scenario, slots): every scenario runs on each server twice, in A-B-B-A order.
    for key, np in (("single", 1), ("agg4", 4), ("agg8", 8), ("shared1", 4), ("shared4", 4)):
        print(f"== {key}", flush=True)
        for label, start in servers + servers[::-1]:
            with start(np) as s:
                name = served_name(s.port)
                stream_chat(s.port, name, [{"role": "user", "content": "Hello"}], 8)  # warm-up
                got = raw[label].setdefault(key, [])
                if key == "single":
                    got.append(single_stream(s.port, name))
                    raw[label].setdefault("agg1", []).append(concurrent(s.port, name, 1))
                elif key.startswith("agg"):
                    got.append(concurrent(s.port, name, np))
                else:
                    got.append(shared_system(s.port, name, int(key[len("shared"):])))
    for label, _ in servers:
        got = raw[label]
        single = {k: [x for run in got["single"] for x in run[k]] for k in ("ttfts", "rates", "texts")}
        r = {"single": {"ttft_ms": statistics.median(single["ttfts"]) * 1e3,
                        "decode_tok_s": statistics.median(single["rates"]),
                        "decode_tok_s_passes": [statistics.median(run["rates"]) for run in got["single"]],
                        "texts": single["texts"]}}
        for n in (1, 4, 8):
            runs = got[f"agg{n}"]
            r[f"agg{n}"] = {"tok_s": sum(x["tokens"] for x in runs) / sum(x["wall_s"] for x in runs),
                            "tok_s_passes": [x["tok_s"] for x in runs]}
        for c in (1, 4):
            ttfts = [t for run in got[f"shared{c}"] for t in run]
            r[f"shared{c}"] = {"ttft_ms_median": statistics.median(ttfts) * 1e3, "ttft_ms_mean": statistics.mean(ttfts) * 1e3}
        results[label] = r
        print(f"== {label}", flush=True)
        print(f"  single stream: {r['single']['decode_tok_s']:.1f} tok/s (passes "
              f"{', '.join(f'{x:.1f}' for x in r['single']['decode_tok_s_passes'])}), TTFT {r['single']['ttft_ms']:.1f} ms", flush=True)
        for n in (1, 4, 8):
            print(f"  aggregate x{n}: {r[f'agg{n}']['tok_s']:.1f} tok/s", flush=True)
        for c in (1, 4):
            print(f"  shared system prompt, {c} at a time: TTFT median {r[f'shared{c}']['ttft_ms_median']:.1f} ms", flush=True)

    port = free_port()
    argv = [args.plexus, "serve", "-m", args.embed_model, "--port", str(port), "--threads", str(args.threads)]
    with Server("plexus-embed", argv, port, os.path.join(args.logs, "bench-plexus-embed.log")) as s:
        results["plexus"]["embed"] = embeddings(s.port, args.embed_model)
    print(f"  embeddings: {results['plexus']['embed']['sentences_s']:.1f} sentences/s", flush=True)

    same = sum(a == b for a, b in zip(results["plexus"]["single"]["texts"], results["llama-server"]["single"]["texts"]))
    results["same_greedy_texts"] = f"{same}/{len(results['plexus']['single']['texts'])}"
    with open(args.json_out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
