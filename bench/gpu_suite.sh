#!/usr/bin/env bash
# Every GPU bench in one call on the GPU machine, most important first, within a time budget.
#
#   bash bench/gpu_suite.sh [SECONDS] [STEP...]     # default 560 s; steps: smoke score scale scale12 first12
#                                                   # running6 running12 scale6 train compile train_compile graphs
#                                                   # rows profile rank
#
# The machine comes bare and is held for minutes (15 at a time, its start included), so one
# call does what fits: it installs the carried wheels (.whl, see bench/README.md), records the machine, then
# runs each step under `timeout` with what is left of the budget. The first step is a small end-to-end run
# that stops the suite early if ce-ray fails on the GPU, before the long steps. Logs and results gather in a
# folder, packed after each step into $OUT/gpu_suite.tar (or ./gpu_suite.tar without $OUT), so that a call cut
# short keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${1:-560}
shift || true
every="smoke score scale scale12 first12 running6 running12 scale6 train compile train_compile graphs rows profile rank"
steps=${*:-$every}
for name in $steps; do  # a misspelt step ran nothing, silently, on a machine held for minutes
  [[ " $every " == *" $name "* ]] || { echo "gpu_suite: no step $name (steps: $every)" >&2; exit 2; }
done
deadline=$(( $(date +%s) + budget ))
logs=$(mktemp -d)
touch "$logs/started"
wanted() { [[ " $steps " == *" $1 "* ]]; }
# The results this call wrote alone: a bench that died before its first write left the committed file of its name,
# which came back as if measured now (its `date` alone told them apart).
pack() {
  find bench/results -maxdepth 1 \( -name '*.json' -o -name '*.png' \) -newer "$logs/started" -exec cp {} "$logs/" \;
  tar -C "$logs" -cf "${OUT:-.}/gpu_suite.tar" .
}

if [ -d .whl ] && ! python3 -c "import ray" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 RAY_DATA_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=true
{ nvidia-smi; nproc; free -g; df -h /tmp /dev/shm
  python3 -c "import torch, transformers, pyarrow, ray, nanotoken, sentence_transformers as st
print('torch', torch.__version__, 'transformers', transformers.__version__, 'pyarrow', pyarrow.__version__,
      'ray', ray.__version__, 'sentence-transformers', st.__version__)"; } >"$logs/machine.log" 2>&1
cat "$logs/machine.log"
pack

# step NAME SECONDS COMMAND...: runs COMMAND for at most SECONDS and what is left of the budget.
step() {
  local name=$1 limit=$2 left=$(( deadline - $(date +%s) ))
  shift 2
  wanted "$name" || return 0
  # A step left less than half its time would be cut before its main figures (35-45 s spent for nothing).
  if (( left < limit / 2 || left < 20 )); then
    echo "== $name: skipped, ${left}s left of the ${limit}s it takes"
    return 0
  fi
  (( left < limit )) && limit=$left
  echo "== $name (at most ${limit}s): $*"
  local start=$(date +%s)
  # Ray Train's PlacementGroupCleaner warns every few seconds where Ray runs without its dashboard, as the benches'
  # Ray does (133 lines of a train_compile log, 2026-12-04): left out of the logs.
  timeout -k 10 "$limit" "$@" 2>&1 | grep --line-buffered -v "PlacementGroupCleaner" | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - start ))s" | tee -a "$logs/$name.log"
  pack
  return "$rc"
}

# A small run of every system: a failure here (ce-ray on the GPU) ends the suite before the long steps. Its
# jobs are nearly all start-up: (e) against (e3) is what ce-ray's BERT takes off a replica's start.
if ! step smoke 110 python3 bench/score_gpu.py --layers 6 --pairs 20000 --anchor-pairs 2000 --files 4 \
    --repeats 1 --check 2000 --skip recipe --transformers --name score_gpu_smoke; then
  echo "smoke failed: the suite stops here"; exit 1
fi
# L6 and L12 on the same 1M pairs, every anchor: the targets. 246 s for both on the H200 (2026-11-30), 234 s
# (2026-12-04); the anchors' warm passes add ~15 s, and the H100 is slower.
step score 320 python3 bench/score_gpu.py --layers 6 12 --anchor-pairs 10000 --repeats 1
# 1M and 5M pairs through the `ce-ray score` command, each in its own process and Ray: cost per pair and
# memory at scale, and the "1M+" rate, which a 5M job can reach where a 1M one cannot (its start is seconds).
step scale 180 python3 bench/scale.py --layers 6 --sizes 1000000 5000000 --work /tmp/ce-ray-scale
# L12's "1M+" rate: 5M pairs, one job (~107 s), on the inputs scale made (written first where it did not run). Each
# scale.py first asks transformers for its new model folder's tokenizer facts, apart from the timed jobs: 16 s on
# the H200 machine (2026-12-04), where the 150 s this step had cut it short.
step scale12 200 python3 bench/scale.py --layers 12 --sizes 5000000 --work /tmp/ce-ray-scale
# The same job as the first with its model folder (a new cache): the facts asked while Ray starts, within its time.
step first12 200 python3 bench/scale.py --layers 12 --sizes 5000000 --work /tmp/ce-ray-scale --first-job \
    --name scale_l12_first
# The jobs as on a cluster: joined to a Ray started once before them, so that their seconds hold no Ray start (5-8 s
# on the H200). L6 at 5M (~100 s with its facts, its model's build and the suite's start), then L12 at 5M (~125 s):
# both within a call of 330 s, where L6's 1M job too would leave L12's cut short of its only figure.
step running6 120 python3 bench/scale.py --layers 6 --sizes 5000000 --work /tmp/ce-ray-scale --running-ray \
    --name scale_l6_running
step running12 180 python3 bench/scale.py --layers 12 --sizes 5000000 --work /tmp/ce-ray-scale --running-ray \
    --name scale_l12_running
# L6's 5M job alone, on the same inputs: 84 s with the facts recorded, ~100 s with them.
step scale6 120 python3 bench/scale.py --layers 6 --sizes 5000000 --work /tmp/ce-ray-scale --name scale_l6_5m
# The trainer's anchors, ce-ray at batch 16 in bf16 and in fp32 ((c4): a small step without autocast's casts),
# then at 256 (the quality-checked large-batch recipe) and 2,048, each in passes of at most 65,536 tokens: ~40 s
# a ce-ray run on the H200, most of it Ray Train's start and stop (190 s held all but (c4), 2026-12-04). The large
# batches run right after (c), before (c4) and (c5), which the step's time may cut.
step train 240 python3 bench/train_gpu.py --layers 6 --pairs 100000 --anchor-steps 200
# torch.compile against eager, model alone and end to end, on fewer pairs: the compiling takes a minute.
step compile 180 python3 bench/score_gpu.py --layers 6 --pairs 300000 --skip predict recipe --repeats 1 --compile \
    --name score_gpu_compile
# ce-ray train at batch 16 eager, under torch.compile, and with CUDA graphs too (the trainer's anchors again,
# for the ratios): the compiling falls in a compiled run's first log window, its steady rate in the later ones. The
# systems before them took ~170 s and (c2)'s first 50 steps 43 s on the H200 (2026-12-04), where 287 s ended before
# its second window: a call of its own, without (c4) and (c5), which that run measured (~70 s).
step train_compile 560 python3 bench/train_gpu.py --layers 6 --anchor-steps 200 --large-batch --compile \
    --skip fp32 alone --name train_gpu_compile
# Steps of several passes under CUDA graphs: their gradients against eager ones, with the loop's copy of them between
# passes and without it (torch's own behaviour, which overwrote them in the torch versions of pytorch issue 169545).
step graphs 120 python3 bench/graph_gradients.py
# L6's 5M job at 16,384 rows a call (32,768 by default): at 65,536, whose sorting pads 1.8% of the tokens against 3.5%,
# it ran 87,986 pairs/s against the default's 92,919 (2026-12-04, once each; `scale_l6_rows65536.json`).
step rows 110 python3 bench/scale.py --layers 6 --sizes 5000000 --work /tmp/ce-ray-scale --name scale_l6_rows16384 \
    -- --rows-per-call 16384
# Each stage alone (the Scorer without Ray: the replica's own rate S), then the sweeps; rows a call against the
# default 32,768, whose per-call sorting pads 3.5% of tokens (1.8% at 65,536). Each job's `timeline:` line gives
# its rate between its first call and its last, free of its start.
step profile 200 python3 bench/profile_stages.py --layers 6 --pairs 300000 --hf-pairs 5000 \
    --batch-tokens 16384 65536 131072 --rows-per-call 32768 65536 --tokenize-cpus 1 3 --replicas
# rerank's rank stage on the machine's 16 CPUs (no GPU): Ray's plain group-by against ce-ray's.
step rank 120 python3 bench/rank_stage.py --pairs 1000000 --files 16 --repeats 1 --name rank_stage_16cpu
pack
echo "== done: $(( budget - (deadline - $(date +%s)) ))s of ${budget}s; results in ${OUT:-.}/gpu_suite.tar"
