"""The task heads through ONNX Runtime: exported once from their torch weights, run without autograd.

    weights/X-heads.pt --load_heads_weights--> LatentHeads --export_onnx (torch.onnx, TorchScript
        exporter, dynamic batch/height/width, opset 17)--> weights/X-heads.onnx, whose metadata
        names the .pt's sha256 (SOURCE_SHA256)
    OnnxHeads.for_weights(X-heads.pt): the .onnx beside it in an onnxruntime.InferenceSession
        (CUDAExecutionProvider then CPU on a CUDA device, CPU otherwise); an .onnx made from other
        weights is refused (StaleOnnxError), a missing one is exported in memory
    OnnxHeads(planes (N, 1, H/2, W/2) float32) --> HeadOutputs of torch tensors on the CPU,
        exactly what LatentHeads.forward returns (mvmic.model.tasks.outputs decodes either)
    OnnxHeads.masks(outputs, shape) --full_resolution_decoding, a second small session--> lesion masks and
        organ maps, what outputs.segmentation_masks and organ_maps give, in a third of the time

    X-heads.onnx --mvmic.model.tasks.quantize (static int8, calibrated on the train split by
        mvmic.training.int8_calibration)--> X-heads.int8.onnx,
        what a CPU runs (runtime "auto": 2.7x faster than float here); OnnxHeads.for_weights(..., int8=True)

`mvmic export-onnx [WEIGHTS] [--int8]` (and `mvmic train heads --export`, `mvmic train joint --export-heads`,
which write both) write the .onnx files. The CPU wheel `onnxruntime` is a dependency; the CUDA image replaces it with
`onnxruntime-gpu` (docker/Dockerfile.cuda).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mvmic.model.tasks.heads import SEGMENTATION_STRIDE, HeadOutputs, LatentHeads

SOURCE_SHA256 = "mvmic.source_sha256"  # metadata key: sha256 of the .pt the model was exported from
INPUT = "planes"
PRECISION = "mvmic.precision"  # metadata key: "int8" in quantised exports (mvmic.model.tasks.quantize)
OUTPUTS = tuple(field.name for field in dataclasses.fields(HeadOutputs))  # lesion, organs, heatmap, size, offset
OPSET = 17

log = logging.getLogger(__name__)


class StaleOnnxError(ValueError):
    """The .onnx beside a heads weights file was not exported from that file."""


def onnx_path(weights: Path) -> Path:
    """Where the ONNX export of a heads weights file lives: beside it, suffix .onnx."""
    return Path(weights).with_suffix(".onnx")


def int8_path(weights: Path) -> Path:
    """Where the int8 ONNX export of a heads weights file (or of its float .onnx) lives: suffix .int8.onnx."""
    return Path(weights).with_suffix(".int8.onnx")


def load_heads_weights(path: Path, data: bytes | None = None) -> LatentHeads:
    """The heads of a weights file (as `mvmic train heads --export` writes it), in eval mode. Raises
    ValueError for a file that is not one (a training checkpoint, another network, not a torch file)."""
    heads, data = LatentHeads(), Path(path).read_bytes() if data is None else data
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and {"model", "optimizer", "state"} <= set(state):
            raise ValueError("it is a training checkpoint: export its weights with `mvmic train heads --resume "
                             "--minutes 0 --export FILE` first")
        heads.load_state_dict(state)
    except (pickle.UnpicklingError, EOFError, KeyError, IndexError):  # what torch.load's unpickler makes of other bytes
        raise ValueError(f"{path} is not a torch weights file") from None
    except (RuntimeError, AttributeError, TypeError) as exc:
        raise ValueError(f"{path} holds no task heads of this design ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not a task heads weights file: {exc}") from None
    return heads.eval()


class _Tupled(nn.Module):
    """LatentHeads with a tuple of tensors as output, which is what an ONNX graph returns."""

    def __init__(self, heads: LatentHeads) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, planes: Tensor) -> tuple[Tensor, ...]:
        outputs = self.heads(planes)
        return tuple(getattr(outputs, name) for name in OUTPUTS)


def export_onnx(heads: LatentHeads, source_sha256: str) -> bytes:
    """The ONNX model of ``heads`` (inference mode: BatchNorm as its fixed affine map), with dynamic
    batch, height and width, and ``source_sha256`` (the weights file's) in its metadata."""
    import onnx

    module = _Tupled(heads).eval()  # the exporter takes the wrapper's mode: in training mode BatchNorm uses batch statistics
    buffer = io.BytesIO()
    dynamic = {0: "batch", 2: "height", 3: "width"}  # the input's, and the segmentation outputs' (same size)
    cells = {0: "batch", 2: "cell_rows", 3: "cell_columns"}  # the detection outputs' (stride 2 from the input)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(module, (torch.zeros(1, 1, 64, 64),), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes={INPUT: dynamic, "lesion": dynamic, "organs": dynamic,
                                        **{name: cells for name in ("heatmap", "size", "offset")}})
    model = onnx.load_from_string(buffer.getvalue())
    del model.metadata_props[:]
    for key, value in ((SOURCE_SHA256, source_sha256), ("mvmic.network", "LatentHeads"),
                       ("mvmic.torch", torch.__version__)):
        model.metadata_props.add(key=key, value=value)
    model.doc_string = "MVMICNet task heads (mvmic/model/tasks/heads.py): LL1 planes (N, 1, H/2, W/2), standardised"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_heads_file(weights: Path, target: Path | None = None, command: str | None = None,
                      calibration: list[np.ndarray] | None = None) -> Path:
    """Write the ONNX model of a heads weights file (by default beside it, where analysis reads it); return its
    path. With ``calibration`` planes (each (1, 1, h, w) float32, standardised LL1: mvmic.training.int8_calibration
    reads them from the corpus), also the int8 model (int8_path of the target, mvmic.model.tasks.quantize); without
    them, an int8 export left beside the target (now stale) is removed. Exports beside the weights are recorded in
    their JSON manifest, when there is one (file, sha256, command under "onnx" and "onnx_int8"). Raises ValueError
    for a target that is the weights file itself."""
    data = Path(weights).read_bytes()
    target = onnx_path(weights) if target is None else Path(target)
    if target.resolve() == Path(weights).resolve() or int8_path(target).resolve() == Path(weights).resolve():
        raise ValueError(f"{target}: the export would overwrite the weights {weights}")
    model = export_onnx(load_heads_weights(weights, data), hashlib.sha256(data).hexdigest())
    exports = {"onnx": (target, model)}
    if calibration is not None:
        from mvmic.model.tasks.quantize import quantize_heads

        exports["onnx_int8"] = (int8_path(target), quantize_heads(model, calibration))
    elif int8_path(target).is_file():
        log.warning("%s was exported from the weights before: removed (`--int8` writes it anew)", int8_path(target))
        int8_path(target).unlink()
    manifest = Path(weights).with_suffix(".json")
    beside = target.resolve() == onnx_path(weights).resolve()
    record = json.loads(manifest.read_text()) if beside and manifest.is_file() else None
    for key, (path, content) in exports.items():
        path.write_bytes(content)
        if record is not None:
            record[key] = {"file": path.name, "sha256": hashlib.sha256(content).hexdigest(),
                           "command": command or f"mvmic export-onnx {weights}"
                                                 f"{' --int8' if calibration is not None else ''}"}
    if record is not None:
        if "onnx_int8" not in exports:
            record.pop("onnx_int8", None)
        manifest.write_text(json.dumps(record, indent=1) + "\n")
    return target


def providers_for(device: str | torch.device) -> list:
    """ONNX Runtime's execution providers for a torch device name: CUDA (that device) then CPU, or CPU.
    A CUDA device without onnxruntime-gpu's CUDA provider falls back to the CPU, with a warning."""
    import onnxruntime

    device = torch.device(device)
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise ValueError(f"ONNX Runtime runs the heads on cpu or cuda, not {device}")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        log.warning("device %s: this onnxruntime has no CUDA provider (install onnxruntime-gpu); the heads run "
                    "on the CPU", device)
        return ["CPUExecutionProvider"]
    if hasattr(onnxruntime, "preload_dlls"):  # onnxruntime-gpu: CUDA and cuDNN from the nvidia-* wheels
        onnxruntime.preload_dlls()
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


class OnnxHeads:
    """LatentHeads in an ONNX Runtime session: called like the torch module, returns HeadOutputs."""

    def __init__(self, model: bytes, device: str | torch.device = "cpu", threads: int | None = None) -> None:
        """``model``: the serialised ONNX model. ``threads``: ONNX Runtime's intra-op threads (default:
        torch's thread count, which the service sets from MVMIC_THREADS)."""
        import onnxruntime
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle intra-op threads sleep instead of spinning: the service's model threads and the codec share the
        # cores (one 256 x 256 plane, 2 threads on 2 busy cores: 66 ms instead of 112 ms; 1 thread: no change).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No CPU memory arena: the arena grows to the largest batch a session has run and never gives memory
        # back, so a service's RSS kept the peak of its largest analysis batch for good (a batch of 8 512 x 512
        # frames: +525 MiB held, against +100 MiB without the arena and nothing once malloc trims; found by
        # `mvmic bench soak` as a one-off step of the gateway's RSS). No measurable cost in time on 2 cores.
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3  # errors only
        providers = providers_for(device)
        try:
            self.session = onnxruntime.InferenceSession(model, options, providers=providers)
        except (InvalidProtobuf, InvalidGraph, InvalidArgument, Fail) as exc:  # onnxruntime's own, not RuntimeErrors
            raise ValueError(f"not an ONNX model of the heads ({str(exc).splitlines()[0]})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.source_sha256: str | None = metadata.get(SOURCE_SHA256)
        self.precision: str = metadata.get(PRECISION, "float")  # "int8" for mvmic.model.tasks.quantize's exports
        self.model_sha256 = hashlib.sha256(model).hexdigest()  # of the ONNX model running, which documents name
        names = (tuple(i.name for i in self.session.get_inputs()), tuple(o.name for o in self.session.get_outputs()))
        if names != ((INPUT,), OUTPUTS):
            raise ValueError(f"not an ONNX model of the heads: inputs and outputs {names}")
        self.providers: list[str] = self.session.get_providers()
        self.decoding = onnxruntime.InferenceSession(full_resolution_decoding(), options, providers=providers)

    @classmethod
    def for_weights(cls, weights: Path, device: str | torch.device = "cpu", threads: int | None = None,
                    data: bytes | None = None, int8: bool = False) -> OnnxHeads:
        """The heads of a weights file from the .onnx beside it (onnx_path, or int8_path with ``int8``), which
        must have been exported from this very file; without a float one the weights are exported in memory,
        without an int8 one FileNotFoundError is raised. ``data``: the file's bytes."""
        data = Path(weights).read_bytes() if data is None else data
        sha256, exported = hashlib.sha256(data).hexdigest(), int8_path(weights) if int8 else onnx_path(weights)
        if int8 and not exported.is_file():
            raise FileNotFoundError(f"{weights} has no int8 export beside it ({exported.name}): run "
                                    f"`mvmic export-onnx {weights} --int8`")
        if not exported.is_file():
            log.info("%s has no %s beside it: exported in memory", weights, exported.name)
            return cls(export_onnx(load_heads_weights(weights, data), sha256), device, threads)
        try:
            heads = cls(exported.read_bytes(), device, threads)
        except ValueError as exc:
            raise ValueError(f"{exported}: {exc}") from None
        if heads.precision != ("int8" if int8 else "float"):
            raise ValueError(f"{exported}: a {heads.precision} model where the {'int8' if int8 else 'float'} export "
                             f"belongs: run `mvmic export-onnx {weights}{' --int8' if int8 else ''}`")
        if heads.source_sha256 != sha256:
            raise StaleOnnxError(f"{exported} was exported from other weights (sha256 {heads.source_sha256}) than "
                                 f"{Path(weights).name} (sha256 {sha256}): run `mvmic export-onnx {weights}"
                                 f"{' --int8' if int8 else ''}`")
        return heads

    def __call__(self, planes: Tensor) -> HeadOutputs:
        inputs = np.ascontiguousarray(planes.detach().to("cpu", torch.float32).numpy())
        outputs = self.session.run(list(OUTPUTS), {INPUT: inputs})
        return HeadOutputs(*(torch.from_numpy(output) for output in outputs))

    def masks(self, outputs: HeadOutputs, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """mvmic.model.tasks.outputs' segmentation_masks and organ_maps of ``outputs`` (frames of ``shape``, rows
        and columns), computed by full_resolution_decoding: (N, rows, columns) bool and uint8."""
        lesion, organs = self.decoding.run(None, {"lesion": outputs.lesion.numpy(), "organs": outputs.organs.numpy()})
        return lesion[:, 0, : shape[0], : shape[1]], organs[:, : shape[0], : shape[1]]


@functools.cache
def full_resolution_decoding() -> bytes:
    """An ONNX model of the heads' segmentation outputs at full resolution, as mvmic.model.tasks.outputs'
    segmentation_masks and organ_maps compute them in torch, before cropping (3x faster on the CPU: 7 ms against
    17 ms for a 512 x 512 frame, the same pixels):

        lesion (N, 1, h, w) logits --Resize x2, linear, half-pixel centres (torch's bilinear,
            align_corners=False)--> > 0 --> lesion_mask (N, 1, 2h, 2w) bool
        organs (N, C, h, w) logits --Resize x2 (the same)--> ArgMax over C (the first maximum) --> organ_map
            (N, 2h, 2w) uint8: 0 background, c: ORGAN_CLASSES[c - 1]
    """
    from onnx import TensorProto, helper

    resize = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    nodes = [helper.make_node("Resize", ["lesion", "", "scales"], ["lesion_x2"], **resize),
             helper.make_node("Greater", ["lesion_x2", "zero"], ["lesion_mask"]),
             helper.make_node("Resize", ["organs", "", "scales"], ["organs_x2"], **resize),
             helper.make_node("ArgMax", ["organs_x2"], ["organ_index"], axis=1, keepdims=0, select_last_index=0),
             helper.make_node("Cast", ["organ_index"], ["organ_map"], to=TensorProto.UINT8)]
    graph = helper.make_graph(
        nodes, "full_resolution_decoding",
        [helper.make_tensor_value_info("lesion", TensorProto.FLOAT, ["batch", 1, "rows", "columns"]),
         helper.make_tensor_value_info("organs", TensorProto.FLOAT, ["batch", "classes", "rows", "columns"])],
        [helper.make_tensor_value_info("lesion_mask", TensorProto.BOOL, ["batch", 1, "rows_x2", "columns_x2"]),
         helper.make_tensor_value_info("organ_map", TensorProto.UINT8, ["batch", "rows_x2", "columns_x2"])],
        initializer=[helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, SEGMENTATION_STRIDE, SEGMENTATION_STRIDE]),
                     helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    # IR version 8 and opset 17: what the heads' export uses, which every onnxruntime of the pin reads
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8).SerializeToString()
