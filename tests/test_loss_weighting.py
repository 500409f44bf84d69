"""The loss of a global batch is the mean over its target tokens, whatever the micro-batch split
(issue 14), and fp16 with dynamic loss scaling skips an overflowing step and backs the scale off."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pretrain.core.config import from_dict
from tests.train_helpers import tiny_config_dict, write_arith_shards
from trainer.callbacks import Callback
from trainer.config import TrainConfig
from trainer.train import Trainer, train


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_arith_shards(tmp_path_factory.mktemp("lw") / "tok")


def _grads(trainer: Trainer, batch: dict, span) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.optimizer.zero_grad(set_to_none=True)
    loss, _ = trainer._forward_backward(batch, span)
    return float(loss), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def test_unequal_micro_batches_give_the_un_split_gradient(shards, tmp_path):
    """8 rows whose valid targets range from 1 to 16: one micro-batch of 8, four of 2 and eight of
    1 give the same loss and gradients (1e-6); the old mean of micro-batch means does not."""
    trainer = Trainer(from_dict(TrainConfig, tiny_config_dict(shards, tmp_path / "r", grad_clip=0.0)))
    try:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, 500, (8, 16), generator=g)
        labels = torch.randint(1, 500, (8, 16), generator=g)
        for row in range(8):  # row r keeps 2r+1 targets (the last row all 16)
            labels[row, : max(0, 15 - 2 * row)] = -100
        batch = {"input_ids": ids, "labels": labels}
        span = trainer.timeline.spans[0]
        whole_loss, whole = _grads(
            trainer, batch, dataclasses.replace(span, micro_batch=8, grad_accum_steps=1)
        )
        expected = torch.nn.functional.cross_entropy(
            trainer.model(ids).flatten(0, 1), labels.flatten(), ignore_index=-100
        )
        assert whole_loss == pytest.approx(float(expected.detach()), rel=1e-6)
        for mb, accum in ((2, 4), (1, 8)):
            loss, split = _grads(
                trainer, batch, dataclasses.replace(span, micro_batch=mb, grad_accum_steps=accum)
            )
            assert loss == pytest.approx(whole_loss, rel=1e-6)
            for name, grad in whole.items():
                torch.testing.assert_close(split[name], grad, rtol=1e-6, atol=1e-7, msg=name)
        # the weighting a per-micro-batch mean gives (each micro-batch counts the same) is far off
        trainer.optimizer.zero_grad(set_to_none=True)
        for m in range(4):
            _, loss = trainer.model(ids[2 * m : 2 * m + 2], labels[2 * m : 2 * m + 2])
            (loss / 4).backward()
        diff = max(
            float((p.grad - whole[n]).abs().max() / whole[n].abs().max())
            for n, p in trainer.model.named_parameters()
        )
        assert diff > 1e-2
    finally:
        trainer.close()


class InfGrad(Callback):
    """Makes one parameter's gradient inf in the backward of step `step` (an fp16 overflow)."""

    def __init__(self, step: int):
        self.step, self.handle = step, None

    def pre_step(self, trainer, step, batch):
        if step == self.step:
            weight = trainer.model.layers["0"].mlp.up_proj.weight
            self.handle = weight.register_hook(lambda g: g * float("inf"))

    def post_step(self, trainer, step, metrics):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def test_fp16_overflow_is_skipped_counted_and_the_scale_halves(shards, tmp_path):
    run = tmp_path / "fp16"
    params_before = {}

    class Snapshot(Callback):
        def pre_optim_step(self, trainer, step, metrics):
            if step == 3:
                params_before.update({n: p.detach().clone() for n, p in trainer.model.named_parameters()})

        def post_step(self, trainer, step, metrics):
            if step == 3:  # the skipped step left every weight as it was
                for n, p in trainer.model.named_parameters():
                    assert torch.equal(p.detach(), params_before[n]), n

    summary = train(
        from_dict(TrainConfig, tiny_config_dict(shards, run, precision="fp16")),
        callbacks=[InfGrad(3), Snapshot()],
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["skipped_steps"] == 1
    assert [r["skipped"] for r in rows] == [False] * 3 + ["overflow"] + [False] * 8
    assert [r["loss_scale"] for r in rows] == [2.0**16] * 4 + [2.0**15] * 8
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
