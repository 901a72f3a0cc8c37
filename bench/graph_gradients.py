"""Steps of several passes under CUDA graphs: their gradients against eager ones, with and without the copy of
the gradients out of the graphs' memory that `ce-ray train` makes between a step's passes.

Under `compile_mode: reduce-overhead` a parameter's first gradient of a step is the compiled backward's output,
in the memory of torch's CUDA graph trees, which the next pass's replay writes over (pytorch/pytorch issues
169545 and 96693): a step cut into passes by the token budget, or of `grad_accum` batches, then trains on its
last pass's gradient alone, or fails. `train.gradients_out_of_graphs` copies them out where more passes follow.
This bench trains a small random ce-ray BERT (no dropout: compiled and eager draw nothing apart) under CUDA graphs
for --steps steps of --passes passes each, with the loop's own `training_pass` and `optimizer_step`, in fp32, and
after each step's passes computes the same passes' gradients eagerly on a twin holding the same weights:
  gradients copied    as `ce-ray train` runs it: rounding apart (~1e-6 of the largest gradient)
  gradients left      torch's own behaviour: a difference of the gradients' size, or the error torch raised,
                      says that this torch still overwrites them
On a CPU there are no CUDA graphs: both match (a smoke test). Writes bench/results/graph_gradients.json
(graph_gradients_cpu.json on CPU).

    python3 bench/graph_gradients.py               # GPU, ~1 min, most of it compiling
    .venv/bin/python bench/graph_gradients.py      # CPU smoke (~20 s)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import common  # puts the working tree's ce_ray on the path


def passes(args, data, device: str) -> list:
    """A step's passes: (inputs, targets) of random ids, without padding."""
    import torch

    return [({"input_ids": torch.randint(1, 1000, (args.rows, args.width), generator=data).to(device)},
             (torch.rand(args.rows, generator=data) < 0.3).float().to(device)) for _ in range(args.passes)]


def train(device: str, args, copy: bool) -> dict:
    """--steps steps under CUDA graphs; after each step's passes, the gradients against those an eager twin of
    the model computes on the same weights and passes: the largest difference, relative to the largest
    gradient. Or the error the run raised."""
    import torch

    from ce_ray.bert import BertCrossEncoder
    from ce_ray.train import gradients_out_of_graphs, linear_schedule, optimizer_step, training_pass

    torch.manual_seed(args.seed)
    config = dict(vocab_size=1000, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
                  intermediate_size=4 * args.hidden, max_position_embeddings=512, type_vocab_size=2,
                  layer_norm_eps=1e-12, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model, twin = (BertCrossEncoder(config).to(device).train() for _ in range(2))
    forward = torch.compile(model, dynamic=True, mode="reduce-overhead")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(0, args.steps))
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    data = torch.Generator().manual_seed(args.seed + 1)  # the same passes for every run
    rows, worst, started = args.rows * args.passes, [], time.perf_counter()
    try:
        for _ in range(args.steps):
            step = passes(args, data, device)
            for number, (inputs, target) in enumerate(step):
                training_pass(forward, inputs, target, loss_fn, rows, 1, contextlib.nullcontext)
                if copy and number < args.passes - 1:
                    gradients_out_of_graphs(model)
            twin.load_state_dict(model.state_dict())
            twin.zero_grad(set_to_none=True)
            for inputs, target in step:
                training_pass(twin, inputs, target, loss_fn, rows, 1, contextlib.nullcontext)
            scale = max(q.grad.abs().max().item() for q in twin.parameters())
            worst.append(max((p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(),
                                                                                 twin.parameters())) / scale)
            optimizer_step(model, optimizer, scheduler, 1.0)
        common.sync(device)
    except RuntimeError as e:
        return {"error": str(e).strip().splitlines()[0][:300], "seconds": time.perf_counter() - started}
    return {"largest_relative_gradient_difference": max(worst), "by_step": worst,
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--passes", type=int, default=3, help="passes a step")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = common.pick_device(args.device)

    runs = {"gradients copied": train(device, args, copy=True), "gradients left": train(device, args, copy=False)}
    print(f"{args.steps} steps of {args.passes} passes of {args.rows} x {args.width} tokens under CUDA graphs, fp32, "
          f"{device}: the gradients against eager ones, relative to the largest")
    for name, run in runs.items():
        if "error" in run:
            print(f"  {name:<17} failed: {run['error']}")
        else:
            print(f"  {name:<17} largest difference {run['largest_relative_gradient_difference']:.1e} "
                  f"({run['seconds']:.1f} s)")
    name = "graph_gradients" + ("" if device.startswith("cuda") else "_cpu")
    path = common.write_result(name, common.header(device) | {"bench": "graph_gradients", "args": vars(args),
                                                             "results": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
