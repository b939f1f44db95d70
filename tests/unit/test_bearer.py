"""The one bearer-token check of the webhook and the dashboard."""

from __future__ import annotations

import pytest

from producers.serving import bearer_matches

TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    "header",
    [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"  Bearer   {TOKEN}  "],
)
def test_accepts_the_token_with_any_scheme_case(header: str) -> None:
    assert bearer_matches(header, TOKEN)


@pytest.mark.parametrize(
    "header",
    [
        "",
        TOKEN,  # no scheme
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer ",
        f"Token {TOKEN}",
        f"Bearer{TOKEN}",
    ],
)
def test_refuses_anything_else(header: str) -> None:
    assert not bearer_matches(header, TOKEN)


def test_no_configured_token_matches_nothing() -> None:
    assert not bearer_matches("Bearer ", "")
    assert not bearer_matches("Bearer x", "")
