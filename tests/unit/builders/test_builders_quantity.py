"""Quantities are written as the API server stores them (checked against Go in apivalidate)."""

from __future__ import annotations

import pytest

from mlsec.builders.quantity import canonical_quantity

# (as written, as stored by kube-apiserver 1.37): outputs taken from resource.Quantity's MarshalJSON
TABLE = [
    ("0", "0"), (2, "2"), ("1000m", "1"), ("0.5", "500m"), (".5", "500m"), ("1.5", "1500m"),
    ("100m", "100m"), ("0.1m", "100u"), ("1000", "1k"), ("1024Mi", "1Gi"), ("1.5Gi", "1536Mi"),
    ("0.5Ki", "512"), ("4Gi", "4Gi"), ("1e3", "1e3"), ("1.5e3", "1500"), ("0.0000000001", "1n"),
    ("1.23456789012m", "1234568n"), (1073741824, "1073741824"), ("0Gi", "0"),
    # quirks of the Go code, kept: strings it deems canonical are stored as written
    ("+1", "+1"), ("1.500", "1.500"), ("0100m", "0100m"),
]


@pytest.mark.parametrize(("written", "stored"), TABLE)
def test_canonical_quantity(written: int | str, stored: str) -> None:
    assert canonical_quantity(written) == stored


@pytest.mark.parametrize("bad", ["", "abc", "1Qi", "1.2.3", "1e", "--1"])
def test_not_a_quantity(bad: str) -> None:
    with pytest.raises(ValueError):
        canonical_quantity(bad)
