"""The registries: a new noise kind or judge kind is one module (found by pkgutil) plus one conf
YAML, and nothing else changes; an unknown name fails in the stage's cheap check, naming the
registered ones; fixed choices fail at composition; stage params stay plain str."""

import sys
import textwrap

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from pipeline.judging import kinds as judge_kinds
from pipeline.judging.judges import JudgeError, annotator, judge_key_params, judge_pairs
from pipeline.stages import alpaca_eval_stage, finetune
from pipeline.store.store import Store
from pipeline.train import noise_kinds
from pipeline.train.noise import attach_neftune, noise_label, noise_params
from tests.support.composed import CONF, composed

NOISE_MODULE = """
import torch
from pipeline.train.noise_kinds import register

@register("constant")
def constant(like, mag, generator):
    return torch.ones_like(like) * mag  # every entry +mag: easy to check
"""

JUDGE_MODULE = """
from pipeline.judging.kinds import JudgeKind, register
from pipeline.judging.kinds.local import ANNOTATORS_DIR
from pipeline.judging.alpaca_import import JudgeError

@register("always_b")
class AlwaysB(JudgeKind):
    def validate(self, judge_cfg):
        if judge_cfg.annotator != "local_logprob":
            raise JudgeError("judge=always_b needs judge.annotator=local_logprob")

    def annotator_args(self, judge_cfg, work, cache, fn_completions):
        answer = lambda prompts, **_: {"completions": ["Output (b)"] * len(prompts)}
        return ANNOTATORS_DIR / judge_cfg.annotator / "configs.yaml", {"fn_completions": answer}

    def key_params(self, judge_cfg):
        return {"always": "b"}
"""


def _plug_in(monkeypatch, tmp_path, package, registry: dict, name: str, module: str):
    """Put `module` beside the package's own modules (one more dir on its __path__)."""
    mods = tmp_path / package.__name__.rsplit(".", 1)[1]
    mods.mkdir()
    (mods / f"{name}.py").write_text(module)
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(mods)])
    package.discover.cache_clear()
    yield
    registry.pop(name, None)
    sys.modules.pop(f"{package.__name__}.{name}", None)
    package.discover.cache_clear()


@pytest.fixture
def constant_noise(monkeypatch, tmp_path):
    yield from _plug_in(
        monkeypatch, tmp_path, noise_kinds, noise_kinds.SAMPLERS, "constant", NOISE_MODULE
    )


@pytest.fixture
def always_b_judge(monkeypatch, tmp_path):
    yield from _plug_in(
        monkeypatch, tmp_path, judge_kinds, judge_kinds.KINDS, "always_b", JUDGE_MODULE
    )


def conf_with(tmp_path, group: str, name: str, text: str, *overrides: str):
    """The config composed with one more YAML in a config dir on hydra.searchpath."""
    extra = tmp_path / "extra_conf"
    (extra / group).mkdir(parents=True)
    (extra / group / f"{name}.yaml").write_text(textwrap.dedent(text))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[f"hydra.searchpath=[file://{extra}]", f"{group}={name}", *overrides],
        )


def test_a_new_noise_kind_is_one_module_and_one_yaml(constant_noise, tmp_path):
    cfg = conf_with(tmp_path, "noise", "constant", "kind: constant  # test\n")
    finetune.check(cfg)  # the stage's cheap check knows the kind
    noise = noise_params(cfg.noise)
    assert noise == {"kind": "constant", "alpha": 5.0, "length": "per_example"}
    assert noise_label(noise) == "neft-constant5"
    # The finetune noise hook draws from it: every real token gets +5/sqrt(L*d), padding 0.
    emb = torch.nn.Embedding(10, 4)

    class Model(torch.nn.Module):
        def get_input_embeddings(self):
            return emb

        def forward(self, input_ids, attention_mask=None):
            return emb(input_ids)

    model = Model()
    attach_neftune(model, noise["alpha"], noise["kind"], noise["length"])
    ids, mask = torch.tensor([[1, 2, 3, 0]]), torch.tensor([[1, 1, 1, 0]])
    with torch.no_grad():
        added = model(input_ids=ids, attention_mask=mask) - emb.weight[ids]
    want = torch.tensor([5.0 / (3 * 4) ** 0.5] * 3 + [0.0])
    assert torch.allclose(added, want.view(1, 4, 1).expand(1, 4, 4), atol=1e-6)


def test_an_unknown_noise_kind_fails_in_check_naming_the_registered_kinds():
    with pytest.raises(ValueError) as err:
        finetune.check(composed("noise.kind=laplace"))
    msg = str(err.value)
    assert "noise.kind='laplace' is unknown; registered kinds: none, gaussian, uniform" in msg
    assert "pipeline/train/noise_kinds/laplace.py" in msg and "conf/noise/laplace.yaml" in msg


def test_a_new_judge_kind_is_one_module_and_one_yaml(always_b_judge, tmp_path):
    yaml = """\
        name: always-b                # test
        kind: always_b                # test
        annotator: local_logprob      # test
        both_orders: true             # test: no random order, each pair asked both ways
        """
    cfg = conf_with(tmp_path, "judge", "always_b", yaml)
    alpaca_eval_stage.check(cfg)  # validate goes through the registry
    params = judge_key_params(cfg.judge)
    assert params["always"] == "b" and params["judge"]["kind"] == "always_b"
    with pytest.raises(JudgeError, match="needs judge.annotator=local_logprob"):
        alpaca_eval_stage.check(
            conf_with(tmp_path / "bad", "judge", "always_b", yaml, "judge.annotator=other")
        )
    judge = annotator(cfg.judge, tmp_path, Store(tmp_path / "cache"))
    pairs = [
        {
            "instruction": f"q{i}",
            "output_1": "a",
            "output_2": "b",
            "generator_1": "ref",
            "generator_2": "model",
            "dataset": "t",
        }
        for i in range(3)
    ]
    # "(b)" whatever the order: the two orders cancel to a draw.
    assert [s["preference"] for s in judge_pairs(judge, pairs, True)] == [1.5] * 3


def test_an_unknown_judge_kind_fails_in_check_naming_the_registered_kinds():
    with pytest.raises(JudgeError) as err:
        alpaca_eval_stage.check(composed("judge.kind=claude"))
    msg = str(err.value)
    assert (
        "judge.kind='claude' is unknown; registered kinds: local, openai, openai_compatible" in msg
    )
    assert "pipeline/judging/kinds/claude.py" in msg and "@register('claude')" in msg


@pytest.mark.parametrize(
    "override, choices",
    [
        ("noise.length=perexample", "per_example, padded"),
        ("model.dtype=fp32", "auto, float32, bfloat16, float16"),
        ("finetune.distributed.strategy=dpp", "none, ddp, fsdp"),
        ("paths.verify=sha", "size, full"),
        ("model.source=hf", "hub, local, gguf_package, tiny"),
    ],
)
def test_a_typo_in_a_fixed_choice_fails_at_composition(override, choices):
    with pytest.raises(ConfigCompositionException) as err:
        composed(override)
    assert f"expected one of [{choices}]" in f"{err.value} {err.value.__cause__}"


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def test_params_that_stage_keys_hash_hold_plain_str_not_enum_members():
    from pipeline.config.schema import config_params
    from pipeline.stages.generate import generate_params

    cfg = composed("noise.length=padded", "finetune.sampling=group_by_length")
    assert type(cfg.model.dtype) is not str  # the schema's Enum member ...
    built = [
        noise_params(cfg.noise),
        config_params(cfg.model),
        judge_key_params(cfg.judge),
        generate_params(cfg.generate, cfg.model.dtype),
        finetune._keyed(cfg.model, cfg.data, noise_params(cfg.noise), cfg.finetune, [])[1],
    ]
    strs = [v for params in built for v in _leaves(params) if isinstance(v, str)]
    assert "padded" in strs and "group_by_length" in strs and "float32" in strs
    assert all(type(v) is str for v in strs)  # ... but what is hashed is plain str
