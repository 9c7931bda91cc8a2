"""NEFTune's family as noise kinds (issue 31): FreeLB, R3F and NoisyTune, each against a
computation by hand on a tiny tensor or the tiny Llama (noise only in training, none on padding,
the right scale), and the finetune stage's Trainer asking each kind for every batch's loss
(passes counted, intermediate backward and per-token normalisation as the Trainer's own, a
resumed NoisyTune run not perturbed twice)."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file

from pipeline.stages import finetune
from pipeline.store.store import Store
from pipeline.train.noise import attach_neftune, noise_label, noise_params, weights_generator
from pipeline.train.noise_kinds.freelb import FreeLBSettings, ascent
from pipeline.train.noise_kinds.noisytune import perturbed
from pipeline.train.noise_kinds.r3f import symmetric_kl
from tests.support.composed import SMOKE, composed
from tests.support.tiny import D, captured_noise, tiny_llama

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
# Loss on the "responses" only: the first two tokens of each row are the prompt, padding -100.
LABELS = torch.tensor([[-100, -100, 7, 8, 9, 10], [-100, -100, 13, 14, -100, -100]])


def forward_of(model):
    """The `forward` the trainer gives NEFTuneHandle.training_loss: the loss (and outputs)."""

    def forward(outputs: bool = False):
        out = model(input_ids=IDS, attention_mask=MASK, labels=LABELS)
        return (out.loss, out) if outputs else out.loss

    return forward


def neftune_draw(generator, alpha: float) -> torch.Tensor:
    """NEFTune uniform by hand: U(-1, 1) * alpha / sqrt(L_i * d) on real tokens, 0 on padding."""
    eps = torch.zeros(*IDS.shape, D).uniform_(-1.0, 1.0, generator=generator)
    lengths = MASK.sum(dim=1, keepdim=True) * MASK
    scale = torch.where(lengths > 0, alpha / torch.sqrt(lengths.clamp(min=1) * D), 0.0)
    return eps * scale.unsqueeze(-1)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# --- FreeLB ------------------------------------------------------------------------------------


def test_freelb_ascent_is_the_normalised_gradient_times_the_step_size_projected_on_the_bound():
    delta = torch.tensor([[[0.3, -0.4], [0.0, 0.0]], [[1.0, 0.0], [0.5, 0.5]]])
    grad = torch.tensor([[[3.0, 4.0], [7.0, 7.0]], [[0.0, 2.0], [0.0, 0.0]]])
    tokens = torch.tensor([[1, 0], [1, 1]])  # row 0's second token is padding
    free = ascent(delta, grad, tokens, FreeLBSettings(steps=1, step_size=0.5, max_norm=0.0))
    # Row 0: g = (3, 4) on its one real token (padding's gradient dropped), ||g|| = 5.
    assert torch.allclose(free[0, 0], torch.tensor([0.3 + 0.5 * 3 / 5, -0.4 + 0.5 * 4 / 5]))
    assert torch.equal(free[0, 1], torch.zeros(2))  # padding never moves
    # Row 1: g = (0, 2), ||g|| = 2: one step of 0.5 along (0, 1).
    assert torch.allclose(free[1], torch.tensor([[1.0, 0.5], [0.5, 0.5]]))
    bounded = ascent(delta, grad, tokens, FreeLBSettings(steps=1, step_size=0.5, max_norm=1.0))
    norms = bounded.flatten(1).norm(dim=1)
    # Row 0 is within the bound (|| (0.6, 0) || = 0.6): kept; row 1 (norm sqrt(1.75)) is scaled
    # onto the sphere of radius 1, its direction kept.
    assert torch.allclose(bounded[0], free[0])
    assert math.isclose(norms[1].item(), 1.0, rel_tol=1e-6)
    assert torch.allclose(bounded[1], free[1] / math.sqrt(1.75), atol=1e-6)


def test_freelb_with_no_ascent_step_is_neftune_uniform_exactly():
    losses, weights = {}, {}
    for kind, settings in (("uniform", None), ("freelb", {"steps": 0})):
        model = tiny_llama()
        handle = attach_neftune(
            model, 5.0, kind, generator=torch.Generator().manual_seed(7), settings=settings
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        losses[kind] = []
        for _ in range(3):
            loss = handle.training_loss(forward_of(model))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[kind].append(loss.item())
        assert handle.passes_per_batch() == 1.0
        weights[kind] = [p.detach().clone() for p in model.parameters()]
    assert losses["uniform"] == losses["freelb"]
    assert all(torch.equal(a, b) for a, b in zip(weights["uniform"], weights["freelb"]))


def test_freelb_takes_k_plus_one_passes_from_neftunes_init_and_keeps_every_gradient():
    settings = {"steps": 2, "step_size": 0.3, "max_norm": 0.9}  # large: the steps really move
    model = tiny_llama()
    handle = attach_neftune(
        model, 5.0, "freelb", generator=torch.Generator().manual_seed(3), settings=settings
    )
    model.train()
    returned = handle.training_loss(forward_of(model))
    returned.backward()
    assert handle.passes_per_batch() == 3.0
    got = grads(model)

    # By hand (FreeLB's Algorithm 1, its code's l2 branch): the same model without the hook,
    # the perturbation added to the embeddings through inputs_embeds.
    ref = tiny_llama()
    ref.train()
    delta = neftune_draw(torch.Generator().manual_seed(3), 5.0)
    pass_losses = []
    for t in range(3):
        delta.requires_grad_(True)
        embeds = ref.get_input_embeddings()(IDS) + delta
        loss = ref(inputs_embeds=embeds, attention_mask=MASK, labels=LABELS).loss / 3
        loss.backward()
        pass_losses.append(loss.item())
        assert torch.count_nonzero(delta[1, 4:]) == 0  # no perturbation on padding, any pass
        if t == 2:
            break
        g = delta.grad * MASK.unsqueeze(-1)
        g = g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
        delta = (delta + 0.3 * g).detach()
        size = delta.flatten(1).norm(dim=1).view(-1, 1, 1)
        delta = delta * torch.where(size > 0.9, 0.9 / size, 1.0)
        assert delta.flatten(1).norm(dim=1).max() <= 0.9 + 1e-6  # within the bound
    want = grads(ref)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6), name
    # The value the trainer logs: the mean loss over the passes.
    assert math.isclose(returned.item(), sum(pass_losses), rel_tol=1e-6)


# --- R3F ---------------------------------------------------------------------------------------


def test_symmetric_kl_on_fixed_logits_is_the_hand_sum_over_counted_positions():
    clean = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [2.0, 1.0, 0.0]]])
    noised = torch.tensor([[[0.0, 1.0, 0.0], [0.5, -0.5, 1.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[-100, 2, 1]])  # logits at 0 and 1 predict a counted target; 2 none

    def softmax(row):
        z = [math.exp(x) for x in row]
        return [x / sum(z) for x in z]

    want = 0.0
    for t in (0, 1):
        p, q = softmax(clean[0, t].tolist()), softmax(noised[0, t].tolist())
        kl_pq = sum(a * math.log(a / b) for a, b in zip(p, q))
        kl_qp = sum(b * math.log(b / a) for a, b in zip(p, q))
        want += kl_pq + kl_qp
    assert math.isclose(symmetric_kl(clean, noised, labels).item(), want, rel_tol=1e-6)
    assert symmetric_kl(clean, clean, labels).item() == 0.0


def test_r3f_loss_is_the_clean_ce_plus_lambda_times_the_per_token_symmetric_kl():
    settings = {"lam": 0.7, "sigma": 0.5, "distribution": "normal"}  # large sigma: KL visible
    model = tiny_llama()
    handle = attach_neftune(
        model, 0.0, "r3f", generator=torch.Generator().manual_seed(4), settings=settings
    )
    model.train()
    loss = handle.training_loss(forward_of(model))
    loss.backward()
    assert handle.passes_per_batch() == 2.0
    got = grads(model)

    ref = tiny_llama()
    ref.train()
    z = torch.zeros(*IDS.shape, D).normal_(0.0, 1.0, generator=torch.Generator().manual_seed(4))
    z = z * 0.5 * MASK.unsqueeze(-1)  # sigma on real tokens, none on padding
    clean = ref(input_ids=IDS, attention_mask=MASK).logits
    embeds = ref.get_input_embeddings()(IDS) + z
    noised = ref(inputs_embeds=embeds, attention_mask=MASK).logits
    ce, kl, n = 0.0, 0.0, 0
    for b in range(IDS.shape[0]):
        for t in range(IDS.shape[1] - 1):
            target = LABELS[b, t + 1].item()
            if target == -100:
                continue
            p_log = F.log_softmax(clean[b, t], dim=-1)
            q_log = F.log_softmax(noised[b, t], dim=-1)
            ce = ce - p_log[target]
            kl = kl + (p_log.exp() * (p_log - q_log)).sum() + (q_log.exp() * (q_log - p_log)).sum()
            n += 1
    want = ce / n + 0.7 * kl / n
    assert n == 6 and kl.item() > 1e-4  # the regulariser is not vanishingly small here
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-5)
    want.backward()  # both passes are backpropagated
    for name, g in grads(ref).items():
        assert torch.allclose(got[name], g, atol=1e-6), name


def test_r3f_noise_is_sigma_on_real_tokens_none_on_padding_none_in_eval():
    model = tiny_llama()
    settings = {"lam": 1.0, "sigma": 0.25, "distribution": "uniform"}
    attach_neftune(model, 0.0, "r3f", generator=torch.Generator().manual_seed(5), settings=settings)
    model.train()
    noise = captured_noise(model, model, input_ids=IDS, attention_mask=MASK)
    generator = torch.Generator().manual_seed(5)
    want = torch.zeros(*IDS.shape, D).uniform_(-0.25, 0.25, generator=generator)
    assert torch.allclose(noise[0], want[0], atol=1e-6)  # sigma itself, not alpha/sqrt(L*d)
    assert torch.allclose(noise[1, :4], want[1, :4], atol=1e-6)
    assert torch.count_nonzero(noise[1, 4:]) == 0
    model.eval()
    eval_noise = captured_noise(model, model, input_ids=IDS, attention_mask=MASK)
    assert torch.count_nonzero(eval_noise) == 0


def test_r3f_and_noisytune_are_keyed_and_named_by_their_own_settings_not_alpha():
    r3f = composed("noise=r3f", "noise.alpha=15", "noise.length=padded")
    assert (
        noise_params(r3f.noise)
        == noise_params(composed("noise=r3f").noise)
        == {
            "kind": "r3f",
            "alpha": 0.0,
            "length": "per_example",
            "settings": {"lam": 1.0, "sigma": 1e-5, "distribution": "normal"},
        }
    )
    assert noise_label(noise_params(r3f.noise)) == "r3f-lambda1-sigma1e-05"
    noisy = noise_params(composed("noise=noisytune", "noise.alpha=0").noise)  # not the baseline
    assert noise_label(noisy) == "noisytune-lambda0.15"
    freelb = noise_params(composed("noise=freelb").noise)
    assert noise_label(freelb) == "neft-freelb5-k2-lr0.04"
    assert noise_params(composed("noise=freelb", "noise.alpha=0").noise) == {"kind": "none"}
    with pytest.raises(ValueError, match=r"noise.settings.distribution='laplace'"):
        noise_params(composed("noise=r3f", "noise.settings.distribution=laplace").noise)
    with pytest.raises(ValueError, match=r"noise.settings.steps=-1"):
        noise_params(composed("noise=freelb", "noise.settings.steps=-1").noise)


# --- NoisyTune ---------------------------------------------------------------------------------


def test_noisytune_adds_uniform_times_each_matrixs_std_from_the_seeded_generator_once():
    pretrained = {n: p.detach().clone() for n, p in tiny_llama().named_parameters()}
    model = tiny_llama()
    handle = attach_neftune(model, 0.0, "noisytune", settings={"lam": 0.15}, seed=11)
    generator = weights_generator(11)
    names = [name for name, _ in perturbed(model)]
    assert names and "model.norm.weight" in names  # norm weights too, as the reference code
    for name, param in model.named_parameters():
        w = pretrained[name]
        if name not in names:
            assert torch.equal(param, w), name
            continue
        u = torch.rand(w.shape, generator=generator)
        want = w + (u - 0.5) * 0.15 * w.std()
        assert torch.allclose(param, want, atol=1e-7), name
        if w.std() > 0:
            assert (param - w).abs().max() <= 0.15 / 2 * w.std() + 1e-7
    # Training adds no embedding noise and perturbs nothing again.
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    train_noise = captured_noise(model, model, input_ids=IDS, attention_mask=MASK)
    assert torch.count_nonzero(train_noise) == 0
    handle.training_loss(forward_of(model))
    assert handle.passes_per_batch() == 1.0
    assert all(torch.equal(p, after[n]) for n, p in model.named_parameters())
    # Another seed, other draws; the same seed, the same draws.
    again, other = tiny_llama(), tiny_llama()
    attach_neftune(again, 0.0, "noisytune", settings={"lam": 0.15}, seed=11)
    attach_neftune(other, 0.0, "noisytune", settings={"lam": 0.15}, seed=12)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), model.parameters()))
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)


def test_noisytune_leaves_peft_adapters_alone():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    names = [name for name, _ in perturbed(model)]
    assert names and not any("lora_" in name for name in names)
    assert any("q_proj.base_layer.weight" in name for name in names)


# --- through the finetune stage (the Trainer asks the kind) ------------------------------------

PROBE_MODULE = """
import torch
import torch.nn.functional as F
from pipeline.train.noise_kinds import NoiseKind, register

SEEN = []  # (per_token of the hand CE sum, the trainer's loss) for every batch


@register("probe")
class Probe(NoiseKind):
    def sample(self, like, mag, generator, settings):
        return torch.zeros_like(like)

    def training_loss(self, loss, settings):
        first = loss.run(noised=False, logits=True)
        counted = first.labels[:, 1:].ne(-100)
        ce = F.cross_entropy(
            first.logits[:, :-1][counted].float(), first.labels[:, 1:][counted], reduction="sum"
        )
        SEEN.append((loss.per_token(ce).item(), first.loss.item()))
        half = first.loss / 2
        loss.backward(half)  # as the trainer would: the other half comes from the second pass
        return loss(False) / 2 + half.detach()
"""


@pytest.fixture
def probe_kind(monkeypatch, tmp_path):
    from pipeline.train import noise_kinds

    mods = tmp_path / "noise_kinds"
    mods.mkdir()
    (mods / "probe.py").write_text(PROBE_MODULE)
    monkeypatch.setattr(noise_kinds, "__path__", [*noise_kinds.__path__, str(mods)])
    noise_kinds.discover.cache_clear()
    yield sys.modules
    noise_kinds.KINDS.pop("probe", None)
    sys.modules.pop("pipeline.train.noise_kinds.probe", None)
    noise_kinds.discover.cache_clear()


def trained(store_dir, *overrides: str, seed: int = 0):
    """The finetune stage on the tiny stack (constant learning rate: any difference in one
    step stays in the weights): its metrics and final weights."""
    cfg = composed(*SMOKE, "finetune.lr_scheduler=constant", *overrides)
    store = Store(store_dir)
    train_cfg = OmegaConf.merge(cfg.finetune, {"seed": seed})
    result = finetune.finetune(cfg.model, cfg.data, cfg.noise, train_cfg, store, store, [])
    return result.metrics, load_file(result.path / "model" / "model.safetensors")


def test_the_trainer_asks_the_kind_for_each_batch_and_backpropagates_as_its_own(
    probe_kind, tmp_path
):
    """A kind that splits each batch's loss into two halves, one backpropagated through
    Passes.backward and one by the trainer, trains as the baseline does; its per-token
    normaliser is the trainer's own (accumulation over 2 batches of 2)."""
    small = ("finetune.max_steps=4", "finetune.per_device_batch_size=2")
    base, base_weights = trained(tmp_path / "s", "noise=off", *small)
    probe, probe_weights = trained(tmp_path / "s", "noise.kind=probe", *small)
    seen = probe_kind["pipeline.train.noise_kinds.probe"].SEEN
    assert len(seen) == 4 * 2  # every batch of every step went through the kind
    for per_token, trainer_loss in seen:
        assert math.isclose(per_token, trainer_loss, rel_tol=1e-5)
    assert probe["train_passes_per_example"] == 2.0 and base["train_passes_per_example"] == 1.0
    assert math.isclose(probe["train_loss"], base["train_loss"], rel_tol=1e-5)
    for name, w in base_weights.items():
        assert torch.allclose(probe_weights[name], w, atol=1e-5), name


def test_each_kind_trains_through_the_stage_with_its_passes_counted(tmp_path):
    """K = 0 FreeLB is NEFTune uniform bit for bit through the Trainer; R3F takes 2 passes,
    FreeLB K + 1, NoisyTune 1; every kind changes the weights against the baseline."""
    steps = "finetune.max_steps=4"
    runs = {
        name: trained(tmp_path / "s", *overrides, steps)
        for name, overrides in {
            "base": ("noise=off",),
            "uniform": ("noise=uniform",),
            "freelb0": ("noise=freelb", "noise.settings.steps=0"),
            "freelb2": ("noise=freelb",),
            "r3f": ("noise=r3f", "noise.settings.sigma=0.1"),
            "noisytune": ("noise=noisytune",),
        }.items()
    }
    passes = {name: m["train_passes_per_example"] for name, (m, _) in runs.items()}
    assert passes == {
        "base": 1.0,
        "uniform": 1.0,
        "freelb0": 1.0,
        "freelb2": 3.0,
        "r3f": 2.0,
        "noisytune": 1.0,
    }
    (uniform, uniform_w), (freelb0, freelb0_w) = runs["uniform"], runs["freelb0"]
    assert uniform["train_loss"] == freelb0["train_loss"]
    assert all(torch.equal(uniform_w[k], freelb0_w[k]) for k in uniform_w)
    base_w = runs["base"][1]
    for name in ("freelb2", "r3f", "noisytune"):
        weights = runs[name][1]
        assert any(not torch.equal(weights[k], base_w[k]) for k in base_w), name


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_resumed_noisytune_run_is_perturbed_once_and_ends_as_an_uninterrupted_one(
    tmp_path, monkeypatch, lora
):
    import transformers

    extra = ("noise=noisytune", "finetune.max_steps=12", "finetune.save_steps=4")
    extra += ("finetune=lora_tiny",) if lora else ()
    whole, whole_weights = trained(tmp_path / "whole", *extra)

    step = transformers.Trainer.training_step

    def failing_step(self, *args, **kwargs):
        if self.state.global_step >= 6:
            raise RuntimeError("killed mid-training")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="killed mid-training"):
        trained(tmp_path / "resumed", *extra)
    monkeypatch.setattr(transformers.Trainer, "training_step", step)
    resumed, resumed_weights = trained(tmp_path / "resumed", *extra)
    assert resumed["resumed_from_step"] == 4
    assert resumed["train_loss"] == whole["train_loss"]
    assert all(torch.equal(resumed_weights[k], whole_weights[k]) for k in whole_weights)
