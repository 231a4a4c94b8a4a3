#!/usr/bin/env python3
"""Reference ConSE mixing weights for tests/data/reference_zeroshot.json.

Independent of the Rust code: reads the classifier layer (`_fc.weight`,
`_fc.bias`) from the converted safetensors checkpoint with a plain header
parse and NumPy (float64), applies it to the NumPy reference embeddings in
tests/data/reference_lite0.json, takes the softmax at temperature 2 and keeps
the top 10 classes. The Rust test projects the same embeddings with one-hot
class texts, so its zero-shot vector must equal these weights at these
classes (and zero elsewhere, before normalisation).

Usage: pip install numpy && python3 scripts/reference_zeroshot.py \
           <models-dir>/efficientnet-lite0/model.safetensors \
           tests/data/reference_lite0.json tests/data/reference_zeroshot.json
"""
import json
import struct
import sys

import numpy as np

TOP, TEMPERATURE = 10, 2.0


def read_safetensors(path, names):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    out = {}
    for name in names:
        meta = header[name]
        assert meta["dtype"] == "F32", meta
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(meta["shape"]).astype(np.float64)
    return out


def main(weights, embeddings, out):
    t = read_safetensors(weights, ["_fc.weight", "_fc.bias"])
    emb = np.array(json.load(open(embeddings))["embeddings"], dtype=np.float64)
    logits = emb @ t["_fc.weight"].T + t["_fc.bias"]
    z = logits / TEMPERATURE
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top = np.argsort(-p, axis=1)[:, :TOP]
    fixture = {
        "generator": "scripts/reference_zeroshot.py",
        "top_classes": TOP,
        "temperature": TEMPERATURE,
        "classes": top.tolist(),
        "weights": [p[i, top[i]].tolist() for i in range(len(p))],
    }
    json.dump(fixture, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
