"""The shard files are written and read by the ``webdataset`` package; what it cannot do (equal
per-rank sample counts and an epoch plan that a resumed run can replay) stays ours."""

from __future__ import annotations

import hashlib

import webdataset as wds

from tasks.common.runtime.shards import ShardedDataset, ShardIndex, ShardWriter, read_segment

SAMPLES = [
    {
        "cls": str(i % 3).encode(),
        "jpeg": bytes(range(i, i + 40)) * (i + 1),
        "path": f"c/{i}".encode(),
    }
    for i in range(11)
]
# sha256 of the bytes the hand-written writer produced for SAMPLES (4 per shard): the same
# shard files and index, byte for byte
GOLDEN = {
    "index.json": "b3c5011af39cb6cc0a1ef60513c2b8f049b69fcd09ea06d104871d7e4c049916",
    "train-000000.tar": "45a5cec4eb44fec70b00f9ba5fc361a9e4a9cbc52687a8fd71fc58d5355aa3ec",
    "train-000001.tar": "f57e550d7116af3d17c8ffa6eadbca2943028cfef6640689aec3bcff209017a8",
    "train-000002.tar": "9e0835c2d722c9ca4e2307aad406cc1b7d62276843cd60b9b4ff911811c7ed30",
}


def _write(out) -> None:
    with ShardWriter(out, "train", samples_per_shard=4, meta={"task": "t"}) as writer:
        for sample in SAMPLES:
            writer.write(sample)


def test_shard_files_are_byte_identical_to_the_hand_written_writers(tmp_path):
    _write(tmp_path)
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert got == GOLDEN


def test_segments_read_back_the_written_samples(tmp_path):
    _write(tmp_path)
    index = ShardIndex.load(tmp_path)
    assert index.counts == [4, 4, 3]
    for shard, (url, offsets) in enumerate(zip(index.urls, index.offsets, strict=True)):
        for first in range(index.counts[shard]):
            for end in range(first, index.counts[shard] + 1):
                got = list(read_segment(url, offsets, first, end))
                want = SAMPLES[4 * shard + first : 4 * shard + end]
                assert [{k: v for k, v in s.items() if not k.startswith("__")} for s in got] == want
                assert [s["__key__"] for s in got] == [
                    f"{4 * shard + i:08d}" for i in range(first, end)
                ]


def test_webdataset_deals_whole_shards_to_ranks(tmp_path, monkeypatch):
    """Why the epoch plan stays ours: webdataset's ``split_by_node`` deals whole shards to the
    ranks, so 11 samples in shards of 4, 4, 3 give the 2 ranks 7 and 4 samples (DDP needs the
    same batch count on every rank, and a rank cannot start inside a shard); the plan gives each
    rank 6 (padded as DistributedSampler pads), the second starting inside shard 1."""
    _write(tmp_path)
    index = ShardIndex.load(tmp_path)
    theirs, ours = [], []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dataset = wds.WebDataset(
            index.urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False
        )
        theirs.append([s["__key__"] for s in dataset])
        mine = ShardedDataset(tmp_path, dict, batch_size=2, seed=0, rank=rank, world_size=2)
        ours.append([s["__key__"] for s in mine])
    assert [len(keys) for keys in theirs] == [7, 4]
    assert ours == [[f"{i:08d}" for i in range(6)], [f"{i:08d}" for i in (6, 7, 8, 9, 10, 0)]]


def test_webdataset_shard_shuffle_follows_iterations_not_epochs(tmp_path):
    """Its deterministic shard shuffle counts the iterations of one dataset object: a fresh
    object (a resumed process, or the copy each epoch's new workers receive) replays epoch 0's
    order, whatever the epoch; there is no ``set_epoch`` to give it."""
    with ShardWriter(tmp_path, "train", samples_per_shard=1) as writer:
        for sample in SAMPLES:
            writer.write(sample)
    urls = ShardIndex.load(tmp_path).urls

    def fresh():
        return wds.WebDataset(urls, shardshuffle=100, detshuffle=True, seed=5, empty_check=False)

    dataset = fresh()
    first, second = ([s["__key__"] for s in dataset] for _ in range(2))
    assert first != second and sorted(first) == sorted(second)
    assert [s["__key__"] for s in fresh()] == first
