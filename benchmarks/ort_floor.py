"""The least one streamed hop can cost through ONNX Runtime on this CPU (issue 17, streaming).

The 2x32 student's fused hop graph (``frame.onnx``) needs at least: one session call, a DFT of the
hop and an inverse DFT (two matrix-vector products of ~67 k multiply-adds), two GRU steps (input 257
and 32, 32 units) and the mask head (32 -> 257). This times each of those alone, as a one-node graph
run through bound buffers (``run_with_iobinding``, as ``sekd.fused.FusedStreamer`` calls it), one
thread, and adds up what each costs above an empty call. The sum is a floor for any graph that
does that work node by node: every other node (features, mask product, overlap-add) only adds.

    python benchmarks/ort_floor.py          # ~10 s; prints microseconds per call

The RTF target for one stream, 0.002 at a 128-sample hop (8 ms), allows 16 µs per hop.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HOP_BUDGET_US = 0.002 * 128 / 16000 * 1e6  # RTF target x hop duration
HIDDEN, BINS, HOP, N_FFT = 32, 257, 128, 512
CALLS = 20000


def session(nodes: list, inputs: dict, outputs: dict, weights: dict) -> ort.InferenceSession:
    """A one-thread session of a graph with float inputs/outputs of the given shapes."""

    def value(name: str, shape: list) -> object:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(
        nodes,
        "floor",
        [value(k, s) for k, s in inputs.items()],
        [value(k, s) for k, s in outputs.items()],
        initializer=[numpy_helper.from_array(w, k) for k, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])


def microseconds_per_call(sess: ort.InferenceSession, inputs: dict, outputs: dict) -> float:
    """Median over 5 rounds of the mean time of one bound call (after a warm-up)."""
    rng = np.random.default_rng(0)
    binding = sess.io_binding()
    keep = []
    for name, shape in inputs.items():
        keep.append(rng.standard_normal(shape).astype(np.float32))
        binding.bind_cpu_input(name, keep[-1])
    for name, shape in outputs.items():
        keep.append(np.zeros(shape, np.float32))
        binding.bind_output(name, "cpu", 0, np.float32, list(shape), keep[-1].ctypes.data)
    for _ in range(CALLS // 10):
        sess.run_with_iobinding(binding)
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(CALLS // 5):
            sess.run_with_iobinding(binding)
        rounds.append((time.perf_counter() - start) / (CALLS // 5) * 1e6)
    return float(np.median(rounds))


def matmul_case(rows: int, cols: int) -> tuple:
    rng = np.random.default_rng(1)
    weight = {"w": rng.standard_normal((rows, cols)).astype(np.float32)}
    return (
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        {"x": [1, rows]},
        {"y": [1, cols]},
        weight,
    )


def gru_case(inputs: int) -> tuple:
    rng = np.random.default_rng(2)
    weights = {
        "w": 0.1 * rng.standard_normal((1, 3 * HIDDEN, inputs)).astype(np.float32),
        "r": 0.1 * rng.standard_normal((1, 3 * HIDDEN, HIDDEN)).astype(np.float32),
        "b": 0.1 * rng.standard_normal((1, 6 * HIDDEN)).astype(np.float32),
    }
    node = helper.make_node(
        "GRU", ["x", "w", "r", "b", "", "h"], ["y", "hn"], hidden_size=HIDDEN, linear_before_reset=1
    )
    shapes_in = {"x": [1, 1, inputs], "h": [1, 1, HIDDEN]}
    return [node], shapes_in, {"y": [1, 1, 1, HIDDEN], "hn": [1, 1, HIDDEN]}, weights


def main() -> None:
    empty = ([helper.make_node("Relu", ["x"], ["y"])], {"x": [1, HOP]}, {"y": [1, HOP]}, {})
    cases = {
        "call with one elementwise node": empty,
        f"hop DFT, matrix-vector [{HOP}, {2 * BINS + 8}]": matmul_case(HOP, 2 * BINS + 8),
        f"inverse DFT, matrix-vector [{2 * BINS}, {HOP}]": matmul_case(2 * BINS, HOP),
        f"GRU step, input {BINS}": gru_case(BINS),
        f"GRU step, input {HIDDEN}": gru_case(HIDDEN),
        f"mask head, matrix-vector [{HIDDEN}, {BINS}]": matmul_case(HIDDEN, BINS),
    }
    times = {
        name: microseconds_per_call(session(*case), case[1], case[2])
        for name, case in cases.items()
    }
    base = times["call with one elementwise node"]
    floor = base + sum(
        t - base for name, t in times.items() if name != "call with one elementwise node"
    )
    print(f"{'what':48s} {'µs/call':>8s} {'above a call':>13s}")
    for name, t in times.items():
        print(f"{name:48s} {t:8.2f} {t - base:13.2f}")
    print(f"{'floor: one call + the work above':48s} {floor:8.2f}")
    print(
        f"budget per hop at RTF 0.002: {HOP_BUDGET_US:.1f} µs; floor RTF {floor * 1e-6 * 16000 / HOP:.4f}"
    )


if __name__ == "__main__":
    main()
