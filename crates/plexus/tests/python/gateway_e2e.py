"""Drives `plexus gateway` with the official OpenAI Python SDK, as an app would, and asserts on
what comes back. Optionally kills the provider serving a stream in the middle of it.

Usage: python3 gateway_e2e.py <devnet.json> [--kill-mid-stream]
Prints one JSON line at the end with what the Rust test checks against the chain.
Needs: pip install openai
"""

import json
import math
import os
import signal
import socket
import ssl
import sys
import time
import urllib.parse
import urllib.request

import openai
from openai import OpenAI

CHAT = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
EMBED = "all-minilm-l6-v2"


# A token id both models' vocabularies hold as ordinary text (tests force it with a logit bias).
FORCED_TOKEN = 1000


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def provider_get(node, path):
    """GET from a provider over its TLS, pinned to its on-chain key the way a gateway pins it:
    the handshake is signed by the certificate's key (TLS checks that), and that key must be
    the node's address."""
    url = urllib.parse.urlsplit(node["inference"])
    assert url.scheme == "https", node["inference"]
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((url.hostname, url.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="plexus-provider") as tls:
            cert = tls.getpeercert(binary_form=True)
            # The certificate's SubjectPublicKeyInfo: the ed25519 OID, then the 32-byte key.
            spki = bytes.fromhex("302a300506032b6570032100") + bytes.fromhex(node["address"])
            assert spki in cert, "the provider's certificate is not for its on-chain key"
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode())
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"transfer-encoding: chunked" in head.lower():
        decoded = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            decoded += rest[:n]
            body = rest[n + 2 :]
        body = decoded
    return body.decode()


def active_requests(node):
    text = provider_get(node, "/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("plexus_inference_active_requests")
    )


def basic(client):
    out = {}
    ids = sorted(m.id for m in client.models.list().data)
    # The devnet's LLM and embeddings, and its three tensor models (for the /v2 routes).
    assert ids == sorted([CHAT, GEMMA, EMBED, "ecg-heartbeat", "demand-forecast", "traffic-anomaly"]), ids

    # Streaming chat with usage: one stream, one id, sensible English.
    text, ids, usage = "", set(), None
    for chunk in client.chat.completions.create(
        model=CHAT,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        max_tokens=24,
        messages=[{"role": "user", "content": "What is 2 plus 2?"}],
    ):
        ids.add(chunk.id)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        else:
            usage = chunk
    assert len(ids) == 1, ids
    assert text == "The answer to this classic math problem is 4.", repr(text)
    assert usage is not None and usage.usage.completion_tokens > 0, usage
    segments = usage.model_extra["plexus"]["segments"]
    assert len(segments) == 1 and segments[0]["complete"], segments
    assert segments[0]["completion_tokens"] == usage.usage.completion_tokens
    out["stream"] = {"text": text, "usage": usage.usage.model_dump(), "segments": segments}

    # Non-streaming chat, with the provider's attestation passed through.
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT, temperature=0, max_tokens=24, messages=[{"role": "user", "content": "What is 2 plus 2?"}]
    )
    chat = raw.parse()
    # Greedy: the same answer as the stream, from whichever provider served it.
    assert chat.choices[0].message.content == text, (chat.choices[0].message.content, text)
    for h in ("x-plexus-provider", "x-plexus-session", "x-plexus-attestation", "x-plexus-signature"):
        assert raw.headers.get(h), h
    out["chat"] = {"text": chat.choices[0].message.content, "provider": raw.headers["x-plexus-provider"]}

    # n = 2 on both architectures: each choice its own verified, paid generation (seed, seed + 1),
    # with the provider's attestation, the usage their sum.
    choices = {}
    for model in (CHAT, GEMMA):
        two = client.chat.completions.create(
            model=model, temperature=1.0, seed=11, max_tokens=12, n=2,
            messages=[{"role": "user", "content": "Write one line about the sea."}],
        )
        assert [c.index for c in two.choices] == [0, 1], (model, two.choices)
        blocks = [c.model_extra["plexus"] for c in two.choices]
        hashes = [b["attestation"]["request_hash"] for b in blocks]
        assert hashes[0] != hashes[1], (model, blocks)
        assert two.usage.completion_tokens == sum(len(b["output_ids"]) for b in blocks), (model, two.usage)
        choices[model] = [c.message.content for c in two.choices]
    for kwargs in (dict(n=9), dict(n=0), dict(n=2, stream=True)):
        try:
            client.chat.completions.create(model=CHAT, max_tokens=4, messages=[{"role": "user", "content": "hi"}], **kwargs)
        except openai.BadRequestError as e:
            assert e.body.get("param") == "n", (kwargs, e.body)
        else:
            raise AssertionError(f"expected a 400 for {kwargs}")
    out["n"] = choices

    # Structured outputs on both architectures, paid and verified: every answer's ids are
    # checked against the request's grammar by the gateway, and the audits apply it.
    from openai_e2e import structured
    out["structured"] = {model: structured(client, model) for model in (CHAT, GEMMA)}

    # Log-probabilities pass through the gateway, non-streamed and streamed (legacy shape,
    # offsets counted over the whole answer), and are not billed beyond the tokens.
    lp = client.chat.completions.create(
        model=CHAT, temperature=0, max_tokens=24, logprobs=True, top_logprobs=2,
        messages=[{"role": "user", "content": "What is 2 plus 2?"}],
    )
    content = lp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == text, [t.token for t in content]
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in content), content
    tokens, offsets, streamed = [], [], ""
    for chunk in client.completions.create(
        model=CHAT, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=1, stream=True
    ):
        for c in chunk.choices:
            if c.text:
                assert c.logprobs and "".join(c.logprobs.tokens) == c.text, c
                tokens += c.logprobs.tokens
                offsets += c.logprobs.text_offset
                streamed += c.text
    assert "".join(tokens) == streamed and len(tokens) == 8, (tokens, streamed)
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))], offsets
    out["logprobs"] = {"tokens": len(content), "completion_tokens": lp.usage.completion_tokens}

    # Penalties and logit biases through the gateway, on both architectures. A +100 bias makes
    # greedy pick one token at every position (the logprobs, the model's own distribution
    # before the bias, name it); a seeded stream with penalties is answered and verified like
    # any other. Each response's attestation commits to the adjustment (the gateway checks it).
    adjusted = {}
    for model in (CHAT, GEMMA):
        forced = client.chat.completions.create(
            model=model, temperature=0, max_tokens=5, logit_bias={str(FORCED_TOKEN): 100}, logprobs=True,
            messages=[{"role": "user", "content": "What is 2 plus 2?"}],
        )
        toks = [t.token for t in forced.choices[0].logprobs.content]
        assert len(toks) == 5 and len(set(toks)) == 1, (model, toks)
        assert forced.choices[0].message.content == toks[0] * 5, (model, forced.choices[0].message.content)
        assert forced.choices[0].finish_reason == "length" and forced.usage.completion_tokens == 5, forced
        text, finish = "", None
        for chunk in client.chat.completions.create(
            model=model, stream=True, temperature=0.7, seed=7, max_tokens=24,
            presence_penalty=1.5, frequency_penalty=1.0, logit_bias={str(FORCED_TOKEN): -100},
            messages=[{"role": "user", "content": "Repeat the word hello five times."}],
        ):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        assert text and finish in ("stop", "length"), (model, text, finish)
        adjusted[model] = {"forced": toks[0], "penalised": text}
    out["adjusted"] = adjusted

    # The second architecture, Gemma 3 (a base model): it completes a pattern, paid and
    # attested like SmolLM2, and its chat is rendered with Gemma's turns (no control text leaks).
    raw = client.completions.with_raw_response.create(
        model=GEMMA, prompt="France: Paris\nGermany: Berlin\nJapan: Tokyo\nItaly:", max_tokens=3, temperature=0
    )
    completion = raw.parse()
    assert "Rome" in completion.choices[0].text, completion.choices[0].text
    assert completion.usage.completion_tokens == 3, completion.usage
    for h in ("x-plexus-provider", "x-plexus-attestation", "x-plexus-signature", "x-plexus-model-id"):
        assert raw.headers.get(h), h
    gemma_text, finish = "", None
    for chunk in client.chat.completions.create(
        model=GEMMA, stream=True, temperature=0, max_tokens=16,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    ):
        if chunk.choices:
            gemma_text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert gemma_text.strip() and "<start_of_turn>" not in gemma_text and "<|im" not in gemma_text, repr(gemma_text)
    assert finish in ("stop", "length"), finish
    out["gemma"] = {"completion": completion.choices[0].text, "chat": gemma_text, "model_id": raw.headers["x-plexus-model-id"]}

    # Embeddings rank related sentences above unrelated ones.
    e = client.embeddings.create(
        model=EMBED, input=["A cat sat on the mat.", "A kitten rested on the rug.", "Quarterly tax filing deadlines."]
    )
    v = [d.embedding for d in e.data]
    related, unrelated = cos(v[0], v[1]), cos(v[0], v[2])
    assert len(v[0]) == 384 and related > unrelated + 0.2, (related, unrelated)
    out["embeddings"] = {"related": related, "unrelated": unrelated, "prompt_tokens": e.usage.prompt_tokens}
    return out


def kill_mid_stream(client, info):
    text, usage, killed, chunks = "", None, None, 0
    stream = client.chat.completions.create(
        model=CHAT,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        max_tokens=400,
        logprobs=True,
        messages=[{"role": "user", "content": "Write a long story about a dragon who learns to cook."}],
    )
    for chunk in stream:
        if not chunk.choices:
            usage = chunk
            continue
        delta = chunk.choices[0].delta.content or ""
        # Each piece carries its own tokens' log-probabilities, from whichever provider sent it.
        if delta:
            lp = chunk.choices[0].logprobs
            assert lp and "".join(t.token for t in lp.content) == delta, (delta, lp)
        text += delta
        chunks += 1
        # Early, while most of the answer is still to be generated (not just in flight).
        if chunks == 10 and killed is None:
            for node in info["nodes"]:
                if active_requests(node) > 0:
                    os.kill(node["pid"], signal.SIGKILL)
                    killed = node
                    break
            assert killed is not None, "no provider was serving the stream"
    assert usage is not None, "the stream ended without its usage chunk"
    segments = usage.model_extra["plexus"]["segments"]
    assert len(segments) >= 2, segments
    assert not segments[0]["complete"] and segments[-1]["complete"], segments
    assert segments[0]["provider"] == killed["address"], (segments[0], killed["address"])
    total = sum(s["completion_tokens"] for s in segments)
    assert total == usage.usage.completion_tokens, (total, usage.usage)
    assert len(text) > 200, repr(text)
    return {"killed": killed["name"], "segments": segments, "text": text, "usage": usage.usage.model_dump()}


def main():
    info = json.load(open(sys.argv[1]))
    client = OpenAI(base_url=info["gateway"]["url"], api_key=info["gateway"].get("api_key") or "devnet", max_retries=0, timeout=300)
    result = basic(client)
    if "--kill-mid-stream" in sys.argv:
        result["failover"] = kill_mid_stream(client, info)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
