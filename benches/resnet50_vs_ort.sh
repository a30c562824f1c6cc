#!/usr/bin/env bash
# ResNet-50 fp32: `c2q bench` and ONNX Runtime (../shared/tools/peer_bench.py) interleaved on
# the same machine, 3 rounds x {1,2} threads x batch {1,8}; prints one JSON line per run and a
# summary of medians and ratios. Needs a release build and the peer venv:
#   cargo build --release
#   python3 -m venv /tmp/peers && /tmp/peers/bin/pip install onnx onnxruntime numpy protobuf sympy
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PEER_PYTHON:-/tmp/peers/bin/python}
MODEL=../shared/models/resnet50
log=$(mktemp)
for round in 1 2 3; do
  for cfg in "1 1" "2 1" "1 8" "2 8"; do
    set -- $cfg
    t=$1; b=$2; runs=$(( b == 1 ? 20 : 6 ))
    ./target/release/c2q bench --model "$MODEL" --threads "$t" --batch "$b" --runs "$runs" --json | tee -a "$log"
    (cd ../shared/tools && "$PY" peer_bench.py ../models/resnet50/init_net.pbtxt ../models/resnet50/predict_net.pbtxt \
       --threads "$t" --batch "$b" --runs "$runs" 2>/dev/null | tail -1) | tee -a "$log"
  done
done
python3 - "$log" <<'PYEOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    j = json.loads(line)
    who = "c2q" if j.get("runtime") == "c2q" else "ort"
    rows.setdefault((j["threads"], j["batch"], who), []).append(j["median_ms"])
for t, b in [(1, 1), (2, 1), (1, 8), (2, 8)]:
    c = statistics.median(rows[(t, b, "c2q")]); o = statistics.median(rows[(t, b, "ort")])
    print(f"threads {t} batch {b}: c2q {c:.1f} ms, ORT {o:.1f} ms, ratio {c / o:.2f}")
PYEOF
