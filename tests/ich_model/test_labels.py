"""read_rsna_labels against a plain csv-module parse of the same file."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ich_model.constants import LABELS
from ich_model.labels import LabelFileError, read_rsna_labels
from ich_model.synth import LABELS_CSV, generate_dataset


def write_csv(path, rows):
    path.write_text("ID,Label\n" + "".join(f"{key},{value}\n" for key, value in rows))
    return path


def image_rows(image_id, values):
    return [(f"{image_id}_{name}", value) for name, value in zip(LABELS, values, strict=True)]


def test_synthetic_csv_reads_as_the_csv_module_sees_it(tmp_path):
    generate_dataset(tmp_path, patients=3, slices_per_study=4, seed=2, size=64, positive_fraction=1.0,
                     progress=False)
    expected = {}
    with open(tmp_path / LABELS_CSV, newline="") as f:
        for row in csv.DictReader(f):
            image_id, label = row["ID"].rsplit("_", 1)
            expected.setdefault(image_id, np.zeros(6, int))[LABELS.index(label)] = int(row["Label"])
    table = read_rsna_labels(tmp_path / LABELS_CSV)
    assert table.problems == []
    assert table.labels.keys() == expected.keys()
    for image_id, vector in expected.items():
        assert np.array_equal(table.labels[image_id], vector)
    assert any(v[-1] for v in table.labels.values())


def test_label_order_follows_the_project_not_the_file(tmp_path):
    values = dict(zip(LABELS, [1, 0, 0, 0, 1, 1], strict=True))
    shuffled = [("ID_a_any", 1), ("ID_a_subdural", 1), ("ID_a_epidural", 1), ("ID_a_subarachnoid", 0),
                ("ID_a_intraventricular", 0), ("ID_a_intraparenchymal", 0)]
    table = read_rsna_labels(write_csv(tmp_path / "l.csv", shuffled))
    assert table.labels["ID_a"].tolist() == [values[name] for name in LABELS]


def test_agreeing_duplicates_merge_and_disagreeing_ones_are_a_conflict(tmp_path):
    rows = (image_rows("ID_a", [0, 1, 0, 0, 0, 1]) + image_rows("ID_a", [0, 1, 0, 0, 0, 1])
            + image_rows("ID_b", [0, 0, 0, 0, 0, 0]) + [("ID_b_subdural", 1)])
    table = read_rsna_labels(write_csv(tmp_path / "l.csv", rows))
    assert table.labels["ID_a"].tolist() == [0, 1, 0, 0, 0, 1]
    assert table.duplicate_rows == 7
    assert "ID_b" not in table.labels
    [conflict] = table.problems
    assert conflict.kind == "conflict" and conflict.image_id == "ID_b"
    assert "subdural" in conflict.message and "[18, 20]" in conflict.message


def test_malformed_rows_name_their_line_and_incomplete_images_are_reported(tmp_path):
    rows = image_rows("ID_a", [0] * 6) + [("ID_c_hematoma", 1), ("ID_d_epidural", "0.5")]
    table = read_rsna_labels(write_csv(tmp_path / "l.csv", rows))
    messages = {p.kind: [] for p in table.problems}
    for p in table.problems:
        messages[p.kind].append(p)
    assert [p.line for p in messages["malformed"]] == [8, 9]
    assert "hematoma" in messages["malformed"][0].message and "l.csv:8" in messages["malformed"][0].message
    assert "'0.5' is not 0 or 1" in messages["malformed"][1].message
    assert list(table.labels) == ["ID_a"]


def test_a_file_that_is_not_an_rsna_csv_is_an_error(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("image,epidural\nID_a,0\n")
    with pytest.raises(LabelFileError, match="expected the RSNA header 'ID,Label'"):
        read_rsna_labels(path)


def test_a_byte_order_mark_is_ignored_and_a_header_only_file_is_an_error(tmp_path):
    rows = image_rows("ID_a", [0, 1, 0, 0, 0, 1])
    plain = write_csv(tmp_path / "plain.csv", rows)
    marked = tmp_path / "marked.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())  # as spreadsheet programs save UTF-8 CSV
    assert read_rsna_labels(marked).labels["ID_a"].tolist() == read_rsna_labels(plain).labels["ID_a"].tolist()
    assert read_rsna_labels(marked).problems == []
    with pytest.raises(LabelFileError, match="no label row"):
        read_rsna_labels(write_csv(tmp_path / "empty.csv", []))


def test_a_field_over_the_csv_module_s_limit_is_one_malformed_row_and_the_rest_still_reads(tmp_path):
    limit = csv.field_size_limit()
    rows = image_rows("ID_a", [0] * 6) + [("ID_b_any", "1" * (limit + 1))] + image_rows("ID_c", [1] * 6)
    table = read_rsna_labels(write_csv(tmp_path / "long.csv", rows))
    [problem] = table.problems
    assert problem.kind == "malformed" and problem.line == 8 and "field larger than field limit" in problem.message
    assert sorted(table.labels) == ["ID_a", "ID_c"] and table.labels["ID_c"].tolist() == [1] * 6
