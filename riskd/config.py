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

from pydantic import Field, field_validator, model_validator

from riskd import calendar as calendar_mod, yamldoc
from riskd.errors import ConfigError, Problem
from riskd.fields import Duration, Spec, TimeOfDay, Zone

SYSTEM_CONFIG = Path("/etc/riskd/riskd.yaml")
SIM = "sim"


class RateLimitSpec(Spec):
    per_second: float = Field(3.0, gt=0)
    burst: int = Field(20, ge=1)


class CrossTradeSpec(Spec):
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


NotifyEvent = Literal["fired", "failed", "stale", "rules_rejected"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("fired", "failed", "stale", "rules_rejected")


class NotifyTargetSpec(Spec):
    """One webhook target. Its URL is a secret (it grants posting): give it as `url_credential`
    (a systemd credential name) or `url_env` (an environment variable), or, discouraged, as `url`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="a label for logs and metrics (the URL is never logged)")
    format: Literal["json", "slack", "discord", "ntfy"] = "json"
    url: str | None = None
    url_env: str | None = None
    url_credential: str | None = None
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS), min_length=1)
    timeout: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _one_url(self) -> "NotifyTargetSpec":
        given = [k for k in ("url", "url_env", "url_credential") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'url_credential', 'url_env' or 'url'" + (f" (found {', '.join(given)})" if given else ""))
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")  # the value is a secret: never echoed
        return self


def _metrics_address(value: Any) -> tuple[str, int] | None:
    """`9465` / `"127.0.0.1:9465"` / `"[::1]:9465"` / `"0.0.0.0:9465"` -> (host, port); no host = loopback."""
    if value is None or value is False:
        return None
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if port.isdigit() and int(port) <= 65535 and host:
        return host, int(port)
    raise ValueError(f"invalid metrics address {value!r}; write a port (9465, on 127.0.0.1) or HOST:PORT such as 127.0.0.1:9465")


class ConfigSpec(Spec):
    crosstrade: CrossTradeSpec = CrossTradeSpec()
    poll_interval: Duration = timedelta(seconds=1)
    timezone: Zone = None
    session_start: TimeOfDay = time(18, 0)
    rules: str | list[str] = "rules/"
    audit_log: str = "audit.jsonl"
    audit_fsync: Literal["actions", "all", "none"] = Field(
        "actions", description="fsync after: decisions, API calls and lifecycle lines (actions), every line (all), none")
    state_dir: str = "state/"
    misfire_grace: Duration = timedelta(seconds=60)
    settle_window: Duration = Field(timedelta(seconds=30), description=(
        "how long after a partial close was sent it may still be applied (a relay holding it): until then, and until the "
        "account's executions show no fill, an unanswered or refused partial close is not sent again"))
    stale_after: Duration = timedelta(seconds=10)
    dry_run: bool = False
    notify: list[NotifyTargetSpec] = []
    metrics: Any = Field(None, description="Prometheus endpoint: a port (on 127.0.0.1) or HOST:PORT; absent = off")
    summary_interval: Duration = timedelta(seconds=60)
    calendar: calendar_mod.CalendarSpec = Field(calendar_mod.CalendarSpec(), description=(
        "the exchange calendar: corrections (holidays, early_closes, regular_days, or a file of them), the default market "
        "and the news event file (docs/calendar.md)"))

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: Any) -> Any:
        return _metrics_address(value)

    @field_validator("notify")
    @classmethod
    def _unique_targets(cls, value: list[NotifyTargetSpec]) -> list[NotifyTargetSpec]:
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate notify target name(s): {', '.join(dupes)}; give each target its own name")
        return value

    @field_validator("poll_interval")
    @classmethod
    def _poll(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=100):
            raise ValueError("poll_interval must be at least 100ms")
        return value


@dataclass(frozen=True, slots=True)
class NotifyTarget:
    """A webhook target as configured; `url_source` is ("url" | "env" | "credential", value), resolved at start."""

    name: str
    format: str
    url_source: tuple[str, str]
    events: frozenset[str]
    timeout: float

    def __repr__(self) -> str:  # never print a literal URL
        return f"NotifyTarget(name={self.name!r}, format={self.format!r}, source={self.url_source[0]!r})"


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
    settle_window: timedelta = timedelta(seconds=30)
    scenario: Path | None = None
    audit_fsync: str = "actions"
    notify: tuple[NotifyTarget, ...] = ()
    metrics: tuple[str, int] | None = None  # (host, port) of the Prometheus endpoint
    summary_interval: float = 60.0
    calendar: Any = None  # riskd.calendar.Calendar: built-in, with the trader's corrections and news events

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
        doc.problems.append(doc.problem_at(doc.node, "", "the config must be a mapping of keys (see docs/configuration.md)"))
    spec = yamldoc.validate(doc, ConfigSpec)
    if spec is None:
        raise ConfigError(doc.problems)
    try:
        return from_spec(spec, path.resolve())
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError on 3.11) or an unreadable directory
        raise ConfigError([doc.problem_at(doc.node, "rules/audit_log/state_dir",
                                          f"a path cannot be resolved ({exc}); "
                                          "fix the symlink or point the key at a real directory")]) from None


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
        settle_window=spec.settle_window,
        stale_after=spec.stale_after,
        dry_run=spec.dry_run,
        scenario=(root / ct.scenario).resolve() if ct.scenario else None,
        audit_fsync=spec.audit_fsync,
        notify=tuple(_notify_target(t) for t in spec.notify),
        metrics=spec.metrics,
        summary_interval=spec.summary_interval.total_seconds(),
        calendar=calendar_mod.build(spec.calendar, root, spec.timezone or ZoneInfo("America/New_York")),
    )


def _notify_target(t: NotifyTargetSpec) -> NotifyTarget:
    source = ("credential", t.url_credential) if t.url_credential else ("env", t.url_env) if t.url_env else ("url", t.url)
    return NotifyTarget(t.name, t.format, source, frozenset(t.events), t.timeout.total_seconds())  # type: ignore[arg-type]


def read_token(settings: Settings) -> str | None:
    """Return the API token from $CREDENTIALS_DIRECTORY/crosstrade-token, else from $<token_env>; None if neither."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / "crosstrade-token"
        if cred.is_file():
            try:
                token = cred.read_bytes().decode("ascii").strip()
            except (OSError, UnicodeDecodeError):
                raise _bad_token(str(cred), "cannot be read as ASCII text") from None
            if token:
                return _checked_token(token, str(cred))
    token = os.environ.get(settings.token_env, "").strip()
    return _checked_token(token, f"${settings.token_env}") if token else None


def _bad_token(where: str, what: str) -> ConfigError:
    return ConfigError([Problem(where, 1, 1, "token", f"the API token {what}; paste the token again as one line of printable ASCII")])


def _checked_token(token: str, where: str) -> str:
    """Return the token if it can go in an HTTP header; else raise ConfigError naming where it came from, never the value."""
    if not all("!" <= ch <= "~" for ch in token):
        raise _bad_token(where, "holds a non-ASCII, whitespace or control character")
    return token
