"""Service configuration, read from ``MVMIC_*`` environment variables."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.codec import DEFAULT_WEIGHTS, MODEL_ID


class Settings(BaseSettings):
    """Runtime settings; e.g. ``MVMIC_PORT=9000`` overrides ``port``, ``MVMIC_API_TOKENS='["a", "b"]'``
    (JSON) sets the accepted bearer tokens."""

    model_config = SettingsConfigDict(env_prefix="MVMIC_")

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    weights_dir: Path = Field(DEFAULT_WEIGHTS.parent, description=f"folder with {MODEL_ID}.pt, its -residual.pt "
                              "(near-lossless/lossless) and -heads.pt")
    device: str = Field("auto", description="where the task heads run: auto (CUDA when there is one, else CPU), "
                        "cpu, cuda or cuda:N; entropy coding always runs on the CPU")
    threads: int = Field(0, ge=0, description="torch threads for model work; 0 keeps torch's default")
    max_body_bytes: int = Field(256 * 2**20, gt=0, description="larger request bodies get 413")
    api_tokens: list[str] = Field(default_factory=list, description="bearer tokens; empty: no authentication")
    verify_bound: bool = Field(True, description="near-lossless/lossless: decode to check the bound")
    batch_size: int = Field(8, ge=1, description="analyses run together at most")
    max_batch_delay_ms: float = Field(5.0, ge=0, description="how long the first analysis waits for others")

    @property
    def codec_weights(self) -> Path:
        return self.weights_dir / f"{MODEL_ID}.pt"

    @property
    def heads_weights(self) -> Path:
        return self.weights_dir / f"{MODEL_ID}-heads.pt"
