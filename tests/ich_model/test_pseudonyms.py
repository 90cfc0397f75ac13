"""The per-root salt file and the pseudonyms made with it, against hashlib and the file system."""

from __future__ import annotations

import hashlib
import stat
import threading

import pytest
import tensorflow as tf

from ich_model.pseudonyms import SaltFileError, pseudonymised, root_salt, store_salt


def _example(**ids: str) -> tf.train.Example:
    example = tf.train.Example()
    for name, value in ids.items():
        example.features.feature[name].bytes_list.value.append(value.encode())
    example.features.feature["pixels"].bytes_list.value.append(b"\x01\x02")
    return example


def test_a_root_gets_one_salt_made_once_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "root" / "id_salt"
    first = root_salt(str(path))
    assert len(first) == 64 and int(first, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert root_salt(str(path)) == first  # the next span of the root
    assert root_salt(str(tmp_path / "other" / "id_salt")) != first  # another root


def test_an_explicit_salt_is_stored_and_a_different_one_is_refused(tmp_path):
    path = tmp_path / "id_salt"
    assert root_salt(str(path), "site-secret") == "site-secret"
    assert root_salt(str(path), "site-secret") == "site-secret"
    with pytest.raises(SaltFileError, match="differs from the salt that .* already holds"):
        root_salt(str(path), "another")
    with pytest.raises(SaltFileError) as refused:
        root_salt(str(path), "another")
    assert "site-secret" not in str(refused.value) and "another" not in str(refused.value)


def test_an_empty_salt_file_is_refused_not_used(tmp_path):
    path = tmp_path / "id_salt"
    path.write_text("\n")
    with pytest.raises(SaltFileError, match="is empty"):
        root_salt(str(path))


def test_writers_racing_for_a_new_file_agree_on_one_salt(tmp_path):
    path = str(tmp_path / "id_salt")
    wrote, seen = [], []

    def make(salt):
        wrote.append(store_salt(path, salt))
        seen.append(root_salt(path))

    threads = [threading.Thread(target=make, args=(f"salt-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrote.count(True) == 1 and len(set(seen)) == 1


def test_pseudonymised_replaces_patient_study_and_series_ids_in_a_copy():
    raw = _example(image_id="ID_0001", patient_id="ID_p1", study_uid="1.2.3", series_uid="1.2.3.4")
    salt = "s" * 64
    copy = pseudonymised(raw, salt)
    for name, value in (("patient_id", "ID_p1"), ("study_uid", "1.2.3"), ("series_uid", "1.2.3.4")):
        expected = hashlib.sha256(f"{salt}\x00{value}".encode()).hexdigest()[:16]
        assert copy.features.feature[name].bytes_list.value == [expected.encode()]
        assert raw.features.feature[name].bytes_list.value == [value.encode()]  # the input is left as it was
    assert copy.features.feature["image_id"] == raw.features.feature["image_id"]
    assert copy.features.feature["pixels"] == raw.features.feature["pixels"]
