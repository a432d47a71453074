"""How the embedding index scales: graph build time, single-query latency (p50/p99) of exact and of
approximate (HNSW, :mod:`freelabel.pipelines.ann`) search, and recall@10 of the approximate search
against the exact one, at 10k, 100k and 1M vectors.

The vectors are synthetic but shaped like image embeddings: unit vectors in 384 dimensions whose
variance lives mostly in a 64-dimensional subspace, drawn around 1,000 cluster centres (classes),
plus isotropic noise. Queries are fresh draws from the same clusters (not rows of the index).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/index_scaling.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from freelabel.hardware import cpu_description
from freelabel.pipelines import ann


def embeddings(n: int, dim: int, g: torch.Generator, latent: int = 64, clusters: int = 1000) -> torch.Tensor:
    centres = torch.randn(clusters, latent, generator=torch.Generator().manual_seed(1))
    project = torch.randn(latent, dim, generator=torch.Generator().manual_seed(2)) / latent**0.5
    out = torch.empty(n, dim)
    for s in range(0, n, 100_000):  # in chunks: 1M x 384 floats is 1.5 GB already
        m = min(100_000, n - s)
        z = centres[torch.randint(clusters, (m,), generator=g)] + 0.6 * torch.randn(m, latent, generator=g)
        out[s : s + m] = F.normalize(z @ project + 0.15 * torch.randn(m, dim, generator=g), dim=1)
    return out


def latencies(search, queries: torch.Tensor) -> tuple[float, float]:
    """p50 and p99 in milliseconds of one query at a time."""
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - start)
    return tuple(float(np.percentile(times, p)) * 1e3 for p in (50, 99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ef", type=int, nargs="+", default=[ann.EF_SEARCH], help="HNSW search beam widths to try")
    args = p.parse_args()
    print(cpu_description())
    print(
        f"HNSW M={ann.M} efConstruction={ann.EF_CONSTRUCTION} (efSearch {ann.EF_SEARCH} in freelabel); the index "
        f"searches exactly up to {ann.THRESHOLD} vectors and with the graph above; {args.queries} single queries, "
        f"d={args.dim}"
    )
    print(
        f"{'vectors':>9} {'build s':>8} {'exact p50 ms':>13} {'exact p99 ms':>13} {'efSearch':>9} {'ANN p50 ms':>11} "
        f"{'ANN p99 ms':>11} {'recall@10':>10}"
    )
    for n in args.sizes:
        g = torch.Generator().manual_seed(n)
        x, queries = embeddings(n, args.dim, g), embeddings(args.queries, args.dim, g)
        start = time.perf_counter()
        graph = ann.Ann(args.dim).add(x)
        build = time.perf_counter() - start
        exact_ids = torch.cat([ann.exact_search(queries[s : s + 100], x, 10)[1] for s in range(0, len(queries), 100)])
        e50, e99 = latencies(partial(ann.exact_search, vectors=x, k=10), queries[:200])
        for ef in args.ef:
            graph.graph.hnsw.efSearch = ef
            _, ids = graph.search(queries, 10)
            recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, exact_ids)) / exact_ids.numel()
            a50, a99 = latencies(partial(graph.search, k=10), queries)
            print(
                f"{n:>9} {build:>8.1f} {e50:>13.2f} {e99:>13.2f} {ef:>9} {a50:>11.3f} {a99:>11.3f} {recall:>10.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
