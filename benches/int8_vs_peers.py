#!/usr/bin/env python3
"""c2q int8 against OpenVINO int8 and ONNX Runtime int8 on the same nets, interleaved.

For each net the fp32 Caffe2 model is converted to ONNX once per batch size
(../shared/tools/c2_to_onnx.py) and quantized once with ONNX Runtime's quantize_static (QDQ,
uint8 activations, int8 per-channel weights, MinMax on 16 seeded noise images: the settings of
../shared/tools/peer_bench.py --int8); OpenVINO compiles that QDQ model (f32 precision hint,
LATENCY hint). c2q runs its own int8 model (`c2q quantize` output, made here when missing).
Then ROUNDS rounds, each timing every configuration once per runtime in turn: c2q (`c2q
bench --json`, median of RUNS runs after warm-up), OpenVINO and ORT (median of RUNS calls
after 3 warm-up calls). Prints one JSON line per measurement and a table of medians over the
rounds with the ratios peer/c2q (> 1 means c2q is faster) and c2q's GMAC/s.

  python3 benches/int8_vs_peers.py [--nets resnet50,mobilenet_v2,squeezenet1_1]
      [--configs 1x1,2x1,2x16] [--rounds 3] [--runs 20] [--c2q target/release/c2q]

Configurations are THREADSxBATCH; ResNet-50 takes every configuration, the other nets only
1x1 unless --all-configs. Needs the peer venv of ../shared/tools/README.md (onnx,
onnxruntime, openvino, numpy) and a release build of c2q.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared")
sys.path.insert(0, os.path.join(SHARED, "tools"))

# Multiply-accumulates per image (convolutions and FC), for GMAC/s.
GMAC = {"resnet50": 4.09, "mobilenet_v2": 0.30, "squeezenet1_1": 0.35}


def model_files(name):
    d = os.path.join(SHARED, "models", name)
    pick = lambda base: next(
        os.path.join(d, base + ext) for ext in (".pb", ".pbtxt") if os.path.exists(os.path.join(d, base + ext)))
    return d, pick("init_net"), pick("predict_net")


def c2q_int8(c2q, name, work):
    """The c2q int8 model of `name` (quantized on imagenet100 once, cached in `work`)."""
    out = os.path.join(work, name + "_int8")
    if not os.path.exists(os.path.join(out, "predict_net.pb")):
        d, _, _ = model_files(name)
        cmd = [c2q, "quantize", "--model", d, "--calib-db", os.path.join(SHARED, "data", "imagenet100"),
               "--calib-images", "32", "--out", out]
        if name == "mobilenet_v2":
            cmd += ["--per-channel"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def peers(name, batch, work):
    """(ORT int8 ONNX path) for `name` at `batch`, converted and quantized once."""
    import numpy as np
    import c2_to_onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnxruntime as ort
    q = os.path.join(work, f"{name}_b{batch}_int8.onnx")
    if os.path.exists(q):
        return q
    _, init, pred = model_files(name)
    fp32 = os.path.join(work, f"{name}_b{batch}.onnx")
    c2_to_onnx.convert(init, pred, fp32, batch, 224, 0, None)
    rng = np.random.default_rng(0)
    calib = [np.repeat(rng.standard_normal((1, 3, 224, 224)).astype(np.float32), batch, axis=0)
             for _ in range(16)]
    inp = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {inp: x}

    pre = os.path.join(work, f"{name}_b{batch}_pre.onnx")
    quant_pre_process(fp32, pre)
    quantize_static(pre, q, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return q


def time_calls(fn, runs):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nets", default="resnet50,mobilenet_v2,squeezenet1_1")
    p.add_argument("--configs", default="1x1,2x1,2x16")
    p.add_argument("--all-configs", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--c2q", default=os.path.join(ROOT, "target", "release", "c2q"))
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "c2q_peers"))
    a = p.parse_args()
    import numpy as np
    import onnxruntime as ort
    import openvino as ov
    os.makedirs(a.work, exist_ok=True)
    configs = [tuple(int(v) for v in c.split("x")) for c in a.configs.split(",")]
    jobs = []  # (net, threads, batch)
    for net in a.nets.split(","):
        for t, b in configs:
            if net == "resnet50" or a.all_configs or (t, b) == (1, 1):
                jobs.append((net, t, b))
    isa = subprocess.run([a.c2q, "info", "--model", c2q_int8(a.c2q, jobs[0][0], a.work)],
                         capture_output=True, text=True).stdout
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t")
    print(json.dumps({"cpu": cpu, "c2q_kernels": [l for l in isa.splitlines() if l.startswith("kernels")],
                      "onnxruntime": ort.__version__, "openvino": ov.__version__}), flush=True)
    core = ov.Core()
    prepared = {}
    for net, t, b in jobs:
        q = peers(net, b, a.work)
        x = np.random.default_rng(1).standard_normal((b, 3, 224, 224)).astype(np.float32)
        so = ort.SessionOptions()
        so.intra_op_num_threads = t
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        s = ort.InferenceSession(q, so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        cm = core.compile_model(q, "CPU", {"INFERENCE_NUM_THREADS": t, "INFERENCE_PRECISION_HINT": "f32",
                                          "PERFORMANCE_HINT": "LATENCY"})
        req = cm.create_infer_request()
        prepared[(net, t, b)] = (c2q_int8(a.c2q, net, a.work),
                                 lambda s=s, name=name, x=x: s.run(None, {name: x}),
                                 lambda req=req, x=x: req.infer({0: x}))
    results = {}
    for r in range(a.rounds):
        for job in jobs:
            net, t, b = job
            d, ort_call, ov_call = prepared[job]
            out = subprocess.run([a.c2q, "bench", "--model", d, "--threads", str(t), "--batch", str(b),
                                  "--runs", str(a.runs), "--json"], capture_output=True, text=True, check=True)
            c = json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]
            o = time_calls(ov_call, a.runs)
            n = time_calls(ort_call, a.runs)
            for who, ms in (("c2q", c), ("openvino", o), ("onnxruntime", n)):
                results.setdefault((job, who), []).append(ms)
                print(json.dumps({"round": r, "net": net, "threads": t, "batch": b, "runtime": who,
                                  "median_ms": round(ms, 3)}), flush=True)
    print(f"\nmedians of {a.rounds} interleaved rounds, ms per batch (ratio = peer / c2q, > 1: c2q faster)")
    print(f"{'net':<14} {'thr':>3} {'batch':>5} {'c2q':>8} {'GMAC/s':>7} {'OpenVINO':>9} {'ratio':>6} {'ORT':>8} {'ratio':>6}")
    for job in jobs:
        net, t, b = job
        med = {w: statistics.median(results[(job, w)]) for w in ("c2q", "openvino", "onnxruntime")}
        gmacs = GMAC.get(net, float("nan")) * b / med["c2q"] * 1e3
        print(f"{net:<14} {t:>3} {b:>5} {med['c2q']:>8.2f} {gmacs:>7.0f} {med['openvino']:>9.2f} "
              f"{med['openvino'] / med['c2q']:>6.2f} {med['onnxruntime']:>8.2f} {med['onnxruntime'] / med['c2q']:>6.2f}")


if __name__ == "__main__":
    main()
