"""The one typed settings object, and the only code that reads the environment.

Settings are layered, later layers winning:

1. ``config/labelloop.yaml`` (documented defaults, shipped with the project);
2. an optional user config file (``--config FILE`` or ``LABELLOOP_CONFIG``);
3. ``LABELLOOP_*`` environment variables, nested with ``__``
   (``LABELLOOP_LABEL_STUDIO__URL``, ``LABELLOOP_MODEL__BACKBONE``).

A bad value fails at start with :class:`SettingsError`, whose message names the setting and what is
allowed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "LABELLOOP_"
ENV_NESTED = "__"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "labelloop.yaml"


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range; the message says which and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelStudioSettings(_Section):
    url: str = "http://127.0.0.1:8080"
    public_url: str | None = None
    token: SecretStr | None = None
    timeout_s: float = Field(30.0, gt=0)
    page_size: int = Field(1000, ge=1, le=10000)

    @field_validator("url", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @property
    def browser_url(self) -> str:
        """The Label Studio URL a person's browser uses (links on the dashboard)."""
        return self.public_url or self.url


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=1, le=65535)
    public_url: str = "http://127.0.0.1:9090"
    title: str = Field("labelloop", min_length=1, max_length=100)
    basic_auth_user: str | None = None
    basic_auth_password: SecretStr | None = None
    admin_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    metrics_token: SecretStr | None = None
    allow_anonymous: bool = False
    max_projects: int = Field(100, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    threads: int = Field(16, ge=1, le=256)
    connection_limit: int = Field(500, ge=1, le=10_000)
    read_timeout_s: float = Field(30.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        if self.basic_auth_user and self.basic_auth_password:
            return self.basic_auth_user, self.basic_auth_password.get_secret_value()
        return None


class StoreSettings(_Section):
    data_dir: Path = Path("data")
    database_url: str | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL; SQLite under ``data_dir`` unless one is set."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'labelloop.db').resolve()}"


class ImageSettings(_Section):
    allowed_hosts: tuple[str, ...] = ()
    local_root: Path | None = None
    max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=64)
    timeout_s: float = Field(20.0, gt=0)
    fetch_workers: int = Field(8, ge=1, le=64)
    retries: int = Field(3, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0.0, le=30.0)
    deadline_s: float = Field(60.0, gt=0)


class ModelSettings(_Section):
    backbone: Literal["efficientnet_lite0", "timm", "small_cnn"] = "efficientnet_lite0"
    timm_name: str = "resnet18"
    image_size: int = Field(224, ge=32, le=1024)
    batch_size: int = Field(16, ge=1, le=4096)
    num_threads: int = Field(0, ge=0)
    channels_last: bool = True
    runtime: Literal["auto", "openvino", "onnxruntime", "torch"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    head: Literal["linear", "mlp"] = "linear"
    hidden_dim: int = Field(256, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    max_epochs: int = Field(200, ge=1)
    learning_rate: float = Field(1e-2, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    early_stopping_min_labels: int = Field(1000, ge=2)
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    train_batch_size: int = Field(2048, ge=1)
    train_num_threads: int = Field(1, ge=0)
    blas_threads: int = Field(1, ge=0)
    patience: int = Field(10, ge=1)
    class_weighting: bool = True
    committee_size: int = Field(5, ge=1, le=50)
    committee_mode: Literal["bootstrap", "mc_dropout"] = "bootstrap"
    cv_folds: int = Field(5, ge=2, le=20)
    calibrate: bool = True
    multilabel_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    fine_tune: bool = False
    fine_tune_steps: int = Field(300, ge=1)
    seed: int = 0
    keep_versions: int = Field(3, ge=1)


#: Coverage keeps its weight up to 100 labels, then fades (strategies.combine.faded_weights).
DEFAULT_FADE_AFTER: Mapping[str, int | None] = MappingProxyType({"coverage": 100})


class StrategySettings(_Section):
    weights: dict[str, float] = Field(default_factory=lambda: {"margin": 1.0, "coverage": 0.25})
    batch_size: int = Field(100, ge=1)
    review_share: float = Field(0.1, ge=0.0, le=1.0)
    diversity: Literal["round_robin", "ranked_batch", "none"] = "round_robin"
    n_clusters: int | None = Field(None, ge=2)
    cold_start_labels: int = Field(20, ge=0)
    fade_after: dict[str, int | None] = Field(default_factory=lambda: dict(DEFAULT_FADE_AFTER))
    push_clusters: bool = False
    push_top_k: int | None = Field(2000, ge=1)
    review_signal: Literal[
        "suspicion",
        "confident_learning",
        "self_confidence",
        "normalized_margin",
        "annotator_model_disagreement",
    ] = "suspicion"
    review_max_false_share: float = Field(0.2, gt=0.0, le=1.0)
    review_min_support: int = Field(10, ge=1)
    review_min_recall: float = Field(0.5, ge=0.0, le=1.0)
    review_overwhelming: float = Field(0.99, gt=0.5, le=1.0)
    review_max_flags: int = Field(50, ge=0, le=1000)
    score_threads: int | None = Field(None, ge=1)
    near_duplicates_last: bool = True
    selection: Literal["adaptive", "fixed"] = "adaptive"
    audit_share: float = Field(0.1, ge=0.0, le=0.5)

    @field_validator("weights")
    @classmethod
    def _known_signals(cls, value: dict[str, float]) -> dict[str, float]:
        from strategies import REGISTRY

        unknown = sorted(set(value) - set(REGISTRY))
        if unknown:
            raise ValueError(f"unknown signal(s) {unknown}; allowed: {sorted(REGISTRY)}")
        negative = sorted(k for k, w in value.items() if w < 0)
        if negative:
            raise ValueError(f"weights must be >= 0, negative for {negative}")
        return value

    @field_validator("fade_after")
    @classmethod
    def _labeling_signals(cls, value: dict[str, int | None]) -> dict[str, int | None]:
        from strategies import REGISTRY

        unknown = sorted(set(value) - set(REGISTRY))
        if unknown:
            raise ValueError(f"unknown signal(s) {unknown}; allowed: {sorted(REGISTRY)}")
        review = sorted(k for k in value if REGISTRY[k].kind != "label")
        if review:
            raise ValueError(f"only labeling signals fade, not the review signal(s) {review}")
        too_small = sorted(k for k, labels in value.items() if labels is not None and labels < 1)
        if too_small:
            raise ValueError(f"must be >= 1 label, got less for {too_small}")
        return value


class LoopSettings(_Section):
    """When cycles run. Per-project values come from ``LoopScheduler(settings_for=...)``."""

    retrain_after: int = Field(default=20, ge=1)
    debounce_s: float = Field(default=30.0, ge=0)
    max_delay_s: float = Field(default=300.0, ge=0)
    schedule_interval_minutes: int | None = Field(default=60, ge=1)
    schedule_cron: str | None = None
    misfire_grace_s: int = Field(default=600, ge=1)
    full_sync_every_s: float = Field(default=3600.0, ge=0)
    run_scheduler: bool = True
    poll_s: float = Field(default=5.0, gt=0)
    lease_s: float = Field(default=120.0, ge=1)
    executor: Literal["threads", "rq"] = "threads"
    redis_url: str | None = None
    rq_queue: str = Field(default="labelloop-cycles", min_length=1)
    rq_job_timeout_s: int = Field(default=7200, ge=60)

    @field_validator("schedule_cron")
    @classmethod
    def _crontab(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"not a crontab expression like '0 */6 * * *': {exc}") from None
        return value.strip()

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value.strip()

    @model_validator(mode="after")
    def _rq_needs_redis(self) -> LoopSettings:
        if self.executor == "rq" and self.redis_url is None:
            raise ValueError("executor 'rq' needs loop.redis_url (redis://host:6379/0)")
        return self

    @model_validator(mode="after")
    def _delay_covers_debounce(self) -> LoopSettings:
        if self.max_delay_s < self.debounce_s:
            raise ValueError(
                f"max_delay_s ({self.max_delay_s}) must be >= debounce_s ({self.debounce_s})"
            )
        return self


class ImageQualitySettings(_Section):
    """Thresholds of the image-quality issues (see backend/diagnosis/quality.py)."""

    dark_below: float = Field(0.15, ge=0.0, le=1.0)
    bright_above: float = Field(0.9, ge=0.0, le=1.0)
    blurry_below: float = Field(0.05, ge=0.0)
    low_information_below: float = Field(3.0, ge=0.0, le=8.0)
    grayscale_below: float = Field(3.0, ge=0.0)
    colour_project_above: float = Field(10.0, ge=0.0)
    odd_size_factor: float = Field(2.0, gt=1.0)
    odd_aspect_factor: float = Field(1.5, gt=1.0)


class DiagnosisSettings(_Section):
    """The dashboard's diagnosis (see backend/diagnosis/)."""

    drift_auc_warning: float = Field(0.75, ge=0.5, le=1.0)
    map_points: int = Field(5000, ge=100, le=50_000)
    map_projection: Literal["umap", "pca"] = "umap"
    listed: int = Field(50, ge=1, le=1000)
    near_duplicate_similarity: float = Field(0.95, gt=0.5, le=1.0)
    split_field: str | None = "split"
    slice_fields: list[str] | None = None
    image_quality: ImageQualitySettings = ImageQualitySettings()


class Settings(_Section):
    label_studio: LabelStudioSettings = LabelStudioSettings()
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    images: ImageSettings = ImageSettings()
    model: ModelSettings = ModelSettings()
    strategy: StrategySettings = StrategySettings()
    loop: LoopSettings = LoopSettings()
    diagnosis: DiagnosisSettings = DiagnosisSettings()


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of sections")
    return data


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        # YAML scalars, so LABELLOOP_MODEL__FINE_TUNE=true and lists like [a, b] work.
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            node[path[-1]] = raw
    return tree


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            lines.append(f"setting '{where}' is unknown")
            continue
        got = err.get("input")
        shown = "***" if "token" in where or "password" in where else repr(got)
        lines.append(f"setting '{where}': {err['msg']} (got {shown})")
    return f"invalid settings ({source}):\n  " + "\n  ".join(lines)


def load_settings(
    config_file: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    defaults_file: Path | None = DEFAULT_CONFIG,
) -> Settings:
    """Build the settings from the defaults file, an optional user file and the environment.

    Args:
        config_file: a user YAML file; falls back to ``LABELLOOP_CONFIG``.
        environ: the environment to read (``os.environ`` when None); tests pass a dict.
        defaults_file: the documented defaults; None uses the built-in defaults only.

    Raises:
        SettingsError: a file is unreadable or a value is not allowed.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    sources = []
    if defaults_file is not None and defaults_file.exists():
        data = _read_yaml(defaults_file)
        sources.append(str(defaults_file))
    user = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    if user:
        data = _deep_merge(data, _read_yaml(Path(user)))
        sources.append(str(user))
    env_tree = _from_env(env)
    if env_tree:
        data = _deep_merge(data, env_tree)
        sources.append("environment")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_format_errors(exc, " + ".join(sources) or "defaults")) from None


def with_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """A copy of ``settings`` with nested overrides applied and validated again."""
    data = _deep_merge(settings.model_dump(mode="python"), overrides)
    for section in ("label_studio", "server"):
        for key in ("token", "basic_auth_password", "metrics_token"):
            value = data.get(section, {}).get(key)
            if isinstance(value, SecretStr):
                data[section][key] = value.get_secret_value()
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_format_errors(exc, "overrides")) from None
