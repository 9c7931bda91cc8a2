"""A judge served behind an OpenAI-compatible API (e.g. vLLM): AlpacaEval-2-style weighted m/M
verdicts from logprobs, its annotator config written into the stage directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from pipeline.judging.alpaca_import import JudgeError, import_alpaca_eval
from pipeline.judging.kinds import JudgeKind, judge_settings, redact_key_errors, register
from pipeline.store.store import write_text_atomic


@dataclass
class OpenAICompatibleSettings:
    """judge.settings of judge.kind=openai_compatible."""

    base_url: Optional[str] = None  # required: the server's /v1 URL (http://host:8000/v1)
    served_model: Optional[str] = None  # required: the model name the server serves
    # (vLLM --served-model-name)
    api_key_env: str = "JUDGE_API_KEY"  # environment variable holding the server's token; its
    # name is written into the annotator config, never its value


@register("openai_compatible")
class OpenAICompatibleJudge(JudgeKind):
    """judge.settings.served_model at judge.settings.base_url; the key is read from
    $judge.settings.api_key_env."""

    Settings = OpenAICompatibleSettings

    def validate(self, judge_cfg) -> None:
        settings = self.settings(judge_cfg)
        if not settings.base_url or not settings.served_model:
            raise JudgeError(
                "judge=openai_compatible needs judge.settings.base_url (e.g. "
                "http://host:8000/v1) and judge.settings.served_model"
            )
        if not os.environ.get(settings.api_key_env):
            raise JudgeError(
                f"judge=openai_compatible reads its key from ${settings.api_key_env}, which is "
                "not set; export it (vLLM accepts any token)"
            )

    def annotator_args(self, judge_cfg, work: Path, cache, fn_completions) -> tuple[Path, dict]:
        return write_annotator_config(judge_cfg, work), {}

    def prepare(self, annotator, judge_cfg) -> None:
        # In memory only: the config on disk names the variable, never its value.
        variable = self.settings(judge_cfg).api_key_env
        for single in annotator.annotators.values():
            single.completions_kwargs["openai_api_keys"] = [os.environ[variable]]
        redact_key_errors(annotator, judge_cfg, (variable,))


def _completions_kwargs(settings) -> dict:
    return {
        "model_name": settings.served_model,
        # alpaca_eval guesses plain completion for names containing "instruct"
        "requires_chatml": True,
        "max_tokens": 1,
        "temperature": 1,
        "logprobs": True,
        "top_logprobs": 5,
        "price_per_token": 0,
        "openai_api_base": settings.base_url,
    }


def write_annotator_config(judge_cfg, work: Path) -> Path:
    """work/annotator/configs.yaml: the weighted logprob annotator of the served model."""
    settings = judge_settings(judge_cfg)
    constants = import_alpaca_eval(judge_cfg.alpaca_eval_version).constants
    template = (
        constants.EVALUATORS_CONFIG_DIR / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt"
    )
    config = {
        judge_cfg.annotator: {
            "prompt_template": str(template),
            "fn_completions": "openai_completions",
            "completions_kwargs": _completions_kwargs(settings),
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
    note = (
        f"# API key: read from ${settings.api_key_env} when the judge runs and handed to "
        "alpaca_eval in memory; never written here.\n"
    )
    write_text_atomic(path, note + yaml.safe_dump(config))
    return path
