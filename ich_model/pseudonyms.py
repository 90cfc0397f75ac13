"""Patient, study and series IDs as salted pseudonyms, with one salt per pipeline root kept in a file.

The salt is made once, on a root's first ingestion, and kept in `<pipeline_root>/id_salt`, readable by its owner
only, so that every span of the root gets the same pseudonyms (a study of span 1 is the same study in span 2).
Naming another file (`id_salt_file`) shares pseudonyms across roots. The salt itself is never an execution
property, a config value written to `last_run.json`, or a log line: only the file's path is. Image IDs stay as
they are: predictions are joined back to files by them.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import tensorflow as tf

from ich_model.examples import PATIENT_ID, SERIES_UID, STUDY_UID

SALT_FILE = "id_salt"
PSEUDONYMISED = (PATIENT_ID, STUDY_UID, SERIES_UID)
_SALT_BYTES = 32


class SaltFileError(ValueError):
    """A salt file that cannot be used (empty, or holding another salt than the one given)."""


def pseudonym(identifier: str | bytes, salt: str) -> str:
    """The salted SHA-256 of an identifier, first 16 hex digits: stable for one salt, not reversible without it."""
    if isinstance(identifier, bytes):
        identifier = identifier.decode("utf-8", "surrogateescape")
    return hashlib.sha256(f"{salt}\x00{identifier}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


def pseudonymised(example: tf.train.Example, salt: str) -> tf.train.Example:
    """A copy of a raw Example with its patient, study and series IDs replaced by their pseudonyms."""
    copy = tf.train.Example()
    copy.CopyFrom(example)
    for name in PSEUDONYMISED:
        values = copy.features.feature[name].bytes_list.value
        values[:] = [pseudonym(value, salt).encode() for value in values]
    return copy


def _is_local(path: str) -> bool:
    return "://" not in path


def read_salt(path: str) -> str:
    with tf.io.gfile.GFile(path) as f:
        salt = f.read().strip()
    if not salt:
        raise SaltFileError(f"the salt file {path} is empty; remove it to have a new salt made (pseudonyms of "
                            f"earlier spans will then differ) or restore it")
    return salt


def store_salt(path: str, salt: str) -> bool:
    """Writes `salt` to `path` unless the file exists; True when this call wrote it. Locally the file is made with
    O_EXCL and mode 0600 (only its owner reads it); on an object store the store's access rules apply."""
    folder = os.path.dirname(path)
    if folder:
        tf.io.gfile.makedirs(folder)
    if _is_local(path):
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as f:
            f.write(salt + "\n")
        return True
    if tf.io.gfile.exists(path):
        return False
    temporary = f"{path}.tmp-{secrets.token_hex(4)}"
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(salt + "\n")
    try:
        tf.io.gfile.rename(temporary, path, overwrite=False)
    except tf.errors.AlreadyExistsError:
        tf.io.gfile.remove(temporary)
        return False
    return True


def root_salt(path: str, explicit: str = "") -> str:
    """The salt in `path`, made there first if the file does not exist: `explicit` if given, else a new random one.
    An explicit salt that differs from the one the file already holds is refused (the root's earlier spans carry
    the file's pseudonyms)."""
    store_salt(path, explicit or secrets.token_hex(_SALT_BYTES))
    salt = read_salt(path)
    if explicit and explicit != salt:
        raise SaltFileError(f"id_salt differs from the salt that {path} already holds, which this pipeline root's "
                            f"earlier spans were pseudonymised with; leave id_salt unset, or use a new root")
    return salt
