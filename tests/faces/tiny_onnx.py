"""Tiny ONNX models with the shapes of insightface's SCRFD detector and ArcFace recognizer.

They are real ONNX graphs that insightface's `model_zoo.get_model` loads and routes like the real files:

* The detector is SCRFD-shaped (one input, nine outputs: scores, boxes and keypoints at strides 8, 16
  and 32, two anchors per cell). It "detects" every 32x32 cell of its input that is bright white, with
  a 64x64 box centred on the cell's top-left corner and five keypoints at fixed offsets - the eyes and
  mouth corners deliberately emitted right-before-left, so the caller's ordering is exercised.
* The recognizer is ArcFace-shaped (1x3x112x112 in, 512 out): a fixed random projection of the
  8x8-pooled pixels, so equal inputs give equal vectors and different inputs different ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
STRIDES = (8, 16, 32)
# Keypoints in units of the stride, relative to the anchor centre: right eye, left eye, nose, right and
# left mouth corner (image right first, on purpose).
KEYPOINT_OFFSETS = np.array([[0.35, -0.3], [-0.35, -0.3], [0.0, 0.05], [0.3, 0.4], [-0.3, 0.4]], np.float32)


def _const(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _per_anchor_column(stride: int, nodes: list, inits: list) -> str:
    """Nodes computing the mean brightness of each stride x stride cell, one row per anchor (2 per cell)."""
    p = f"s{stride}_"
    nodes += [
        helper.make_node("AveragePool", ["input.1"], [p + "pool"], kernel_shape=[stride, stride],
                         strides=[stride, stride]),
        helper.make_node("ReduceMean", [p + "pool"], [p + "mean"], axes=[1], keepdims=1),
        helper.make_node("Transpose", [p + "mean"], [p + "nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [p + "nhwc", "shape_col"], [p + "col"]),
        helper.make_node("Concat", [p + "col", p + "col"], [p + "pair"], axis=1),
        helper.make_node("Reshape", [p + "pair", "shape_col"], [p + "anchor"]),
    ]
    return p + "anchor"


def _outputs_for_stride(stride: int, nodes: list, inits: list) -> tuple[str, str, str]:
    p = f"s{stride}_"
    column = _per_anchor_column(stride, nodes, inits)
    bright = stride == 32  # only the coarsest level fires, so each white cell gives one face
    inits += [_const(p + "gain", 20.0 if bright else 0.0), _const(p + "bias", -0.9 if bright else -10.0),
              _const(p + "box", np.ones((1, 4))), _const(p + "kps", KEYPOINT_OFFSETS.reshape(1, 10))]
    nodes += [
        helper.make_node("Add", [column, p + "bias"], [p + "shifted"]) if bright else
        helper.make_node("Mul", [column, p + "gain"], [p + "shifted"]),
        helper.make_node("Mul", [p + "shifted", p + "gain"], [p + "logit"]) if bright else
        helper.make_node("Add", [p + "shifted", p + "bias"], [p + "logit"]),
        helper.make_node("Sigmoid", [p + "logit"], [f"score_{stride}"]),
        helper.make_node("Mul", [column, "zero"], [p + "zeros"]),
        helper.make_node("Add", [p + "zeros", p + "box"], [f"bbox_{stride}"]),
        helper.make_node("Add", [p + "zeros", p + "kps"], [f"kps_{stride}"]),
    ]
    return f"score_{stride}", f"bbox_{stride}", f"kps_{stride}"


def build_scrfd_like(path: Path) -> Path:
    nodes: list = []
    inits = [numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "shape_col"), _const("zero", 0.0)]
    per_stride = [_outputs_for_stride(s, nodes, inits) for s in STRIDES]
    names = [group[i] for i in range(3) for group in per_stride]  # scores, then boxes, then keypoints
    widths = {"score": 1, "bbox": 4, "kps": 10}
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"n{n.split('_')[1]}", widths[n.split('_')[0]]])
               for n in names]
    graph = helper.make_graph(nodes, "tiny_scrfd",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
                              outputs, initializer=inits)
    return _save(graph, path)


def build_arcface_like(path: Path, seed: int = 0, dim: int = 512) -> Path:
    projection = np.random.default_rng(seed).standard_normal((3 * 14 * 14, dim)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "projection"], ["683"], name="project"),
    ]
    graph = helper.make_graph(nodes, "tiny_arcface",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])],
                              initializer=[numpy_helper.from_array(projection, "projection")])
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
