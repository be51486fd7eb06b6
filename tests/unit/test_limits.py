"""The body check that keeps NUL characters and lone surrogates out of every JSON string."""

import json

import pytest

from controller.api.limits import bad_text


@pytest.mark.parametrize("text", ["plain", "\\u0000 spelt out", "😀 a pair", "é", "\\"])
def test_valid_text_passes(text):
    assert bad_text(json.dumps({"a": text, "b": [text]}).encode()) is None
    assert bad_text(json.dumps({"a": text}, ensure_ascii=False).encode()) is None


@pytest.mark.parametrize(("raw", "found"), [
    (rb'{"a": "\u0000"}', "a NUL character (\\u0000) at byte 7"),
    (rb'{"\u0000": 1}', "a NUL character (\\u0000) at byte 2"),
    (rb'{"a": "\\\u0000"}', "a NUL character (\\u0000) at byte 9"),
    (rb'{"a": "\ud800"}', "a lone surrogate at byte 7"),
    (rb'{"a": "\udc00"}', "a lone surrogate at byte 7"),
    (rb'{"a": "\ud83d\\ude00"}', "a lone surrogate at byte 7"),
    (rb'{"a": "\ud83d\ud83d\ude00"}', "a lone surrogate at byte 7"),
    (rb'{"a": ["x", "\udbff"]}', "a lone surrogate at byte 13"),
])
def test_nul_and_lone_surrogates_are_found(raw, found):
    assert bad_text(raw) == found
