"""Kubernetes resource quantities in the form the API server stores them.

The API server parses every quantity (``resource.ParseQuantity``) and writes it back in canonical
form: ``1000m`` is stored as ``1``, ``0.5`` as ``500m``, ``1024Mi`` as ``1Gi``, an integer ``2`` as
``"2"``. A Deployment built with the user's spelling would then never compare equal to the live
object, so the builders write quantities the way the server will store them.

This is a port of k8s.io/apimachinery/pkg/api/resource (ParseQuantity, then MarshalJSON through
CanonicalizeBytes), including its quirks: a string already in "canonical enough" form is kept as
written (e.g. ``+1``, ``1.500``), exactly as the API server keeps it. The equivalence is checked
against the real Go code in tests/unit/builders (apivalidate).
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, localcontext

_DECIMAL_SUFFIXES = {
    "n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18,
}
_DECIMAL_BY_EXPONENT = {e: s for s, e in _DECIMAL_SUFFIXES.items()}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_BINARY_BY_POWER = {e // 10: s for s, e in _BINARY_SUFFIXES.items()}
_INT64_MAX = 2**63 - 1
_NANO = -9
_MAX_INT64_FACTORS = 18
_QUANTITY = re.compile(r"^([+-]?)(0*)([0-9]*)(?:\.([0-9]*))?([eEinumkKMGTP]*[+-]?[0-9]*)$")

DECIMAL_SI, BINARY_SI, DECIMAL_EXPONENT = "DecimalSI", "BinarySI", "DecimalExponent"


def _interpret(suffix: str) -> tuple[int, int, str]:
    """(base, exponent, format) of a suffix, as the Go suffixer interprets it."""
    if suffix in _DECIMAL_SUFFIXES:
        return 10, _DECIMAL_SUFFIXES[suffix], DECIMAL_SI
    if suffix in _BINARY_SUFFIXES:
        return 2, _BINARY_SUFFIXES[suffix], BINARY_SI
    if len(suffix) > 1 and suffix[0] in "eE" and re.fullmatch(r"[+-]?[0-9]+", suffix[1:]):
        return 10, int(suffix[1:]), DECIMAL_EXPONENT
    raise ValueError(f"quantity suffix {suffix!r} is not valid")


def _remove_factors(value: int, factor: int) -> tuple[int, int]:
    times = 0
    while value != 0 and value % factor == 0:
        value //= factor
        times += 1
    return value, times


def _canonical_decimal(mantissa: int, exponent: int, fmt: str) -> str:
    """number and suffix for mantissa * 10**exponent (AsCanonicalBytes + constructBytes)."""
    mantissa, times = _remove_factors(mantissa, 10)
    exponent += times
    shift = exponent % 3  # Python's modulo is non-negative: rounds the exponent down
    mantissa *= 10**shift
    exponent -= shift
    if fmt == DECIMAL_EXPONENT:
        return f"{mantissa}e{exponent}" if exponent else str(mantissa)
    # DecimalSI; an exponent without suffix (beyond E) gets none, like the Go code.
    return f"{mantissa}{_DECIMAL_BY_EXPONENT.get(exponent, '')}"


def _canonicalize(amount: Decimal, fmt: str) -> str:
    """CanonicalizeBytes for the value ``amount`` in format ``fmt``."""
    if amount == 0:
        return "0"
    if fmt == BINARY_SI and (-1024 < amount < 1024 or amount != amount.to_integral_value()):
        fmt = DECIMAL_SI
    if fmt == BINARY_SI:
        number, power = _remove_factors(int(amount), 1024)
        return f"{number}{_BINARY_BY_POWER.get(power, '')}"
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)
    mantissa = int("".join(map(str, digits)))
    return _canonical_decimal(-mantissa if sign else mantissa, exponent, fmt)


def canonical_quantity(value: int | str) -> str:
    """``value`` as the API server stores it (ValueError if it is no quantity)."""
    text = str(value)
    if text == "0":
        return text
    m = _QUANTITY.match(text)
    if not m or not text:
        raise ValueError(f"{text!r} is not a quantity")
    sign, _zeros, num, denom, suffix = m.groups()
    num = num or "0"
    denom = denom or ""
    base, exponent, fmt = _interpret(suffix)
    negative = sign == "-"

    # The int64 fast path of ParseQuantity, which keeps the string as written when it is in
    # canonical form by its own (approximate) test.
    mantissa, scale = 1, 0
    if fmt in (DECIMAL_SI, DECIMAL_EXPONENT):
        scale = exponent
        precision = _MAX_INT64_FACTORS - (len(num) + len(denom))
    elif exponent >= 0 and not denom:
        mantissa = 1 << exponent
        precision = 15 - len(num) - int(exponent * 3 / 10) - 1
    else:
        precision = -1
    if precision >= 0:
        scale -= len(denom)
        shifted = num + denom
        if scale >= _NANO and int(shifted) <= _INT64_MAX and int(shifted) * mantissa <= _INT64_MAX:
            amount = int(shifted) * mantissa * (-1 if negative else 1)
            if fmt == BINARY_SI:
                if exponent % 10 == 0 and int(shifted) & 0x07 != 0:
                    return text
            elif scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0":
                return text
            return _canonicalize(Decimal(amount).scaleb(scale), fmt)

    # The arbitrary precision path.
    with localcontext() as ctx:
        ctx.prec = 200
        amount_dec = Decimal(f"{num}.{denom or '0'}")
        amount_dec = (
            amount_dec.scaleb(exponent) if base == 10 else amount_dec * (Decimal(2) ** exponent)
        )
        # rounded up (away from zero) to a whole nano, so that a tiny request stays non-zero
        if amount_dec != 0:
            amount_dec = amount_dec.quantize(Decimal("1e-9"), rounding=ROUND_CEILING)
        if fmt == BINARY_SI and amount_dec > _INT64_MAX:
            amount_dec = Decimal(_INT64_MAX)
        if fmt == BINARY_SI and 0 < amount_dec < 1:
            fmt = DECIMAL_SI
        if negative:
            amount_dec = -amount_dec
        return _canonicalize(amount_dec, fmt)
