"""Named errors, each with a message a NAS owner can act on.

Library modules raise these; only the CLI turns them into a one-line message and an exit code.
File-level errors (``FileRejected`` and below) cost one file; the others stop the command.
"""

from __future__ import annotations

from pathlib import Path


class DupwatchError(Exception):
    """Base of every error dupwatch raises on purpose."""

    exit_code = 1


class UsageError(DupwatchError):
    """The command line names something that is not there (a file or folder to scan)."""

    exit_code = 2


# --- configuration and environment: the service cannot start (exit 78, no restart loop) ---


class ConfigError(DupwatchError):
    """The configuration file or command line is invalid; lists every problem at once."""

    exit_code = 78

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class StateDirError(DupwatchError):
    """The state directory is missing, not writable, or on a network filesystem."""

    exit_code = 78


class ModelError(DupwatchError):
    """The model weights are missing or malformed, or no runtime can run them here."""

    exit_code = 78


class UnsupportedCPUError(ModelError):
    """The CPU lacks an instruction set the requested runtime needs (e.g. AVX for TensorFlow)."""


# --- one file cannot be used: logged, recorded with its reason, skipped ---


class FileRejected(DupwatchError):
    """A file that dupwatch will not fingerprint; ``reason`` is a stable snake_case code."""

    reason = "rejected"

    def __init__(self, path: Path | str, detail: str) -> None:
        self.path = Path(path)
        self.detail = detail
        super().__init__(f"{self.path}: {detail}")


class NotARegularFile(FileRejected):
    """A directory, FIFO, socket, device or symlink where a photo was expected."""

    reason = "not_a_regular_file"


class FileVanished(FileRejected):
    """The file was deleted or renamed before dupwatch could read it."""

    reason = "vanished"


class FileUnreadable(FileRejected):
    """The file exists but cannot be read (permissions, I/O error)."""

    reason = "unreadable"


class FileChanging(FileRejected):
    """The file changed while it was read (still being written); try again once it settles."""

    reason = "changing"


class EmptyFile(FileRejected):
    """A zero-byte file: usually one still being created."""

    reason = "empty"


class FileTooLarge(FileRejected):
    """More bytes than the configured limit (a sparse or mislabelled file)."""

    reason = "file_too_large"


class NotAnImage(FileRejected):
    """The bytes are not in any supported image format, whatever the extension says."""

    reason = "not_an_image"


class TruncatedImage(FileRejected):
    """The image data ends early: a partial upload or a damaged file."""

    reason = "truncated"


class CorruptImage(FileRejected):
    """The image is in a known format but its data cannot be decoded."""

    reason = "corrupt"


class ImageTooLarge(FileRejected):
    """The header declares more pixels than the limit (a decompression bomb or a huge scan)."""

    reason = "too_many_pixels"


class DecoderCrashed(FileRejected):
    """The decoder process died on this file (a decoder bug triggered by its bytes)."""

    reason = "decoder_crashed"


class DecoderTimeout(FileRejected):
    """The decoder took longer than the configured limit on this file."""

    reason = "decoder_timeout"


# --- storage and quarantine: failures of the disk or the database stop the service ---


class StoreError(DupwatchError):
    """The database cannot be opened, migrated or written."""


class QuarantineError(DupwatchError):
    """A quarantine move or restore was refused or could not complete safely."""


class FileChanged(QuarantineError):
    """The file changed between the decision and the move, so the move was not made."""


class RestoreRefused(QuarantineError):
    """A restore would overwrite a file or leave the watched roots."""
