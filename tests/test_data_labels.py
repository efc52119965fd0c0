"""The label table against cityscapesScripts, the reference definition of Cityscapes ids, train ids and colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cs_labels

from segmodels.data import labels as L

ROOT = Path(__file__).resolve().parents[1]


def test_id_to_trainid_matches_cityscapesscripts():
    defined = {label.id for label in cs_labels if label.id >= 0}
    for label in cs_labels:
        if label.id < 0:  # license plate: never in a labelIds image
            continue
        want = label.trainId if 0 <= label.trainId < 255 else L.IGNORE_INDEX
        assert L.ID_TO_TRAINID[label.id] == want, label.name
    for value in range(256):
        if value not in defined:
            assert L.ID_TO_TRAINID[value] == L.IGNORE_INDEX, value
    assert max(defined) == L.MAX_LABEL_ID


def test_class_names_and_palette_match_cityscapesscripts():
    trained = sorted((lab for lab in cs_labels if 0 <= lab.trainId < 255), key=lambda lab: lab.trainId)
    assert [lab.trainId for lab in trained] == list(range(L.NUM_CLASSES))
    assert list(L.CLASS_NAMES) == [lab.name for lab in trained]
    assert L.PALETTE.dtype == np.uint8 and L.PALETTE.shape == (19, 3)
    np.testing.assert_array_equal(L.PALETTE, np.array([lab.color for lab in trained], dtype=np.uint8))
    for lab in cs_labels:
        if lab.id >= 0:
            assert tuple(L.ID_PALETTE[lab.id]) == lab.color, lab.name


def test_categories_instances_and_sizes_match_cityscapesscripts():
    from cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling import args as cs_args

    ours = {label.name: label for label in L.LABELS}
    for lab in cs_labels:
        if lab.id >= 0:
            assert (ours[lab.name].category, ours[lab.name].has_instances) == (lab.category, lab.hasInstances)
    assert cs_args.avgClassSize == L.INSTANCE_MEAN_SIZE
    assert tuple(lab.name for lab in sorted(cs_labels, key=lambda lab: lab.trainId)
                                       if lab.hasInstances and not lab.ignoreInEval) == L.INSTANCE_CLASSES  # fmt: skip
    assert set(L.CATEGORIES) == {lab.category for lab in cs_labels if not lab.ignoreInEval}


def test_trainid_to_id_inverts_the_mapping():
    for train_id in range(L.NUM_CLASSES):
        assert L.ID_TO_TRAINID[L.TRAINID_TO_ID[train_id]] == train_id
    assert L.label_id("car") == 26
    with pytest.raises(ValueError, match="unknown Cityscapes label name 'lorry'"):
        L.label_id("lorry")


def test_colorize_paints_train_ids_and_blackens_ignore():
    mask = np.array([[0, 13, 255], [18, 2, 7]], dtype=np.uint8)
    rgb = L.colorize(mask)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 64, 128)  # road
    assert tuple(rgb[0, 1]) == (0, 0, 142)  # car
    assert tuple(rgb[0, 2]) == (0, 0, 0)  # ignore
    assert tuple(rgb[1, 0]) == (119, 11, 32)  # bicycle
    wide = L.colorize(np.array([[-1, 300, 5]], dtype=np.int64))  # out-of-range values of wider integer types
    np.testing.assert_array_equal(wide, [[[0, 0, 0], [0, 0, 0], list(L.PALETTE[5])]])


def test_library_does_not_import_cityscapesscripts():
    for path in (ROOT / "segmodels").rglob("*.py"):
        text = path.read_text()
        assert "import cityscapesscripts" not in text and "from cityscapesscripts" not in text, path
