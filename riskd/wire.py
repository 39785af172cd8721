"""The CrossTrade snapshot body as it comes over the wire: only the fields riskd reads.

`decode` reads `GET /accounts/snapshot`'s JSON text straight into these msgspec Structs, in C,
skipping every other field: at 3000 accounts (7 MB of CrossTrade's JSON, ~40 figures an account)
that is ~10 ms and ~7 MB, where a whole JSON tree is ~40 ms and ~21 MB, plus the decoder's buffer.

The Structs judge no value: each field takes whatever JSON value came (`UNSET` when the key is
missing), and each object takes any JSON value in its place (a position that is `null`, a string
or a list comes through as that value). Whether a snapshot can be trusted, account by account, is
`riskd.crosstrade.parse_snapshot`'s judgement, the same whichever decoder read the body: a body
msgspec does not read (NaN, a number beyond 64 bits, a lone surrogate) is read by the standard
JSON path and converted to these Structs (`convert`).
"""

from __future__ import annotations

from typing import Any, Union

import msgspec
from msgspec import UNSET, Struct, UnsetType

_Leaf = Any  # any JSON value, UNSET when the key is missing


class Position(Struct, rename="camel"):
    instrument: _Leaf = UNSET
    quantity: _Leaf = UNSET
    market_position: _Leaf = UNSET
    unrealized_profit_loss: _Leaf = UNSET
    account: _Leaf = UNSET
    average_price: _Leaf = UNSET
    market_price: _Leaf = UNSET


class Item(Struct, rename="camel"):
    realized_profit_loss: _Leaf = UNSET
    unrealized_profit_loss: _Leaf = UNSET
    commission: _Leaf = UNSET
    net_liquidation: _Leaf = UNSET
    weekly_profit_loss: _Leaf = UNSET
    cash_value: _Leaf = UNSET


# In each place an object belongs, any JSON value: the object as its Struct, anything else as itself.
_Other = Union[list[Any], str, int, float, bool, None, UnsetType]


class Account(Struct, rename="camel"):
    name: _Leaf = UNSET
    display_name: _Leaf = UNSET
    item: Union[Item, _Other] = UNSET


class Entry(Struct):
    account: Union[Account, _Other] = UNSET
    positions: Union[list[Union[Position, _Other]], dict[str, Any], str, int, float, bool, None, UnsetType] = UNSET


class Snapshot(Struct):
    accounts: Union[list[Union[Entry, _Other]], dict[str, Any], str, int, float, bool, None, UnsetType] = UNSET
    success: _Leaf = UNSET
    error: _Leaf = UNSET


EMPTY_ITEM = Item()
_DECODER = msgspec.json.Decoder(Snapshot)


def decode(text: str) -> Snapshot | None:
    """A snapshot body as a Snapshot; None when msgspec does not read it (not JSON it accepts, or not an object)."""
    try:
        return _DECODER.decode(text)
    except msgspec.MsgspecError:
        return None


def convert(data: Any) -> Snapshot | None:
    """JSON already decoded (dicts and lists) as a Snapshot; None when it is not an object."""
    try:
        return msgspec.convert(data, Snapshot)
    except (msgspec.MsgspecError, RecursionError):
        return None

