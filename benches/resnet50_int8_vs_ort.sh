#!/usr/bin/env bash
# ResNet-50 int8: `c2q bench` on the c2q-quantized net, c2q fp32, and ONNX Runtime fp32/int8
# (../shared/tools/peer_bench.py --int8: quantize_static, QDQ, per-channel) interleaved on the
# same machine; ROUNDS rounds x {1,2} threads at batch 1, then B16_ROUNDS rounds at batch 16. Prints one
# JSON line per run and a summary of medians. Needs a release build, the peer venv (see
# ../shared/tools/README.md) and an int8 model:
#   cargo build --release
#   ./target/release/c2q quantize --model ../shared/models/resnet50 \
#       --calib-db ../shared/data/imagenet100 --calib-images 16 --out /tmp/r50_int8
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PEER_PYTHON:-/tmp/peers/bin/python}
FP32=../shared/models/resnet50
INT8=${INT8_MODEL:-/tmp/r50_int8}
ROUNDS=${ROUNDS:-3}
B16_ROUNDS=${B16_ROUNDS:-1}
log=${LOG:-$(mktemp)}
peer() {
  (cd ../shared/tools && "$PY" peer_bench.py ../models/resnet50/init_net.pbtxt ../models/resnet50/predict_net.pbtxt \
     --threads "$1" --batch "$2" --runs "$3" --int8 2>/dev/null | grep precision) | tee -a "$log"
}
run() {
  t=$1; b=$2; runs=$3
  ./target/release/c2q bench --model "$INT8" --threads "$t" --batch "$b" --runs "$runs" --json \
    | sed 's/"runtime":"c2q"/"runtime":"c2q","precision":"int8"/' | tee -a "$log"
  ./target/release/c2q bench --model "$FP32" --threads "$t" --batch "$b" --runs "$runs" --json \
    | sed 's/"runtime":"c2q"/"runtime":"c2q","precision":"fp32"/' | tee -a "$log"
  peer "$t" "$b" "$runs"
}
for round in $(seq "$ROUNDS"); do
  for t in 1 2; do run "$t" 1 20; done
done
for round in $(seq "$B16_ROUNDS"); do
  for t in 1 2; do run "$t" 16 4; done
done
python3 - "$log" <<'PYEOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    j = json.loads(line)
    who = "c2q" if j.get("runtime") == "c2q" else "ort"
    rows.setdefault((j["threads"], j["batch"], who, j["precision"]), []).append(j["median_ms"])
for t, b in [(1, 1), (2, 1), (1, 16), (2, 16)]:
    g = lambda who, p: statistics.median(rows[(t, b, who, p)])
    c8, c32, o8, o32 = g("c2q", "int8"), g("c2q", "fp32"), g("ort", "int8"), g("ort", "fp32")
    n = len(rows[(t, b, "c2q", "int8")])
    print(f"threads {t} batch {b} ({n} rounds): c2q int8 {c8:.1f} ms ({4.09 * b / c8 * 1000:.1f} GMAC/s), "
          f"c2q fp32 {c32:.1f}, ORT int8 {o8:.1f}, ORT fp32 {o32:.1f}; "
          f"ORT int8 / c2q int8 = {o8 / c8:.2f}x, c2q fp32 / int8 = {c32 / c8:.2f}x")
PYEOF
