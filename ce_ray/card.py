"""The model card (README.md) of a trained reranker, in the spirit of sentence-transformers' cards.

Everything in it comes from what the run saw: the base model, the data's size, columns and lengths, the loss
and its parameters, the settings that differ from the defaults, the training log, final metrics, versions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass
from typing import List, Optional, Sequence

from .storage import local_path

HIDDEN = {"model", "dtype", "output", "train_data", "eval_data", "storage_path", "run_name", "deepspeed"}


@dataclass
class CardFacts:
    base_model: str
    config: object  # TrainConfig
    defaults: object  # TrainConfig()
    stats: dict
    log: List[dict]
    final_metrics: dict
    max_length: int
    num_workers: int
    steps: int
    samples_per_second: float
    output: str
    best_step: Optional[int] = None  # the model is this step's checkpoint, the best by config.best_metric
    epochs_trained: float = 0.0  # the epochs the steps covered: a fraction where max_steps ends the run mid-epoch
    pairs_trained: int = 0  # the pairs the steps took, over all workers
    resumed_at: List[int] = dataclasses.field(default_factory=list)  # the steps the run resumed at, from checkpoints
    # the settings the run did not use, left out of the card (`train_data.unused_settings`: a BEIR folder's for files
    # of pairs, the evaluation's without eval_data)
    unused: Sequence[str] = ()


def _versions(deepspeed: bool) -> dict:
    """The versions of what the run used: DeepSpeed's only for a run of it (every card named it where installed)."""
    import importlib.metadata as md

    versions = {"Python": platform.python_version()}
    packages = [("ce-ray", "ce-ray"), ("Ray", "ray"), ("PyTorch", "torch"), ("Transformers", "transformers"),
                ("Sentence Transformers", "sentence-transformers")]
    if deepspeed:
        packages.append(("DeepSpeed", "deepspeed"))
    for name, package in packages:
        try:
            versions[name] = md.version(package)
        except md.PackageNotFoundError:
            if name == "ce-ray":
                from . import __version__

                versions[name] = __version__
    return versions


def trained_text(steps: int, epochs: float, pairs: int, resumed_at: Sequence[int] = ()) -> str:
    """`3 (0.375 epochs, 24 pairs)`: what a run's steps trained, as its summary and its card say it; and the steps
    it resumed at from a checkpoint (`3 (0.375 epochs, 24 pairs; resumed at step 1)`)."""
    resumed = ""
    if resumed_at:
        at = [f"{step:,}" for step in resumed_at]
        resumed = (f"; resumed at step {at[0]}" if len(at) == 1 else
                   f"; resumed at steps {', '.join(at[:-1])} and {at[-1]}")
    return (f"{steps:,} ({epochs:.4g} epoch{'' if epochs == 1 else 's'}, {pairs:,} pair{'' if pairs == 1 else 's'}"
            f"{resumed})")


def _shown_settings(config, unused: Sequence[str] = ()) -> list:
    """The settings the card lists: not those the run did not use (`unused`), nor `epochs` where max_steps ends the
    run, which then trained the epochs that its steps covered (a fraction, or more than `epochs`), said beside the
    steps."""
    hidden = HIDDEN | set(unused) | ({"epochs"} if getattr(config, "max_steps", None) else set())
    return [field for field in dataclasses.fields(config) if field.name not in hidden]


def non_default_settings(config, defaults, unused: Sequence[str] = ()) -> dict:
    changed = {}
    for field in _shown_settings(config, unused):
        value = getattr(config, field.name)
        if value != getattr(defaults, field.name):
            changed[field.name] = value
    if getattr(config, "deepspeed", None) is not None:
        changed["deepspeed"] = dataclasses.asdict(config.deepspeed)
    return changed


def _number(value: Optional[float], digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _log_table(log: List[dict]) -> List[str]:
    metric_names = sorted({k for entry in log for k in entry if k.startswith("eval_")})
    header = ["Epoch", "Step", "Training Loss"] + [m[5:] for m in metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---:"] * len(header)) + "|"]
    for entry in log:
        row = [f"{entry['epoch']:.4f}", str(entry["step"]), _number(entry.get("loss"))]
        row += [_number(entry.get(m)) for m in metric_names]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _is_hub_id(model: str) -> bool:
    return "://" not in model and not os.path.exists(model) and not model.startswith((".", "/"))


def shown(path: str) -> str:
    """A model or data path as a card meant for the hub shows it: a hub id or a URI as it is, a local path by its
    name alone (`/home/alice/data/pairs.parquet` said whose machine it was, and nothing to a reader of the hub)."""
    path = local_path(path)
    if "://" in path or _is_hub_id(path):
        return path
    return os.path.basename(path.rstrip("/")) or path


def usage_load_lines(output: str) -> List[str]:
    """The card's lines that load the model. CrossEncoder takes a local folder or a hub id, not a URI (it looks
    `s3://` up on the hub and fails): a model written to S3 (`s3://`, or `s3a://`, which the AWS CLI does not take)
    is loaded from a copy of its folder, made without the checkpoints that its default storage_path puts in it; one
    written to a local path or a `file://` URI from its folder, named alone (`shown`)."""
    if "://" not in output or output.startswith("file://"):
        return [f'model = CrossEncoder("{shown(output)}")  # this folder, or its hub id once uploaded']
    folder = "s3://" + output.split("://", 1)[1].rstrip("/")
    name = folder.rsplit("/", 1)[-1]
    return ["# CrossEncoder reads a local folder or a hub id: copy the folder first, e.g.",
            f'# aws s3 cp --recursive {folder} {name} --exclude "checkpoints/*"',
            f'model = CrossEncoder("{name}")']


def model_card(facts: CardFacts) -> str:
    config, stats = facts.config, facts.stats
    trained_on = shown(config.train_data)
    loss_parameters = {"activation_fn": "torch.nn.modules.linear.Identity", "pos_weight": config.pos_weight}
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: text-ranking",
        "tags: [sentence-transformers, cross-encoder, reranker, generated_from_trainer, ce-ray]",
        # The hub reads base_model as a hub id: a local or object-storage folder is named in the text only.
        *([f"base_model: {facts.base_model}"] if _is_hub_id(facts.base_model) else []),
        "---",
        "",
        f"# CrossEncoder based on {shown(facts.base_model)}",
        "",
        f"This is a [Cross Encoder](https://www.sbert.net/docs/cross_encoder/usage/usage.html) model finetuned from "
        f"`{shown(facts.base_model)}` with ce-ray on Ray Train ({facts.num_workers} worker(s), "
        f"{'DeepSpeed ZeRO-%d' % config.deepspeed.stage if config.deepspeed else 'DDP'}). "
        "It computes a relevance score for a (query, document) pair and can rerank search results.",
        "",
        "## Model Details",
        "",
        "- **Model Type:** Cross Encoder",
        f"- **Base model:** `{shown(facts.base_model)}`",
        f"- **Maximum Sequence Length:** {facts.max_length} tokens",
        "- **Number of Output Labels:** 1 label",
        f"- **Training Dataset:** {stats.get('source', config.train_data).replace(config.train_data, trained_on, 1)}",
        "",
        "## Usage",
        "",
        "```bash",
        "pip install -U sentence-transformers",
        "```",
        "",
        "```python",
        "from sentence_transformers import CrossEncoder",
        "",
        *usage_load_lines(facts.output),
        "pairs = [",
        '    ["How many people live in Berlin?", "Berlin has a population of 3,520,031 registered inhabitants."],',
        '    ["How many people live in Berlin?", "Berlin is well known for its museums."],',
        "]",
        "scores = model.predict(pairs)",
        'ranks = model.rank("How many people live in Berlin?", [p[1] for p in pairs])',
        "```",
        "",
        "Or at cluster scale: `ce-ray score --model <this folder> --input pairs.parquet --output scored/`.",
        "",
    ]
    if facts.final_metrics:
        lines += ["## Evaluation", "",
                  f"Reranking {stats['eval'].replace(f'`{config.eval_data}`', f'`{shown(config.eval_data)}`')}."
                  + (f" The model is the checkpoint of step {facts.best_step}, the best by {config.best_metric} of "
                     "the checkpoints (the base model, evaluated at step 0, is none)."
                     if facts.best_step is not None else ""),
                  "", "| Metric | Value |", "|:--|:--|"]
        lines += [f"| {k[5:]} | {v:.4f} |" for k, v in facts.final_metrics.items()]
        lines.append("")
    lines += [
        "## Training Details",
        "",
        "### Training Dataset",
        "",
        f"- Size: {stats['pairs']:,} training pair{'' if stats['pairs'] == 1 else 's'}"
        + (f" ({stats['rejected']:,} pair{'' if stats['rejected'] == 1 else 's'} rejected: "
           f"{json.dumps(stats['reject_reasons'], ensure_ascii=False)})"
           if stats["rejected"] else "")
        + (f"; {stats['pairs'] - stats['left_out']:,} trained each epoch: {stats['left_out']:,} left out of each "
           f"(others each epoch), so that the {facts.num_workers} workers take equal parts"
           if stats.get("left_out") else ""),
        f"- Columns: {', '.join(f'`{c}`' for c in stats['columns'])}",
        f"- Positives (label >= 0.5): {stats['positives']:,}; mean label {stats['label_mean']:.4f}",
        "- Statistics of every pair:",
        "",
        "  | | query | document | label | tokens (pair) |",
        "  |:--|:--|:--|:--|:--|",
        "  | type | string | string | float | int |",
        f"  | details | min: {stats['query_chars_min']} characters, mean: {stats['query_chars_mean']:.2f} characters, "
        f"max: {stats['query_chars_max']} characters | min: {stats['document_chars_min']} characters, "
        f"mean: {stats['document_chars_mean']:.2f} characters, max: {stats['document_chars_max']} characters | "
        f"min: {stats['label_min']}, mean: {stats['label_mean']:.2f}, max: {stats['label_max']} | "
        f"min: {stats['tokens_min']}, mean: {stats['tokens_mean']:.2f}, max: {stats['tokens_max']} |",
        "",
        "- Loss: `BinaryCrossEntropyLoss` with these parameters:",
        "",
        "  ```json",
        "  " + json.dumps(loss_parameters),
        "  ```",
        "",
        "### Training Hyperparameters",
        "",
        "#### Non-Default Hyperparameters",
        "",
    ]
    changed = non_default_settings(config, facts.defaults, facts.unused)
    lines += [f"- `{k}`: {json.dumps(v)}" for k, v in changed.items()] or ["- none: the defaults below"]
    lines += ["", "<details><summary>All Hyperparameters</summary>", ""]
    lines += [f"- `{f.name}`: {json.dumps(getattr(config, f.name), default=str)}"
              for f in _shown_settings(config, facts.unused)]
    lines += ["", "</details>", "", "### Training Logs", ""] + _log_table(facts.log)
    trained = trained_text(facts.steps, facts.epochs_trained, facts.pairs_trained, facts.resumed_at)
    lines += ["", f"Steps: {trained}; throughput: {facts.samples_per_second:,.1f} samples/s.", "",
              "### Framework Versions", ""]
    lines += [f"- {k}: {v}" for k, v in _versions(bool(facts.config.deepspeed)).items()]
    lines += ["", "## Citation", "",
              "Sentence-BERT: Reimers and Gurevych, \"Sentence-BERT: Sentence Embeddings using Siamese "
              "BERT-Networks\", EMNLP 2019.", ""]
    return "\n".join(lines)
