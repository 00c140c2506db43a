"""MPII converter: the three annotation forms, Tompson's split, head boxes, other people."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from cpm_lightning.data.augment import apply_affine
from cpm_lightning.data.h5format import CropFile, verify
from cpm_lightning.data.skeletons import LSP14
from data_prep import common, mpii
from data_prep.__main__ import main
from tests.real_samples import real_samples


def _official_layout() -> dict:
    return scipy.io.loadmat(
        real_samples("mpii", "official_layout_predictions.mat"), struct_as_record=False, squeeze_me=True
    )


def test_val_split_csv_is_the_sample_files_pairs():
    pairs = mpii.validation_people()
    assert len(pairs) == len(set(pairs)) == 2958
    assert "1-based" in mpii.VAL_SPLIT_CSV.read_text().split("img_index,person_index")[0]
    layout = _official_layout()
    assert pairs == list(zip(layout["RELEASE_img_index"].tolist(), layout["RELEASE_person_index"].tolist()))


def test_mpii_to_lsp14_order():
    names = [mpii.MPII_ORDER[k] for k in mpii.MPII_TO_LSP14]
    assert names[:2] == ["head_top", "upper_neck"] and names[2:] == list(LSP14.joint_names[2:])
    assert "pelvis" not in names and "thorax" not in names


def test_official_annorect_layout_matches_mmpose_form_and_is_zero_based():
    """The sample's annorects and mmpose's val entries hold the same people, number for number:
    both readers must give the same 0-based joints, each raw value minus 1."""
    annolist = _official_layout()["annolist"]
    policy = common.ErrorPolicy("stop")
    path = real_samples("mpii", "mpii_val_sample5.json")
    mmpose_people, is_val = mpii.read_mmpose(path, json.loads(path.read_text()), Path("img"), policy)
    assert is_val and len(mmpose_people) == 5
    for k, from_mmpose in enumerate(mmpose_people):
        rect = annolist[k].annorect
        official = mpii.read_annorect(rect, Path("img"), f"annolist({k + 1})", from_mmpose.source_index)
        annotated = from_mmpose.states > 0
        np.testing.assert_array_equal(official.states > 0, annotated)
        np.testing.assert_allclose(official.joints[annotated], from_mmpose.joints[annotated], atol=1e-4)
        np.testing.assert_allclose(official.centre, [rect.objpos.x - 1, rect.objpos.y - 1])
        np.testing.assert_allclose(official.head_box, np.array([rect.x1, rect.y1, rect.x2, rect.y2]) - 1.0)
        raw_head_top = [p for p in rect.annopoints.point if p.id == 9][0]
        np.testing.assert_allclose(official.joints[0], [raw_head_top.x - 1, raw_head_top.y - 1])
    # The mmpose val file's entry k is the k-th person of the split.
    assert [p.source_index for p in mmpose_people] == mpii.validation_people()[:5]


def _struct_array(rows: list[dict]) -> np.ndarray:
    """A MATLAB 1 x N struct array for savemat."""
    keys = sorted({k for row in rows for k in row})
    array = np.zeros((1, len(rows)), dtype=[(k, object) for k in keys])
    for n, row in enumerate(rows):
        for k in keys:
            array[0, n][k] = row.get(k, np.zeros((0, 0)))
    return array


def _write_release(path: Path) -> None:
    """A small file in the exact structure of mpii_human_pose_v1_u12_1.mat."""

    def person(dx: float, is_visible) -> dict:
        points = _struct_array(
            [{"id": k, "x": 101.0 + 10 * k + dx, "y": 51.0 + 5 * k, "is_visible": is_visible(k)} for k in range(16)]
        )
        return {
            "x1": 90.0 + dx, "y1": 20.0, "x2": 130.0 + dx, "y2": 60.0, "scale": 1.5,
            "objpos": {"x": 150.0 + dx, "y": 100.0}, "annopoints": {"point": points},
        }  # fmt: skip

    annorect = _struct_array(
        [
            person(0, lambda k: np.zeros((0, 0)) if k == 9 else 1),  # empty is_visible counts as visible
            person(40, lambda k: "0" if k == 0 else "1"),  # some files store strings
            {"x1": 5.0, "y1": 5.0, "x2": 20.0, "y2": 20.0},  # a person without joints: not a sample
        ]
    )
    test_rect = _struct_array([{"scale": 2.0, "objpos": {"x": 10.0, "y": 10.0}}])
    annolist = _struct_array(
        [
            {"image": {"name": "000000001.jpg"}, "annorect": annorect},
            {"image": {"name": "000000002.jpg"}, "annorect": test_rect},
        ]
    )
    release = {"annolist": annolist, "img_train": np.array([[1, 0]]), "single_person": np.array([[1], [0]], object)}
    scipy.io.savemat(path, {"RELEASE": release})


def test_official_release_reader(tmp_path: Path):
    path = tmp_path / "mpii_human_pose_v1_u12_1.mat"
    _write_release(path)
    people = mpii.read_official(path, tmp_path / "images", common.ErrorPolicy("stop"))
    assert [p.source_index for p in people] == [(1, 1), (1, 2)]
    first, second = people
    assert first.image_path == tmp_path / "images" / "000000001.jpg"
    np.testing.assert_allclose(first.joints[LSP14.index("head_top")], [100.0 + 90, 50.0 + 45])  # id 9, 0-based
    np.testing.assert_allclose(first.joints[LSP14.index("r_ankle")], [100.0, 50.0])  # id 0
    np.testing.assert_allclose(first.centre, [149.0, 99.0])
    np.testing.assert_allclose(first.head_box, [89.0, 19.0, 129.0, 59.0])
    assert first.scale == 1.5 and (first.states == 2).all()
    assert second.states[LSP14.index("r_ankle")] == 1 and (np.delete(second.states, LSP14.index("r_ankle")) == 2).all()
    common.attach_others(people)
    assert len(first.others_joints) == 1
    np.testing.assert_allclose(first.others_joints[0], second.joints)
    boxes = mpii.read_head_boxes(path)
    np.testing.assert_allclose(boxes[(1, 2)], [129.0, 19.0, 169.0, 59.0])


def test_genjson_form_split_and_others(tmp_path: Path):
    path = real_samples("mpii", "mpii_annotations_first168.json")
    entries = json.loads(path.read_text())
    train, val = mpii.read_annotations([path], tmp_path, common.ErrorPolicy("stop"))
    assert len(train) + len(val) == 168
    # Our split (the CSV) agrees with the release's isValidation flags.
    assert len(val) == sum(e["isValidation"] == 1 for e in entries) == 16
    first = train[0]
    raw = np.asarray(entries[0]["joint_self"])
    np.testing.assert_allclose(first.joints[LSP14.index("neck")], raw[8, :2] - 1)  # upper neck
    np.testing.assert_allclose(first.centre, np.asarray(entries[0]["objpos"]) - 1)
    assert first.states[LSP14.index("l_shoulder")] == 2  # [x, y, 1]
    assert first.states[LSP14.index("r_shoulder")] == 2 and raw[3, 2] == 0 and first.states[LSP14.index("l_hip")] == 1
    # [0, 0, 0] is "not annotated" in this form.
    missing = [(n, k) for n, e in enumerate(entries) for k in range(16) if e["joint_self"][k] == [0, 0, 0]]
    n, k = missing[0]
    everyone = {p.entry: p for p in train + val}
    person = next(p for e, p in everyone.items() if e.startswith(f"{path} entry {n} "))
    if k in mpii.MPII_TO_LSP14:
        assert person.states[mpii.MPII_TO_LSP14.index(k)] == 0
    common.attach_others(train + val)
    # The people of one image are each other's others (where they reach into the crop).
    with_others = [p for p in train + val if p.others_joints is not None]
    assert with_others and all(len(p.others_joints) <= 7 for p in with_others)
    for person in train + val:
        entry = entries[int(person.entry.split(" entry ")[1].split()[0])]
        count = 0 if person.others_joints is None else len(person.others_joints)
        assert count <= entry["numOtherPeople"]


def test_mmpose_form_end_to_end_with_head_boxes(tmp_path: Path):
    annolist = _official_layout()["annolist"]
    corners = np.zeros((2, 2, 5))
    for k in range(5):
        rect = annolist[k].annorect
        corners[:, :, k] = [[rect.x1, rect.y1], [rect.x2, rect.y2]]
    gt_val = tmp_path / "mpii_gt_val.mat"  # mmpose's file layout: headboxes_src (corner, xy, person)
    scipy.io.savemat(gt_val, {"headboxes_src": corners})
    out = tmp_path / "out"
    annotations = str(real_samples("mpii", "mpii_val_sample5.json"))
    argv = ["mpii", "--annotations", annotations, "--images", str(real_samples("mpii", "images"))]
    assert main([*argv, "--head-boxes", str(gt_val), "--out", str(out), "--workers", "1"]) == 0
    assert verify(out / "train.h5")["num_samples"] == 0
    val = CropFile(out / "val.h5")
    assert len(val) == 5 and val.joint_names == list(LSP14.joint_names)
    entries = json.loads(Path(annotations).read_text())
    for i, entry in enumerate(entries):
        annotated = np.asarray(entry["joints_vis"])[mpii.MPII_TO_LSP14] > 0
        back = apply_affine(val.crop_to_source[i], val.joints[i])
        expected = np.asarray(entry["joints"], float)[mpii.MPII_TO_LSP14] - 1
        np.testing.assert_allclose(back[annotated], expected[annotated], atol=1e-3)
        head_diagonal = np.hypot(*(corners[1, :, i] - corners[0, :, i]))
        zoom = 1 / val.crop_to_source[i][0, 0]
        assert val.head_size[i] == pytest.approx(0.6 * head_diagonal * zoom, rel=1e-5)
    assert (val.visibility[:, LSP14.index("r_ankle")] == 0).sum() == 2  # -1 joints: not annotated


def test_json_forms_without_head_boxes_leave_pckh_unknown(tmp_path: Path):
    out = tmp_path / "out"
    argv = ["mpii", "--annotations", str(real_samples("mpii", "mpii_val_sample5.json"))]
    assert main([*argv, "--images", str(real_samples("mpii", "images")), "--out", str(out), "--workers", "1"]) == 0
    assert np.isnan(CropFile(out / "val.h5").head_size).all()


def test_unknown_json_form_and_bad_image(tmp_path: Path, capsys):
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(common.SourceDataError, match=r"odd\.json.*keys \['foo'\]"):
        mpii.read_annotations([odd], tmp_path, common.ErrorPolicy("stop"))
    images = tmp_path / "images"
    images.mkdir()
    (images / "005808361.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    argv = ["mpii", "--annotations", str(real_samples("mpii", "mpii_val_sample5.json")), "--images", str(images)]
    assert main([*argv, "--out", str(out), "--workers", "1"]) == 2
    message = capsys.readouterr().err
    assert "005808361.jpg" in message and "entry 0" in message and "does not decode" in message
    assert not (out / "val.h5").exists()


def test_crop_storage_of_real_mpii_images(tmp_path: Path):
    """Record what one stored MPII crop costs (docs/datasets.md quotes the full measurement)."""
    image = cv2.imread(str(real_samples("mpii", "images", "005808361.jpg")))
    crop = common.cut_crop(image, common.crop_to_source_affine(np.array([965.0, 339.0]), 4.718))
    size = len(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, common.DEFAULT_JPEG_QUALITY])[1])
    assert size < 250_000  # 25,925 training people stay under 6 GB
