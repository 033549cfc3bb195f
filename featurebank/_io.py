"""One home for the mechanics every module shares.

Atomic writes (every artefact: banks, heads, checkpoints, JSON and CSV reports), file hashing,
library versions, the device and AMP choice, the lock of an output file, and argument checks
with one message format. Nothing here imports torch at module level, so the command line can
start without it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import hashlib
import json
import numbers
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .exceptions import BankLockedError, FeatureBankError, ParameterError

if TYPE_CHECKING:
    import torch

# -- argument checks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """The allowed values of a numeric parameter, as scikit-learn's ``Interval``.

    Every numeric option of the library and the command line is checked by one of these, so
    every out-of-range value gets the same message: ``the 'batch_size' parameter must be a
    positive int, got 0.`` (the command line says ``argument --batch-size: must be ...``).
    """

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # which ends are allowed: "both", "left", "right" or "neither"
    none_ok: bool = False  # None is allowed too (it means "off" or "default")

    def describe(self) -> str:
        """``a positive int``, ``an int >= 0``, ``a float in [0, 1)``, ..."""
        word = "an int" if self.kind is int else "a float"
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        lo, hi = self.low, self.high
        if lo is not None and hi is None and (lo == 0 and not left
                                              or self.kind is int and lo == 1 and left):
            text = f"a positive {word.split()[1]}"
        elif lo is not None and hi is None:
            text = f"{word} {'>=' if left else '>'} {lo:g}"
        elif lo is not None:
            text = f"{word} in {'[' if left else '('}{lo:g}, {hi:g}{']' if right else ')'}"
        elif hi is not None:
            text = f"{word} {'<=' if right else '<'} {hi:g}"
        else:
            text = word
        return text + (" or None" if self.none_ok else "")

    def _contains(self, value: Any) -> bool:
        if value is None:
            return self.none_ok
        wanted = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted) or value != value:  # NaN
            return False
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left)):
            return False
        return not (self.high is not None and (value > self.high
                                               or (value == self.high and not right)))

    def check(self, name: str, value: Any) -> Any:
        """``value`` as ``kind`` (or None), or ParameterError naming ``name``."""
        if not self._contains(value):
            raise ParameterError(f"the {name!r} parameter must be {self.describe()}, got "
                                 f"{value!r}.")
        return None if value is None else self.kind(value)

    def parse(self, text: str) -> Any:
        """A command-line value (argparse ``type=``): the same check, argparse's error."""
        import argparse

        try:
            value = None if self.none_ok and text.lower() == "none" else self.kind(text)
        except ValueError:
            value = text
        if not self._contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
        return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ParameterError listing them."""
    choices = list(choices)
    if value not in choices:
        raise ParameterError(f"the {name!r} parameter must be one of {choices}, got {value!r}.")
    return value


POSITIVE_INT = Interval(int, 1, None)
NON_NEGATIVE_INT = Interval(int, 0, None)
POSITIVE_FLOAT = Interval(float, 0, None, closed="neither")
NON_NEGATIVE_FLOAT = Interval(float, 0, None)
FRACTION = Interval(float, 0, 1, closed="neither")
IMAGE_SIZE = Interval(int, 8, None)  # pixels: smaller inputs break most backbones' pooling

# -- files -------------------------------------------------------------------------------------


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(src: Path, dst: Path) -> None:
    """Rename a finished file onto ``dst``: its bytes are on disk first, then the rename."""
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    os.replace(src, dst)
    fsync_dir(dst.parent)


def unwritable(target: str | os.PathLike, e: OSError, option: str = "out") -> FeatureBankError:
    """The one message for an output that the file system refuses (read-only, no permission,
    full, a folder in the way): which file, why, and what to pass instead."""
    _, reason = os_error_message(e)
    flag = "--" + option.replace("_", "-")
    return FeatureBankError(
        f"cannot write to the folder of {str(target)!r} ({reason}: "
        f"{getattr(e, 'filename', None) or target}); choose a writable {option}= path "
        f"({flag}), or make the folder writable.")


def check_output(path: str | os.PathLike, *, folder: bool = False,
                 option: str = "out") -> Path:
    """``path`` if it can be written, checked before any work and creating nothing: not a
    folder where a file goes (or a file where a folder goes), and the nearest folder that
    exists on the way to it writable (a probe file is made there and removed, which also
    catches a read-only file system, even for root)."""
    import tempfile

    path = Path(path)
    flag = "--" + option.replace("_", "-")
    if not folder and path.is_dir():
        raise FeatureBankError(f"{str(path)!r} is a folder; pass the path of the file to write "
                               f"as {option}= ({flag} FILE).")
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FeatureBankError(f"{str(existing)!r} is a file, so {str(path)!r} cannot be "
                               f"written; pass another {option}= ({flag}).")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".featurebank-probe-"):
            pass
    except OSError as e:
        raise unwritable(path, e, option) from None
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to build a file at (an HDF5 file, bytes): on success it
    is fsynced and renamed over ``path`` (then the folder is fsynced); on an error it is
    removed, and a file-system error is the clear :func:`unwritable` one. A reader sees the old
    file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        replace_durably(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno is not None:
            raise unwritable(path, e) from None
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` all or nothing: ``write(f)`` fills a temporary file beside it (see
    :func:`atomic_file`); a crash leaves at most a ``.tmp`` file behind."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON, atomically (values JSON cannot hold are written as text)."""
    data = json.dumps(obj, indent=2, default=str).encode()
    return atomic_write(path, lambda f: f.write(data))


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Rows as CSV with a header, atomically; keys outside ``columns`` are left out."""
    import io

    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    data = buf.getvalue().encode()
    return atomic_write(path, lambda f: f.write(data))


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def os_error_message(e: BaseException) -> tuple[int | None, str]:
    """``(errno, strerror)`` of an OSError, also when HDF5 only names them in its text."""
    code = getattr(e, "errno", None)
    if code is None:
        m = re.search(r"errno = (\d+)", str(e))
        code = int(m.group(1)) if m else None
    return code, (os.strerror(code) if code else str(e).splitlines()[0])


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

# -- versions ----------------------------------------------------------------------------------


def package_version() -> str:
    """featurebank's installed version (``0.0.0+unknown`` in an uninstalled source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("featurebank")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def versions() -> dict[str, str]:
    """Versions of featurebank and of the libraries its artefacts depend on."""
    import h5py
    import torch
    import torchvision

    return {"featurebank_version": package_version(), "torch_version": str(torch.__version__),
            "torchvision_version": str(torchvision.__version__),
            "h5py_version": str(h5py.__version__)}

# -- devices -----------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; ``"cuda"`` without a GPU is an error."""
    import torch

    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ParameterError(f"the 'device' parameter must be 'auto', 'cpu', 'cuda' or "
                             f"'cuda:N', got {name!r}.") from None
    if dev.type not in ("cpu", "cuda"):
        raise ParameterError(f"the 'device' parameter must be 'auto', 'cpu', 'cuda' or "
                             f"'cuda:N', got {name!r}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device='cuda' was asked for but torch sees no CUDA GPU; use "
                             "device='auto' or 'cpu' (--device auto|cpu).")
    return dev


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), as torch sees
    it: there bfloat16 autocast speeds up convolutions; elsewhere it is emulated, slower.
    Asked once: extraction reads it for every batch."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def amp_dtype(device: torch.device, *, cpu_bf16: bool = False) -> torch.dtype | None:
    """The autocast dtype on ``device``: bfloat16 where the GPU has it, else float16; on the
    CPU bfloat16 with ``cpu_bf16`` where the CPU has it natively (:func:`cpu_has_bf16`:
    extraction's forward passes), else None (float32)."""
    import torch

    if device.type != "cuda":
        return torch.bfloat16 if cpu_bf16 and cpu_has_bf16() else None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: Any = "auto"):
    """The mixed-precision context of every forward pass on ``device``: ``dtype`` (a torch
    dtype, or None: off, float32), by default :func:`amp_dtype`'s."""
    import torch

    amp = amp_dtype(device) if isinstance(dtype, str) and dtype == "auto" else dtype
    return torch.autocast(device.type, dtype=amp, enabled=amp is not None)


# -- progress ----------------------------------------------------------------------------------


def progress_bar(*, total: int, desc: str, unit: str = "img", enabled: bool = True,
                 initial: int = 0, leave: bool = True):
    """The progress bar of every long job: tqdm on stderr (rate, ETA), a context manager that
    closes the bar on errors and Ctrl-C too; ``enabled=False`` shows nothing."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, leave=leave,
                disable=not enabled, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


# -- arrays ------------------------------------------------------------------------------------


def as_float32(array: Any, out: Any = None) -> Any:
    """``array`` as float32 numpy (into ``out`` when given). float16 goes through torch's
    vectorised cast: numpy converts half floats one scalar at a time, 6x slower (0.15 s
    against 0.02 s for a 16,384 x 4,096 chunk of a bank)."""
    import numpy as np

    array = np.asarray(array)
    if array.dtype != np.float16 or not array.flags.writeable or min(array.strides,
                                                                     default=0) < 0:
        if out is None:
            return array.astype(np.float32, copy=False)
        out[...] = array
        return out
    import torch

    if out is None:
        out = np.empty(array.shape, np.float32)
    torch.from_numpy(out).copy_(torch.from_numpy(array))
    return out


# -- the lock of an output file ----------------------------------------------------------------


class OutputLock:
    """An exclusive, non-blocking lock on ``<target>.lock`` (``filelock``), taken before any
    slow work so that a second writer of the same output fails at once. The kernel drops it
    when the holder dies. The lock file holds the holder's pid, for the message, and is removed
    on release."""

    def __init__(self, target: Path, what: str = "extraction"):
        self.target, self.what = Path(target), what
        self.path = Path(f"{target}.lock")
        self._lock = None

    def acquire(self) -> OutputLock:
        import filelock

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            holder = self._holder()  # read first: some filelock versions truncate the file
            lock = filelock.FileLock(str(self.path))
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise BankLockedError(
                f"another {self.what} (pid {holder or 'unknown'}) is writing "
                f"{str(self.target)!r} (lock {str(self.path)!r}); wait for it to finish, or "
                f"write to another out= path (--out).") from None
        except OSError as e:
            if getattr(e, "filename", None) is None:
                e.filename = str(self.path)
            raise unwritable(self.target, e) from None
        with open(self.path, "r+b") as f:  # the lock is on the file; its content is a note
            f.truncate(0)
            f.write(str(os.getpid()).encode())
        self._lock = lock
        return self

    def _holder(self) -> str:
        try:
            return self.path.read_text(errors="replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        """Release the lock; its file goes too (removed while still held, so no other writer
        can be holding it), leaving the output folder as clean as before."""
        if self._lock is not None:
            self.path.unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
