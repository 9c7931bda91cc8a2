"""Helpers the tests share (one place, imported as `from tests.support.x import y`): the composed
config and the smoke stack, hand-made points, a human-study experiment, a tiny Llama for noise
tests, a fake OpenAI-compatible judge, an offline W&B reader and the named skip markers."""
