"""Judges of AlpacaEval pairs, through the alpaca-eval package (its annotators and caching).

Judges (conf/judge/): the paper's API judges (`alpaca_eval_gpt4`, `chatgpt_fn`: AlpacaEval 1;
`weighted_alpaca_eval_gpt4_turbo`: AlpacaEval 2 with length control), an OpenAI-compatible server
(e.g. vLLM), and `local`: a local Hugging Face causal LM plugged in as alpaca_eval's
`fn_completions`, which answers "Output (a)"/"Output (b)" by comparing its next-token logits and
is asked in both orders so that its position bias cancels. Shared by the alpaca_eval and
judge_calibration stages.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.judging.alpaca_import import (  # noqa: F401  (JudgeError is imported from here too)
    JudgeError, import_alpaca_eval, pin_alpaca_eval_version,
)
from pipeline.data.loading import ASSETS, check_encodable
from pipeline.models.devices import compute_device, device_key_params, inference_placement
from pipeline.models.loading import DTYPES, base_model_dir, validate_model
from pipeline.store.store import StageResult, Store, write_text_atomic

KINDS = ("local", "openai", "openai_compatible")
ANNOTATORS_DIR = ASSETS / "annotators"


@dataclass(frozen=True)
class Reference:
    """Outputs to compare against: AlpacaEval reference outputs or a generate stage's outputs."""

    label: str
    key: str  # a stage key, or a content hash of a reference file
    records: list


def load_reference(source: str) -> Reference:
    """Reference outputs from an AlpacaEval-format file (path or pkg:<asset>)."""
    path = ASSETS / source[len("pkg:") :] if source.startswith("pkg:") else Path(source)
    if not path.is_file():
        raise JudgeError(f"generate.reference={source!r}: no such file ({path.resolve()}); "
                         "give AlpacaEval-format reference outputs")
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except ValueError as err:
        raise JudgeError(f"{path}: not valid JSON ({err}); expected AlpacaEval-format "
                         "reference outputs") from err
    if not isinstance(records, list):
        raise JudgeError(f"{path}: top level is {type(records).__name__}; expected a list")
    check_encodable(str(path), records)
    for i, rec in enumerate(records):
        for field in ("instruction", "output"):
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise JudgeError(f"{path}: record {i} has no string field '{field}'")
    generator = records[0].get("generator", path.stem) if records else path.stem
    return Reference(label=str(generator), key=hashlib.sha256(text.encode()).hexdigest()[:16],
                     records=records)


def reference_from_stage(stage: StageResult, label: str) -> Reference:
    records = json.loads((stage.path / "outputs.json").read_text(encoding="utf-8"))
    return Reference(label=label, key=stage.key, records=records)


def validate_judge(judge_cfg) -> None:
    """Fail before any training or generation when the judge cannot run."""
    if judge_cfg.kind not in KINDS:
        raise JudgeError(f"judge.kind={judge_cfg.kind!r} is unknown; use one of {KINDS}")
    if judge_cfg.alpaca_eval_version not in (1, 2):
        raise JudgeError(f"judge.alpaca_eval_version={judge_cfg.alpaca_eval_version!r}: use 1 "
                         "(the paper's) or 2")
    if judge_cfg.kind == "local":
        validate_model(judge_cfg.model)
    elif judge_cfg.kind == "openai":
        from_file = os.environ.get("OPENAI_CLIENT_CONFIG_PATH")
        if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEYS")
                or (from_file and Path(from_file).is_file())):
            raise JudgeError(
                f"judge={judge_cfg.name} calls the OpenAI API but OPENAI_API_KEY is not set; "
                "export OPENAI_API_KEY=... (or OPENAI_CLIENT_CONFIG_PATH), "
                "or use judge=local offline"
            )
    else:
        if not judge_cfg.base_url or not judge_cfg.served_model:
            raise JudgeError(
                "judge=openai_compatible needs judge.base_url (e.g. http://host:8000/v1) "
                "and judge.served_model"
            )
        if not os.environ.get(judge_cfg.api_key_env):
            raise JudgeError(
                f"judge=openai_compatible reads its key from ${judge_cfg.api_key_env}, which is "
                "not set; export it (vLLM accepts any token)"
            )


def local_judge_completions(model_dir: str, dtype: str, batch_size: int, max_prompt_tokens: int):
    """An alpaca_eval `fn_completions`: a local causal LM picks "Output (a)" or "(b)" by logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side, tok.truncation_side = "left", "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    device = compute_device()  # the one place that decides (pipeline/models/devices.py)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=DTYPES[dtype], **inference_placement(device)).eval()
    ids = [tok.encode(c, add_special_tokens=False)[-1] for c in ("a", "b")]
    if ids[0] == ids[1]:
        raise JudgeError(f"judge tokenizer of {model_dir} cannot tell 'a' from 'b'")

    def completions(prompts: list[str], **_decoding) -> dict:
        out: list[str | None] = [None] * len(prompts)
        # similar lengths share a batch
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        truncation=True, max_length=max_prompt_tokens).to(model.device)
            with torch.inference_mode():
                # only the last position is needed
                logits = model(**batch, logits_to_keep=1).logits[:, -1, ids]
            for i, (a, b) in zip(idx, logits.tolist()):
                out[i] = "Output (a)" if a >= b else "Output (b)"
        return {"completions": out}

    return completions


def annotator(judge_cfg, work: Path, cache: Store, fn_completions=None):
    """alpaca_eval's pairwise annotator for `judge_cfg`, caching its valid verdicts in `work`.

    An API key is handed to alpaca_eval in memory only; no file written here contains it.
    """
    alpaca_eval = import_alpaca_eval(judge_cfg.alpaca_eval_version)
    from pipeline.judging.cache import annotator_class

    kwargs = {
        "caching_path": str(work / "annotations.json"),
        "is_randomize_output_order": not judge_cfg.both_orders,
    }
    if judge_cfg.kind == "local":
        config = ANNOTATORS_DIR / judge_cfg.annotator / "configs.yaml"
        if fn_completions is None:
            location = base_model_dir(judge_cfg.model, cache)
            fn_completions = local_judge_completions(
                location, judge_cfg.model.dtype, judge_cfg.batch_size, judge_cfg.max_prompt_tokens
            )
        kwargs["fn_completions"] = fn_completions
    elif judge_cfg.kind == "openai":
        # alpaca_eval's own config; its OpenAI client reads OPENAI_API_KEY(S) from the environment.
        config = (
            Path(alpaca_eval.__file__).parent
            / "evaluators_configs"
            / judge_cfg.annotator
            / "configs.yaml"
        )
    else:
        config = _write_openai_compatible_config(judge_cfg, work)
    if not config.is_file():
        raise JudgeError(
            f"judge.annotator={judge_cfg.annotator!r}: no annotator config at {config}"
        )
    judge = annotator_class()(annotators_config=str(config), **kwargs)
    judge.judge_name = judge_cfg.name
    if judge_cfg.kind == "openai_compatible":
        # In memory only: the config on disk names the variable, never its value.
        for single in judge.annotators.values():
            single.completions_kwargs["openai_api_keys"] = [os.environ[judge_cfg.api_key_env]]
    return judge


def _write_openai_compatible_config(judge_cfg, work: Path) -> Path:
    from alpaca_eval import constants

    config = {
        judge_cfg.annotator: {
            "prompt_template": str(
                constants.EVALUATORS_CONFIG_DIR
                / "alpaca_eval_clf_gpt4_turbo"
                / "alpaca_eval_clf.txt"
            ),
            "fn_completions": "openai_completions",
            "completions_kwargs": {
                "model_name": judge_cfg.served_model,
                # alpaca_eval guesses plain completion for names containing "instruct"
                "requires_chatml": True,
                "max_tokens": 1,
                "temperature": 1,
                "logprobs": True,
                "top_logprobs": 5,
                "price_per_token": 0,
                "openai_api_base": judge_cfg.base_url,
            },
            "fn_completion_parser": "logprob_parser",
            "completion_parser_kwargs": {
                "numerator_token": "m",
                "denominator_tokens": ["m", "M"],
                "is_binarize": False,
            },
            "completion_key": "completions_all",
            "batch_size": 1,
        }
    }
    path = work / "annotator" / "configs.yaml"
    path.parent.mkdir(exist_ok=True)
    note = (f"# API key: read from ${judge_cfg.api_key_env} when the judge runs and handed to "
            "alpaca_eval in memory; never written here.\n")
    write_text_atomic(path, note + yaml.safe_dump(config))
    return path


def judge_pairs(annotator, pairs: list[dict], both_orders: bool) -> list[dict]:
    """One preference per pair (1 = output_1/reference, 2 = output_2/model).

    With `both_orders`, each pair is also judged swapped and the two verdicts are averaged. Raises
    JudgeError when any verdict is invalid, after the valid ones are cached (see judge_cache).
    """
    forward = annotator.annotate_pairs(pairs)
    if not both_orders:
        _raise_if_invalid(annotator, forward, ["preference"])
        return forward
    swapped = [
        {
            **p,
            "output_1": p["output_2"],
            "output_2": p["output_1"],
            "generator_1": p["generator_2"],
            "generator_2": p["generator_1"],
        }
        for p in pairs
    ]
    backward = annotator.annotate_pairs(swapped)
    scored = [
        {**f, "preference_forward": f["preference"], "preference_backward": b["preference"]}
        for f, b in zip(forward, backward)
    ]
    _raise_if_invalid(annotator, scored, ["preference_forward", "preference_backward"])
    for s in scored:
        # f + (3 - b) as earlier versions summed it: published win rates keep their exact bits
        s["preference"] = (s["preference_forward"] + (3 - s["preference_backward"])) / 2
    return scored


def _raise_if_invalid(annotator, scored: list[dict], fields: list[str]) -> None:
    from pipeline.judging.cache import invalid_verdicts_message

    message = invalid_verdicts_message(annotator, scored, fields)
    if message:
        raise JudgeError(message)


def check_references(prompts: list[dict], reference: Reference, where: str, source: str) -> None:
    """Every prompt has a reference answer (matched by instruction, as pairs_against does)."""
    known = {r["instruction"] for r in reference.records}
    missing = [i for i, p in enumerate(prompts) if p["instruction"] not in known]
    if missing:
        raise JudgeError(
            f"{where}: {len(missing)} of {len(prompts)} prompts have no reference answer in "
            f"generate.reference={source!r}, first row {missing[0]} "
            f"({prompts[missing[0]]['instruction'][:80]!r}); add their answers or drop them"
        )


def pairs_against(outputs: list[dict], reference: Reference, where: str) -> list[dict]:
    ref_by_instruction = {r["instruction"]: r for r in reference.records}
    missing = [o["instruction"] for o in outputs if o["instruction"] not in ref_by_instruction]
    if missing:
        raise JudgeError(
            f"{where}: {len(missing)} instructions have no reference output in "
            f"{reference.label}, e.g. {missing[0][:80]!r}"
        )
    return [
        {
            "instruction": o["instruction"],
            "output_1": ref_by_instruction[o["instruction"]]["output"],
            "output_2": o["output"],
            "generator_1": reference.label,
            "generator_2": o["generator"],
            "dataset": o.get("dataset", ""),
        }
        for o in outputs
    ]


def judge_key_params(judge_cfg) -> dict:
    """The judge's part of a stage key: its config, and for a local judge its device where it is
    not the CPU (a GPU's numerics can flip a close verdict)."""
    from pipeline.config.schema import config_params

    params = {"judge": config_params(judge_cfg)}
    if judge_cfg.kind == "local":
        params |= device_key_params(compute_device())
    return params
