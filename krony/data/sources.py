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
SAMPLES_DIR = Path(__file__).parent / "samples"


def sample_path(name: str = "openwebtext_sample.txt") -> str:
    """Absolute path of a text sample shipped with krony (see `krony/data/samples/README.md`)."""
    path = SAMPLES_DIR / name
    if not path.exists():
        raise ValueError(f"no shipped sample {name!r}; available: {sorted(p.name for p in SAMPLES_DIR.glob('*.txt'))}")
    return str(path)


@dataclass
class TextSource:
    """A streamed text dataset.

    OpenWebText defaults (DESIGN section 5): the parquet copy of `Skylion007/openwebtext`
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

    def __post_init__(self) -> None:
        self._ds = None

    @property
    def is_local(self) -> bool:
        return self.path in LOCAL_BUILDERS

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
            if self.is_local:
                kwargs["data_files"] = self.local_files()
                if self.path == "text":
                    kwargs["sample_by"] = self.sample_by
                    kwargs.setdefault("encoding_errors", "replace")  # invalid UTF-8 becomes U+FFFD, counted downstream
            else:
                kwargs.update(name=self.name, revision=self.revision, data_files=self.data_files)
            try:
                ds = datasets.load_dataset(self.path, **kwargs)
            except (ConnectionError, OSError, FileNotFoundError, ValueError) as e:
                where = "local files" if self.is_local else f"hub dataset {self.path!r} at revision {self.revision}"
                raise ValueError(
                    f"could not open the {where}: {e}. Offline, use local files (data=local, "
                    f"data.source.data_files=...) or a prepared memmap (data=memmap)."
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


__all__ = ["LOCAL_BUILDERS", "TextSource", "sample_path"]
