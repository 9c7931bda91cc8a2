"""Helpers the tests share (one place, imported as `from tests.support.x import y`): the composed
config and the smoke stack (composed), the tiny end-to-end run every e2e test starts from and the
stage count of a config's plan (pipeline_run; the `tiny_run` fixture of conftest.py), hand-made
points, a human-study experiment, a tiny Llama for noise tests, a fake OpenAI-compatible judge,
an offline W&B reader, the named skip markers, and the worked per-arm stage of pipeline/README.md
(endings_example/, files at the paths a newcomer adds them: not imported from here)."""
