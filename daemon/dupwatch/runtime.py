"""Opening everything a command works with: store, model worker, index, quarantine, pipeline.

The one place that wires modules together, so commands and the daemon build them the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from dupwatch.config import Config
from dupwatch.filters import absolute_root
from dupwatch.hashindex import HashIndex
from dupwatch.index import IndexSettings, VectorIndex
from dupwatch.pipeline import Pipeline
from dupwatch.quarantine import Quarantine
from dupwatch.records import FileStatus, JournalState
from dupwatch.statepaths import database_path, model_cache_dir, snapshot_dir
from dupwatch.store import Store
from dupwatch.worker import WorkerSettings
from dupwatch.workerpool import AnalysisPool, default_worker_count

log = structlog.get_logger(__name__)

EMBEDDING_DIM = 1280


_ROOTS_KEY = "roots"


def remembered_roots(store: Store) -> list[Path]:
    """Roots that ``run`` or ``scan`` worked on here: restore and listings need them."""
    saved = store.get_state(_ROOTS_KEY)
    return [Path(p) for p in json.loads(saved)] if saved else []


def remember_roots(store: Store, roots: Sequence[Path]) -> None:
    merged = dict.fromkeys([*remembered_roots(store), *roots])
    store.set_state(_ROOTS_KEY, json.dumps([os.fsdecode(r) for r in merged]))


def open_store(state_dir: Path) -> Store:
    return Store.open(database_path(state_dir))


def open_quarantine(store: Store, config: Config, roots: Sequence[Path]) -> Quarantine:
    return Quarantine(store, [absolute_root(r) for r in roots], config.quarantine.dir_name)


def recover_quarantine(store: Store, quarantine: Quarantine) -> None:
    """Finish or roll back moves a crash interrupted, and make file statuses agree."""
    for entry in quarantine.recover():
        log.info("journal_recovered", entry=entry.id, state=entry.state.value)
    for entry in store.journal_entries({JournalState.DONE}):
        if entry.file_id is None:
            continue
        record = store.file(entry.file_id)
        if record is not None and record.status is FileStatus.INDEXED:
            store.set_file_status(record.id, FileStatus.QUARANTINED)


@dataclass
class Services:
    """The open parts of a running dupwatch; ``close`` releases them in order."""

    config: Config
    store: Store
    worker: AnalysisPool
    index: VectorIndex
    hashes: HashIndex
    quarantine: Quarantine | None
    pipeline: Pipeline
    roots: tuple[Path, ...]
    _scratch: Path | None = field(default=None, repr=False)

    def close(self) -> None:
        self.index.close()
        self.worker.close()
        self.store.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _index_settings(config: Config) -> IndexSettings:
    return IndexSettings(
        rebuild_buffer_size=config.index.rebuild_buffer_size,
        rebuild_max_age=config.index.rebuild_max_age,
    )


def open_services(
    config: Config,
    state_dir: Path,
    roots: Sequence[Path],
    *,
    dry_run: bool = False,
    log_to_stderr: bool = False,
) -> Services:
    """Open the store, start the model worker, load the index and recover the quarantine.

    A dry run works on a scratch copy of the database and never touches a photo: it shows
    what would happen, and files seen during it are compared with each other as they would be.
    """
    scratch: Path | None = None
    if dry_run:
        scratch = Path(tempfile.mkdtemp(prefix="dupwatch-dry-run-"))
        source = database_path(state_dir)
        store = Store.open(database_path(scratch))
        if source.exists():
            store.close()
            original = Store.open(source)
            try:
                original.copy_to(database_path(scratch))
            finally:
                original.close()
            store = Store.open(database_path(scratch))
    else:
        store = open_store(state_dir)
    worker: AnalysisPool | None = None
    try:
        absolute = tuple(absolute_root(r) for r in roots)
        quarantine = None
        if not dry_run:
            remember_roots(store, absolute)
            # Earlier roots too: recovery may need to finish a move made under one of them.
            quarantine = open_quarantine(store, config, remembered_roots(store))
            recover_quarantine(store, quarantine)
        worker = AnalysisPool(
            WorkerSettings(
                config.decode,
                config.model,
                model_cache_dir(state_dir),
                log=config.log,
                log_to_stderr=log_to_stderr,
            ),
            size=config.model.workers or default_worker_count(),
        )
        worker.start()
        snapshots = snapshot_dir(scratch if scratch is not None else state_dir)
        if scratch is not None and snapshot_dir(state_dir).is_dir():
            shutil.copytree(snapshot_dir(state_dir), snapshots)
        index = VectorIndex.open(
            store,
            snapshots,
            model_id=worker.model_id,
            dim=EMBEDDING_DIM,
            settings=_index_settings(config),
        )
        hashes = HashIndex(*store.phashes())
        pipeline = Pipeline(
            config=config,
            store=store,
            index=index,
            hashes=hashes,
            worker=worker,
            quarantine=quarantine,
            model_id=worker.model_id,
            dry_run=dry_run,
        )
        pipeline.resume_interrupted()
        pipeline.retry_deferred()
    except BaseException:
        if worker is not None:
            worker.close()
        store.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    return Services(config, store, worker, index, hashes, quarantine, pipeline, absolute, scratch)
