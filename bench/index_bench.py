"""Benchmark the vector index against exact search, at library sizes a NAS sees.

Vectors: real photo embeddings (the cached originals of bench/accuracy, embedded with the real
model, plus augmented copies of each) and, to reach scale, synthetic vectors drawn from a
Gaussian fitted to those real embeddings (their mean and principal directions, with a power-law
tail), grouped in clusters like bursts and events. Near-duplicates are planted at cosine
0.90 / 0.95 / 0.99 to a library vector. Without the cached photos a power-law spectrum is used.

The index runs in a child process, as the daemon would (its peak RSS is the figure to read);
the parent holds every vector for the exact-search reference.

A build is ``projected_dim:tree_dim:trees[:whiten]`` (PCA dimensions kept in the snapshot,
leading dimensions the Annoy trees split on, number of trees, the power of each dimension's
spread it is divided by in the trees); a search is
``search_k:shortlist:candidates[:expand:expand_search_k:expand_shortlist]`` (tree-node items
Annoy inspects, items it returns to be re-ranked in the projection, candidates re-scored with
their full vectors; optionally how many of the nearest shortlisted items are searched from in
turn, with what search_k, adding how many neighbours each).

    python bench/index_bench.py --n 100000
    python bench/index_bench.py --n 1000000 --per-band 2000 --searches 20000:400:24:4:5000:50
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ORIGINALS = ROOT / "bench" / ".cache" / "originals"
DIM = 1280
BANDS = (0.90, 0.95, 0.99)
MODEL = "bench-model"


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- vectors ----------------------------------------------------------------------------------


def real_embeddings(limit: int) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(originals, copies, copy kinds): the cached photos and four altered copies of each."""
    paths = sorted(ORIGINALS.glob("*.jpg"))[:limit]
    if not paths:
        return None
    import cv2

    from dupwatch.embedder import load_embedder

    embedder = load_embedder(threads=1)
    originals, copies, kinds = [], [], []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        scale = 512 / max(bgr.shape[:2])
        rgb = cv2.cvtColor(
            cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA),
            cv2.COLOR_BGR2RGB,
        )
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (w // 3, h // 3), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 60])
        assert ok
        variants = {
            "resized_jpeg60": cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED),
            "crop90": rgb[h // 20 : h - h // 20, w // 20 : w - w // 20],
            "brighter": np.clip(rgb.astype(np.float32) * 1.15 + 10, 0, 255).astype(np.uint8),
            "crop75_watermark": _watermarked(rgb[h // 8 : h - h // 8, w // 8 : w - w // 8]),
        }
        vectors = embedder.embed([rgb, *variants.values()])
        originals.append(vectors[0])
        copies.extend(vectors[1:])
        kinds.extend(variants)
    return np.stack(originals), np.stack(copies), kinds


def _watermarked(rgb: np.ndarray) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(rgb).copy()
    cv2.putText(out, "(c) 2024", (10, out.shape[0] - 20), 0, 1.2, (255, 255, 255), 3)
    return out


@dataclasses.dataclass
class Model:
    """A Gaussian over unit vectors: mean + principal directions + isotropic tail."""

    mean: np.ndarray
    basis: np.ndarray  # (r, DIM)
    scales: np.ndarray  # (r,)
    tail: float  # per-dimension standard deviation of the rest

    def draw(self, rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
        z = rng.standard_normal((n, len(self.scales)), dtype=np.float32) * self.scales
        out = z @ self.basis + rng.standard_normal((n, DIM), dtype=np.float32) * self.tail
        return out * np.float32(scale)


def fit_model(real: np.ndarray | None) -> Model:
    if real is None or len(real) < 20:
        scales = (1.0 / np.sqrt(np.arange(1, DIM + 1))).astype(np.float32) * 0.05
        return Model(np.full(DIM, 0.02, np.float32), np.eye(DIM, dtype=np.float32), scales, 0.0)
    mean = real.mean(axis=0)
    _, s, vt = np.linalg.svd(real - mean, full_matrices=False)
    eig = s**2 / (len(real) - 1)
    r = len(eig) - 1
    # Extrapolate the unseen tail with a power law fitted to the observed spectrum.
    i = np.arange(5, r)
    slope, icpt = np.polyfit(np.log(i + 1), np.log(eig[i]), 1)
    tail_eig = np.exp(icpt) * np.arange(r + 1, DIM + 1) ** slope
    tail = float(np.sqrt(tail_eig.sum() / DIM))
    return Model(
        mean.astype(np.float32),
        vt[:r].astype(np.float32),
        np.sqrt(eig[:r]).astype(np.float32),
        tail,
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def library_chunks(model: Model, n: int, seed: int, chunk: int = 50_000) -> Iterator[np.ndarray]:
    """Clustered unit vectors: cluster centres from the model, members scattered around them."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        sizes = rng.geometric(0.2, size=m)  # clusters of ~5 (bursts, events), some single
        owners = np.repeat(np.arange(m), sizes)[:m]
        centres = model.mean + model.draw(rng, m)
        members = centres[owners] + model.draw(rng, m, scale=0.45)
        yield _unit(members)
        done += m


def planted_copies(
    model: Model, rng: np.random.Generator, base: np.ndarray, cos: float
) -> np.ndarray:
    """Unit vectors at exactly ``cos`` to each row of ``base``, moved along the model's noise."""
    noise = model.draw(rng, len(base))
    noise -= np.sum(noise * base, axis=1, keepdims=True) * base
    noise = _unit(noise)
    return _unit(cos * base + np.sqrt(1 - cos**2) * noise)


# --- the child: the index as the daemon runs it -------------------------------------------------


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from dupwatch.index import IndexSettings, VectorIndex
    from dupwatch.logs import configure_logging
    from dupwatch.store import Store

    configure_logging("warning")
    d, tree_dim, trees, *whiten = args.build.split(":")
    queries = np.load(args.queries)
    store = Store.open(Path(args.db))
    settings = IndexSettings(
        projected_dim=int(d),
        tree_dim=int(tree_dim),
        trees=int(trees),
        whiten=float(whiten[0]) if whiten else IndexSettings().whiten,
        # The buffer phase fills the buffer past the usual threshold; no rebuild may start.
        rebuild_buffer_size=max(10_000, args.buffer + 1),
        rebuild_max_age=1e9,
    )
    started = time.perf_counter()
    index = VectorIndex.open(
        store, Path(args.index_dir), model_id=MODEL, dim=DIM, settings=settings
    )
    build_s = time.perf_counter() - started
    peak_build = _rss_mib("VmHWM")
    snapshot_bytes = sum(p.stat().st_size for p in Path(args.index_dir).glob("snapshot-*"))
    if args.buffer:
        # As if these files had been re-embedded since the snapshot: their (same) vectors now
        # live in the buffer, which search must use instead of the snapshot's copies.
        ids = store.indexed_file_ids(MODEL)
        chosen = np.random.default_rng(3).choice(ids, size=args.buffer, replace=False).tolist()
        for start in range(0, len(chosen), 5000):
            batch = store.vectors_for(chosen[start : start + 5000], MODEL)
            for file_id, vector in zip(batch.file_ids.tolist(), batch.vectors, strict=True):
                index.add(file_id, vector)
        assert index.stats().buffer_items == args.buffer and not index.stats().rebuilding
    if args.rebuild:
        # The searches below then run while a new snapshot is built beside the loaded one, as
        # in the daemon; the peak RSS of this phase is the daemon's during a rebuild.
        started = time.perf_counter()
        assert index.start_rebuild()
    results = {}
    for spec in args.searches.split(","):
        search_k, shortlist, candidates, *expansion = (int(x) for x in spec.split(":"))
        expand, expand_search_k, expand_shortlist = expansion or (0, 0, 0)
        index.settings = dataclasses.replace(
            settings,
            search_k=search_k,
            shortlist=shortlist,
            candidates=candidates,
            expand=expand,
            expand_search_k=expand_search_k,
            expand_shortlist=expand_shortlist,
        )
        index.search(queries[0], 10)  # warm-up
        ids = np.zeros((len(queries), 10), dtype=np.int64)
        times = np.zeros(len(queries))
        for i, q in enumerate(queries):
            t = time.perf_counter()
            hits = index.search(q, 10)
            times[i] = time.perf_counter() - t
            ids[i, : len(hits)] = [h.file_id for h in hits]
        results[spec] = {"ids": ids.tolist(), "ms": (times * 1000).tolist()}
    if args.rebuild:
        rebuilding_while_searching = index.stats().rebuilding
        assert index.wait_for_rebuild(timeout=3600) and index.last_error is None
        build_s = time.perf_counter() - started
        peak_build = _rss_mib("VmHWM")
        if not rebuilding_while_searching:
            print("note: the rebuild ended before the searches did", file=sys.stderr)
    out = {
        "build_s": build_s,
        "peak_rss_build_mib": peak_build,
        # The snapshot is built in a child process of the index; its peak is reported apart.
        "peak_rss_builder_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "rss_after_queries_mib": _rss_mib("VmRSS"),
        "snapshot_bytes": snapshot_bytes,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out))
    index.close()
    store.close()


# --- the parent: data, exact reference, report ---------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--per-band", type=int, default=300, help="planted copies per band")
    parser.add_argument("--real", type=int, default=250, help="cached photos to embed (0: none)")
    parser.add_argument(
        "--builds", default="64:32:32:0.5", help="projected_dim:tree_dim:trees[:whiten],..."
    )
    parser.add_argument(
        "--searches",
        default="20000:400:24,20000:400:24:4:5000:50,30000:400:24:4:5000:50",
        help="search_k:shortlist:candidates[:expand:expand_search_k:expand_shortlist],...",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--buffer", type=int, default=20_000, help="vectors in the buffer for the last phase"
    )
    parser.add_argument("--rebuild", action="store_true", help=argparse.SUPPRESS)
    for name in ("build", "queries", "db", "index_dir", "out"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from dupwatch.logs import configure_logging
    from dupwatch.records import StatKey
    from dupwatch.store import Store

    configure_logging("warning")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="index-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    print(f"# index benchmark: N={args.n:,}, dim={DIM}, workdir={work}")

    t = time.perf_counter()
    real = real_embeddings(args.real) if args.real else None
    if real is not None:
        originals, copies, kinds = real
        print(
            f"real photos: {len(originals)} originals, {len(copies)} altered copies "
            f"embedded in {time.perf_counter() - t:.0f} s"
        )
        cos = np.sum(np.repeat(originals, 4, axis=0) * copies, axis=1)
        for kind in dict.fromkeys(kinds):
            sel = cos[np.array(kinds) == kind]
            print(f"  cosine original~{kind:18s} min {sel.min():.3f} median {np.median(sel):.3f}")
        off = originals @ originals.T
        print(
            f"  cosine between different originals: median "
            f"{np.median(off[np.triu_indices(len(off), 1)]):.3f}, max "
            f"{off[np.triu_indices(len(off), 1)].max():.3f}"
        )
    model = fit_model(None if real is None else real[0])

    # The library: synthetic filler, with the real originals among it.
    n_real = 0 if real is None else len(real[0])
    lib = np.empty((args.n, DIM), dtype=np.float16)
    pos = 0
    for chunk in library_chunks(model, args.n - n_real, args.seed):
        lib[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    if real is not None:
        lib[pos:] = real[0]
    db = work / "db.sqlite"
    t = time.perf_counter()
    with Store.open(db) as store:
        ids = np.empty(args.n, dtype=np.int64)
        for start in range(0, args.n, 10_000):
            with store.batch():
                for i in range(start, min(start + 10_000, args.n)):
                    stat = StatKey(1, i, i, 1, i)
                    ids[i] = store.upsert_file(Path(f"/photos/{i:07d}.jpg"), stat).id
                    store.put_vector(int(ids[i]), MODEL, lib[i].astype(np.float32))
    print(f"store filled in {time.perf_counter() - t:.0f} s")
    db_bytes = sum(p.stat().st_size for p in work.glob("db.sqlite*"))

    # Queries: planted near-duplicates per band, and the real altered copies.
    queries, truth, labels = [], [], []
    for band in BANDS:
        rows = rng.choice(args.n - n_real, args.per_band, replace=False)
        queries.append(planted_copies(model, rng, lib[rows].astype(np.float32), band))
        truth.append(ids[rows])
        labels += [f"synthetic {band:.2f}"] * len(rows)
    if real is not None:
        queries.append(real[1])
        truth.append(ids[np.repeat(np.arange(args.n - n_real, args.n), 4)])
        labels += [f"real {k}" for k in real[2]]
    q = np.concatenate(queries).astype(np.float32)
    truth_ids = np.concatenate(truth)
    np.save(work / "queries.npy", q)

    # Exact reference, in the same run: batched for recall, one by one for latency.
    t = time.perf_counter()
    exact_top = np.zeros((len(q), 10), dtype=np.int64)
    best = np.full((len(q), 10), -np.inf, dtype=np.float32)
    for start in range(0, args.n, 50_000):
        sims = q @ lib[start : start + 50_000].astype(np.float32).T
        top = np.argpartition(-sims, 10, axis=1)[:, :10]
        both_s = np.concatenate([best, np.take_along_axis(sims, top, 1)], axis=1)
        both_i = np.concatenate([exact_top, ids[start + top]], axis=1)
        order = np.argsort(-both_s, axis=1)[:, :10]
        best, exact_top = np.take_along_axis(both_s, order, 1), np.take_along_axis(both_i, order, 1)
    exact_batch_s = time.perf_counter() - t
    lib32_chunk = lib[: min(args.n, 100_000)].astype(np.float32)
    times = []
    for query in q[:50]:
        t = time.perf_counter()
        _ = np.argmax(lib32_chunk @ query)
        times.append((time.perf_counter() - t) * (args.n / len(lib32_chunk)))
    del lib32_chunk
    print(
        f"exact search: batched {exact_batch_s / len(q) * 1000:.1f} ms/query; one query at a "
        f"time (float32 matvec) p50 {np.percentile(times, 50) * 1000:.1f} ms"
    )
    print(f"database: {db_bytes / 2**20:.0f} MiB")

    def recall(found: np.ndarray, label: str) -> str:
        sel = np.array([lab == label for lab in labels])
        hit = np.any(found[sel] == truth_ids[sel, None], axis=1)
        return f"{hit.mean():.4f}"

    header = (
        "| d:tree_d:trees | search_k:short:cands | open s | peak RSS MiB | builder MiB "
        "| RSS after MiB "
        "| snapshot MiB | p50 ms | p99 ms | " + " | ".join(dict.fromkeys(labels)) + " |"
    )
    print()
    print(
        "recall of the planted/original item in the top 10 (exact search: "
        + ", ".join(f"{lab} {recall(exact_top, lab)}" for lab in dict.fromkeys(labels))
        + ")"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    # Each build runs three times: the first child builds the snapshot (one core) and searches;
    # the second opens it as a restarted daemon would (load, no build), so its RSS is the
    # daemon's with the snapshot loaded, without what the build left behind in the allocator;
    # the third also fills the buffer, as it is just before a rebuild; the fourth searches
    # while a new snapshot is built in the background (its "open s" is the rebuild's time).
    phases = ("build", "restart", "buffer", "rebuild")
    runs = [(b, phase) for b in args.builds.split(",") for phase in phases]
    for build, phase in runs:
        index_dir = work / f"index-{build.replace(':', '-')}"
        out = work / f"result-{build.replace(':', '-')}-{phase}.json"
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--build",
                build,
                "--queries",
                str(work / "queries.npy"),
                "--db",
                str(db),
                "--index-dir",
                str(index_dir),
                "--out",
                str(out),
                f"--searches={args.searches}",
                f"--buffer={args.buffer if phase == 'buffer' else 0}",
                *(["--rebuild"] if phase == "rebuild" else []),
            ],
            check=True,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        )
        res = json.loads(out.read_text())
        label = f"buffer {args.buffer:,}" if phase == "buffer" else phase
        for spec, r in res["results"].items():
            found = np.array(r["ids"])
            ms = np.array(r["ms"])
            cells = [recall(found, lab) for lab in dict.fromkeys(labels)]
            print(
                f"| {build} {label} | {spec} | {res['build_s']:.0f} | "
                f"{res['peak_rss_build_mib']:.0f} | {res['peak_rss_builder_mib']:.0f} | "
                f"{res['rss_after_queries_mib']:.0f} | {res['snapshot_bytes'] / 2**20:.0f} | "
                f"{np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} | "
                + " | ".join(cells)
                + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
