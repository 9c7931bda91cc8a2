"""finetune.loss_logits=response (pipeline/train/response_logits.py): the training loss from the
logits of counted positions only is transformers' loss, with its gradients; `auto` uses it on a
CPU under bf16 mixed precision only, and fp32 keys stay as they were."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.models.devices import resolve_precision
from pipeline.stages import finetune
from pipeline.store.store import Store
from pipeline.train.noise_kinds.r3f import symmetric_kl
from pipeline.train.response_logits import ResponseLogits, counted_positions
from tests.support.composed import SMOKE, composed
from tests.support.tiny import tiny_llama


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(1, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding at the end of row 1
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[1, 9:] = -100
    labels[2, :8] = -100  # a longer prompt
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_the_response_loss_and_its_gradients_are_transformers_own():
    batch = _batch()
    n = int(counted_positions(batch["labels"]).sum())
    assert n == int(batch["labels"][:, 1:].ne(-100).sum())
    model = tiny_llama()
    full = model(**batch, num_items_in_batch=torch.tensor(n)).loss
    full.backward()
    expected = _grads(model)
    model.zero_grad()

    selector = ResponseLogits(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with selector.selecting(batch["labels"]):
        outputs = model(**inputs)
    assert outputs.logits.shape == (n, 100)  # the output layer saw the counted rows only
    loss = ResponseLogits.loss(outputs, batch["labels"], num_items_in_batch=torch.tensor(n))
    loss.backward()
    assert loss.item() == pytest.approx(full.item(), rel=1e-6)
    for got, want in zip(_grads(model), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)

    # Outside `selecting` (the clean-loss forward, evaluation) the model is untouched, and the
    # loss function takes its full logits alike.
    again = model(**inputs)
    assert again.logits.shape == (3, 12, 100)
    assert ResponseLogits.loss(again, batch["labels"]).item() == pytest.approx(
        model(**batch).loss.item(), rel=1e-6
    )
    selector.remove()
    with selector.selecting(batch["labels"]):
        assert model(**inputs).logits.shape == (3, 12, 100)  # removed: no rows selected


def test_r3f_reads_the_same_kl_from_the_counted_rows():
    batch = _batch()
    torch.manual_seed(2)
    clean, noised = torch.randn(3, 12, 100), torch.randn(3, 12, 100)
    rows = counted_positions(batch["labels"])
    full = symmetric_kl(clean, noised, batch["labels"])
    assert symmetric_kl(clean[rows], noised[rows], None).item() == pytest.approx(full.item())


@pytest.mark.parametrize(
    "device,native,setting,expected",
    [
        ("cpu", True, "auto", "response"),  # bf16 autocast on a bf16 CPU: measured 1.2x a step
        ("cpu", False, "auto", "all"),  # fp32: the bits (and keys) of before
        ("cuda", True, "auto", "all"),  # the GPU path: as it was
        ("cpu", False, "response", "response"),  # asked for: wherever
        ("cpu", True, "all", "all"),
    ],
)
def test_auto_selects_response_logits_on_a_bf16_cpu_only(device, native, setting, expected):
    cfg = composed(f"finetune.loss_logits={setting}")
    resolve_precision(cfg, device, bf16=native)
    assert str(cfg.finetune.loss_logits) == expected


def _finetune_key(*overrides, device="cpu", native=False):
    from pipeline.plan import arm_specs

    cfg = composed(*overrides)
    resolve_precision(cfg, device, bf16=native)
    return finetune.key_of(cfg, arm_specs(cfg)[0])


def test_response_logits_enter_the_key_and_all_keeps_the_key_of_before():
    assert _finetune_key("finetune.loss_logits=all") == _finetune_key()  # fp32: as before
    bf16_all = _finetune_key("finetune.loss_logits=all", native=True)
    assert _finetune_key(native=True) != bf16_all  # auto there: response, its own key


def _trained(tmp_path, setting: str, noise: dict, *overrides: str):
    cfg = composed(
        *SMOKE,
        *overrides,
        "model.dtype=bfloat16",
        "finetune.bf16=true",
        "finetune.max_steps=3",
        f"finetune.loss_logits={setting}",
    )
    resolve_precision(cfg, "cpu", bf16=True)
    store = Store(tmp_path / setting / "store")
    train_cfg = OmegaConf.merge(cfg.finetune, {"seed": 0})
    result = finetune.finetune(
        cfg.model, cfg.data, OmegaConf.create(noise), train_cfg, store, store, []
    )
    return result.metrics


@pytest.mark.parametrize(
    "noise,overrides",
    [
        ({"kind": "none", "alpha": 0.0, "length": "per_example"}, []),
        ({"kind": "r3f", "alpha": 0.0, "length": "per_example"}, []),  # reads logits: its KL
        ({"kind": "uniform", "alpha": 5.0, "length": "per_example"}, ["finetune=lora_tiny"]),
    ],
    ids=["base", "r3f", "neftune-lora"],
)
def test_a_bf16_finetune_trains_alike_from_response_logits(tmp_path, monkeypatch, noise, overrides):
    """The tiny model, three steps under bf16 autocast: the same losses from either logits (to
    bf16's rounding), and the response run computed its loss from the counted rows."""
    rows = []
    real = ResponseLogits.loss

    def spy(outputs, labels, num_items_in_batch=None):
        rows.append(outputs.logits.dim())
        return real(outputs, labels, num_items_in_batch)

    monkeypatch.setattr(ResponseLogits, "loss", staticmethod(spy))
    response = _trained(tmp_path, "response", noise, *overrides)
    assert rows and set(rows) == {2}
    rows.clear()
    every = _trained(tmp_path, "all", noise, *overrides)
    assert not rows  # transformers' own loss
    assert response["train_loss"] == pytest.approx(every["train_loss"], rel=2e-3)
