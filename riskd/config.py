"""riskd.yaml -> frozen Settings; the API token from systemd credentials or the environment.

Lookup: -c FILE, else $RISKD_CONFIG, else ./riskd.yaml, else /etc/riskd/riskd.yaml.
Relative paths are relative to the config file's directory. The token never lives in YAML.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import time, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from riskd import yamldoc
from riskd.errors import ConfigError, Problem
from riskd.rules import Duration, TimeOfDay, Zone, _Spec

SYSTEM_CONFIG = Path("/etc/riskd/riskd.yaml")
SIM = "sim"


class RateLimitSpec(_Spec):
    per_second: float = Field(3.0, gt=0)
    burst: int = Field(20, ge=1)


class CrossTradeSpec(_Spec):
    base_url: str = "https://app.crosstrade.io/v1/api"
    token_env: str = "CROSSTRADE_TOKEN"
    timeout: Duration = timedelta(seconds=5)
    rate_limit: RateLimitSpec = RateLimitSpec()
    scenario: str | None = Field(None, description="with base_url: sim, the simulator scenario file (default: the demo)")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != SIM and not value.startswith(("http://", "https://")):
            raise ValueError(f"invalid base_url {value!r}; write an http(s) URL or \"sim\" for the embedded simulator")
        return value.rstrip("/")


class ConfigSpec(_Spec):
    crosstrade: CrossTradeSpec = CrossTradeSpec()
    poll_interval: Duration = timedelta(seconds=1)
    timezone: Zone = None
    session_start: TimeOfDay = time(18, 0)
    rules: str | list[str] = "rules/"
    audit_log: str = "audit.jsonl"
    audit_fsync: Literal["actions", "all", "none"] = Field("actions", description="fsync after: decisions, API calls and lifecycle lines (actions), every line (all), none")
    state_dir: str = "state/"
    misfire_grace: Duration = timedelta(seconds=60)
    stale_after: Duration = timedelta(seconds=10)
    dry_run: bool = False

    @field_validator("poll_interval")
    @classmethod
    def _poll(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=100):
            raise ValueError("poll_interval must be at least 100ms")
        return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything riskd.yaml says, resolved: absolute paths, parsed durations, a tzinfo."""

    path: Path | None
    base_url: str
    token_env: str
    timeout: float
    rate_per_second: float
    rate_burst: int
    poll_interval: float
    zone: Any
    session_start: time
    rules: tuple[Path, ...]
    audit_log: str
    state_dir: Path
    misfire_grace: timedelta
    stale_after: timedelta
    dry_run: bool
    scenario: Path | None = None
    audit_fsync: str = "actions"

    @property
    def simulated(self) -> bool:
        return self.base_url == SIM


def find(explicit: str | None) -> Path | None:
    """Given the -c argument (or None), return the config file to use, or None if there is none."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("RISKD_CONFIG")
    if env:
        return Path(env)
    for candidate in (Path("riskd.yaml"), SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load(path: Path) -> Settings:
    """Given a riskd.yaml path, return Settings; raise ConfigError with every located problem."""
    if not path.is_file():
        raise ConfigError([Problem(str(path), 1, 1, "", "config file not found; pass -c FILE or set RISKD_CONFIG")])
    doc = yamldoc.read(path)
    if doc.data is not None and not isinstance(doc.data, dict) and not doc.problems:
        doc.problems.append(doc.problem_at(doc.node, "", "the config must be a mapping of keys (see SPEC §2)"))
    spec = yamldoc.validate(doc, ConfigSpec)
    if spec is None:
        raise ConfigError(doc.problems)
    return from_spec(spec, path.resolve())


def from_spec(spec: ConfigSpec, path: Path | None, base: Path | None = None) -> Settings:
    """Resolve a ConfigSpec against the config file's directory (or `base`)."""
    from zoneinfo import ZoneInfo

    root = base or (path.parent if path else Path.cwd())
    ct = spec.crosstrade
    return Settings(
        path=path,
        base_url=ct.base_url,
        token_env=ct.token_env,
        timeout=ct.timeout.total_seconds(),
        rate_per_second=ct.rate_limit.per_second,
        rate_burst=ct.rate_limit.burst,
        poll_interval=spec.poll_interval.total_seconds(),
        zone=spec.timezone or ZoneInfo("America/New_York"),
        session_start=spec.session_start,
        rules=tuple((root / r).resolve() for r in ([spec.rules] if isinstance(spec.rules, str) else spec.rules)),
        audit_log=spec.audit_log if spec.audit_log == "-" else str((root / spec.audit_log).resolve()),
        state_dir=(root / spec.state_dir).resolve(),
        misfire_grace=spec.misfire_grace,
        stale_after=spec.stale_after,
        dry_run=spec.dry_run,
        scenario=(root / ct.scenario).resolve() if ct.scenario else None,
        audit_fsync=spec.audit_fsync,
    )


def read_token(settings: Settings) -> str | None:
    """Return the API token from $CREDENTIALS_DIRECTORY/crosstrade-token, else from $<token_env>; None if neither."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / "crosstrade-token"
        if cred.is_file():
            token = cred.read_text(encoding="utf-8").strip()
            if token:
                return token
    token = os.environ.get(settings.token_env, "").strip()
    return token or None
