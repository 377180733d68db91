"""Post-training int8 quantisation of the task heads for ONNX Runtime on CPUs (static, QDQ format).

    train split, one-channel frames --quantised at every quality (QUALITY_CODES, in turn)--> LL1 planes
        as the decoder gives them (coarse_reconstruction), standardised over each frame: the calibration set
        (read from the corpus at training time: mvmic.training.int8_calibration)
    X-heads.onnx (float) --quant_pre_process, then onnxruntime.quantization.quantize_static: MinMax ranges
        of every activation on the calibration set, uint8 activations, int8 weights per output channel,
        7-bit weight range; the first and the output convolutions in float (FLOAT_NODES)-->
        X-heads.int8.onnx, with the float model's metadata (the .pt's sha256: a stale export is refused)

Why: the heads are 2.9 GMAC per 512 x 512 frame; ONNX Runtime runs the int8 convolutions (QLinearConv
after fusing the QDQ pairs) with VNNI dot products, 30 ms per 256 x 256 LL1 plane on one thread of this
machine's Xeon against 59 ms in float. On the 24 test frames of tests/test_onnx_runtime.py 99.95 % of
lesion mask and 99.2 % of organ map pixels equal the float heads'; `mvmic bench tasks` scores both (lesion
Dice 0.304 int8, 0.300 float at quality 4; mean organ Dice 0.393, 0.395). The weights' 7-bit range
(``reduce_range``) keeps the uint8 x int8 products inside int16 on CPUs without VNNI, where ONNX Runtime's
AVX2 kernel would otherwise saturate (its documentation's advice), at the same speed here.

The int8 model is what the service and `mvmic analyze` run on a CPU (mvmic.model.tasks.runtime, runtime "auto");
on CUDA the float model runs. Written by `mvmic export-onnx --int8` (and the heads' training exports).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

# Kept in float: the first convolution (its input, standardised pixels with the tails of bone and air, would
# lose its fine steps in 8 bits) and the two output convolutions (logits and box sizes; quantised, they biased
# the centre heatmaps up: 47 more boxes than float on the 24 frames of tests/test_onnx_runtime.py, 2 now).
# Together about 1 % of the multiply-adds.
FLOAT_NODES = ("/heads/e1/e1.0/Conv", "/heads/segmentation/Conv", "/heads/detection/detection.2/Conv")
CALIBRATION_SPLIT = "train"  # what mvmic.training.int8_calibration calibrates on, named in the metadata


def quantize_heads(model: bytes, planes: list[np.ndarray]) -> bytes:
    """The int8 (QDQ) ONNX model of the float heads model ``model``, activation ranges measured on ``planes``
    (each (1, 1, h, w) float32, standardised), with the float model's metadata."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mvmic.model.tasks.runtime import INPUT, PRECISION

    class Planes(CalibrationDataReader):
        def __init__(self) -> None:
            self.planes = iter(planes)

        def get_next(self) -> dict | None:
            plane = next(self.planes, None)
            return None if plane is None else {INPUT: plane}

    if not planes:
        raise ValueError("no calibration planes")
    source = onnx.load_from_string(model)
    missing = set(FLOAT_NODES) - {node.name for node in source.graph.node}
    if missing:
        raise ValueError(f"not the heads' ONNX model as mvmic.model.tasks.runtime exports it: no node {sorted(missing)}")
    with tempfile.TemporaryDirectory(prefix="mvmic-int8-") as folder:
        folder = Path(folder)
        (folder / "float.onnx").write_bytes(model)
        quant_pre_process(folder / "float.onnx", folder / "prepared.onnx")  # shapes inferred, graph optimised
        quantize_static(folder / "prepared.onnx", folder / "int8.onnx", Planes(), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=list(FLOAT_NODES))
        quantized = onnx.load(folder / "int8.onnx")
    del quantized.metadata_props[:]
    for prop in source.metadata_props:
        quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.metadata_props.add(key=PRECISION, value="int8")
    quantized.metadata_props.add(key="mvmic.calibration", value=f"{len(planes)} LL1 planes of the "
                                 f"{CALIBRATION_SPLIT} split, MinMax")
    quantized.doc_string = source.doc_string + "; int8 QDQ (mvmic/model/tasks/quantize.py)"
    return quantized.SerializeToString()
