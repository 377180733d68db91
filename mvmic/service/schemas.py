"""The JSON bodies the service answers with, as pydantic models: the routes declare them (``response_model``
or their return type), so the OpenAPI document (/openapi.json, /docs) describes each answer.

    GET  /healthz        Health
    GET  /readyz         Readiness (200 ready; 503 loading or failed, with the reason)
    GET  /v1/models      ResidentModelsReport
    POST /v1/compress    CompressedInstance (Accept application/json), its ``analysis`` an AnalysisReport
    POST /v1/analyze     AnalysisReport
    GET  /v1/benchmarks/rd     RateDistortionResults
    GET  /v1/benchmarks/tasks  TaskResults
    POST /dicomweb/...   DicomJsonDataset: the PS3.18 STOW-RS response (declared; the route builds it with pydicom)
    every refusal        Problem

Field names and order are those of the JSON, which the routes produce byte for byte as before these models
existed: a model leaves out no key (no ``exclude_none``) but the optional ones the route leaves unset
(``response_model_exclude_unset``: ``analysis_skipped``, Readiness's ``detail``).
"""

from typing import Any, Literal

from pydantic import BaseModel, Field, RootModel, TypeAdapter

Mode = Literal["lossy", "near-lossless", "lossless"]


class Problem(BaseModel):
    """The body of every refusal."""

    detail: str | list[dict[str, Any]] = Field(description="the reason; FastAPI's own parameter checks (422) list "
                                               "each invalid parameter instead")


class Health(BaseModel):
    status: Literal["ok"]
    version: str = Field(description="the installed mvmic package's version")


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed"]
    detail: str | None = Field(None, description="why the models failed to load (null while loading); absent "
                                                 "when ready")


# -- GET /v1/models -------------------------------------------------------------------------------------------
class WeightsFile(BaseModel):
    file: str = Field(description="the weights file's name")
    sha256: str


class HeadsWeights(WeightsFile):
    runtime: Literal["torch", "onnx", "onnx-int8"] = Field(description="what runs the task heads")
    model_sha256: str | None = Field(description="sha256 of the ONNX model that runs (null in torch)")


class ResidentWeights(BaseModel):
    codec: WeightsFile
    residual: WeightsFile | None = Field(description="the residual layers' weights (near-lossless and lossless "
                                                     "modes); null without them")
    heads: HeadsWeights


class OperatingPoints(BaseModel):
    quality: dict[str, int] = Field(description="quality level (1..8) -> the quality code in the bitstream")
    modes: list[Mode]
    max_error: list[int] | None = Field(description="[least, most] max_error of near-lossless, in stored units; "
                                                    "null without residual weights", min_length=2, max_length=2)


class ResidentModelsReport(BaseModel):
    """The resident weights (sha256), operating points, tasks and device."""

    model_id: str
    device: str = Field(description="the torch device the codec runs on: cpu, cuda:N")
    weights: ResidentWeights
    operating_points: OperatingPoints
    tasks: list[str]
    organ_classes: list[str] = Field(description="the organs the heads segment (learned on abdominal CT and MR)")


# -- analysis of a bitstream ----------------------------------------------------------------------------------
class RunLengthMask(BaseModel):
    """A binary mask in COCO's compressed run-length encoding (pycocotools.mask.decode reads it)."""

    size: list[int] = Field(description="[rows, columns]", min_length=2, max_length=2)
    counts: str


class Detection(BaseModel):
    box: list[float] = Field(description="x0, y0, x1, y1 in pixels of the original image", min_length=4,
                             max_length=4)
    score: float = Field(ge=0, le=1)
    label: str = Field(description="lesion, or one of the organ classes")


class OrganSegmentation(BaseModel):
    label: str = Field(description="one of the organ classes")
    segmentation: RunLengthMask
    pixels: int = Field(ge=1)


class FrameFindings(BaseModel):
    frame: int = Field(ge=0, description="frame number, from 0")
    boxes: list[Detection]
    segmentation: RunLengthMask = Field(description="the lesion mask")
    segmented_pixels: int = Field(ge=0, description="pixels of the lesion mask")
    organs: list[OrganSegmentation] = Field(description="the organs found, one mask each")


class AnalysisReport(BaseModel):
    """What the analysis of a bitstream found, with the networks that found it (mvmic.transcode.analysis_document)."""

    model_id: str = Field(description="the codec model that made the bitstream")
    heads_sha256: str | None = Field(description="sha256 of the task heads' weights file")
    heads_runtime: Literal["torch", "onnx", "onnx-int8"]
    heads_model_sha256: str | None = Field(description="sha256 of the ONNX model that ran (null in torch)")
    rows: int
    columns: int
    quality_code: int
    frames: list[FrameFindings]


# -- POST /v1/compress ----------------------------------------------------------------------------------------
class CompressedInstance(BaseModel):
    """A DICOM instance compressed to a .mvm bitstream, and the analysis of the same latent."""

    model_id: str
    bitstream: str = Field(description="the .mvm bitstream, base64")
    bytes: int = Field(description="the bitstream's size")
    bits_per_pixel: float = Field(description="of the whole bitstream, header layer included")
    compression_ratio: float = Field(description="uncompressed Pixel Data bytes / bitstream bytes")
    quality_code: int
    mode: Mode
    max_error: int | None = Field(description="the error bound in stored units: null lossy, 0 lossless")
    analysis: AnalysisReport | None = Field(description="null when the image is too small to analyse")
    analysis_skipped: str | None = Field(None, description="why there is no analysis; present only then")


# -- GET /v1/benchmarks: the last benchmark runs (their JSON files, rows as the benchmarks write them) ------------
class RateDistortionResults(BaseModel):
    """The last `mvmic bench rd` (mvmic.bench.rd's rd.json without its per-frame measurements); PSNR in dB on the
    native range, rates in bits per pixel, null where the file held NaN or infinity (a lossless point's PSNR)."""

    split: str = Field(description="the corpus split measured: train, val or test")
    frames: int
    wall_seconds: float
    summary: list[dict[str, Any]] = Field(description="per codec and point: codec, point, lossless, error_bound, "
                                          "frames, mean_bpp, mean_psnr, exact_frames, max_abs_error, "
                                          "mean_encode_ms, mean_decode_ms")
    bd_vs_reference: list[dict[str, Any]] = Field(description="per codec against JPEG 2000: codec, reference, frames, "
                                                  "median_bd_rate_percent, median_bd_psnr_db, by_modality")
    exact_vs_reference: list[dict[str, Any]] = Field(description="MVMICNet's lossless and near-lossless sizes against "
                                                     "the classical codecs', frame by frame")


class TaskResults(BaseModel):
    """The last `mvmic bench tasks` (mvmic.bench.tasks' tasks.json): the heads' scores against truth per quality,
    null where the file held NaN (a set without organs)."""

    split: str
    qualities: list[int] = Field(description="the quality levels measured")
    sets: dict[str, dict[str, Any]] = Field(description="by set (synthetic, real, organs): frames, key_score, and "
                                            "rows per quality with bpp and Dice, IoU, AP50, mAP by stage")
    every: int | None = Field(description="every how many synthetic frames were measured")
    organ_labels: str = Field(description="where the organ truth comes from")
    organ_classes: list[str]
    weights: dict[str, Any]
    runtimes: dict[str, Any]
    timing: dict[str, Any] = Field(description="analysing the bitstream against decoding and analysing the pixels")


# -- POST /dicomweb/studies: STOW-RS --------------------------------------------------------------------------
class DicomJsonAttribute(BaseModel):
    """One attribute of a dataset in the DICOM JSON model (PS3.18 F.2)."""

    vr: str = Field(description="the value representation: UI, US, SQ, ...")
    Value: list[Any] | None = Field(None, description="absent when empty; a sequence's items are DicomJsonDatasets")


class DicomJsonDataset(RootModel[dict[str, DicomJsonAttribute]]):
    """A dataset in the DICOM JSON model: attributes by tag (8 hex digits). As the STOW-RS response (PS3.18
    10.5.3): RetrieveURL (00081190), ReferencedSOPSequence (00081199) and FailedSOPSequence (00081198)."""


def inline_schema(kind: Any) -> dict[str, Any]:
    """The JSON schema of ``kind`` (a model, or a type such as ``list[Model]``) with the models it names written
    in place, for an OpenAPI response FastAPI does not declare models in (another media type than the route's).
    ``kind`` must not be recursive."""
    schema = TypeAdapter(kind).json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(value) for value in node] if isinstance(node, list) else node

    return resolve(schema)
