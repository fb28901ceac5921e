"""Building a snapshot in a child process, so the daemon's searches never wait for it.

A build reads every vector from the store, projects it and feeds it to Annoy one item at a
time: a minute of Python at a million photos. In a thread of the daemon that loop holds the
interpreter lock in short turns, and searches running beside it waited up to tens of
milliseconds (measured: query p99 25 ms during a 1M rebuild). The build's memory (the new
trees, the new projected vectors) would also add to the daemon's, on top of the snapshot still
in use. So a child process opens the store (it only reads), builds and publishes the snapshot
files, and exits; the daemon then loads the new snapshot.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dupwatch.snapshot import Projection, SnapshotFiles, TreeSettings, write_snapshot


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """Everything the child needs; plain values, so it crosses the process boundary."""

    db_path: Path
    directory: Path
    model_id: str
    upto_seq: int
    projected_dim: int
    pca_sample: int
    tree_settings: TreeSettings
    log_level: str = "info"


def build_snapshot(request: BuildRequest) -> SnapshotFiles | None:
    """Fit the projection and write a snapshot of the vectors up to ``request.upto_seq``.

    None when the library holds no vectors for the model. Runs in the child, but works in
    any process.
    """
    from dupwatch.store import Store

    with Store.open(request.db_path) as store:
        ids = store.indexed_file_ids(request.model_id)
        if len(ids) == 0:
            return None
        rng = np.random.default_rng(request.upto_seq)
        sample_ids = rng.choice(ids, size=min(request.pca_sample, len(ids)), replace=False)
        sample = store.vectors_for(sample_ids.tolist(), request.model_id).vectors
        projection = Projection.fit(sample, request.projected_dim)
        spread = np.asarray(projection.apply(sample).std(axis=0), dtype=np.float32)
        del sample
        return write_snapshot(
            request.directory,
            model_id=request.model_id,
            upto_seq=request.upto_seq,
            projection=projection,
            # Small pages keep each read short, so the daemon's writes barely wait.
            batches=store.iter_vectors(
                request.model_id, upto_seq=request.upto_seq, batch_size=2000
            ),
            tree_settings=request.tree_settings,
            spread=spread,
        )


def _child_main(request: BuildRequest) -> SnapshotFiles | None:
    from dupwatch.logs import configure_logging

    configure_logging(request.log_level, stream=sys.stderr)
    return build_snapshot(request)


def build_in_child(request: BuildRequest) -> SnapshotFiles | None:
    """Run ``build_snapshot`` in a fresh process and wait for it; its errors are raised here.

    A child that dies (killed for memory, say) raises BrokenProcessPool.
    """
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    request = dataclasses.replace(request, log_level=level)
    # spawn, not fork: the daemon has threads (watchers, searches) that fork would copy mid-step.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_child_main, request).result()
