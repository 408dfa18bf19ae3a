"""Determinism: a run interrupted and resumed ends with exactly the weights of an uninterrupted run (CPU).

What makes it hold: the data order, crops and flips are a pure function of (seed, epoch, index) and the
loader's position is in the checkpoint (``rockgen.data.sampler``); t, the noise and dropout come from a
generator re-seeded each step from (seed, rank, step) (``rockgen.callbacks.StepSeed``). On CPU with a fixed
thread count the result is bit-identical; GPUs add non-deterministic kernels (``trainer.deterministic=true``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config
from test_ddp import one_thread

from rockgen.data.sampler import EpochSampler, ResumableLoader
from rockgen.data.tiles import TileDataset
from rockgen.tasks.train import train

# 27 training tiles and a global batch of 4: 6 steps per epoch, so step 4 is mid-epoch and step 6 its end.
# Validation runs after step 4 in the whole run but not in the run resumed from step 4: it must not matter.
RUN = [
    *TINY,
    "trainer.max_steps=8",
    "trainer.val_check_interval=4",
    "callbacks.checkpoint.every_n_train_steps=2",
    "trainer.enable_progress_bar=false",
]


def state(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {"weights": ckpt["state_dict"], "adam": ckpt["optimizer_states"][0]["state"], "step": ckpt["global_step"]}


def assert_identical(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["weights"].keys() == b["weights"].keys()
    for name in a["weights"]:
        assert torch.equal(a["weights"][name], b["weights"][name]), f"{name} differs"
    for i in a["adam"]:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(a["adam"][i][key], b["adam"][i][key]), f"Adam {key} of parameter {i} differs"


@pytest.mark.slow
@pytest.mark.usefixtures(one_thread.__name__)
def test_interrupted_and_resumed_runs_end_with_the_same_weights(tmp_path):
    whole = tmp_path / "whole"
    out = train(compose_config(RUN, whole))
    assert out["trainer"].num_training_batches == 6
    reference = state(whole / "checkpoints" / "last.ckpt")
    # resume from what a kill -9 would leave: the periodic checkpoint of step 4 (mid-epoch) and of step 6
    # (the epoch's last batch), each in a fresh run directory
    for step in (4, 6):
        resumed = tmp_path / f"from{step}"
        ckpt = whole / "checkpoints" / f"step{step:07d}.ckpt"
        train(compose_config([*RUN, f"ckpt_path={ckpt}"], resumed))
        assert_identical(state(resumed / "checkpoints" / "last.ckpt"), reference)


def test_training_order_depends_on_seed_and_epoch_only_and_not_on_world_size():
    data = list(range(27))

    def global_batches(world: int, epoch: int, seed: int = 0, batch: int = 4) -> list[set[int]]:
        shards = []
        for rank in range(world):
            sampler = EpochSampler(data, num_replicas=world, rank=rank, seed=seed)
            sampler.set_epoch(epoch)
            order = [i for i, _ in sampler]
            shards.append([order[k : k + batch // world] for k in range(0, len(order), batch // world)])
        return [set().union(*step) for step in zip(*shards, strict=False) if len(step[0]) == batch // world][:6]

    one = global_batches(1, epoch=0)
    assert one == global_batches(2, epoch=0) == global_batches(4, epoch=0)
    assert len(one) == 6 and all(len(b) == 4 for b in one)
    assert one != global_batches(1, epoch=1) and one != global_batches(1, epoch=0, seed=1)
    assert one == global_batches(1, epoch=0)  # no hidden state: the same again


def test_resumed_sampler_continues_after_the_consumed_samples():
    data = list(range(27))
    full = list(EpochSampler(data, seed=3))
    sampler = EpochSampler(data, seed=3)
    sampler.resume(epoch=0, samples=8)
    assert list(sampler) == full[8:]
    assert list(sampler) == full  # the skip applies to one iteration only
    sampler.resume(epoch=2, samples=24, min_remaining=4)  # saved on the epoch's last full batch of 4
    assert sampler.epoch == 3 and len(list(sampler)) == len(full)
    sampler.resume(epoch=0, samples=8)
    sampler.set_epoch(1)  # the loop moved on: the skip belonged to epoch 0
    assert len(list(sampler)) == len(full)
    # two ranks resuming what one rank consumed (global samples, so the world size may change)
    halves = [EpochSampler(data, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for h in halves:
        h.resume(epoch=0, samples=8)
    rest = [i for pair in zip(*[list(h) for h in halves], strict=False) for i in pair]
    assert [i for i, _ in rest] == [i for i, _ in full[8 : 8 + len(rest)]]


def test_loader_state_round_trips_through_a_checkpoint():
    data = list(range(27))
    loader = ResumableLoader(data, batch_size=2, sampler=EpochSampler(data, num_replicas=2, rank=0, seed=5))
    loader.sampler.set_epoch(1)
    loader.consumed_batches = lambda: 3
    saved = loader.state_dict()
    assert saved == {"epoch": 1, "samples": 12, "seed": 5, "dataset_len": 27}
    fresh = ResumableLoader(data, batch_size=4, sampler=EpochSampler(data, seed=5))  # now one rank
    fresh.load_state_dict(saved)
    assert fresh.sampler.epoch == 1
    reference = EpochSampler(data, seed=5)
    reference.set_epoch(1)
    assert list(fresh.sampler) == list(reference)[12:]


def test_random_crops_and_flips_are_a_function_of_the_item_seed(tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "rock.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    ds = TileDataset([path], 16, mode="random_crop", augment={"hflip": True, "vflip": True, "rot90": True})
    first = ds[(0, 1234)]["img"]
    torch.manual_seed(99)  # the global generator (and the worker a sample lands on) does not matter
    assert torch.equal(ds[(0, 1234)]["img"], first)
    assert any(not torch.equal(ds[(0, s)]["img"], first) for s in range(5))
    assert ds[(0, 1234)]["index"] == 0
