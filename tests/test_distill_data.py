"""The streaming dataset: determinism, worker/rank splitting without loss or duplication, resume, grouping."""
import collections

import pytest

from distill.data import ShardStream, make_loader
from pipelines.errors import DistilleryError
from pipelines.resources import minilm_path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from conftest import word_store

    return word_store(tmp_path_factory.mktemp("store"), rows=103, stride=7, chunk_rows=17).shard_paths("d")


def stream(shards, **kw):
    args = dict(batch_size=4, seed=3, shuffle_buffer=20, group_batches=3, label2id={"l0": 0, "l1": 1, "l2": 2})
    args.update(kw)
    return ShardStream(shards, minilm_path(), **args)


def row_ids(loader):
    return [batch["row_id"].tolist() for batch in loader]


def test_global_order_is_deterministic_shuffled_and_complete(shards):
    a = [[r["row_id"] for r in b] for b in stream(shards).global_batches(0)]
    b = [[r["row_id"] for r in b] for b in stream(shards).global_batches(0)]
    c = [[r["row_id"] for r in b] for b in stream(shards).global_batches(1)]
    flat = [i for batch in a for i in batch]
    assert a == b and a != c
    assert sorted(flat) == list(range(103)) and flat != sorted(flat)
    assert len(a) == stream(shards).num_batches == 26
    assert [len(x) for x in a[:-1]] == [4] * 25 and len(a[-1]) == 3   # only the last batch is short


def test_length_grouping_cuts_padding(shards):
    grouped = stream(shards, group_batches=5)
    plain = stream(shards, group_batches=1)

    def padded(s):
        return sum(len(b) * max(len(r["input_ids"]) for r in b) for b in s.global_batches(0))

    assert padded(grouped) < padded(plain)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("world_size,workers", [(1, 0), (1, 2), (2, 1), (3, 2), (2, 3)])
def test_split_over_ranks_and_workers_loses_and_duplicates_nothing(shards, world_size, workers):
    reference = [[r["row_id"] for r in b] for b in stream(shards).global_batches(0)]
    seen = []
    for rank in range(world_size):
        s = stream(shards, rank=rank, world_size=world_size)
        got = row_ids(make_loader(s, num_workers=workers))
        # a rank sees global batches rank, rank + W, ... in order, whatever the worker count
        assert got == reference[rank::world_size]
        assert len(got) == s.local_batches()
        seen += [i for b in got for i in b]
    assert collections.Counter(seen) == collections.Counter(range(103))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_position_continues_exactly(shards, workers):
    s = stream(shards, world_size=2, rank=1)
    full = row_ids(make_loader(s, workers))
    s.set_state(0, position=8)                  # 8 global batches consumed = 4 of this rank's
    assert row_ids(make_loader(s, workers)) == full[4:]
    s.set_state(0, position=9)                  # odd position: rank 1's batch 4 (global 9) is next
    assert row_ids(make_loader(s, workers)) == full[4:]


def test_batches_are_tokenised_with_labels(shards):
    batch = next(iter(make_loader(stream(shards, shuffle=False), 0)))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "row_id"}
    assert batch["row_id"].tolist() == [0, 1, 2, 3]
    assert batch["labels"].tolist() == [0, 1, 2, 0]
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"][0, 0].item() == 101    # [CLS]
    unknown = stream(shards, shuffle=False, label2id={"l1": 0})
    assert next(iter(make_loader(unknown, 0)))["labels"].tolist() == [-100, 0, -100, -100]


@pytest.mark.parametrize("workers", [0, 1])
def test_epoch_loaders_prefetch_the_next_epoch_without_changing_it(shards, workers):
    from distill.data import EpochLoaders

    expected = [row_ids(make_loader(stream(shards), workers))]
    s = stream(shards)
    s.set_state(1)
    expected.append(row_ids(make_loader(s, workers)))
    s = stream(shards)
    loaders = EpochLoaders(s, workers)
    first = loaders.open(0)
    got0 = [next(first)["row_id"].tolist()]
    loaders.prefetch(1)                        # opened while epoch 0 is still being read
    got0 += [b["row_id"].tolist() for b in first]
    assert [got0, row_ids(loaders.open(1))] == expected
    assert row_ids(loaders.open(1, position=5)) == expected[1][5:]
    resumed = EpochLoaders(stream(shards), workers)
    rest = resumed.open(0, position=20)        # a resume near the end of epoch 0: the trainer opens it, then
    resumed.prefetch(1)                        # prefetches epoch 1 before it reads a batch (a bug until the
    assert row_ids(rest) == expected[0][20:]   # loader's workers were started when it was opened)


def taken(loader, n):
    """The first ``n`` batches' row ids, the iterator left open (a run stopped mid-epoch)."""
    iterator = iter(loader)
    return [next(iterator)["row_id"].tolist() for _ in range(n)]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers,world_size", [(0, 1), (2, 1), (2, 2)])
def test_stateful_dataloader_resumes_mid_epoch_with_the_next_batch(shards, workers, world_size):
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader(**kw):
        return StatefulDataLoader(stream(shards, world_size=world_size, **kw), batch_size=None, num_workers=workers)

    full = row_ids(loader())
    # with workers: stopped after an even and an odd number of batches (the next batch from worker 0, then 1)
    for stop in (4, 5) if workers else (0, 1, 5, len(full)):
        first = loader()
        head = taken(first, stop)
        state = first.state_dict()
        resumed = loader()
        resumed.load_state_dict(state)
        assert head + row_ids(resumed) == full, stop
    if not workers:
        other = loader(seed=4)
        other.load_state_dict(state)
        with pytest.raises(DistilleryError, match=r"another stream \(seed 3 != 4\)"):
            row_ids(other)


def test_plain_loop_resumes_from_the_stream_state_also_with_another_world_size(shards):
    full = row_ids(make_loader(stream(shards)))
    s = stream(shards)
    head = taken(make_loader(s), 6)
    state = s.state_dict()
    assert state == {"version": s.version, "epoch": 0, "position": 6, "seed": 3, "world_size": 1, "batch_size": 4,
                     "workers": 1}
    resumed = stream(shards)
    resumed.load_state_dict(state)
    assert head + row_ids(make_loader(resumed)) == full
    ranks = [stream(shards, rank=r, world_size=2) for r in (0, 1)]   # the position is in global batches
    for rank in ranks:
        rank.load_state_dict(state)
    rest = [row_ids(make_loader(rank)) for rank in ranks]
    assert [b for pair in zip(*rest) for b in pair] == full[6:]
    with pytest.raises(DistilleryError, match=r"another stream \(batch_size 4 != 5\)"):
        stream(shards, batch_size=5).load_state_dict(state)
    s.set_epoch(1)
    assert s.state_dict()["epoch"] == 1 and s.state_dict()["position"] == 0
