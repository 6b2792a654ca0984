"""MRProtocol validation, presets, prompts and numeric features."""
from __future__ import annotations

import re

import numpy as np
import pytest

from synthesis.condition import (
    FEATURE_DIM,
    PAIR_FEATURE_DIM,
    PHYSICS_DIM,
    pair_features,
    physics_features,
    prompt,
    protocol_features,
)
from synthesis.protocol import PRESETS, Contrast, MRProtocol, SequenceKind, preset


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"contrast": "T3w"}, "T3w"),
        ({"contrast": "T1w", "sequence": "EPI"}, "EPI"),
        ({"contrast": "T1w", "dimension": "4D"}, "dimension must be '2D' or '3D'"),
        ({"contrast": "T1w", "tr_ms": -5.0}, "tr_ms must be a finite positive number"),
        ({"contrast": "T1w", "te_ms": float("nan")}, "te_ms must be a finite positive number"),
        ({"contrast": "T1w", "field_t": 0.0}, "field_t must be a finite positive number"),
        ({"contrast": "T1w", "flip_deg": 270.0}, "flip_deg must be in (0, 180]"),
        ({"contrast": "T2w", "tr_ms": 50.0, "te_ms": 100.0}, "te_ms must not exceed tr_ms"),
        ({"contrast": "T1w", "voxel_mm": (1.0, 1.0)}, "voxel_mm must have 3 values"),
        ({"contrast": "T1w", "voxel_mm": (1.0, -1.0, 1.0)}, "voxel_mm must be a finite positive number"),
    ],
)
def test_bad_values_raise_clear_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MRProtocol(**kwargs)


def test_strings_are_normalized_to_enums() -> None:
    p = MRProtocol(contrast="T2w", sequence="TSE", dimension="3d", tr_ms=3000, te_ms=90)
    assert p.contrast is Contrast.T2w
    assert p.sequence is SequenceKind.TSE
    assert p.dimension == "3D"
    assert isinstance(p.tr_ms, float)


def test_round_trip_dict() -> None:
    p = preset("FLAIR", 1.5).with_(manufacturer="Siemens", model="Avanto")
    assert MRProtocol.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="Unknown MRProtocol fields"):
        MRProtocol.from_dict({**p.to_dict(), "patient_name": "x"})


def test_presets_exist_for_both_fields() -> None:
    for name in PRESETS:
        for field_t in (1.5, 3.0):
            assert preset(name, field_t).field_t == field_t
    assert preset("t2", 1.4).field_t == 1.5
    with pytest.raises(ValueError, match="Unknown preset 'T9'"):
        preset("T9")


def test_prompt_is_deterministic_and_describes_both_protocols() -> None:
    source, target = preset("T1", 3.0), preset("T2", 3.0)
    first = prompt(source, target)
    assert first == prompt(MRProtocol.from_dict(source.to_dict()), MRProtocol.from_dict(target.to_dict()))
    assert first.startswith("Synthesize a 3D T2-weighted turbo spin echo image")
    assert "TR 3200 ms" in first and "from a 3D T1-weighted MPRAGE image" in first
    assert prompt(source, preset("FLAIR")) != first


def test_prompt_has_no_patient_like_fields() -> None:
    scanner = preset("T1").with_(manufacturer="Acme^Patient<script>", model="Model-7 (John)")
    text = prompt(scanner, preset("T2"))
    assert scanner.manufacturer == "AcmePatientscript" and scanner.model == "Model-7 John"
    assert not any(ch in text for ch in "^<>")
    assert "(John" not in text
    fields = set(MRProtocol.__dataclass_fields__)
    assert not fields & {"patient_name", "patient_id", "birth_date", "accession_number", "study_date"}


def test_scanner_text_is_shortened_and_sanitized() -> None:
    p = MRProtocol(contrast="T1w", manufacturer="  " + "X" * 80 + "  ", model="\x00\x01")
    assert p.manufacturer == "X" * 32
    assert p.model is None


def test_features_shape_flags_and_range() -> None:
    full = protocol_features(preset("FLAIR", 3.0))
    assert full.shape == (FEATURE_DIM,) and full.dtype == np.float32
    assert np.all((full >= 0) & (full <= 1.0 + 1e-6))
    bare = protocol_features(MRProtocol(contrast="T1w"))
    assert bare[:12].sum() == 0  # every numeric value missing: values and flags are 0
    pair = pair_features(preset("T1"), preset("T2"))
    assert pair.shape == (PAIR_FEATURE_DIM,)
    np.testing.assert_array_equal(pair[:FEATURE_DIM], protocol_features(preset("T1")))


def test_physics_features_say_which_tissue_is_bright() -> None:
    csf, gm, wm, lesion, fat = range(5)
    t2 = physics_features(preset("T2", 3.0), relative_to="brain")
    assert t2.shape == (PHYSICS_DIM,) and t2[-1] == 1.0
    assert t2[csf] == pytest.approx(1.0) and t2[wm] < t2[gm] < t2[csf]      # CSF bright on T2w
    flair = physics_features(preset("FLAIR", 3.0), relative_to="brain")
    assert flair[csf] < 0.1 and flair[lesion] == pytest.approx(1.0)         # CSF nulled, lesion bright
    t1 = physics_features(preset("T1", 3.0), relative_to="all")
    assert t1[fat] == pytest.approx(1.0) and t1[csf] < t1[gm] < t1[wm]      # a source: scaled by fat
    no_ti = MRProtocol(contrast="FLAIR", sequence="IR", tr_ms=9000.0, te_ms=100.0, field_t=3.0)
    np.testing.assert_array_equal(physics_features(no_ti, relative_to="brain"), 0.0)  # not computable
    with pytest.raises(ValueError, match="relative_to must be 'brain' or 'all'. Found 'head'"):
        physics_features(preset("T2"), relative_to="head")


def test_pair_features_put_the_physics_after_the_plain_features() -> None:
    pair = pair_features(preset("T1"), preset("T2"))
    np.testing.assert_array_equal(pair[2 * FEATURE_DIM:2 * FEATURE_DIM + PHYSICS_DIM],
                                  physics_features(preset("T1"), relative_to="all"))
    np.testing.assert_array_equal(pair[2 * FEATURE_DIM + PHYSICS_DIM:],
                                  physics_features(preset("T2"), relative_to="brain"))
