"""Bad text and failing reads never crash the pipeline, and a resumed stream continues exactly."""

import itertools
import json

import pytest
import torch

from krony.data import PackedBlocks, TextSource
from krony.data.datamodule import RankSlice
from krony.data.memmap import EndlessShuffle
from krony.data.stream import resume_position, split_text

GOOD = "The quick brown fox jumps over the lazy dog. " * 20


def jsonl(tmp_path, rows) -> TextSource:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return TextSource(path="json", name=None, revision=None, data_files=[str(path)], expected_files=None)


def test_empty_blank_null_and_non_text_documents_are_skipped_and_counted(tmp_path):
    src = jsonl(tmp_path, [{"text": GOOD}, {"text": ""}, {"text": "  \n "}, {"text": None}, {"text": GOOD}])
    ds = PackedBlocks(src, 32, val_documents=0, shuffle_buffer=0, epochs=1)
    assert len(list(ds.blocks(0, 1))) > 0
    assert ds.stats.counts["empty"] == 3 and ds.stats.documents == 5


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(GOOD.encode() + b"\n\nbroken \xff\xfe bytes " + GOOD.encode() + b"\n\n" + GOOD.encode() + b"\n")
    src = TextSource(path="text", name=None, revision=None, data_files=[str(path)], expected_files=None)
    ds = PackedBlocks(src, 32, val_documents=0, shuffle_buffer=0, epochs=1)
    blocks = list(ds.blocks(0, 1))
    assert blocks and ds.stats.counts["invalid_utf8"] == 1 and ds.stats.documents == 3


def test_documents_far_longer_than_the_context_are_split_and_huge_ones_read_in_pieces(tmp_path):
    src = jsonl(tmp_path, [{"text": GOOD * 50}, {"text": GOOD}])
    ds = PackedBlocks(src, 16, val_documents=0, shuffle_buffer=0, epochs=1)
    whole = list(ds.blocks(0, 1))
    assert len(whole) > 500 and ds.stats.counts["long"] == 2
    # a document over max_document_chars is tokenised in pieces (at whitespace): none of its text is lost
    pieces = PackedBlocks(src, 16, val_documents=0, shuffle_buffer=0, epochs=1, max_document_chars=1000)
    split = list(pieces.blocks(0, 1))
    assert pieces.stats.counts["split"] == 1 and abs(len(split) - len(whole)) <= 3  # an EOT between pieces
    parts = list(split_text(GOOD * 50, 1000))
    assert "".join(parts) == GOOD * 50 and all(len(part) <= 1000 for part in parts)
    assert all(part.startswith(" ") for part in parts[1:])  # each cut falls on a space: no word in two


def test_a_share_of_every_document_of_the_first_file_can_be_the_validation_split(tmp_path):
    text = " ".join(f"word{i}" for i in range(5000))
    path = tmp_path / "one.txt"
    path.write_text(text + "\n")  # one document
    src = TextSource(path="text", name=None, revision=None, data_files=[str(path)], expected_files=None)
    kw = dict(val_documents=100, shuffle_buffer=0, epochs=1, val_fraction=0.1)
    val = PackedBlocks(src, 16, split="val", **kw)
    train = PackedBlocks(src, 16, split="train", **kw)
    held, rest = list(val.documents(0, 1)), list(train.documents(0, 1))
    assert held[0] + rest[0] == text + "\n" and 0.09 < len(held[0]) / len(text) < 0.11  # disjoint, nothing lost
    assert held[0].endswith("word" + held[0].rsplit("word", 1)[1]) and rest[0].startswith(" ")  # cut between words
    assert list(val.blocks(0, 1)) and list(train.blocks(0, 1))


def flaky(monkeypatch, src: TextSource, fail_after: int, times: int):
    """Make the file read raise OSError after `fail_after` documents, `times` times."""
    real = TextSource._read_file
    state = {"failures": 0}
    waits = []

    def read(self, index):
        for j, doc in enumerate(real(self, index)):
            if j == fail_after and state["failures"] < times:
                state["failures"] += 1
                raise ConnectionError("connection reset by peer")
            yield doc

    monkeypatch.setattr(TextSource, "_read_file", read)
    monkeypatch.setattr("krony.data.sources.time.sleep", waits.append)
    return waits


def test_a_file_failing_mid_stream_is_retried_with_backoff_and_loses_nothing(tmp_path, monkeypatch):
    rows = [{"text": f"document {i} " + GOOD} for i in range(20)]
    src = jsonl(tmp_path, rows)
    waits = flaky(monkeypatch, src, fail_after=7, times=2)
    docs = list(src.iter_file(0))
    assert docs == [r["text"] for r in rows]  # every document once, in order
    assert waits == [2.0, 4.0]


def test_a_file_that_keeps_failing_stops_with_a_clear_error(tmp_path, monkeypatch):
    src = jsonl(tmp_path, [{"text": GOOD}] * 10)
    src.retries = 3
    waits = flaky(monkeypatch, src, fail_after=4, times=99)
    with pytest.raises(RuntimeError, match="file 0 of 'json' failed 4 times .*ConnectionError.* after 4 documents"):
        list(src.iter_file(0))
    assert waits == [2.0, 4.0, 8.0]


@pytest.mark.parametrize("workers,done", [(0, 3), (2, 5), (3, 7)])
def test_resumed_stream_continues_with_the_next_batch(tmp_path, workers, done):
    src = jsonl(tmp_path, [{"text": f"document {i} " + GOOD} for i in range(60)])
    kw = dict(val_documents=0, shuffle_buffer=8, seed=3)

    def loader(resume=None):
        ds = PackedBlocks(src, 16, resume=resume, **kw)
        return torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers)

    whole = [b for b in itertools.islice(loader(), done + 6)]
    resumed = [b for b in itertools.islice(loader(resume_position(done, 2, workers)), 6)]
    for a, b in zip(whole[done:], resumed):
        assert torch.equal(a, b)


def test_memmap_order_resumes_exactly_and_ranks_are_disjoint():
    whole = list(itertools.islice(iter(EndlessShuffle(10, seed=1)), 25))
    assert sorted(whole[:10]) == list(range(10)) and whole[:10] != whole[10:20]  # a new permutation per epoch
    assert list(itertools.islice(iter(EndlessShuffle(10, seed=1, start=13)), 12)) == whole[13:25]
    ranks = [list(itertools.islice(iter(RankSlice(EndlessShuffle(10, 1), r, 2, 2)), 6)) for r in (0, 1)]
    assert ranks[0] == whole[0:2] + whole[4:6] + whole[8:10] and ranks[1] == whole[2:4] + whole[6:8] + whole[10:12]
