"""Identity: what the engine remembers things by. Every key is built and read here, nowhere else.

The engine's state is one JSON document, so its maps are keyed by the string form of these types;
each type has one `str()` and one `parse()`. Account names compare lower case and instrument names
upper case by construction (the API matches both case-insensitively), so `SIM101` and `Sim101` are
one account. Rule names are `[a-z0-9_-]+` (riskd.rules), so the separators below never occur in them;
NinjaTrader account and instrument names do not contain `|`.

    position    account|INSTRUMENT|Side                  one open position (a reversal is another one)
    target      account                                  an account-level target
                account|INSTRUMENT|first-seen            a position: reopened later, it is a new target
                ?account                                 an account a timed occurrence still waits for
    firing      rule|target                              an edge firing
                rule@instant|target                      one target of a timed occurrence
                rule!lock|target                         a lock's flatten of a position opened under it
    occurrence  rule@instant                             one scheduled instant of an `at` rule
    lock        rule|account                             a lock set by an acknowledged `lock:` firing (its terms: State.lock_terms)
"""

from __future__ import annotations

from dataclasses import dataclass

SIDES = ("Long", "Short")


@dataclass(frozen=True, slots=True)
class PositionKey:
    account: str
    instrument: str
    side: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "account", self.account.lower())
        object.__setattr__(self, "instrument", self.instrument.upper())

    def __str__(self) -> str:
        return f"{self.account}|{self.instrument}|{self.side}"

    @classmethod
    def parse(cls, text: str) -> "PositionKey":
        account, instrument, side = text.rsplit("|", 2)
        return cls(account, instrument, side)

    def rival(self) -> "PositionKey":
        """The same instrument on the other side."""
        return PositionKey(self.account, self.instrument, "Short" if self.side == "Long" else "Long")

    def target(self, first_seen: str) -> "TargetKey":
        return TargetKey(self.account, self.instrument, first_seen)


@dataclass(frozen=True, slots=True)
class TargetKey:
    account: str
    instrument: str | None = None
    since: str | None = None  # a position's first-seen time: part of its identity
    waiting: bool = False  # an account a timed occurrence could not see at its instant

    def __post_init__(self) -> None:
        object.__setattr__(self, "account", self.account.lower())
        if self.instrument is not None:
            object.__setattr__(self, "instrument", self.instrument.upper())

    def __str__(self) -> str:
        if self.waiting:
            return "?" + self.account
        if self.instrument is None:
            return self.account
        return f"{self.account}|{self.instrument}|{self.since}"

    @classmethod
    def parse(cls, text: str) -> "TargetKey":
        if text.startswith("?"):
            return cls(text[1:], waiting=True)
        parts = text.split("|")
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2])
        return cls(text)


@dataclass(frozen=True, slots=True)
class OccurrenceKey:
    rule: str
    instant: str  # ISO 8601, UTC

    def __str__(self) -> str:
        return f"{self.rule}@{self.instant}"

    @classmethod
    def parse(cls, text: str) -> "OccurrenceKey":
        rule, _, instant = text.partition("@")
        return cls(rule, instant)


@dataclass(frozen=True, slots=True)
class FiringKey:
    """One firing of one rule on one target: the key that is never acted on twice."""

    rule: str
    target: TargetKey
    occurrence: str | None = None  # the instant, for a timed occurrence's target
    lock: bool = False  # a lock's flatten

    def __str__(self) -> str:
        if self.occurrence is not None:
            return f"{self.rule}@{self.occurrence}|{self.target}"
        return f"{self.rule}{'!lock' if self.lock else ''}|{self.target}"

    @classmethod
    def parse(cls, text: str) -> "FiringKey":
        head, _, target = text.partition("|")
        rule, at, instant = head.partition("@")
        if at:
            return cls(rule, TargetKey.parse(target), occurrence=instant)
        rule, bang, _ = rule.partition("!")
        return cls(rule, TargetKey.parse(target), lock=bool(bang))

    def occurrence_key(self) -> OccurrenceKey | None:
        return OccurrenceKey(self.rule, self.occurrence) if self.occurrence is not None else None


@dataclass(frozen=True, slots=True)
class LockKey:
    rule: str
    account: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "account", self.account.lower())

    def __str__(self) -> str:
        return f"{self.rule}|{self.account}"

    @classmethod
    def parse(cls, text: str) -> "LockKey":
        rule, _, account = text.partition("|")
        return cls(rule, account)


def rule_of(text: str) -> str:
    """The rule a stored key belongs to, whatever its kind (firing, occurrence, lock)."""
    end = len(text)
    for sep in "|@!":
        at = text.find(sep)
        if at != -1:
            end = min(end, at)
    return text[:end]

