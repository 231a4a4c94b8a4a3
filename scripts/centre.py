#!/usr/bin/env python3
"""The centre each backbone's embeddings are moved by: assets/centre_<backbone>.f32.

Image->image search compares embeddings by cosine. The pooled ReLU6
features all sit in the positive orthant around a common offset, which
drowns out what tells two photos apart; subtracting the features' expected
value first is the usual fix (it raised image->image precision@10 on the
Pascal photos from 0.533 to 0.5495 with Lite0, 0.572 to 0.592 with Lite2,
`imgsearch eval --precision f32`).

The expected value comes from the network alone, no photos: the head's
batch norm says each channel's pre-activation has mean beta and standard
deviation |gamma| over ImageNet; for a normal Z ~ N(m, s^2),
E[clip(Z, 0, 6)] = m (Phi(b) - Phi(a)) + s (phi(a) - phi(b)) + 6 (1 - Phi(b)),
a = -m / s, b = (6 - m) / s. Average pooling keeps the mean.

Usage: python3 scripts/centre.py <models-dir>
(reads <models-dir>/efficientnet-lite{0,2}/model.safetensors, written by
`imgsearch models fetch`; writes little-endian float32 files into assets/).
"""
import json
import math
import os
import struct
import sys


def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        lo, hi = t["data_offsets"]
        out[name] = struct.unpack(f"<{(hi - lo) // 4}f", data[lo:hi])
    return out


def phi(x):
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def cdf(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def relu6_mean(m, s):
    if s == 0:
        return min(max(m, 0.0), 6.0)
    a, b = -m / s, (6 - m) / s
    return m * (cdf(b) - cdf(a)) + s * (phi(a) - phi(b)) + 6 * (1 - cdf(b))


def main():
    models = sys.argv[1]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets")
    for backbone in ("lite0", "lite2"):
        t = tensors(os.path.join(models, f"efficientnet-{backbone}", "model.safetensors"))
        centre = [relu6_mean(b, abs(g)) for g, b in zip(t["_bn1.weight"], t["_bn1.bias"])]
        with open(os.path.join(root, f"centre_{backbone}.f32"), "wb") as f:
            f.write(struct.pack(f"<{len(centre)}f", *centre))
        print(backbone, len(centre), "mean", sum(centre) / len(centre))


main()
