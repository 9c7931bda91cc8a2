"""Tests never touch the network: the hub is switched off for this process and its children."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# alpaca_eval fixes its version at import; the tests use AlpacaEval 1 judges, as the paper did.
os.environ["IS_ALPACA_EVAL_2"] = "False"
