"""The dataset formats users keep at scale: WebDataset tar shards, Hugging Face datasets, CSV.

Each becomes an :class:`~featurebank.ImageSource` whose splits are ordinary file splits of
*encoded* images: a sample is read as its bytes (a member of a tar shard, a Parquet/Arrow
cell, a file) and decoded by the bank's own :class:`~featurebank._decode.Decoding`, exactly
as a file of a folder is, so the same images give the same bank rows whatever format holds
them. Registered in ``data._SOURCES`` as ``wds:``, ``hf:`` and ``csv:``.

WebDataset shards are read with the standard library's ``tarfile``, not the ``webdataset``
package: its pipeline is a sequential stream (an ``IterableDataset``), while the fine-tune,
the predictor and the report need random access to single samples. ``tarfile`` gives both
from one index of member offsets per shard (scanning headers only, not data), cached in
``DATA_ROOT/featurebank-index/`` and rebuilt when a shard's size or time changes.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import DataError
from .records import Resize, SourceOptions

__all__ = ["HFImage", "TarMember", "expand_braces", "open_csv", "open_hf", "open_wds"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_INDEX_VERSION = 1


# -- labels ------------------------------------------------------------------------------------
def _read_classes(path: Path, option: str) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as e:
        raise DataError(f"cannot read the class names file {str(path)!r} ({option}): "
                        f"{e.strerror or e}.") from None
    return [n for n in names if n]


def _as_int(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    text = str(raw).strip()
    return int(text) if re.fullmatch(r"\d+", text) else None


def label_indices(raw: list[Any], names: list[str] | None, where: Iterable[str]
                  ) -> tuple[list[int], list[str]]:
    """Labels given as class names or integers (``where`` names each sample for errors) as
    indices into the class names: ``names`` when known (from a file or the dataset),
    otherwise the sorted names, or ``"0"`` ... ``"max"`` for integer labels."""
    where = list(where)
    ints = [_as_int(r) for r in raw]
    if names is None:
        if all(i is not None for i in ints):
            names = [str(i) for i in range(max(ints, default=-1) + 1)] or ["0"]
        else:
            names = sorted({str(r).strip() for r in raw})
    lookup = {n: i for i, n in enumerate(names)}
    out = []
    for r, i, w in zip(raw, ints, where):
        index = lookup.get(str(r).strip(), i)
        if index is None or not 0 <= index < len(names):
            raise DataError(f"sample {w} has label {r!r}, which is not one of the "
                            f"{len(names)} classes ({names[:8]}{' ...' if len(names) > 8 else ''}"
                            f"); fix the label, or list every class in the --classes file.")
        out.append(index)
    return out, names


# -- WebDataset --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TarMember:
    """An image inside a tar shard: read as its bytes by offset (random access)."""

    path: str
    offset: int
    size: int
    name: str

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"truncated tar member: {len(data)} of {self.size} bytes")
        return data

    def identity(self) -> str:
        """What the source fingerprint hashes: the shard's name, the member and its size."""
        return f"{Path(self.path).name}\0{self.name}\0{self.size}"

    def __str__(self) -> str:
        return f"{self.path}:{self.name}"


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard patterns: ``{000000..000146}`` (zero-padded ranges) and ``{a,b}``
    (lists), nested or several, expanded in order."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        width, lo, hi = len(r.group(1)), int(r.group(1)), int(r.group(2))
        items = [f"{i:0{width}d}" for i in range(lo, hi + 1)]
    else:
        items = body.split(",")
    return [x for item in items for x in expand_braces(head + item + tail)]


def _split_patterns(location: str) -> dict[str, str]:
    """``train=PAT,test=PAT`` (commas inside braces belong to the pattern), a folder with
    ``train/`` and ``test/`` shards, or one pattern (a ``train`` split)."""
    if re.match(r"^\w+=", location):
        parts, depth, start = [], 0, 0
        for i, c in enumerate(location + ","):
            depth += (c == "{") - (c == "}")
            if c == "," and depth == 0:
                parts.append(location[start:i])
                start = i + 1
        return dict(p.split("=", 1) for p in parts if p)
    root = Path(location).expanduser()
    if root.is_dir():
        subs = {s: root / s for s in ("train", "test") if (root / s).is_dir()}
        if "train" in subs:
            return {s: str(p / "*.tar") for s, p in subs.items()}
        return {"train": str(root / "*.tar")}
    return {"train": location}


def _shards(pattern: str) -> list[Path]:
    found = sorted({Path(p) for part in expand_braces(os.path.expanduser(pattern))
                    for p in (glob.glob(part) if glob.has_magic(part) else [part])
                    if Path(p).is_file()})
    if not found:
        raise DataError(f"no tar shards match {pattern!r} (dataset='wds:PATTERN': brace "
                        f"ranges such as train-{{000000..000146}}.tar, globs, or a folder).")
    return found


def _key_and_extension(name: str) -> tuple[str, str]:
    """WebDataset's grouping: a sample's key is the member path up to the first dot of its
    file name, the rest is the extension (``a/b.seg.png`` -> ``a/b``, ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _scan_shard(path: Path, options: SourceOptions, labelled: bool) -> list[list[Any]]:
    """``[key, member name, offset, size, raw label]`` of each sample of a shard, in order."""
    try:
        tf = tarfile.open(path, mode="r:")  # an uncompressed tar: members are addressable
    except tarfile.TarError as e:
        raise DataError(f"{str(path)!r} is not an uncompressed tar shard ({e}); WebDataset "
                        f"shards are plain .tar files.") from None
    size, samples, order = path.stat().st_size, {}, []
    with tf:
        for m in tf:
            if not m.isfile():
                continue
            if m.offset_data + m.size > size:
                raise DataError(f"tar member {m.name!r} of {str(path)!r} is truncated (the "
                                f"shard ends at byte {size}, the member at "
                                f"{m.offset_data + m.size}): the shard is damaged or still "
                                f"being written.")
            key, ext = _key_and_extension(m.name)
            if key not in samples:
                samples[key] = {}
                order.append(key)
            if ext in ("cls", "json") and labelled:
                samples[key][ext] = tf.extractfile(m).read().decode("utf-8", "replace")
            else:
                samples[key][ext] = (m.name, m.offset_data, m.size)
    return [_wds_sample(path, key, samples[key], options, labelled) for key in order]


def _wds_sample(path: Path, key: str, members: dict[str, Any], options: SourceOptions,
                labelled: bool) -> list[Any]:
    where = f"{key!r} of {str(path)!r}"
    image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
    if image is None:
        raise DataError(f"sample {where} has no image (members {sorted(members)}; expected "
                        f"one of {list(IMAGE_EXTENSIONS)}).")
    label: Any = 0
    if labelled and options.label_key:
        try:
            label = json.loads(members["json"])[options.label_key]
        except KeyError:
            raise DataError(f"sample {where} has no label: no json member with the key "
                            f"{options.label_key!r} (--label-key).") from None
        except json.JSONDecodeError as e:
            raise DataError(f"sample {where}: its json member is not JSON ({e}).") from None
    elif labelled:
        if "cls" not in members:
            raise DataError(f"sample {where} has no label: no cls member (or pass "
                            f"--label-key KEY to read it from its json member).")
        label = members["cls"].strip()
    return [key, *image, label]


def _indexed_shard(path: Path, cache: Path | None, options: SourceOptions,
                   labelled: bool) -> list[list[Any]]:
    """The shard's samples from the cached index when it still describes the shard (same
    size and time, same options), else scanned and cached (a cache that cannot be written
    is skipped)."""
    from ._io import write_json

    st = path.stat()
    stamp = {"version": _INDEX_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "options": options.to_json(), "labelled": labelled}
    file = None
    if cache is not None:
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        file = cache / f"{path.name}.{digest}.json"
        try:
            saved = json.loads(file.read_text())
            if saved["stamp"] == stamp:
                return saved["samples"]
        except (OSError, ValueError, KeyError):
            pass
    samples = _scan_shard(path, options, labelled)
    if file is not None:
        try:
            write_json(file, {"stamp": stamp, "shard": str(path), "samples": samples})
        except Exception:  # noqa: BLE001 - a read-only data root: the index is rebuilt next time
            pass
    return samples


def open_wds(location: str, options: SourceOptions, data_root: Path,
             labelled: bool = True):
    """``wds:PATTERN``, ``wds:train=PATTERN,test=PATTERN`` or ``wds:FOLDER``."""
    from .data import ImageSource, _FileSplit

    patterns = _split_patterns(location)
    shards = {split: _shards(p) for split, p in patterns.items()}
    cache = Path(data_root).expanduser() / "featurebank-index"
    rows = {split: [(shard, s) for shard in paths
                    for s in _indexed_shard(shard, cache, options, labelled)]
            for split, paths in shards.items()}
    first = next(iter(shards.values()))[0].parent
    names = (_read_classes(Path(options.classes).expanduser(), "--classes") if options.classes
             else _read_classes(first / "classes.txt", "classes.txt")
             if (first / "classes.txt").is_file() else None)
    every = [r for split_rows in rows.values() for r in split_rows]
    labels, names = label_indices([s[4] for _, s in every], names,
                                  (f"{s[0]!r} of {str(shard)!r}" for shard, s in every))
    splits, start = {}, 0
    for split, split_rows in rows.items():
        members = [TarMember(str(shard), s[2], s[3], s[1]) for shard, s in split_rows]
        splits[split] = _FileSplit(list(zip(members, labels[start:start + len(members)])),
                                   first)
        start += len(members)
    return ImageSource("wds", location, names, splits, Resize.FILES)


# -- Hugging Face datasets -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class HFImage:
    """One image cell of a Hugging Face dataset split, read as its encoded bytes."""

    table: Any  # the split, its image column cast to Image(decode=False)
    column: str
    index: int
    where: str  # NAME[split]
    fingerprint: str

    def read_bytes(self) -> bytes:
        cell = self.table[self.index][self.column]
        if cell is None:
            raise ValueError("the sample has no image")
        if cell.get("bytes") is not None:
            return cell["bytes"]
        if cell.get("path"):
            with open(cell["path"], "rb") as f:
                return f.read()
        raise ValueError("the sample's image has neither bytes nor a path")

    def identity(self) -> str:
        return f"{self.fingerprint}\0{self.index}"

    def __str__(self) -> str:
        return f"{self.where}[{self.index}]"


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("hf: datasets need the datasets package: pip install "
                        "\"featurebank[hf]\"") from None
    return datasets


def _files_fingerprint(folder: Path) -> str:
    """Relative names and sizes of a folder's data files: cheap, and it survives a move."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".parquet", ".arrow", ".json"):
            h.update(f"{p.relative_to(folder)}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()


def _load_hf(location: str) -> tuple[dict[str, Any], str | None]:
    """The dataset's splits, and a fingerprint for a Parquet/Arrow folder (None: the
    dataset's own)."""
    datasets = _datasets()
    path = Path(location).expanduser()
    name, _, config = location.rpartition(":") if not path.exists() and ":" in location \
        else (location, "", "")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded, fingerprint = datasets.load_from_disk(str(path)), None
        else:
            kind = "parquet" if any(path.rglob("*.parquet")) else "arrow"
            loaded = datasets.load_dataset(kind, data_dir=str(path))
            fingerprint = _files_fingerprint(path)
    else:
        try:
            loaded = datasets.load_dataset(name, config or None)
        except Exception as e:  # noqa: BLE001 - offline, unknown name, no cache: one message
            call = f"datasets.load_dataset({name!r}{f', {config!r}' if config else ''})"
            raise DataError(
                f"cannot load the Hugging Face dataset {location!r} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:300] if str(e) else ''}). Without a network it "
                f"must be in the cache: run python -c \"import datasets; {call}\" on a machine "
                f"with one (it fills ~/.cache/huggingface, or $HF_HOME), then set "
                f"HF_DATASETS_OFFLINE=1 here; or pass a folder written by save_to_disk or of "
                f"Parquet files (hf:PATH).") from None
        fingerprint = None
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return dict(sorted(splits.items(), key=lambda kv: (kv[0] != "train", kv[0]))), fingerprint


def _column(ds: Any, wanted: str | None, kind: str, option: str, where: str) -> str | None:
    datasets = _datasets()
    feature = {"image": datasets.Image, "label": datasets.ClassLabel}[kind]
    if wanted is not None:
        if wanted not in ds.column_names:
            raise DataError(f"{where} has no column {wanted!r} ({option}); its columns are "
                            f"{ds.column_names}.")
        return wanted
    return next((c for c, f in ds.features.items() if isinstance(f, feature)), None)


def open_hf(location: str, options: SourceOptions, labelled: bool = True):
    """``hf:PATH`` (save_to_disk, or a folder of Parquet / Arrow files) or ``hf:NAME[:CONFIG]``
    (from the Hugging Face cache)."""
    from .data import ImageSource, _FileSplit

    datasets = _datasets()
    loaded, folder_fingerprint = _load_hf(location)
    splits, names = {}, None
    for split, ds in loaded.items():
        where = f"{location}[{split}]"
        image = _column(ds, options.image_column, "image", "--image-column", where)
        if image is None:
            raise DataError(f"{where} has no Image column (columns {ds.column_names}); pass "
                            f"--image-column NAME.")
        label = _column(ds, options.label_column, "label", "--label-column", where)
        if labelled and label is None:
            raise DataError(f"{where} has no ClassLabel column (columns {ds.column_names}); "
                            f"pass --label-column NAME.")
        feature = ds.features.get(label) if label else None
        names = names or (list(feature.names) if isinstance(feature, datasets.ClassLabel)
                          else None)
        table = ds.cast_column(image, datasets.Image(decode=False)).select_columns([image])
        fp = folder_fingerprint or ds._fingerprint
        cells = [HFImage(table, image, i, where, f"{fp}\0{split}") for i in range(len(ds))]
        raw = ds[label] if labelled else [0] * len(ds)
        labels, names = label_indices(raw, names, (str(c) for c in cells))
        splits[split] = _FileSplit(list(zip(cells, labels)), Path("."))
    return ImageSource("hf", location, names or ["0"], splits, Resize.FILES)


# -- CSV ---------------------------------------------------------------------------------------
def open_csv(location: str, options: SourceOptions, labelled: bool = True):
    """``csv:FILE``: a header with ``path`` and ``label`` (and optionally ``split``); relative
    paths are resolved from the CSV's folder, labels are class names or integers."""
    from .data import ImageSource, _FileSplit

    path = Path(location).expanduser()
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist (dataset='csv:FILE').")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        wanted = ["path", "label"] if labelled else ["path"]
        if not set(wanted) <= set(columns):
            raise DataError(f"CSV file {str(path)!r} has the columns {columns}; expected a "
                            f"header with {wanted} (and optionally 'split').")
        rows = list(reader)
    entries = []
    for line, row in enumerate(rows, start=2):
        where = f"on line {line} of {str(path)!r}"
        if not (row.get("path") or "").strip():
            raise DataError(f"the sample {where} has no path.")
        file = (path.parent / row["path"].strip()).expanduser()
        if not file.is_file():
            raise DataError(f"the image {str(file)!r} {where} does not exist.")
        if labelled and not (row.get("label") or "").strip():
            raise DataError(f"the sample {where} has no label.")
        entries.append((str(file), row.get("label", 0) if labelled else 0,
                        (row.get("split") or "train").strip(), where))
    if not entries:
        raise DataError(f"CSV file {str(path)!r} lists no images.")
    names = (_read_classes(Path(options.classes).expanduser(), "--classes")
             if options.classes else None)
    labels, names = label_indices([e[1] for e in entries], names, (e[3] for e in entries))
    order = sorted(dict.fromkeys(e[2] for e in entries), key=lambda s: s != "train")
    splits = {s: _FileSplit([(e[0], y) for e, y in zip(entries, labels) if e[2] == s],
                            path.parent) for s in order}
    return ImageSource("csv", str(path), names, splits, Resize.FILES)
