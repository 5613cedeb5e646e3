"""Feeding external trainers: accelerate (its stateful DataLoader), Hugging Face Trainer and `datasets` streaming
resume mid-epoch with exactly the next batch."""
import itertools

import pytest
import torch
from torch import nn

from distill.data import ShardStream
from pipelines.resources import minilm_path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from conftest import word_store

    return word_store(tmp_path_factory.mktemp("store"), rows=40, stride=5, chunk_rows=10)


def stream(store):
    return ShardStream.from_store(store, "d", minilm_path(), batch_size=4, seed=1, shuffle_buffer=16, group_batches=2)


class Recorder(nn.Module):
    """A one-parameter model that records the rows it trains on."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.rows: list[list[int]] = []

    def forward(self, input_ids, row_id, **_):
        self.rows.append(row_id.tolist())
        return {"loss": ((self.weight - input_ids.float().mean() / 1000) ** 2).sum()}


def accelerate_run(store, steps, folder, resume=False):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration
    from torch.utils.data import DataLoader

    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True))
    model = Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(stream(store), batch_size=None))
    if resume:
        accelerator.load_state(folder)
    for batch in itertools.islice(loader, steps):
        accelerator.backward(model(**batch)["loss"])
        optimizer.step()
        optimizer.zero_grad()
    accelerator.save_state(folder)
    return model.rows


def test_accelerate_checkpoint_resumes_with_the_next_batch(store, tmp_path):
    full = accelerate_run(store, 100, tmp_path / "full")
    assert len(full) == 10
    head = accelerate_run(store, 4, tmp_path / "ckpt")
    assert head + accelerate_run(store, 100, tmp_path / "ckpt", resume=True) == full


def first_item(items):
    """The stream yields whole batches: the Trainer's DataLoader (batch size 1) hands over one at a time."""
    return items[0]


def hf_trainer_rows(store, folder, resume=False):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(folder, max_steps=6, save_steps=3, per_device_train_batch_size=1, learning_rate=0.1,
                             report_to=[], use_cpu=True, logging_steps=100, dataloader_num_workers=0)
    model = Recorder()
    Trainer(model, args, train_dataset=stream(store), data_collator=first_item).train(
        resume_from_checkpoint=str(folder / "checkpoint-3") if resume else None)
    return model.rows


@pytest.mark.filterwarnings("ignore")
def test_hf_trainer_resumes_with_the_next_batch(store, tmp_path):
    full = hf_trainer_rows(store, tmp_path)
    assert len(full) == 6
    assert hf_trainer_rows(store, tmp_path, resume=True) == full[3:]


def test_datasets_streaming_one_liner_resumes_from_its_state_dict(store):
    import datasets

    def version():     # the README's one-liner
        return datasets.load_dataset("parquet", data_files=[str(p) for p in store.shard_paths("d")], split="train",
                                     streaming=True)

    full = [row["row_id"] for row in version()]
    assert full == list(range(40))
    first = version()
    head = []
    for row in first:
        head.append(row["row_id"])
        if len(head) == 13:
            break
    state = first.state_dict()
    resumed = version()
    resumed.load_state_dict(state)
    assert head + [row["row_id"] for row in resumed] == full
