"""ONNX Runtime session settings of the decode loop (the speed of those is in benchmarks/)."""

from __future__ import annotations

import pytest

from lmfast.generation.onnx_backend import DEFAULT_SPIN_US, DYNAMIC_BLOCK_BASE, session_options


def test_threading_settings_spinning_bounded_by_default_and_can_be_turned_off():
    bounded = session_options(2)
    assert bounded.intra_op_num_threads == 2 and bounded.inter_op_num_threads == 1
    assert bounded.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert bounded.get_session_config_entry("session.intra_op.spin_duration_us") == str(DEFAULT_SPIN_US)
    assert bounded.get_session_config_entry("session.force_spinning_stop") == "1"
    assert bounded.get_session_config_entry("session.dynamic_block_base") == str(DYNAMIC_BLOCK_BASE)

    assert session_options(2, spin_us=None).get_session_config_entry(
        "session.intra_op.spin_duration_us"
    ) == str(DEFAULT_SPIN_US)
    with pytest.raises(ValueError, match="spin_us"):
        session_options(2, spin_us=-1)

    off = session_options(None, spin_us=0)
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
