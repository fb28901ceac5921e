"""The daemon's services without the model process, for scenarios that never need to decode.

Exact byte copies are decided from their sha256 alone, so a pipeline handling only those never
calls the worker; leaving it unstarted lets a forked child run the real pipeline, store and
quarantine and die at an exact point. A call that would decode fails loudly (ModelError).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from dupwatch.config import Config
from dupwatch.filters import PathFilter
from dupwatch.reconcile import walk_files
from dupwatch.runtime import Services, open_services
from dupwatch.worker import AnalysisWorker


def model_id_of(cache: Path) -> str:
    (model,) = cache.glob("*.onnx")
    return model.stem


@contextmanager
def offline_services(
    config: Config, state: Path, roots: Sequence[Path], model_id: str
) -> Iterator[Services]:
    def no_model(self: AnalysisWorker) -> None:
        self.model_id = model_id

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AnalysisWorker, "start", no_model)
        services = open_services(config, state, roots)
        try:
            yield services
        finally:
            services.close()


def scan_offline(config: Config, state: Path, roots: Sequence[Path], model_id: str) -> None:
    """One reconciliation pass, as ``dupwatch scan`` does it, in this process."""
    path_filter = PathFilter(
        config.watch.include_extensions, config.watch.ignore, config.quarantine.dir_name
    )
    with offline_services(config, state, roots, model_id) as services:
        for root in services.roots:
            for path in sorted(p for p, _ in walk_files(root, path_filter)):
                services.pipeline.process(path)
