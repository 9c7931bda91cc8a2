"""The registries: a new noise kind or judge kind is one module (found by pkgutil) plus one conf
YAML, and nothing else changes, also for a kind with settings of its own (declared in its module,
given in its YAML, checked right after composition, hashed into its stage keys); an unknown name
fails in the stage's cheap check, naming the registered ones; fixed choices fail at composition;
stage params stay plain str."""

import sys
import textwrap

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from pipeline.judging import kinds as judge_kinds
from pipeline.judging.judges import JudgeError, annotator, judge_key_params, judge_pairs
from pipeline.plan import arm_specs
from pipeline.stages import alpaca_eval_stage, finetune
from pipeline.stages.kind_settings import check_kind_settings
from pipeline.store.store import Store
from pipeline.train import noise_kinds
from pipeline.train.noise import attach_neftune, noise_label, noise_params
from tests.support.composed import CONF, SMOKE, composed
from tests.support.tiny import tiny_llama

NOISE_MODULE = """
import torch
from pipeline.train.noise_kinds import NoiseKind, register

@register("constant")
class Constant(NoiseKind):
    def sample(self, like, mag, generator, settings):
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


# A noise kind with a parameter of its own, declared next to its sampler.
LAPLACE_MODULE = """
from dataclasses import dataclass

import torch

from pipeline.train.noise_kinds import NoiseKind, register

DRAWN = []  # the scale of every draw: the test reads what reached the sampler


@dataclass
class LaplaceSettings:
    scale: float = 1.0  # Laplace scale b of the unit entries, before alpha/sqrt(L*d)


@register("laplace")
class Laplace(NoiseKind):
    Settings = LaplaceSettings

    def check(self, settings):
        if not settings.scale > 0:
            raise ValueError(f"noise.settings.scale={settings.scale}: must be > 0")

    def label(self, settings):
        return f"-scale{settings.scale:g}"

    def sample(self, like, mag, generator, settings):
        DRAWN.append(settings.scale)
        u = torch.zeros_like(like).uniform_(-0.5, 0.5, generator=generator)
        return -settings.scale * u.sign() * torch.log1p(-2 * u.abs().clamp(max=0.4999)) * mag
"""

# A judge kind with settings of its own.
FIXED_MODULE = """
from dataclasses import dataclass

from pipeline.judging.alpaca_import import JudgeError
from pipeline.judging.kinds import JudgeKind, register
from pipeline.judging.kinds.local import ANNOTATORS_DIR


@dataclass
class FixedSettings:
    prefer: str = "b"  # the output this judge always names: a | b


@register("fixed")
class Fixed(JudgeKind):
    Settings = FixedSettings

    def validate(self, judge_cfg):
        if self.settings(judge_cfg).prefer not in ("a", "b"):
            raise JudgeError("judge.settings.prefer: use a or b")

    def annotator_args(self, judge_cfg, work, cache, fn_completions):
        verdict = f"Output ({self.settings(judge_cfg).prefer})"
        answer = lambda prompts, **_: {"completions": [verdict] * len(prompts)}
        return ANNOTATORS_DIR / judge_cfg.annotator / "configs.yaml", {"fn_completions": answer}
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
        monkeypatch, tmp_path, noise_kinds, noise_kinds.KINDS, "constant", NOISE_MODULE
    )


@pytest.fixture
def always_b_judge(monkeypatch, tmp_path):
    yield from _plug_in(
        monkeypatch, tmp_path, judge_kinds, judge_kinds.KINDS, "always_b", JUDGE_MODULE
    )


@pytest.fixture
def laplace_noise(monkeypatch, tmp_path):
    yield from _plug_in(
        monkeypatch, tmp_path, noise_kinds, noise_kinds.KINDS, "laplace", LAPLACE_MODULE
    )


@pytest.fixture
def fixed_judge(monkeypatch, tmp_path):
    yield from _plug_in(
        monkeypatch, tmp_path, judge_kinds, judge_kinds.KINDS, "fixed", FIXED_MODULE
    )


def conf_with(tmp_path, group: str, name: str, text: str, *overrides: str):
    """The config composed with one more YAML in a config dir on hydra.searchpath, each kind's
    settings then checked as the first step after composition does."""
    extra = tmp_path / "extra_conf"
    (extra / group).mkdir(parents=True, exist_ok=True)
    (extra / group / f"{name}.yaml").write_text(textwrap.dedent(text))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"hydra.searchpath=[file://{extra}]", f"{group}={name}", *overrides],
        )
    check_kind_settings(cfg)
    return cfg


def files_written(tmp_path) -> list[str]:
    """What a test wrote to add its kinds (Python's bytecode cache aside)."""
    return sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
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
    assert (
        "noise.kind='laplace' is unknown; registered kinds: "
        "none, freelb, gaussian, noisytune, r3f, uniform" in msg
    )
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

    cfg = composed(
        "noise.length=padded", "finetune.sampling=group_by_length", "model.dtype=float32"
    )
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


# --- kinds with settings of their own (issue 29): still 2 files each --------------------------

LAPLACE_YAML = """\
    kind: laplace                 # test
    settings:                     # noise.kind=laplace's own (LaplaceSettings)
      scale: 2.0                  # test: twice the default
    """


def noise_added(noise: dict, steps: int = 3) -> list[torch.Tensor]:
    """Train the tiny Llama `steps` AdamW steps with `noise` attached through the hook, as the
    finetune stage's training attaches it; what the hook added to the embeddings at each step."""
    model = tiny_llama()
    embedding, added = model.get_input_embeddings(), []

    def grab(module, _inputs, output):
        added.append((output - module.weight[ids]).detach().clone())

    handle = attach_neftune(
        model,
        noise["alpha"],
        noise["kind"],
        noise["length"],
        generator=torch.Generator().manual_seed(0),
        settings=noise.get("settings"),
    )
    embedding.register_forward_hook(grab)  # after the noise hook: sees the noised output
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    handle.remove()
    return added


def test_a_noise_kind_with_a_setting_of_its_own_is_two_files(laplace_noise, tmp_path):
    cfg = conf_with(tmp_path, "noise", "laplace", LAPLACE_YAML, *SMOKE)
    assert files_written(tmp_path) == ["extra_conf/noise/laplace.yaml", "noise_kinds/laplace.py"]
    finetune.check(cfg)
    noise = noise_params(cfg.noise)
    assert noise == {
        "kind": "laplace",
        "alpha": 5.0,
        "length": "per_example",
        "settings": {"scale": 2.0},
    }
    assert noise_label(noise) == "neft-laplace5-scale2"
    # The setting reaches the sampler while the tiny model trains: the same draws, twice the
    # default's noise at every step.
    drawn = sys.modules["pipeline.train.noise_kinds.laplace"].DRAWN
    twice = noise_added(noise)
    assert drawn == [2.0] * 3
    once = noise_added(noise | {"settings": {"scale": 1.0}})
    assert drawn[3:] == [1.0] * 3
    for a, b in zip(twice, once):
        assert torch.count_nonzero(b[1, 3:]) == 0 and torch.count_nonzero(b[1, :3]) == 3 * 64
        assert torch.allclose(a, 2 * b, atol=1e-6)
    # It enters the finetune key of that kind only (uniform and gaussian hash no settings:
    # tests/test_kind_settings.py), and splits it.
    scale3 = conf_with(tmp_path, "noise", "laplace", LAPLACE_YAML, *SMOKE, "noise.settings.scale=3")
    key2, key3 = (finetune.key_of(c, arm_specs(c)[1]) for c in (cfg, scale3))
    assert "neft-laplace5-scale2" in key2 and "neft-laplace5-scale3" in key3
    assert "settings" not in noise_params(composed(*SMOKE).noise)
    # Checked by the kind, before anything is trained.
    with pytest.raises(ValueError, match=r"noise.settings.scale=-1.0: must be > 0"):
        noise_params(
            conf_with(tmp_path, "noise", "laplace", LAPLACE_YAML, "noise.settings.scale=-1").noise
        )


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "noise.settings.scal=3",
            "noise.settings.scal: noise.kind='laplace' has no setting 'scal' (did you mean "
            "'scale'?); its settings (LaplaceSettings in pipeline.train.noise_kinds.laplace): "
            "scale",
        ),
        (
            "noise.settings.scale=big",
            "noise.settings.scale: Value 'big' of type 'str' could not be converted to Float; "
            "noise.kind='laplace' declares scale: float (LaplaceSettings in "
            "pipeline.train.noise_kinds.laplace)",
        ),
        (
            "noise.kind=uniform",  # laplace's settings given to a kind without settings
            "noise.settings.scale: noise.kind='uniform' has no settings of its own (NoSettings "
            "in pipeline.registry)",
        ),
    ],
)
def test_a_wrong_noise_setting_fails_when_composed_naming_the_kind_and_key(
    laplace_noise, tmp_path, override, message
):
    with pytest.raises(ValueError) as err:
        conf_with(tmp_path, "noise", "laplace", LAPLACE_YAML, override)
    assert str(err.value) == message


def test_the_finetune_stage_trains_with_the_kinds_setting(laplace_noise, tmp_path):
    from omegaconf import OmegaConf

    cfg = conf_with(tmp_path, "noise", "laplace", LAPLACE_YAML, *SMOKE, "finetune.max_steps=2")
    drawn = sys.modules["pipeline.train.noise_kinds.laplace"].DRAWN
    store = Store(tmp_path / "store")
    train_cfg = OmegaConf.merge(cfg.finetune, {"seed": 0})
    finetune.finetune(cfg.model, cfg.data, cfg.noise, train_cfg, store, store, [])
    assert drawn and set(drawn) == {2.0}


FIXED_YAML = """\
    name: fixed-a                 # test
    kind: fixed                   # test
    annotator: local_logprob      # test
    settings:                     # judge.kind=fixed's own (FixedSettings)
      prefer: a                   # test
    """


def test_a_judge_kind_with_settings_of_its_own_is_two_files(fixed_judge, tmp_path):
    cfg = conf_with(tmp_path, "judge", "fixed", FIXED_YAML)
    assert files_written(tmp_path) == ["extra_conf/judge/fixed.yaml", "kinds/fixed.py"]
    alpaca_eval_stage.check(cfg)
    params = judge_key_params(cfg.judge)
    # A kind that is not one of the flat JudgeConfig's (store/key_rules.py judge_params): its
    # shared fields and its settings, nothing of the other kinds.
    assert params["judge"] == {
        "name": "fixed-a",
        "kind": "fixed",
        "annotator": "local_logprob",
        "alpaca_eval_version": 1,
        "both_orders": False,
        "lc_data": None,
        "settings": {"prefer": "a"},
    }
    prefer_b = conf_with(tmp_path, "judge", "fixed", FIXED_YAML, "judge.settings.prefer=b")
    assert judge_key_params(prefer_b.judge)["judge"]["settings"] == {"prefer": "b"}
    with pytest.raises(JudgeError, match="judge.settings.prefer: use a or b"):
        alpaca_eval_stage.check(
            conf_with(tmp_path, "judge", "fixed", FIXED_YAML, "judge.settings.prefer=c")
        )
    # The setting reaches the verdicts: alpaca_eval shows each pair in a seeded random order,
    # so "always (a)" and "always (b)" give mirrored preferences.
    pairs = [
        {
            "instruction": f"q{i}",
            "output_1": "a",
            "output_2": "b",
            "generator_1": "ref",
            "generator_2": "model",
            "dataset": "t",
        }
        for i in range(8)
    ]
    verdicts = {}
    for name, judge_cfg in (("a", cfg.judge), ("b", prefer_b.judge)):
        (work := tmp_path / f"work_{name}").mkdir()
        judge = annotator(judge_cfg, work, Store(tmp_path / "cache"))
        verdicts[name] = [s["preference"] for s in judge_pairs(judge, pairs, False)]
    assert sorted(set(verdicts["a"])) == [1, 2]  # both orders occur
    assert verdicts["a"] == [3 - v for v in verdicts["b"]]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "judge.settings.prefers=a",
            "judge.settings.prefers: judge.kind='fixed' has no setting 'prefers' (did you mean "
            "'prefer'?); its settings (FixedSettings in pipeline.judging.kinds.fixed): prefer",
        ),
        (
            "judge.settings.prefer=[a,b]",
            "judge.settings.prefer: Cannot convert 'ListConfig' to string: '['a', 'b']'; "
            "judge.kind='fixed' declares prefer: str (FixedSettings in "
            "pipeline.judging.kinds.fixed)",
        ),
    ],
)
def test_a_wrong_judge_setting_fails_when_composed_naming_the_kind_and_key(
    fixed_judge, tmp_path, override, message
):
    with pytest.raises(JudgeError) as err:
        conf_with(tmp_path, "judge", "fixed", FIXED_YAML, override)
    assert str(err.value) == message


def test_a_shipped_kinds_settings_are_checked_on_the_command_line_too():
    with pytest.raises(JudgeError) as err:
        composed("judge.settings.batch_sizee=8")
    assert str(err.value).startswith(
        "judge.settings.batch_sizee: judge.kind='local' has no setting 'batch_sizee' (did you "
        "mean 'batch_size'?); its settings (LocalSettings in pipeline.judging.kinds.local): "
        "model, batch_size, max_prompt_tokens"
    )
    with pytest.raises(ValueError, match=r"^generate.settings.python: generate.engine='hf' has"):
        composed("generate.settings.python=/venv/bin/python")
    with pytest.raises(JudgeError, match=r"^judge.settings.model.dtpye: judge.kind='local' has no"):
        composed("judge.settings.model.dtpye=float32")
    # A setting its YAML does not name is given without `+`, and typed.
    cfg = composed("judge.settings.batch_size=8", "generate.engine=vllm", "+stack=smoke")
    assert cfg.judge.settings.batch_size == 8 and cfg.judge.settings.max_prompt_tokens == 1000
    assert (
        composed(
            "generate.engine=vllm", "generate.settings.max_model_len=512"
        ).generate.settings.max_model_len
        == 512
    )
