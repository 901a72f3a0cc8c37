"""Fine-tuning on Ray Train: pairs tokenized by Ray Data, sharded to DDP (or DeepSpeed ZeRO) workers.

`train(config)` is the whole job: read and tokenize the pairs (or build them from a BEIR split with BM25
hard negatives: `train_data`, which also cuts each worker's shard into batches and passes), run `train_loop`
on `num_workers` Ray Train workers, checkpoint every `save_every` steps, at each epoch end and at the last step,
evaluate NDCG@10 / MRR@10 / MAP on the eval split, and save a folder that `sentence_transformers.CrossEncoder` loads,
with a model card. A run started again with the same name (and storage) resumes from its last checkpoint:
weights, optimizer, scheduler, step, data position and each worker's random state, so that it ends as the run
would have had it not stopped (the checkpoints' files and the run's record: `checkpoints`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from typing import Dict, Iterator, List, Optional

import numpy as np

from .batching import IDS, TYPES, default_batch_tokens, list_parts, pair_encoder, token_budget_batches
from .config import ConfigError, TrainConfig, require, with_settings
from .checkpoints import (DS_TAG, MODEL, PROGRESS, RANDOM_STATE, STATE, best_checkpoint, best_kept, check_whole,
                          as_a_new_run, checkpoint_folder, claim_precision, claim_run, new_run_hint, random_state,
                          restore_random_state, resumed_step, run_storage, upload_checkpoint, whole_checkpoint,
                          worker_seed, write_file_list)
from .messages import plural, setting_and_flag
from .progress import duration
from .storage import (delete_files, filesystem, is_remote, last_ones_last, refuse_written_inside, remove, same_place,
                      upload_folder)
from .train_data import (checked_columns, micro_batches, padded_inputs, prefetched, prepare_data,
                         refuse_missing_split, refuse_settings_of_beir, shard_spans, top_reasons, training_batch_tokens,
                         training_input, unused_settings, without_bars_note, worker_spans)

# What the workers return where they stopped the run themselves (a non-finite loss or weights): why, which the
# driver raises.
STOPPED = "stopped"

# ---------------------------------------------------------------- workers: loss, evaluation


def _on_device(inputs: dict, device, model_type: str) -> dict:
    """A pass's padded host arrays as model inputs on the device, the mask in the form the model takes
    without waiting for the GPU, and none for a pass without padding (`model.attention_inputs`)."""
    from .model import attention_inputs, to_device

    mask, padded = inputs["attention_mask"], not inputs["attention_mask"].all()
    on_device = {k: to_device(v, device) for k, v in inputs.items() if k != "attention_mask"}
    return on_device | attention_inputs(model_type, to_device(mask, device) if padded else None, padded)


def evaluate(model, eval_shard, qrels: Dict[str, Dict[str, int]], device, pad_id: int, budget: int,
             model_type: str, rank: int = 0, world: int = 1, activation: Optional[str] = None) -> dict:
    """NDCG@10, MRR@10 and MAP of the model's ranking of the eval candidates.

    The candidates rank by the scores the saved model gives (`activation`, the one it is saved with, on the
    fp32 logits, as `ce-ray rerank` and CrossEncoder.predict apply it; None: the logits): a sigmoid rounds
    logits above about 17 to 1.0 in fp32, and those candidates then tie, in the candidates' order, there as
    here. Ranked by the logits, the run reported an order that the saved model's scores do not give.

    Relevant documents the first stage missed count, as in BEIR: MAP divides by all relevant documents and
    the ideal NDCG ranks all judged ones. With `world` > 1 each worker scores every world-th candidate and the
    workers share their scores, so that all hold the same metrics.
    """
    import torch

    from .metrics import mean_metrics, ranking_metrics
    from .model import Reranker, activation_from_path

    to_score = activation_from_path(activation) if activation else torch.nn.Identity()
    scored = []  # (query id, -score, row, doc id) of this worker's candidates; row: its place among all candidates
    seen = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for table in eval_shard.iter_batches(batch_size=4096, batch_format="pyarrow"):
            share = np.arange(rank, table.num_rows, world)  # this worker's rows of the batch
            places = (seen + share).tolist()
            table, seen = table.take(share), seen + table.num_rows
            ids, offsets = list_parts(table.column(IDS))
            types = list_parts(table.column(TYPES))[0] if TYPES in table.column_names else None
            scores = np.empty(table.num_rows, dtype=np.float32)
            for rows in token_budget_batches(np.diff(offsets), budget):
                inputs = _on_device(padded_inputs(ids, types, offsets, rows, pad_id), device, model_type)
                scores[rows] = to_score(Reranker.logits(model(**inputs)).float()).view(-1).cpu().numpy()
            scored += zip(table.column("query_id").to_pylist(), (-float(s) for s in scores),
                          places, table.column("doc_id").to_pylist())
    model.train(was_training)
    if world > 1:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, scored)
        scored = [row for part in parts for row in part]
    ranked: Dict[str, list] = {}
    for q, negative_score, place, d in scored:
        ranked.setdefault(q, []).append((negative_score, place, d))
    per_query = []
    for q, judged in qrels.items():
        order = [d for _, _, d in sorted(ranked.get(q, []))]  # equal scores in the candidates' order, as ce-ray eval
        per_query.append(ranking_metrics([judged.get(d, 0) for d in order], k=10,
                                         relevant_total=sum(g > 0 for g in judged.values()),
                                         ideal_gains=list(judged.values())))
    means = mean_metrics(per_query)
    return {f"eval_{name}": means[name] for name in ("ndcg@10", "mrr@10", "map")}


def linear_schedule(warmup: int, total: int):
    """transformers' linear schedule with warmup, as a LambdaLR factor."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def adamw(model, config: TrainConfig):
    """The run's AdamW. Its fused kernel, CrossEncoderTrainer's default optimizer (transformers'
    adamw_torch_fused): on a GPU it updates every parameter in a few launches, where small-batch steps are otherwise
    launch-bound; on a CPU in one pass over them, 5x faster than torch's default there (the shared L12: 23 ms a step
    against 117 on 2 cores). DeepSpeed keeps its own way."""
    import torch

    return torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.lr,
                             fused=None if config.deepspeed else True)


def training_pass(forward, inputs: dict, target, loss_fn, rows: int, group: int, autocast):
    """One forward and backward pass of a step (DeepSpeed's aside): the loss is the mean over the batch's `rows`
    (each pass of it adds its sum), its gradient the mean over the step's `group` batches. Returns the loss."""
    from .model import Reranker

    with autocast():
        logits = Reranker.logits(forward(**inputs))
    loss = loss_fn(logits.float().view(-1), target) / rows
    (loss / group).backward()
    return loss


def optimizer_step(model, optimizer, scheduler, max_grad_norm: float) -> None:
    """A step's update after its passes (DeepSpeed's aside): gradients clipped, AdamW, the schedule, gradients
    cleared."""
    import torch

    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def gradients_out_of_graphs(module) -> None:
    """Under CUDA graphs (`compile_mode: reduce-overhead`), where more passes of the step follow: each gradient
    the pass left, copied out of the graphs' memory.

    A parameter's first gradient of a step is the compiled backward's output tensor itself (autograd keeps it as
    `.grad` rather than copy it), and that tensor lives in the memory of torch's CUDA graph trees, which the next
    pass's replay writes over: the step's gradient would be the last pass's alone, silently, or the replay fails
    ("accessing tensor output of CUDAGraphs that has been overwritten"): pytorch/pytorch issues 169545 and 96693,
    with gradient accumulation; `bench/graph_gradients.py` tells whether a torch still does it. The copies are
    made by one multi-tensor product by 1.0 (a copy to the bit), a few launches on a GPU rather than one a
    parameter: steps of small passes (`grad_accum` batches of 16) are what CUDA graphs are for. A step of one pass
    needs none: the optimizer reads its gradients before any replay."""
    import torch

    parameters = [parameter for parameter in module.parameters() if parameter.grad is not None]
    if parameters:  # torch's multi-tensor operations take no empty list
        copies = torch._foreach_mul([parameter.grad for parameter in parameters], 1.0)
        for parameter, copy in zip(parameters, copies):
            parameter.grad = copy


def _parameter_groups(model, weight_decay: float) -> list:
    """No weight decay on biases and LayerNorm weights, as transformers' Trainer does."""
    import torch

    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or id(param) in norms else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _deepspeed_config(config: TrainConfig, bf16: bool) -> dict:
    ds = config.deepspeed
    zero: dict = {"stage": ds.stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "gradient_clipping": config.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # torch's AdamW: nothing to compile, runs on CPU too
        # and steps the offloaded states too: DeepSpeed refused any optimizer but its own compiled CPU Adam there,
        # and every worker failed as the engine started
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 62,
        "wall_clock_breakdown": False,
    }


def _import_deepspeed(use_gpu: bool):
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if not use_gpu:
        # The CPU accelerator would JIT-compile a shared-memory allreduce; gloo does the same job uncompiled.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def _load_weights_only(path: str, map_location=None):
    """A file of a DeepSpeed checkpoint, read as ce-ray reads its own (`torch.load(weights_only=True)`): DeepSpeed's
    own engine unpickles it, and a checkpoint put in the run's storage ran its code on every worker that resumed.
    Its files hold tensors, numbers and dicts, and these of DeepSpeed's own classes, which are let in by name."""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location=map_location, weights_only=True)


def _fingerprint(module):
    """Per-tensor sums in float64: equal on every replica when data parallelism keeps them in sync."""
    import torch

    return torch.stack([p.detach().double().sum() for p in module.parameters()]).cpu()


def _collective_device():
    """Where a tensor must be for the process group's collectives: NCCL takes only GPU tensors, gloo CPU ones."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _replica_divergence(module) -> float:
    import torch
    import torch.distributed as dist

    mine = _fingerprint(module)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 0.0
    mine = mine.to(_collective_device())
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return float(max((e - every[0]).abs().max() for e in every))


def _nonfinite_weights(module) -> bool:
    """Whether any worker's parameters hold a NaN or an infinity: their sum does (a NaN, or infinities of both signs,
    make it NaN). Finite weights of ~1e34 and more sum past float32's range as well, and count the same: a run there
    has diverged as surely (a step of lr 1e36 takes weights there), and its next loss would not be finite. One pass
    over the weights and one sync: ~6-30 ms (the best runs) for the 33M of MiniLM-L12 on 2 busy CPU cores, against
    ~170-600 ms for its save (an elementwise `isfinite` took ~100-200 ms). Under ZeRO-3 a rank's parameters are
    placeholders: no check there."""
    import torch

    sums = [p.detach().sum() for p in module.parameters()]
    bad = float(not torch.isfinite(torch.stack(sums).sum())) if sums else 0.0
    return _global_mean(bad, 1) > 0


def _global_mean(value: float, count: int) -> float:
    import torch
    import torch.distributed as dist

    # One worker needs no collective: with NCCL the first one would also set up its communicator, for nothing.
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value / max(count, 1)
    pair = torch.tensor([value, float(count)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(pair)
    return float(pair[0] / max(pair[1], 1.0))


# ---------------------------------------------------------------- workers: the loop


def uses_bf16(config: TrainConfig, use_gpu: bool) -> bool:
    """Whether the run trains in bf16: under DeepSpeed its section's `bf16` where set (as jobs/configs/train.yaml
    sets it), else the run's `bf16`; unset, on a GPU. The section's setting was read nowhere: `bf16: false`
    there still trained a GPU run in bf16, and `bf16: true` a CPU run in fp32."""
    section = config.deepspeed.bf16 if config.deepspeed else None
    for setting in (section, config.bf16):
        if setting is not None:
            return setting
    return use_gpu


def train_loop(loop_config: dict) -> dict:
    """One Ray Train worker: reads like a single-device loop, with the distributed parts where they act."""
    # Before the imports: where Ray Train's part of a run goes, told by rank 0's `marks` (`fit_phases`).
    marks = {"function": time.time(), "process": _process_start(), "loop": None, "eval": 0.0, "checkpoints": 0.0}
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint

    from . import bert
    from .model import Reranker, load_reranker, to_device, use_shape_free_attention
    from .model_folder import keep_layout, local_model_path

    without_bars_note()

    config: TrainConfig = loop_config["config"]
    plan: dict = loop_config["plan"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    use_gpu = device.type == "cuda"
    bf16 = uses_bf16(config, use_gpu)
    use_shape_free_attention(device)  # the model is loaded on the CPU below, then moved
    checkpoint = ray.train.get_checkpoint()
    progress = {"step": 0, "micro": 0, "log": [], "samples": 0, "seconds": 0.0, "resumed_from": []}
    checkpoint_dir, resumed_random = None, None
    if checkpoint:  # first its place in the data
        shown = f"{plan['checkpoints']}/{os.path.basename(checkpoint.path)}"
        checkpoint_dir = checkpoint_folder(checkpoint, shown)
        check_whole(checkpoint_dir, bool(config.deepspeed), shown)  # before any of it is read
        with open(os.path.join(checkpoint_dir, PROGRESS)) as f:
            progress = json.load(f)
    # The epoch's first span comes while the model loads (this worker's rows in spans: `worker_spans`).
    part, left_out = plan["spans"][rank], plan["left_out"]
    spans = prefetched(shard_spans(part, config, progress["micro"] // plan["batches_per_epoch"], rank, left_out))

    # ce-ray's BERT where it reproduces the model: less host work per pass (a step of 16 pairs on a GPU is
    # little else), and loaded and saved without transformers, whose import is seconds of a worker's start.
    torch.manual_seed(config.seed)  # a base model's new head: the same in every run (DDP gives all rank 0's)
    # On this worker's node: a copy of an s3:// model (the objects the driver listed) or a hub model.
    model_path = local_model_path(plan["model"], plan["model_files"])
    native = bert.trainable(model_path) if config.implementation == "auto" else None
    reranker = None if native is not None else load_reranker(
        model_path, device="cpu", dtype="float32", max_length=plan["max_length"],
        allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    net = native if native is not None else reranker.model.train()
    loaded = native if native is not None else reranker  # both know the model's type and pad id
    model_type, pad_id = loaded.model_type, loaded.pad_id
    torch.manual_seed(worker_seed(config.seed, rank))
    if rank == 0:
        code = "ce-ray's BERT" if native is not None else "transformers"
        compiled = f", compiled ({config.compile_mode}) in its first steps" if config.compile else ""
        say(f"ce-ray train: {plan['model']} on {device} ({code}{', bf16' if bf16 else ''}{compiled})")
    total, per_epoch, accum = plan["total_steps"], plan["batches_per_epoch"], config.grad_accum

    if checkpoint:
        progress["resumed_from"].append(progress["step"])
        random_file = os.path.join(checkpoint_dir, RANDOM_STATE.format(rank=rank))
        if os.path.isfile(random_file):  # taken back where the steps start, as it was saved where they stopped
            resumed_random = torch.load(random_file, weights_only=True)
        else:  # a checkpoint of an earlier ce-ray: other dropout masks than the run would have drawn
            torch.manual_seed(worker_seed(config.seed, rank) + progress["step"])
        if rank == 0:  # the step Ray Train resumes from: checkpoints a stopped run wrote after it recorded none
            say(f"ce-ray train: resumed at step {progress['step']:,} of {total:,}, from {checkpoint.path}")
        if not config.deepspeed:
            from safetensors.torch import load_file

            weights = load_file(os.path.join(checkpoint_dir, MODEL, "model.safetensors"))
            if native is not None:
                net.load_state_dict(bert.native_state(weights, len(net.layers)))
            else:
                net.load_state_dict(weights, strict=False)
    if progress.get("invocation") != plan["invocation"]:  # this command's first group of workers
        # Its steps' seconds start here: a group restarted within the command goes on counting them.
        progress["invocation"], progress["seconds_before"] = plan["invocation"], progress["seconds"]

    optimizer = adamw(net, config)
    warmup = math.ceil(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, total))
    if config.deepspeed:
        deepspeed = _import_deepspeed(use_gpu)
        model, optimizer, _, scheduler = deepspeed.initialize(
            model=net, optimizer=optimizer, lr_scheduler=scheduler, config=_deepspeed_config(config, bf16))
        if checkpoint_dir:
            model.checkpoint_engine.load = _load_weights_only
            model.load_checkpoint(checkpoint_dir, tag=DS_TAG)
        module, autocast = model.module, contextlib.nullcontext  # DeepSpeed casts the model itself
    else:
        model = ray.train.torch.prepare_model(net)  # DDP: gradients averaged across workers
        if checkpoint_dir:
            # Onto this worker's device: a GPU run's state names the GPU of its rank 0, which a run resumed on CPUs
            # lacks (it failed in every worker), and where each worker of a node sees its GPUs, the other ranks held
            # a copy on their node's first GPU for the rest of the run.
            state = torch.load(os.path.join(checkpoint_dir, STATE), weights_only=True, map_location=device)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            del state
        module = model.module if hasattr(model, "module") else model
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    if checkpoint_dir:
        # Ray gives the workers of a node one folder for the checkpoint: none may delete it while another reads.
        if world > 1:
            torch.distributed.barrier()
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    # The training passes' forward. A step of a small batch on a GPU is mostly launching kernels, and the
    # compiled pass (forward and backward) launches fewer, fused ones; with reduce-overhead, CUDA graphs
    # replay each (rows, width)'s launches at once. dynamic=True: one compiled graph serves every (rows,
    # width) of the length-grouped batches; a pass with padding and one without are two. Evaluation stays
    # eager: it runs rarely, in eval mode, which would be graphs of its own.
    forward = torch.compile(model, dynamic=True, mode=config.compile_mode) if config.compile else model
    loss_fn = torch.nn.BCEWithLogitsLoss(
        reduction="sum", pos_weight=torch.tensor(config.pos_weight, device=device) if config.pos_weight else None)
    eval_shard = ray.train.get_dataset_shard("eval") if plan["qrels"] else None

    # Each worker scores its share of the candidates, but under ZeRO-3 every rank takes part in each forward
    # pass (its parameters are gathered there), so each scores them all.
    zero3 = config.deepspeed is not None and config.deepspeed.stage == 3
    share = dict(rank=0, world=1) if zero3 else dict(rank=rank, world=world)

    def run_eval() -> dict:
        started = time.perf_counter()
        metrics = evaluate(model if config.deepspeed else module, eval_shard, plan["qrels"], device, pad_id,
                           plan["eval_batch_tokens"], model_type, activation=plan["activation"], **share)
        marks["eval"] += time.perf_counter() - started
        return metrics

    # Object storage: ce-ray's upload, which fails where a file was not written. Local storage keeps Ray Train's.
    upload = functools.partial(upload_checkpoint, shown=plan["checkpoints"]) if is_remote(plan["checkpoints"]) else None

    def save(metrics: dict) -> None:
        """Every worker reports (a barrier) its random state; rank 0 writes the model and the state, DeepSpeed
        ranks their shards."""
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(random_state(device), os.path.join(tmp, RANDOM_STATE.format(rank=rank)))
            if config.deepspeed:
                model.save_checkpoint(tmp, tag=DS_TAG)
            full_state = model._zero3_consolidated_16bit_state_dict() if zero3 else None
            if rank == 0:
                if native is not None:
                    bert.save(module.state_dict() if full_state is None else full_state, model_path,
                              os.path.join(tmp, MODEL), plan["max_length"], plan["activation"])
                else:
                    save_reranker(module, reranker.tokenizer, os.path.join(tmp, MODEL), plan["max_length"],
                                  plan["activation"], state_dict=full_state)
                keep_layout(model_path, os.path.join(tmp, MODEL), plan["activation"], plan["max_length"])
                if not config.deepspeed:
                    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                               os.path.join(tmp, STATE))
                with open(os.path.join(tmp, PROGRESS), "w") as f:
                    json.dump(progress | {"file_lists": world}, f)
            write_file_list(tmp, rank)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_{progress['step']:07d}", checkpoint_upload_fn=upload)
        marks["checkpoints"] += time.perf_counter() - started

    marks["loop"] = time.time()  # the model ready: loaded, restored, wrapped; the baseline's evaluation is "eval"
    if plan["qrels"] and progress["step"] == 0:
        baseline = run_eval()
        progress["log"].append({"epoch": 0.0, "step": 0, **baseline})
        if rank == 0:
            say("ce-ray train: before training " + _metrics_text(baseline))

    if resumed_random is not None:
        restore_random_state(resumed_random, device)
    step, micro = progress["step"], progress["micro"]
    loss_sum, loss_count, samples, tick = 0.0, 0, 0, time.perf_counter()
    data = Waiting()
    epoch = micro // per_epoch
    while step < total:
        for passes in data.over(micro_batches(spans, config, epoch, rank, micro - epoch * per_epoch, pad_id,
                                              plan["max_length"])):
            # `accum` batches a step, within an epoch: its last step takes what is left (fewer batches), so
            # that every batch is trained on, as transformers' Trainer does.
            in_epoch = micro - epoch * per_epoch
            group = min(accum, per_epoch - (in_epoch - in_epoch % accum))
            boundary = in_epoch % accum == group - 1
            rows = sum(len(labels) for _, labels in passes)
            for number, (inputs, labels) in enumerate(passes):
                inputs = _on_device(inputs, device, model_type)
                target = to_device(labels, device)
                if config.deepspeed:
                    model.set_gradient_accumulation_boundary(boundary)  # ours, not its count of batches
                    loss = loss_fn(Reranker.logits(model(**inputs)).float().view(-1), target) / rows
                    model.backward(loss * (accum / group))  # it divides by accum: the mean over the group
                    model.step()  # optimizer, scheduler and clipping at accumulation boundaries
                else:
                    # Gradients cross workers once a step: at the last pass of the boundary batch. Workers
                    # may cut their batches into different numbers of passes; only that last one syncs.
                    step_ends = boundary and number == len(passes) - 1
                    with contextlib.nullcontext() if world == 1 or step_ends else model.no_sync():
                        loss = training_pass(forward, inputs, target, loss_fn, rows, group, autocast)
                    if config.cuda_graphs and not step_ends:
                        gradients_out_of_graphs(module)
                loss_sum = loss_sum + loss.detach()  # stays on the device: no sync until it is logged
            if not config.deepspeed and boundary:
                optimizer_step(model, optimizer, scheduler, config.max_grad_norm)
            micro += 1
            loss_count, samples = loss_count + 1, samples + rows
            if not boundary:
                continue
            step += 1
            epoch_end = in_epoch == per_epoch - 1
            last = step == total
            saving = (config.save_every and step % config.save_every == 0) or epoch_end or last
            evaluating = plan["qrels"] and (
                (config.eval_every and step % config.eval_every == 0) or epoch_end or last
                or (config.best_metric and saving))
            # With best_metric each evaluation is a checkpoint too: one between checkpoints could beat the model
            # chosen, unsaved, which the summary called the best (transformers refuses such steps).
            saving = saving or bool(config.best_metric and evaluating)
            if not (step % config.log_every == 0 or saving or evaluating):
                continue
            elapsed = time.perf_counter() - tick
            global_samples = samples * world
            entry = {"epoch": round(micro / per_epoch, 4), "step": step,
                     "loss": _global_mean(float(loss_sum), loss_count), "lr": scheduler.get_last_lr()[0],
                     "samples_per_second": global_samples / elapsed if elapsed else 0.0,
                     # The share of the time this worker waited for its next batch: is the data the limit?
                     "data_wait": data.seconds / elapsed if elapsed else 0.0}
            # A stop is returned, not raised: Ray Train retries a worker's error (max_failures), and this one
            # would come again. The driver raises it (`stopped`).
            if not math.isfinite(entry["loss"]):
                # Every worker holds the same mean: all stop here, before a checkpoint, and the model, of weights
                # that NaN gradients made NaN (the run saved them and said it was done).
                first = progress["step"] + 1  # the first step since the last log line
                return {STOPPED: (
                    f"the training loss of step{f's {first:,}-' if first < step else ' '}{step:,} is {entry['loss']}: "
                    f"the run stops without saving its weights (a lower {setting_and_flag('lr')} or a "
                    f"{setting_and_flag('warmup_ratio')} keeps a diverging loss finite; a base model of NaN or "
                    "infinite weights gives one from the first step)")}
            # The loss of a step is that of the weights before its update: NaN or infinite gradients of the steps
            # since the last log line made the weights so behind a finite loss, and they were saved as the model.
            if saving and _nonfinite_weights(module):
                return {STOPPED: (
                    f"the weights after step {step:,} are not all finite, though its loss is ({entry['loss']:.4f}): "
                    f"the run stops without saving its weights (a lower {setting_and_flag('lr')} or a "
                    f"{setting_and_flag('warmup_ratio')} keeps a diverging run finite)")}
            progress["samples"] += global_samples
            progress["seconds"] += elapsed
            if evaluating:
                entry.update(run_eval())
            progress["step"], progress["micro"] = step, micro
            progress["log"].append(entry)
            if rank == 0:
                # The steps left at the mean time of a step so far (evaluations and checkpoints left out).
                left = "" if last else f", ~{duration((total - step) * progress['seconds'] / step)} left"
                say(f"ce-ray train: step {step}/{total} epoch {entry['epoch']:.2f} loss {entry['loss']:.4f} "
                    f"lr {entry['lr']:.2e} samples/s {entry['samples_per_second']:.1f} "
                    f"(waiting for data {entry['data_wait']:.0%}){left} {_metrics_text(entry)}".rstrip())
            if saving:
                save(entry)
            loss_sum, loss_count, samples, tick = 0.0, 0, 0, time.perf_counter()
            data.seconds = 0.0
            if last:
                break
        epoch += 1
        spans = shard_spans(part, config, epoch, rank, left_out)
    divergence = None if zero3 else _replica_divergence(module)
    return {"log": progress["log"], "resumed_from": progress["resumed_from"], "replica_divergence": divergence,
            "samples": progress["samples"], "seconds": progress["seconds"], "steps": step,
            "seconds_here": progress["seconds"] - progress["seconds_before"], "marks": marks,
            **_compile_counts(config)}


def _process_start() -> float:
    """When this worker's process started (wall clock). Ray Train's workers are actors with a runtime environment
    of their own (Ray Train's variables from the driver's); where Ray hands one a process it started before the
    run, `fit_phases` counts it as there at fit's call."""
    import psutil

    return psutil.Process().create_time()


def say(line: str) -> None:
    """A worker's line for the user, once. Ray Train patches a worker's `print` to log the line, and where Ray
    has wrapped sys.stdout (its workers do) to print it as well: every line came twice. The process's own
    stdout, which Ray's log monitor forwards as it does any worker output, takes it once."""
    print(line, file=sys.__stdout__, flush=True)


def _compile_counts(config: TrainConfig) -> dict:
    """What torch.compile did in this process. `compiled_graphs`: the graphs built, recompiles included: a few
    (passes with and without padding, of one row), or a count that grows with the run, each graph seconds of
    it. `cuda_graph_skips`, with reduce-overhead: how many times torch left a compiled graph without CUDA
    graphs (every one on a CPU; on a GPU torch warns why)."""
    if not config.compile:
        return {"compiled_graphs": None, "cuda_graph_skips": None}
    from torch._dynamo.utils import counters

    return {"compiled_graphs": counters["stats"]["unique_graphs"],
            "cuda_graph_skips": counters["inductor"]["cudagraph_skips"] if config.cuda_graphs else None}


class Waiting:
    """The seconds a loop spends waiting for the items of the iterators it goes `over`."""

    def __init__(self):
        self.seconds = 0.0

    def over(self, items) -> Iterator:
        items = iter(items)
        while True:
            start = time.perf_counter()
            item = next(items, None)
            self.seconds += time.perf_counter() - start
            if item is None:
                return
            yield item


def save_reranker(module, tokenizer, path: str, max_length: int, activation: str, state_dict=None) -> None:
    """The CrossEncoder layout, in float32 as ce-ray's BERT saves it (`bert.save`); `state_dict` holds the gathered
    weights when ZeRO-3 partitions the module. DeepSpeed's bf16 casts the module itself: saved as it was, a model
    of transformers' code came out in bf16, and CrossEncoder loaded and scored it so, unlike ce-ray."""
    import torch

    state = module.state_dict() if state_dict is None else state_dict
    state = {name: tensor.to("cpu", torch.float32) if tensor.is_floating_point() else tensor.cpu()
             for name, tensor in state.items()}
    module.config.sentence_transformers = {"activation_fn": activation}
    module.save_pretrained(path, state_dict=state, safe_serialization=True)
    with open(os.path.join(path, "config.json")) as f:  # transformers names the module's dtype there: the weights'
        config = json.load(f)
    config.pop("torch_dtype", None)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config | {"dtype": "float32"}, f, indent=2)
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(path)


# Ray Train's controller looks at its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S seconds (2 by default),
# a small call to each, and sees a finished run only at its next looks: 4.2 s from the workers' return to
# fit()'s on a 2-core CPU, 1.2-1.35 s at 0.5. Ray Train passes the variable from the driver to its
# controller; a value the user set is kept.
HEALTH_CHECK_INTERVAL_VAR, HEALTH_CHECK_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


@contextlib.contextmanager
def quick_health_checks() -> Iterator[None]:
    """Ray Train's health checks every HEALTH_CHECK_INTERVAL_S during a run, unless the user chose."""
    if HEALTH_CHECK_INTERVAL_VAR in os.environ:
        yield
        return
    os.environ[HEALTH_CHECK_INTERVAL_VAR] = HEALTH_CHECK_INTERVAL_S
    try:
        yield
    finally:
        os.environ.pop(HEALTH_CHECK_INTERVAL_VAR, None)


@contextlib.contextmanager
def ctrl_c_kept() -> Iterator[None]:
    """Ctrl-C during Ray Train's fit as KeyboardInterrupt after it, so that the command ends with its line.

    fit takes SIGINT for its own: its handler aborts the run, and fit then fails with Ray's error of the
    aborted controller (or returns), the handler left in place. Python writes every signal it handles to the
    wakeup fd, whoever's the handler: that tells a Ctrl-C apart from the failures it causes.
    """
    import signal
    import socket

    noticed, wakeup = socket.socketpair()
    noticed.setblocking(False)
    wakeup.setblocking(False)
    handler = signal.getsignal(signal.SIGINT)
    try:
        earlier = signal.set_wakeup_fd(wakeup.fileno())
    except ValueError:  # not the main thread, where no signal comes
        earlier = None
    try:
        yield
    finally:
        if earlier is not None:
            signal.set_wakeup_fd(earlier)
            signal.signal(signal.SIGINT, handler)
        try:
            interrupted = signal.SIGINT in noticed.recv(4096)
        except BlockingIOError:  # no signal came
            interrupted = False
        noticed.close()
        wakeup.close()
        if interrupted:
            raise KeyboardInterrupt


def memory_hint(error: str, batch_size: int, batch_tokens: Optional[int]) -> str:
    """What to change when a worker ran out of memory (Ray's memory monitor killed it, or CUDA's allocator
    failed), else ''."""
    if "running low on memory" not in error and "CUDA out of memory" not in error:
        return ""
    node = re.search(r"was ([\d.]+)GB used / ([\d.]+)GB limit", error)
    held = sum(float(used) for used in re.findall(r"actual memory used=([\d.]+)GB", error))
    if node and held < float(node.group(1)) / 2:  # Ray's memory monitor kills the latest task, not the largest
        return (f"the node ran low on memory ({node.group(1)} GB used of {node.group(2)} GB) where the training "
                f"worker(s) it stopped held {held:.2f} GB: other processes held the rest (Ray's report above lists "
                "the largest); give the run a node with room")
    if batch_tokens is None:  # DeepSpeed: whole batches
        return (f"a training worker ran out of memory with whole batches of {batch_size} pairs: set a smaller "
                f"{setting_and_flag('batch_size')} and a {setting_and_flag('grad_accum')} that keeps batch_size x "
                "grad_accum")
    return (f"a training worker ran out of memory in forward passes of at most {batch_tokens:,} padded tokens "
            f"(batches of {batch_size} pairs): set a smaller {setting_and_flag('batch_tokens')}; a pass's memory "
            f"grows with its tokens and, on a CPU, with their length")


def _metrics_text(entry: dict) -> str:
    return " ".join(f"{k[5:]} {v:.4f}" for k, v in entry.items() if k.startswith("eval_"))


# ---------------------------------------------------------------- driver: the job


@dataclasses.dataclass
class TrainOutcome:
    """What `train` returns: Ray Train's result, where the model is, and what the run saw."""

    result: object  # ray.train.Result
    model_path: str
    stats: dict
    log: List[dict]
    final_metrics: dict
    steps: int
    epochs_trained: float  # the epochs the steps covered (a fraction where max_steps ends the run mid-epoch)
    pairs_trained: int  # the pairs the steps took, over all workers
    samples_per_second: float
    seconds: float
    resumed_from: List[int]
    replica_divergence: Optional[float]
    compiled_graphs: Optional[int] = None  # with `compile`: the graphs rank 0 compiled
    cuda_graph_skips: Optional[int] = None  # with reduce-overhead: compiled graphs left without CUDA graphs
    # Where `seconds` went: "start" (the model folder's checks, Ray Train's imports, Ray's start), "data" (reading,
    # tokenizing, checking the pairs), "fit" (Ray Train: workers starting, the model loading, the steps, checkpoints),
    # "steps" (inside fit: the training loop's logged windows), "output" (the model and its card written); and
    # inside fit, where the worker said (`fit_phases`): "workers", "worker_process", "model", "eval", "checkpoints"
    phases: Dict[str, float] = dataclasses.field(default_factory=dict)
    best_step: Optional[int] = None  # with best_metric: the step of the checkpoint that is the model
    best_metric: str = ""

    def lines(self) -> List[str]:
        from .card import trained_text

        metrics = " ".join(f"{k[5:]} {v:.4f}" for k, v in self.final_metrics.items())
        lines = [
            "ce-ray train: done",
            f"  pairs         {self.stats['pairs']:,} ({self.stats['rejected']:,} rejected"
            + (f"; {left_out_text(self.stats)}" if self.stats.get("left_out") else "") + ")",
            f"  steps         {trained_text(self.steps, self.epochs_trained, self.pairs_trained, self.resumed_from)}",
            f"  samples/s     {self.samples_per_second:,.1f}",
            f"  seconds       {self.seconds:.1f}" + (f" ({phases_text(self.phases)})" if self.phases else ""),
        ]
        if self.compiled_graphs is not None:
            skips = f"; CUDA graphs skipped {self.cuda_graph_skips} time(s)" if self.cuda_graph_skips else ""
            lines.append(f"  compiled      {self.compiled_graphs} graph(s){skips}")
        if metrics:
            lines.append(f"  eval          {metrics}")
        best = f" (step {self.best_step}, the best {self.best_metric})" if self.best_step is not None else ""
        return lines + [f"  model         {self.model_path}{best}"]


def fit_phases(marks: Optional[dict], fit_called: float) -> Dict[str, float]:
    """Where Ray Train's part of a run went, from rank 0's `marks` (`train_loop`) and the wall clock at fit's call:
    "workers", to the worker's function (Ray Train's controller, the placement group, the worker's process, its
    imports and process group), of which "worker_process" to the process's start; "model", from there to the
    steps (the model loaded, restored, moved, wrapped for DDP or DeepSpeed); "eval" and "checkpoints", what the
    evaluations and the saves took, which the steps' seconds leave out. The rest of "fit" is Ray Train's end.

    The wall clocks of one node agree; a worker on another node has its own, and the clamps keep a skew from
    making a phase negative. A group of workers restarted within the command (max_failures) started its function
    after the first group's steps, which its "workers" then hold as well. {} without marks.
    """
    if not marks or marks.get("loop") is None:
        return {}
    function = max(marks["function"], fit_called)
    return {"workers": function - fit_called,
            "worker_process": min(max(marks["process"], fit_called), function) - fit_called,
            "model": max(0.0, marks["loop"] - marks["function"]),
            "eval": marks["eval"], "checkpoints": marks["checkpoints"]}


def phases_text(phases: Dict[str, float]) -> str:
    """`start 0.6, data 4.4, Ray Train 34.1: workers' start 18.6, model 1.2, steps 8.9, saves 0.9; output 0.2`
    (eval where the run evaluated), Ray Train's part as its steps alone where the worker returned no marks
    (`fit_phases`). One line: the worker's process (`worker_process`) is in `phases`, not in it."""
    p = {name: f"{seconds:.1f}" for name, seconds in phases.items()}
    if "workers" not in phases:
        inside = f" of which steps {p['steps']}, "
    else:
        evaluated = f", eval {p['eval']}" if phases["eval"] else ""
        inside = (f": workers' start {p['workers']}, model {p['model']}, steps {p['steps']}{evaluated}, "
                  f"saves {p['checkpoints']}; ")
    return f"start {p['start']}, data {p['data']}, Ray Train {p['fit']}{inside}output {p['output']}"


def left_out_text(stats: dict) -> str:
    """`1 pair(s) left out of each epoch (others each epoch), so that the workers take equal parts`."""
    return (f"{stats['left_out']:,} pair(s) left out of each epoch (others each epoch), so that the workers take "
            "equal parts")


def _check_output(output: str, model: str, checkpoints: str = "") -> Optional[str]:
    """The model is written to `output` after the training: a place it cannot be written fails now, and so
    does the model's own folder, whose weights the run would replace. Returns the outermost folder it created
    (`_missing_folder`). `checkpoints`: the run's storage path (its checkpoints are its own, where inside)."""
    from .storage import check_s3_access
    from .sink import writing

    if (is_remote(output) or os.path.isdir(model)) and same_place(output, model):
        raise ConfigError(f"{setting_and_flag('output')} {output} is the model's own folder, which the trained model "
                          "would replace: give another output")
    check_s3_access(output)
    fs, path = filesystem(output)
    storage = filesystem(checkpoints)[1] if checkpoints else ""
    inside = storage[len(path) + 1:].split("/")[0] if storage.startswith(path.rstrip("/") + "/") else ""
    _refuse_files_of_another(fs, path, output, inside)
    created = _missing_folder(fs, path)
    with writing(output):
        fs.create_dir(path, recursive=True)
    return created


# A model's weights, by the names transformers saves them under: with config.json, the folder holds a model.
WEIGHTS = re.compile(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)|(model\.safetensors|pytorch_model\.bin)"
                     r"\.index\.json")


def _refuse_files_of_another(fs, path: str, output: str, checkpoints: str = "") -> None:
    """An output folder that holds other files than a model's and no model (config.json and weights) is refused:
    the model's files replaced those of their names (a user's config.json, README.md), and those of a model's
    names it lacks were removed as an earlier model's (any `*.model`). An earlier model's folder is replaced, as
    documented, and one of a model's files alone (a publish cut short) too; the run's checkpoints (`checkpoints`:
    their folder's name, where inside) and hidden files (`.gitkeep`) are no one else's."""
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return
    names = {info.base_name for info in fs.get_file_info(pafs.FileSelector(path))}
    others = [name for name in names - {checkpoints or "checkpoints"}
              if not (name.startswith(".") or name == "README.md" or MODEL_FILES.fullmatch(name))]
    a_model = "config.json" in names and any(map(WEIGHTS.fullmatch, names))
    if not a_model:  # a project's own config.json and README.md were replaced, without a word
        others += [name for name in ("config.json", "README.md") if name in names and not _a_models(fs, path, name)]
    others.sort()
    if others and not a_model:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise ConfigError(f"{setting_and_flag('output')} {output} holds other files than a model's ({shown}) and no "
                          "model: the trained model's files would replace those of their names; give a new or empty "
                          "folder, or an earlier model's")


def _a_models(fs, path: str, name: str) -> bool:
    """Whether a folder's config.json or README.md is a model's: transformers' configuration (its `model_type`), a
    model card (its YAML header, `---`)."""
    try:
        with fs.open_input_stream(f"{path}/{name}") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    if name == "README.md":
        return head.startswith(b"---")
    try:
        config = json.loads(head)
    except ValueError:
        return False
    return isinstance(config, dict) and "model_type" in config


def _missing_folder(fs, path: str) -> Optional[str]:
    """The outermost folder of `path` (itself or one above it) that is not there, which creating `path` creates;
    None where `path` is there. On S3, a prefix that holds no object."""
    import pyarrow.fs as pafs

    missing = None
    while fs.get_file_info(path).type == pafs.FileType.NotFound:
        missing, parent = path, path.rsplit("/", 1)[0]
        if parent in (path, ""):
            break
        path = parent
    return missing


@contextlib.contextmanager
def removed_unless_trained(created: list) -> Iterator[None]:
    """The folders a run created before its training, `created` ((filesystem, the outermost folder it created or
    None, its own folder), ...), removed where it ends before the training starts: refused once Ray has started
    (labels outside [0, 1], workers the cluster cannot hold, DeepSpeed missing), or stopped. Such a run left them:
    an empty output folder, and the record of a run that never trained. Its own folder goes with what it wrote
    there, the folders above it only while empty: another run's output beside it, begun meanwhile, was removed with
    them. Folders that were there before stay as they are."""
    import pyarrow.fs as pafs

    try:
        yield
    except BaseException:
        for fs, outermost, own in created:
            if outermost is None:  # the folder was there before
                continue
            with contextlib.suppress(OSError):  # the error that ended the run is the one to say
                remove(fs, own)
                while own != outermost:
                    own = own.rsplit("/", 1)[0]
                    if fs.get_file_info(pafs.FileSelector(own, allow_not_found=True)):
                        break
                    remove(fs, own)
        raise


def _check_room(config: TrainConfig, use_gpu: bool, have: dict, node_cpus: float = float("inf"),
                new_run: str = "") -> None:
    """The workers' CPUs (and GPUs) against the cluster's (`have`), and a worker's CPUs against the largest
    node's (`node_cpus`: a worker runs on one node), which Ray Train would wait for (`runtime.refuse_or_wait`).
    `new_run`: what a hint to lower num_workers adds where the run has checkpoints (`checkpoints.as_a_new_run`)."""
    from .runtime import refuse_or_wait

    need = {"CPU": config.num_workers * config.cpus_per_worker} | ({"GPU": config.num_workers} if use_gpu else {})
    short = [f"{count:g} {kind}(s) (the cluster has {have.get(kind, 0):g})" for kind, count in need.items()
             if have.get(kind, 0) < count]
    if config.cpus_per_worker > node_cpus and have.get("CPU", 0) >= need["CPU"]:  # else said already
        short.append(f"{config.cpus_per_worker:g} CPUs each ({setting_and_flag('cpus_per_worker')}; the cluster's "
                     f"largest node has {node_cpus:g})")
    if not short:
        return
    message = f"{config.num_workers} worker(s) need {' and '.join(short)}"
    refuse_or_wait(f"{message}: {_room_hint(config, use_gpu, have, node_cpus, new_run)}",
                   f"ce-ray train: {message}: the run waits until the cluster has them")


def _room_hint(config: TrainConfig, use_gpu: bool, have: dict, node_cpus: float, new_run: str = "") -> str:
    """What makes the workers fit: fewer of them, or, on a cluster without GPUs, none asked for (fewer workers
    would still need a GPU each). Where the run has checkpoints, fewer workers make a new run (`new_run` says so):
    num_workers is a setting of the run's record, as cpus_per_worker and use_gpu are not."""
    hints = []
    if use_gpu and not have.get("GPU", 0):
        hints.append(f"the cluster has no GPU: train on its CPUs with {setting_and_flag('use_gpu', False)}")
    if use_gpu and have.get("GPU", 0) or have.get("CPU", 0) < config.num_workers * config.cpus_per_worker:
        hints.append(f"lower {setting_and_flag('num_workers')}"
                     + ("" if use_gpu and have.get("GPU", 0) else f" (or {setting_and_flag('cpus_per_worker')})")
                     + new_run)
    elif config.cpus_per_worker > node_cpus:
        hints.append(f"lower {setting_and_flag('cpus_per_worker')}")
    return "; ".join(hints)


# The files of a model folder that transformers and sentence-transformers read: where the output held an earlier
# model, those the new one does not have would still be read with it (an earlier model's
# config_sentence_transformers.json would set the activation).
MODEL_FILES = re.compile(r"(config_sentence_transformers|modules|sentence_bert_config|config|generation_config|"
                         r"tokenizer|tokenizer_config|special_tokens_map|added_tokens|vocab)\.json|vocab\.txt|"
                         r"merges\.txt|[\w.-]*\.model|" + WEIGHTS.pattern)


# sentence-transformers' exports of a model (`CrossEncoder(path, backend="onnx")` loads the one it finds there, and
# exports none): an earlier model's, left beside a new model's weights, served the earlier model without a word.
EXPORTS = ("onnx", "openvino")

# What a model is told by, written after its other files: a publish cut short (the driver killed as it copied) left
# the card of a finished run beside weights cut short, and no config.json, or an earlier model's config.json and card
# beside new weights, which loaded as one model. It now leaves none of the new files (a local output), or no
# config.json (s3://: an earlier model's two are deleted first).
PUBLISHED_LAST = ("config.json", "README.md")
# A local output's new files, copied in here first, then moved into the output: moves that take milliseconds.
STAGING = ".ce-ray-publishing"


def _publish(model_dir: str, output: str, card_text: str) -> None:
    """Copies the final model folder (and its card) to the output, local or s3://."""
    import pyarrow.fs as pafs

    with open(os.path.join(model_dir, "README.md"), "w") as f:
        f.write(card_text)
    fs, path = filesystem(output)
    fs.create_dir(path, recursive=True)
    if is_remote(output):
        earlier = [f"{path}/{name}" for name in PUBLISHED_LAST]
        delete_files(fs, [info.path for info in fs.get_file_info(earlier) if info.type == pafs.FileType.File])
        upload_folder(model_dir, fs, path, last=PUBLISHED_LAST)
    else:
        staging = os.path.join(path, STAGING)
        shutil.rmtree(staging, ignore_errors=True)  # a publish cut short's
        shutil.copytree(model_dir, staging)
        for name in last_ones_last(os.listdir(staging), PUBLISHED_LAST):
            if os.path.isdir(os.path.join(path, name)):
                shutil.rmtree(os.path.join(path, name))
            os.replace(os.path.join(staging, name), os.path.join(path, name))
        os.rmdir(staging)
    new = set(os.listdir(model_dir))
    listed = [info for info in fs.get_file_info(pafs.FileSelector(path)) if info.base_name not in new]
    stale = [info for info in listed if info.type == pafs.FileType.File and MODEL_FILES.fullmatch(info.base_name)]
    exports = [info for info in listed if info.type == pafs.FileType.Directory and info.base_name in EXPORTS]
    for info in stale:
        fs.delete_file(info.path)
    for info in exports:
        fs.delete_dir(info.path)
    if stale or exports:
        print(f"ce-ray train: removed from {output} what an earlier model left there: "
              + ", ".join(sorted([info.base_name for info in stale] + [f"{info.base_name}/" for info in exports])),
              flush=True)


def one_label_warning(stats: dict) -> Optional[str]:
    """Where every pair has one label, that the model learns no ranking from them: BCE on one label learns it,
    whatever the pairs. Soft labels (a teacher's scores) all below 0.5, or all above, rank the pairs all the same:
    they were warned of as one class."""
    if not stats["pairs"] or stats["label_min"] != stats["label_max"]:
        return None
    label = stats["label_min"]
    said = {0: "none of the {} pairs is labelled relevant", 1: "every one of the {} pairs is labelled relevant"}.get(
        label, f"every one of the {{}} pairs is labelled {label:g}")
    return said.format(f"{stats['pairs']:,}") + ": the model learns no ranking from them"


def _check_data(config: TrainConfig) -> None:
    """Training or eval data that is not there fails before Ray starts (it failed after, some 15 s in), naming
    which of the two it is."""
    import pyarrow.fs as pafs

    from .messages import InputError
    from .storage import check_s3_access, glob_base, is_glob

    for name in ("train_data", "eval_data"):
        uri = getattr(config, name)
        if not uri:
            continue
        check_s3_access(uri)
        fs, path = filesystem(uri)
        kind = fs.get_file_info(glob_base(path)).type
        if kind == pafs.FileType.NotFound:
            raise InputError(f"{setting_and_flag(name)} {uri} does not exist")
        if kind == pafs.FileType.Directory and not is_glob(uri):  # a BEIR folder's split (a file is none: no look-up)
            refuse_missing_split(uri, config.train_split if name == "train_data" else config.eval_split, name)


def _warn_of_eval_on_training_data(config: TrainConfig, beir: bool) -> None:
    """`beir`: whether train_data is a BEIR folder (`training_input`'s), whose eval split may be another than its
    training one."""
    if (config.eval_data and same_place(config.train_data, config.eval_data)
            and (not beir or config.eval_split == config.train_split)):
        # Said, not refused: a run may mean to measure how it fits. Unsaid, its figures passed for a held-out set's.
        print(f"ce-ray train: warning: {setting_and_flag('eval_data')} is the training data"
              + (f" (the {config.train_split} split of both)" if beir else "")
              + ": its metrics say how the model fits the pairs it trains on, not how it ranks unseen queries",
              file=sys.stderr, flush=True)


def train(config: Optional[TrainConfig] = None, **settings) -> TrainOutcome:
    """Fine-tunes a cross-encoder on Ray Train and saves a folder that `CrossEncoder(path)` loads.

    Settings come as a `ce_ray.config.TrainConfig`, as keywords on top of it, or both; returns a `TrainOutcome`.
    Example: `ce_ray.train(model=..., train_data="pairs.parquet", output="s3://b/model", num_workers=4)`.
    """
    from . import card
    from .model_folder import (SIGMOID, activation_path, check_max_length, check_safe, check_single_logit,
                               half_precision_on_cpu, has_classifier, local_model_path, model_files,
                               model_loading, model_source, query_prompt, saved_architectures, usable_max_length)
    from .runtime import cluster_resources, cpu_nodes, ensure_ray, free_failed_actors, surfaced_errors
    from .tokenizer_facts import facts_ahead

    config = with_settings(config, settings, TrainConfig)
    require(config)
    config.validate()
    start = time.perf_counter()
    files = model_files(config.model)  # an s3:// model listed once: the workers copy these objects
    model = local_model_path(config.model, files)  # this machine's copy, for the checks and the tokenizer's facts
    source = model_source(config.model)  # what the workers and tokenize tasks load
    check_safe(model, config.allow_pickle, config.trust_remote_code)
    check_single_logit(model, config.model)
    check_max_length(model, config.model, config.max_length)
    # Asked before Ray Train's torch backend is imported (torch with it), so that another process asks meanwhile.
    asked = model_loading(config.model, lambda: facts_ahead(model, config.trust_remote_code))
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    _check_data(config)
    fs, storage_path, name, run_uri = run_storage(config)
    for read in ("train_data", "eval_data"):  # a model or checkpoints read as pairs by the next run: it cannot resume
        for written, what in ((config.output, "output"), (run_uri, "run's checkpoints (storage_path)")):
            if getattr(config, read):
                refuse_written_inside(getattr(config, read), written, setting_and_flag(read), what)
    data = training_input(config)  # once: for the run's record, then read
    refuse_settings_of_beir(config, data.beir)
    data = checked_columns(config, data)
    unused = unused_settings(config, data.beir)  # which the model card leaves out
    # After the data's checks, since it creates the output: a run refused for its data left an empty folder.
    # Until its training starts, a run that ends (refused once Ray has started, stopped) leaves nothing it created.
    created = []
    with removed_unless_trained(created):
        output_fs, output_path = filesystem(config.output)
        created.append((output_fs, _check_output(config.output, config.model if is_remote(config.model) else model,
                                                  run_uri), output_path))
        _warn_of_eval_on_training_data(config, data.beir)
        run_folder = f"{storage_path}/{name}"  # claim_run records the run there
        created.append((fs, _missing_folder(fs, run_folder), run_folder))
        # Checkpoint folders that Ray Train did not record (written after a Ctrl-C's abort) are not resumed from.
        checkpointed = claim_run(config, source, fs, storage_path, name, run_uri, data.files)
        if checkpointed and resumed_step(config) is not None:
            print(f"ce-ray train: resumes the run {name} from the last checkpoint Ray Train recorded (a finished run "
                  "only saves its model again)", flush=True)
        # A folder that names no architecture is a reranker where its weights hold a classifier, as for scoring:
        # it was said to get a new head (it kept its own) and its saved activation was set to the sigmoid.
        has_head = os.path.isdir(model) and has_classifier(model)
        if os.path.isdir(model) and not has_head:
            architectures = saved_architectures(model)
            print(f"ce-ray train: {model} has no classifier ({', '.join(architectures) or 'no architectures named'}): "
                  "it gets a new one-logit head, as CrossEncoder gives it", flush=True)
        ensure_ray(dashboard=True)  # Ray Train's state queries need it
        facts = model_loading(config.model, asked)  # once: the max length and the encoder's plan
        max_length = config.max_length or usable_max_length(model, config.model, facts.max_length)
        encoder = pair_encoder(source, config.tokenizer, config.trust_remote_code, facts, files=files)
        # Training puts no prompt before the queries, as CrossEncoderTrainer's loss does; evaluation scores as the
        # saved model will, which keeps the base's default prompt, as CrossEncoderRerankingEvaluator's predict does.
        prompt = query_prompt(model)
        eval_encoder = (pair_encoder(source, config.tokenizer, config.trust_remote_code, facts, prompt, files) if prompt
                        else None)
        free_failed_actors()
        resources = cluster_resources()
        use_gpu = config.use_gpu if config.use_gpu is not None else resources.get("GPU", 0) > 0
        _check_room(config, use_gpu, resources, max(cpu_nodes(), default=resources.get("CPU", 0)),
                    as_a_new_run(config, run_uri) if checkpointed else "")
        bf16 = uses_bf16(config, use_gpu)
        claim_precision(config, fs, storage_path, name, run_uri, bf16, checkpointed)
        if not use_gpu and bf16:  # a configuration written for GPUs, tried on a laptop
            print(half_precision_on_cpu("bfloat16", "bf16", "bf16 unset: float32 on CPUs"), file=sys.stderr,
                  flush=True)
        if config.deepspeed:
            try:
                _import_deepspeed(use_gpu)
            except ImportError as e:
                raise ConfigError(f"the deepspeed section needs DeepSpeed: pip install 'ce-ray[deepspeed]' ({e})")

        data_start = time.perf_counter()
        # Said first: Ray Data's lines for the data's several passes (a page in a log file) come before the run's.
        print(f"ce-ray train: reading, checking and tokenizing {config.train_data}"
              + (f" and {config.eval_data}" if config.eval_data and config.eval_data != config.train_data else "")
              + " on Ray Data", flush=True)
        with surfaced_errors():  # a label that is not a number fails a tokenize task
            train_ds, stats, eval_ds, qrels = prepare_data(config, encoder, max_length, eval_encoder, data)
    data_done = time.perf_counter()
    per_worker = stats["pairs"] // config.num_workers  # the parts are cut equal so every worker steps together
    # The pairs past the last part (fewer than the workers) are left out of each epoch, as Ray Train's own equal
    # split drops them; counted, so that no figure says they were. Each epoch trains them in place of as many
    # others drawn anew (`train_data.LeftOut`): the set is shuffled once, and the same ones were never trained.
    stats["left_out"] = stats["pairs"] - per_worker * config.num_workers
    per_epoch = math.ceil(per_worker / config.batch_size)
    # grad_accum batches a step; an epoch's last step takes those left (`train_loop`)
    total = config.max_steps or config.epochs * math.ceil(per_epoch / config.grad_accum)
    # A reranker keeps the activation it had (CrossEncoder's, read as it reads it: a logits reranker's scores
    # stay logits, as CrossEncoderTrainer keeps them); a new head gets CrossEncoder's sigmoid.
    activation = activation_path(model, 1, config.trust_remote_code) if has_head else SIGMOID
    spans, left_out = worker_spans(train_ds, config, per_worker, config.num_workers)
    plan = {"model": source, "model_files": files, "max_length": max_length, "activation": activation,
            "batches_per_epoch": per_epoch, "spans": spans, "left_out": left_out,
            "invocation": uuid.uuid4().hex,  # this command's, apart from earlier ones of the run it resumes
            "checkpoints": run_uri,
            "total_steps": total, "qrels": qrels,
            # Evaluation keeps no activations: its passes take the scoring budget, not the training one.
            "eval_batch_tokens": config.batch_tokens or default_batch_tokens(use_gpu)}
    batch_tokens = training_batch_tokens(config, use_gpu)
    reasons = top_reasons(stats)
    rejected = f"{stats['rejected']:,} rejected" + (f": {reasons}" if reasons else "")
    print(f"ce-ray train: {plural(stats['pairs'], 'pair')} ({rejected}), {config.num_workers} worker(s)"
          + (f" taking {per_worker:,} each ({left_out_text(stats)})" if stats["left_out"] else "")
          + f", {per_epoch} batch(es) of {config.batch_size} per worker and epoch, {total} step(s)"
          + (f", forward passes of at most {batch_tokens:,} tokens" if batch_tokens else ""), flush=True)
    warning = one_label_warning(stats)
    if warning:
        print(f"ce-ray train: warning: {warning}", file=sys.stderr, flush=True)
    if qrels:
        print(f"ce-ray train: evaluation reranks {stats['eval']}", flush=True)

    datasets = {"eval": eval_ds} if eval_ds is not None else {}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": dataclasses.replace(config, batch_tokens=batch_tokens), "plan": plan},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})),
        run_config=RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints, **best_kept(config)),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
        datasets=datasets,
        # The eval candidates go whole to every worker, which scores its share of them (`evaluate`). The training
        # rows go as each worker's spans (`worker_spans`), which it reads in another order each epoch.
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    try:
        with quick_health_checks(), ctrl_c_kept():
            fit_called = time.time()  # the wall clock, as the worker's marks are (`fit_phases`)
            result = trainer.fit()
        if result.error:
            raise result.error
    except Exception as error:  # Ray Train's fit raises a failed run's error (result.error) itself
        hint = memory_hint(str(error), config.batch_size, batch_tokens)
        if hint and batch_tokens is None:  # batch_size and grad_accum are in the run's record (batch_tokens is not)
            hint += new_run_hint(config, fs, f"{storage_path}/{name}", run_uri)
        if hint:
            print(f"ce-ray train: {hint}", file=sys.stderr, flush=True)
        raise
    fit_done = time.perf_counter()
    summary = result.return_value or {}
    if STOPPED in summary:  # the workers stopped the run (non-finite loss or weights), and saved nothing
        # Its hint (a lower lr, a warmup) changes the run's settings: where it has checkpoints, they make a new run.
        raise FloatingPointError(summary[STOPPED] + new_run_hint(config, fs, f"{storage_path}/{name}", run_uri))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_dir = whole_checkpoint(result.checkpoint, os.path.join(tmp, "checkpoint"), config, run_uri)
        with open(os.path.join(checkpoint_dir, PROGRESS)) as f:
            progress = json.load(f)
        log = summary.get("log", progress["log"])
        # The measures of this command's eval data: a run resumed without it holds earlier ones in its log, of
        # another command's data (which its card would have had to name).
        final = next((({k: v for k, v in e.items() if k.startswith("eval_")}) for e in reversed(log)
                      if any(k.startswith("eval_") for k in e)), {}) if config.eval_data else {}
        best, best_step = best_checkpoint(result, config), None
        if best is not None:  # its model is the output; the latest checkpoint still tells the run's progress
            checkpoint, metrics = best
            checkpoint_dir = whole_checkpoint(checkpoint, os.path.join(tmp, "best"), config, run_uri)
            final = {k: v for k, v in metrics.items() if k.startswith("eval_")}
            best_step = metrics["step"]
        seconds = summary.get("seconds", progress["seconds"])
        samples = summary.get("samples", progress["samples"])
        resumed_from = summary.get("resumed_from", progress["resumed_from"])
        facts = card.CardFacts(
            base_model=config.model, config=config, defaults=TrainConfig(), stats=stats, log=log,
            final_metrics=final, max_length=max_length, num_workers=config.num_workers, steps=progress["step"],
            samples_per_second=samples / seconds if seconds else 0.0, output=config.output, best_step=best_step,
            epochs_trained=progress["micro"] / per_epoch, pairs_trained=samples, resumed_at=resumed_from,
            unused=unused)
        _publish(os.path.join(checkpoint_dir, MODEL), config.output, card.model_card(facts))
    outcome = TrainOutcome(
        result=result, model_path=config.output, stats=stats, log=log, final_metrics=final,
        steps=progress["step"], epochs_trained=facts.epochs_trained, pairs_trained=facts.pairs_trained,
        samples_per_second=facts.samples_per_second,
        seconds=time.perf_counter() - start, resumed_from=resumed_from,
        replica_divergence=summary.get("replica_divergence"), compiled_graphs=summary.get("compiled_graphs"),
        cuda_graph_skips=summary.get("cuda_graph_skips"), best_step=best_step, best_metric=config.best_metric,
        phases={"start": data_start - start, "data": data_done - data_start, "fit": fit_done - data_done,
                "steps": summary.get("seconds_here", seconds), "output": time.perf_counter() - fit_done}
        | fit_phases(summary.get("marks"), fit_called))
    print("\n".join(outcome.lines()), flush=True)
    return outcome
