#!/usr/bin/env python3
"""hnswlib and faiss on the vectors `cargo bench --bench index` wrote.

    IMGSEARCH_BENCH_DUMP=/tmp/annvec cargo bench --bench index
    python3 scripts/ann_peers.py /tmp/annvec

Builds on every core (as our bench does), queries one at a time on one
thread, and prints build time, p50/p99 latency and recall@10 against the
exact answers in the dump, in the bench's own words. Needs `pip install
hnswlib==0.8.0 faiss-cpu==1.15.1 numpy`. `scripts/ann-peers` runs ours and
these alternately.
"""
import json
import os
import sys
import time

import numpy as np


def percentile(ms, p):
    ms = sorted(ms)
    return ms[round((len(ms) - 1) * p)]


def report(name, build_s, queries, truth, search, efs, set_ef):
    print(f"{name} build: {build_s:.1f} s on {os.cpu_count()} threads", flush=True)
    for ef in efs:
        set_ef(ef)
        ms, found = [], 0
        for q, t in zip(queries, truth):
            start = time.perf_counter()
            ids = search(q)
            ms.append((time.perf_counter() - start) * 1e3)
            found += len(set(int(i) for i in ids) & set(int(i) for i in t))
        recall = found / (len(queries) * truth.shape[1])
        print(
            f"{name} ef={ef}, 1 thread: p50 {percentile(ms, 0.5):.3f} ms, p99 {percentile(ms, 0.99):.3f} ms, "
            f"recall@10 vs exact {recall:.3f} ({len(queries)} queries)",
            flush=True,
        )


def main():
    folder = sys.argv[1]
    which = sys.argv[2].split(",") if len(sys.argv) > 2 else ["hnswlib16", "hnswlib24", "faiss32"]
    efs = [int(e) for e in os.environ.get("IMGSEARCH_BENCH_EF", "16,24,32,40,64,128").split(",")]
    meta = json.load(open(os.path.join(folder, "meta.json")))
    n, dim, nq, k = meta["n"], meta["dim"], meta["queries"], meta["k"]
    vectors = np.fromfile(os.path.join(folder, "vectors.f32"), dtype="<f4").reshape(n, dim)
    queries = np.fromfile(os.path.join(folder, "queries.f32"), dtype="<f4").reshape(nq, dim)
    truth = np.fromfile(os.path.join(folder, "truth.u32"), dtype="<u4").reshape(nq, k)
    print(f"N = {n}, dim {dim}, {nq} queries", flush=True)
    for name in which:
        if name.startswith("hnswlib"):
            import hnswlib

            m, efc = {"hnswlib16": (16, 100), "hnswlib24": (24, 150)}[name]
            index = hnswlib.Index(space="ip", dim=dim)
            index.init_index(max_elements=n, M=m, ef_construction=efc)
            index.set_num_threads(os.cpu_count())
            start = time.perf_counter()
            index.add_items(vectors)
            build = time.perf_counter() - start
            index.set_num_threads(1)
            report(
                f"hnswlib {hnswlib.__version__ if hasattr(hnswlib, '__version__') else ''} M={m}, ef_construction={efc}",
                build,
                queries,
                truth,
                lambda q: index.knn_query(q, k=k)[0][0],
                efs,
                index.set_ef,
            )
            del index
        elif name == "faiss32":
            import faiss

            faiss.omp_set_num_threads(os.cpu_count())
            index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 100
            start = time.perf_counter()
            index.add(vectors)
            build = time.perf_counter() - start
            faiss.omp_set_num_threads(1)

            def set_ef(ef):
                index.hnsw.efSearch = ef

            report(
                f"faiss {faiss.__version__} HNSW32, efConstruction=100",
                build,
                queries,
                truth,
                lambda q: index.search(q[None, :], k)[1][0],
                efs,
                set_ef,
            )
            del index


if __name__ == "__main__":
    main()
