"""Where documents come from: a hub dataset or local text / jsonl / parquet files, streamed with `datasets`.

A `TextSource` names a `datasets.load_dataset(..., streaming=True)` call and exposes it as
numbered files, each an iterator of document strings, so the stream can split work by
file (when the file count divides the shard count) and keep its own position.
"""

from __future__ import annotations

import glob
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

LOCAL_BUILDERS = ("text", "json", "parquet")
MODES = ("stream", "memmap")
"""How `TextDataModule` feeds training: tokenise a `TextSource` on the fly, or read prepared memmaps."""
SAMPLES_DIR = Path(__file__).parent / "samples"
HEAD_BYTES = 1 << 16  # how much of a local file `file_problem` reads
MAX_NON_TEXT = 0.10
"""A file whose head has a larger share of control characters or undecodable bytes is not text."""
MAX_INVALID_UTF8 = 0.001
"""A UTF-8 file whose head has a larger share of invalid bytes is in another encoding (Latin-1, ...);
below it, stray bytes are replaced and counted while streaming."""
TEXT_CONTROLS = set("\t\n\r\f\v")


def sample_path(name: str = "openwebtext_sample.txt") -> str:
    """Absolute path of a text sample shipped with krony (see `krony/data/samples/README.md`)."""
    path = SAMPLES_DIR / name
    if not path.exists():
        raise ValueError(f"no shipped sample {name!r}; available: {sorted(p.name for p in SAMPLES_DIR.glob('*.txt'))}")
    return str(path)


def file_problem(path: str | Path, builder: str = "text", text_field: str = "text", encoding: str = "utf-8") -> str | None:
    """Why a local data file cannot be read as `builder` ("text", "json", "parquet"), or None.

    Reads at most the first 64 KB (parquet: the footer): an empty file, binary content (a NUL
    byte, or over 10% control characters and undecodable bytes), text in another encoding than
    `encoding` (over 0.1% invalid UTF-8: Latin-1, say), a jsonl file whose first record is not a
    JSON object with `text_field`, or a file that is not parquet or lacks the column. Anything
    subtler is counted and skipped document by document while streaming."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "is empty"
        if builder == "parquet":
            import pyarrow.parquet as pq

            with open(path, "rb") as f:
                if f.read(4) != b"PAR1":
                    return "is not a parquet file (no PAR1 magic)"
            names = pq.read_schema(path).names
            return None if text_field in names else f"has no column {text_field!r} (columns: {', '.join(names)})"
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a damaged footer
        return f"is not a readable parquet file ({str(e).splitlines()[0][:160]})"
    nul = head.find(b"\0")
    if nul >= 0:
        return f"is not text: binary data (a NUL byte at offset {nul})"
    problem, text = _decode_problem(head, encoding, complete=len(head) == size)
    if problem:
        return problem
    if builder == "text":
        return None if text.strip() else "holds only whitespace"
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first:
        return "holds only whitespace"
    import json

    try:
        record = json.loads(first)
    except ValueError as e:
        if len(head) == HEAD_BYTES and len(first) >= len(text) - 1:
            return None  # a first line longer than what was read: let the stream judge it
        return f"is not JSON lines: the first line does not parse ({e})"
    if not isinstance(record, dict) or text_field not in record:
        return f"is not JSON lines with a {text_field!r} field: the first record is {type(record).__name__}" + (
            f" with keys {sorted(record)[:8]}" if isinstance(record, dict) else "")
    return None


def _decode_problem(head: bytes, encoding: str, complete: bool) -> tuple[str | None, str]:
    """(why the first bytes of a file are not text in `encoding`, or None; their text)."""
    import codecs

    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    except LookupError:
        return f"cannot be read: unknown encoding {encoding!r} (data.source.encoding)", ""
    text = decoder.decode(head, final=complete)  # a character cut by the 64 KB limit is not an error
    if not text:
        return None, text
    kb = len(head) // 1024 or 1
    invalid = text.count("\ufffd")
    if invalid and codecs.lookup(encoding).name == "utf-8" and invalid / len(text) > MAX_INVALID_UTF8:
        controls = _control_share(head.decode("latin-1"))
        if controls > MAX_NON_TEXT:
            return (f"is not text: its first {kb} KB are not UTF-8 and {controls:.0%} of their bytes are control "
                    f"bytes (binary data?)"), text
        offset = _first_invalid_utf8(head)
        return (f"is not UTF-8: {invalid} invalid byte(s) in its first {kb} KB, the first 0x{head[offset]:02x} at "
                f"offset {offset} (Latin-1 or Windows-1252 text?); read it with data.source.encoding=latin-1 (or "
                f"cp1252), or convert it: iconv -f latin1 -t utf-8"), text
    share = _control_share(text) + invalid / len(text)
    if share > MAX_NON_TEXT:
        return (f"is not text: {share:.0%} of its first {kb} KB are control characters or bytes that are not "
                f"{encoding} (binary data?)"), text
    return None, text


def _control_share(text: str) -> float:
    """The share of control characters (C0 but whitespace, DEL, C1) in `text`."""
    controls = sum(1 for c in text if (c < " " and c not in TEXT_CONTROLS) or "\x7f" <= c < "\xa0")
    return controls / max(1, len(text))


def _first_invalid_utf8(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return 0


def count_documents(path: str | Path, builder: str = "text", sample_by: str = "paragraph", encoding: str = "utf-8",
                    limit: int | None = None) -> int:
    """Documents in a local file as the stream reads them (non-blank ones), counting stops past
    `limit`: text lines, paragraphs (blank-line separated) or the whole file; jsonl lines;
    parquet rows (from the footer)."""
    path = Path(path)
    if builder == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if builder == "text" and sample_by == "document":
        return 1
    separator = "\n\n" if builder == "text" and sample_by == "paragraph" else "\n"
    count, carry = 0, ""
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        while limit is None or count <= limit:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            parts = (carry + chunk.replace("\r\n", "\n")).split(separator)
            carry = parts.pop()
            count += sum(1 for part in parts if part.strip())
    return count + (1 if carry.strip() and (limit is None or count <= limit) else 0)


@dataclass
class TextSource:
    """A streamed text dataset.

    OpenWebText defaults (README: Data): the parquet copy of `Skylion007/openwebtext`
    at a pinned revision, 80 files under `plain_text/`.
    """

    path: str = "Skylion007/openwebtext"
    """Hub dataset id, or a packaged builder for local files: "text", "json" (jsonl) or "parquet"."""
    name: str | None = "plain_text"
    """Dataset config name on the hub (None for local files)."""
    revision: str | None = "79d93d786212f7344586290adb811d4ae6a1762c"
    """Hub commit to pin: what makes a run reproducible."""
    data_files: str | list[str] | None = "plain_text/train-000*-of-00080.parquet"
    """Files within the hub dataset, or local paths / globs for the local builders."""
    split: str = "train"
    """Split to read; the validation slice is carved out of it (see `PackedBlocks`)."""
    text_field: str = "text"
    """Column holding the document text."""
    expected_files: int | None = 80
    """Fail at start unless the source resolves to exactly this many files (None: no check)."""
    sample_by: str = "paragraph"
    """Text files only: one document per "line", "paragraph" (blank-line separated) or whole "document"."""
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of `load_dataset`."""
    retries: int = 5
    """Times a file that fails mid-stream (network, storage) is reopened, resuming after the
    documents already read, before the run stops with an error."""
    retry_wait: float = 2.0
    """Seconds before the first retry; doubled after each failure."""
    encoding: str = "utf-8"
    """Local text and jsonl files: their encoding (latin-1, cp1252, ...)."""

    def __post_init__(self) -> None:
        self._ds = None
        self._location: tuple[str, str | None] | None = None  # (path, revision) load_dataset reads

    @property
    def is_local(self) -> bool:
        return self.path in LOCAL_BUILDERS

    def describe(self) -> str:
        """The source in a few words, for messages: its files, or the hub dataset and revision."""
        if self.is_local:
            try:
                files = self.local_files()
            except ValueError:
                files = [str(self.data_files)]
            return ", ".join(files[:3]) + (f" and {len(files) - 3} more files" if len(files) > 3 else "")
        return f"{self.path} (revision {self.revision or 'main'})"

    def check_files(self) -> None:
        """ValueError naming the first local file that is missing, empty or not of its format."""
        for f in self.local_files():
            problem = file_problem(f, self.path, self.text_field, self.encoding)
            if problem:
                raise ValueError(f"data.source.data_files: {f} {problem}")

    def check_split(self, val_documents: int, val_fraction: float | None = None) -> None:
        """`ConfigError` when holding out `val_documents` documents of the first local file leaves
        nothing to train on (or the file holds none); counts documents as the stream reads them."""
        from krony.config import ConfigError

        if val_fraction:
            return  # a share of every document of file 0: both splits get text
        files = self.local_files()
        counted = count_documents(files[0], self.path, self.sample_by, self.encoding, limit=val_documents)
        how = {"text": f"sample_by={self.sample_by}: " + {"line": "one per line", "paragraph": "blank-line separated",
                                                          "document": "the whole file"}.get(self.sample_by, ""),
               "json": "one per line", "parquet": "one per row"}[self.path]
        if counted <= val_documents and len(files) == 1:
            raise ConfigError("data.val_documents", val_documents,
                              f"{files[0]} holds {counted} document(s) ({how}), all held out for validation, so nothing "
                              f"is left to train on; lower data.val_documents, or hold out a share of the text instead "
                              f"with data.val_fraction=0.01")
        if counted == 0:
            raise ConfigError("data.source.data_files", self.data_files, f"{files[0]} holds no document ({how})")

    def location(self) -> tuple[str, str | None]:
        """(path, revision) for `load_dataset`: local builders and folders as they are, a hub
        dataset from the hub or, offline, from its cached snapshot (`krony.hub`). Resolved once
        and kept when the source is sent to dataloader workers."""
        if self._location is None:
            if self.is_local:
                self._location = (self.path, None)
            elif Path(self.path).expanduser().is_dir():  # a local copy laid out like the hub dataset
                self._location = (str(Path(self.path).expanduser()), None)
            else:
                from krony.hub import dataset_location

                self._location = dataset_location(self.path, self.revision)
        return self._location

    def local_files(self) -> list[str]:
        """The local files this source reads, globs expanded; ValueError if any is missing."""
        patterns = [self.data_files] if isinstance(self.data_files, str) else list(self.data_files or [])
        if not patterns:
            raise ValueError(f"data.source.data_files is empty: the {self.path!r} builder needs local files")
        files = []
        for pattern in patterns:
            matched = sorted(glob.glob(str(Path(pattern).expanduser())))
            if not matched:
                raise ValueError(f"data.source.data_files: no file matches {pattern!r}")
            files += matched
        return files

    def dataset(self):
        """The `datasets.IterableDataset` (built once per process)."""
        if self._ds is None:
            import datasets

            kwargs: dict[str, Any] = dict(split=self.split, streaming=True, **self.builder_kwargs)
            path, revision = self.location()
            if self.is_local:
                kwargs["data_files"] = self.local_files()
                if self.path in ("text", "json"):
                    kwargs["encoding"] = self.encoding
                if self.path == "text":
                    kwargs["sample_by"] = self.sample_by
                    kwargs.setdefault("encoding_errors", "replace")  # invalid UTF-8 becomes U+FFFD, counted downstream
            else:
                kwargs.update(name=self.name, revision=revision, data_files=self.data_files)
            try:
                ds = datasets.load_dataset(path, **kwargs)
            except (ConnectionError, OSError, FileNotFoundError, ValueError) as e:
                where = "local files" if self.is_local else f"dataset {self.describe()}"
                raise ValueError(
                    f"could not open the {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}. "
                    f"Offline, use local files (data=local, data.source.data_files=...) or a prepared memmap (data=memmap)."
                ) from e
            if self.expected_files is not None and ds.num_shards != self.expected_files:
                raise ValueError(
                    f"{self.path!r} resolved to {ds.num_shards} files, expected {self.expected_files} "
                    f"(data.source.expected_files); check data.source.revision / data_files"
                )
            self._ds = ds
        return self._ds

    @property
    def num_files(self) -> int:
        return self.dataset().num_shards

    def iter_file(self, index: int) -> Iterator[str]:
        """The documents of file `index`, in file order. A read that fails mid-file is retried
        `retries` times with growing waits, resuming after the documents already yielded."""
        done, failures = 0, 0
        while True:
            try:
                for j, text in enumerate(self._read_file(index)):
                    if j >= done:
                        done += 1
                        yield text
                return
            except (OSError, ConnectionError, TimeoutError) as e:
                failures += 1
                if failures > self.retries:
                    raise RuntimeError(
                        f"file {index} of {self.path!r} failed {failures} times (last: {type(e).__name__}: {e}) after "
                        f"{done} documents; check the network or storage, or raise data.source.retries"
                    ) from e
                wait = self.retry_wait * 2 ** (failures - 1)
                log.warning("file %d of %r failed after %d documents (%s: %s); retry %d of %d in %.0f s",
                            index, self.path, done, type(e).__name__, e, failures, self.retries, wait)
                time.sleep(wait)

    def _read_file(self, index: int) -> Iterator[str]:
        ds = self.dataset()
        part = ds.shard(num_shards=ds.num_shards, index=index) if ds.num_shards > 1 else ds
        # .iter() rather than iterating the dataset: inside a dataloader worker, datasets would
        # otherwise split files among workers itself, and the sharding here is ours
        for batch in part.iter(batch_size=256):
            if self.text_field not in batch:
                raise ValueError(f"data.source.text_field={self.text_field!r} is not a column; columns: {sorted(batch)}")
            yield from batch[self.text_field]

    def __getstate__(self) -> dict[str, Any]:  # dataloader workers rebuild the dataset themselves
        state = dict(self.__dict__)
        state["_ds"] = None
        return state


def check_data(mode: str = "stream", memmap_dir: str | None = None, source: Any = None, block_size: int = 1024,
               batch_size: int = 8, num_workers: int = 0, val_fraction: float | None = None) -> None:
    """`ConfigError` (named "data.<key>") for arguments the data module cannot work with."""
    from krony.config import ConfigError, check_choice

    check_choice("data.mode", mode, MODES)
    if val_fraction is not None and (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
                                     or not 0 < val_fraction <= 0.5):
        raise ConfigError("data.val_fraction", val_fraction, "must be a share of the text in (0, 0.5], e.g. 0.01, "
                          "or null to hold out data.val_documents whole documents")
    for key, value, low in (("block_size", block_size, 1), ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"data.{key}", value, f"must be an integer >= {low}")
    if mode == "memmap" and not memmap_dir:
        raise ConfigError("data.memmap_dir", memmap_dir, "required for data.mode=memmap (python -m krony.data prepare)")
    if mode == "stream" and source is None:
        raise ConfigError("data.source", None, "required for data.mode=stream (see conf/data/owt.yaml)")


__all__ = ["LOCAL_BUILDERS", "MODES", "TextSource", "check_data", "count_documents", "file_problem", "sample_path"]
