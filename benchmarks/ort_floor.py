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

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sections.common import median_seconds

from sekd.export import _session
from sekd.io import SAMPLE_RATE

HIDDEN, BINS, HOP = 32, 257, 128
HOP_BUDGET_US = 0.002 * HOP / SAMPLE_RATE * 1e6  # RTF target x hop duration
EMPTY = "call with one elementwise node"
CALLS_PER_ROUND = 4000


def session(nodes: list, inputs: dict, outputs: dict, weights: dict) -> ort.InferenceSession:
    """A session of a graph with float inputs/outputs of the given shapes, opened as
    ``sekd.export`` opens ``frame.onnx`` (one thread)."""

    def value(name: str, shape: list) -> onnx.ValueInfoProto:
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
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "floor.onnx"
        onnx.save(model, path)
        return _session(path)


def microseconds_per_call(sess: ort.InferenceSession, inputs: dict, outputs: dict) -> float:
    """Median over 5 rounds of the mean time of one bound call (after a warm-up round)."""
    rng = np.random.default_rng(0)
    binding = sess.io_binding()
    keep = []
    for name, shape in inputs.items():
        keep.append(rng.standard_normal(shape).astype(np.float32))
        binding.bind_cpu_input(name, keep[-1])
    for name, shape in outputs.items():
        keep.append(np.zeros(shape, np.float32))
        binding.bind_output(name, "cpu", 0, np.float32, list(shape), keep[-1].ctypes.data)

    def round_of_calls() -> None:
        for _ in range(CALLS_PER_ROUND):
            sess.run_with_iobinding(binding)

    return median_seconds(round_of_calls, repeats=5) / CALLS_PER_ROUND * 1e6


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
    cases = {
        EMPTY: ([helper.make_node("Relu", ["x"], ["y"])], {"x": [1, HOP]}, {"y": [1, HOP]}, {}),
        f"hop DFT, matrix-vector [{HOP}, {2 * BINS + 8}]": matmul_case(HOP, 2 * BINS + 8),
        f"inverse DFT, matrix-vector [{2 * BINS}, {HOP}]": matmul_case(2 * BINS, HOP),
        f"GRU step, input {BINS}": gru_case(BINS),
        f"GRU step, input {HIDDEN}": gru_case(HIDDEN),
        f"mask head, matrix-vector [{HIDDEN}, {BINS}]": matmul_case(HIDDEN, BINS),
    }
    times = {
        name: microseconds_per_call(session(*case), *case[1:3]) for name, case in cases.items()
    }
    base = times[EMPTY]
    floor = sum(times.values()) - (len(times) - 1) * base  # one call, plus each piece's work
    print(f"{'what':48s} {'µs/call':>8s} {'above a call':>13s}")
    for name, t in times.items():
        print(f"{name:48s} {t:8.2f} {t - base:13.2f}")
    print(f"{'floor: one call + the work above':48s} {floor:8.2f}")
    floor_rtf = floor * 1e-6 * SAMPLE_RATE / HOP
    print(f"budget per hop at RTF 0.002: {HOP_BUDGET_US:.1f} µs; floor RTF {floor_rtf:.5f}")


if __name__ == "__main__":
    main()
