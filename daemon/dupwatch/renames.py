"""Known files found under a new name: a rename or move inside the roots is not a new photo.

A file whose path the store does not know, but whose inode and bytes it does, and whose
recorded path no longer holds it, was renamed (or its folder was). Its record follows it to
the new path, keeping its fingerprints and decisions, instead of being examined again as a
new photo and leaving the old record to be marked gone. A hard link (the old path still
holds the file) is not a rename and is left to the pipeline, which never counts one file as
its own copy.
"""

from __future__ import annotations

import structlog

from dupwatch.filebytes import FileBytes
from dupwatch.hashindex import HashIndex
from dupwatch.index import VectorIndex
from dupwatch.records import FileStatus, StatKey
from dupwatch.store import Store
from dupwatch.store.records import FileRecord

log = structlog.get_logger(__name__)

# GONE too: after a restart the walk may report the old path missing before the new one.
_FOLLOWED = (FileStatus.INDEXED, FileStatus.FAILED, FileStatus.GONE)


def _still_there(record: FileRecord) -> bool:
    try:
        now = StatKey.of(record.path)
    except OSError:
        return False
    return (now.dev, now.inode) == (record.dev, record.inode)


def follow_rename(
    store: Store, index: VectorIndex, hashes: HashIndex, model_id: str, file: FileBytes
) -> FileRecord | None:
    """Move the record of the known file ``file`` was renamed from; None if it is not one."""
    # By inode (an indexed lookup), not by hash: a library may hold thousands of byte copies.
    for record in store.files_by_identity(file.stat.dev, file.stat.inode, _FOLLOWED):
        same_bytes = record.sha256 == file.sha256 and record.size == file.stat.size
        if not same_bytes or record.path == file.path:
            continue
        if _still_there(record):
            return None  # a hard link or a second view of the same file
        vector = store.vector(record.id, model_id)
        if record.status is FileStatus.GONE and vector is None:
            return None  # nothing to bring back: examine it as the new file it looks like
        moved = store.move_file(record.id, file.path, file.stat)
        if record.status is FileStatus.GONE and vector is not None:
            store.set_file_status(record.id, FileStatus.INDEXED)
            index.add(record.id, vector)
            if record.phash is not None:
                hashes.add(record.id, record.phash)
        log.info("file_renamed", path=file.path, previous=record.path, file_id=record.id)
        return moved
    return None
