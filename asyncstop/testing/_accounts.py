"""The fake exchange's trading accounts, and the documented body of ``GET .../accounts``.

Written from ``get-accounts.txt``: a JSON array of objects with ``accountId``,
``accountName``, ``accountType`` (``Hedging`` or ``Netting``),
``totalBalanceInRAT`` (a decimal string) and ``isCopyTradingAccount``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

import msgspec

__all__ = ["ACCOUNT_TYPES", "FakeAccount", "encode_accounts"]

ACCOUNT_TYPES: Final = ("Hedging", "Netting")


@dataclass(slots=True)
class FakeAccount:
    """One trading account of the fake exchange; tests may change any field.

    ``total_balance_in_rat`` is sent as it is, a decimal string like ``"6020.12"``.
    """

    account_id: str
    account_name: str
    account_type: str = "Hedging"
    total_balance_in_rat: str = "10000.00"
    is_copy_trading_account: bool = False

    def __post_init__(self) -> None:
        if self.account_type not in ACCOUNT_TYPES:
            raise ValueError(
                f"account_type must be 'Hedging' or 'Netting', not {self.account_type!r}"
            )
        try:
            Decimal(self.total_balance_in_rat)
        except (InvalidOperation, TypeError):
            raise ValueError(
                f"total_balance_in_rat must be a decimal string, not {self.total_balance_in_rat!r}"
            ) from None


class _WireAccount(
    msgspec.Struct,
    # "camel" would spell the balance totalBalanceInRat; the doc says totalBalanceInRAT.
    rename={
        "account_id": "accountId",
        "account_name": "accountName",
        "account_type": "accountType",
        "total_balance_in_rat": "totalBalanceInRAT",
        "is_copy_trading_account": "isCopyTradingAccount",
    },
):
    """The documented account object, fields in the documented order."""

    account_id: str
    account_name: str
    account_type: str
    total_balance_in_rat: str
    is_copy_trading_account: bool


_encoder: Final = msgspec.json.Encoder()


def encode_accounts(accounts: Iterable[FakeAccount]) -> bytes:
    """Encode the documented 200 body of Get accounts: a JSON array of account objects."""
    return _encoder.encode(
        [
            _WireAccount(
                account.account_id,
                account.account_name,
                account.account_type,
                account.total_balance_in_rat,
                account.is_copy_trading_account,
            )
            for account in accounts
        ]
    )
