"""What one composed config downloads when it runs, as `Item`s for the prefetch fetchers.

Read from the places the pipeline downloads or reads something at run time:
  model.source=hub            models.load_model_and_tokenizer: from_pretrained(id, revision)
  judge.settings.model (kind=local)  judging.annotator -> base_model_dir -> from_pretrained
  data.train, generate.prompts, overfit.heldout (enabled)
                              data._read_hub: datasets.load_dataset(name, config) for hf:...
  openllm.task_set=hub        lm-eval's ConfigurableTask.download: load_dataset(dataset_path,
                              dataset_name, **dataset_kwargs) of every task in each group
  judge.lc_data=hub           winrate.find_lc_data: hf_hub_download(tatsu-lab/alpaca_eval,
                              df_gamed.csv)
  calibration.pairs=<name>@<commit>
                              judging.calibration_source: GitHub raw files into paths.cache
  generate.reference, calibration.pairs, judge.lc_data=<path>, model.source=local
                              local files the run reads: checked, not downloadable
Sources shipped with the project (pkg:...), tiny and gguf_package models need nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.judging.calibration_source import published
from pipeline.judging.kinds import judge_kind
from pipeline.metrics.winrate import GAMED_FILE, HUB_REPO


@dataclass(frozen=True)
class Item:
    """One thing to have before a run; equal items (same kind, repo, revision, config, file,
    load kwargs) are fetched once however many points need them."""

    kind: str  # model | dataset | hub_file | calibration | file | config (cluster/fetchers.py)
    id: str  # hub repo id, local path, calibration source, or the config key that is not set
    revision: str | None = None  # hub revision (null = main)
    name: str | None = None  # dataset config name, file inside a hub repo, or the cache root
    repo_type: str = "model"  # model | dataset (hub repos)
    kwargs: str = ""  # extra load_dataset kwargs as JSON (lm-eval's dataset_kwargs)
    optional: bool = field(default=False, compare=False)  # the run goes on without it
    detail: str = field(default="", compare=False)  # kind config: why the key has no value

    def label(self) -> str:
        """repo[:config or /file][@revision]: how the table names the item."""
        sep = "/" if self.kind == "hub_file" else ":"
        text = self.id + (f"{sep}{self.name}" if self.name else "")
        return text + (f"@{self.revision}" if self.revision else "")


def _value(cfg, key: str):
    """cfg.<key>, or None when it is absent or null; raises when it is ??? or interpolates to
    nothing valid (e.g. `${paths.sharegpt_train}` left null)."""
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def parse_hf_source(source: str) -> tuple[str, str | None]:
    """(dataset, config) of a data source `hf:<dataset>[:<config>][@<split>]` (the syntax of
    pipeline/data/loading.py); every split is fetched, so the split is dropped."""
    name = source[len("hf:") :].partition("@")[0]
    name, _, config = name.partition(":")
    return name, config or None


def _source_items(source: str, optional: bool = False) -> list[Item]:
    if source.startswith("hf:"):
        name, config = parse_hf_source(source)
        return [Item("dataset", name, name=config, repo_type="dataset")]
    if source.startswith("pkg:"):
        return []  # shipped in pipeline/assets
    return [Item("file", source, optional=optional)]


def _model_items(model_cfg) -> list[Item]:
    if model_cfg is None:
        return []
    if model_cfg.source == "hub":
        return [Item("model", model_cfg.id, revision=model_cfg.revision)]
    if model_cfg.source == "local":
        return [Item("file", model_cfg.id)]
    return []  # tiny: built offline; gguf_package: installed with pip


def _model_needs(cfg) -> list[Item]:
    return _model_items(cfg.model)


def _judge_needs(cfg) -> list[Item]:
    items = _model_items(judge_kind(cfg.judge.kind).model(cfg.judge))
    lc_data = _value(cfg, "judge.lc_data")
    if lc_data == "hub":
        items.append(Item("hub_file", HUB_REPO, name=GAMED_FILE, repo_type="dataset"))
    elif lc_data:
        items.append(Item("file", lc_data))
    return items


def _data_needs(cfg) -> list[Item]:
    keys = ["data.train", "generate.prompts", "generate.reference"]
    if cfg.overfit.enabled:
        keys.append("overfit.heldout")
    items = []
    for key in keys:
        try:  # one key left unset (???) must not hide the others
            source, detail = _value(cfg, key), ""
        except OmegaConfBaseException as err:
            source, detail = None, str(err).splitlines()[0]
        items += _source_items(source) if source else [Item("config", key, detail=detail)]
    return items


def _calibration_needs(cfg) -> list[Item]:
    # A missing calibration set only leaves the judge uncalibrated (judge_calibration.enabled).
    if not cfg.calibration.enabled:
        return []
    pairs = cfg.calibration.pairs
    if published(pairs) is not None:  # downloaded into paths.cache, where the run looks for it
        return [Item("calibration", pairs, name=str(_value(cfg, "paths.cache")), optional=True)]
    return [Item("file", pairs, optional=True)]


@lru_cache(maxsize=1)
def _task_index() -> dict:
    from lm_eval.tasks import TaskManager

    return TaskManager().task_index  # reads lm-eval's task YAMLs only; builds no task


def lm_eval_datasets(task: str) -> list[tuple[str, str | None, str]]:
    """(dataset_path, dataset_name, dataset_kwargs as JSON) of every lm-eval task under `task`,
    groups and tags expanded through lm-eval's task index, without building a task (building
    one downloads its dataset)."""
    from lm_eval.tasks._index import Kind

    index, seen, out, todo = _task_index(), set(), [], [task]
    while todo:
        spec = todo.pop()
        if isinstance(spec, dict):  # an inline task or group inside a group's task list
            entry_cfg, children = spec, spec.get("task")
        else:
            entry = index.get(spec)
            if entry is None:
                raise KeyError(f"lm-eval has no task, group or tag {spec!r}")
            if spec in seen:
                continue
            seen.add(spec)
            entry_cfg = entry.cfg or {}
            children = sorted(entry.tags) if entry.kind == Kind.TAG else entry_cfg.get("task")
            if entry.kind not in (Kind.TAG, Kind.GROUP):
                children = None
        if isinstance(children, list):
            todo += children
        elif isinstance(spec, dict) and not entry_cfg.get("dataset_path") and children:
            todo.append(children)  # a registered task named inline, with overrides
        elif entry_cfg.get("dataset_path"):
            out.append(
                (
                    entry_cfg["dataset_path"],
                    entry_cfg.get("dataset_name"),
                    dict(entry_cfg.get("dataset_kwargs") or {}),
                )
            )
    return sorted(set((p, n, json.dumps(k, sort_keys=True)) for p, n, k in out))


def _openllm_needs(cfg) -> list[Item]:
    if cfg.openllm.task_set != "hub":
        return []  # task_set=local: the shipped files
    items = []
    for short in cfg.openllm.tasks:
        task = cfg.openllm.tasks[short].task
        for path, name, kwargs in lm_eval_datasets(task):
            kw = "" if kwargs == "{}" else kwargs
            items.append(Item("dataset", path, name=name, repo_type="dataset", kwargs=kw))
    return items


NEEDS = (_model_needs, _judge_needs, _data_needs, _openllm_needs, _calibration_needs)


def config_items(cfg) -> list[Item]:
    """Every item `cfg` needs; a required key left unset (???, or null through an interpolation)
    becomes a `config` item, which fails, naming the key."""
    items = []
    for needs in NEEDS:
        try:
            items += needs(cfg)
        except OmegaConfBaseException as err:
            items.append(
                Item("config", str(err.full_key or needs.__name__), detail=str(err).splitlines()[0])
            )
    return items
