"""The one span -> token mapping (hf_ext.utils.spans), checked by hand."""

import pytest

from hf_ext.utils.spans import segment_token_mask, span_token_mask, validate_spans


def test_span_token_mask_by_hand():
    # "<s>" (zero width), "the" 0-3, " red" 3-7, " cube" 7-12, "." 12-13 of "the red cube."
    offsets = [(0, 0), (0, 3), (3, 7), (7, 12), (12, 13)]
    assert span_token_mask(offsets, [(4, 7)]) == [False, False, True, False, False]  # "red"
    assert span_token_mask(offsets, [(6, 9)]) == [False, False, True, True, False]  # "d c" straddles two tokens
    assert span_token_mask(offsets, [(0, 1)]) == [False, True, False, False, False]  # never the zero-width token
    # spans relative to a completion that starts at character 3 of the rendered text
    assert span_token_mask(offsets, [(1, 4)], char_shift=3) == [False, False, True, False, False]


def test_validate_and_segment_token_mask():
    assert validate_spans(None, 5, "row 0") == []
    assert validate_spans([[0, 2], (3, 5)], 5, "row 0") == [(0, 2), (3, 5)]
    with pytest.raises(ValueError, match=r"row 3, chosen_segments: segment \[2, 9\] is outside"):
        validate_spans([[2, 9]], 5, "row 3, chosen_segments")
    with pytest.raises(ValueError, match="is empty"):
        validate_spans([[2, 2]], 5, "w")
    with pytest.raises(TypeError, match="Parse it first"):
        validate_spans("[[0, 1]]", 5, "w")
    with pytest.raises(TypeError, match="must be integers"):
        validate_spans([[0, 1.5]], 5, "w")
    offsets = [(0, 3), (3, 7)]
    assert segment_token_mask(offsets, [[1, 2]], 4, 3, "w") == [False, True]
    with pytest.raises(ValueError, match="outside the completion text of 4 characters"):
        segment_token_mask(offsets, [[1, 5]], 4, 3, "w")
