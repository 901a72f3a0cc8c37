"""GPU scoring: `ce-ray score` against CrossEncoder.predict, Ray Data's plain recipe and the model alone.

One run, the same synthetic MS MARCO-like pairs (~72 tokens, 100 passages per query) and the same random
MiniLM reranker (hidden 384; 6 or 12 layers) for every system:
  (a) CrossEncoder.predict, defaults (fp32, batch 32)               on the first --anchor-pairs pairs
  (b) CrossEncoder.predict, fp16, batch 256                         on the first --anchor-pairs pairs
  (c) Ray Data's recipe: read_parquet -> one actor calling predict on raw text -> write_parquet
                                                                    on the first --anchor-pairs pairs
  (d) the model alone: pre-tokenized, length-sorted token-budget batches already on the device, fp16 SDPA,
      as a ce-ray replica runs it (its own BERT forward pass); two passes, the second reported
                                                                    on all --pairs pairs (the ceiling)
  (d2) the same in transformers' model with torch's and transformers' defaults, one pass
                                                                    on the first --defaults-pairs pairs
  (e) `ce-ray score` end to end, parquet to parquet (run_score, tokenizer="fast")   on all --pairs pairs
With --compile, also (d3) the model alone under torch.compile, as a replica with `compile=True` runs it (its
first pass includes the compiling), and (e2) `ce-ray score --compile` end to end. With --transformers, also
(e3) `ce-ray score --implementation transformers`: replicas with transformers' model instead of ce-ray's BERT.
Rates of (a)-(c) are pairs/s on their subset (the same pairs, so the same length mix); (a) and (b) time
predict() alone, the model loaded beforehand; (c) and (e) time the whole job, reading to writing, after
Ray has started. MFU = useful model FLOPs (unpadded tokens) / time / a measured matmul peak (bf16 on GPU,
where fp16's rate is the same).
ce-ray's scores are checked against (a)'s on the first --check pairs. Writes bench/results/score_gpu.json
(score_gpu_cpu.json on CPU).

    python3 bench/score_gpu.py                                # GPU: 1M pairs, L6 and L12
    python3 bench/score_gpu.py --layers 6 --compile --skip recipe --name score_gpu_compile
    .venv/bin/python bench/score_gpu.py --pairs 2000 --anchor-pairs 500 --layers 2   # CPU smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np
import pyarrow.parquet as pq

import common


def predict_rate(model_dir: str, queries, documents, device: str, batch_size: int, fp16: bool):
    import torch
    from sentence_transformers import CrossEncoder

    # As users run it, with torch's default attention backends (ce-ray's replicas turn cuDNN attention off,
    # and the ceiling, loaded in this process, did so here too).
    torch.backends.cuda.enable_cudnn_sdp(True)
    kwargs = {"model_kwargs": {"dtype": torch.float16}} if fp16 else {}
    model = CrossEncoder(model_dir, device=device, **kwargs)
    pairs = list(zip(queries, documents))
    # Warm-up: a whole pass, untimed. cuDNN's attention plans each new batch shape once (tens to hundreds of ms),
    # which a long job pays once; on these few pairs the first model of the process paid it inside its time (L6's
    # fp16 rate fell below L12's, whose shapes L6 had planned), and ce-ray's ratio to it rose threefold.
    model.predict(pairs, batch_size=batch_size, show_progress_bar=False)
    common.sync(device)
    start = time.perf_counter()
    scores = model.predict(pairs, batch_size=batch_size, show_progress_bar=False)
    common.sync(device)
    seconds = time.perf_counter() - start
    del model
    common.free(device)
    return seconds, np.asarray(scores, dtype=np.float32)


class PredictActor:
    """Ray Data's batch-inference recipe: the model in an actor, raw text in, scores out. Each call's start and
    end are appended to `calls_file`, for the recipe's rate between its first call and its last."""

    def __init__(self, model_dir: str, device: str, calls_file: str):
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(model_dir, device=device)
        self.calls_file = calls_file

    def __call__(self, batch):
        start = time.time()
        batch["score"] = self.model.predict(list(zip(batch["query"], batch["document"])), show_progress_bar=False)
        with open(self.calls_file, "a") as f:
            f.write(f"{start} {time.time()}\n")
        return batch


def ray_recipe_seconds(model_dir: str, folder: str, out: str, device: str, rows_per_call: int) -> tuple:
    """The recipe's seconds, the whole job's and between its first call's start and its last call's end: on the
    anchor's few pairs the job is mostly its start (19.4 s for 10,000 pairs that predict scores in 3.7 s), which
    ce-ray's 1M-pair job spreads over a hundred times more pairs."""
    import ray.data
    from ray.data import ActorPoolStrategy

    calls_file = f"{out}.calls"
    start = time.perf_counter()
    ds = ray.data.read_parquet(folder).map_batches(
        PredictActor, fn_constructor_kwargs=dict(model_dir=model_dir, device=device, calls_file=calls_file),
        batch_format="pandas", batch_size=rows_per_call, compute=ActorPoolStrategy(size=1),
        num_gpus=1 if device.startswith("cuda") else 0,
    )
    ds.write_parquet(out)
    seconds = time.perf_counter() - start
    calls = np.loadtxt(calls_file, ndmin=2)
    os.remove(calls_file)
    return seconds, float(calls[:, 1].max() - calls[:, 0].min())


def ceiling(model_dir: str, ids, types, device: str, batch_tokens: int, as_ce_ray: bool = True,
            passes: int = 2, compiled: bool = False) -> tuple:
    """The model alone: every batch padded and copied to the device before the clock starts, then `passes`
    timed passes over all of them. `as_ce_ray`: the inputs and settings of a ce-ray replica (the 4D mask of
    `attention_inputs`: none for a batch without padding; attention off cuDNN); else torch's and
    transformers' defaults (the usual 2D mask, every SDPA backend). A first pass meets each batch shape for
    the first time; a second pass shows what a cost per new shape took from the first. `compiled`: under
    torch.compile as a replica with `compile=True` (the first pass includes the compiling)."""
    import torch

    from ce_ray.batching import list_parts, pad, token_budget_batches
    from ce_ray.model import attention_inputs, load_reranker, load_scoring_model

    # A replica's model (ce-ray's own BERT forward pass), or transformers'; both turn cuDNN attention off on CUDA.
    reranker = (load_scoring_model if as_ce_ray else load_reranker)(model_dir, device=device)
    torch.backends.cuda.enable_cudnn_sdp(not as_ce_ray)
    forward = torch.compile(reranker.model, dynamic=True) if compiled else reranker.model
    model_type = reranker.model_type
    values, offsets = list_parts(ids)
    type_values = list_parts(types)[0]
    lengths = np.diff(offsets)
    batches, order, padded_tokens = [], [], 0
    for rows in token_budget_batches(lengths, batch_tokens):
        order.append(rows)
        input_ids, mask = pad(values, offsets, rows)
        padded_tokens += input_ids.size
        batch = {"input_ids": torch.from_numpy(input_ids.astype(np.int64)).to(device),
                 "token_type_ids": torch.from_numpy(pad(type_values, offsets, rows)[0].astype(np.int64)).to(device)}
        if as_ce_ray:
            batch |= attention_inputs(model_type, torch.from_numpy(mask).to(device), padded=not mask.all())
        else:
            batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64)).to(device)
        batches.append(batch)
    seconds = []
    with torch.inference_mode():
        for batch in batches[:3]:  # warm-up: the largest shapes come first
            forward(**batch)
        for _ in range(passes):
            common.sync(device)
            start = time.perf_counter()
            outputs = [reranker.scores(reranker.logits(forward(**batch))) for batch in batches]
            common.sync(device)
            seconds.append(time.perf_counter() - start)
    scores = np.empty(len(lengths), np.float32)
    for rows, output in zip(order, outputs):
        scores[rows] = output.cpu().numpy()
    count = len(batches)
    del outputs, batches, reranker
    common.free(device)
    return scores, {"seconds": min(seconds), "passes_seconds": seconds, "batches": count,
                    "padded_tokens": int(padded_tokens), "tokens": int(lengths.sum()),
                    "padding_fraction": 1 - lengths.sum() / max(padded_tokens, 1)}


def ce_ray_run(model_dir: str, folder: str, out: str, batch_tokens: int, device: str, compile: bool = False,
               implementation: str = "auto"):
    from ce_ray import ScoreConfig, run_score

    config = ScoreConfig(model=model_dir, input=folder, output=out, tokenizer="fast", batch_tokens=batch_tokens,
                         mode="overwrite", use_gpu=device.startswith("cuda"), compile=compile,
                         implementation=implementation)
    since = time.time()
    summary = run_score(config)
    timeline = common.job_timeline(since)
    print(common.timeline_line(timeline), flush=True)
    return summary, timeline


def score_bound(device: str) -> float:
    return 1e-2 if device.startswith("cuda") else 1e-5


def check_scores(out: str, expected, check: int, floor, device: str, all_scored: bool,
                 against: str = "predict") -> dict:
    """ce-ray's scores of the first `check` pairs against predict fp32's. ce-ray may not add error beyond the
    dtype's: within a bound, or within twice the noise of the same model at the same dtype (`floor`; random
    weights round worse than a trained reranker's)."""
    got = pq.read_table(os.path.join(out, "results"), columns=["pair_id", "score"]).to_pandas()
    got = got[got["pair_id"] < check].sort_values("pair_id")
    diff = float(np.abs(got["score"].to_numpy() - expected[got["pair_id"].to_numpy()]).max())
    allowed = max(score_bound(device), 2 * floor) if floor is not None else score_bound(device)
    return {"checked_pairs": len(got), "checked_against": against, f"max_abs_diff_vs_{against}": diff,
            "dtype_noise_floor": floor, "allowed_diff": allowed, "scores_match": diff <= allowed and all_scored}


def run_layers(layers: int, args, work: str, device: str, table, tokenized, peak: float, save) -> dict:
    from transformers import AutoConfig

    model_dir = common.build_model(os.path.join(work, f"minilm-l{layers}"), layers, seed=args.seed)
    config = AutoConfig.from_pretrained(model_dir)
    ids, types = tokenized
    lengths = np.diff(ids.offsets.to_numpy())
    n, n_anchor = table.num_rows, min(args.anchor_pairs, table.num_rows)
    flops_all, flops_anchor = common.model_flops(config, lengths), common.model_flops(config, lengths[:n_anchor])
    # ce-ray's BERT (d, d3, e, e2) computes its last layer for one row: MFU counts the work it does.
    flops_ce_ray = common.model_flops(config, lengths, last_layer_one_row=True)
    queries = table.column("query").to_pylist()[:n_anchor]
    documents = table.column("document").to_pylist()[:n_anchor]
    anchor_folder = common.write_pairs(table.slice(0, n_anchor), os.path.join(work, "anchor-pairs"),
                                       files=max(1, min(args.files, n_anchor // 4096)))
    systems, expected, model_scores = {}, None, None

    def record(name, pairs, seconds, flops, **extra):
        systems[name] = {"pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds,
                         "mfu": flops / seconds / peak} | extra
        print(f"  {name}: {pairs:,} pairs in {seconds:.2f} s = {pairs / seconds:,.0f} pairs/s", flush=True)
        save({"layers": layers, "systems": systems, "unfinished": True})

    print(f"\nMiniLM-L{layers} (random weights), {n:,} pairs, {int(lengths.sum()):,} tokens, on {device}", flush=True)
    if "predict" not in args.skip:
        seconds, expected = predict_rate(model_dir, queries, documents, device, 32, fp16=False)
        record("predict_defaults", n_anchor, seconds, flops_anchor, dtype="float32", batch_size=32)
        seconds, fp16_scores = predict_rate(model_dir, queries, documents, device, 256, fp16=True)
        record("predict_fp16_b256", n_anchor, seconds, flops_anchor, dtype="float16", batch_size=256,
               max_abs_diff_vs_predict=float(np.abs(fp16_scores - expected).max()))
    floor = None
    if "ceiling" not in args.skip:
        model_scores, result = ceiling(model_dir, ids, types, device, args.batch_tokens)
        if expected is not None:
            # The model's own rounding noise at ce-ray's dtype: the same model, plain batches, vs predict fp32.
            check = min(args.check, n_anchor)
            floor = float(np.abs(model_scores[:check] - expected[:check]).max())
            result["max_abs_diff_vs_predict"] = floor
        result["first_pass_pairs_per_s"] = n / result["passes_seconds"][0]
        record("model_ceiling", n, result.pop("seconds"), flops_ce_ray, batch_tokens=args.batch_tokens, **result)
        # The same on torch's defaults, one pass over the first --defaults-pairs: what ce-ray's settings change.
        n_defaults = min(args.defaults_pairs, n)
        _, result = ceiling(model_dir, ids.slice(0, n_defaults), types.slice(0, n_defaults), device,
                            args.batch_tokens, as_ce_ray=False, passes=1)
        record("model_torch_defaults", n_defaults, result.pop("seconds"),
               common.model_flops(config, lengths[:n_defaults]), batch_tokens=args.batch_tokens, **result)
    if "recipe" not in args.skip:
        seconds, calls_seconds = ray_recipe_seconds(model_dir, anchor_folder, os.path.join(work, "recipe-out"),
                                                    device, args.recipe_rows)
        record("ray_data_recipe", n_anchor, seconds, flops_anchor, rows_per_call=args.recipe_rows)
        record("ray_data_recipe_calls", n_anchor, calls_seconds, flops_anchor, rows_per_call=args.recipe_rows)
        shutil.rmtree(os.path.join(work, "recipe-out"), ignore_errors=True)

    def ce_ray_system(name, compile, implementation="auto", flops=flops_ce_ray):
        runs, timelines = [], []
        out = os.path.join(work, f"ce-ray-out-l{layers}")
        for _ in range(args.repeats):
            summary, timeline = ce_ray_run(model_dir, os.path.join(work, "pairs"), out, args.batch_tokens, device,
                                           compile, implementation)
            runs.append(summary.seconds)
            timelines.append(timeline)
        extra = {"runs_seconds": runs, "timelines": timelines, "batch_tokens": args.batch_tokens,
                 "rows_scored": summary.rows_scored}
        # Against predict; where predict is skipped (the suite's compile step), against the model alone (d).
        if expected is not None:
            extra |= check_scores(out, expected, min(args.check, n_anchor), floor, device, summary.rows_scored == n)
        elif model_scores is not None:
            extra |= check_scores(out, model_scores, min(args.check, n), None, device, summary.rows_scored == n,
                                  against="model_alone")
        record(name, n, min(runs), flops, **extra)
        shutil.rmtree(out, ignore_errors=True)

    if "ce-ray" not in args.skip:
        ce_ray_system("ce_ray_score", compile=False)
        if args.transformers:  # the same job with transformers' model in the replicas: what ce-ray's BERT gains
            ce_ray_system("ce_ray_score_transformers", compile=False, implementation="transformers",
                          flops=flops_all)
    compile_error = None
    if args.compile:  # last, so that a compiler that fails on this machine leaves the rest measured
        try:
            if "ceiling" not in args.skip:
                compiled_scores, result = ceiling(model_dir, ids, types, device, args.batch_tokens, compiled=True)
                result["first_pass_pairs_per_s"] = n / result["passes_seconds"][0]
                result["max_abs_diff_vs_eager"] = float(np.abs(compiled_scores - model_scores).max())
                result["scores_match"] = result["max_abs_diff_vs_eager"] <= score_bound(device)
                record("model_compiled", n, result.pop("seconds"), flops_ce_ray, batch_tokens=args.batch_tokens,
                       **result)
            if "ce-ray" not in args.skip:
                ce_ray_system("ce_ray_score_compiled", compile=True)
        except Exception as e:  # noqa: BLE001 (recorded in the results)
            compile_error = f"{type(e).__name__}: {e}"
            print(f"  torch.compile failed: {compile_error}", flush=True)
    shutil.rmtree(anchor_folder, ignore_errors=True)
    return {"layers": layers, "flops_per_pair": flops_all / n, "flops_per_pair_ce_ray_bert": flops_ce_ray / n,
            "mean_tokens_per_pair": float(lengths.mean()),
            "systems": systems, "compile_error": compile_error}


def report(results: list, device: str, peak: dict) -> None:
    names = {"predict_defaults": "(a) CrossEncoder.predict fp32 b32", "predict_fp16_b256": "(b) predict fp16 b256",
             "ray_data_recipe": "(c) Ray Data recipe (predict in actor)",
             "ray_data_recipe_calls": "(c') the same, first call to last",
             "model_ceiling": "(d) model alone (ceiling)",
             "model_torch_defaults": "(d2) model alone, torch's defaults",
             "model_compiled": "(d3) model alone, torch.compile",
             "ce_ray_score": "(e) ce-ray score, parquet to parquet",
             "ce_ray_score_compiled": "(e2) ce-ray score --compile",
             "ce_ray_score_transformers": "(e3) ce-ray score, transformers' model"}
    ours_names = ("ce_ray_score", "ce_ray_score_compiled", "ce_ray_score_transformers")
    for result in results:
        layers, systems = result["layers"], result["systems"]
        anchors = common.ANCHORS.get(layers, {})
        print(f"\nMiniLM-L{layers} on {device}; peak {peak['flops_per_s'] / 1e9:,.0f} GFLOP/s ({peak['dtype']} "
              f"{peak['n']}^3 matmul); {result['flops_per_pair'] / 1e6:.1f} MFLOP/pair")
        rows = [("system", "pairs", "pairs/s", "MFU", "H100 before")]
        for key, name in names.items():
            if key in systems:
                s = systems[key]
                before = ("target " + common.fmt_rate(anchors.get("target")) if key in ours_names
                          else common.fmt_rate(anchors.get(key)))
                rows.append((name, f"{s['pairs']:,}", common.fmt_rate(s["pairs_per_s"]), f"{s['mfu']:.3f}", before))
        print(common.table(rows, (40, 10, 10, 6, 14)))
        compiled = systems.get("model_compiled", {})
        if "scores_match" in compiled:
            print(f"  max |(d3) - (d)| on every pair: {compiled['max_abs_diff_vs_eager']:.2e}: "
                  f"{'match' if compiled['scores_match'] else 'MISMATCH'}")
        for key in ours_names:
            if key not in systems:
                continue
            ours, label = systems[key], names[key].split()[0]
            ratios = {other: ours["pairs_per_s"] / systems[other]["pairs_per_s"] for other in names
                      if other in systems and other not in ours_names}
            ours["ratio_to"] = ratios
            if anchors.get("target"):
                ours["ratio_to_target"] = ours["pairs_per_s"] / anchors["target"]
            print(f"  {label} / " + ", ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()))
            if "checked_against" in ours:
                floor, against = ours["dtype_noise_floor"], ours["checked_against"]
                print(f"  max |{label} - {'predict fp32' if against == 'predict' else '(d)'}| on "
                      f"{ours['checked_pairs']:,} pairs: "
                      f"{ours[f'max_abs_diff_vs_{against}']:.2e}; the model alone at ce-ray's dtype: "
                      f"{'-' if floor is None else f'{floor:.2e}'}; allowed {ours['allowed_diff']:.0e}: "
                      f"{'match' if ours['scores_match'] else 'MISMATCH'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000, help="pairs for ce-ray and the ceiling")
    parser.add_argument("--anchor-pairs", type=int, default=50_000, help="the first N pairs for (a)-(c)")
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="default: the library's (65536 on GPU, 2048 on CPU)")
    parser.add_argument("--files", type=int, default=16, help="parquet files the pairs are written as")
    parser.add_argument("--recipe-rows", type=int, default=1024, help="rows per predict call in (c)")
    parser.add_argument("--defaults-pairs", type=int, default=200_000, help="the first N pairs for (d2)")
    parser.add_argument("--repeats", type=int, default=2, help="ce-ray runs (the best is reported, all kept)")
    parser.add_argument("--check", type=int, default=5000, help="pairs whose scores are compared with predict")
    parser.add_argument("--skip", nargs="*", default=[], choices=["predict", "recipe", "ceiling", "ce-ray"])
    parser.add_argument("--compile", action="store_true", help="also (d3) and (e2): the model under torch.compile")
    parser.add_argument("--transformers", action="store_true",
                        help="also (e3): ce-ray score with --implementation transformers")
    parser.add_argument("--name", default=None, help="results file name (default: score_gpu, score_gpu_cpu on CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from ce_ray import fast_tokenize
    from ce_ray.batching import default_batch_tokens
    from ce_ray.model_folder import load_tokenizer

    device = common.pick_device(args.device)
    args.batch_tokens = args.batch_tokens or default_batch_tokens(device.startswith("cuda"))
    work = tempfile.mkdtemp(prefix="ce-ray-bench-")
    start = time.perf_counter()
    table = common.synthetic_pairs(args.pairs, seed=args.seed)
    common.write_pairs(table, os.path.join(work, "pairs"), args.files)
    tokenizer = load_tokenizer(common.assets_dir())
    tokenized = fast_tokenize.encode_pairs(tokenizer, table.column("query"), table.column("document"), 512)
    print(f"{args.pairs:,} synthetic pairs written and tokenized in {time.perf_counter() - start:.1f} s", flush=True)
    peak = common.matmul_peak(device)
    result = common.header(device) | {"bench": "score_gpu", "args": vars(args), "matmul_peak": peak,
                                      "anchors_before": common.ANCHORS}
    ray_start_s = None
    if {"recipe", "ce-ray"} - set(args.skip):
        ray_start_s = common.init_ray()
    name = args.name or ("score_gpu" if device.startswith("cuda") else "score_gpu_cpu")
    results = []

    def save(unfinished: dict) -> None:  # after each system: a run cut short keeps what it measured
        common.write_result(name, result | {"ray_start_s": ray_start_s, "results": results + [unfinished]})

    for layers in args.layers:
        results.append(run_layers(layers, args, work, device, table, tokenized, peak["flops_per_s"], save))
        report(results[-1:], device, peak)
        path = common.write_result(name, result | {"ray_start_s": ray_start_s, "results": results})
    print(f"\nwrote {path}")
    shutil.rmtree(work, ignore_errors=True)
    bad = [r["layers"] for r in results for key in ("ce_ray_score", "ce_ray_score_compiled", "model_compiled")
           if not r["systems"].get(key, {}).get("scores_match", True)]
    if bad:
        sys.exit(f"ce-ray's scores differ from their reference beyond the allowed difference for L{bad}")


if __name__ == "__main__":
    main()
