"""One typed configuration for every persona job and command.

Sources, later ones winning:
  1. the embedded defaults below (no file needed),
  2. a YAML file: ``--config PATH`` or ``PERSONA_CONFIG`` (see ``conf/local.yaml``),
  3. environment overrides ``PERSONA__SECTION__KEY=value`` (e.g.
     ``PERSONA__SPARK__MASTER=spark://host:7077``), values parsed as YAML scalars,
  4. ``PERSONA_HOME`` / ``--home`` for the state directory.

State lives under ``home``: tables at ``<home>/warehouse/<layer>/<table>``, models at
``<home>/models/<kind>/<version>/``. Table paths may also be object-store URIs when
``warehouse`` is set explicitly (``s3a://bucket/persona/warehouse``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_HOME = ".persona"
ENV_PREFIX = "PERSONA__"


class ConfigError(ValueError):
    """A configuration problem a user can fix; the CLI prints it as one line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SparkSettings(_Section):
    master: str = "local[*]"
    app_name: str = "persona"
    driver_memory: str = "6g"
    executor_memory: str = "4g"
    # 2 cores here: a few partitions per core keeps shuffles cheap on small data.
    shuffle_partitions: int = 8
    # Local directory holding the Delta jars resolved at install time. Empty: the
    # project's cache (PERSONA_JARS_DIR, then <repo>/.cache/jars, then ~/.cache/persona/jars).
    jars_dir: str = ""
    arrow_batch_size: int = 10_000
    ui_enabled: bool = False
    log_level: str = "WARN"
    # Any other Spark setting, passed through verbatim (spark.* keys).
    conf: dict[str, str] = Field(default_factory=dict)


class IngestSettings(_Section):
    # Events later than now + this many days are rejected as far-future timestamps.
    max_future_days: int = 1
    # Events earlier than this are rejected (clock at zero, ms-vs-s confusion).
    min_event_date: str = "2000-01-01"
    # Optional pseudonymisation: name of the env var or path of a file holding the key.
    pseudonymise: bool = False
    hmac_key_env: str = "PERSONA_HMAC_KEY"
    hmac_key_file: str = ""


class BehaviourSettings(_Section):
    session_gap_minutes: int = 30
    sequence_length: int = 50
    # Weighted interest for top categories: purchase > cart > fav > view.
    category_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "purchase": 8.0,
            "cart": 4.0,
            "fav": 2.0,
            "click": 1.0,
            "view": 1.0,
            "search": 0.0,
        }
    )
    night_start_hour: int = 0
    night_end_hour: int = 6
    # A backfill computes this many as-of days per pass (one read of their 30-day
    # windows each); the progress bar advances per pass. Larger: fewer re-reads.
    backfill_chunk_days: int = Field(default=30, ge=1)
    # Data-quality gate: flag a day whose volume or null rate deviates from the
    # trailing week by more than these factors; fail the build if fail_on_quality.
    max_volume_ratio: float = 3.0
    min_volume_ratio: float = 0.33
    max_null_rate_increase: float = 0.2
    fail_on_quality: bool = False


# Encoder keys renamed, old -> new: they were never hash buckets but vocabulary caps.
RENAMED_ENCODER_KEYS = {"item_buckets": "item_vocab_size", "category_buckets": "category_vocab_size"}


class EncoderSettings(_Section):
    """The encoder's model, training and Spark-inference knobs; also the defaults of
    ``encoders.model.EncoderParams``."""

    embedding_dim: int = 32
    # Vocabularies: the most frequent ids up to these sizes (2 slots: padding, unknown).
    item_vocab_size: int = 20_000
    category_vocab_size: int = 2_000
    hidden_dim: int = 64
    # Training: small batches and a high rate converge in a few epochs on the
    # tens-of-thousands-of-users logs this runs on; early stopping ends it.
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 5e-3
    validation_share: float = 0.2
    patience: int = 2
    seed: int = 42
    # TF intra-op threads per Spark task: cores per task (spark.task.cpus), usually 1.
    threads_per_task: int = 1
    # Items seen fewer times than this in training share the out-of-vocabulary slot.
    item_min_count: int = 5
    dropout: float = 0.1
    # Weight of the event k steps before the last in the "recent mix" feature: decay**k.
    recent_decay: float = 0.8
    # Learnt repeat score from the user's own category counts in the training head.
    repeat_scores: bool = True
    # Rows per Arrow batch handed to the embed UDF (0: the session's setting), and rows
    # per TensorFlow call inside it.
    arrow_batch_size: int = 10_000
    predict_chunk: int = 4096
    # How batches reach the model in Spark: "arrow" (mapInArrow: list columns reshape to
    # (N, L) arrays without a pandas object per row; faster in bench.encoder) or "pandas"
    # (mapInPandas). Same iterator form, same predict function.
    udf: Literal["pandas", "arrow"] = "arrow"

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """Old key names keep working, with a one-line warning saying the new name.

        FutureWarning, not DeprecationWarning: Python shows the latter only for code run
        as __main__, and the one who must act here is whoever edits the YAML file."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in RENAMED_ENCODER_KEYS.items():
            if old not in data:
                continue
            if new in data:
                raise ValueError(f"both encoder.{old} (deprecated) and encoder.{new} are set: keep {new} only")
            warnings.warn(f"setting encoder.{old} is deprecated, use encoder.{new} (same meaning: a vocabulary cap)",
                          FutureWarning, stacklevel=3)  # 3: past pydantic, at whoever built the settings
            data[new] = data.pop(old)
        return data


class FusionSettings(_Section):
    variance_threshold: float = 0.90
    max_k: int = 16
    min_segments: int = 2
    max_segments: int = 8
    seed: int = 7
    # BisectingKMeans iterations per split (Spark runs all of them: one job each).
    max_iter: int = 20
    # BisectingKMeans fits per segment count (seeds seed, seed+1, ...); the one with the
    # lowest within-segment cost is kept (why: docs/fusion.md).
    restarts: int = 4
    # Total variance of the embedding block relative to the behaviour block (why:
    # docs/fusion.md).
    embedding_weight: float = 0.25
    # "Never purchased" is not missing at random: it means "long ago", not "typical".
    never_days: int = 365
    # Silhouette-based choice of the segment count runs on at most this many rows.
    selection_sample_rows: int = 50_000
    # Report: rows sampled for distributions and drift; PSI flag threshold and bins.
    report_sample_rows: int = 100_000
    psi_threshold: float = 0.2
    psi_bins: int = 10


class FeastSettings(_Section):
    project: str = "persona"
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection: str = "127.0.0.1:6379"
    # Empty: a file registry under <home>/feast/registry.db. Else a SQLAlchemy URL
    # (postgresql+psycopg://...) for a SQL registry shared by a team.
    registry_url: str = ""
    ttl_days: int = 30
    server_port: int = 6566
    server_host: str = "127.0.0.1"
    # `persona serve`: "persona" (persona/serving/http.py: a lean threaded server speaking
    # Feast's /get-online-features JSON through the SDK) or "feast" (Feast's FastAPI server).
    server: Literal["persona", "feast"] = "persona"
    # Materialization: "persona" (Spark executors encode Feast's Redis bytes from
    # Arrow batches and pipeline them), "spark" (Feast's spark.engine) or "local".
    batch_engine: Literal["persona", "spark", "local"] = "persona"
    write_partitions: int = 0
    pipeline_rows: int = 500
    # Who encodes and writes to Redis: the driver (local masters, "auto"), or the executors.
    write_from: Literal["auto", "driver", "executors"] = "auto"
    # Who reads the latest row per user when writing from the driver: delta-rs ("delta",
    # no Spark job), Spark running Feast's query ("spark"), or "auto" (delta for local
    # Delta tables it can read as plain Parquet, else Spark).
    materialize_read: Literal["auto", "spark", "delta"] = "auto"
    # How long a serving process trusts its cached registry before re-reading it.
    registry_cache_ttl_s: int = 60
    # Redis reads through persona.serving.redis_store (same data and responses as Feast's
    # redis store, less Python per value); false: Feast's own RedisOnlineStore.
    fast_reads: bool = True


class SqlSettings(_Section):
    thrift_port: int = 10000
    thrift_host: str = "127.0.0.1"


class MaintenanceSettings(_Section):
    # `persona maintain` VACUUMs files no table version younger than this still needs
    # (Delta's own default, delta.deletedFileRetentionDuration, is 168 h = 7 days).
    # Time travel reaches back this far; below 168 h concurrent readers may fail.
    vacuum_retention_hours: int = Field(default=168, ge=0)
    # Behaviour/sequence/embedding/profile snapshots older than this many days before
    # each table's newest as_of_date are deleted; 0 keeps every snapshot.
    snapshot_retention_days: int = Field(default=0, ge=0)
    # OPTIMIZE only tables with at least this many data files (fewer: nothing to compact).
    optimize_min_files: int = Field(default=2, ge=1)


class Settings(_Section):
    home: Path = Path(DEFAULT_HOME)
    # Empty: <home>/warehouse. Set to an object-store URI to keep tables remote.
    warehouse: str = ""
    spark: SparkSettings = Field(default_factory=SparkSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    behaviour: BehaviourSettings = Field(default_factory=BehaviourSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    fusion: FusionSettings = Field(default_factory=FusionSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    sql: SqlSettings = Field(default_factory=SqlSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)

    @field_validator("home", mode="before")
    @classmethod
    def _expand_home(cls, v: Any) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(str(v))))

    # ---- paths -------------------------------------------------------------
    @property
    def warehouse_root(self) -> str:
        if self.warehouse:
            return self.warehouse.rstrip("/")
        return str(self.home.resolve() / "warehouse")

    def table_path(self, layer: str, table: str) -> str:
        """Location of a Delta table, e.g. ``table_path('bronze', 'events')``."""
        return f"{self.warehouse_root}/{layer}/{table}"

    def table(self, qualified: str) -> str:
        """``'silver.user_behaviour'`` -> its path."""
        layer, _, name = qualified.partition(".")
        if not name:
            raise ConfigError(f"table name must be layer.table, got {qualified!r}")
        return self.table_path(layer, name)

    def models_root(self, kind: str) -> Path:
        return self.home.resolve() / "models" / kind

    def model_dir(self, kind: str, version: str) -> Path:
        return self.models_root(kind) / version

    @property
    def feast_dir(self) -> Path:
        return self.home.resolve() / "feast"


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(environ: dict[str, str]) -> dict:
    tree: dict = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return tree


def load_settings(
    config_file: str | os.PathLike | None = None,
    home: str | os.PathLike | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, an optional YAML file and the environment."""
    env = dict(os.environ if environ is None else environ)
    data: dict = {}
    path = config_file or env.get("PERSONA_CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}".splitlines()[0]) from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    data = _deep_merge(data, _env_overrides(env))
    if home is not None:
        data["home"] = str(home)
    elif env.get("PERSONA_HOME"):
        data["home"] = env["PERSONA_HOME"]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from exc
