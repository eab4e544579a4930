#!/usr/bin/env python3
"""onnxruntime's side of `plexus-bench edge`: times one ONNX model on the inputs the Rust side
wrote, one thread, and prints JSON (per-call seconds and the outputs of the first batch).

    python ort_bench.py MODEL.onnx INPUTS.json BATCH CALLS

Run with the edge models' training environment (onnxruntime pinned in
models/edge/requirements.txt)."""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, inputs_path, batch, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with open(inputs_path) as fh:
        spec = json.load(fh)
    rows = np.asarray(spec["rows"], dtype=np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    batches = [rows[(i * batch) % len(rows):][:batch] for i in range(max(1, len(rows) // batch))]
    batches = [b for b in batches if len(b) == batch] or [rows[:batch]]
    for i in range(min(50, calls)):
        sess.run(None, {name: batches[i % len(batches)]})
    times = []
    for i in range(calls):
        x = batches[i % len(batches)]
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    first = sess.run(None, {name: batches[0]})
    outs = {o.name: v.astype(np.float32).ravel().tolist() for o, v in zip(sess.get_outputs(), first)}
    json.dump({"times": times, "outputs": outs, "version": ort.__version__}, sys.stdout)


if __name__ == "__main__":
    main()
