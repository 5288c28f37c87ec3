"""normalize_name: the documented author identity key, known answers and invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.vocab import normalize_name


@pytest.mark.parametrize("name,key", [
    ("John Grisham", "john_grisham"),
    ("JOHN GRISHAM", "john_grisham"),
    ("  john\t grisham\n", "john_grisham"),
    ("john_grisham", "john_grisham"),  # an id already in key form is unchanged
    ("john-grisham", "john_grisham"),
    ("Grisham, John", "grisham_john"),  # no reordering: only case, width, spaces, punctuation
    ("J.R.R. Tolkien", "j_r_r_tolkien"),
    ("J. R. R. Tolkien", "j_r_r_tolkien"),
    ("\uff2a\uff4f\uff48\uff4e", "john"),  # full-width letters (NFKC)
    ("Stra\u00dfe", "strasse"),  # case fold, not lower()
    ("Luis Bu\u00f1uel", "luis_bu\u00f1uel"),  # accents are kept
    ("Luis Bun\u0303uel", "luis_bu\u00f1uel"),  # combining tilde composes (NFKC)
    ("\u0939\u093f\u0928\u094d\u0926\u0940 \u0932\u0947\u0916\u0915",
     "\u0939\u093f\u0928\u094d\u0926\u0940_\u0932\u0947\u0916\u0915"),  # marks are not gaps
    ("AC/DC", "ac_dc"),
    ("Simon & Garfunkel", "simon_garfunkel"),  # "&" is punctuation (Po)
    ("Ke$ha", "ke$ha"),  # symbols (S*) are kept
    ("\u00a0Anne\u2003Rice\u00a0", "anne_rice"),  # no-break and em spaces
    ("--", ""),
    ("", ""),
])
def test_known_answers(name: str, key: str) -> None:
    assert normalize_name(name) == key


@given(st.text(max_size=40))
def test_idempotent_and_trimmed(name: str) -> None:
    key = normalize_name(name)
    assert normalize_name(key) == key
    assert not key.startswith("_") and not key.endswith("_") and "__" not in key
    assert not any(ch.isspace() for ch in key)
