"""Reading a policy directory that changes under the reader: every fault is a diagnostic naming
the file or directory, never an exception out of `load`, and the load fails closed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshwarden.engine import LoadResult, UsageError, load, read_files, scan_files

from meshwarden.cli import main

MESH = "apiVersion: meshwarden.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {}\n"
POLICY = (
    "apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
    "metadata: {name: p, namespace: shop}\nspec: {}\n"
)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "mesh.yaml").write_text(MESH)
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "p.yaml").write_text(POLICY)
    return tmp_path


def errors_at(result: LoadResult) -> list[str]:
    return [d.location.file for d in result.errors]


def removing_on_listing(victim: Path, when_listing: Path) -> object:
    """os.scandir that removes `victim` (really) just as `when_listing` is listed: the race of
    a directory changing between the scan and the read, made deterministic."""
    real = os.scandir

    def scandir(path: str | int) -> Iterator[os.DirEntry[str]]:
        if not isinstance(path, int) and Path(path) == when_listing and victim.exists():
            shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
        return real(path)

    return scandir


def test_a_subdirectory_removed_during_the_scan_is_an_error_naming_it(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    team = policy_dir / "team"
    # team is listed after the top directory; removing it between the two leaves its entry
    monkeypatch.setattr(os, "scandir", removing_on_listing(team, team))
    result = load([policy_dir])
    assert errors_at(result) == [str(team)]
    assert "removed while the directory was read" in result.errors[0].message
    assert result.compiled is None


def test_a_file_removed_between_scan_and_read_is_an_error_naming_it(policy_dir: Path) -> None:
    files, problems = scan_files([policy_dir])
    assert not problems
    (policy_dir / "team" / "p.yaml").unlink()
    documents, problems = read_files(files)
    assert [p.location.file for p in problems] == [str(policy_dir / "team" / "p.yaml")]
    assert "No such file" in problems[0].message
    assert [d.kind for d in documents] == ["Mesh"]


def test_a_named_directory_removed_before_the_scan_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or directory"):
        load([tmp_path / "gone"])


def test_a_directory_named_like_a_policy_file_is_skipped(policy_dir: Path) -> None:
    (policy_dir / "odd.yaml").mkdir()
    assert load([policy_dir]).ok


def test_a_symlink_loop_named_like_a_policy_file_is_an_error_naming_it(policy_dir: Path) -> None:
    loop = policy_dir / "loop.yaml"
    loop.symlink_to(loop)
    result = load([policy_dir])
    assert errors_at(result) == [str(loop)]
    assert "symbolic links" in result.errors[0].message


def test_a_directory_symlink_loop_is_not_walked(policy_dir: Path) -> None:
    (policy_dir / "team" / "again").symlink_to(policy_dir)
    result = load([policy_dir])
    assert result.ok
    assert result.files == [str(policy_dir / "mesh.yaml"), str(policy_dir / "team" / "p.yaml")]


def test_a_dangling_symlink_is_an_error_naming_it(policy_dir: Path) -> None:
    dangling = policy_dir / "gone.yaml"
    dangling.symlink_to(policy_dir / "nowhere.yaml")
    assert errors_at(load([policy_dir])) == [str(dangling)]


def test_a_fifo_named_on_the_command_line_is_refused_without_blocking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    assert main(["check", str(fifo)]) == 1
    out, err = capsys.readouterr()
    assert f"{fifo}:1:1: error: cannot read file: a FIFO, not a regular file" in out + err


def test_a_file_swapped_for_a_fifo_after_the_scan_is_refused(policy_dir: Path) -> None:
    files, _ = scan_files([policy_dir])
    target = policy_dir / "team" / "p.yaml"
    target.unlink()
    os.mkfifo(target)
    _, problems = read_files(files)
    assert [(p.location.file, "FIFO" in p.message) for p in problems] == [(str(target), True)]


def test_hidden_entries_are_skipped(policy_dir: Path) -> None:
    (policy_dir / ".git").mkdir()
    (policy_dir / ".git" / "x.yaml").write_text("not: [valid")
    (policy_dir / ".p.yaml.swp").write_text("not: [valid")
    assert load([policy_dir]).ok


def test_check_names_the_removed_directory_and_exits_1(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    team = policy_dir / "team"
    monkeypatch.setattr(os, "scandir", removing_on_listing(team, team))
    assert main(["check", str(policy_dir)]) == 1
    out, err = capsys.readouterr()
    assert f"{team}:1:1: error: cannot read directory" in out + err
    assert "Traceback" not in out + err
