"""The paper's API judges (alpaca_eval's own annotator configs) on the OpenAI API."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.judging.alpaca_import import JudgeError, import_alpaca_eval
from pipeline.judging.kinds import JudgeKind, redact_key_errors, register

# Where alpaca_eval's OpenAI client reads keys from (a comma-separated list in the second). The
# client reads them itself, so this kind has no settings of its own (no api_key_env: that is
# openai_compatible's, whose key this project hands over).
KEY_VARIABLES = ("OPENAI_API_KEY", "OPENAI_API_KEYS")


@register("openai")
class OpenAIJudge(JudgeKind):
    """alpaca_eval's config of judge.annotator; its client reads OPENAI_API_KEY(S) itself."""

    def validate(self, judge_cfg) -> None:
        from_file = os.environ.get("OPENAI_CLIENT_CONFIG_PATH")
        if not (
            os.environ.get("OPENAI_API_KEY")
            or os.environ.get("OPENAI_API_KEYS")
            or (from_file and Path(from_file).is_file())
        ):
            raise JudgeError(
                f"judge={judge_cfg.name} calls the OpenAI API but OPENAI_API_KEY is not set; "
                "export OPENAI_API_KEY=... (or OPENAI_CLIENT_CONFIG_PATH), "
                "or use judge=local offline"
            )

    def annotator_args(self, judge_cfg, work: Path, cache, fn_completions) -> tuple[Path, dict]:
        alpaca_eval = import_alpaca_eval(judge_cfg.alpaca_eval_version)
        root = Path(alpaca_eval.__file__).parent / "evaluators_configs"
        return root / judge_cfg.annotator / "configs.yaml", {}

    def prepare(self, annotator, judge_cfg) -> None:
        # Keys in a client config file (OPENAI_CLIENT_CONFIG_PATH) are not known here.
        redact_key_errors(annotator, judge_cfg, KEY_VARIABLES)
