"""Drives `plexus serve` with the official OpenAI Python SDK and asserts on the values.

Usage: python3 openai_e2e.py <base_url> <chat_model> <embedding_model>
Needs: pip install openai
"""

import json
import math
import sys

import openai
from openai import OpenAI


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def parse(client, **kwargs):
    """The SDK's structured-output call (GA in newer SDKs, under `beta` before)."""
    completions = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    return completions(**kwargs)


def structured(client, model, usage=None):
    """Structured outputs as an app asks for them: a Pydantic model through the SDK's parse, a
    JSON object, and a raw Lark grammar; every answer is in its grammar. Returns the completion
    tokens used (for a caller that settles them)."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(max_length=20)
        age: int = Field(ge=0, le=150)
        pets: list[Literal["cat", "dog", "fish"]] = Field(max_length=3)

    tokens = 0
    ask = [{"role": "user", "content": "Describe a person called Ada: her name, age and pets."}]
    for temperature in (0, 1.0):
        done = parse(client, model=model, messages=ask, response_format=Person, temperature=temperature, seed=3, max_tokens=80)
        person = done.choices[0].message.parsed
        assert isinstance(person, Person), done.choices[0].message
        assert done.choices[0].finish_reason == "stop", done.choices[0]
        tokens += done.usage.completion_tokens
    obj = client.chat.completions.create(
        model=model, temperature=0, max_tokens=120, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
    )
    # Any object, so it may be longer than max_tokens (an honest cut, not JSON yet): then it is
    # an object's beginning; finished, it parses.
    content = obj.choices[0].message.content
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict), content
    else:
        assert obj.choices[0].finish_reason == "length" and content.startswith("{"), obj.choices[0]
    tokens += obj.usage.completion_tokens
    yes_no = client.chat.completions.create(
        model=model, temperature=0, max_tokens=8, extra_body={"grammar": 'start: ("yes" | "no") "."'},
        messages=[{"role": "user", "content": "Is the sky blue?"}],
    )
    assert yes_no.choices[0].message.content in ("yes.", "no."), yes_no.choices[0].message.content
    tokens += yes_no.usage.completion_tokens
    # The request's faults are 400s that name the parameter.
    for kwargs, param in (
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}), "response_format"),
        (dict(response_format={"type": "xml"}), "response_format"),
        (dict(extra_body={"grammar": "root ::= \"a\""}), "grammar"),
        (dict(extra_body={"grammar": "start: \"a\"", "response_format": {"type": "json_object"}}), "grammar"),
    ):
        try:
            client.chat.completions.create(model=model, max_tokens=4, messages=[{"role": "user", "content": "hi"}], **kwargs)
        except openai.BadRequestError as e:
            assert e.body.get("param") == param, (kwargs, e.body)
        else:
            raise AssertionError(f"expected a 400 for {kwargs}")
    return tokens


def main():
    base_url, chat_model, embed_model = sys.argv[1:4]
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)

    ids = sorted(m.id for m in client.models.list().data)
    assert ids == sorted([chat_model, embed_model]), ids

    # Non-streaming chat, greedy: the golden answer, with usage and Plexus headers.
    raw = client.chat.completions.with_raw_response.create(
        model=chat_model,
        messages=[{"role": "user", "content": "What is 2 plus 2?"}],
        temperature=0,
        max_tokens=24,
    )
    chat = raw.parse()
    text = chat.choices[0].message.content
    assert text == "The answer to this classic math problem is 4.", repr(text)
    assert chat.choices[0].finish_reason == "stop", chat.choices[0].finish_reason
    assert chat.choices[0].message.role == "assistant"
    assert chat.object == "chat.completion" and chat.model == chat_model
    assert chat.usage.completion_tokens == 12, chat.usage
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + 12
    for h in ("x-plexus-model-id", "x-plexus-provider", "x-plexus-signature"):
        assert len(raw.headers[h]) in (64, 128), (h, raw.headers[h])
    assert len(raw.headers["x-plexus-attestation"]) == 2 * (32 * 5 + 8)

    # Streaming chat: the same text, usage in the final chunk, attestation alongside.
    stream = client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "What is 2 plus 2?"}],
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, plexus, reasons = [], None, None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                reasons.append(c.finish_reason)
        if chunk.usage:
            usage = chunk.usage
        extra = chunk.model_extra or {}
        if extra.get("plexus"):
            plexus = extra["plexus"]
    assert "".join(pieces) == text, pieces
    assert len(pieces) > 3, "streamed in several chunks"
    assert reasons == ["stop"], reasons
    assert usage is not None and usage.completion_tokens == 12 and usage.prompt_tokens == chat.usage.prompt_tokens
    assert plexus and plexus["attestation"]["output_tokens"] == 12, plexus
    assert plexus["model_id"] == raw.headers["x-plexus-model-id"]
    assert plexus["provider"] == raw.headers["x-plexus-provider"]

    # Log-probabilities: one entry per token of the answer, from the logits the sampler read
    # (greedy picks the best, so each token is its own first alternative); streamed per chunk,
    # the same entries. Compared with a tolerance: the values are f32 sums that a different
    # batch shape on another CPU may round differently in the last bits.
    lp = client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "What is 2 plus 2?"}],
        temperature=0,
        max_tokens=24,
        logprobs=True,
        top_logprobs=3,
    )
    assert lp.choices[0].message.content == text
    content = lp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == text, [t.token for t in content]
    assert b"".join(bytes(t.bytes) for t in content).decode() == text
    assert len(content) == 11, len(content)  # the 12 metered tokens but the end of turn
    for t in content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token, t
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6 and -9999 <= t.logprob <= 0, t
        assert all(a.logprob >= b.logprob for a, b in zip(t.top_logprobs, t.top_logprobs[1:])), t
        assert sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-4, t
    streamed = []
    for chunk in client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "What is 2 plus 2?"}],
        temperature=0,
        max_tokens=24,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    ):
        for c in chunk.choices:
            if c.delta.content:
                assert c.logprobs and "".join(t.token for t in c.logprobs.content) == c.delta.content, c
                streamed.extend(c.logprobs.content)
    assert [t.token for t in streamed] == [t.token for t in content]
    assert max(abs(a.logprob - b.logprob) for a, b in zip(streamed, content)) < 1e-3
    # Not asked for, not sent.
    assert chat.choices[0].logprobs is None
    # The legacy shape: parallel lists, alternatives by text, offsets in characters.
    lc = client.completions.create(model=chat_model, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2)
    l = lc.choices[0].logprobs
    assert "".join(l.tokens) == lc.choices[0].text and len(l.tokens) == 5, l
    assert l.text_offset == [sum(len(t) for t in l.tokens[:i]) for i in range(5)], l
    assert all(1 <= len(top) <= 2 and max(top.values()) >= lp_ - 1e-6 for top, lp_ in zip(l.top_logprobs, l.token_logprobs)), l

    # Penalties and logit biases, applied by the seeded sampler. A +100 bias makes greedy pick
    # one token at every position; the logprobs (the model's own, before any adjustment) name it.
    forced = client.chat.completions.create(
        model=chat_model, temperature=0, max_tokens=6, logit_bias={"1000": 100}, logprobs=True,
        messages=[{"role": "user", "content": "What is 2 plus 2?"}],
    )
    toks = [t.token for t in forced.choices[0].logprobs.content]
    assert len(toks) == 6 and len(set(toks)) == 1 and forced.choices[0].message.content == toks[0] * 6, toks
    assert forced.choices[0].logprobs.content[0].logprob < content[0].logprob, "the bias is not in the reported logprob"
    # Penalties make a greedy answer repeat itself less: the most repeated token of "hello"
    # repeated, counted over the generated tokens, falls with a frequency and presence penalty.
    def most_repeated(**kw):
        r = client.chat.completions.create(
            model=chat_model, temperature=0, max_tokens=32, logprobs=True,
            messages=[{"role": "user", "content": "Repeat the word hello ten times."}], **kw,
        )
        tokens = [t.token for t in r.choices[0].logprobs.content]
        return max(tokens.count(t) for t in tokens), r.choices[0].message.content
    plain, plain_text = most_repeated()
    penalised, penalised_text = most_repeated(frequency_penalty=2.0, presence_penalty=2.0)
    assert penalised < plain, (plain, plain_text, penalised, penalised_text)
    # Zero penalties are no adjustment: the golden answer, unchanged.
    zero = client.chat.completions.create(
        model=chat_model, temperature=0, max_tokens=24, frequency_penalty=0, presence_penalty=0, logit_bias={},
        messages=[{"role": "user", "content": "What is 2 plus 2?"}],
    )
    assert zero.choices[0].message.content == text, zero.choices[0].message.content

    # Sensible English from a real model.
    story = client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "Name three colors."}],
        temperature=0,
        max_tokens=24,
    )
    assert story.choices[0].message.content == "1. Red\n2. Blue\n3. Green", story.choices[0].message.content

    # Legacy completions.
    comp = client.completions.create(model=chat_model, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert comp.object == "text_completion" and comp.usage.completion_tokens == 5, comp
    assert len(comp.choices[0].text) > 0

    # Embeddings (the SDK asks for base64 by default): related above unrelated, reference cosine.
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    emb = client.embeddings.create(model=embed_model, input=sentences)
    vecs = [d.embedding for d in emb.data]
    assert [d.index for d in emb.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vecs)
    assert abs(cos(vecs[0], vecs[1]) - 0.755337) < 1e-4, cos(vecs[0], vecs[1])
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    assert emb.usage.prompt_tokens == 8 + 11 + 8, emb.usage
    floats = client.embeddings.create(model=embed_model, input="A man is eating food.", encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vecs[0])) < 1e-6

    # n = 2: two choices, each its own attested generation (the seed, then the seed plus one),
    # the usage their sum. Greedy choices are the same answer; n = 3 completions likewise.
    sea = [{"role": "user", "content": "Write one line about the sea."}]
    two = client.chat.completions.create(model=chat_model, messages=sea, temperature=1.0, seed=7, max_tokens=16, n=2)
    one = client.chat.completions.create(model=chat_model, messages=sea, temperature=1.0, seed=7, max_tokens=16)
    assert [c.index for c in two.choices] == [0, 1], two.choices
    blocks = [c.model_extra["plexus"] for c in two.choices]
    assert blocks[0]["attestation"]["request_hash"] == one.model_extra["plexus"]["attestation"]["request_hash"]
    assert blocks[0]["attestation"]["request_hash"] != blocks[1]["attestation"]["request_hash"], blocks
    assert all(c.message.content for c in two.choices), two.choices
    assert two.usage.completion_tokens == sum(len(b["output_ids"]) for b in blocks), (two.usage, blocks)
    assert two.usage.prompt_tokens == 2 * one.usage.prompt_tokens, (two.usage, one.usage)
    three = client.completions.create(model=chat_model, prompt="The capital of France is", temperature=0, max_tokens=5, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2] and all(c.text for c in three.choices), three.choices
    assert three.usage.completion_tokens == 15, three.usage

    structured(client, chat_model)

    # Errors are typed by the SDK.
    for kwargs, error in (
        (dict(model=chat_model, messages=[]), openai.BadRequestError),
        (dict(model="no-such-model", messages=[{"role": "user", "content": "hi"}]), openai.NotFoundError),
        (dict(model=chat_model, messages=[{"role": "user", "content": "hi"}], max_tokens=10**9), openai.BadRequestError),
        (dict(model=chat_model, messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=21), openai.BadRequestError),
        (dict(model=chat_model, messages=[{"role": "user", "content": "hi"}], top_logprobs=2), openai.BadRequestError),
        (dict(model=chat_model, messages=[{"role": "user", "content": "hi"}], presence_penalty=2.5), openai.BadRequestError),
        (dict(model=chat_model, messages=[{"role": "user", "content": "hi"}], logit_bias={"99999999": 5}), openai.BadRequestError),
        (dict(model=chat_model, messages=[{"role": "user", "content": "hi"}], logit_bias={"5": 101}), openai.BadRequestError),
        (dict(model=chat_model, messages=[{"role": "user", "content": "hi"}], n=9), openai.BadRequestError),
        (dict(model=chat_model, messages=[{"role": "user", "content": "hi"}], n=2, stream=True), openai.BadRequestError),
    ):
        try:
            client.chat.completions.create(**kwargs)
        except error as e:
            assert e.body and e.body.get("message"), e.body
        else:
            raise AssertionError(f"expected {error.__name__} for {kwargs}")

    print("openai e2e: OK")


if __name__ == "__main__":
    main()
