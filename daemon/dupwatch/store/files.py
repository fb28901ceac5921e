"""Known files: their identity on disk, fingerprints and status; and the decisions about them."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dupwatch.errors import StoreError
from dupwatch.records import Action, FileStatus, StatKey, Tier
from dupwatch.store.base import StoreBase
from dupwatch.store.records import (
    Decision,
    FileRecord,
    blob_to_path,
    from_i64,
    path_to_blob,
    to_i64,
)

_FILE_COLUMNS = (
    "id, path, size, mtime_ns, ctime_ns, dev, inode, sha256, phash, width, height, format, "
    "status, failure_reason, first_seen, last_seen"
)
_DECISION_COLUMNS = (
    "id, file_id, tier, neighbour_id, similarity, verification, action, rule, decided_at"
)
_PAGE = 1000


def _file(row: Any) -> FileRecord:
    (
        id_,
        path,
        size,
        mtime,
        ctime,
        dev,
        ino,
        sha,
        phash,
        w,
        h,
        fmt,
        status,
        reason,
        first,
        last,
    ) = row
    return FileRecord(
        id=id_,
        path=blob_to_path(path),
        size=size,
        mtime_ns=mtime,
        ctime_ns=ctime,
        dev=from_i64(dev),
        inode=from_i64(ino),
        sha256=sha,
        phash=None if phash is None else from_i64(phash),
        width=w,
        height=h,
        format=fmt,
        status=FileStatus(status),
        failure_reason=reason,
        first_seen=first,
        last_seen=last,
    )


def _decision(row: Any) -> Decision:
    (id_, file_id, tier, neighbour, sim, verification, action, rule, at) = row
    return Decision(
        id_, file_id, Tier(tier), neighbour, sim, verification, Action(action), rule, at
    )


def _in(values: Collection[Any]) -> str:
    return ", ".join("?" * len(values))


class FilesMixin(StoreBase):
    def upsert_file(
        self,
        path: Path,
        stat: StatKey,
        *,
        sha256: str | None = None,
        phash: int | None = None,
        width: int | None = None,
        height: int | None = None,
        format: str | None = None,
        status: FileStatus = FileStatus.INDEXED,
        failure_reason: str | None = None,
    ) -> FileRecord:
        """Record what is at ``path`` now, creating the row or replacing its contents.

        ``first_seen`` is kept from an existing row; everything else describes the new version.
        """
        now = time.time()
        values = (
            path_to_blob(path),
            stat.size,
            stat.mtime_ns,
            stat.ctime_ns,
            to_i64(stat.dev),
            to_i64(stat.inode),
            sha256,
            None if phash is None else to_i64(phash),
            width,
            height,
            format,
            status.value,
            failure_reason,
            now,
            now,
        )
        with self._write() as conn:
            row = conn.execute(
                f"INSERT INTO files ({_FILE_COLUMNS.removeprefix('id, ')}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, dev = excluded.dev, "
                "inode = excluded.inode, sha256 = excluded.sha256, phash = excluded.phash, "
                "width = excluded.width, height = excluded.height, format = excluded.format, "
                "status = excluded.status, failure_reason = excluded.failure_reason, "
                f"last_seen = excluded.last_seen RETURNING {_FILE_COLUMNS}",
                values,
            ).fetchone()
        return _file(row)

    def file(self, file_id: int) -> FileRecord | None:
        with self._read() as conn:
            sql = f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?"
            row = conn.execute(sql, (file_id,)).fetchone()
        return None if row is None else _file(row)

    def files(self, file_ids: Collection[int]) -> dict[int, FileRecord]:
        """The records of these ids that exist, by id: one query for a search's neighbours."""
        ids = list(file_ids)
        found: dict[int, FileRecord] = {}
        with self._read() as conn:
            for start in range(0, len(ids), _PAGE):  # SQLite's limit on parameters
                page = ids[start : start + _PAGE]
                sql = f"SELECT {_FILE_COLUMNS} FROM files WHERE id IN ({_in(page)})"
                for row in conn.execute(sql, page):
                    record = _file(row)
                    found[record.id] = record
        return found

    def file_by_path(self, path: Path) -> FileRecord | None:
        with self._read() as conn:
            sql = f"SELECT {_FILE_COLUMNS} FROM files WHERE path = ?"
            row = conn.execute(sql, (path_to_blob(path),)).fetchone()
        return None if row is None else _file(row)

    def files_by_sha256(
        self,
        sha256: str,
        statuses: Collection[FileStatus] = (FileStatus.INDEXED,),
        *,
        limit: int | None = None,
    ) -> list[FileRecord]:
        """Files with exactly these bytes (by hash), in the given statuses, oldest first
        (the first ``limit`` of them, if given)."""
        params: list[object] = [sha256, *(s.value for s in statuses)]
        sql = (
            f"SELECT {_FILE_COLUMNS} FROM files "
            f"WHERE sha256 = ? AND status IN ({_in(statuses)}) ORDER BY id"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._read() as conn:
            return [_file(r) for r in conn.execute(sql, params)]

    def files_by_identity(
        self, dev: int, inode: int, statuses: Collection[FileStatus]
    ) -> list[FileRecord]:
        """Files recorded with this device and inode, in the given statuses, oldest first."""
        params: list[object] = [to_i64(dev), to_i64(inode), *(s.value for s in statuses)]
        sql = (
            f"SELECT {_FILE_COLUMNS} FROM files "
            f"WHERE dev = ? AND inode = ? AND status IN ({_in(statuses)}) ORDER BY id"
        )
        with self._read() as conn:
            return [_file(r) for r in conn.execute(sql, params)]

    def files_under(
        self, root: Path, statuses: Collection[FileStatus] | None = None
    ) -> Iterator[FileRecord]:
        """Every known file below ``root`` (by path bytes), in path order, read page by page.

        Pages keep each read short, so a long reconciliation never holds a read transaction
        open (which would stop the write-ahead log from being checkpointed).
        """
        prefix = path_to_blob(root).rstrip(b"/") + b"/"
        upper = prefix[:-1] + b"0"  # "0" is the byte after "/": the end of the prefix range
        wanted = None if statuses is None else {s.value for s in statuses}
        after = prefix
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    f"SELECT {_FILE_COLUMNS} FROM files "
                    "WHERE path > ? AND path < ? ORDER BY path LIMIT ?",
                    (after, upper, _PAGE),
                ).fetchall()
            for row in rows:
                if wanted is None or row[12] in wanted:
                    yield _file(row)
            if len(rows) < _PAGE:
                return
            after = rows[-1][1]

    def set_file_status(
        self, file_id: int, status: FileStatus, failure_reason: str | None = None
    ) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE files SET status = ?, failure_reason = ? WHERE id = ?",
                (status.value, failure_reason, file_id),
            )
            if cur.rowcount != 1:
                raise StoreError(f"file {file_id} does not exist")

    def move_file(self, file_id: int, new_path: Path, stat: StatKey) -> FileRecord:
        """Record that a known file was renamed (same bytes, new path)."""
        with self._write() as conn:
            taken = conn.execute(
                "SELECT id FROM files WHERE path = ? AND id != ?", (path_to_blob(new_path), file_id)
            ).fetchone()
            if taken is not None:
                raise StoreError(f"{new_path}: already recorded as file {taken[0]}")
            row = conn.execute(
                "UPDATE files SET path = ?, ctime_ns = ?, dev = ?, inode = ?, last_seen = ? "
                f"WHERE id = ? RETURNING {_FILE_COLUMNS}",
                (
                    path_to_blob(new_path),
                    stat.ctime_ns,
                    to_i64(stat.dev),
                    to_i64(stat.inode),
                    time.time(),
                    file_id,
                ),
            ).fetchone()
        if row is None:
            raise StoreError(f"file {file_id} does not exist")
        return _file(row)

    def mark_seen(self, file_ids: Iterable[int], when: float | None = None) -> None:
        """Set ``last_seen`` (a reconciliation walk found these files where recorded)."""
        at = time.time() if when is None else when
        with self._write() as conn:
            conn.executemany(
                "UPDATE files SET last_seen = ? WHERE id = ?", ((at, i) for i in file_ids)
            )

    def file_counts(self) -> dict[FileStatus, int]:
        with self._read() as conn:
            rows = conn.execute("SELECT status, count(*) FROM files GROUP BY status").fetchall()
        counts = dict.fromkeys(FileStatus, 0)
        counts.update({FileStatus(s): n for s, n in rows})
        return counts

    def phashes(
        self, statuses: Collection[FileStatus] = (FileStatus.INDEXED,)
    ) -> tuple[NDArray[np.int64], NDArray[np.uint64]]:
        """File ids and perceptual hashes (unsigned) of files in ``statuses`` that have one."""
        params = [s.value for s in statuses]
        with self._read() as conn:
            self._conn.execute("BEGIN")  # one snapshot for the count and the rows
            try:
                where = f"phash IS NOT NULL AND status IN ({_in(params)})"
                (n,) = conn.execute(f"SELECT count(*) FROM files WHERE {where}", params).fetchone()
                ids = np.empty(n, dtype=np.int64)
                hashes = np.empty(n, dtype=np.int64)
                for i, (file_id, h) in enumerate(
                    conn.execute(f"SELECT id, phash FROM files WHERE {where}", params)
                ):
                    ids[i] = file_id
                    hashes[i] = h
            finally:
                conn.execute("COMMIT")
        return ids, hashes.view(np.uint64)

    def record_decision(
        self,
        file_id: int,
        *,
        tier: Tier,
        action: Action,
        rule: str,
        neighbour_id: int | None = None,
        similarity: float | None = None,
        verification: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Append a decision; ``verification`` (the verifier's evidence) is kept as JSON."""
        text = None if verification is None else json.dumps(verification, sort_keys=True)
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO decisions (file_id, tier, neighbour_id, similarity, verification, "
                "action, rule, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                f"RETURNING {_DECISION_COLUMNS}",
                (
                    file_id,
                    tier.value,
                    neighbour_id,
                    similarity,
                    text,
                    action.value,
                    rule,
                    time.time(),
                ),
            ).fetchone()
        return _decision(row)

    def decisions_for(self, file_id: int) -> list[Decision]:
        """Decisions about ``file_id`` or naming it as the neighbour, oldest first."""
        sql = (
            f"SELECT {_DECISION_COLUMNS} FROM decisions "
            "WHERE file_id = ? OR neighbour_id = ? ORDER BY id"
        )
        with self._read() as conn:
            return [_decision(r) for r in conn.execute(sql, (file_id, file_id))]

    def decision_counts(self) -> dict[tuple[Tier, Action], int]:
        """How many files' latest decision fell in each (tier, action)."""
        sql = (
            "SELECT tier, action, count(*) FROM decisions WHERE id IN "
            "(SELECT max(id) FROM decisions GROUP BY file_id) GROUP BY tier, action"
        )
        with self._read() as conn:
            return {(Tier(t), Action(a)): int(n) for t, a, n in conn.execute(sql)}

    def recent_decisions(self, limit: int = 100) -> list[Decision]:
        sql = f"SELECT {_DECISION_COLUMNS} FROM decisions ORDER BY id DESC LIMIT ?"
        with self._read() as conn:
            return [_decision(r) for r in conn.execute(sql, (limit,))]
