"""The tailnet node's key file (relay/tailnet/identity_file.py)."""

from __future__ import annotations

import pytest

from relay.shells.keyfile import KeyFileError
from relay.tailnet.identity_file import identity_text, load_or_create_identity


def test_the_keys_are_made_once_and_read_back_the_same(tmp_path):
    path = tmp_path / "tailnet-key"
    made, created = load_or_create_identity(path)
    again, created_again = load_or_create_identity(path)
    assert (created, created_again) == (True, False)
    assert again == made
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == identity_text(made)


def test_a_broken_file_is_refused_by_name(tmp_path):
    path = tmp_path / "tailnet-key"
    path.write_text("machine-private-key: privkey:00\n")
    with pytest.raises(KeyFileError, match="missing node-private-key, node-disco-private-key"):
        load_or_create_identity(path)
    made, _ = load_or_create_identity(tmp_path / "good")
    path.write_text(
        identity_text(made).replace("node-private-key: privkey:", "node-private-key: x")
    )
    with pytest.raises(KeyFileError, match=str(path)):
        load_or_create_identity(path)


def test_the_text_shows_each_key_once_and_the_identity_repr_none(tmp_path):
    made, _ = load_or_create_identity(tmp_path / "k")
    text = identity_text(made)
    for key in (made.machine_key, made.node_key, made.disco_key):
        assert text.count(key.raw.hex()) == 1
        assert key.raw.hex() not in repr(made)
