"""Drives the KServe v2 routes of `plexus serve` or `plexus gateway` with Triton's own client
(`tritonclient[http]`), which sends and reads binary tensors by default, and asserts on values.

Usage: kserve_e2e.py BASE_URL MODEL HELDOUT_JSON [API_KEY]

Prints `inferences=N` (the rows inferred and so paid for) and `kserve e2e: OK`.
"""

import json
import sys

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def main():
    base, model, heldout_path = sys.argv[1:4]
    key = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    auth = {"Authorization": f"Bearer {key}"} if key else None
    # A fresh dict each call: tritonclient adds its binary header to the dict it is given.
    headers = auth
    url = base.split("://", 1)[-1].rstrip("/")
    client = triton.InferenceServerClient(url=url, network_timeout=120.0, connection_timeout=60.0)
    samples = json.load(open(heldout_path))["samples"]
    inferences = 0

    assert client.is_server_live(headers=headers)
    assert client.is_server_ready(headers=headers)
    assert client.is_model_ready(model, headers=headers)
    meta = client.get_model_metadata(model, headers=headers)
    version = meta["versions"][0]
    input_meta = meta["inputs"][0]
    outputs = [o["name"] for o in meta["outputs"]]
    # The one version is the model's content id; another is not there (HTTP status, not a body).
    assert client.is_model_ready(model, model_version=version, headers=headers)
    assert not client.is_model_ready(model, model_version="1", headers=headers)
    assert client.get_model_metadata(model, model_version=version, headers=headers)["name"] == meta["name"]

    rows = np.array(samples["inputs"][:4], dtype=np.float32)
    expected = np.array(samples["expected"][outputs[0]][:4], dtype=np.float32)

    def infer(array, datatype, binary=True, asked=None, version=""):
        inp = triton.InferInput(input_meta["name"], list(array.shape), datatype)
        inp.set_data_from_numpy(array, binary_data=binary)
        return client.infer(model, [inp], outputs=asked, model_version=version, headers=dict(auth) if auth else None)

    # Binary in, binary out (tritonclient's defaults: no outputs named means all, binary).
    binary = infer(rows, "FP32")
    got = binary.as_numpy(outputs[0])
    assert got.shape == expected.shape, (got.shape, expected.shape)
    # tract against onnxruntime: another summation order, so a tolerance.
    assert np.abs(got - expected).max() < 1e-3, (got, expected)
    inferences += len(rows)

    # JSON in, JSON out: the same numbers (the same rows in one batch of the same shape on this
    # machine; a tolerance still, since a gateway may pick another provider process).
    plain = infer(rows, "FP32", binary=False, asked=[triton.InferRequestedOutput(o, binary_data=False) for o in outputs])
    assert plain.get_response()["outputs"][0].get("data") is not None, "asked for JSON outputs"
    for o in outputs:
        assert np.abs(plain.as_numpy(o) - binary.as_numpy(o)).max() < 1e-6, o
    inferences += len(rows)

    # Mixed: the first output binary, the rest JSON, on the versioned route.
    mixed_ask = [triton.InferRequestedOutput(outputs[0], binary_data=True)]
    mixed_ask += [triton.InferRequestedOutput(o, binary_data=False) for o in outputs[1:]]
    mixed = infer(rows, "FP32", asked=mixed_ask, version=version)
    response = mixed.get_response()["outputs"]
    assert response[0].get("parameters", {}).get("binary_data_size") == got.size * 4, response[0]
    assert all("data" in o for o in response[1:]), response
    assert np.abs(mixed.as_numpy(outputs[0]) - got).max() < 1e-6
    inferences += len(rows)

    # Other datatypes, read as FP32: FP64 holds these FP32 values exactly, so the same answer;
    # FP16 rounds them, so close; INT16 data is whole numbers (another input, just finite).
    fp64 = infer(rows.astype(np.float64), "FP64").as_numpy(outputs[0])
    assert np.abs(fp64 - got).max() < 1e-6, (fp64, got)
    fp16 = infer(rows.astype(np.float16), "FP16").as_numpy(outputs[0])
    assert np.abs(fp16 - got).max() < 5e-2, (fp16, got)
    ints = infer(np.round(rows).astype(np.int16), "INT16").as_numpy(outputs[0])
    assert ints.shape == got.shape and np.isfinite(ints).all(), ints
    inferences += 3 * len(rows)

    # Refused with the reason, nothing inferred (nor paid): BOOL data, classification, a
    # version that is not there.
    def refused(want, call):
        try:
            call()
        except InferenceServerException as e:
            assert want in str(e), (want, str(e))
        else:
            raise AssertionError(f"expected a refusal naming {want!r}")

    refused("BOOL", lambda: infer(rows > 0, "BOOL"))
    refused("classification", lambda: infer(rows, "FP32", asked=[triton.InferRequestedOutput(outputs[0], class_count=1)]))
    refused("no version", lambda: infer(rows, "FP32", version="1"))

    print(f"inferences={inferences}")
    print("kserve e2e: OK")


if __name__ == "__main__":
    main()
