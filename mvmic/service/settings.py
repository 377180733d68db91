"""Service configuration, read from ``MVMIC_*`` environment variables."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mvmic.model.cnn_base import MODEL_ID
from mvmic.model.table_codec import DEFAULT_WEIGHTS, cpu_cores
from mvmic.transcode import error_bound


class Settings(BaseSettings):
    """Runtime settings; e.g. ``MVMIC_PORT=9000`` overrides ``port``, ``MVMIC_API_TOKENS='["a", "b"]'``
    (JSON) sets the accepted bearer tokens."""

    model_config = SettingsConfigDict(env_prefix="MVMIC_")

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    weights_dir: Path = Field(DEFAULT_WEIGHTS.parent, description=f"folder with {DEFAULT_WEIGHTS.name} (the lossy "
                              f"codec), {MODEL_ID}-residual.pt (first-design near-lossless/lossless streams), "
                              f"{MODEL_ID}.pt (decodes older lossy streams) and {MODEL_ID}-heads.pt/.onnx/.int8.onnx")
    device: str = Field("auto", description="where the task heads run: auto (CUDA when there is one, else CPU), "
                        "cpu, cuda or cuda:N; entropy coding always runs on the CPU")
    heads_runtime: Literal["auto", "onnx", "onnx-int8", "torch"] = Field(
        "auto", description="how the task heads run: auto (ONNX Runtime, int8 on a CPU, float on CUDA), onnx (float), "
        "onnx-int8, torch (mvmic.model.tasks.analysis.Analyzer.load)")
    workers: int = Field(default_factory=cpu_cores, ge=1, description="model worker threads, i.e. model calls in "
                         "flight at once, sharing one copy of the weights; default: one per CPU core")
    threads: int = Field(0, ge=0, description="torch intra-op threads of each worker; 0: CPU cores // workers, "
                         "at least 1 (mvmic.service.model_workers.torch_threads)")
    max_body_bytes: int = Field(256 * 2**20, gt=0, description="larger request bodies get 413")
    api_tokens: list[str] = Field(default_factory=list, description="bearer tokens; empty: no authentication")
    verify_bound: bool = Field(True, description="near-lossless/lossless: decode to check the bound")
    batch_size: int = Field(8, ge=1, description="analyses run together at most")
    max_batch_delay_ms: float = Field(5.0, ge=0, description="how long the first analysis waits for others")
    results_dir: Path = Field(Path("results"), description="where `mvmic bench rd` and `mvmic bench tasks` wrote their "
                              "results (rd/, tasks/), which /v1/benchmarks and the page's second tab show")
    # The DICOMweb gateway (/dicomweb) in front of a PACS.
    pacs_url: str | None = Field(None, description="the upstream PACS's DICOMweb root, e.g. http://orthanc:8042/dicom-web")
    public_url: str | None = Field(None, description="the gateway's own base URL in the retrieve URLs it answers "
                                   "with (default: from each request's Host header)")
    pacs_timeout_s: float = Field(120.0, gt=0, description="how long the gateway waits for the PACS to connect, "
                                  "or for each read or write, before answering its client 503 with Retry-After")
    pacs_user: str | None = None
    pacs_password: SecretStr | None = None
    storage_mode: Literal["lossless", "near-lossless", "lossy"] = Field(
        "lossless", description="how the gateway stores images; lossless unless an archive policy says otherwise")
    storage_max_error: int | None = Field(None, description="near-lossless: the largest error in stored values")
    storage_quality: int | None = Field(None, ge=1, le=8, description="lossy: quality 1..8 (default: rate control)")
    store_analysis: bool = Field(False, description="also store each image's analysis as DICOM SEG and SR")

    @model_validator(mode="after")
    def _tokens_are_tokens(self) -> "Settings":
        # RFC 6750 b64token: an empty or blank entry would let a request with "Bearer" and nothing after it in
        if any(not token or any(character.isspace() for character in token) for token in self.api_tokens):
            raise ValueError("MVMIC_API_TOKENS: every token must be non-empty and hold no whitespace")
        return self

    @model_validator(mode="after")
    def _storage_bound_is_valid(self) -> "Settings":
        error_bound(self.storage_mode, self.storage_max_error)  # ValueError names what is wrong
        if self.storage_quality is not None and self.storage_mode != "lossy":
            raise ValueError(f"MVMIC_STORAGE_QUALITY applies to storage mode lossy only, not {self.storage_mode} "
                             "(lossless and near-lossless streams have no quality)")
        return self

    @property
    def storage_bound(self) -> int | None:
        return error_bound(self.storage_mode, self.storage_max_error)

    @property
    def pacs_auth(self) -> tuple[str, str] | None:
        if self.pacs_user is None:
            return None
        return self.pacs_user, self.pacs_password.get_secret_value() if self.pacs_password else ""

    @property
    def codec_weights(self) -> Path:
        return self.weights_dir / DEFAULT_WEIGHTS.name

    @property
    def heads_weights(self) -> Path:
        return self.weights_dir / f"{MODEL_ID}-heads.pt"
