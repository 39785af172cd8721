"""riskd.yaml -> frozen Settings; the API token from systemd credentials or the environment.

Lookup: -c FILE, else $RISKD_CONFIG, else ./riskd.yaml, else /etc/riskd/riskd.yaml.
Relative paths are relative to the config file's directory. The token never lives in YAML.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import time, timedelta, tzinfo
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from riskd import yamldoc
from riskd.engine import EngineSettings
from riskd.errors import ConfigError, Problem
from riskd.fields import Duration, Spec, TimeOfDay, Zone

SYSTEM_CONFIG = Path("/etc/riskd/riskd.yaml")
SIM = "sim"
DASHBOARD_PORT = 9466  # the port the docs suggest for `dashboard:`
DASHBOARD_TOKEN = "dashboard-token"  # the credential (file in $CREDENTIALS_DIRECTORY) that, when present, guards the dashboard


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


NotifyEvent = Literal["fired", "outcome", "failed", "stale", "rules_rejected", "summary", "control"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("fired", "outcome", "failed", "stale", "rules_rejected", "summary", "control")


class NotifyTargetSpec(Spec):
    """One webhook target. Its URL is a secret (it grants posting): give it as `url_credential`
    (a systemd credential name) or `url_env` (an environment variable), or, discouraged, as `url`.
    Telegram: the URL is `https://api.telegram.org/bot<BOT_TOKEN>/sendMessage` and `chat_id` names the chat."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="a label for logs and metrics (the URL is never logged)")
    format: Literal["json", "slack", "discord", "ntfy", "telegram"] = "json"
    url: str | None = None
    url_env: str | None = None
    url_credential: str | None = None
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS), min_length=1)
    timeout: Duration = timedelta(seconds=5)
    chat_id: str | int | None = Field(None, description="format telegram: the chat, group or channel to post to")
    max_per_minute: float = Field(6, gt=0, le=600, description=(
        "webhook calls per minute at most (3 at once); messages waiting meanwhile go out together in the next call"))

    @model_validator(mode="after")
    def _one_url(self) -> "NotifyTargetSpec":
        given = [k for k in ("url", "url_env", "url_credential") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'url_credential', 'url_env' or 'url'" + (f" (found {', '.join(given)})" if given else ""))
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")  # the value is a secret: never echoed
        if (self.format == "telegram") != (self.chat_id is not None):
            raise ValueError("give 'chat_id' with format telegram (the chat's numeric id or @channel), and only then")
        return self


def listen_address(value: Any, what: str = "metrics", port_example: int = 9465) -> tuple[str, int] | None:
    """`9465` / `"127.0.0.1:9465"` / `"[::1]:9465"` / `"0.0.0.0:9465"` -> (host, port); no host = loopback."""
    if value is None or value is False:
        return None
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if port.isdigit() and int(port) <= 65535 and host:
        return host, int(port)
    raise ValueError(f"invalid {what} address {value!r}; write a port ({port_example}, on 127.0.0.1) or HOST:PORT such as "
                     f"127.0.0.1:{port_example}")


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
    allow_empty_policy: bool = Field(False, description="start (and reload) with no enabled rule; by default that is refused")
    notify: list[NotifyTargetSpec] = []
    metrics: Any = Field(None, description="Prometheus endpoint: a port (on 127.0.0.1) or HOST:PORT; absent = off")
    summary_interval: Duration = timedelta(seconds=60)
    control_socket: str | None = Field(None, description=(
        "the Unix socket of the operator commands (riskd lock, flatten, ...); default: control.sock in state_dir"))
    dashboard: Any = Field(None, description="the live dashboard (read-only web page): a port (on 127.0.0.1) or HOST:PORT; absent = off")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: Any) -> Any:
        return listen_address(value)

    @field_validator("dashboard")
    @classmethod
    def _dashboard(cls, value: Any) -> Any:
        return listen_address(value, "dashboard", DASHBOARD_PORT)

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
    timeout: timedelta
    chat_id: str | None = None
    per_minute: float = 6.0

    def __repr__(self) -> str:  # never print a literal URL
        return f"NotifyTarget(name={self.name!r}, format={self.format!r}, source={self.url_source[0]!r})"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything riskd.yaml says, resolved: absolute paths, durations as timedelta, a tzinfo.
    `engine` is the part the pure engine reads (riskd.engine.EngineSettings)."""

    path: Path | None
    base_url: str
    token_env: str
    timeout: timedelta
    rate_per_second: float
    rate_burst: int
    poll_interval: timedelta
    zone: tzinfo
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
    summary_interval: timedelta = timedelta(seconds=60)
    control_socket: Path | None = None  # None: state_dir / control.sock
    dashboard: tuple[str, int] | None = None  # (host, port) of the live dashboard
    allow_empty_policy: bool = False

    @property
    def simulated(self) -> bool:
        return self.base_url == SIM

    @property
    def engine(self) -> EngineSettings:
        return EngineSettings(zone=self.zone, session_start=self.session_start, misfire_grace=self.misfire_grace)


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
        doc.problems.append(doc.problem_at(doc.node, "", "the config must be a mapping of keys (see docs/configuration.md)"
                                           + yamldoc.foreign_hint(doc.text)))
    spec = yamldoc.validate(doc, ConfigSpec)
    if spec is None:
        raise ConfigError(doc.problems)
    try:
        settings = from_spec(spec, path.resolve())
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError on 3.11) or an unreadable directory
        raise ConfigError([doc.problem_at(doc.node, "rules/audit_log/state_dir",
                                          f"a path cannot be resolved ({exc}); "
                                          "fix the symlink or point the key at a real directory")]) from None
    return settings


def check_rules_exist(settings: Settings) -> None:
    """Raise ConfigError, located at the `rules:` line of riskd.yaml, for each rules entry that names
    nothing (`rules: rulez/`), with the nearest existing name."""
    if settings.path is None or all(p.exists() for p in settings.rules):
        return
    doc = yamldoc.read(settings.path)
    spec = yamldoc.validate(doc, ConfigSpec)
    if spec is None:
        return
    raise ConfigError([_missing_rules(doc, spec, i, p) for i, p in enumerate(settings.rules) if not p.exists()])


def _missing_rules(doc: yamldoc.Document, spec: ConfigSpec, index: int, resolved: Path) -> Problem:
    """A `rules:` entry that names nothing, located at its line in riskd.yaml, with the nearest existing name."""
    import difflib

    written = spec.rules if isinstance(spec.rules, str) else spec.rules[index]
    node = doc.locate(("rules",) if isinstance(spec.rules, str) else ("rules", index))
    try:
        near = sorted(p.name + ("/" if p.is_dir() else "") for p in resolved.parent.iterdir())
    except OSError:
        near = []
    guess = difflib.get_close_matches(resolved.name + ("/" if written.endswith("/") else ""), near, n=1, cutoff=0.6)
    parent = str(Path(written).parent)
    hint = (f"did you mean {guess[0] if parent == '.' else parent + '/' + guess[0]!r}?" if guess
            else "point rules: at a rule file, a directory of them, or a list of either")
    return doc.problem_at(node, "rules", f"{written!r} does not exist (looked for {resolved}); {hint}")


def from_spec(spec: ConfigSpec, path: Path | None, base: Path | None = None) -> Settings:
    """Resolve a ConfigSpec against the config file's directory (or `base`)."""
    from zoneinfo import ZoneInfo

    root = base or (path.parent if path else Path.cwd())
    ct = spec.crosstrade
    return Settings(
        path=path,
        base_url=ct.base_url,
        token_env=ct.token_env,
        timeout=ct.timeout,
        rate_per_second=ct.rate_limit.per_second,
        rate_burst=ct.rate_limit.burst,
        poll_interval=spec.poll_interval,
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
        summary_interval=spec.summary_interval,
        control_socket=(root / spec.control_socket).resolve() if spec.control_socket else None,
        dashboard=spec.dashboard,
        allow_empty_policy=spec.allow_empty_policy,
    )


def _notify_target(t: NotifyTargetSpec) -> NotifyTarget:
    source = ("credential", t.url_credential) if t.url_credential else ("env", t.url_env) if t.url_env else ("url", t.url)
    return NotifyTarget(t.name, t.format, source, frozenset(t.events), t.timeout,  # type: ignore[arg-type]
                        str(t.chat_id) if t.chat_id is not None else None, t.max_per_minute)


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


def read_dashboard_token(env: dict[str, str] | None = None) -> str | None:
    """Return the dashboard's access token from $CREDENTIALS_DIRECTORY/dashboard-token; None when there is none."""
    env = dict(os.environ) if env is None else env
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    path = Path(cred_dir) / DASHBOARD_TOKEN if cred_dir else None
    if path is None or not path.is_file():
        return None
    try:
        token = path.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise ConfigError([Problem(str(path), 1, 1, "dashboard", "the dashboard token cannot be read as ASCII text; "
                                   "write it again as one line of printable ASCII")]) from None
    if not token:
        return None
    if len(token) < 16 or not all("!" <= ch <= "~" for ch in token):
        raise ConfigError([Problem(str(path), 1, 1, "dashboard", "the dashboard token must be at least 16 printable ASCII characters "
                                   "without spaces; generate one with: openssl rand -hex 24")])
    return token


def _bad_token(where: str, what: str) -> ConfigError:
    return ConfigError([Problem(where, 1, 1, "token", f"the API token {what}; paste the token again as one line of printable ASCII")])


def _checked_token(token: str, where: str) -> str:
    """Return the token if it can go in an HTTP header; else raise ConfigError naming where it came from, never the value."""
    if not all("!" <= ch <= "~" for ch in token):
        raise _bad_token(where, "holds a non-ASCII, whitespace or control character")
    return token
