"""Service configuration, read from ``MVMIC_*`` environment variables."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime settings; e.g. ``MVMIC_PORT=9000`` overrides ``port``."""

    model_config = SettingsConfigDict(env_prefix="MVMIC_")

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
