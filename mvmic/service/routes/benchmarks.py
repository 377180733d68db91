"""GET /v1/benchmarks/...: the last `mvmic bench rd` and `mvmic bench tasks` results this server holds, for the
page's second tab (mvmic.service.routes.ui) and any other client.

    MVMIC_RESULTS_DIR/rd/rd.json    --> GET /v1/benchmarks/rd        split, frames, per-point summary, BD-rates
                                                                    (rd.json without its per-frame measurements)
    MVMIC_RESULTS_DIR/rd/rd.png     --> GET /v1/benchmarks/rd.png    the R-D plot the benchmark drew
    MVMIC_RESULTS_DIR/tasks/tasks.json --> GET /v1/benchmarks/tasks  per-quality Dice, IoU, AP50 of the task heads
    MVMIC_RESULTS_DIR/tasks/examples.png --> GET /v1/benchmarks/tasks.png  frames with truth and the heads' masks

The benchmarks write NaN where a figure has no value (a set without organs); JSON has no NaN, so it is null here.

Errors: no such results on this server 404 (with the command that makes them), a results file that cannot be read
500, missing or wrong token 401.
"""

import json
import math
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import FileResponse

from mvmic.service.auth import require_token
from mvmic.service.body import BINARY
from mvmic.service.dependencies import AppSettings
from mvmic.service.errors import error_responses
from mvmic.service.schemas import Problem, RateDistortionResults, TaskResults

Results = TypeVar("Results", RateDistortionResults, TaskResults)
MISSING = {404: {"model": Problem, "description": "this server holds no results of that benchmark (MVMIC_RESULTS_DIR)"}}
router = APIRouter(prefix="/v1/benchmarks", tags=["benchmarks"], dependencies=[Depends(require_token)],
                   responses={**error_responses(401), **MISSING})
PNG = {200: {"content": {"image/png": BINARY}}}


@router.get("/rd")
def rate_distortion(settings: AppSettings) -> RateDistortionResults:
    """The last `mvmic bench rd`: split, frames, the summary per codec and point (mean bits per pixel and PSNR on
    the native range), median BD-rates against JPEG 2000 (by modality too)."""
    return _read(_result(settings.results_dir, "rd", "rd.json"), RateDistortionResults)  # measurements left out


@router.get("/rd.png", response_class=FileResponse, responses=PNG)
def rate_distortion_plot(settings: AppSettings) -> FileResponse:
    """The R-D plot of the last `mvmic bench rd`."""
    return FileResponse(_result(settings.results_dir, "rd", "rd.png"), media_type="image/png")


@router.get("/tasks")
def tasks(settings: AppSettings) -> TaskResults:
    """The last `mvmic bench tasks`: per quality, the heads' lesion and organ Dice, IoU, AP50 and mAP against truth."""
    return _read(_result(settings.results_dir, "tasks", "tasks.json"), TaskResults)


@router.get("/tasks.png", response_class=FileResponse, responses=PNG)
def tasks_figure(settings: AppSettings) -> FileResponse:
    """Frames of the last `mvmic bench tasks`: image, truth, and the heads' masks and boxes."""
    return FileResponse(_result(settings.results_dir, "tasks", "examples.png"), media_type="image/png")


def _result(results_dir: Path, benchmark: str, name: str) -> Path:
    path = results_dir / benchmark / name
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"this server holds no results of `mvmic bench {benchmark}` "
                            f"({benchmark}/{name} in MVMIC_RESULTS_DIR): run `mvmic bench {benchmark}` first")
    return path


def _read(path: Path, model: type[Results]) -> Results:
    try:
        return model.model_validate(_finite(json.loads(path.read_text())))
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR,
                            f"the benchmark's {path.name} cannot be read: {type(exc).__name__}") from None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return [_finite(item) for item in value] if isinstance(value, list) else value
