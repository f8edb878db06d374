"""The data pipeline on the OpenWebText sample: EOT, packing, determinism, shards, validation slice.

They run on the sample shipped in the package (`krony/data/samples/`), which is a copy of the
one in ../shared/data; only the check that the two are the same needs ../shared/data."""

import hashlib
from pathlib import Path

import pytest
import torch

from krony.data import MemmapBlocks, PackedBlocks, TextDataModule, TextSource, pack, prepare, sample_path
from krony.tokenizer import EOT, encode_document, gpt2_encoding

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "openwebtext-sample" / "openwebtext_sample.txt"
SAMPLE = sample_path()

BLOCK = 64
VAL_DOCS = 40


def source(**kw) -> TextSource:
    base = dict(path="text", name=None, revision=None, data_files=[SAMPLE], expected_files=None)
    return TextSource(**{**base, **kw})


def all_documents() -> list[str]:
    return list(source().iter_file(0))


def blocks(split="train", shard=0, num_shards=1, **kw) -> list[list[int]]:
    ds = PackedBlocks(source(), BLOCK, split=split, val_documents=VAL_DOCS, epochs=1, **kw)
    return list(ds.blocks(shard, num_shards))


@pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason="../shared/data is not present")
def test_shipped_sample_is_the_shared_one():
    assert hashlib.sha256(Path(sample_path()).read_bytes()).hexdigest() == hashlib.sha256(SHARED_SAMPLE.read_bytes()).hexdigest()


def test_tokenizer_is_gpt2_bpe_offline():
    enc = gpt2_encoding()
    assert enc.n_vocab == 50257 and enc.eot_token == EOT
    assert enc.encode_ordinary("Hello world") == [15496, 995]  # GPT-2's ids
    assert encode_document("Hello world") == [15496, 995, EOT]
    assert encode_document("a <|endoftext|> b")[:-1].count(EOT) == 0  # special text stays text


def test_eot_after_every_document_and_exact_packing():
    docs = all_documents()[VAL_DOCS:]
    stream = [t for d in docs for t in encode_document(d)]
    got = blocks(shuffle_buffer=0)
    assert all(len(b) == BLOCK + 1 for b in got)
    flat = [t for b in got for t in b]
    assert flat == stream[: len(flat)]  # consecutive pieces of the token stream, nothing lost in between
    assert len(stream) - len(flat) < BLOCK + 1  # only the incomplete tail is dropped
    assert flat.count(EOT) == sum(1 for i, t in enumerate(stream[: len(flat)]) if t == EOT)
    assert stream.count(EOT) == len(docs)


def test_pack_cuts_consecutive_pieces():
    assert list(pack([[1, 2, 3], [4], [5, 6, 7, 8]], 3)) == [[1, 2, 3], [4, 5, 6]]


def test_shuffle_is_deterministic_under_a_seed():
    a = blocks(shuffle_buffer=16, seed=1)
    assert a == blocks(shuffle_buffer=16, seed=1)
    assert a != blocks(shuffle_buffer=16, seed=2)
    assert sorted(a) == sorted(blocks(shuffle_buffer=0))  # a permutation of the same blocks


def test_shards_are_disjoint_and_cover_the_documents():
    ds = PackedBlocks(source(), BLOCK, val_documents=VAL_DOCS, epochs=1)
    parts = [list(ds.documents(k, 3)) for k in range(3)]
    train_docs = all_documents()[VAL_DOCS:]
    assert sorted(d for p in parts for d in p) == sorted(train_docs)
    assert sum(len(p) for p in parts) == len(train_docs)  # no document in two shards
    assert all(abs(len(p) - len(train_docs) / 3) <= 1 for p in parts)


def test_validation_slice_is_never_trained_on():
    docs = all_documents()
    val = list(PackedBlocks(source(), BLOCK, split="val", val_documents=VAL_DOCS).documents(0, 1))
    assert val == docs[:VAL_DOCS]
    train = list(PackedBlocks(source(), BLOCK, val_documents=VAL_DOCS).documents(0, 1))
    assert not set(val) & set(train) - set(docs[VAL_DOCS:])  # a val text only recurs where the same text is a train doc
    assert train == docs[VAL_DOCS:]
    v1, v2 = blocks("val"), blocks("val")
    assert v1 == v2 and len(v1) > 0


def test_worker_sharding_through_a_dataloader():
    ds = PackedBlocks(source(), BLOCK, val_documents=VAL_DOCS, shuffle_buffer=0, epochs=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    seen = [tuple(b.tolist()) for b in loader]
    by_worker = blocks(shard=0, num_shards=2, shuffle_buffer=0) + blocks(shard=1, num_shards=2, shuffle_buffer=0)
    assert sorted(seen) == sorted(tuple(b) for b in by_worker)


def test_too_little_text_for_a_shard_says_so():
    ds = PackedBlocks(source(), 10**6, val_documents=0)
    with pytest.raises(ValueError, match="got no training block"):
        next(iter(ds))


def test_memmap_serves_the_same_blocks(tmp_path):
    meta = prepare(source(), tmp_path, val_documents=VAL_DOCS, workers=2)
    train = MemmapBlocks(tmp_path, BLOCK, "train")
    assert [train[i].tolist() for i in range(len(train))] == blocks(shuffle_buffer=0)
    val = MemmapBlocks(tmp_path, BLOCK, "val")
    assert [val[i].tolist() for i in range(len(val))] == blocks("val")
    assert meta["train_tokens"] == sum(len(encode_document(d)) for d in all_documents()[VAL_DOCS:])


def test_datamodule_batches_and_errors(tmp_path):
    dm = TextDataModule(source(), block_size=BLOCK, batch_size=3, val_documents=VAL_DOCS)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (3, BLOCK + 1) and batch.dtype == torch.long
    assert next(iter(dm.val_dataloader())).shape == (3, BLOCK + 1)
    with pytest.raises(ValueError, match="data.mode='arrow': valid choices: stream, memmap"):
        TextDataModule(source(), mode="arrow")
    with pytest.raises(ValueError, match="run `python -m krony.data prepare"):
        TextDataModule(mode="memmap", memmap_dir=str(tmp_path), block_size=BLOCK).train_dataloader()
    with pytest.raises(ValueError, match="no file matches"):
        source(data_files=[str(tmp_path / "missing.txt")]).dataset()


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_jsonl_and_parquet_files_give_the_same_documents(tmp_path, fmt):
    docs = all_documents()[:50]
    if fmt == "json":
        import json

        path = tmp_path / "docs.jsonl"
        path.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "docs.parquet"
        pq.write_table(pa.table({"body": docs}), path)
    src = TextSource(path=fmt, name=None, revision=None, data_files=[str(path)], expected_files=None, text_field="body")
    assert list(src.iter_file(0)) == docs
    with pytest.raises(ValueError, match="text_field='text' is not a column; columns: \\['body'\\]"):
        list(TextSource(path=fmt, name=None, revision=None, data_files=[str(path)], expected_files=None).iter_file(0))
