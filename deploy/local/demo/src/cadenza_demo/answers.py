"""The demo's deterministic answers: the input alone decides every outcome (no I/O, no clock).

KTP verification looks at the last digit of the 16-digit NIK:
  0-6 → `passed`, 7 → `requires_review`, 8 → `rejected`, 9 → refused as unreadable (HTTP 422).
AML screening looks at the name: a name on `WATCHLIST` (any case) or containing the word
`sanctioned` is a `confirmed_hit`; a name containing `possible` is a `possible_match`
(which the onboarding workflow treats like `clear`); anything else is `clear`.
"""

from __future__ import annotations

from typing import Literal

Verdict = Literal["passed", "requires_review", "rejected"]
Screening = Literal["clear", "possible_match", "confirmed_hit"]

WATCHLIST = frozenset({"dewi sanksi", "budi pencuci", "ivan hitlist"})


class Unreadable(ValueError):
    """The KTP could not be read (the demo's way to produce a non-retryable 4xx)."""


def ktp_verdict(nik: str) -> Verdict:
    """The identity check's verdict for a NIK, from its last digit.

    Raises:
        Unreadable: for a NIK ending in 9, or one that is not 16 digits.
    """
    if len(nik) != 16 or not nik.isdigit() or nik[-1] == "9":
        raise Unreadable(f"KTP {nik!r} could not be read")
    last = int(nik[-1])
    if last <= 6:
        return "passed"
    return "requires_review" if last == 7 else "rejected"


def screening(name: str) -> tuple[Screening, list[str]]:
    """The AML screening result for a name and the lists it matched."""
    folded = " ".join(name.lower().split())
    if folded in WATCHLIST or "sanctioned" in folded.split():
        return "confirmed_hit", ["UN-1267", "OFAC-SDN"]
    if "possible" in folded.split():
        return "possible_match", ["PEP"]
    return "clear", []
