"""Issue 16: CIFAR archive extraction checks every member itself (path traversal, links), also
on Pythons whose `tarfile` has no extraction filters (it used to fall back to a bare
`extractall` there)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from onnlab.data import cifar
from onnlab.errors import DataError


def _archive(root: Path, evil: tarfile.TarInfo, payload: bytes = b"pwned") -> Path:
    folder = root / "CIFAR-10"
    folder.mkdir(parents=True)
    path = folder / "cifar10-jpg.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("train/cat/0000.png")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"png"))
        evil.size = len(payload) if evil.isfile() else 0
        tar.addfile(evil, io.BytesIO(payload) if evil.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.fixture(params=["with-filter", "no-filter"])
def python_tarfile(request, monkeypatch):
    """'no-filter' reproduces a Python < 3.10.12: extractall() has no `filter` argument."""
    if request.param == "no-filter":
        original = tarfile.TarFile.extractall

        def old_extractall(self, path=".", members=None, *, numeric_owner=False, **kw):
            if "filter" in kw:
                raise TypeError("extractall() got an unexpected keyword argument 'filter'")
            return original(self, path, members, numeric_owner=numeric_owner)

        monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


@pytest.mark.parametrize(
    ("member", "what"),
    [
        (_member("../../escaped.txt"), "outside"),
        (_member("train/../../../escaped.txt"), "outside"),
        (_member("/tmp/onnlab-absolute-escape.txt"), "outside"),
        (_member("train/link", tarfile.SYMTYPE, "../../../escaped.txt"), "link"),
        (_member("train/hard", tarfile.LNKTYPE, "/etc/passwd"), "link"),
        (_member("train/fifo", tarfile.FIFOTYPE), "special file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo"],
)
def test_malicious_members_are_refused_and_nothing_escapes(
    tmp_path, monkeypatch, python_tarfile, member, what
) -> None:
    monkeypatch.setattr(cifar, "cache_root", lambda: tmp_path / "cache" / "deep" / "er")
    archive = _archive(tmp_path / "root", member)
    with pytest.raises(DataError, match=what) as info:
        cifar._extract_once(archive)
    assert member.name in str(info.value)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not Path("/tmp/onnlab-absolute-escape.txt").exists()
    assert not list((tmp_path / "cache").rglob("*.tmp*"))  # the half extraction was removed


def test_clean_archive_still_extracts_without_filters(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cifar, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = _archive(tmp_path / "root", _member("test/cat/0000.png"), b"png")
    tree = cifar._extract_once(archive)
    assert (tree / "train" / "cat" / "0000.png").read_bytes() == b"png"
    assert (tree / "test" / "cat" / "0000.png").is_file()
