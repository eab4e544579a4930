#!/usr/bin/env python3
"""Re-check DIR/{ecg,demand,traffic}: run model.onnx with onnxruntime on heldout.json,
compare with the stored expected outputs and recompute the headline metrics
(the same procedure a Rust/tract test should follow).  python verify_heldout.py DIR"""
import json, os, sys
import numpy as np
import onnxruntime as ort


def sess(p):
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])


def run(s, x):
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, {s.get_inputs()[0].name: np.asarray(x, np.float32)})))


def main(d):
    ok = True
    for k in ("ecg", "demand", "traffic"):
        h = json.load(open(os.path.join(d, k, "heldout.json")))
        s = sess(os.path.join(d, k, "model.onnx"))
        out = run(s, h["samples"]["inputs"])
        for name, exp in h["samples"]["expected"].items():
            diff = float(np.max(np.abs(out[name] - np.asarray(exp, np.float32))))
            print(f"[{k}] sample output {name}: max abs diff {diff:.3g}")
            ok &= diff <= 1e-3
        e = h["eval"]
        if k == "ecg":
            p = run(s, e["inputs"])["probs"].argmax(1); y = np.array(e["labels"])
            tp = int(((p == 1) & (y == 1)).sum()); fp = int(((p == 1) & (y == 0)).sum()); fn = int(((p == 0) & (y == 1)).sum())
            got = {"accuracy": float((p == y).mean()), "f1_abnormal": 2 * tp / max(2 * tp + fp + fn, 1)}
        elif k == "demand":
            ser = np.asarray(e["series"], np.float32); L, H = e["input_length"], e["horizon"]
            X = np.stack([ser[i:i + L] for i in range(e["n_windows"])])
            Y = np.stack([ser[i + L:i + L + H] for i in range(e["n_windows"])])
            P = run(s, X)["forecast"]
            got = {"MAE_MW": float(np.abs(P - Y).mean()), "MAPE_pct": float(100 * np.mean(np.abs(P - Y) / np.abs(Y))),
                   "MAE_MW_step1": float(np.abs(P[:, 0] - Y[:, 0]).mean())}
        else:
            o = run(s, e["inputs"]); p = o["is_anomaly"][:, 0].astype(int); y = np.array(e["labels"])
            tp = int(((p == 1) & (y == 1)).sum()); fp = int(((p == 1) & (y == 0)).sum()); fn = int(((p == 0) & (y == 1)).sum())
            got = {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "f1": 2 * tp / max(2 * tp + fp + fn, 1)}
        exp = e["expected_metrics"]
        for m, v in got.items():
            good = abs(v - exp[m]) <= 1e-3 * max(1.0, abs(exp[m]))
            ok &= good
            print(f"[{k}] {m}: recomputed {v:.4f} stored {exp[m]} {'OK' if good else 'MISMATCH'}")
    print("ALL OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
